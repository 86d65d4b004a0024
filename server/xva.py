"""XVA writer: a VM and its sealed disks as one file that ``xe vm-import`` takes.

The format, as XAPI's own export writes it (``stream_vdi.ml``, ``importexport.ml``): an
uncompressed tar whose first member is ``ova.xml``, an XML-RPC ``<value>`` holding
``{version: {...}, objects: [{class, id, snapshot}, ...]}`` with one object per VM, VBD, VDI, VIF,
network and SR record. Then, for each VDI in the lexicographic order of its reference (the order
the importer reads them in), the disk cut into 1 MiB blocks named ``Ref:N/%08d``, each followed by
a checksum file. All-zero blocks are left out, except the first and the last, which the importer
needs to learn the block length and to reach the end of the disk. XAPI reads missing blocks as
zeros (it writes zeros or seeks on a fresh VDI), so leaving them out is safe.

Checksums: XAPI since 8.x writes ``.xxhash`` (XXH64, 16 upper-case hex digits) and reads both that
and the older ``.checksum`` (SHA-1, 40 lower-case hex digits). Only the SHA-1 form is read by every
release from XenServer 6.5 on, so that is what we write.

Integer fields travel as strings, dates as ``dateTime.iso8601`` and references as ``Ref:N``, as in
XAPI's own ova.xml; the version header's integers are ``<i4>``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
import uuid
import xml.etree.ElementTree as ET
from typing import BinaryIO, Iterable, Iterator, Protocol

from xenp2v.protocol import ChunkKind, Extent
from server.xenserver.spec import CD_USERDEVICE, VmSpec, disk_userdevices

BLOCK = 1024 * 1024
NULL_REF = "OpaqueRef:NULL"
# The xapi version we claim, that of XenServer 6.x: the importer refuses only newer ones.
XAPI_MAJOR, XAPI_MINOR = 1, 9
EXPORT_VSN = 2          # inline checksum files follow each block


class DateTime(str):
    """A field XAPI types as a date: written as ``<dateTime.iso8601>``."""


EPOCH = DateTime("19700101T00:00:00Z")


class I4(int):
    """An integer XAPI writes as ``<i4>`` (the version header), not as a string like fields."""


class Image(Protocol):
    """What the writer needs of a sealed image (``server.store.SealedImage`` has it)."""

    path: str
    size: int
    chunk_size: int
    extents: list[Extent]


# --- ova.xml ---------------------------------------------------------------------------------

def _value(parent: ET.Element, value: object) -> None:
    """One XML-RPC ``<value>``, typed the way XAPI writes its database records."""
    node = ET.SubElement(parent, "value")
    if isinstance(value, bool):
        ET.SubElement(node, "boolean").text = "1" if value else "0"
    elif isinstance(value, I4):
        ET.SubElement(node, "i4").text = str(int(value))
    elif isinstance(value, DateTime):
        ET.SubElement(node, "dateTime.iso8601").text = str(value)
    elif isinstance(value, float):
        ET.SubElement(node, "double").text = repr(value)
    elif isinstance(value, int):
        node.text = str(value)
    elif isinstance(value, dict):
        struct = ET.SubElement(node, "struct")
        for key, item in value.items():
            member = ET.SubElement(struct, "member")
            ET.SubElement(member, "name").text = str(key)
            _value(member, item)
    elif isinstance(value, (list, tuple)):
        data = ET.SubElement(ET.SubElement(node, "array"), "data")
        for item in value:
            _value(data, item)
    else:
        node.text = str(value)


def ova_xml(header: dict) -> bytes:
    root = ET.Element("root")
    _value(root, header)
    return ET.tostring(root[0], encoding="utf-8")


def _vm_record(spec: VmSpec, vbds: list[str], vifs: list[str]) -> dict:
    platform = {"acpi": "1", "apic": "true", "pae": "true", "nx": "true", "hpet": "true",
                "timeoffset": "0", "device-model": "qemu-upstream-compat",
                "viridian": "true" if spec.windows else "false"}
    if spec.windows:
        platform.update({"viridian_time_ref_count": "true", "viridian_reference_tsc": "true"})
    # CD first: the technician inserts the xenp2v ISO after the import and the repair runs first.
    boot_params = {"order": "dc"}
    if spec.firmware == "uefi":
        boot_params["firmware"] = "uefi"
    memory = spec.memory
    return {
        "uuid": str(uuid.uuid4()), "name_label": spec.name,
        "name_description": "Migrated by xenp2v", "user_version": 1, "is_a_template": False,
        "is_default_template": False, "is_a_snapshot": False, "snapshot_of": NULL_REF,
        "snapshots": [], "snapshot_time": EPOCH, "transportable_snapshot_id": "",
        "snapshot_info": {}, "snapshot_metadata": "", "blobs": {},
        "parent": NULL_REF, "children": [], "power_state": "Halted",
        "memory_overhead": 0, "memory_target": memory, "memory_static_max": memory,
        "memory_dynamic_max": memory, "memory_dynamic_min": memory, "memory_static_min": memory,
        "VCPUs_params": {}, "VCPUs_max": spec.vcpus, "VCPUs_at_startup": spec.vcpus,
        "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
        "actions_after_crash": "restart", "consoles": [], "VIFs": vifs, "VBDs": vbds,
        "crash_dumps": [], "VTPMs": [], "PV_bootloader": "", "PV_kernel": "", "PV_ramdisk": "",
        "PV_args": "", "PV_bootloader_args": "", "PV_legacy_args": "",
        "HVM_boot_policy": "BIOS order", "HVM_boot_params": boot_params,
        "HVM_shadow_multiplier": 1.0, "platform": platform, "PCI_bus": "",
        "other_config": {"xenp2v": "1"}, "domid": -1, "domarch": "", "last_boot_CPU_flags": {},
        "is_control_domain": False, "metrics": NULL_REF, "guest_metrics": NULL_REF,
        "last_booted_record": "", "recommendations": "", "xenstore_data": {},
        "ha_always_run": False, "ha_restart_priority": "", "tags": [], "blocked_operations": {},
        "bios_strings": {}, "protection_policy": NULL_REF, "is_snapshot_from_vmpp": False,
        "appliance": NULL_REF, "start_delay": 0, "shutdown_delay": 0, "order": 0,
        "VGPUs": [], "attached_PCIs": [], "suspend_SR": NULL_REF, "version": 0,
        "generation_id": "", "hardware_platform_version": 0, "has_vendor_device": False,
        "resident_on": NULL_REF, "affinity": NULL_REF, "allowed_operations": [],
        "current_operations": {}, "suspend_VDI": NULL_REF,
        "domain_type": "hvm",
    }


def header(spec: VmSpec, sizes: list[int]) -> tuple[dict, list[str]]:
    """ova.xml's content for a VM with disks of these sizes; also each disk's reference."""
    objects = []
    vm_ref, sr_ref, net_ref = "Ref:0", "Ref:1", "Ref:2"
    next_ref = 3
    vbd_refs, vif_refs, vdi_refs = [], [], []
    records = []
    for position, (size, slot) in enumerate(zip(sizes, disk_userdevices(len(sizes)))):
        vdi_ref, vbd_ref = f"Ref:{next_ref}", f"Ref:{next_ref + 1}"
        next_ref += 2
        vdi_refs.append(vdi_ref)
        vbd_refs.append(vbd_ref)
        records.append(("VDI", vdi_ref, {
            "uuid": str(uuid.uuid4()), "name_label": f"{spec.name} disk {position}",
            "name_description": "Migrated by xenp2v", "SR": sr_ref, "VBDs": [vbd_ref],
            "crash_dumps": [], "virtual_size": size, "physical_utilisation": size,
            "type": "system", "sharable": False, "read_only": False, "other_config": {},
            "storage_lock": False, "location": "", "managed": True, "missing": False,
            "parent": NULL_REF, "xenstore_data": {}, "sm_config": {}, "is_a_snapshot": False,
            "snapshot_of": NULL_REF, "snapshots": [], "snapshot_time": EPOCH,
            "tags": [], "allow_caching": False, "on_boot": "persist", "metadata_latest": False,
            "metadata_of_pool": NULL_REF,
            "allowed_operations": [], "current_operations": {},
        }))
        records.append(("VBD", vbd_ref, {
            "uuid": str(uuid.uuid4()), "VM": vm_ref, "VDI": vdi_ref, "device": "",
            "userdevice": slot, "bootable": position == 0, "mode": "RW", "type": "Disk",
            "unpluggable": False, "storage_lock": False, "empty": False, "other_config": {},
            "currently_attached": False, "status_code": 0, "status_detail": "",
            "runtime_properties": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
            "qos_supported_algorithms": [], "metrics": NULL_REF, "allowed_operations": [],
            "current_operations": {},
        }))
    # The CD drive the importer recreates empty, so the VM can boot the xenp2v ISO for repair.
    cd_ref = f"Ref:{next_ref}"
    next_ref += 1
    vbd_refs.append(cd_ref)
    records.append(("VBD", cd_ref, {
        "uuid": str(uuid.uuid4()), "VM": vm_ref, "VDI": NULL_REF, "device": "",
        "userdevice": CD_USERDEVICE, "bootable": True, "mode": "RO", "type": "CD",
        "unpluggable": True,
        "storage_lock": False, "empty": True, "other_config": {}, "currently_attached": False,
        "status_code": 0, "status_detail": "", "runtime_properties": {},
        "qos_algorithm_type": "", "qos_algorithm_params": {}, "qos_supported_algorithms": [],
        "metrics": NULL_REF, "allowed_operations": [], "current_operations": {},
    }))
    for position, nic in enumerate(spec.nics):
        vif_ref = f"Ref:{next_ref}"
        next_ref += 1
        vif_refs.append(vif_ref)
        records.append(("VIF", vif_ref, {
            "uuid": str(uuid.uuid4()), "device": str(position), "network": net_ref, "VM": vm_ref,
            "MAC": nic.mac, "MAC_autogenerated": not nic.mac, "MTU": 1500,
            "other_config": {}, "currently_attached": False, "status_code": 0,
            "status_detail": "", "runtime_properties": {}, "qos_algorithm_type": "",
            "qos_algorithm_params": {}, "qos_supported_algorithms": [], "metrics": NULL_REF,
            "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": [],
            "allowed_operations": [], "current_operations": {},
        }))
    objects.append({"class": "VM", "id": vm_ref, "snapshot": _vm_record(spec, vbd_refs, vif_refs)})
    # The importer maps a network by its bridge, and an SR it does not know to the default SR.
    objects.append({"class": "SR", "id": sr_ref, "snapshot": {
        "uuid": str(uuid.uuid4()), "name_label": "xenp2v export", "name_description": "",
        "VDIs": vdi_refs, "PBDs": [], "virtual_allocation": sum(sizes),
        "physical_utilisation": sum(sizes), "physical_size": sum(sizes), "type": "lvm",
        "content_type": "user", "shared": False, "other_config": {}, "tags": [],
        "sm_config": {}, "blobs": {}, "local_cache_enabled": False,
        "introduced_by": NULL_REF, "allowed_operations": [], "current_operations": {},
    }})
    objects.append({"class": "network", "id": net_ref, "snapshot": {
        "uuid": str(uuid.uuid4()), "name_label": "Pool-wide network associated with eth0",
        "name_description": "", "VIFs": vif_refs, "PIFs": [], "MTU": 1500,
        "other_config": {}, "bridge": "xenbr0", "blobs": {}, "tags": [],
        "default_locking_mode": "unlocked", "assigned_ips": {}, "allowed_operations": [],
        "current_operations": {},
    }})
    objects += [{"class": cls, "id": ref, "snapshot": rec} for cls, ref, rec in records]
    version = {
        "hostname": "xenp2v", "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "product_version": "", "product_brand": "xenp2v", "build_number": "",
        "xapi_major": I4(XAPI_MAJOR), "xapi_minor": I4(XAPI_MINOR), "export_vsn": I4(EXPORT_VSN),
    }
    return {"version": version, "objects": objects}, vdi_refs


# --- disk blocks -------------------------------------------------------------------------------

def data_blocks(image: Image) -> list[int]:
    """The 1 MiB blocks that may hold non-zero bytes (those under data chunks), plus first and last."""
    last = max(0, (image.size - 1) // BLOCK)
    blocks = {0, last}
    for extent in image.extents:
        if extent.kind is not ChunkKind.DATA:
            continue
        begin = extent.start * image.chunk_size
        end = min((extent.start + extent.count) * image.chunk_size, image.size)
        blocks.update(range(begin // BLOCK, (end + BLOCK - 1) // BLOCK))
    return sorted(b for b in blocks if b <= last)


def blocks_to_write(image: Image, source: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of each block the XVA carries, reading only under data chunks."""
    last = max(0, (image.size - 1) // BLOCK)
    for index in data_blocks(image):
        source.seek(index * BLOCK)
        length = min(BLOCK, image.size - index * BLOCK)
        block = source.read(length).ljust(length, b"\0")
        if index in (0, last) or block.count(0) != length:
            yield index, block


def _add(tar: tarfile.TarFile, name: str, body: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(body)
    info.mtime = mtime
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(body))


def write_xva(out: str | os.PathLike, spec: VmSpec, images: Iterable[Image]) -> dict:
    """Write the XVA; returns a summary (blocks written and left out per disk)."""
    images = list(images)
    head, vdi_refs = header(spec, [image.size for image in images])
    mtime = int(time.time())
    summary = {"disks": []}
    tmp = f"{out}.part"
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "ova.xml", ova_xml(head), mtime)
        for ref, image in sorted(zip(vdi_refs, images), key=lambda pair: pair[0]):
            written = 0
            with open(image.path, "rb") as source:
                for index, block in blocks_to_write(image, source):
                    name = f"{ref}/{index:08d}"
                    _add(tar, name, block, mtime)
                    _add(tar, name + ".checksum", hashlib.sha1(block).hexdigest().encode(), mtime)
                    written += 1
            total = (image.size + BLOCK - 1) // BLOCK
            summary["disks"].append({"ref": ref, "size": image.size, "blocks": total,
                                     "written": written})
    os.replace(tmp, out)
    return summary
