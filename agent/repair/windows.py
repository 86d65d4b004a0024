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

When given the vendor's PV driver package, or when the old NICs had static addresses, a
first-boot job (firstboot.py) installs the drivers and sets the addresses on the VM's NIC before
anyone logs on: its files go under C:\\Windows\\xenp2v, its start is two values of SYSTEM\\Setup.

Planning reads the hive and changes nothing; the plan shows every value as
`key\\value: old -> new` and as a .reg diff, and every file it would write. Applying backs the
hive (and any file it replaces) up beside the guest's log, writes the files, then the hive
through hivex, and a second run finds nothing to do.
"""

from __future__ import annotations

import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.disk import fsstate
from agent.repair import firstboot
from agent.repair.firstboot import FirstBoot
from agent.repair.hive import REG_DWORD, REG_EXPAND_SZ, REG_MULTI_SZ, REG_SZ, Hive, HiveError
from agent.windows.winpath import find

SYSTEM_HIVE = "Windows/System32/config/SYSTEM"
SOFTWARE_HIVE = "Windows/System32/config/SOFTWARE"
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
    # Files to write, relative to the Windows volume's root: (path, new bytes, or a file here).
    files: list[tuple[str, bytes | Path]] = field(default_factory=list)
    first_boot: FirstBoot | None = None    # the first-boot job, when it is staged

    def warn(self, line: str) -> None:
        if line not in self.warnings:
            self.warnings.append(line)

    def render(self) -> str:
        """Every change as `key\\value: old -> new`, then the same as a diff of .reg text."""
        out = [f"== Windows registry (SYSTEM hive): "
               + (f"{len(self.changes)} value(s)" if self.changes else
                  f"{len(self.files)} file(s)" if self.files else "nothing to do")]
        out += [f"   {note}" for note in self.notes]
        out += [f"   WARNING: {w}" for w in self.warnings]
        out += [f"   {c.line()}    # {c.why}" for c in self.changes]
        out += [f"   write C:\\{path.replace('/', chr(92))}" for path, _ in self.files]
        if self.changes:
            out.append(reg_diff(self.changes))
        script = next((data for path, data in self.files if path == firstboot.SCRIPT), None)
        if isinstance(script, bytes):
            out.append(f"--- C:\\{firstboot.SCRIPT.replace('/', chr(92))}\n"
                       + script.decode("ascii").replace("\r\n", "\n"))
        return "\n".join(out) + "\n"


def reg_diff(changes: list[ValueChange]) -> str:
    """A unified diff between the touched values before and after, in regedit's .reg syntax: one
    hunk per key, its header as context, its old values removed and its new ones added (a diff
    of the whole text would pair equal lines of different keys)."""
    out = ["--- a/SYSTEM.reg\n", "+++ b/SYSTEM.reg\n"]
    at_old = at_new = 1
    for key in dict.fromkeys(c.key for c in changes):
        mine = [c for c in changes if c.key == key]
        gone = [_reg_line(c.name, *c.old) for c in mine if c.old is not None]
        added = [_reg_line(c.name, c.kind, c.new) for c in mine]
        old_len, new_len = len(gone) + 2, len(added) + 2    # with the header and the blank line
        out.append(f"@@ -{at_old},{old_len} +{at_new},{new_len} @@\n")
        out.append(f" [{HKLM}\\{key}]\n")
        out += [f"-{line}" for line in gone] + [f"+{line}" for line in added] + [" \n"]
        at_old += old_len
        at_new += new_len
    return "".join(out)


# --- planning -------------------------------------------------------------------------------------

def control_sets(hive: Hive) -> list[str]:
    """ControlSet001, ControlSet002, …: every one the hive holds (the one Windows boots is named
    in Select\\Current, the others are its last-known-good and failed sets: all must boot)."""
    return sorted(k for k in hive.subkeys("") if re.fullmatch(r"(?i)ControlSet\d{3}", k))


def plan(hive: Hive, firmware: str, drivers: set[str], job: FirstBoot | None = None) -> WindowsPlan:
    """What the SYSTEM `hive` needs for a XenServer VM of `firmware` ("bios" or "uefi");
    `drivers` are the lower-case file names in the guest's System32\\drivers; `job` what the
    first boot does (its files are added by plan_root)."""
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
    job = job or FirstBoot()
    if job.drivers is None:
        result.notes.append("XenServer PV drivers are not staged: give the vendor's Windows driver "
                            "package with --windows-drivers DIR (p2v.windows_drivers=), or install "
                            "them (XenServer VM Tools) in the VM once it runs.")
    if not job.empty:
        _first_boot(hive, job, result)
    return result


def _first_boot(hive: Hive, job: FirstBoot, result: WindowsPlan) -> None:
    """Winlogon's Setup hook runs the first-boot script (firstboot.py says why this hook)."""
    setup_type = hive.value(firstboot.SETUP, "SetupType")
    current = hive.value(firstboot.SETUP, "CmdLine")
    ours = _sz(firstboot.cmdline(job.system_root))
    busy = setup_type not in (None, (REG_DWORD, _dword(0)), (REG_DWORD, _dword(2)))
    if busy or (setup_type == (REG_DWORD, _dword(2)) and current and current[1] != ours):
        result.warn(f"Windows' setup hook is in use (HKLM\\SYSTEM\\Setup SetupType "
                    f"{_short(*setup_type) if setup_type else '(absent)'}, CmdLine "
                    f"{_short(*current) if current else '(absent)'}): Windows has not finished "
                    "installing. The PV drivers and static addresses are not staged; finish "
                    "Windows' setup on the source, or set them by hand in the VM.")
        return
    result.first_boot = job
    why = "first boot: winlogon runs C:\\Windows\\xenp2v\\firstboot.cmd before logon"
    _set(hive, result, firstboot.SETUP, "CmdLine", REG_SZ, ours, why)
    _set(hive, result, firstboot.SETUP, "SetupType", REG_DWORD,
         _dword(firstboot.RUN_CMDLINE_THEN_LOGON), why)
    if job.drivers:
        d = job.drivers
        if job.installs:
            result.notes.append("First boot installs the PV drivers from "
                                f"{d.root}: " + ", ".join(job.installs) + "; then restarts once.")
        if d.infs and not job.pnputil:
            result.warn("Windows XP and Server 2003 have no pnputil: the .inf drivers are copied "
                        "to C:\\Windows\\xenp2v\\drivers but not installed; install them with "
                        "Device Manager (or the vendor's installer) in the VM.")
    for adapter, mac in job.nics:
        on = f"the VM's NIC {mac}" if mac else "the VM's first NIC"
        result.notes.append(f"First boot sets the old adapter {adapter.describe()} on {on}.")


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


def unwritable(node: str) -> str | None:
    """Why the NTFS on `node` must not be written, as words that follow "The NTFS on NODE"; None
    when it may. Hibernation or Fast Startup left it mounted in the hibernated session (ntfs-3g
    then mounts it read-only), or Windows lost power with changes in its $LogFile (ntfs-3g
    resets the log on a read-write mount, throwing away what Windows would replay)."""
    try:
        if fsstate.head(node, "/hiberfil.sys", 4)[:4].lower() == b"hibr":
            return fsstate.NTFS_HIBERNATED
        if not fsstate.logfile_clean(fsstate.head(node, "$LogFile", 2 * 65536)):
            return fsstate.NTFS_LOG_TO_REPLAY
    except fsstate.CannotTell:
        return None   # the mount says whether it can be written
    return None


def refusal(node: str, why: str) -> str:
    """The sentence that refuses to repair the Windows on `node`, which `why` (unwritable)."""
    return (f"The NTFS on {node} {why}: the registry cannot be changed without losing what "
            f"Windows kept there. On the source, {fsstate.WINDOWS_SHUTDOWN}; capture again and "
            "repair. Nothing was changed.")


def place(root: Path, relative: str) -> Path:
    """Where `relative` goes under `root`: each existing part as the volume spells it (NTFS
    through ntfs-3g is case-sensitive, Windows is not), the rest as given."""
    current = root
    for part in relative.split("/"):
        found = find(current, part) if current.is_dir() else None
        current = found if found is not None else current / part
    return current


def on_c(root: Path, path: Path) -> str:
    """`path` under the Windows volume mounted at `root`, as Windows names it: C:\\Windows\\…"""
    return "C:\\" + str(path.relative_to(root)).replace("/", "\\")


def is_windows(root: Path) -> bool:
    return find(root, SYSTEM_HIVE) is not None


def has_system32(root: Path) -> bool:
    """Does the volume at `root` hold a Windows folder (Windows\\System32), hive or not?"""
    return find(root, "Windows/System32") is not None


def driver_files(root: Path) -> set[str]:
    where = find(root, DRIVERS)
    return {p.name.lower() for p in where.iterdir()} if where and where.is_dir() else set()


def plan_root(root: Path, firmware: str, drivers_from: Path | None = None,
              vm_macs: list[str] | None = None) -> tuple[Path, WindowsPlan]:
    """The SYSTEM hive of the Windows mounted at `root`, and its plan. `drivers_from`: a folder
    with the vendor's PV driver package; `vm_macs`: the VM's NICs' MACs, in order (None when
    not known: a lone static adapter then goes to whichever NIC the VM has)."""
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
            job, warnings = first_boot_job(root, hive, drivers_from, vm_macs)
            result = plan(hive, firmware, driver_files(root), job)
    except HiveError as e:
        fix = (" On the source, run 'chkdsk C: /f' and check that Windows starts; then capture "
               "again and repair." if "is damaged" in str(e) else "")
        raise WindowsRepairError(f"{e}{fix} Nothing was changed.") from None
    for w in warnings:
        result.warn(w)
    if result.first_boot:
        result.files = _changed_files(root, result.first_boot)
    return system, result


def first_boot_job(root: Path, hive: Hive, drivers_from: Path | None,
                   vm_macs: list[str] | None) -> tuple[FirstBoot, list[str]]:
    """What the first boot of the Windows at `root` does, and warnings about what it cannot."""
    warnings: list[str] = []
    cs = firstboot.booted_control_set(hive) or (control_sets(hive) or [""])[0]
    version, system_root = "", "C:\\Windows"
    software = find(root, SOFTWARE_HIVE)
    if software is not None:
        with Hive(software) as sw:
            key = r"Microsoft\Windows NT\CurrentVersion"
            found = sw.value(key, "CurrentVersion")
            version = found[1].decode("utf-16-le", "replace").rstrip("\0") if found else ""
            found = sw.value(key, "SystemRoot")
            if found:
                system_root = found[1].decode("utf-16-le", "replace").rstrip("\0")
    job = FirstBoot(pnputil=not version.startswith("5."), system_root=system_root)
    if drivers_from is not None:
        env = hive.value(f"{cs}\\Control\\Session Manager\\Environment", "PROCESSOR_ARCHITECTURE")
        machine = env[1].decode("utf-16-le", "replace").rstrip("\0").upper() if env else "AMD64"
        arch = {"AMD64": "x64", "X86": "x86"}.get(machine)
        job.drivers = firstboot.driver_package(drivers_from, arch) if arch else None
        if job.drivers and job.drivers.left_out:
            warnings.append("The first-boot script cannot name safely (a %, a quote or a "
                            "character outside ASCII): " + ", ".join(job.drivers.left_out) +
                            "; not staged. Rename them (ASCII letters, digits, spaces, "
                            "punctuation other than % and \") and run repair again.")
            if not job.drivers.infs and not job.drivers.msis:
                job.drivers = None
        elif job.drivers is None:
            warnings.append(f"{drivers_from} holds no .inf driver or .msi installer for this "
                            f"Windows ({machine}): no PV drivers are staged. Give the folder of "
                            "the vendor's Windows PV drivers for this architecture.")
    adapters = firstboot.static_adapters(hive, cs)
    if vm_macs is None:
        job.nics = [(a, None) for a in adapters[:1]]
        if len(adapters) > 1:
            warnings.append(f"{len(adapters)} adapters had static addresses and the VM's NICs "
                            "are not known here (repair --disk without --job): only "
                            f"{adapters[0].name}'s are set, on the VM's first NIC; set the others "
                            "by hand in the VM.")
    else:
        job.nics = list(zip(adapters, vm_macs))
        for adapter in adapters[len(vm_macs):]:
            warnings.append(f"The VM has no NIC for the old adapter {adapter.describe()}: its "
                            "addresses are not set. Add a NIC to the VM and run repair again.")
        if len(job.nics) > 1:
            warnings.append("Several old adapters had static addresses: they go to the VM's NICs "
                            "in order (" + "; ".join(f"{a.name} -> {m}" for a, m in job.nics)
                            + "); check each in the VM.")
    return job, warnings


def _changed_files(root: Path, job: FirstBoot) -> list[tuple[str, bytes | Path]]:
    """The first-boot files whose content on the volume differs from the job's."""
    wanted: list[tuple[str, bytes | Path]] = [(firstboot.SCRIPT, firstboot.script(job).encode("ascii"))]
    if job.drivers:
        wanted += [(f"{firstboot.DRIVERS}/{rel}", job.drivers.root / rel) for rel in job.drivers.files]
    out = []
    for path, data in wanted:
        new = data if isinstance(data, bytes) else data.read_bytes()
        there = find(root, path)
        if there is None or there.read_bytes() != new:
            out.append((path, data))
    return out


def apply(root: Path, system: Path, result: WindowsPlan, say: Callable[[str], None]) -> Path:
    """Back the hive up, write every change through hivex, log it in the guest. Returns the
    backup's path. When a write fails the hive is put back from the backup."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backups = place(root, BACKUPS) / stamp
    backup = backups / system.name
    made = next((p for p in reversed([backups, *backups.parents]) if not p.exists()), None)
    try:
        backups.mkdir(parents=True, exist_ok=True)
        shutil.copy2(system, backup)
    except OSError as e:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise WindowsRepairError(
            f"Cannot back up the SYSTEM hive to {on_c(root, backup)}: {e.strerror}. Make room on the "
            f"Windows volume (the backup needs {system.stat().st_size // 1024 + 1} KiB free, the "
            "new hive as much again): delete or move files there, or extend the VM's disk, and "
            "run repair again. Nothing was changed.") from None
    say(f"Backed up {system.name} to {on_c(root, backup)}")
    written: list[str] = []
    try:
        _write_files(root, result.files, backups, written, say)
        with Hive(system, write=True) as hive:
            for change in result.changes:
                hive.set_value(change.key, change.name, change.kind, change.new)
                say(f"  {change.line()}")
            if result.changes:
                hive.commit()
    except (HiveError, OSError) as e:
        shutil.copy2(backup, system)
        _put_back(root, written, backups)
        said = str(e).replace(str(system), on_c(root, system))
        raise WindowsRepairError(f"{said} The SYSTEM hive was put back from its backup "
                                 f"{on_c(root, backup)}; "
                                 "nothing was changed.") from None
    log = place(root, LOG)
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"--- xenp2v repair, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n")
            f.write("".join(f"{c.line()}\n" for c in result.changes))
            f.write("".join(f"wrote {path}\n" for path, _ in result.files))
            f.write(f"backup: {backup.relative_to(root)}\n")
    except OSError as e:   # the repair is done: say so, do not undo it
        say(f"The repair is written, but its log {log} could not be: {e.strerror}.")
    return backup


def _write_files(root: Path, files: list[tuple[str, bytes | Path]], backups: Path,
                 written: list[str], say: Callable[[str], None]) -> None:
    """Write `files` under `root`, a replaced one kept under `backups` first; `written` gets
    each path once it is touched."""
    for path, data in files:
        target = place(root, path)
        there = find(root, path)
        if there is not None:
            keep = backups / "files" / path
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(there, keep)
            target = there
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(path)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            shutil.copyfile(data, target)
        say(f"  wrote C:\\{path.replace('/', chr(92))}")


def _put_back(root: Path, written: list[str], backups: Path) -> None:
    """Undo _write_files: the kept copies back, the new files removed."""
    for path in written:
        keep = backups / "files" / path
        if keep.exists():
            shutil.copy2(keep, place(root, path))
        else:
            place(root, path).unlink(missing_ok=True)


def repair_mounted(root: Path, firmware: str, dry_run: bool,
                   say: Callable[[str], None] = print, drivers_from: Path | None = None,
                   vm_macs: list[str] | None = None) -> dict:
    """Plan (and unless `dry_run`, apply) the repair of the Windows mounted at `root`; the
    report's `steps` holds one entry, `changes` its lines. Raises WindowsRepairError."""
    system, result = plan_root(root, firmware, drivers_from, vm_macs)
    say(result.render())
    changed = bool(result.changes or result.files)
    report = {"family": "windows", "dry_run": dry_run, "changed": changed,
              "steps": [{"step": "Windows registry", "changes": [c.line() for c in result.changes],
                         "files": [path for path, _ in result.files],
                         "notes": result.notes, "warnings": result.warnings}],
              "warnings": result.warnings}
    if dry_run:
        report["status"] = "planned"
        return report
    if not changed:
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
