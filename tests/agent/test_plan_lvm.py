"""LVM layouts: what the plan may map through a filesystem, and what it must read whole.

Two disks, each one whole PV of one volume group holding every layout LVM has: an origin with a
classic snapshot, an origin with a snapshot merge pending, a thin pool and a thin LV, a writeback
cache, a writecache, raid1, a mirror, a striped LV, a linear LV in two segments on both disks, and
a plain linear LV. Every one but the plain LV holds a real ext4 (or random bytes) where the
filesystem map would be wrong: the origins' filesystems deleted a file the snapshot still needs.
"""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field

from agent.transfer import capture, restore
from agent.disk.plan import ReadPlan, normalize, plan_disk, subtract
from lvmlayouts import EXTENT, linear, lv, make_vg, pv_start
from sourcedisks import MiB, Volume, checksums, loop_at, mounted
from support import run
from test_capture_restore import settings_for

DISK = 200 * MiB


def snapshot(origin: str, cow: str, extents: int, merging: bool = False) -> dict:
    return {"start_extent": 0, "extent_count": extents, "type": "snapshot", "chunk_size": 8,
            "origin": origin, ("merging_store" if merging else "cow_store"): cow}


# (name, pv, first extent, extents) of every piece of LV data; "fs" ones get an ext4 with files.
PIECES = [
    ("origin", 0, 0, 5), ("snap", 0, 5, 3), ("morigin", 0, 8, 3), ("msnap", 0, 11, 1),
    ("pool_tmeta", 0, 12, 1), ("pool_tdata", 0, 13, 4), ("lvol0_pmspare", 0, 17, 1),
    ("cached_corig", 0, 18, 3), ("cpool_cdata", 0, 21, 2), ("cpool_cmeta", 0, 23, 1),
    ("r1_rmeta_0", 0, 24, 1), ("r1_rimage_0", 0, 25, 3), ("r1_rmeta_1", 1, 0, 1),
    ("r1_rimage_1", 1, 1, 3), ("mir_mlog", 0, 28, 1), ("mir_mimage_0", 0, 29, 3),
    ("mir_mimage_1", 1, 4, 3), ("wc_wcorig", 0, 32, 3), ("fast_cvol", 1, 7, 2),
    ("plain", 0, 37, 5),
]
FILESYSTEMS = ["origin", "snap", "morigin", "cached_corig", "r1_rimage_0", "mir_mimage_0",
               "wc_wcorig", "plain"]
# Top-level LV -> the pieces that are its data, and whether the technician must be warned.
WHOLE = {
    "origin": (["origin"], True), "snap": (["snap"], False), "morigin": (["morigin"], True),
    "msnap": (["msnap"], False), "pool": (["pool_tmeta", "pool_tdata"], False),
    "lvol0_pmspare": (["lvol0_pmspare"], False),
    "cached": (["cached_corig", "cpool_cdata", "cpool_cmeta"], False),
    "r1": (["r1_rmeta_0", "r1_rimage_0", "r1_rmeta_1", "r1_rimage_1"], False),
    "mir": (["mir_mlog", "mir_mimage_0", "mir_mimage_1"], False),
    "wc": (["wc_wcorig", "fast_cvol"], False),
}


@dataclass
class Layout:
    disks: list[str]
    vg: str
    areas: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name: disk, start, size
    deleted: dict[str, bytes] = field(default_factory=dict)   # origin: a deleted file's bytes

    def volume(self, name: str) -> tuple[str, Volume]:
        disk, start, size = self.areas[name]
        return self.disks[disk], Volume(name, "ext4", start, size)


def build(loopdev) -> Layout:
    disks = [loopdev(DISK, "pv0"), loopdev(DISK, "pv1")]
    vg = make_vg(
        disks,
        *(lv(name, linear(pv, first, count), visible=name in ("origin", "snap", "morigin", "plain"))
          for name, pv, first, count in PIECES),
        lv("snapshot0", snapshot("origin", "snap", 5), visible=False, status=("READ",)),
        lv("snapshot1", snapshot("morigin", "msnap", 3, merging=True), visible=False,
           status=("READ",)),
        lv("pool", {"start_extent": 0, "extent_count": 4, "type": "thin-pool",
                    "metadata": "pool_tmeta", "pool": "pool_tdata", "transaction_id": 1,
                    "chunk_size": 128, "discards": "passdown", "zero_new_blocks": 1}),
        lv("thin1", {"start_extent": 0, "extent_count": 8, "type": "thin", "thin_pool": "pool",
                     "transaction_id": 0, "device_id": 1}),
        lv("cached", {"start_extent": 0, "extent_count": 3, "type": "cache", "cache_pool": "cpool",
                      "origin": "cached_corig"}),
        lv("cpool", {"start_extent": 0, "extent_count": 2, "type": "cache-pool",
                     "data": "cpool_cdata", "metadata": "cpool_cmeta", "chunk_size": 128,
                     "metadata_format": 2, "cache_mode": "writeback", "policy": "smq"},
           visible=False),
        lv("r1", {"start_extent": 0, "extent_count": 3, "type": "raid1", "device_count": 2,
                  "region_size": 1024,
                  "raids": ["r1_rmeta_0", "r1_rimage_0", "r1_rmeta_1", "r1_rimage_1"]}),
        lv("mir", {"start_extent": 0, "extent_count": 3, "type": "mirror", "mirror_count": 2,
                   "mirror_log": "mir_mlog", "region_size": 1024,
                   "mirrors": ["mir_mimage_0", 0, "mir_mimage_1", 0]}),
        lv("wc", {"start_extent": 0, "extent_count": 3, "type": "writecache", "origin": "wc_wcorig",
                  "writecache": "fast_cvol", "writecache_block_size": 4096,
                  "writecache_settings": []}),
        lv("striped", {"start_extent": 0, "extent_count": 4, "type": "striped", "stripe_count": 2,
                       "stripe_size": 128, "stripes": ["pv0", 42, "pv1", 11]}),
        lv("multi", linear(0, 35, 2), linear(1, 9, 2, start=2)),
    )
    layout = Layout(disks, vg)
    starts = [pv_start(d) for d in disks]
    for name, pv, first, count in PIECES:
        layout.areas[name] = (pv, starts[pv] + first * EXTENT, count * EXTENT)
    layout.areas["striped0"] = (0, starts[0] + 42 * EXTENT, 2 * EXTENT)
    layout.areas["striped1"] = (1, starts[1] + 11 * EXTENT, 2 * EXTENT)
    layout.areas["multi0"] = (0, starts[0] + 35 * EXTENT, 2 * EXTENT)
    layout.areas["multi1"] = (1, starts[1] + 9 * EXTENT, 2 * EXTENT)
    for seed, name in enumerate(FILESYSTEMS):
        disk, volume = layout.volume(name)
        with loop_at(disk, volume.offset, volume.size) as node:
            run("mkfs.ext4", "-q", "-b", "4096", "-L", name, node)
            with mounted(node, "ext4") as mnt:
                for i in range(2):
                    (mnt / f"f{i}").write_bytes(random.Random(seed * 10 + i).randbytes(MiB))
                if name in ("origin", "morigin"):
                    # The snapshot still reads these blocks from the origin, which frees them.
                    gone = random.Random(100 + seed).randbytes(3 * MiB)
                    (mnt / "gone").write_bytes(gone)
                    os.sync()
                    (mnt / "gone").unlink()
                    layout.deleted[name] = gone
    for name in ("pool_tdata", "cpool_cdata", "fast_cvol", "striped0", "striped1", "multi0",
                 "multi1"):
        disk, start, size = layout.areas[name]
        with open(layout.disks[disk], "r+b") as f:
            f.seek(start)
            f.write(random.Random(name).randbytes(size))
    os.sync()
    return layout


def read_whole(plan: ReadPlan, start: int, size: int) -> bool:
    return not subtract([(start, start + size)], normalize(plan.used))


def holds(disk: str, start: int, size: int, data: bytes) -> bool:
    """Whether every 4 KiB block of `data` is somewhere in the area (a file need not be in one
    piece)."""
    area = area_bytes(disk, start, size)
    have = {area[i:i + 4096] for i in range(0, len(area), 4096)}
    return all(data[i:i + 4096] in have for i in range(0, len(data), 4096))


def area_bytes(disk: str, start: int, size: int) -> bytes:
    with open(disk, "rb") as f:
        f.seek(start)
        return f.read(size)


def test_every_layout_is_mapped_or_read_whole(loopdev):
    layout = build(loopdev)
    plans = [plan_disk(d) for d in layout.disks]
    for top, (pieces, warned) in WHOLE.items():
        for piece in pieces:
            disk, start, size = layout.areas[piece]
            assert read_whole(plans[disk], start, size), f"{top}: {piece} is not read whole"
        disk = layout.areas[pieces[0]][0]
        note = [n for n in plans[disk].notes if f"LV {layout.vg}/{top}:" in n]
        assert note and "read whole" in note[0], (top, plans[disk].notes)
        assert (note[0] in plans[disk].warnings) == warned, (top, plans[disk].warnings)
    for piece in ("striped0", "striped1", "multi0", "multi1"):
        disk, start, size = layout.areas[piece]
        assert read_whole(plans[disk], start, size), piece
    # The plain LV is still mapped through its filesystem's used blocks.
    disk, start, size = layout.areas["plain"]
    unread = subtract([(start, start + size)], plans[disk].used)
    assert sum(e - s for s, e in unread) > size // 2, plans[disk].notes
    assert any(f"LV {layout.vg}/plain: ext4: used blocks only" in n for n in plans[disk].notes)
    # The words say why.
    said = "\n".join(plans[0].notes)
    assert "origin of snap (a snapshot needs origin blocks" in said
    assert "origin of msnap, a snapshot merge pending" in said
    assert "thin pool of thin1" in said and "writeback cache holds blocks newer" in said


def test_origins_snapshots_and_caches_survive_capture_and_restore(loopdev, p2v_server):
    layout = build(loopdev)
    before = {name: checksums(*layout.volume(name)) for name in FILESYSTEMS}
    assert all(len(files) == 2 for files in before.values()), before
    for name, gone in layout.deleted.items():
        disk, start, size = layout.areas[name]
        assert holds(layout.disks[disk], start, size, gone), name

    result = capture.run(settings_for(p2v_server, disks=layout.disks, name="lvm-layouts"),
                         identity={"system_uuid": str(uuid.uuid4())})
    targets = []
    for disk in result.disks:
        target = loopdev(DISK, "target")
        restore.run(settings_for(p2v_server, job=result.job), target, disk=disk.id)
        targets.append(target)
    restored = Layout(targets, layout.vg, layout.areas)
    for name in FILESYSTEMS:
        assert checksums(*restored.volume(name)) == before[name], name
    # What the snapshots need from their origins arrived, though the origins' filesystems freed it.
    for name, gone in layout.deleted.items():
        disk, start, size = layout.areas[name]
        assert holds(targets[disk], start, size, gone), name
    for name in ("pool_tdata", "cpool_cdata", "fast_cvol", "striped0", "striped1", "multi0",
                 "multi1"):
        disk, start, size = layout.areas[name]
        assert area_bytes(targets[disk], start, size) == area_bytes(layout.disks[disk], start,
                                                                    size), name
