"""What the repair knows about the guest's new world, and how old names map onto it.

Old device names (`/dev/sda1`, `/dev/disk/by-id/…-part2`, `/dev/nvme0n1p3`) come from the source
machine; the filesystems they named are now somewhere on the VM's disk, with the same UUIDs
(the copy is block for block). A job's inventory says outright which name held which filesystem;
without a job the partition number in the name and the filesystem type identify it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.repair.network import SourceNic, VmNic

# Names that identify a partition by its disk and number: the disk part is whatever the source
# machine called the disk, the number survives the copy.
_PARTITION_NAMES = (
    re.compile(r"^/dev/(?P<disk>(?:[shv]|xv)d[a-z]+)(?P<n>\d+)$"),
    re.compile(r"^/dev/(?P<disk>(?:nvme\d+n\d+|mmcblk\d+|loop\d+))p(?P<n>\d+)$"),
    re.compile(r"^/dev/disk/by-(?:id|path)/(?P<disk>.+)-part(?P<n>\d+)$"),
    # HP Smart Array (cciss) and Compaq SMART2 (ida) controllers: c<controller>d<disk>p<n>.
    re.compile(r"^/dev/(?P<disk>(?:cciss|ida)/c\d+d\d+)p(?P<n>\d+)$"),
)
# Multipath maps of the source's SAN or SAS disks: user_friendly_names (mpatha, with its partitions
# as mpatha1, mpatha-part1 or mpathap1 by version) or the WWID itself. Each map is one disk.
_MULTIPATH_NAMES = (
    re.compile(r"^/dev/mapper/(?P<disk>mpath[a-z]+?)(?:-part|p)?(?P<n>\d+)$"),
    re.compile(r"^/dev/mapper/(?P<disk>[0-9a-f]{17,})(?:-part|p)(?P<n>\d+)$"),
)
# Names that do not depend on the hardware: left as they are.
_STABLE_PREFIXES = ("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/mapper/",
                    "/dev/disk/by-uuid/", "/dev/disk/by-label/", "/dev/disk/by-partuuid/",
                    "/dev/disk/by-partlabel/", "/dev/md", "/dev/dm-")
_EXT = {"ext2", "ext3", "ext4"}


@dataclass(frozen=True)
class Filesystem:
    device: str                  # where it is now: /dev/loop3p1, /dev/xvda1, /dev/vg/root
    fstype: str                  # blkid TYPE: ext4, xfs, btrfs, swap, vfat, crypto_LUKS, …
    uuid: str | None
    label: str | None = None
    partition: int | None = None  # its number on the repaired disk; None for LVs


@dataclass(frozen=True)
class RaidArray:
    """An md array with members on the repaired disk, as their superblocks describe it."""

    uuid: str                    # mdadm's form, aaaaaaaa:bbbbbbbb:cccccccc:dddddddd
    name: str | None             # homehost:name (metadata 1.x); None for 0.90
    metadata: str                # 0.90, 1.0, 1.2
    level: str                   # raid1, raid5, …
    partitions: tuple[int, ...] = ()   # its members' partition numbers on the repaired disk


@dataclass
class Facts:
    filesystems: list[Filesystem] = field(default_factory=list)
    names: dict[str, Filesystem] = field(default_factory=dict)   # old device name → filesystem
    nics: dict[str, str] = field(default_factory=dict)           # old interface name → new, by hand
    source_nics: list[SourceNic] = field(default_factory=list)   # the source's NICs (job inventory)
    vm_nics: list[VmNic] = field(default_factory=list)           # the VM's NICs
    disk: str | None = None        # the VM's boot disk as this machine sees it (grub-install)
    bios: bool = True              # install grub for BIOS booting
    uefi: bool = False             # install the removable UEFI path
    nvram: bool = False            # may write a UEFI boot entry (only inside the VM itself)
    arrays: list[RaidArray] = field(default_factory=list)        # md arrays on the disk

    def uuid_ref(self, name: str) -> str | None:
        """`UUID=…` for an old device name that maps to a filesystem with a UUID, else None."""
        fs = self.names.get(name)
        return f"UUID={fs.uuid}" if fs and fs.uuid else None


def partition_ref(name: str) -> tuple[str, int] | None:
    """(old disk, partition number) for a name tied to the old hardware, else None."""
    for pattern in _PARTITION_NAMES + _MULTIPATH_NAMES:
        m = pattern.match(name)
        if m:
            return m["disk"], int(m["n"])
    return None


def is_hardware_name(name: str) -> bool:
    if any(p.match(name) for p in _MULTIPATH_NAMES):
        return True
    return name.startswith("/dev/") and not name.startswith(_STABLE_PREFIXES) and \
        partition_ref(name) is not None


def _same_type(wanted: str | None, found: str) -> bool:
    if not wanted or wanted in ("auto", "none"):
        return True
    return wanted == found or (wanted in _EXT and found in _EXT)


@dataclass(frozen=True)
class Reference:
    """A device name as the guest's configuration uses it."""

    name: str
    mountpoint: str | None = None
    fstype: str | None = None


def names_from_disk(refs: list[Reference], filesystems: list[Filesystem]) -> tuple[dict[str, Filesystem], list[str]]:
    """Map old names to filesystems found on the repaired disk, with no inventory to help.

    The partition number survives the copy, so `/dev/sda2` is partition 2 of this disk, as long
    as the filesystem types agree. The disk that held `/` (or `/boot`) is this disk. Another
    kernel name (`sdb` beside `sda`) is another disk: reported, not guessed. A by-id or by-path
    name may well be this disk under its other name, so it maps when the types agree.
    """
    parts = {fs.partition: fs for fs in filesystems if fs.partition is not None}
    tied = [(r, partition_ref(r.name)) for r in refs if is_hardware_name(r.name)]
    keys = {ref[0] for _, ref in tied}
    anchors = [ref[0] for r, ref in tied if r.mountpoint in ("/", "/boot")]
    lone = next(iter(keys)) if len(keys) == 1 else None
    # A lone kernel name is taken for this disk, unless it would name a filesystem that the
    # configuration mounts elsewhere by UUID: after a first repair turned /dev/sda1 into UUID=…,
    # the /dev/sdb1 left for /home is the other disk, not partition 1 (the root) of this one.
    mounted_as = {r.name.removeprefix("UUID="): r.mountpoint for r in refs
                  if r.name.startswith("UUID=") and (r.mountpoint or "").startswith("/")}
    if lone and any((fs := parts.get(number)) and fs.uuid in mounted_as and
                    (r.mountpoint or "").startswith("/") and mounted_as[fs.uuid] != r.mountpoint
                    for r, (_, number) in tied):
        lone = None
    anchor = anchors[0] if anchors else lone
    names: dict[str, Filesystem] = {}
    notes = []
    for r, (disk, number) in tied:
        fs = parts.get(number)
        other_disk = anchor is None or (disk != anchor and _kernel_name(disk) and _kernel_name(anchor))
        if other_disk:
            notes.append(f"{r.name} is on another disk of the source machine; left as it is.")
        elif fs is None or not _same_type(r.fstype, fs.fstype):
            notes.append(f"{r.name} matches no filesystem on this disk; left as it is.")
        else:
            names[r.name] = fs
    return names, notes


def _kernel_name(disk: str) -> bool:
    """Whether the disk part of a name is the kernel's (or a multipath map's) name for one disk:
    two different ones are two disks, where by-id and by-path names may be one disk's aliases."""
    if disk.startswith(("cciss/", "ida/")):
        return True
    return "/" not in disk and not disk.startswith(("ata-", "scsi-", "wwn-", "nvme-", "pci-", "virtio-", "usb-"))


def names_on_the_vms_disks(refs: list[Reference], inventory: dict,
                           filesystems: list[list[Filesystem]]) -> dict[str, Filesystem]:
    """Kernel names of the source's disks (`/dev/sdb1`) → the filesystem now on the VM's disk that
    received that disk. The inventory lists the source's disks (their "device") in the job's order,
    the order in which the restore (or the import) put them on the VM's disks; `filesystems` holds
    each VM disk's filesystems in that order. Partition numbers and types must agree."""
    order = [(d.get("device") or "").removeprefix("/dev/") for d in inventory.get("disks", [])]
    names = {}
    for r in refs:
        ref = partition_ref(r.name) if is_hardware_name(r.name) else None
        if ref is None or not _kernel_name(ref[0]) or ref[0] not in order:
            continue
        index = order.index(ref[0])
        fs = next((f for f in (filesystems[index] if index < len(filesystems) else [])
                   if f.partition == ref[1]), None)
        if fs is not None and _same_type(r.fstype, fs.fstype):
            names[r.name] = fs
    return names


def names_from_inventory(inventory: dict, filesystems: list[Filesystem]) -> dict[str, Filesystem]:
    """Map every name the capture inventory knew for a partition to the filesystem with its UUID."""
    by_uuid = {fs.uuid: fs for fs in filesystems if fs.uuid}
    names = {}
    for disk in inventory.get("disks", []):
        for part in disk.get("partitions", []):
            fs = by_uuid.get(part.get("uuid") or "")
            if fs is None:
                continue
            node = part.get("path") or part.get("node") or part.get("name") or ""
            aliases = [node if node.startswith("/dev/") else f"/dev/{node}"]
            aliases += list(part.get("links", [])) + list(part.get("by_id", [])) + \
                list(part.get("by_path", []))
            for alias in aliases:
                if alias and alias != "/dev/":
                    names[alias] = fs
    return names


_VM_DISK = re.compile(r"^/dev/(?:xv|v)d[a-z]+$")


def guest_disk_name(facts: Facts) -> str:
    """The VM's boot disk as the guest will name it once it runs in the VM: this machine's name when
    that is a paravirtual disk (the repair runs in the VM), else /dev/xvda, the name XenServer's PV
    driver gives the first disk (a loop device or /dev/sdb here says nothing about the VM)."""
    return facts.disk if facts.disk and _VM_DISK.match(facts.disk) else "/dev/xvda"
