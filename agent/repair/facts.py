"""What the repair knows about the guest's new world, and how old names map onto it.

Old device names (`/dev/sda1`, `/dev/disk/by-id/…-part2`, `/dev/nvme0n1p3`) come from the source
machine; the filesystems they named are now somewhere on the VM's disks, with the same UUIDs
(the copy is block for block). A job's inventory says which source disk a name is on and what
filesystem that partition held (UUID, label, start and size): the name maps by those, never by
its partition number alone. Without a job, a name of the disk being repaired maps by its
partition number and type, and a name of another disk is looked for on the VM's other disks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

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
    start: int | None = None      # its partition's start and size on its disk, bytes; None for LVs
    size: int | None = None


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
    root_disk: str | None = None   # the disk holding the guest's root, when it is not the boot disk
    bios: bool = True              # install grub for BIOS booting
    uefi: bool = False             # install the removable UEFI path
    nvram: bool = False            # may write a UEFI boot entry (only inside the VM itself)
    arrays: list[RaidArray] = field(default_factory=list)        # md arrays on the disk
    # Old names of filesystems on another disk that no VM disk was found to hold → why; their
    # fstab lines get `nofail` so the VM boots without them.
    unplaced: dict[str, str] = field(default_factory=dict)
    # The pool's guest agent: the package that fits the guest (guest_tools.pick), the ISO or
    # directory it was asked from (None: not asked for), why none was found there.
    guest_tools: Any = None
    guest_tools_source: str | None = None
    guest_tools_problem: str | None = None

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
    name may well be this disk under its other name, so it maps when the types agree, unless
    the partition it would be is mounted elsewhere by a name that surely is this disk's (its
    kernel name, or its UUID): then it is another disk's (`…SRC0002-part1` for /home is not
    partition 1 when `/dev/sda1` is /). One btrfs may be mounted at several places (subvolumes).
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
    # Where this disk's partitions are mounted by names that surely are this disk's.
    sure = dict(mounted_as)
    sure.update({parts[number].uuid: r.mountpoint for r, (disk, number) in tied
                 if disk == anchor and number in parts and (r.mountpoint or "").startswith("/")})
    for r, (disk, number) in tied:
        fs = parts.get(number)
        other_disk = anchor is None or (disk != anchor and _kernel_name(disk) and _kernel_name(anchor))
        if not other_disk and disk != anchor and fs is not None and fs.fstype != "btrfs" and \
                (r.mountpoint or "").startswith("/") and sure.get(fs.uuid, r.mountpoint) != r.mountpoint:
            other_disk = True
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


def source_disk(name: str, inventory: dict) -> tuple[int, int] | None:
    """(index of the inventory disk, partition number) that an old partition name is on: its
    kernel name (the disk's "device"), one of its by-id or by-path names ("links"), or a by-id name
    that carries its serial. None when the inventory does not say."""
    ref = partition_ref(name) if is_hardware_name(name) else None
    if ref is None:
        return None
    disk, number = ref
    for index, d in enumerate(inventory.get("disks", [])):
        device = (d.get("device") or "").removeprefix("/dev/")
        links = {link.removeprefix("/dev/disk/by-id/").removeprefix("/dev/disk/by-path/")
                 for link in d.get("links") or [] if isinstance(link, str)}
        serial = (d.get("serial") or "").strip().replace(" ", "_")
        if disk == device or disk in links or \
                (len(serial) >= 6 and not _kernel_name(disk) and disk.endswith(f"_{serial}")):
            return index, number
    return None


def source_partition(inventory: dict, index: int, number: int) -> dict | None:
    """The inventory's record of partition `number` of disk `index`: {number, start, size, type,
    fstype, uuid, label}; None when the inventory (an older agent's) holds no such record."""
    disks = inventory.get("disks", [])
    table = disks[index].get("table") if index < len(disks) else None
    parts = table.get("partitions") if isinstance(table, dict) else None
    return next((p for p in parts or [] if isinstance(p, dict) and p.get("number") == number), None)


def _one(found: list[Filesystem]) -> Filesystem | None:
    return found[0] if len(found) == 1 else None


def find_partition(part: dict, disks: list[list[Filesystem]], index: int | None) -> Filesystem | None:
    """The filesystem on the VM's disks that a source partition's record names: by its UUID, else
    its label, else its start and size on the VM disk in its source disk's place (`index`), the
    type agreeing each time. A UUID or label that two filesystems share names neither."""
    every = [fs for disk in disks for fs in disk]
    fstype = part.get("fstype")
    if part.get("uuid"):
        found = _one([fs for fs in every if fs.uuid and fs.uuid.lower() == str(part["uuid"]).lower()])
        if found and _same_type(fstype, found.fstype):
            return found
    if part.get("label"):
        found = _one([fs for fs in every if fs.label == part["label"] and _same_type(fstype, fs.fstype)])
        if found:
            return found
    if index is not None and index < len(disks) and part.get("start") is not None:
        return _one([fs for fs in disks[index] if fs.start == part["start"] and
                     fs.size == part.get("size") and _same_type(fstype, fs.fstype)])
    return None


def names_from_inventory(refs: list[Reference], inventory: dict,
                         disks: list[list[Filesystem]]) -> tuple[dict[str, Filesystem], dict[str, str]]:
    """Old names → the filesystems on the VM's disks, by what the capture recorded of each source
    partition (see `find_partition`). `disks` holds each VM disk's filesystems in the job's order
    (one list when only the repaired disk is known: then no start+size match).

    Returns (names mapped, names the inventory places on a source disk but that match nothing
    → why): the latter must not be guessed by partition number.
    """
    aligned = len(disks) == len(inventory.get("disks", []))
    names, missing = {}, {}
    for r in refs:
        where = source_disk(r.name, inventory)
        if where is None:
            continue
        index, number = where
        part = source_partition(inventory, index, number)
        if part is None:
            continue
        fs = find_partition({**part, "fstype": part.get("fstype") or r.fstype}, disks,
                            index if aligned else None)
        if fs is None:
            what = ", ".join(f"{k} {part[k]}" for k in ("fstype", "uuid", "label") if part.get(k))
            missing[r.name] = (f"{r.name} held {what or 'a partition'} on the source's disk "
                               f"{inventory['disks'][index].get('id')}, and no disk of the VM holds it")
        else:
            names[r.name] = fs
    return names, missing


def claimed_uuids(refs: list[Reference]) -> set[str]:
    """UUIDs and labels the guest's configuration names outright: those filesystems are in use."""
    return {r.name.split("=", 1)[1].lower() for r in refs if r.name.startswith(("UUID=", "LABEL="))}


def blkid_cache(text: str) -> dict[str, dict[str, str]]:
    """The guest's /etc/blkid.tab (old systems kept it): device name → {TYPE, UUID, LABEL} as
    last seen on the source machine."""
    out = {}
    for m in re.finditer(r"<device\b([^>]*)>([^<]+)</device>", text):
        out[m[2].strip()] = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
    return out


def names_on_other_disks(refs: list[Reference], others: list[Filesystem], taken: set[str],
                         cache: dict[str, dict[str, str]]) -> tuple[dict[str, Filesystem], dict[str, str], list[str]]:
    """Old names of another source disk, with no inventory: the filesystem on the VM's other disks
    (`others`) of the same type, with the UUID and label the guest's blkid cache last saw there,
    and not one the configuration names by UUID or label already (`taken`). Returns (names mapped,
    names left → why, warnings): one candidate maps, none or several leave the name unplaced; a
    match by type alone is a warning, since nothing but the type says it is the right one."""
    names, unplaced, warnings = {}, {}, []
    free = [fs for fs in others if not ((fs.uuid or "").lower() in taken or (fs.label or "").lower() in taken)]
    wanted: dict[str, tuple[Reference, list[Filesystem]]] = {}
    for r in refs:
        seen = cache.get(r.name, {})
        found = [fs for fs in free if _same_type(seen.get("TYPE") or r.fstype, fs.fstype)
                 and (not seen.get("UUID") or (fs.uuid or "").lower() == seen["UUID"].lower())
                 and (not seen.get("LABEL") or fs.label == seen["LABEL"])]
        if r.name not in wanted or (r.mountpoint and not wanted[r.name][0].mountpoint):
            wanted[r.name] = (r, found)
    # Two names whose only candidate is the same filesystem: it cannot be both.
    picks = [found[0] for _, found in wanted.values() if len(found) == 1]
    for name, (r, found) in wanted.items():
        if len(found) == 1 and picks.count(found[0]) == 1:
            names[name] = found[0]
            seen = cache.get(name, {})
            if not (seen.get("UUID") or seen.get("LABEL")):
                warnings.append(f"{name} ({r.mountpoint or r.fstype}) is taken for {found[0].device}, "
                                f"the only {found[0].fstype} filesystem on the VM's other disks that "
                                "nothing else names: only its type says so; check it.")
            continue
        kind = r.fstype if r.fstype and r.fstype not in ("auto", "none") else "matching"
        count = "no" if not found else "more than one" if len(found) > 1 else "one (wanted by another name too)"
        unplaced[name] = (f"{name} is on another disk of the source machine, and the VM's other "
                          f"disks hold {count} {kind} filesystem it could be"
                          + (f" ({', '.join(fs.device for fs in found)})" if found else ""))
    return names, unplaced, warnings


_VM_DISK = re.compile(r"^/dev/(?:xv|v)d[a-z]+$")


def guest_disk_name(facts: Facts) -> str:
    """The VM's boot disk as the guest will name it once it runs in the VM: this machine's name when
    that is a paravirtual disk (the repair runs in the VM), else /dev/xvda, the name XenServer's PV
    driver gives the first disk (a loop device or /dev/sdb here says nothing about the VM)."""
    return facts.disk if facts.disk and _VM_DISK.match(facts.disk) else "/dev/xvda"
