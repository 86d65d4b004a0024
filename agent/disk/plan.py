"""The read plan of a disk: which bytes capture reads, and why.

Partition tables, gaps and bootloader areas are read whole; a filesystem partclone knows only by
its used blocks, unless it was not cleanly unmounted (fsstate: then whole, with a warning); a
btrfs member device by every copy of its used extents on it; swap by its header; an LVM PV by the
used blocks of its linear LVs' filesystems (the rest of the PV whole); an md RAID1 member by its
array's used blocks, through the member's data offset. Anything else is read whole. What the plan
does not read is free.

Ranges are half-open byte ranges [start, end) on the disk, sorted and disjoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from agent.disk import blockdev, btrfs, extfs, fsstate, partclone
from agent.windows import windisk
from agent.disk.ranges import Range, clip, normalize, shift, subtract, total
from xenp2v.units import human_bytes as _human

log = logging.getLogger(__name__)

# Swap needs only its header page (the largest page size Linux uses is 64 KiB).
SWAP_HEADER = 64 * 1024
# MBR extended partition containers: their EBRs are read as gaps.
EXTENDED_TYPES = frozenset({"5", "f", "85"})


# --- the plan -------------------------------------------------------------------------------------

@dataclass
class Found:
    """What one area holds: `used` ranges to read, `zero` ranges known to be zeros (not read)."""

    used: list[Range]
    zero: list[Range] = field(default_factory=list)

    @classmethod
    def whole(cls, length: int) -> "Found":
        return cls([(0, length)])

    def shift(self, by: int) -> "Found":
        return Found(shift(self.used, by), shift(self.zero, by))

    def clip(self, start: int, end: int) -> "Found":
        return Found(clip(self.used, start, end), clip(self.zero, start, end))


class Notes(list):
    """One line per area, for logs and screens; `warn()` also keeps the line in `warnings`:
    what a technician must be told (data read whole because its map cannot be trusted, ...)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.warnings: list[str] = []

    def warn(self, line: str) -> None:
        self.append(line)
        self.warnings.append(line)


@dataclass
class ReadPlan:
    device: str
    size: int
    used: list[Range]                                  # what to read; the rest is free …
    notes: list[str] = field(default_factory=list)     # one line per area, for logs and screens
    zero: list[Range] = field(default_factory=list)    # … but for these, in use and all zeros
    warnings: list[str] = field(default_factory=list)  # the notes a technician must see

    @property
    def read_bytes(self) -> int:
        return total(self.used)

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, list[Range]]]:
        """(chunk index, the used ranges inside it) for every chunk with used or known-zero
        bytes, in order; a chunk of known zeros alone comes with no ranges."""
        used = _chunk_parts(self.used, chunk_size, self.size)
        zero = (i for i, _ in _chunk_parts(self.zero, chunk_size, self.size))
        nxt_used, nxt_zero = next(used, None), next(zero, None)
        while nxt_used is not None or nxt_zero is not None:
            if nxt_zero is None or (nxt_used is not None and nxt_used[0] <= nxt_zero):
                if nxt_zero == nxt_used[0]:
                    nxt_zero = next(zero, None)
                yield nxt_used
                nxt_used = next(used, None)
            else:
                yield nxt_zero, []
                nxt_zero = next(zero, None)

def _chunk_parts(ranges: list[Range], chunk_size: int, size: int) -> Iterator[tuple[int, list[Range]]]:
    index: int | None = None
    parts: list[Range] = []
    for s, e in ranges:
        while s < e:
            i = s // chunk_size
            piece_end = min(e, (i + 1) * chunk_size, size)
            if i != index:
                if index is not None:
                    yield index, parts
                index, parts = i, []
            parts.append((s, piece_end))
            s = piece_end
    if index is not None:
        yield index, parts


@dataclass(frozen=True)
class Selection:
    """The disks captured together, by kernel name: a filesystem, LV or array with a part on any
    other disk arrives incomplete on the VM, and the plan warns. `keep_pagefile`: Windows' page,
    swap and hibernation files are read too (p2v.keep_pagefile), not treated as free."""

    disks: frozenset[str]
    keep_pagefile: bool = False

    @classmethod
    def of(cls, devices: Iterable[str], keep_pagefile: bool = False) -> "Selection":
        return cls(frozenset().union(*(blockdev.disks_under(d) for d in devices)), keep_pagefile)

    def holds(self, device: str) -> bool:
        return blockdev.disks_under(device) <= self.disks

    def outside(self, groups: Iterable[list[str]]) -> list[str]:
        """For each group of devices that are one and the same (a PV, a btrfs device, an md
        member, seen under several names), none of which lies on a selected disk: its first
        device, as "/dev/sdc1 (disk sdc)"."""
        return [f"{group[0]} (disk {', '.join(sorted(blockdev.disks_under(group[0])))})"
                for group in groups if group and not any(self.holds(d) for d in group)]


def _not_captured(what: str, label: str, outside: list[str], missing: str = "") -> str:
    """The warning for `what` (an LV, a btrfs, an array) with parts on `outside` devices, or
    `missing` ones not attached at all."""
    where = []
    if outside:
        where.append(f"on {', '.join(outside)}, not among the disks being captured")
    if missing:
        where.append(missing)
    return (f"{label}: {what} lies partly {' and '.join(where)}: on the VM it would be "
            f"incomplete. Select {'that disk' if len(outside) == 1 and not missing else 'those disks'}"
            f" too (--disks){'; attach the missing ones first' if missing else ''}.")


def plan_disk(device: str, selected: Iterable[str] = (), keep_pagefile: bool = False) -> ReadPlan:
    """Probe `device` and decide what to read. `selected`: the other disks captured with it
    (device paths); what lies partly on a disk outside them is a warning. `keep_pagefile`: read
    Windows' pagefile.sys, swapfile.sys and hiberfil.sys too."""
    selection = Selection.of([device, *selected], keep_pagefile)
    size = blockdev.disk_size(device)
    notes = Notes()
    table = blockdev.partition_table(device)
    if table is None:
        return _plan(device, size, area_used(device, 0, size, device, notes, selection), notes)
    parts = [p for p in table.partitions
             if not (table.label == "dos" and p.type.lower() in EXTENDED_TYPES)]
    gaps = subtract([(0, size)], [(p.start, p.start + p.size) for p in parts])
    notes.append(f"{device}: {table.label} partition table, gaps and boot areas: read whole "
                 f"({_human(total(gaps))})")
    found = Found(list(gaps))
    for p in parts:
        if why := windisk.partition_kind(table.label, p.type):
            notes.warn(f"{p.node} {why} ({_human(p.size)}).")
            found.used.append((p.start, p.start + p.size))
            continue
        area = area_used(p.node, p.start, p.size, p.node, notes, selection)
        found.used += area.used
        found.zero += area.zero
    return _plan(device, size, found, notes)


def _plan(device: str, size: int, found: Found, notes: Notes) -> ReadPlan:
    used = normalize(clip(found.used, 0, size))
    zero = subtract(normalize(clip(found.zero, 0, size)), used)
    return ReadPlan(device, size, used, list(notes), zero, list(notes.warnings))


def area_used(node: str, start: int, length: int, label: str, notes: Notes,
              selection: Selection) -> Found:
    """What the area [start, start+length) that `node` exposes holds, in disk offsets."""
    try:
        fstype = blockdev.filesystem(node).get("TYPE")
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: {e} Read whole.")
        return Found.whole(length).shift(start)
    if fstype == "BitLocker" or windisk.bitlocker(node):
        notes.warn(f"{label} {windisk.BITLOCKER_WARNING} ({_human(length)}).")
        return Found.whole(length).shift(start)
    if partclone.knows(fstype) or fstype in ("swap", "btrfs"):
        return content_used(node, fstype, length, label, notes, selection).shift(start)
    if fstype == "LVM2_member":
        return pv_used(node, length, label, notes, selection).shift(start)
    if fstype == "linux_raid_member":
        return md_member_used(node, length, label, notes, selection).shift(start)
    notes.append(f"{label}: {fstype or 'no filesystem found'}: read whole ({_human(length)})")
    return Found.whole(length).shift(start)


def content_used(node: str, fstype: str | None, length: int, label: str,
                 notes: Notes, selection: Selection) -> Found:
    """What a filesystem or swap of `length` bytes on `node` holds, relative to `node`."""
    if fstype == "swap":
        notes.append(f"{label}: swap: header only")
        return Found([(0, min(SWAP_HEADER, length))])
    if fstype == "btrfs":
        return btrfs_used(node, length, label, notes, selection)
    if not partclone.knows(fstype):
        notes.append(f"{label}: {fstype or 'no filesystem found'}: read whole ({_human(length)})")
        return Found.whole(length)
    if why := fsstate.unclean(node, fstype):
        return _unclean_whole(node, fstype, length, label, why, notes)
    if fstype == "xfs":
        _xfs_log_elsewhere(node, label, notes, selection)
    try:
        used, end = partclone.used_blocks(node, fstype)
    except partclone.PartcloneError as e:
        notes.append(f"{label}: {fstype}: {e}; read whole ({_human(length)})")
        return Found.whole(length)
    # Past the map's end the filesystem says nothing (e.g. NTFS's backup boot sector): read it.
    used = normalize(clip(used, 0, length) + [(min(end, length), length)])
    zero: list[Range] = []
    if fstype == "ntfs" and not selection.keep_pagefile:
        used = _without_windows_scratch(node, used, label, notes)
    if fstype in ("ext2", "ext3", "ext4"):
        zero, free = extfs.unused_inode_tables(node)
        zero = clip(zero, 0, length)
        used = subtract(used, zero + free)
    notes.append(f"{label}: {fstype}: used blocks only ({_human(total(used))} of {_human(length)})")
    return Found(used, zero)


def _without_windows_scratch(node: str, used: list[Range], label: str, notes: Notes) -> list[Range]:
    """`used` of the clean NTFS on `node` without the extents of Windows' page, swap and
    hibernation files (windisk.scratch_files), with a note of what that saves."""
    try:
        files = windisk.scratch_files(node)
    except windisk.NtfsLookError as e:
        notes.append(f"{label}: ntfs: where Windows' page and hibernation files lie is unknown "
                     f"({e}): they are sent too")
        return used
    if not files:
        return used
    kept = subtract(used, [r for f in files for r in f.extents])
    saved = total(used) - total(kept)
    notes.append(f"{label}: ntfs: {', '.join(f.name for f in files)} not sent, {_human(saved)} "
                 "saved: Windows does not need their content on the VM (--keep-pagefile or "
                 "p2v.keep_pagefile sends them)")
    return kept


def _xfs_log_elsewhere(node: str, label: str, notes: Notes, selection: Selection) -> None:
    """Warn when the clean XFS on `node` keeps its log on a device no captured disk holds: the
    VM could not mount it."""
    try:
        logs = fsstate.xfs_log_devices(node)
    except fsstate.CannotTell:
        return  # the clean-unmount check has just found it: gone meanwhile
    if logs and (outside := selection.outside([logs])):
        notes.warn(_not_captured("xfs (its external log)", label, outside))


def _unclean_whole(node: str, fstype: str, length: int, label: str, why: str,
                   notes: Notes) -> Found:
    """A filesystem whose map cannot be trusted (`why`, from fsstate): read whole, and say what
    that costs against its map, when partclone can still draw one."""
    try:
        used, end = partclone.used_blocks(node, fstype)
        mapped = total(normalize(clip(used, 0, length) + [(min(end, length), length)]))
        cost = f"{_human(length)} instead of {_human(mapped)}"
    except partclone.PartcloneError:
        cost = _human(length)
    notes.warn(f"{fstype} on {label} {why}: read whole, {cost}. {fsstate.remedy(fstype, why)}")
    return Found.whole(length)


def btrfs_used(node: str, length: int, label: str, notes: Notes,
               selection: Selection) -> Found:
    """A btrfs member device: every copy (mirror, stripe, parity) of every extent on it, from the
    filesystem's chunk and extent trees (agent/disk/btrfs.py); the whole device when the chunks
    cannot be mapped.

    partclone maps the filesystem's logical space, not each device: on several devices, or with
    DUP, it drops stripes and second copies."""
    try:
        found = btrfs.map_device(node, length)
    except btrfs.BtrfsError as e:
        notes.warn(f"{label}: btrfs: its chunks cannot be mapped ({e}): read whole "
                   f"({_human(length)})")
        return Found.whole(length)
    used = normalize(clip(found.ranges, 0, length))
    whole = f", its chunks whole: {found.whole_chunks}" if found.whole_chunks else ""
    line = (f"{label}: btrfs ({found.describe()}): every copy on this device{whole} "
            f"({_human(total(used))} of {_human(length)})")
    if found.whole_chunks:
        cost = _human(total(used)) + (f" instead of {_human(found.mapped)}"
                                      if found.mapped is not None else "")
        todo = ("To send only used blocks, boot the source's own system once and shut it down "
                "cleanly." if found.unclean else
                "Run 'btrfs check --readonly' on it to see why its trees do not add up.")
        notes.warn(f"{line}: read {cost}. {todo}")
    else:
        notes.append(line)
    if found.num_devices > 1:
        _btrfs_elsewhere(node, found.num_devices, label, notes, selection)
    return Found(used)


def _btrfs_elsewhere(node: str, num_devices: int, label: str, notes: Notes,
                     selection: Selection) -> None:
    """Warn when a device of the btrfs on `node` lies on no disk being captured, or is not
    attached: blkid finds them by the filesystem's UUID, one device by its UUID_SUB."""
    try:
        fsid = blockdev.filesystem(node).get("UUID", "")
        devices: dict[str, list[str]] = {}
        for d in blockdev.devices_matching(f"UUID={fsid}"):
            if d.get("TYPE") == "btrfs":
                devices.setdefault(d.get("UUID_SUB", d["DEVNAME"]), []).append(d["DEVNAME"])
    except blockdev.BlockDevError as e:
        notes.warn(f"{label}: btrfs: its other devices could not be looked for ({e}); select "
                   "every disk that holds a device of it.")
        return
    missing = num_devices - len(devices)
    outside = selection.outside(devices.values())
    if outside or missing > 0:
        lost = f"{missing} of its {num_devices} devices not attached" if missing > 0 else ""
        notes.warn(_not_captured(f"btrfs {fsid}", label, outside, lost))


def pv_used(node: str, length: int, label: str, notes: Notes, selection: Selection) -> Found:
    """An LVM PV: its plain linear LVs through their filesystems' used blocks; the rest whole.

    A single-segment linear LV is seen through a read-only loop device over its bytes on the PV,
    so neither device-mapper nor activation is needed; a longer linear LV through its active
    device. Free extents are free. Everything else is read whole, with a note: metadata, and
    every LV whose bytes are not simply a filesystem's (lvm_kind says which and why).
    """
    try:
        vgs = blockdev.lvm_layout([node])
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: LVM PV: {e} Read whole.")
        return Found.whole(length)
    found = Found(subtract([(0, length)], pv_free(node)))
    for vg in vgs:
        whole: dict[str, int] = {}   # LV (its top-level name) -> bytes of it on this PV read whole
        for lv in vg.lvs:
            mine = [seg for seg in lv.segments if seg["pv"] == node]
            if not mine:
                continue
            name = f"{label}: LV {vg.name}/{lv.name}"
            if lvm_kind(vg, lv) is not None:
                top = top_lv(vg, lv)
                whole[top.name] = whole.get(top.name, 0) + sum(_on_pv(lv, seg) for seg in mine)
                continue
            if len(lv.types) == 1:
                seg = lv.segments[0]
                try:
                    with loop_view(node, seg["pv_start"], seg["size"]) as view:
                        inner = area_inner(view, seg["size"], name, notes, selection)
                except blockdev.BlockDevError as e:
                    notes.append(f"{name}: {e} Read whole.")
                    continue
            elif lv.active and Path(lv.path).exists():
                inner = area_inner(lv.path, lv.size, name, notes, selection)
            else:
                where = ", some on other PVs," if len(mine) < len(lv.types) else ""
                notes.append(f"{name}: {len(lv.types)} segments{where} and not active: read whole")
                continue
            for seg in mine:
                seg_start, seg_end = seg["start"], seg["start"] + seg["size"]
                found.used = subtract(found.used, [(seg["pv_start"], seg["pv_start"] + seg["size"])])
                part = inner.clip(seg_start, seg_end).shift(seg["pv_start"] - seg_start)
                found.used += part.used
                found.zero += part.zero
        for top_name, size in whole.items():
            top = next(lv for lv in vg.lvs if lv.name == top_name)
            line = f"{label}: LV {vg.name}/{top_name}: {lvm_kind(vg, top)}: read whole ({_human(size)})"
            if top.attr[:1] in ("o", "O"):
                notes.warn(line)
            else:
                notes.append(line)
        if vg.missing_pvs:
            _lvs_elsewhere(vg, node, label, notes, selection)
    return Found(normalize(clip(found.used, 0, length)), clip(found.zero, 0, length))


def _lvs_elsewhere(vg: blockdev.VolumeGroup, node: str, label: str, notes: Notes,
                   selection: Selection) -> None:
    """Warn for each LV of `vg` with a part on one of its other PVs when that PV lies on no
    disk being captured, or is not attached. LVM, asked about this PV alone, knows the others
    by UUID only; blkid finds them among the machine's devices."""
    groups, missing = [], 0
    for pv_uuid in vg.missing_pvs:
        try:
            found = [d["DEVNAME"] for d in blockdev.devices_matching(f"UUID={pv_uuid}")
                     if d.get("TYPE") == "LVM2_member"]
        except blockdev.BlockDevError:
            found = []
        if found:
            groups.append(found)
        else:
            missing += 1
    outside = selection.outside(groups)
    if not outside and not missing:
        return
    lost = f"{missing} PV{'s' if missing > 1 else ''} of {vg.name} not attached" if missing else ""
    for top in sorted({top_lv(vg, lv).name for lv in vg.lvs
                       if any(seg["pv"] != node for seg in lv.segments)}):
        notes.warn(_not_captured(f"LV {vg.name}/{top}", label, outside, lost))


def _on_pv(lv: blockdev.LogicalVolume, seg: dict) -> int:
    """Bytes of segment `seg` on its PV: a striped segment's size shared between its stripes."""
    return seg["size"] // sum(1 for s in lv.segments if s["start"] == seg["start"])


def lvm_kind(vg: blockdev.VolumeGroup, lv: blockdev.LogicalVolume) -> str | None:
    """Why `lv` cannot be mapped through a filesystem on its bytes, in words; None for a plain,
    visible, linear LV, which can."""
    kind, types = lv.attr[:1], set(lv.types)
    snapshots = sorted(s.name for s in vg.lvs if s.origin == lv.name and s.attr[:1] in ("s", "S"))
    if kind in ("o", "O") and not lv.hidden:
        of = ", ".join(snapshots) or "thin snapshots"
        if kind == "O":
            return (f"origin of {of}, a snapshot merge pending (once merged the origin holds the "
                    "snapshot's blocks, which its filesystem does not map)")
        return (f"origin of {of} (a snapshot needs origin blocks the origin's filesystem no "
                "longer uses)")
    if kind in ("s", "S"):
        merging = ", merge pending" if kind == "S" else ""
        return f"snapshot of {lv.origin}{merging}: its copy-on-write store"
    if types & {"cache", "writecache"}:
        return (f"{'/'.join(sorted(types))} (a writeback cache holds blocks newer than its "
                "origin): origin and cache")
    if "thin-pool" in types:
        thin = sorted(t.name for t in vg.lvs if t.pool == lv.name and "thin" in t.types)
        return f"thin pool{' of ' + ', '.join(thin) if thin else ''}: data and metadata"
    if kind in ("r", "R", "m", "M"):
        return f"{'/'.join(sorted(types))}: every image, and the metadata or log beside them"
    if kind == "e" and not lv.parent:
        return "pool metadata spare"
    if lv.hidden or lv.parent or kind not in ("-", ""):
        return f"{'/'.join(sorted(types)) or 'component'} (attributes {lv.attr})"
    if types != {"linear"}:
        return f"{'/'.join(sorted(types))}"
    return None


def top_lv(vg: blockdev.VolumeGroup, lv: blockdev.LogicalVolume) -> blockdev.LogicalVolume:
    """The volume `lv` is a component of (a raid image's raid LV, a cache origin's cached LV,
    a pool's data's thin pool), following LVM's parent, origin and pool links; `lv` itself
    when it stands alone."""
    by_name = {v.name: v for v in vg.lvs}
    seen = {lv.name}
    while True:
        owner = by_name.get(lv.parent) or next(
            (v for v in vg.lvs if lv.hidden and lv.name in (v.origin, v.pool)
             and v.attr[:1] not in ("s", "S")), None)
        if owner is None or owner.name in seen:
            return lv
        seen.add(owner.name)
        lv = owner


def pv_free(node: str) -> list[Range]:
    """Byte ranges of `node` (a PV) that no LV, visible or hidden, has allocated.

    LVM lists the segments of every PV of the volume group, the other disks' too: only this
    PV's count here."""
    try:
        rows = blockdev._lvm_report(  # blockdev's one way of asking LVM without udev
            ["pvs", "--segments", "-o",
             "pv_name,pe_start,pvseg_start,pvseg_size,lv_name,vg_extent_size"],
            f"list the free extents of {node}", [node])
    except blockdev.BlockDevError:
        return []
    free = []
    for row in rows:
        if os.path.realpath(row["pv_name"]) != os.path.realpath(node):
            continue
        if row.get("lv_name") == "" and row.get("vg_extent_size"):
            extent = int(row["vg_extent_size"])
            start = int(row["pe_start"]) + int(row["pvseg_start"]) * extent
            free.append((start, start + int(row["pvseg_size"]) * extent))
    return free


def md_member_used(node: str, length: int, label: str, notes: Notes,
                   selection: Selection) -> Found:
    """An md RAID1 member: the array's used blocks, seen through the member's data offset.

    A RAID1 member holds the whole array from its data offset on, so a read-only loop device
    there shows the array's filesystem without assembling anything. Superblocks, bitmaps and
    whatever the filesystem does not cover are read whole.
    """
    try:
        member = blockdev.md_member(node)
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: RAID member: {e} Read whole.")
        return Found.whole(length)
    if member is not None and member.raid_devices > 1:
        _md_elsewhere(member, label, notes, selection)
    if member is None or member.level != "raid1" or not 0 <= member.data_offset < length:
        level = member.level if member else "unknown level"
        notes.append(f"{label}: RAID member ({level}): read whole ({_human(length)})")
        return Found.whole(length)
    offset = member.data_offset
    try:
        with loop_view(node, offset, length - offset) as view:
            inner = area_inner(view, length - offset, f"{label}: RAID1 {member.name or ''}".rstrip(),
                               notes, selection)
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: RAID member: {e} Read whole.")
        return Found.whole(length)
    inner = inner.shift(offset)
    return Found(normalize([(0, offset)] + inner.used), inner.zero)


def _md_elsewhere(member: blockdev.MdMember, label: str, notes: Notes,
                  selection: Selection) -> None:
    """Warn when a member of `member`'s array lies on no disk being captured, or is not attached:
    blkid finds the members by the array's UUID (mdadm writes it aa:bb:cc:dd, blkid as a UUID),
    each member once by its UUID_SUB."""
    want = member.array_uuid.replace(":", "").replace("-", "").lower()
    members: dict[str, list[str]] = {}
    try:
        for d in blockdev.devices_matching("TYPE=linux_raid_member"):
            if d.get("UUID", "").replace("-", "").lower() == want:
                members.setdefault(d.get("UUID_SUB", d["DEVNAME"]), []).append(d["DEVNAME"])
    except blockdev.BlockDevError as e:
        notes.warn(f"{label}: RAID member: the array's other members could not be looked for "
                   f"({e}); select every disk that holds one.")
        return
    missing = member.raid_devices - len(members)
    outside = selection.outside(members.values())
    if outside or missing > 0:
        lost = (f"{missing} of its {member.raid_devices} members not attached"
                if missing > 0 else "")
        notes.warn(_not_captured(f"RAID array {member.name or member.array_uuid} "
                                 f"({member.level})", label, outside, lost))


def area_inner(node: str, length: int, label: str, notes: Notes,
               selection: Selection) -> Found:
    """What a stacked device (LV, RAID1 data) of `length` bytes holds, relative to it."""
    try:
        fstype = blockdev.filesystem(node).get("TYPE")
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: {e} Read whole.")
        return Found.whole(length)
    return content_used(node, fstype, length, label, notes, selection)


@contextmanager
def loop_view(node: str, offset: int, size: int) -> Iterator[str]:
    """A read-only loop device showing `size` bytes of `node` from `offset`."""
    proc = subprocess.run(["losetup", "--show", "-f", "-r", "-o", str(offset), "--sizelimit",
                           str(size), node], capture_output=True, text=True)
    if proc.returncode != 0:
        raise blockdev.BlockDevError(f"Cannot look inside {node} at byte {offset}: "
                                     f"{proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
