"""Windows disks for tests: real NTFS (mkntfs) on loop devices partitioned as Windows Setup does,
holding a Windows directory tree and SYSTEM/SOFTWARE hives written with hivex.

An empty hive (root key and its security cell) comes from tests/machines/regf.py; every key and
value in it is then added through hivex (agent.repair.hive), the library the repair writes with.
The values are those a real installation of each layout holds (services, Select, Environment).
No Windows binary is here: ntoskrnl.exe and the drivers are placeholders.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from agent.repair.hive import REG_DWORD, REG_EXPAND_SZ, REG_MULTI_SZ, REG_SZ, Hive
from support import rescan, run

sys.path.insert(0, str(Path(__file__).parent / "machines"))
import regf  # noqa: E402

MIB = 1024 * 1024
MOUSE_CLASS = "{4D36E96F-E325-11CE-BFC1-08002BE10318}"


def sz(text: str) -> tuple[int, bytes]:
    return REG_SZ, (text + "\0").encode("utf-16-le")


def expand(text: str) -> tuple[int, bytes]:
    return REG_EXPAND_SZ, (text + "\0").encode("utf-16-le")


def multi(*texts: str) -> tuple[int, bytes]:
    return REG_MULTI_SZ, "".join(t + "\0" for t in texts + ("",)).encode("utf-16-le")


def dword(n: int) -> tuple[int, bytes]:
    return REG_DWORD, struct.pack("<I", n)


def _service(start: int, group: str, image: str, error: int = 1, **more) -> dict:
    return {"Start": dword(start), "Type": dword(1), "ErrorControl": dword(error),
            "Group": sz(group), "ImagePath": expand(image), **more}


# What each layout's SYSTEM hive holds under a ControlSet, on a machine installed on a SATA/AHCI
# controller inside VMware (its tools installed): {key: {value: (type, data)}}.
def control_set(layout: str) -> dict[str, dict]:
    cs: dict[str, dict] = {
        r"Control\ComputerName\ComputerName": {"ComputerName": sz("FILESRV01")},
        r"Control\Session Manager\Environment": {"PROCESSOR_ARCHITECTURE": sz("AMD64")},
        r"Control\CrashControl": {"AutoReboot": dword(1)},
        rf"Control\Class\{MOUSE_CLASS}": {"Class": sz("Mouse"),
                                          "UpperFilters": multi("vmmouse", "mouclass")},
        r"Services\vmci": _service(0, "System Bus Extender", r"system32\DRIVERS\vmci.sys"),
        r"Services\vmhgfs": _service(1, "Network", r"system32\DRIVERS\vmhgfs.sys"),
        r"Services\VMTools": {"Start": dword(2), "Type": dword(16),
                              "ImagePath": expand(r'"C:\Program Files\VMware\VMware Tools\vmtoolsd.exe"')},
        r"Services\vmmouse": _service(3, "Pointer Port", r"system32\DRIVERS\vmmouse.sys"),
        r"Services\disk": _service(0, "SCSI Class", r"System32\drivers\disk.sys"),
    }
    if layout == "xp":
        cs[r"Services\atapi"] = _service(0, "SCSI miniport", r"system32\DRIVERS\atapi.sys")
        cs[r"Control\Session Manager\Environment"] = {"PROCESSOR_ARCHITECTURE": sz("x86")}
        cs[r"Control\CriticalDeviceDatabase\pci#ven_1000&dev_0030"] = {
            "ClassGUID": sz("{4D36E97B-E325-11CE-BFC1-08002BE10318}"), "Service": sz("symmpi")}
        cs[r"Control\CriticalDeviceDatabase\primary_ide_channel"] = {
            "ClassGUID": sz("{4D36E96A-E325-11CE-BFC1-08002BE10318}"), "Service": sz("atapi")}
        return cs
    ide = {"intelide": "System Bus Extender", "pciide": "System Bus Extender",
           "atapi": "SCSI miniport"}
    for name, group in ide.items():
        cs[rf"Services\{name}"] = _service(3, group, rf"System32\drivers\{name}.sys", error=3 if
                                           layout == "10" else 1, Owners=multi("mshdc.inf"))
    if layout == "7":
        cs[r"Services\msahci"] = _service(0, "SCSI miniport", r"system32\DRIVERS\msahci.sys")
        cs[r"Control\CriticalDeviceDatabase\pci#ven_8086&dev_2922&cc_0106"] = {
            "ClassGUID": sz("{4D36E96A-E325-11CE-BFC1-08002BE10318}"), "Service": sz("msahci")}
        cs[r"Control\CriticalDeviceDatabase\pci#ven_8086&dev_7010"] = {
            "ClassGUID": sz("{4D36E96A-E325-11CE-BFC1-08002BE10318}"), "Service": sz("pciide")}
    if layout == "10":
        cs[r"Services\storahci"] = _service(0, "SCSI Miniport", r"System32\drivers\storahci.sys",
                                            error=3)
        cs[r"Services\stornvme"] = _service(3, "SCSI Miniport", r"System32\drivers\stornvme.sys",
                                            error=3)
        cs[r"Services\stornvme\StartOverride"] = {"0": dword(3)}
        cs[r"Services\intelide\StartOverride"] = {"0": dword(3)}
    return cs


DRIVER_FILES = {
    "xp": ["atapi.sys", "intelide.sys", "disk.sys", "symmpi.sys", "vmci.sys", "vmhgfs.sys"],
    "7": ["atapi.sys", "intelide.sys", "pciide.sys", "pciidex.sys", "msahci.sys", "disk.sys",
          "vmci.sys", "vmhgfs.sys", "vmmouse.sys"],
    "10": ["atapi.sys", "intelide.sys", "pciide.sys", "pciidex.sys", "storahci.sys",
           "stornvme.sys", "disk.sys", "vmci.sys", "vmhgfs.sys", "vmmouse.sys"],
}

VERSIONS = {
    "xp": {"ProductName": sz("Microsoft Windows XP"), "CurrentVersion": sz("5.1"),
           "CurrentBuildNumber": sz("2600"), "CSDVersion": sz("Service Pack 3")},
    "7": {"ProductName": sz("Windows Server 2008 R2 Standard"), "EditionID": sz("ServerStandard"),
          "CurrentVersion": sz("6.1"), "CurrentBuild": sz("7601"),
          "CurrentBuildNumber": sz("7601"), "InstallationType": sz("Server")},
    "10": {"ProductName": sz("Windows Server 2019 Datacenter"),
           "EditionID": sz("ServerDatacenter"), "CurrentVersion": sz("6.3"),
           "CurrentBuild": sz("17763"), "CurrentBuildNumber": sz("17763"),
           "CurrentMajorVersionNumber": dword(10), "CurrentMinorVersionNumber": dword(0),
           "ReleaseId": sz("1809"), "InstallationType": sz("Server")},
}


def write_hive(path: Path, keys: dict[str, dict]) -> None:
    """A new hive at `path` holding `keys` ({key path: {value name: (type, data)}}), through hivex."""
    path.write_bytes(regf.hive({}))
    with Hive(path, write=True) as hive:
        for key, values in keys.items():
            hive.ensure_key(key)
            for name, (kind, data) in values.items():
                hive.set_value(key, name, kind, data)
        hive.commit()


def system_hive(layout: str, sets: tuple[int, ...] = (1, 2)) -> dict[str, dict]:
    keys = {"Select": {"Current": dword(sets[0]), "Default": dword(sets[0]), "Failed": dword(0),
                       "LastKnownGood": dword(sets[-1])},
            r"MountedDevices": {}}
    for n in sets:
        for key, values in control_set(layout).items():
            keys[rf"ControlSet{n:03d}\{key}"] = values
    return keys


def software_hive(layout: str) -> dict[str, dict]:
    return {r"Microsoft\Windows NT\CurrentVersion": VERSIONS[layout]}


def populate(root: Path, layout: str) -> None:
    """A Windows tree at `root` (a mounted NTFS): hives, kernel, drivers."""
    config = root / "Windows/System32/config"
    config.mkdir(parents=True)
    (root / "Windows/System32/ntoskrnl.exe").write_bytes(b"MZ")
    drivers = root / "Windows/System32/drivers"
    drivers.mkdir()
    for name in DRIVER_FILES[layout]:
        (drivers / name).write_bytes(b"MZ")
    write_hive(config / "SYSTEM", system_hive(layout))
    write_hive(config / "SOFTWARE", software_hive(layout))
    (root / "pagefile.sys").write_bytes(bytes(MIB))


def windows_disk(loopdev, tmp_path: Path, layout: str, table: str) -> tuple[str, str]:
    """A 160 MiB disk as Windows Setup lays it out: "gpt" (ESP, MSR, C:) or "dos" (System
    Reserved, C:), C: holding the `layout` ("xp", "7", "10") Windows. Returns (disk, C:'s node)."""
    dev = loopdev(160 * MIB)
    if table == "gpt":
        run("sfdisk", "-q", dev, input="label: gpt\n"
            ",32MiB,C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
            ",16MiB,E3C9E316-0B5C-4DB8-817D-F92DF00215AE\n"
            ",,EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n")
        esp, _msr, system = rescan(dev)
        run("mkfs.vfat", "-F", "32", "-n", "SYSTEM", esp)
    else:
        run("sfdisk", "-q", dev, input="label: dos\n,32MiB,7,*\n,,7\n")
        reserved, system = rescan(dev)
        run("mkntfs", "-Q", "-q", "-L", "System Reserved", reserved)
    run("mkntfs", "-Q", "-q", "-L", "Windows", system)
    mnt = tmp_path / "c"
    mnt.mkdir(exist_ok=True)
    run("mount", "-t", "ntfs-3g", system, str(mnt))
    try:
        populate(mnt, layout)
    finally:
        run("umount", str(mnt))
    return dev, system
