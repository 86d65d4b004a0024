"""The simulator's HTTP server, database and calls (see the package docstring for what it copies)."""

from __future__ import annotations

import copy
import json
import os
import re
import ssl
import struct
import subprocess
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

GiB = 1024 ** 3
MiB = 1024 ** 2
NULL = "OpaqueRef:NULL"
# Storage manager types whose new VDIs read as zeros (VHD or sparse-file backed): XCP-ng's VHD
# ones too (see VHD_SR_TYPES).
ZEROED_SR_TYPES = {"ext", "nfs", "lvm", "lvmoiscsi", "lvmohba", "lvmofcoe", "file", "smb", "xfs", "zfs",
                   "glusterfs", "cephfs", "moosefs", "largeblock", "linstor"}
# Storage managers whose VDIs are VHD files or VHD on LVM: sm's vhdutil.MAX_VHD_SIZE, 2040 GiB.
# XCP-ng's add more: FileSR's kin (xfs, zfs, glusterfs, cephfs, moosefs), largeblock (VHD on LVM
# on 4K disks), linstor (VHD on DRBD).
VHD_SR_TYPES = {"ext", "nfs", "lvm", "lvmoiscsi", "lvmohba", "lvmofcoe", "file", "smb", "xfs", "zfs",
                "glusterfs", "cephfs", "moosefs", "largeblock", "linstor"}
MAX_VHD_SIZE = 2040 * GiB
STALE = b"\xa5" * 4096
STALE_EVERY = 64 * 1024
HEADER = struct.Struct("<QI")

# Fields XAPI lets a client write with set_<field> (and add_to_/remove_from_ for maps).
WRITABLE = {
    "VM": {"name_label", "name_description", "HVM_boot_policy", "HVM_boot_params", "PV_bootloader",
           "PV_bootloader_args", "PV_args", "PV_kernel", "PV_ramdisk", "platform", "other_config",
           "is_a_template", "actions_after_shutdown", "actions_after_reboot",
           "actions_after_crash", "tags", "xenstore_data", "affinity", "user_version",
           "VCPUs_params", "domain_type"},
    "VDI": {"name_label", "name_description", "other_config", "sm_config", "tags"},
    "VBD": {"userdevice", "bootable", "mode", "type", "unpluggable", "other_config"},
    "VIF": {"other_config", "locking_mode"},
    "SR": {"name_label", "name_description", "other_config", "tags"},
    "network": {"name_label", "name_description", "other_config", "tags"},
    "pool": {"name_label", "default_SR", "other_config"},
    "host": {"name_label", "other_config"},
    "task": {"other_config"},
    "SM": set(),
    "PBD": {"other_config"},
}


@dataclass(frozen=True)
class Version:
    """What one release reports and has, from XAPI's data model (ocaml/idl/datamodel_types.ml's
    release list: API version per release; datamodel_pool.ml, datamodel.ml for fields and calls).

    ``tools_iso``: the tools ISO's name in the pool's tools SR (xs-tools.iso until XenServer 7.x,
    guest-tools.iso since). ``uefi_certificates``: pool.uefi_certificates exists (Published in quebec, API 2.14) with
    this value ("" until someone installs certificates, as on XCP-ng 8.2). ``readiness``:
    pool.get_guest_secureboot_readiness exists (xapi 24.17.0: XCP-ng 8.3, XenServer 8) and
    answers this. ``image_formats``: SM.supported_image_formats exists (xapi 26.15.0, XCP-ng's
    QCOW2 update) and lists these for the VHD storage managers.
    """

    brand: str
    product_version: str
    platform_version: str
    api: tuple[int, int]
    xen: str
    uefi_certificates: str | None = None
    readiness: str | None = None
    image_formats: tuple[str, ...] | None = None
    tools_iso: str = "guest-tools.iso"

    @property
    def tools_fields(self) -> bool:
        """SR.is_tools_sr and VDI.is_tools_iso exist: Published in dundee (XenServer 7.0, API
        2.5). Before, only SR.other_config:xenserver_tools_sr and VDI.sm_config:xs-tools say it."""
        return self.api >= DUNDEE_API


DUNDEE_API = (2, 5)
VERSIONS = {
    "xenserver-6.5": Version("XenServer", "6.5.0", "1.9.0", (2, 3), "4.4.1", tools_iso="xs-tools.iso"),
    "xenserver-7.1": Version("XenServer", "7.1.0", "2.2.0", (2, 6), "4.7.1", tools_iso="xs-tools.iso"),
    "xcp-ng-8.2": Version("XCP-ng", "8.2.1", "3.2.1", (2, 15), "4.13.4", uefi_certificates=""),
    "xcp-ng-8.3": Version("XCP-ng", "8.3.0", "3.4.0", (2, 21), "4.17.5", uefi_certificates="",
                          readiness="ready", image_formats=("vhd", "raw", "qcow2")),
    "xenserver-8": Version("XenServer", "8.4.0", "3.4.0", (2, 21), "4.17.5",
                           uefi_certificates="H4sIAAAAAAAAA+3O", readiness="ready"),
}
# Emulated IDE devices of an HVM guest: userdevice 0-3 (hda-hdd). xenopsd gives qemu no frontend
# for an IDE device number past 3, and Linux's blkfront refuses CD-ROMs in HVM guests: a CD drive
# there is invisible to the guest.
EMULATED_IDE = {"0", "1", "2", "3"}


class Failure(Exception):
    def __init__(self, *description: object):
        super().__init__(description)
        self.description = [str(d) for d in description]


def new_ref() -> str:
    return f"OpaqueRef:{uuid.uuid4()}"


def wire(value):
    """A value as XAPI's XML-RPC carries it: integers as strings."""
    if isinstance(value, bool) or isinstance(value, float):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {str(k): wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [wire(v) for v in value]
    return "" if value is None else value


def like(old, new):
    """A value sent by a client, converted to the stored field's type."""
    if isinstance(old, bool):
        return new if isinstance(new, bool) else str(new).lower() == "true"
    if isinstance(old, int):
        try:
            return int(new)
        except (TypeError, ValueError):
            raise Failure("FIELD_TYPE_ERROR", new) from None
    if isinstance(old, float):
        return float(new)
    if isinstance(old, dict):
        if not isinstance(new, dict):
            raise Failure("FIELD_TYPE_ERROR", new)
        return {str(k): str(v) for k, v in new.items()}
    return new


class XapiSim:
    """One pool, one host, a local SR, an ISO SR, a network and the stock templates."""

    def __init__(self, root: Path, *, user: str = "root", password: str = "secret",
                 brand: str = "XCP-ng", product_version: str = "8.2.1", api: tuple = (2, 16),
                 host_cpus: int = 8, host_memory: int = 16 * GiB, sr_size: int = 100 * GiB,
                 sr_type: str = "ext", iso_path: Path | None = None, tls: bool = False,
                 version: str | None = None, tools_iso: Path | None = None):
        """``version``: a key of VERSIONS (brand, product and API version, the fields and calls
        that release has); without it, the brand, product_version and api given. ``tools_iso``:
        the file behind the pool's tools ISO (the tools SR's one VDI, named as the version names
        it); without it the tools SR is there, empty, as on a host whose tools ISO was removed."""
        self.version = VERSIONS[version] if version else Version(
            brand, product_version, "3.2.1", tuple(api), "4.13", uefi_certificates="")
        brand, product_version, api = self.version.brand, self.version.product_version, \
            self.version.api
        self.root = Path(root)
        (self.root / "vdis").mkdir(parents=True, exist_ok=True)
        self.user, self.password = user, password
        self.lock = threading.RLock()
        self.db: dict[str, dict[str, dict]] = {c: {} for c in WRITABLE}
        self.sessions: set[str] = set()
        self.calls: list[tuple[str, tuple]] = []   # every call but logins, in order
        self.boots: list[dict] = []                # what each (re)boot booted from
        self.tls = tls
        self._setup(brand, product_version, api, host_cpus, host_memory, sr_size, sr_type, iso_path)
        self._tools_sr(brand, tools_iso)
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.cert: Path | None = None

    # --- the pool's objects --------------------------------------------------------------------

    def _add(self, cls: str, record: dict) -> str:
        ref = new_ref()
        record.setdefault("uuid", str(uuid.uuid4()))
        record.setdefault("other_config", {})
        if self.version.tools_fields and cls in ("SR", "VDI"):
            record.setdefault("is_tools_sr" if cls == "SR" else "is_tools_iso", False)
        self.db[cls][ref] = record
        if cls == "SR":
            # Each SR plugged on the host, as xapi leaves them after start-up.
            pbd = self._add("PBD", {"host": self.host, "SR": ref, "device_config": {},
                                    "currently_attached": True})
            record["PBDs"].append(pbd)
            self.db["host"][self.host]["PBDs"].append(pbd)
        return ref

    def unplug(self, sr: str) -> None:
        """The SR's PBDs unplugged (xe pbd-unplug): its VDIs cannot be used by a VM starting."""
        for pbd in self.db["SR"][sr]["PBDs"]:
            self.db["PBD"][pbd]["currently_attached"] = False

    def _setup(self, brand, product_version, api, host_cpus, host_memory, sr_size, sr_type,
               iso_path) -> None:
        self.host = self._add("host", {
            "name_label": "sim-host", "name_description": "", "address": "127.0.0.1",
            "API_version_major": api[0], "API_version_minor": api[1], "API_version_vendor": brand,
            "software_version": {"product_brand": brand, "product_version": product_version,
                                 "platform_version": self.version.platform_version,
                                 "xapi": "1.20", "xen": self.version.xen},
            "cpu_info": {"cpu_count": str(host_cpus), "vendor": "GenuineIntel"},
            "host_CPUs": [new_ref() for _ in range(host_cpus)], "memory_overhead": 0,
            "memory_total": host_memory, "enabled": True, "resident_VMs": [], "PBDs": [],
        })
        self.dom0_memory = 2 * GiB
        self.sr = self._add("SR", {
            "name_label": "Local storage", "name_description": "", "type": sr_type,
            "content_type": "user", "physical_size": sr_size, "physical_utilisation": 0,
            "virtual_allocation": 0, "shared": False, "VDIs": [], "PBDs": [], "sm_config": {},
            "tags": [],
        })
        self.iso_sr = self._add("SR", {
            "name_label": "ISO library", "name_description": "", "type": "iso",
            "content_type": "iso", "physical_size": 0, "physical_utilisation": 0,
            "virtual_allocation": 0, "shared": True, "VDIs": [], "PBDs": [], "sm_config": {},
            "tags": [],
        })
        self.network = self._add("network", {
            "name_label": "Pool-wide network associated with eth0", "name_description": "",
            "bridge": "xenbr0", "MTU": 1500, "VIFs": [], "PIFs": [], "tags": [],
        })
        pool = {"name_label": "", "master": self.host, "default_SR": self.sr}
        if self.version.uefi_certificates is not None:
            pool["uefi_certificates"] = self.version.uefi_certificates
        self.pool = self._add("pool", pool)
        for sm_type in sorted({sr_type, "iso"}):
            sm = {"type": sm_type, "name_label": sm_type, "name_description": "",
                  "capabilities": ["VDI_CREATE", "VDI_DELETE"], "features": {}}
            if self.version.image_formats is not None:
                sm["supported_image_formats"] = list(self.version.image_formats) \
                    if sm_type in VHD_SR_TYPES else []
            self._add("SM", sm)
        if iso_path is not None:
            self.add_iso(Path(iso_path))
        self._template("Other install media", {
            "disks": '<provision><disk device="0" size="8589934592" sr="" bootable="true" '
                     'type="system"/></provision>',
            "install-methods": "cdrom"})

    def _tools_sr(self, brand: str, tools_iso: Path | None) -> None:
        """The tools SR as xapi's dbsync_master makes it (an ISO SR named "<brand> Tools", tagged
        in other_config, is_tools_sr where the field exists) and the ISO in it: sm_config
        xs-tools=true, from which the SR scan sets is_tools_iso."""
        self.tools_sr = self._add("SR", {
            "name_label": f"{brand} Tools", "name_description": f"{brand} Tools ISOs", "type": "iso",
            "content_type": "iso", "physical_size": 0, "physical_utilisation": 0,
            "virtual_allocation": 0, "shared": True, "VDIs": [], "PBDs": [], "sm_config": {},
            "tags": [], "other_config": {"xensource_internal": "true", "xenserver_tools_sr": "true",
                                         "i18n-key": "xenserver-tools"},
            **({"is_tools_sr": True} if self.version.tools_fields else {}),
        })
        if tools_iso is not None:
            self.add_iso(Path(tools_iso), sr=self.tools_sr, name=self.version.tools_iso)

    def _pool_get_guest_secureboot_readiness(self, pool: str) -> str:
        self._get("pool", pool)
        if self.version.readiness is None:
            raise Failure("MESSAGE_METHOD_UNKNOWN", "pool.get_guest_secureboot_readiness")
        return self.version.readiness

    def _template(self, name: str, other_config: dict) -> str:
        return self._add("VM", {
            "name_label": name, "name_description": "", "is_a_template": True,
            "is_default_template": True, "is_a_snapshot": False, "is_control_domain": False,
            "power_state": "Halted", "domid": -1, "user_version": 1,
            "memory_static_min": 128 * MiB, "memory_static_max": 256 * MiB,
            "memory_dynamic_min": 256 * MiB, "memory_dynamic_max": 256 * MiB,
            "memory_target": 256 * MiB, "memory_overhead": 0,
            "VCPUs_max": 1, "VCPUs_at_startup": 1, "VCPUs_params": {},
            "HVM_boot_policy": "BIOS order", "HVM_boot_params": {"order": "dc"},
            "HVM_shadow_multiplier": 1.0, "PV_bootloader": "", "PV_bootloader_args": "",
            "PV_args": "", "PV_kernel": "", "PV_ramdisk": "", "PV_legacy_args": "",
            "platform": {"nx": "true", "acpi": "1", "apic": "true", "pae": "true",
                         "viridian": "true", "device-model": "qemu-upstream-compat"},
            "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
            "actions_after_crash": "restart", "VBDs": [], "VIFs": [], "tags": [],
            "xenstore_data": {}, "affinity": NULL, "resident_on": NULL, "domain_type": "hvm",
            "other_config": dict(other_config), "blocked_operations": {},
        })

    def add_iso(self, path: Path, sr: str | None = None, name: str | None = None) -> str:
        """An ISO file in the ISO library (or `sr`), under its own name (or `name`)."""
        sr = sr or self.iso_sr
        tools = sr == getattr(self, "tools_sr", None)
        with self.lock:
            ref = self._add("VDI", {
                "name_label": name or path.name, "name_description": "", "SR": sr,
                "virtual_size": path.stat().st_size, "physical_utilisation": path.stat().st_size,
                "type": "user", "sharable": True, "read_only": True, "VBDs": [],
                "sm_config": {"xs-tools": "true"} if tools else {}, "xenstore_data": {}, "tags": [],
                "location": str(path),
                **({"is_tools_iso": tools} if self.version.tools_fields else {}),
            })
            self.db["SR"][sr]["VDIs"].append(ref)
            return ref

    def vdi_path(self, ref: str) -> Path:
        rec = self.db["VDI"][ref]
        if self.db["SR"][rec["SR"]]["content_type"] == "iso":
            return Path(rec["location"])
        return self.root / "vdis" / f"{rec['uuid']}.raw"

    def by_name(self, cls: str, name: str) -> list[tuple[str, dict]]:
        return [(r, rec) for r, rec in self.db[cls].items() if rec.get("name_label") == name]

    # --- calls ---------------------------------------------------------------------------------

    def call(self, method: str, params: tuple):
        with self.lock:
            if method == "session.login_with_password":
                if len(params) < 2:
                    raise Failure("MESSAGE_PARAMETER_COUNT_MISMATCH", method, 2, len(params))
                if (params[0], params[1]) != (self.user, self.password):
                    raise Failure("SESSION_AUTHENTICATION_FAILED", params[0],
                                  "Authentication failure")
                ref = new_ref()
                self.sessions.add(ref)
                return ref
            if not params or params[0] not in self.sessions:
                raise Failure("SESSION_INVALID", params[0] if params else "")
            self.calls.append((method, params[1:]))
            if method == "session.logout":
                self.sessions.discard(params[0])
                return ""
            if method == "session.get_this_host":
                return self.host
            cls, _, name = method.partition(".")
            handler = getattr(self, f"_{cls}_{name}", None)
            if handler is not None:
                return handler(*params[1:])
            if cls in self.db:
                return self._generic(cls, name, params[1:])
            raise Failure("MESSAGE_METHOD_UNKNOWN", method)

    def _get(self, cls: str, ref: str) -> dict:
        rec = self.db[cls].get(ref)
        if rec is None:
            raise Failure("HANDLE_INVALID", cls, ref)
        return rec

    def _generic(self, cls: str, name: str, args: tuple):
        table = self.db[cls]
        method = f"{cls}.{name}"

        def arity(n: int) -> None:
            if len(args) != n:
                raise Failure("MESSAGE_PARAMETER_COUNT_MISMATCH", method, n, len(args))

        if name == "get_all":
            arity(0)
            return list(table)
        if name == "get_all_records":
            arity(0)
            return {r: copy.deepcopy(rec) for r, rec in table.items()}
        if name == "get_record":
            arity(1)
            return copy.deepcopy(self._get(cls, args[0]))
        if name == "get_by_uuid":
            arity(1)
            for r, rec in table.items():
                if rec["uuid"] == args[0]:
                    return r
            raise Failure("UUID_INVALID", cls, args[0])
        if name == "get_by_name_label":
            arity(1)
            return [r for r, _ in self.by_name(cls, args[0])]
        if name.startswith("get_"):
            arity(1)
            rec = self._get(cls, args[0])
            field = name[4:]
            if field not in rec:
                raise Failure("MESSAGE_METHOD_UNKNOWN", method)
            return copy.deepcopy(rec[field])
        for prefix in ("set_", "add_to_", "remove_from_"):
            if name.startswith(prefix):
                field = name[len(prefix):]
                break
        else:
            raise Failure("MESSAGE_METHOD_UNKNOWN", method)
        if field not in WRITABLE[cls]:
            raise Failure("MESSAGE_METHOD_UNKNOWN", method)
        if prefix == "set_":
            arity(2)
            rec = self._get(cls, args[0])
            rec[field] = like(rec.get(field, args[1]), args[1])
            return ""
        rec = self._get(cls, args[0])
        if not isinstance(rec.get(field), dict):
            raise Failure("MESSAGE_METHOD_UNKNOWN", method)
        if prefix == "add_to_":
            arity(3)
            if args[1] in rec[field]:
                raise Failure("MAP_DUPLICATE_KEY", cls, field, args[0], args[1])
            rec[field][str(args[1])] = str(args[2])
        else:
            arity(2)
            rec[field].pop(args[1], None)
        return ""

    # VM --------------------------------------------------------------------------------------

    def _power(self, vm: str, expected: str) -> dict:
        rec = self._get("VM", vm)
        if rec["power_state"] != expected:
            raise Failure("VM_BAD_POWER_STATE", vm, expected.lower(), rec["power_state"].lower())
        return rec

    def _VM_clone(self, vm: str, new_name: str) -> str:
        rec = copy.deepcopy(self._power(vm, "Halted"))
        rec.update(uuid=str(uuid.uuid4()), name_label=new_name, is_default_template=False,
                   VBDs=[], VIFs=[])
        return self._add("VM", rec)

    def _VM_provision(self, vm: str) -> str:
        rec = self._power(vm, "Halted")
        spec = rec["other_config"].pop("disks", "")
        if spec:
            for disk in ET.fromstring(spec).findall("disk"):
                sr = disk.get("sr") or self.db["pool"][self.pool]["default_SR"]
                vdi = self._VDI_create({"name_label": f"{rec['name_label']} {disk.get('device')}",
                                        "SR": sr, "virtual_size": disk.get("size"),
                                        "type": disk.get("type", "system"), "sharable": False,
                                        "read_only": False, "other_config": {}})
                self._VBD_create({"VM": vm, "VDI": vdi, "userdevice": disk.get("device"),
                                  "bootable": disk.get("bootable") == "true", "mode": "RW",
                                  "type": "Disk", "unpluggable": False, "empty": False,
                                  "other_config": {}, "qos_algorithm_type": "",
                                  "qos_algorithm_params": {}})
        rec["is_a_template"] = False
        return ""

    def _VM_set_VCPUs_max(self, vm: str, value) -> str:
        rec = self._power(vm, "Halted")
        value = like(0, value)
        if value < 1 or value < rec["VCPUs_at_startup"]:
            raise Failure("VALUE_NOT_SUPPORTED", "VCPU_max", value,
                          "value greater than or equal to VCPUs_at_startup required")
        rec["VCPUs_max"] = value
        return ""

    def _VM_set_VCPUs_at_startup(self, vm: str, value) -> str:
        rec = self._power(vm, "Halted")
        value = like(0, value)
        if value < 1 or value > rec["VCPUs_max"]:
            raise Failure("VALUE_NOT_SUPPORTED", "VCPU_at_startup", value,
                          "value greater than VCPUs_max")
        rec["VCPUs_at_startup"] = value
        return ""

    def _VM_set_memory_limits(self, vm, static_min, static_max, dynamic_min, dynamic_max) -> str:
        rec = self._power(vm, "Halted")
        smin, smax, dmin, dmax = (like(0, v) for v in (static_min, static_max, dynamic_min,
                                                        dynamic_max))
        if not smin <= dmin <= dmax <= smax:
            raise Failure("MEMORY_CONSTRAINT_VIOLATION",
                          "Memory limits must satisfy: static_min <= dynamic_min <= "
                          "dynamic_max <= static_max")
        rec.update(memory_static_min=smin, memory_static_max=smax, memory_dynamic_min=dmin,
                   memory_dynamic_max=dmax, memory_target=dmax)
        return ""

    def host_free_memory(self) -> int:
        used = sum(rec["memory_static_max"] for rec in self.db["VM"].values()
                   if rec["power_state"] == "Running")
        return self.db["host"][self.host]["memory_total"] - self.dom0_memory - used

    def _host_compute_free_memory(self, host: str) -> int:
        self._get("host", host)
        return self.host_free_memory()

    def _boot(self, vm: str, rec: dict) -> None:
        """Note what the VM boots from, in ``boots`` and as a line of ``<root>/boots.jsonl``.

        A line says what a QEMU run standing in for the domain needs: SMBIOS UUID (the VM's
        UUID), firmware, boot order, vCPUs, memory, MACs, disk files by slot, the disc the firmware
        boots (``cd``) and every disc the guest sees (``cds``), in IDE order.
        """
        devices, files, drives = [], {}, {}
        hvm = bool(rec["HVM_boot_policy"])
        for vbd in rec["VBDs"]:
            v = self.db["VBD"][vbd]
            v["currently_attached"] = True
            media = "" if v["empty"] else self.db["VDI"][v["VDI"]]["name_label"]
            devices.append({"type": v["type"], "userdevice": v["userdevice"], "media": media})
            if v["type"] == "Disk":
                files[v["userdevice"]] = str(self.vdi_path(v["VDI"]))
            elif not (hvm and v["userdevice"] not in EMULATED_IDE):
                drives[v["userdevice"]] = None if v["empty"] else str(self.vdi_path(v["VDI"]))
        # The guest sees every emulated CD drive, in IDE order. The CD the firmware boots ("d" in
        # the order) is the disc in the first of them, as the strictest BIOS has it (ROMBIOS boots
        # the first ATAPI device only, empty or not).
        order = [drives[k] for k in sorted(drives, key=int)]
        cd = order[0] if order else None
        cds = [f for f in order if f]
        boot = {
            "vm": vm, "order": rec["HVM_boot_params"].get("order", ""),
            "policy": rec["HVM_boot_policy"], "firmware": rec["HVM_boot_params"].get("firmware",
                                                                                      "bios"),
            "devices": devices,
        }
        self.boots.append(boot)
        line = {**boot, "uuid": rec["uuid"], "name": rec["name_label"],
                "vcpus": rec["VCPUs_at_startup"], "memory": rec["memory_static_max"],
                "pv_bootloader": rec["PV_bootloader"],
                "macs": [self.db["VIF"][v]["MAC"] for v in rec["VIFs"]],
                "disks": [files[k] for k in sorted(files, key=int)], "cd": cd,
                "cds": cds}
        with open(self.root / "boots.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    def _VM_start(self, vm: str, start_paused=False, force=False) -> str:
        rec = self._get("VM", vm)
        if rec["is_a_template"]:
            raise Failure("VM_IS_TEMPLATE", vm, "start")
        self._power(vm, "Halted")
        free = self.host_free_memory()
        if rec["memory_static_max"] > free:
            raise Failure("HOST_NOT_ENOUGH_FREE_MEMORY", rec["memory_static_max"], free)
        if not rec["HVM_boot_policy"] and not rec["PV_bootloader"] and not rec["PV_kernel"]:
            raise Failure("BOOTLOADER_FAILED", vm, "no bootloader and no HVM boot policy")
        # xapi_vm_helpers.assert_can_see_SRs: every non-empty VBD's SR plugged on the host.
        plugged = {self.db["PBD"][p]["SR"] for p in self.db["host"][self.host]["PBDs"]
                   if self.db["PBD"][p]["currently_attached"]}
        for vbd in rec["VBDs"]:
            v = self.db["VBD"][vbd]
            if not v["empty"] and self.db["VDI"][v["VDI"]]["SR"] not in plugged:
                raise Failure("VM_REQUIRES_SR", vm, self.db["VDI"][v["VDI"]]["SR"])
        rec.update(power_state="Running", domid=len(self.boots) + 1, resident_on=self.host)
        self._boot(vm, rec)
        return ""

    def _halt(self, vm: str) -> str:
        rec = self._power(vm, "Running")
        rec.update(power_state="Halted", domid=-1, resident_on=NULL)
        for vbd in rec["VBDs"]:
            self.db["VBD"][vbd]["currently_attached"] = False
        return ""

    _VM_hard_shutdown = _halt

    def _VM_clean_shutdown(self, vm: str) -> str:
        self._power(vm, "Running")
        # Our VMs never have PV drivers: XAPI cannot ask them to shut down cleanly.
        raise Failure("VM_LACKS_FEATURE", vm)

    _VM_clean_reboot = _VM_clean_shutdown

    def _VM_hard_reboot(self, vm: str) -> str:
        rec = self._power(vm, "Running")
        self._boot(vm, rec)
        return ""

    def _VM_destroy(self, vm: str) -> str:
        rec = self._power(vm, "Halted")
        for vbd in list(rec["VBDs"]):
            self._VBD_destroy(vbd)
        for vif in list(rec["VIFs"]):
            self._VIF_destroy(vif)
        del self.db["VM"][vm]
        return ""

    # VDI -------------------------------------------------------------------------------------

    def _VDI_create(self, record: dict) -> str:
        for field in ("name_label", "SR", "virtual_size", "type", "sharable", "read_only",
                      "other_config"):
            if field not in record:
                raise Failure("FIELD_TYPE_ERROR", field)
        sr = self._get("SR", record["SR"])
        size = like(0, record["virtual_size"])
        if sr["content_type"] == "iso":
            raise Failure("SR_OPERATION_NOT_SUPPORTED", record["SR"])
        image_format = dict(record.get("sm_config", {})).get("image-format", "")
        formats = next((sm.get("supported_image_formats") or [] for sm in self.db["SM"].values()
                        if sm["type"] == sr["type"]), [])
        if image_format and image_format not in formats:
            raise Failure("SR_BACKEND_FAILURE_79", "",
                          f"VDI Invalid size [opterr=image format {image_format} not supported]", "")
        if sr["type"] in VHD_SR_TYPES and image_format != "qcow2" and size > MAX_VHD_SIZE:
            # sm's VHD drivers: XenError('VDISize', opterr=...) for a VHD past vhdutil.MAX_VHD_SIZE.
            raise Failure("SR_BACKEND_FAILURE_79", "",
                          f"VDI Invalid size [opterr=VDI size must be between 1 MB and "
                          f"{MAX_VHD_SIZE // MiB} MB]", "")
        if sr["physical_utilisation"] + size > sr["physical_size"]:
            raise Failure("SR_BACKEND_FAILURE_44", "", "There is insufficient space", "")
        sr["physical_utilisation"] += size
        sr["virtual_allocation"] += size
        ref = self._add("VDI", {
            "name_label": record["name_label"], "name_description": record.get(
                "name_description", ""), "SR": record["SR"], "virtual_size": size,
            "physical_utilisation": size, "type": record["type"],
            "sharable": bool(record["sharable"]), "read_only": bool(record["read_only"]),
            "other_config": dict(record["other_config"]), "sm_config": dict(
                record.get("sm_config", {})), "xenstore_data": {}, "tags": [], "VBDs": [],
            "location": "", "managed": True, "missing": False,
        })
        sr["VDIs"].append(ref)
        path = self.vdi_path(ref)
        with open(path, "wb") as f:
            f.truncate(size)
            if sr["type"] not in ZEROED_SR_TYPES:
                # A raw LUN keeps what was on it before: stale bytes in every 64 KiB (the
                # smallest chunk), so any area an import does not write shows them.
                for offset in range(0, size, STALE_EVERY):
                    f.seek(offset)
                    f.write(STALE[: min(len(STALE), size - offset)])
        return ref

    def _VDI_destroy(self, vdi: str) -> str:
        rec = self._get("VDI", vdi)
        for vbd in list(rec["VBDs"]):
            if self.db["VBD"][vbd]["currently_attached"]:
                raise Failure("VDI_IN_USE", vdi, "destroy")
        for vbd in list(rec["VBDs"]):
            self._VBD_destroy(vbd)
        sr = self.db["SR"][rec["SR"]]
        sr["VDIs"].remove(vdi)
        sr["physical_utilisation"] -= rec["virtual_size"]
        sr["virtual_allocation"] -= rec["virtual_size"]
        self.vdi_path(vdi).unlink(missing_ok=True)
        del self.db["VDI"][vdi]
        return ""

    # VBD -------------------------------------------------------------------------------------

    def _VBD_create(self, record: dict) -> str:
        for field in ("VM", "VDI", "userdevice", "bootable", "mode", "type", "unpluggable",
                      "empty", "other_config", "qos_algorithm_type", "qos_algorithm_params"):
            if field not in record:
                raise Failure("FIELD_TYPE_ERROR", field)
        vm = self._get("VM", record["VM"])
        empty = bool(record["empty"])
        if not empty or record["VDI"] != NULL:
            self._get("VDI", record["VDI"])
        used = {self.db["VBD"][v]["userdevice"] for v in vm["VBDs"]}
        device = str(record["userdevice"])
        if device == "autodetect":
            device = str(next(i for i in range(64) if str(i) not in used))
        if device in used:
            raise Failure("DEVICE_ALREADY_EXISTS", device)
        ref = self._add("VBD", {
            "VM": record["VM"], "VDI": record["VDI"], "userdevice": device, "device": "",
            "bootable": bool(record["bootable"]), "mode": record["mode"],
            "type": record["type"], "unpluggable": bool(record["unpluggable"]), "empty": empty,
            "other_config": dict(record["other_config"]), "currently_attached": False,
            "qos_algorithm_type": record["qos_algorithm_type"],
            "qos_algorithm_params": dict(record["qos_algorithm_params"]),
        })
        vm["VBDs"].append(ref)
        if record["VDI"] != NULL:
            self.db["VDI"][record["VDI"]]["VBDs"].append(ref)
        return ref

    def _VBD_destroy(self, vbd: str) -> str:
        rec = self._get("VBD", vbd)
        if rec["currently_attached"]:
            raise Failure("OPERATION_NOT_ALLOWED", "VBD is currently attached")
        self.db["VM"][rec["VM"]]["VBDs"].remove(vbd)
        if rec["VDI"] in self.db["VDI"]:
            self.db["VDI"][rec["VDI"]]["VBDs"].remove(vbd)
        del self.db["VBD"][vbd]
        return ""

    def _VBD_insert(self, vbd: str, vdi: str) -> str:
        rec = self._get("VBD", vbd)
        self._get("VDI", vdi)
        if rec["type"] != "CD":
            raise Failure("VBD_NOT_REMOVABLE_MEDIA", vbd)
        if not rec["empty"]:
            raise Failure("VBD_NOT_EMPTY", vbd)
        rec.update(VDI=vdi, empty=False)
        self.db["VDI"][vdi]["VBDs"].append(vbd)
        return ""

    def _VBD_eject(self, vbd: str) -> str:
        rec = self._get("VBD", vbd)
        if rec["type"] != "CD":
            raise Failure("VBD_NOT_REMOVABLE_MEDIA", vbd)
        if rec["empty"]:
            raise Failure("VBD_IS_EMPTY", vbd)
        self.db["VDI"][rec["VDI"]]["VBDs"].remove(vbd)
        rec.update(VDI=NULL, empty=True)
        return ""

    # VIF -------------------------------------------------------------------------------------

    def _VIF_create(self, record: dict) -> str:
        for field in ("device", "network", "VM", "MAC", "MTU", "other_config",
                      "qos_algorithm_type", "qos_algorithm_params"):
            if field not in record:
                raise Failure("FIELD_TYPE_ERROR", field)
        vm = self._get("VM", record["VM"])
        self._get("network", record["network"])
        mac = str(record["MAC"]).lower()
        if mac and not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac):
            raise Failure("MAC_INVALID", record["MAC"])
        if any(self.db["VIF"][v]["device"] == str(record["device"]) for v in vm["VIFs"]):
            raise Failure("DEVICE_ALREADY_EXISTS", record["device"])
        auto = not mac
        if auto:
            mac = "ce:" + ":".join(f"{b:02x}" for b in os.urandom(5))
        ref = self._add("VIF", {
            "device": str(record["device"]), "network": record["network"], "VM": record["VM"],
            "MAC": mac, "MAC_autogenerated": auto, "MTU": like(0, record["MTU"]),
            "other_config": dict(record["other_config"]), "currently_attached": False,
            "qos_algorithm_type": record["qos_algorithm_type"],
            "qos_algorithm_params": dict(record["qos_algorithm_params"]),
            "locking_mode": record.get("locking_mode", "network_default"),
        })
        vm["VIFs"].append(ref)
        self.db["network"][record["network"]]["VIFs"].append(ref)
        return ref

    def _VIF_destroy(self, vif: str) -> str:
        rec = self._get("VIF", vif)
        self.db["VM"][rec["VM"]]["VIFs"].remove(vif)
        self.db["network"][rec["network"]]["VIFs"].remove(vif)
        del self.db["VIF"][vif]
        return ""

    # task ------------------------------------------------------------------------------------

    def _task_create(self, label: str, description: str) -> str:
        return self._add("task", {"name_label": label, "name_description": description,
                                  "status": "pending", "progress": 0.0, "error_info": [],
                                  "result": "", "created": "", "finished": ""})

    def _task_destroy(self, task: str) -> str:
        self._get("task", task)
        del self.db["task"][task]
        return ""

    def _task_cancel(self, task: str) -> str:
        self._get("task", task)["status"] = "cancelling"
        return ""

    # --- /import_raw_vdi -----------------------------------------------------------------------

    def import_raw_vdi(self, query: dict, body, length: int | None, respond) -> None:
        """XAPI's handler: check the session and VDI, answer 200, then read the body."""
        with self.lock:
            session = query.get("session_id", "")
            if session not in self.sessions:
                respond(403, {})
                return
            vdi = query.get("vdi", "")
            if vdi not in self.db["VDI"]:
                vdi = next((r for r, rec in self.db["VDI"].items() if rec["uuid"] == vdi), "")
            if not vdi:
                respond(404, {})
                return
            task = query.get("task_id") or self._task_create("VDI.import", "")
            if task not in self.db["task"]:
                respond(404, {})
                return
            self.calls.append(("import_raw_vdi", (vdi, query.get("format", "raw"),
                                                  "chunked" in query)))
            path, size = self.vdi_path(vdi), self.db["VDI"][vdi]["virtual_size"]
            fmt = query.get("format", "raw")
        if fmt != "raw":
            self._finish(task, ["INTERNAL_ERROR", f"Unknown format {fmt}"])
            respond(404, {})
            return
        respond(200, {"Task-id": task, "Content-Type": "application/octet-stream"})
        try:
            with open(path, "r+b") as out:
                if "chunked" in query:
                    self._receive_chunked(body, out, size)
                else:
                    self._receive_raw(body, out, size, length)
        except Exception as e:  # noqa: BLE001 - XAPI turns any failure into the task's error
            self._finish(task, ["INTERNAL_ERROR", f"Caught exception: {e}"])
            return
        self._finish(task, None)

    def _finish(self, task: str, error: list | None) -> None:
        with self.lock:
            rec = self.db["task"].get(task)
            if rec is None:
                return
            rec.update(progress=1.0, status="failure" if error else "success",
                       error_info=error or [])

    @staticmethod
    def _read(body, n: int) -> bytes:
        data = body.read(n)
        if len(data) != n:
            raise OSError(f"End of file after {len(data)} of {n} bytes")
        return data

    def _receive_chunked(self, body, out, size: int) -> None:
        while True:
            offset, length = HEADER.unpack(self._read(body, HEADER.size))
            if offset == 0 and length == 0:
                return
            if offset + length > size:
                raise OSError(f"Write of {length} bytes at {offset} beyond the end of the "
                              f"VDI ({size} bytes)")
            out.seek(offset)
            while length:
                piece = self._read(body, min(length, MiB))
                out.write(piece)
                length -= len(piece)

    def _receive_raw(self, body, out, size: int, length: int | None) -> None:
        if length is not None and length > size:
            raise OSError(f"Image of {length} bytes is larger than the VDI ({size} bytes)")
        remaining = length if length is not None else size
        while remaining:
            piece = body.read(min(remaining, MiB))
            if not piece:
                break
            out.write(piece)
            remaining -= len(piece)

    # --- HTTP ----------------------------------------------------------------------------------

    def _make_cert(self) -> ssl.SSLContext:
        self.cert = self.root / "sim-cert.pem"
        key = self.root / "sim-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(self.cert)],
                       check=True, capture_output=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        return ctx

    def start(self) -> "XapiSim":
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each answer waits out a delayed ACK (40 ms)

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                try:
                    params, method = xmlrpc.client.loads(self.rfile.read(length))
                    result = {"Status": "Success", "Value": wire(sim.call(method, params))}
                except Failure as f:
                    result = {"Status": "Failure", "ErrorDescription": f.description}
                body = xmlrpc.client.dumps((result,), methodresponse=True,
                                           allow_none=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                url = urlsplit(self.path)
                self.close_connection = True
                if url.path != "/import_raw_vdi":
                    self.send_error(404)
                    return
                if self.headers.get("Transfer-Encoding"):
                    self.send_error(403, "import code cannot handle encoding")
                    return
                query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                length = self.headers.get("Content-Length")

                def respond(status, headers):
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.flush()

                sim.import_raw_vdi(query, self.rfile, int(length) if length else None, respond)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if self.tls:
            self.httpd.socket = self._make_cert().wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        port = self.httpd.server_address[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=10)
            self.httpd = None

    def __enter__(self) -> "XapiSim":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
