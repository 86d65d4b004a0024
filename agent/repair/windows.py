"""The repair of a Windows guest: its SYSTEM hive, so Windows starts on XenServer's emulated disks.

Moved off its SATA/RAID/SCSI controller, Windows stops at boot with INACCESSIBLE_BOOT_DEVICE
(0x7B): the driver of the controller the VM presents is not a boot-start driver. XenServer shows a
BIOS VM its disks on an emulated Intel PIIX3 IDE controller and a UEFI VM on an emulated NVMe
controller. In every ControlSet of the SYSTEM hive this repair:

- BIOS: starts the inbox IDE stack at boot (`intelide`, `pciide`, `atapi`: Start=0), and where
  the hive has a CriticalDeviceDatabase (XP to 7) adds the entries Microsoft's fix for moving a
  system disk to another IDE controller adds (KB 314082), so the PIIX IDE controller and its
  channels find their service before Plug and Play runs;
- UEFI: starts `stornvme` at boot (Windows 8.1/2012 R2 and later have it inbox; older Windows
  says so in the plan);
- resets Windows 8+'s `StartOverride` values of those services, which would win over Start;
- disables the services of other hypervisors' tools (VMware, VirtualBox, Parallels: Start=4),
  except a driver some device class loads as a filter (disabling it would stop that class).

Planning reads the hive and changes nothing; the plan shows every value as
`key\\value: old -> new` and as a .reg diff. Applying backs the hive up beside the guest's log,
writes through hivex, and a second run finds nothing to do. The vendor's PV drivers are not
staged: the plan says so.
"""

from __future__ import annotations

import difflib
import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent import fsstate
from agent.repair.hive import REG_DWORD, REG_EXPAND_SZ, REG_MULTI_SZ, REG_SZ, Hive, HiveError

SYSTEM_HIVE = "Windows/System32/config/SYSTEM"
DRIVERS = "Windows/System32/drivers"
LOG = "Windows/xenp2v/repair.log"
BACKUPS = "Windows/xenp2v/backups"
HKLM = "HKEY_LOCAL_MACHINE\\SYSTEM"

BOOT, DISABLED = 0, 4                                     # Start values
IDE_CLASS = "{4D36E96A-E325-11CE-BFC1-08002BE10318}"      # hdc: IDE ATA/ATAPI controllers
DISK_CLASS = "{4D36E967-E325-11CE-BFC1-08002BE10318}"     # DiskDrive

# (service, Group, ImagePath): the inbox IDE stack, as mshdc.inf installs it.
IDE_SERVICES = (("intelide", "System Bus Extender", r"system32\drivers\intelide.sys"),
                ("pciide", "System Bus Extender", r"system32\drivers\pciide.sys"),
                ("atapi", "SCSI miniport", r"system32\drivers\atapi.sys"))
NVME_SERVICE = "stornvme"
# CriticalDeviceDatabase entries for the emulated IDE: device id → (class, service). 8086:7010 is
# the PIIX3 IDE function XenServer's QEMU emulates, 8086:7111 the PIIX4 one of other emulators.
IDE_CRITICAL_DEVICES = {
    "pci#ven_8086&dev_7010": (IDE_CLASS, "intelide"),
    "pci#ven_8086&dev_7111": (IDE_CLASS, "intelide"),
    "pci#cc_0101": (IDE_CLASS, "pciide"),
    "primary_ide_channel": (IDE_CLASS, "atapi"),
    "secondary_ide_channel": (IDE_CLASS, "atapi"),
    "*pnp0600": (IDE_CLASS, "atapi"),
    "gendisk": (DISK_CLASS, "disk"),
}
# Services of other hypervisors' guest tools that fail, hang or poll for their device on Xen.
OTHER_HYPERVISORS = {
    "VMware": ("VMTools", "vmci", "vsock", "vmhgfs", "vmmemctl", "vmrawdsk", "vmmouse",
               "vmusbmouse"),
    "VirtualBox": ("VBoxGuest", "VBoxSF", "VBoxService", "VBoxMouse"),
    "Parallels": ("prl_boot", "prl_dd", "prl_eth5", "prl_fs", "prl_memdev", "prl_mouf",
                  "prl_pv32", "prl_pv64", "prl_scsi", "prl_sound", "prl_strg", "prl_tg",
                  "prl_time", "prl_uprof", "prl_va", "prl_tools_service"),
}


class WindowsRepairError(Exception):
    """The Windows repair cannot go on; the message says what to do next."""


@dataclass(frozen=True)
class ValueChange:
    """One registry value: `old` None means it is created."""

    key: str                          # from the hive's root: ControlSet001\Services\intelide
    name: str
    kind: int
    new: bytes
    old: tuple[int, bytes] | None
    why: str

    def line(self) -> str:
        """`HKEY_LOCAL_MACHINE\\SYSTEM\\…\\intelide\\Start: dword:3 -> dword:0`"""
        old = "(absent)" if self.old is None else _short(*self.old)
        return f"{HKLM}\\{self.key}\\{self.name}: {old} -> {_short(self.kind, self.new)}"


@dataclass
class WindowsPlan:
    changes: list[ValueChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # what the plan saw or did not do
    warnings: list[str] = field(default_factory=list)   # what a technician must act on

    def warn(self, line: str) -> None:
        if line not in self.warnings:
            self.warnings.append(line)

    def render(self) -> str:
        """Every change as `key\\value: old -> new`, then the same as a diff of .reg text."""
        out = [f"== Windows registry (SYSTEM hive): "
               + (f"{len(self.changes)} value(s)" if self.changes else "nothing to do")]
        out += [f"   {note}" for note in self.notes]
        out += [f"   WARNING: {w}" for w in self.warnings]
        out += [f"   {c.line()}    # {c.why}" for c in self.changes]
        if self.changes:
            out.append(reg_diff(self.changes))
        return "\n".join(out) + "\n"


def reg_diff(changes: list[ValueChange]) -> str:
    """A unified diff between the touched values before and after, in regedit's .reg syntax."""
    before, after = [], []
    for key in dict.fromkeys(c.key for c in changes):
        header = f"[{HKLM}\\{key}]\n"
        before.append(header)
        after.append(header)
        for c in (c for c in changes if c.key == key):
            if c.old is not None:
                before.append(_reg_line(c.name, *c.old))
            after.append(_reg_line(c.name, c.kind, c.new))
        before.append("\n")
        after.append("\n")
    return "".join(difflib.unified_diff(before, after, "a/SYSTEM.reg", "b/SYSTEM.reg"))


# --- planning -------------------------------------------------------------------------------------

def control_sets(hive: Hive) -> list[str]:
    """ControlSet001, ControlSet002, …: every one the hive holds (the one Windows boots is named
    in Select\\Current, the others are its last-known-good and failed sets: all must boot)."""
    return sorted(k for k in hive.subkeys("") if re.fullmatch(r"(?i)ControlSet\d{3}", k))


def plan(hive: Hive, firmware: str, drivers: set[str]) -> WindowsPlan:
    """What the SYSTEM `hive` needs for a XenServer VM of `firmware` ("bios" or "uefi");
    `drivers` are the lower-case file names in the guest's System32\\drivers."""
    result = WindowsPlan()
    sets = control_sets(hive)
    if not sets:
        raise WindowsRepairError("The SYSTEM hive holds no ControlSet; it is not a Windows "
                                 "SYSTEM hive repair can change. Nothing was changed.")
    result.notes.append(f"Control sets: {', '.join(sets)}; the VM boots with "
                        + ("BIOS: disks on the emulated PIIX3 IDE controller."
                           if firmware == "bios" else "UEFI: disks on the emulated NVMe controller."))
    for cs in sets:
        if firmware == "bios":
            _ide(hive, cs, drivers, result)
        else:
            _nvme(hive, cs, drivers, result)
        _other_hypervisors(hive, cs, result)
    result.notes.append("XenServer PV drivers are not staged: install the vendor's Windows PV "
                        "drivers (XenServer VM Tools) in the VM once it runs.")
    return result


def _dword(value: int) -> bytes:
    return struct.pack("<I", value)


def _set(hive: Hive, result: WindowsPlan, key: str, name: str, kind: int, new: bytes,
         why: str) -> None:
    old = hive.value(key, name)
    if old != (kind, new):
        result.changes.append(ValueChange(key, name, kind, new, old, why))


def _boot_start(hive: Hive, cs: str, service: str, why: str, result: WindowsPlan) -> None:
    """Start=0 for `service`, and every StartOverride value (Windows 8+) to 0 as well."""
    key = f"{cs}\\Services\\{service}"
    _set(hive, result, key, "Start", REG_DWORD, _dword(BOOT), why)
    override = f"{key}\\StartOverride"
    for name, (kind, data) in hive.values(override).items():
        if kind == REG_DWORD and data != _dword(BOOT):
            result.changes.append(ValueChange(override, name, REG_DWORD, _dword(BOOT),
                                              (kind, data), f"{why} (overrides Start)"))


def _ide(hive: Hive, cs: str, drivers: set[str], result: WindowsPlan) -> None:
    for service, group, image in IDE_SERVICES:
        key = f"{cs}\\Services\\{service}"
        why = f"{service} starts at boot: the VM's disk is on its IDE controller"
        file = f"{service}.sys"
        if hive.node(key) is not None:
            _boot_start(hive, cs, service, why, result)
        elif file in drivers:
            for name, kind, data in (("Type", REG_DWORD, _dword(1)),
                                     ("Start", REG_DWORD, _dword(BOOT)),
                                     ("ErrorControl", REG_DWORD, _dword(1)),
                                     ("Group", REG_SZ, _sz(group)),
                                     ("ImagePath", REG_EXPAND_SZ, _sz(image))):
                _set(hive, result, key, name, kind, data, f"{service} installed as a boot driver")
        else:
            result.warn(f"Windows has no {service} driver ({file} is not in "
                        f"\\Windows\\System32\\drivers): it will not find its disk on the VM's IDE "
                        f"controller. Copy {file} from the install media (on XP/2003 from "
                        f"\\Windows\\Driver Cache\\i386\\driver.cab) and run repair again.")
        if file not in drivers and hive.node(key) is not None:
            result.warn(f"{file} is not in \\Windows\\System32\\drivers although the {service} "
                        f"service exists: copy it there (on XP/2003 from "
                        f"\\Windows\\Driver Cache\\i386\\driver.cab) or Windows will not boot.")
    cddb = f"{cs}\\Control\\CriticalDeviceDatabase"
    if hive.node(cddb) is None:
        return
    planned = {c.key.lower() for c in result.changes}
    for device, (klass, service) in IDE_CRITICAL_DEVICES.items():
        service_key = f"{cs}\\Services\\{service}"
        if hive.node(service_key) is None and service_key.lower() not in planned:
            continue   # said above: no such driver to bind
        why = f"the emulated IDE device {device} is bound to {service} at boot"
        key = f"{cddb}\\{device}"
        _set(hive, result, key, "ClassGUID", REG_SZ, _sz(klass), why)
        _set(hive, result, key, "Service", REG_SZ, _sz(service), why)


def _nvme(hive: Hive, cs: str, drivers: set[str], result: WindowsPlan) -> None:
    if hive.node(f"{cs}\\Services\\{NVME_SERVICE}") is None:
        result.warn("This Windows has no inbox NVMe driver (stornvme; Windows 8.1 and Server 2012 "
                    "R2 have it, 7 and 2008 R2 only with update KB2990941): it cannot boot from a "
                    "UEFI VM's NVMe disk. Install that update on the source first, or migrate it "
                    "as a BIOS VM if it can boot that way.")
        return
    if "stornvme.sys" not in drivers:
        result.warn("stornvme.sys is not in \\Windows\\System32\\drivers although its service "
                    "exists: Windows will not find its disk on the VM's NVMe controller.")
    _boot_start(hive, cs, NVME_SERVICE,
                "stornvme starts at boot: the VM's disk is on its NVMe controller", result)


def _other_hypervisors(hive: Hive, cs: str, result: WindowsPlan) -> None:
    filters = class_filters(hive, cs)
    for vendor, services in OTHER_HYPERVISORS.items():
        for service in services:
            key = f"{cs}\\Services\\{service}"
            if hive.node(key) is None:
                continue
            if service.lower() in filters:
                result.notes.append(f"{cs}: {vendor}'s {service} left as it is: {filters[service.lower()]} "
                                    "loads it as a filter, and a disabled filter stops those "
                                    "devices. Uninstall the tools in the VM.")
                continue
            _set(hive, result, key, "Start", REG_DWORD, _dword(DISABLED),
                 f"{vendor} tools' {service} disabled: its device is not on Xen")


def class_filters(hive: Hive, cs: str) -> dict[str, str]:
    """Lower-case service name → the device class key that names it in its Upper/LowerFilters."""
    out: dict[str, str] = {}
    base = f"{cs}\\Control\\Class"
    for klass in hive.subkeys(base):
        for name in ("UpperFilters", "LowerFilters"):
            value = hive.value(f"{base}\\{klass}", name)
            if value and value[0] == REG_MULTI_SZ:
                for service in value[1].decode("utf-16-le", "replace").split("\0"):
                    if service:
                        out.setdefault(service.lower(), f"device class {klass}")
    return out


# --- the hive file --------------------------------------------------------------------------------

def hive_dirty(path: Path) -> bool:
    """Does the hive file's header say writes are pending in its transaction logs (.LOG1/.LOG2)?
    Its two sequence numbers differ then (the primary and secondary sequence of the base block)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"regf":
        raise WindowsRepairError(f"{path} is not a registry hive; nothing was changed.")
    primary, secondary = struct.unpack_from("<II", head, 4)
    return primary != secondary


def find(root: Path, relative: str) -> Path | None:
    """`relative` under `root`, each part matched case-insensitively as Windows would."""
    current = root
    for part in relative.split("/"):
        try:
            names = {p.name.lower(): p for p in current.iterdir()}
        except OSError:
            return None
        current = names.get(part.lower())
        if current is None:
            return None
    return current


def is_windows(root: Path) -> bool:
    return find(root, SYSTEM_HIVE) is not None


def driver_files(root: Path) -> set[str]:
    where = find(root, DRIVERS)
    return {p.name.lower() for p in where.iterdir()} if where and where.is_dir() else set()


def plan_root(root: Path, firmware: str) -> tuple[Path, WindowsPlan]:
    """The SYSTEM hive of the Windows mounted at `root`, and its plan."""
    system = find(root, SYSTEM_HIVE)
    if system is None:
        raise WindowsRepairError(f"No {SYSTEM_HIVE} under {root}; nothing was changed.")
    if hive_dirty(system):
        raise WindowsRepairError(
            "The SYSTEM hive has changes still in its transaction logs (Windows was not shut down "
            f"cleanly): on the source, {fsstate.WINDOWS_SHUTDOWN}; capture again and repair. "
            "Nothing was changed.")
    try:
        with Hive(system) as hive:
            return system, plan(hive, firmware, driver_files(root))
    except HiveError as e:
        raise WindowsRepairError(f"{e} Nothing was changed.") from None


def apply(root: Path, system: Path, result: WindowsPlan, say: Callable[[str], None]) -> Path:
    """Back the hive up, write every change through hivex, log it in the guest. Returns the
    backup's path. When a write fails the hive is put back from the backup."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backups = root / BACKUPS / stamp
    backups.mkdir(parents=True, exist_ok=True)
    backup = backups / system.name
    shutil.copy2(system, backup)
    say(f"Backed up {system.name} to \\{str(backup.relative_to(root)).replace('/', chr(92))}")
    try:
        with Hive(system, write=True) as hive:
            for change in result.changes:
                hive.set_value(change.key, change.name, change.kind, change.new)
                say(f"  {change.line()}")
            hive.commit()
    except HiveError as e:
        shutil.copy2(backup, system)
        raise WindowsRepairError(f"{e} The SYSTEM hive was put back from its backup {backup}; "
                                 "nothing was changed.") from None
    log = root / LOG
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"--- xenp2v repair, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n")
        f.write("".join(f"{c.line()}\n" for c in result.changes))
        f.write(f"backup: {backup.relative_to(root)}\n")
    return backup


def repair_mounted(root: Path, firmware: str, dry_run: bool,
                   say: Callable[[str], None] = print) -> dict:
    """Plan (and unless `dry_run`, apply) the repair of the Windows mounted at `root`; the
    report's `steps` holds one entry, `changes` its lines. Raises WindowsRepairError."""
    system, result = plan_root(root, firmware)
    say(result.render())
    report = {"family": "windows", "dry_run": dry_run, "changed": bool(result.changes),
              "steps": [{"step": "Windows registry", "changes": [c.line() for c in result.changes],
                         "notes": result.notes, "warnings": result.warnings}],
              "warnings": result.warnings}
    if dry_run:
        report["status"] = "planned"
        return report
    if not result.changes:
        say("Nothing to change: this Windows is already repaired.")
        report["status"] = "ok"
        return report
    report["backup"] = str(apply(root, system, result, say).relative_to(root))
    report["status"] = "ok"
    return report


# --- formatting -----------------------------------------------------------------------------------

def _sz(text: str) -> bytes:
    return (text + "\0").encode("utf-16-le")


def _short(kind: int, data: bytes) -> str:
    if kind == REG_DWORD and len(data) == 4:
        return f"dword:{struct.unpack('<I', data)[0]}"
    if kind in (REG_SZ, REG_EXPAND_SZ):
        return '"' + data.decode("utf-16-le", "replace").rstrip("\0") + '"'
    return f"hex({kind}):{data.hex(',')}"


def _reg_line(name: str, kind: int, data: bytes) -> str:
    """One value as regedit exports it."""
    label = "@" if name == "" else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if kind == REG_DWORD and len(data) == 4:
        text = f"dword:{struct.unpack('<I', data)[0]:08x}"
    elif kind == REG_SZ:
        value = data.decode("utf-16-le", "replace").rstrip("\0")
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        text = f"hex({kind}):{data.hex(',')}" if kind != 3 else f"hex:{data.hex(',')}"
    return f"{label}={text}\n"
