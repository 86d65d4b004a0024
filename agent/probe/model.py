"""What the probe saw, as a tree of plain dataclasses that round-trips through JSON.

A recorded machine is exactly `Machine.to_json()`; `Machine.from_json()` brings it back, so every
piece of logic that takes a Machine runs the same on a recording as on the hardware.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

_HYPERVISORS = ("qemu", "kvm", "vmware", "virtualbox", "innotek", "xen", "bochs", "parallels",
                "hyper-v", "virtual machine", "amazon ec2", "openstack", "proxmox")
FORMAT = 1  # bump when a field changes meaning; from_json refuses other versions


@dataclass
class OperatingSystem:
    family: str                      # "linux" or "windows"
    name: str                        # PRETTY_NAME or Windows ProductName
    id: str | None = None            # os-release ID (debian, rhel, …) or "windows"
    id_like: list[str] = field(default_factory=list)
    version: str | None = None       # VERSION_ID, or Windows DisplayVersion / CurrentVersion
    build: str | None = None         # Windows CurrentBuild (CurrentBuildNumber before Vista)
    edition: str | None = None       # Windows EditionID: Professional, ServerStandard, …
    arch: str | None = None          # Windows PROCESSOR_ARCHITECTURE: AMD64, x86, ARM64
    control_set: str | None = None   # Windows: the ControlSet it boots (Select\Current)
    hostname: str | None = None
    kernels: list[str] = field(default_factory=list)  # installed kernel versions
    root: str = "/"                  # where in the filesystem the OS lives (btrfs subvolume)


@dataclass
class Filesystem:
    type: str | None                 # blkid TYPE: ext4, xfs, vfat, swap, LVM2_member, crypto_LUKS…
    uuid: str | None = None
    label: str | None = None
    version: str | None = None
    size: int | None = None          # bytes the filesystem spans, when known
    used: int | None = None          # bytes in use, when known
    os: OperatingSystem | None = None
    boot_files: list[str] = field(default_factory=list)  # kernels found at the top of a /boot fs


@dataclass
class Partition:
    path: str                        # /dev/sda1
    number: int
    start: int                       # bytes
    size: int                        # bytes
    type: str                        # MBR code or GPT type GUID
    partuuid: str | None = None
    name: str | None = None          # GPT partition name
    bootable: bool = False
    fs: Filesystem | None = None


@dataclass
class Disk:
    name: str                        # sda, nvme0n1, loop3
    path: str
    size: int
    logical_sector: int = 512
    physical_sector: int = 512
    model: str | None = None
    serial: str | None = None
    wwn: str | None = None
    rotational: bool = False
    transport: str | None = None     # sata, sas, scsi, nvme, usb, virtio, xen, mmc, loop
    removable: bool = False
    read_only: bool = False
    table: str | None = None         # "gpt", "dos" or None
    table_id: str | None = None
    partitions: list[Partition] = field(default_factory=list)
    fs: Filesystem | None = None     # a filesystem, PV or RAID member on the whole disk
    in_use: list[str] = field(default_factory=list)  # what used it when probed (agent.disk.inuse)


@dataclass
class LvmSegment:
    start: int                       # bytes into the LV
    size: int
    pv: str                          # device path of the PV
    pv_start: int                    # bytes into the PV


@dataclass
class LogicalVolume:
    name: str
    path: str
    size: int
    uuid: str
    segments: list[LvmSegment] = field(default_factory=list)
    fs: Filesystem | None = None


@dataclass
class VolumeGroup:
    name: str
    uuid: str
    size: int
    extent_size: int
    pvs: list[str] = field(default_factory=list)
    lvs: list[LogicalVolume] = field(default_factory=list)


@dataclass
class RaidArray:
    uuid: str                        # mdadm form aa:bb:cc:dd
    name: str | None
    level: str                       # raid1, raid5, …
    metadata: str
    raid_devices: int
    members: list[str] = field(default_factory=list)  # device paths, in role order
    data_offset: int = 0             # bytes into each member where the array's data begins
    path: str | None = None          # /dev/md0 when assembled here
    fs: Filesystem | None = None


@dataclass
class LuksVolume:
    device: str
    uuid: str | None
    version: str | None


@dataclass
class Multipath:
    name: str                        # the dm map name (mpatha)
    wwid: str
    path: str                        # /dev/dm-N: read this, never its paths one by one
    paths: list[str] = field(default_factory=list)   # the disks it joins


@dataclass
class Cpu:
    model: str
    sockets: int
    cores: int                       # physical cores, all sockets
    threads: int                     # logical CPUs
    hypervisor: bool = False         # the "hypervisor" CPU flag: running in a VM


@dataclass
class Nic:
    name: str                        # the primary name here
    mac: str
    driver: str | None = None
    speed: int | None = None         # Mbit/s, None when unknown or no link
    link: bool = False
    addresses: list[str] = field(default_factory=list)
    altnames: list[str] = field(default_factory=list)    # the kernel's alternative names (ip link)
    # udev's names for it where udev runs: "path" (enp0s3), "slot" (ens3), "mac" (enx…), "onboard" (eno1)
    udev_names: dict[str, str] = field(default_factory=dict)


@dataclass
class Machine:
    firmware: str                    # "uefi" or "bios"
    vendor: str | None = None        # DMI system vendor
    product: str | None = None
    serial: str | None = None
    system_uuid: str | None = None   # SMBIOS UUID, lower case
    cpu: Cpu | None = None
    memory: int = 0                  # bytes
    nics: list[Nic] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)        # what can be migrated
    boot_medium: Disk | None = None  # the disk the agent runs from, never offered
    volume_groups: list[VolumeGroup] = field(default_factory=list)
    raids: list[RaidArray] = field(default_factory=list)
    luks: list[LuksVolume] = field(default_factory=list)
    multipaths: list[Multipath] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)      # what the probe could not read, as sentences
    note: str = ""                   # for recordings: where it came from, what was adjusted
    secure_boot: bool = False        # UEFI Secure Boot on (the firmware's SecureBoot variable)
    format: int = FORMAT

    @property
    def is_virtual(self) -> bool:
        """Running in a VM: the CPU says so, or the DMI vendor or product is a hypervisor's."""
        ident = f"{self.vendor or ''} {self.product or ''}".lower()
        return bool(self.cpu and self.cpu.hypervisor) or any(h in ident for h in _HYPERVISORS)

    def filesystems(self) -> list[tuple[str, Filesystem]]:
        """(where, filesystem) for every filesystem seen: partitions, whole disks, LVs, arrays."""
        out = []
        for disk in self.disks:
            if disk.fs:
                out.append((disk.path, disk.fs))
            out += [(p.path, p.fs) for p in disk.partitions if p.fs]
        for vg in self.volume_groups:
            out += [(lv.path, lv.fs) for lv in vg.lvs if lv.fs]
        for raid in self.raids:
            if raid.fs:
                out.append((raid.path or f"RAID {raid.name or raid.uuid}", raid.fs))
        return out

    def os_roots(self) -> list[tuple[str, Filesystem]]:
        """The filesystems that hold an operating system's root."""
        return [(where, fs) for where, fs in self.filesystems() if fs.os]

    def select_disks(self, wanted: list[str] | None, known: list[str] | None = None) -> list[Disk]:
        """The disks `p2v.disks` / `--disks` name (names or paths; None = all), or ValueError
        with a sentence saying which name matched nothing and which disks there are: `known`
        (names), when this probe looked at the named disks only, else its own."""
        if wanted is None:
            return list(self.disks)
        chosen = []
        for want in wanted:
            disk = next((d for d in self.disks if want in (d.name, d.path)), None)
            if disk is None:
                medium = self.boot_medium
                if medium and want in (medium.name, medium.path):
                    raise ValueError(f"{want} is the boot medium the agent runs from; "
                                     "it cannot be captured.")
                names = ", ".join(known if known is not None else [d.name for d in self.disks])
                raise ValueError(f"There is no disk {want} here; "
                                 + (f"the disks are: {names}." if names else
                                    "this machine shows no disk at all (is its disk controller's "
                                    "driver loaded? 'lsblk' lists what the kernel sees)."))
            if disk not in chosen:
                chosen.append(disk)
        return chosen

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, obj: dict) -> "Machine":
        if obj.get("format") != FORMAT:
            raise ValueError(f"This recorded machine has format {obj.get('format')!r}; "
                             f"this agent reads format {FORMAT}. Record it again with this agent.")
        return _build(cls, obj, "machine")

    @classmethod
    def loads(cls, text: str) -> "Machine":
        return cls.from_json(json.loads(text))


def _build(cls: type, obj: Any, where: str) -> Any:
    """Rebuild dataclass `cls` from plain JSON, checking names and shapes as it goes."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} should be an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(obj) - names
    if unknown:
        raise ValueError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    return cls(**{name: _value(hints[name], value, f"{where}.{name}") for name, value in obj.items()})


def _value(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [h for h in typing.get_args(hint) if h is not type(None)]
        return _value(inner[0], value, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{where} should be a list")
        return [_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise ValueError(f"{where} should be {hint.__name__}")
    return value
