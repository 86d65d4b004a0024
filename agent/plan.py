"""The read plan of a disk: which bytes capture reads, and why.

Partition tables, gaps and bootloader areas are read whole; a filesystem partclone knows only by
its used blocks; swap by its header; an LVM PV by the used blocks of its linear LVs' filesystems
(the rest of the PV whole); an md RAID1 member by its array's used blocks, through the member's
data offset. Anything else is read whole. What the plan does not read is free.

Ranges are half-open byte ranges [start, end) on the disk, sorted and disjoint.
"""

from __future__ import annotations

import logging
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from agent import blockdev, partclone

log = logging.getLogger(__name__)

Range = tuple[int, int]

# Swap needs only its header page (the largest page size Linux uses is 64 KiB).
SWAP_HEADER = 64 * 1024
# MBR extended partition containers: their EBRs are read as gaps.
EXTENDED_TYPES = frozenset({"5", "f", "85"})


# --- range arithmetic -----------------------------------------------------------------------------

def normalize(ranges) -> list[Range]:
    """Sorted, merged, non-empty ranges."""
    out: list[Range] = []
    for s, e in sorted(r for r in ranges if r[1] > r[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def subtract(ranges: list[Range], holes: list[Range]) -> list[Range]:
    """`ranges` minus `holes` (both normalized)."""
    out: list[Range] = []
    holes = normalize(holes)
    for s, e in ranges:
        pos = s
        for hs, he in holes:
            if he <= pos or hs >= e:
                continue
            if hs > pos:
                out.append((pos, hs))
            pos = max(pos, he)
        if pos < e:
            out.append((pos, e))
    return out


def clip(ranges: list[Range], start: int, end: int) -> list[Range]:
    return [(max(s, start), min(e, end)) for s, e in ranges if e > start and s < end]


def shift(ranges: list[Range], by: int) -> list[Range]:
    return [(s + by, e + by) for s, e in ranges]


def total(ranges: list[Range]) -> int:
    return sum(e - s for s, e in ranges)


# --- the plan -------------------------------------------------------------------------------------

@dataclass
class ReadPlan:
    device: str
    size: int
    used: list[Range]                                  # what to read; the rest is free
    notes: list[str] = field(default_factory=list)     # one line per area, for logs and screens

    @property
    def read_bytes(self) -> int:
        return total(self.used)

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, list[Range]]]:
        """(chunk index, the used ranges inside it) for every chunk that holds used bytes."""
        index: int | None = None
        parts: list[Range] = []
        for s, e in self.used:
            while s < e:
                i = s // chunk_size
                piece_end = min(e, (i + 1) * chunk_size, self.size)
                if i != index:
                    if index is not None:
                        yield index, parts
                    index, parts = i, []
                parts.append((s, piece_end))
                s = piece_end
        if index is not None:
            yield index, parts

    def to_json(self) -> dict:
        return {"device": self.device, "size": self.size, "read_bytes": self.read_bytes,
                "notes": self.notes}


def plan_disk(device: str) -> ReadPlan:
    """Probe `device` and decide what to read."""
    size = blockdev.disk_size(device)
    notes: list[str] = []
    table = blockdev.partition_table(device)
    if table is None:
        used = area_used(device, 0, size, device, notes)
        return ReadPlan(device, size, normalize(clip(used, 0, size)), notes)
    parts = [p for p in table.partitions
             if not (table.label == "dos" and p.type.lower() in EXTENDED_TYPES)]
    gaps = subtract([(0, size)], [(p.start, p.start + p.size) for p in parts])
    notes.append(f"{device}: {table.label} partition table, gaps and boot areas: read whole "
                 f"({_human(total(gaps))})")
    used = list(gaps)
    for p in parts:
        used += area_used(p.node, p.start, p.size, p.node, notes)
    return ReadPlan(device, size, normalize(clip(used, 0, size)), notes)


def area_used(node: str, start: int, length: int, label: str, notes: list[str]) -> list[Range]:
    """Used ranges (disk offsets) of the area [start, start+length) that `node` exposes."""
    whole = [(start, start + length)]
    try:
        fstype = blockdev.filesystem(node).get("TYPE")
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: {e} Read whole.")
        return whole
    if partclone.knows(fstype) or fstype == "swap":
        inner = content_used(node, fstype, length, label, notes)
        return shift(inner, start)
    if fstype == "LVM2_member":
        return shift(pv_used(node, length, label, notes), start)
    if fstype == "linux_raid_member":
        return shift(md_member_used(node, length, label, notes), start)
    notes.append(f"{label}: {fstype or 'no filesystem found'}: read whole ({_human(length)})")
    return whole


def content_used(node: str, fstype: str | None, length: int, label: str,
                 notes: list[str]) -> list[Range]:
    """Used ranges, relative to `node`, of a filesystem or swap of `length` bytes."""
    if fstype == "swap":
        notes.append(f"{label}: swap: header only")
        return [(0, min(SWAP_HEADER, length))]
    if not partclone.knows(fstype):
        notes.append(f"{label}: {fstype or 'no filesystem found'}: read whole ({_human(length)})")
        return [(0, length)]
    try:
        used, end = partclone.used_blocks(node, fstype)
    except partclone.PartcloneError as e:
        notes.append(f"{label}: {fstype}: {e}; read whole ({_human(length)})")
        return [(0, length)]
    # Past the map's end the filesystem says nothing (e.g. NTFS's backup boot sector): read it.
    used = normalize(clip(used, 0, length) + [(min(end, length), length)])
    notes.append(f"{label}: {fstype}: used blocks only ({_human(total(used))} of {_human(length)})")
    return used


def pv_used(node: str, length: int, label: str, notes: list[str]) -> list[Range]:
    """An LVM PV: its LVs through their filesystems' used blocks where that is possible.

    A single-segment linear LV is seen through a read-only loop device over its bytes on the PV,
    so neither device-mapper nor activation is needed; a longer linear LV through its active
    device. Free extents are free; everything else (metadata, other LVs) is read whole.
    """
    try:
        vgs = blockdev.lvm_layout([node])
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: LVM PV: {e} Read whole.")
        return [(0, length)]
    used = subtract([(0, length)], pv_free(node))
    for vg in vgs:
        for lv in vg.lvs:
            name = f"{label}: LV {vg.name}/{lv.name}"
            mine = [seg for seg in lv.segments if seg["pv"] == node]
            starts = [seg["start"] for seg in lv.segments]
            if not mine:
                continue
            if len(starts) != len(set(starts)):
                notes.append(f"{name}: striped or mirrored: read whole")
                continue
            if len(lv.segments) == 1:
                seg = lv.segments[0]
                try:
                    with loop_view(node, seg["pv_start"], seg["size"]) as view:
                        inner = area_inner(view, seg["size"], name, notes)
                except blockdev.BlockDevError as e:
                    notes.append(f"{name}: {e} Read whole.")
                    continue
            elif lv.active and Path(lv.path).exists():
                inner = area_inner(lv.path, lv.size, name, notes)
            else:
                notes.append(f"{name}: {len(lv.segments)} segments and not active: read whole")
                continue
            for seg in mine:
                seg_start, seg_end = seg["start"], seg["start"] + seg["size"]
                used = subtract(used, [(seg["pv_start"], seg["pv_start"] + seg["size"])])
                used += shift(clip(inner, seg_start, seg_end), seg["pv_start"] - seg_start)
    return normalize(clip(used, 0, length))


def pv_free(node: str) -> list[Range]:
    """Byte ranges of `node` (a PV) that no LV, visible or hidden, has allocated."""
    try:
        rows = blockdev._lvm_report(  # blockdev's one way of asking LVM without udev
            ["pvs", "--segments", "-o", "pe_start,pvseg_start,pvseg_size,lv_name,vg_extent_size"],
            f"list the free extents of {node}", [node])
    except blockdev.BlockDevError:
        return []
    free = []
    for row in rows:
        if row.get("lv_name") == "" and row.get("vg_extent_size"):
            extent = int(row["vg_extent_size"])
            start = int(row["pe_start"]) + int(row["pvseg_start"]) * extent
            free.append((start, start + int(row["pvseg_size"]) * extent))
    return free


def md_member_used(node: str, length: int, label: str, notes: list[str]) -> list[Range]:
    """An md RAID1 member: the array's used blocks, seen through the member's data offset.

    A RAID1 member holds the whole array from its data offset on, so a read-only loop device
    there shows the array's filesystem without assembling anything. Superblocks, bitmaps and
    whatever the filesystem does not cover are read whole.
    """
    try:
        member = blockdev.md_member(node)
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: RAID member: {e} Read whole.")
        return [(0, length)]
    if member is None or member.level != "raid1" or not 0 <= member.data_offset < length:
        level = member.level if member else "unknown level"
        notes.append(f"{label}: RAID member ({level}): read whole ({_human(length)})")
        return [(0, length)]
    offset = member.data_offset
    try:
        with loop_view(node, offset, length - offset) as view:
            inner = area_inner(view, length - offset, f"{label}: RAID1 {member.name or ''}".rstrip(),
                               notes)
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: RAID member: {e} Read whole.")
        return [(0, length)]
    return normalize([(0, offset)] + shift(inner, offset))


def area_inner(node: str, length: int, label: str, notes: list[str]) -> list[Range]:
    """Used ranges relative to a stacked device (LV, RAID1 data) of `length` bytes."""
    try:
        fstype = blockdev.filesystem(node).get("TYPE")
    except blockdev.BlockDevError as e:
        notes.append(f"{label}: {e} Read whole.")
        return [(0, length)]
    return content_used(node, fstype, length, label, notes)


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


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
