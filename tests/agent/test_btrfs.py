"""btrfs on real loop devices, in every profile this kernel builds: every member device is
captured into a real p2v-server and restored onto its own disk full of random bytes; the restored
filesystem mounts with only the restored devices, every file is as it was, and scrub and check
find nothing wrong. Also: the chunk-map parsing, a log tree left by an fsync before a crash, and a
damaged chunk tree (read whole, with a warning)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.disk import btrfs
from agent.transfer import capture, restore
from agent.disk.btrfs import Chunk, Superblock
from agent.disk.plan import _human, plan_disk
from agent.settings import Settings
from support import rescan, run

MiB = 1024 * 1024
DEVICE_SIZE = 300 * MiB


@dataclass
class Layout:
    name: str
    devices: int
    mkfs: tuple[str, ...]
    partitioned: bool = False


LAYOUTS = [
    Layout("default", 1, (), partitioned=True),            # DUP metadata and system
    Layout("dup-single", 1, ("-m", "dup", "-d", "single")),
    Layout("single-2", 2, ("-m", "raid1", "-d", "single"), partitioned=True),
    Layout("raid0", 2, ("-m", "raid0", "-d", "raid0"), partitioned=True),
    Layout("raid0-data", 2, ("-d", "raid0")),              # raid1 metadata
    Layout("raid1", 2, ("-m", "raid1", "-d", "raid1")),
    Layout("raid10", 4, ("-m", "raid10", "-d", "raid10")),
    Layout("raid1c3", 3, ("-m", "raid1c3", "-d", "raid1c3")),
    Layout("raid5", 3, ("-m", "raid5", "-d", "raid5"), partitioned=True),
    Layout("raid6", 4, ("-m", "raid6", "-d", "raid6")),
]


# --- pure: the chunk tree and the device map -----------------------------------------------------

CHUNK_TREE = """\
chunk tree
leaf 22036480 items 4 free space 15626 generation 6 owner CHUNK_TREE
\titem 0 key (DEV_ITEMS DEV_ITEM 1) itemoff 16185 itemsize 98
\t\tdevid 1 total_bytes 314572800 bytes_used 109051904
\titem 1 key (FIRST_CHUNK_TREE CHUNK_ITEM 22020096) itemoff 15975 itemsize 112
\t\tlength 16777216 owner 2 stripe_len 65536 type SYSTEM|RAID0
\t\tio_align 65536 io_width 65536 sector_size 4096
\t\tnum_stripes 2 sub_stripes 1
\t\t\tstripe 0 devid 1 offset 22020096
\t\t\tdev_uuid 02d494ab-efe5-4b80-ae77-d14469a1672c
\t\t\tstripe 1 devid 2 offset 1048576
\t\t\tdev_uuid 5a151519-da0d-47a8-ae47-10b76134db6f
\titem 2 key (FIRST_CHUNK_TREE CHUNK_ITEM 38797312) itemoff 15863 itemsize 112
\t\tlength 67108864 owner 2 stripe_len 65536 type METADATA|DUP
\t\tnum_stripes 2 sub_stripes 1
\t\t\tstripe 0 devid 1 offset 30408704
\t\t\tstripe 1 devid 1 offset 97517568
\titem 3 key (FIRST_CHUNK_TREE CHUNK_ITEM 105906176) itemoff 15751 itemsize 112
\t\tlength 134217728 owner 2 stripe_len 65536 type DATA
\t\tnum_stripes 1 sub_stripes 1
\t\t\tstripe 0 devid 2 offset 42991616
"""


def test_chunk_tree_parsing():
    chunks = btrfs.parse_chunk_tree(CHUNK_TREE)
    assert [(c.logical, c.length, c.profile, c.kind, c.stripes) for c in chunks] == [
        (22020096, 16 * MiB, "raid0", "system", [(1, 22020096), (2, MiB)]),
        (38797312, 64 * MiB, "dup", "metadata", [(1, 30408704), (1, 97517568)]),
        (105906176, 128 * MiB, "single", "data", [(2, 42991616)]),
    ]


def test_stripe_size_of_every_profile():
    def size(flags: str, stripes: int, sub: int = 1) -> int:
        return Chunk(0, 12 * MiB, frozenset(flags.split("|")), sub,
                     [(i + 1, 0) for i in range(stripes)]).stripe_size

    assert size("DATA", 1) == size("DATA|DUP", 2) == size("DATA|RAID1", 2) == 12 * MiB
    assert size("DATA|RAID1C3", 3) == size("DATA|RAID1C4", 4) == 12 * MiB
    assert size("DATA|RAID0", 3) == 4 * MiB and size("DATA|RAID0", 4) == 3 * MiB
    assert size("DATA|RAID10", 4, sub=2) == 6 * MiB and size("DATA|RAID10", 6, sub=2) == 4 * MiB
    assert size("DATA|RAID5", 3) == 6 * MiB and size("DATA|RAID5", 4) == 4 * MiB
    assert size("DATA|RAID6", 4) == 6 * MiB and size("DATA|RAID6", 5) == 4 * MiB
    with pytest.raises(btrfs.BtrfsError, match="does not divide"):
        size("DATA|RAID6", 2)


def test_device_map_holds_every_copy_and_checks_the_superblock():
    chunks = btrfs.parse_chunk_tree(CHUNK_TREE)
    one = btrfs.device_map(Superblock(devid=1, allocated=8 * MiB + 128 * MiB, num_devices=2,
                                      log_root=0), chunks, DEVICE_SIZE)
    # The first MiB, its raid0 stripe (22-30 MiB) and both DUP copies (29-61 MiB, 93-125 MiB;
    # the superblock mirror at 64 MiB inside the second), merged; nothing of devid 2's data.
    assert one.ranges == [(0, MiB), (22020096, 97517568 + 64 * MiB)]
    assert one.describe() == "single data, dup metadata, raid0 system, 2 devices"
    # A chunk-tree leaf the tools could not read shows as bytes the superblock says are there.
    with pytest.raises(btrfs.BtrfsError, match="places 142606336 bytes on device 2 but its "
                                               "superblock says 150994944"):
        btrfs.device_map(Superblock(2, 144 * MiB, 2, 0), chunks, DEVICE_SIZE)
    with pytest.raises(btrfs.BtrfsError, match="past the device's end"):
        btrfs.device_map(Superblock(2, 136 * MiB, 2, 0), chunks, 100 * MiB)
    with pytest.raises(btrfs.BtrfsError, match="btrfs replace"):
        btrfs.device_map(Superblock(0, 0, 2, 0), chunks, DEVICE_SIZE)


EXTENT_TREE = """\
\titem 0 key (38797312 METADATA_ITEM 0) itemoff 16251 itemsize 33
\titem 1 key (38813696 METADATA_ITEM 1) itemoff 16218 itemsize 33
\titem 2 key (105906176 BLOCK_GROUP_ITEM 134217728) itemoff 16194 itemsize 24
\titem 3 key (105906176 EXTENT_ITEM 196608) itemoff 16141 itemsize 53
\titem 4 key (106168320 EXTENT_ITEM 8192) itemoff 16088 itemsize 53
"""


def test_used_extents_land_on_every_copy_and_whole_rows_of_striped_chunks():
    used, adds_up = btrfs.parse_extent_tree(EXTENT_TREE, 16384)
    assert used == [(38797312, 38797312 + 32768), (105906176, 105906176 + 196608),
                    (106168320, 106168320 + 8192)]
    assert adds_up == 32768 + 196608 + 8192
    chunks = btrfs.parse_chunk_tree(CHUNK_TREE)
    one = btrfs.device_map(Superblock(1, 136 * MiB, 2, 0), chunks, DEVICE_SIZE, used)
    # Both DUP copies of the two tree blocks; nothing of the raid0 system chunk (unused).
    assert one.ranges == [(0, MiB), (30408704, 30408704 + 32768), (64 * MiB, 64 * MiB + 4096),
                          (97517568, 97517568 + 32768)]
    two = btrfs.device_map(Superblock(2, 8 * MiB + 128 * MiB, 2, 0), chunks, DEVICE_SIZE, used)
    assert two.ranges == [(0, MiB), (42991616, 42991616 + 196608),
                          (42991616 + 262144, 42991616 + 262144 + 8192),
                          (64 * MiB, 64 * MiB + 4096)]
    # raid5 on 3 devices: a row is 64 KiB on each, 128 KiB of data; 8 KiB at logical 200 KiB of
    # the chunk lies in row 1, so row 1 is read on every device (data and parity).
    raid5 = Chunk(0, 6 * MiB, frozenset({"DATA", "RAID5"}), 1,
                  [(1, 10 * MiB), (2, 20 * MiB), (3, 30 * MiB)])
    got = btrfs.device_map(Superblock(3, 3 * MiB, 3, 0), [raid5], DEVICE_SIZE,
                           [(200 * 1024, 208 * 1024)])
    assert got.ranges == [(0, MiB), (30 * MiB + 65536, 30 * MiB + 131072),
                          (64 * MiB, 64 * MiB + 4096)]


# --- real filesystems ----------------------------------------------------------------------------

class Kernel:
    """btrfs devices this test made known to the kernel (mount registers them): unmounted and
    forgotten at the end, while their nodes are still ours (the `loopdev` fixture detaches)."""

    def __init__(self):
        self.nodes: list[str] = []
        self.mounts: list[str] = []

    @contextlib.contextmanager
    def mounted(self, nodes: list[str]):
        self.nodes += nodes
        with tempfile.TemporaryDirectory(prefix="p2v-btrfs-") as mnt:
            devices = ",".join(f"device={n}" for n in nodes)
            run("mount", "-t", "btrfs", "-o", devices, nodes[0], mnt)
            self.mounts.append(mnt)
            try:
                yield Path(mnt)
            finally:
                run("umount", mnt)
                self.mounts.remove(mnt)
                self.forget(nodes)

    def forget(self, nodes: list[str]) -> None:
        for node in nodes:
            subprocess.run(["btrfs", "device", "scan", "--forget", node], capture_output=True)

    def cleanup(self) -> None:
        for mnt in self.mounts:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        self.forget(self.nodes)


@pytest.fixture
def kernel():
    k = Kernel()
    yield k
    k.cleanup()


def disk_size(layout: Layout) -> int:
    return DEVICE_SIZE + (2 * MiB if layout.partitioned else 0)


def make_disks(loopdev, layout: Layout) -> tuple[list[str], list[str]]:
    """(disks, btrfs member nodes): whole loop devices, or one GPT partition on each."""
    disks, nodes = [], []
    for i in range(layout.devices):
        dev = loopdev(disk_size(layout), f"source{i}")
        if layout.partitioned:
            run("sfdisk", "-q", dev, input="label: gpt\nstart=1MiB, size=300MiB, name=btrfs\n")
            (node,) = rescan(dev)
        else:
            node = dev
        disks.append(dev)
        nodes.append(node)
    return disks, nodes


def erase_superblocks(node: str) -> None:
    """Make `node` no btrfs member for the kernel and the tools, once it is captured. (Not
    detached: the `loopdev` fixture does that, and a loop device freed early may be someone
    else's by then.)"""
    with open(node, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        for at in btrfs.SUPERBLOCKS:
            if at + btrfs.SUPERBLOCK_SIZE <= size:
                f.seek(at)
                f.write(bytes(btrfs.SUPERBLOCK_SIZE))
        os.fsync(f.fileno())


def random_fill(dev: str, seed: int) -> None:
    rng = random.Random(seed)
    with open(dev, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        for _ in range(0, size, 4 * MiB):
            f.write(rng.randbytes(4 * MiB)[:size - f.tell()])
        os.fsync(f.fileno())


def fill(root: Path, seed: int) -> None:
    """Files of random bytes (some small enough to sit inline in metadata), some deleted to leave
    holes, then more written into them."""
    rng = random.Random(seed)
    made = []
    for i in range(36):
        size = rng.choice((rng.randrange(1, 3000), rng.randrange(64 * 1024, 4 * MiB)))
        path = root / f"d{i % 4}" / f"f{i}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        made.append(path)
    os.sync()
    for path in made[::3]:
        path.unlink()
    os.sync()
    for i in range(12):
        (root / f"late{i}.bin").write_bytes(rng.randbytes(rng.randrange(4096, 2 * MiB)))
    os.sync()


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def settings_for(server, **kw) -> Settings:
    return Settings(server=server.url, token=server.token, fingerprint=server.fingerprint, **kw)


def capture_and_restore(loopdev, server, kernel, layout: Layout, disks: list[str]) -> list[str]:
    """Capture `disks`, detach them, restore each onto a random-filled disk of its own; the
    restored btrfs member nodes."""
    job = capture.run(settings_for(server, disks=disks, name=f"btrfs-{layout.name}", streams=4),
                      identity={"system_uuid": str(uuid.uuid4())})
    # Only the restored devices may carry this filesystem's id from here on.
    for dev in disks:
        erase_superblocks(rescan(dev)[0] if layout.partitioned else dev)
    nodes = []
    for i, disk in enumerate(job.disks):
        target = loopdev(disk_size(layout), f"target{i}")
        random_fill(target, seed=i)
        restore.run(settings_for(server, job=job.job, streams=4), target, disk=disk.id)
        nodes.append(rescan(target)[0] if layout.partitioned else target)
    return nodes


def assert_clean(kernel, nodes: list[str], expected: dict[str, str]) -> None:
    with kernel.mounted(nodes) as mnt:
        assert file_hashes(mnt) == expected
        scrub = run("btrfs", "scrub", "start", "-B", "-d", str(mnt), check=False)
        out = scrub.stdout + scrub.stderr
        assert scrub.returncode == 0 and out.count("no errors found") == len(nodes), out
    check = run("btrfs", "check", "--readonly", nodes[0], check=False)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_every_copy_of_every_chunk_survives_capture_and_restore(loopdev, p2v_server, kernel,
                                                                layout):
    disks, nodes = make_disks(loopdev, layout)
    run("mkfs.btrfs", "-q", "-f", *layout.mkfs, *nodes)
    with kernel.mounted(nodes) as mnt:
        fill(mnt, seed=len(layout.name))
        expected = file_hashes(mnt)
    assert len(expected) == 36 - 12 + 12

    for disk, node in zip(disks, nodes):
        plan = plan_disk(disk, disks)   # captured together
        note = next(n for n in plan.notes if n.startswith(f"{node}: btrfs"))
        assert f"{layout.devices} device" in note and "every copy on this device" in note, note
        assert not plan.warnings, plan.warnings
        # Every device extent is read whole, and nothing of the device's unallocated rest.
        assert plan.read_bytes < DEVICE_SIZE * 0.9, plan.notes

    assert_clean(kernel, capture_and_restore(loopdev, p2v_server, kernel, layout, disks), expected)


def test_a_log_tree_left_by_a_crash_is_replayed_on_the_restored_filesystem(loopdev, p2v_server,
                                                                           kernel):
    """An fsync writes the log tree and a superblock naming it, not the extent tree; the
    transaction commit that would fold it in never comes (the machine lost power). The
    device is copied at that moment, as the stick would find it."""
    live = loopdev(DEVICE_SIZE, "live")
    run("mkfs.btrfs", "-q", "-f", live)
    rng = random.Random(7)
    logged = {f"fsynced{i}.bin": rng.randbytes(size) for i, size in enumerate((MiB, 300_000))}
    crashed = loopdev(DEVICE_SIZE, "crashed")
    with kernel.mounted([live]) as mnt:
        run("mount", "-o", "remount,commit=300", str(mnt))
        for i in range(4):
            (mnt / f"committed{i}.bin").write_bytes(rng.randbytes(512 * 1024))
        os.sync()
        # Small, in a chunk that has room: an fsync that must allocate a chunk commits instead.
        for name, body in logged.items():
            with open(mnt / name, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
        expected = file_hashes(mnt)
        run("dd", f"if={live}", f"of={crashed}", "bs=4M", "iflag=direct", "oflag=direct",
            "status=none")
    erase_superblocks(live)
    super_text = run("btrfs", "inspect-internal", "dump-super", crashed).stdout
    assert btrfs.parse_superblock(super_text).log_root != 0, "the copy holds no log tree"

    plan = plan_disk(crashed)
    (warning,) = plan.warnings   # unclean like an ext4 or XFS: the technician is told
    assert warning.startswith(f"{crashed}: btrfs (single data, dup metadata, 1 device): "
                              "every copy on this device, its chunks whole: a log tree "
                              "waits to be replayed"), plan.notes
    read, mapped = re.search(r": read (\S+ \w+) instead of (\S+ \w+)\. To send only used "
                             r"blocks, boot the source's own system once and shut it down "
                             r"cleanly\.$", warning).groups()
    assert read == _human(plan.read_bytes) and read != mapped
    layout = Layout("crashed", 1, ())
    assert_clean(kernel, capture_and_restore(loopdev, p2v_server, kernel, layout, [crashed]),
                 expected)


def test_a_damaged_chunk_tree_is_read_whole_with_a_warning(loopdev):
    dev = loopdev(DEVICE_SIZE)
    run("mkfs.btrfs", "-q", "-f", dev)
    sb = run("btrfs", "inspect-internal", "dump-super", dev).stdout
    chunk_root = int(next(ln.split()[1] for ln in sb.splitlines() if ln.startswith("chunk_root\t")))
    chunks = btrfs.parse_chunk_tree(
        run("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", dev).stdout)
    (system,) = [c for c in chunks if c.logical <= chunk_root < c.logical + c.length]
    assert system.profile == "dup" and len(system.stripes) == 2
    with open(dev, "r+b") as f:  # both copies of the chunk tree's root leaf
        for _, offset in system.stripes:
            f.seek(offset + chunk_root - system.logical + 4096)
            f.write(b"\xff" * 4096)
    plan = plan_disk(dev)
    assert plan.used == [(0, DEVICE_SIZE)]
    (warning,) = plan.warnings
    assert warning.startswith(f"{dev}: btrfs: its chunks cannot be mapped (") and \
        "read whole (300.0 MiB)" in warning, warning


def test_members_on_other_disks_are_found_without_udev(loopdev, kernel):
    """raid0 system chunks: the second device holds no copy of the chunk tree's leaf, so the
    tools must find the first device themselves (no udev here, nothing registered)."""
    a, b = loopdev(DEVICE_SIZE, "a"), loopdev(DEVICE_SIZE, "b")
    run("mkfs.btrfs", "-q", "-f", "-m", "raid0", "-d", "raid0", a, b)
    kernel.forget([a, b])
    alone = run("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", "--noscan", b,
                check=False)
    found = {dev: btrfs.map_device(dev, DEVICE_SIZE) for dev in (a, b)}
    assert {m.devid for m in found.values()} == {1, 2}
    assert all(m.describe() == "raid0 data, raid0 metadata, 2 devices" for m in found.values())
    if "CHUNK_ITEM" in alone.stdout:
        return  # mkfs put a copy of the chunk tree on the second device too: no scan was needed


def test_an_extent_tree_this_device_cannot_give_is_read_through_the_others(loopdev, kernel):
    """A device that holds a copy of the chunk tree but not a good copy of the whole extent tree
    (raid10/raid0 metadata puts each 64 KiB on some of the devices only: CI's raid10 capture was
    read whole, with a warning, when the extent tree fell on the other pair; here: a bad copy of
    the extent tree's root on a raid1 mirror) is still mapped: the others are read too."""
    a, b = loopdev(DEVICE_SIZE, "a"), loopdev(DEVICE_SIZE, "b")
    run("mkfs.btrfs", "-q", "-f", "-m", "raid1", "-d", "raid1", a, b)
    with kernel.mounted([a, b]) as mnt:
        fill(mnt, seed=3)
    roots = run("btrfs", "inspect-internal", "dump-tree", "-t", "root", "--noscan", b).stdout
    extent_root = int(re.search(r"key \(EXTENT_TREE ROOT_ITEM 0\).*\n.* bytenr (\d+)",
                                roots).group(1))
    chunks = btrfs.parse_chunk_tree(
        run("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", "--noscan", b).stdout)
    (chunk,) = [c for c in chunks if c.logical <= extent_root < c.logical + c.length]
    devid = btrfs.parse_superblock(run("btrfs", "inspect-internal", "dump-super", b).stdout).devid
    (offset,) = [at for dev, at in chunk.stripes if dev == devid]
    with open(b, "r+b") as f:  # b's copy of the root leaf, past its header
        f.seek(offset + extent_root - chunk.logical + 1024)
        f.write(b"\xff" * 4096)
        os.fsync(f.fileno())
    sb = btrfs.parse_superblock(run("btrfs", "inspect-internal", "dump-super", b).stdout)
    alone = run("btrfs", "inspect-internal", "dump-tree", "-t", "extent", "--noscan", b,
                check=False).stdout
    assert btrfs.parse_extent_tree(alone, sb.nodesize)[1] != sb.used  # the case

    found = btrfs.map_device(b, DEVICE_SIZE)
    assert not found.whole_chunks, found.whole_chunks
    assert found.describe() == "raid1 data, raid1 metadata, 2 devices"
    assert not plan_disk(b, [a, b]).warnings
