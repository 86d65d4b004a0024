"""A XAPI simulator for tests: one XenServer / XCP-ng host in a pool, over real HTTP(S).

Built from XAPI's published data model (xapi-project.github.io, the XenAPI SDK) and the sources of
its HTTP handlers (``import_raw_vdi.ml``, vhd-tool's chunked format). Run it in-process:
``with XapiSim(tmp_path) as sim: sim.url``.

What it copies from XAPI:
- XML-RPC on ``POST /``: every answer is ``{"Status": "Success", "Value": ...}`` or
  ``{"Status": "Failure", "ErrorDescription": [code, params...]}``; integers travel as strings,
  references as ``OpaqueRef:<uuid>``, the null reference as ``OpaqueRef:NULL``.
- Sessions: ``session.login_with_password`` (wrong credentials: SESSION_AUTHENTICATION_FAILED),
  ``session.logout``; any other call with an unknown session: SESSION_INVALID.
- Classes VM, VDI, VBD, VIF, SR, network, task, host, pool with the fields the SDK's users read;
  generic ``get_all``, ``get_all_records``, ``get_record``, ``get_by_uuid``, ``get_by_name_label``,
  ``get_<field>``, ``set_<field>`` (only on fields XAPI lets one write), ``add_to_<map>`` /
  ``remove_from_<map>``; unknown calls: MESSAGE_METHOD_UNKNOWN; unknown references: HANDLE_INVALID.
- Power-state rules: VM_BAD_POWER_STATE [vm, expected, actual] for ``set_VCPUs_max``,
  ``set_VCPUs_at_startup``, ``set_memory_limits``, ``start``, ``destroy``, reboots and shutdowns in
  the wrong state; VM_IS_TEMPLATE for starting a template; HOST_NOT_ENOUGH_FREE_MEMORY
  [needed, available] when the host cannot hold the VM; MEMORY_CONSTRAINT_VIOLATION for limits out
  of order; VALUE_NOT_SUPPORTED for VCPUs_at_startup above VCPUs_max; VBD_NOT_EMPTY,
  VBD_IS_EMPTY, VBD_NOT_REMOVABLE_MEDIA for CD insert/eject; VDI_IN_USE; VM_LACKS_FEATURE for a
  clean shutdown or reboot of a guest without PV drivers (ours never have them).
- Storage: VDI.create beyond the SR's free space fails with SR_BACKEND_FAILURE_44
  ["", "There is insufficient space", ""] as the LVM and EXT storage managers report it. VDIs are
  raw sparse files under ``<root>/vdis/`` (``sim.vdi_path(ref)``), so tests can boot them. An SR
  whose type XAPI treats as giving zeroed VDIs (file and VHD based: ext, nfs, lvm, ...) makes
  holes; any other type (a raw LUN, e.g. ``rawhba``) starts new VDIs with stale non-zero bytes
  (4 KiB in every 64 KiB), as a LUN holds whatever was written on it before.
- Each SR has a PBD on the host, plugged (``currently_attached``); ``sim.unplug(sr)`` unplugs it,
  and ``VM.start`` then fails with VM_REQUIRES_SR [vm, sr] for a VM with a non-empty VBD there,
  as xapi_vm_helpers.assert_can_see_SRs does.
- ``PUT /import_raw_vdi?session_id&vdi&format=raw[&chunked][&task_id]``: the 200 answer goes out
  before the body is read, as XAPI does; ``chunked`` is vhd-tool's framing (12-byte little-endian
  header ``{offset u64, length u32}``, data, an all-zero header at the end), not HTTP chunking,
  which XAPI refuses (403). The task passed in (or a new one) ends ``success`` or ``failure``
  with ``error_info``, e.g. a write beyond the VDI's end.
- ``VM.provision`` creates the disks a template's ``other_config:disks`` describes, as XAPI does.
- The tools SR as xapi's dbsync_master makes it: an ISO SR "<brand> Tools" tagged
  ``other_config:xenserver_tools_sr``, with ``is_tools_sr`` from dundee (XenServer 7.0, API 2.5);
  its ISO (``xs-tools.iso`` up to 7.x, ``guest-tools.iso`` after; ``tools_iso=`` gives the file)
  has ``sm_config:xs-tools=true`` and, from dundee, ``is_tools_iso``, as the SR scan sets it.
- What an HVM guest sees (xenopsd): CD drives on the emulated IDE slots, userdevice 0-3, only; a
  boot line lists their discs (``cds``) and the one the firmware boots (``cd``: the disc in the
  first CD drive in IDE order, as ROMBIOS boots only the first ATAPI device).

What it does not copy: real domains (VM.start only flips power state and domid), events,
RBAC, pool membership of more than one host, redirects to other hosts, VHD import format,
snapshots and migration, most classes and fields nobody here reads.
"""

from xapisim.sim import XapiSim  # noqa: F401
