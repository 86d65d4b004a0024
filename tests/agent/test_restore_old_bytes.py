"""Restore onto a used disk leaves nothing of its old bytes: no signature blkid or wipefs can see
outside the source's own, zeros wherever the image has no data, and --target-zeroed checked."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import sys
import uuid
from pathlib import Path

import pytest

from agent.transfer import capture, restore
from agent.transfer.restore import RestoreError
from support import rescan, run
from sourcedisks import MiB
from test_capture_restore import settings_for
from test_restore import agent_cli, settings_client, small_source

sys.path.insert(0, str(Path(__file__).parents[1] / "machines"))
import md_superblock  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SOURCE = 64 * MiB       # small_source: ext4 in [1, 41) MiB, zeros in [41, 57), free after
TARGET = 80 * MiB       # larger than the source: 16 MiB past the image's end


def md_v10(device_size: int) -> tuple[int, bytes]:
    """(offset, bytes) of an md v1.0 member superblock: near the end of a device this big."""
    sectors = device_size // 512
    where = (sectors - 16) & ~7
    body = bytearray(md_superblock.superblock(
        set_uuid=uuid.uuid4().bytes, name="old:0", level=1, raid_disks=2, dev_number=0,
        member_sectors=sectors, ctime=1))
    struct.pack_into("<QQQ", body, 128, 0, where, where)   # data offset, data size, sb offset
    struct.pack_into("<I", body, 216, 0)
    total = sum(struct.unpack_from(f"<{len(body) // 4}I", body))
    struct.pack_into("<I", body, 216, ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF)
    return where * 512, bytes(body)


def md_v12() -> tuple[int, bytes]:
    return 4096, md_superblock.superblock(
        set_uuid=uuid.uuid4().bytes, name="old:1", level=1, raid_disks=2, dev_number=1,
        member_sectors=32768, ctime=1)


def made_by(tmp_path: Path, loopdev, kind: str) -> bytes:
    """The first MiB of a fresh xfs, ext4, swap or LVM PV: enough for blkid to find it."""
    if kind == "lvm":
        dev = loopdev(8 * MiB, "pv")
        run("lvm", "pvcreate", "-q", "--devices", dev, dev)
        with open(dev, "rb") as f:
            return f.read(MiB)
    path = tmp_path / f"{kind}.img"
    with open(path, "wb") as f:
        f.truncate(300 * MiB if kind == "xfs" else 16 * MiB)
    run(*{"xfs": ("mkfs.xfs", "-q"), "ext4": ("mkfs.ext4", "-q", "-F"),
          "swap": ("mkswap",)}[kind], str(path))
    with open(path, "rb") as f:
        return f.read(MiB)


def plant(tmp_path: Path, loopdev, dev: str, size: int) -> dict[str, int]:
    """Old signatures where the source has no data (and one inside its first data chunk);
    returns name -> offset on `dev`, each checked visible to `blkid -p` at that offset."""
    part1, part1_size, part2 = MiB, 40 * MiB, 41 * MiB
    end_off, end_sb = md_v10(size)
    p1_off, p1_sb = md_v10(part1_size)
    v12_off, v12 = md_v12()
    pieces = {
        "md 1.2 of the old whole disk": (0, v12_off, v12),
        "md 1.0 at the end of the old first partition": (part1, p1_off, p1_sb),
        "LVM PV at the second partition": (part2, 0, made_by(tmp_path, loopdev, "lvm")),
        "xfs past the source's partitions": (57 * MiB, 0, made_by(tmp_path, loopdev, "xfs")),
        "ext4 past the image's end": (SOURCE, 0, made_by(tmp_path, loopdev, "ext4")),
        "swap past the image's end": (72 * MiB, 0, made_by(tmp_path, loopdev, "swap")),
        "md 1.0 at the end of the old whole disk": (0, end_off, end_sb),
    }
    with open(dev, "r+b") as f:
        for base, offset, blob in pieces.values():
            f.seek(base + offset)
            f.write(blob)
    for name, (base, _, _) in pieces.items():
        length = {0: size, part1: part1_size}.get(base, 4 * MiB)
        probe = run("blkid", "-p", "-O", str(base), "-S", str(length), dev, check=False).stdout
        assert "TYPE=" in probe, (name, probe)
    return {name: base for name, (base, _, _) in pieces.items()}


def fill_random(dev: str, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(dev, "r+b") as f:
        for _ in range(size // MiB):
            f.write(rng.randbytes(MiB))


def signatures(dev: str) -> tuple[list[str], list[str]]:
    """What `blkid -p` and `wipefs --no-act` see on `dev` (its name taken out)."""
    blkid = [line for line in run("blkid", "-p", "-o", "export", dev, check=False)
             .stdout.splitlines() if not line.startswith(("DEVNAME=", "PART_ENTRY_DISK="))]
    wipefs = run("wipefs", "--no-act", "--noheadings", "-O", "TYPE,OFFSET,UUID,LABEL",
                 dev).stdout.splitlines()
    return blkid, wipefs


def exported_raw(server, job: str, tmp_path: Path) -> bytes:
    out = tmp_path / "export.raw"
    run(sys.executable, "-m", "server.cli", "export", job, "--format", "raw", "--out", str(out),
        "--data-dir", str(server.data_dir), cwd=REPO)
    return out.read_bytes()


def read_all(dev: str) -> bytes:
    with open(dev, "rb") as f:
        return f.read()


def assert_source_and_zeros_only(target: str, expected: bytes) -> None:
    """The target is the export's bytes (zeros where the image has no data), then zeros."""
    got = read_all(target)
    assert len(got) >= len(expected)
    for offset in range(0, len(expected), MiB):
        assert got[offset:offset + MiB] == expected[offset:offset + MiB], \
            f"old bytes left at {offset // MiB} MiB"
    assert got[len(expected):].count(0) == len(got) - len(expected), "old bytes past the image"


@pytest.fixture
def captured(loopdev, p2v_server, tmp_path):
    src = small_source(loopdev)
    job = capture.run(settings_for(p2v_server, disks=[src]),
                      identity={"system_uuid": str(uuid.uuid4())}).job
    return src, job, exported_raw(p2v_server, job, tmp_path)


def test_restore_onto_a_used_disk_leaves_no_old_signature_or_byte(loopdev, p2v_server,
                                                                  tmp_path, captured):
    src, job, expected = captured
    target = loopdev(TARGET, "used")
    fill_random(target, TARGET, seed=7)
    plant(tmp_path, loopdev, target, TARGET)

    result = restore.run(settings_for(p2v_server, job=job), target)
    for theirs, ours in zip([src, *rescan(src)], [target, *rescan(target)], strict=True):
        assert signatures(ours) == signatures(theirs), ours
    for offset in (SOURCE, 72 * MiB):
        assert "TYPE=" not in run("blkid", "-p", "-O", str(offset), target, check=False).stdout
    assert_source_and_zeros_only(target, expected)
    run("e2fsck", "-f", "-n", rescan(target)[0])
    extents = settings_client(p2v_server).image_map(job, Path(src).name)["extents"]
    no_data = sum(e["count"] for e in extents if e["kind"] != "data") * 4 * MiB
    assert result.zeroed_bytes == result.no_data_bytes == no_data + TARGET - SOURCE

    # A device without write-zeroes offload: what already reads zeros is read, not written.
    slow = loopdev(TARGET, "no-offload")
    plant(tmp_path, loopdev, slow, TARGET)
    restore_zeroing = restore.zeroing_offloaded
    restore.zeroing_offloaded = lambda fd: False
    try:
        result = restore.run(settings_for(p2v_server, job=job), slow)
    finally:
        restore.zeroing_offloaded = restore_zeroing
    assert 0 < result.zeroed_bytes < result.no_data_bytes
    assert_source_and_zeros_only(slow, expected)


def test_target_zeroed_refuses_a_target_that_is_not(loopdev, p2v_server, captured):
    src, job, expected = captured
    dirty = loopdev(TARGET, "not-zeroed")
    offset, blob = md_v10(TARGET)
    with open(dirty, "r+b") as f:
        f.seek(offset)
        f.write(blob)
    before = hashlib.sha256(read_all(dirty)).hexdigest()
    with pytest.raises(RestoreError, match=r"not zeroed: .* at offset .*Drop --target-zeroed"):
        restore.run(settings_for(p2v_server, job=job), dirty, target_zeroed=True)
    assert hashlib.sha256(read_all(dirty)).hexdigest() == before, "written before refusing"
    common = ["--server", p2v_server.url, "--token", p2v_server.token,
              "--fingerprint", p2v_server.fingerprint, "--job", job]
    out = agent_cli("restore", *common, "--target", dirty, "--target-zeroed")
    assert out.returncode == 1 and "is not zeroed" in out.stderr and "Traceback" not in out.stderr


def test_target_zeroed_accepted_and_data_chunks_written_whole(loopdev, p2v_server, captured):
    """Zeroed where the image has no data, but not inside a data chunk's zero-filled blocks:
    those are written, since the sample never looked there."""
    src, job, expected = captured
    common = ["--server", p2v_server.url, "--token", p2v_server.token,
              "--fingerprint", p2v_server.fingerprint, "--job", job]
    zeroed = loopdev(TARGET, "zeroed")
    assert expected[256 * 1024:320 * 1024].count(0) == 64 * 1024   # between MBR and ext4
    with open(zeroed, "r+b") as f:
        f.seek(256 * 1024)
        f.write(random.Random(1).randbytes(64 * 1024))
    result = restore.run(settings_for(p2v_server, job=job), zeroed, target_zeroed=True)
    assert_source_and_zeros_only(zeroed, expected)
    assert result.zeroed_bytes == 0 and result.no_data_bytes > 0
    out = agent_cli("restore", *common, "--target", zeroed, "--target-zeroed")
    assert out.returncode == 0, out.stderr
    # Its last line says what was done there, as the progress line does (it said "0 B zeroed").
    assert out.stdout.strip().splitlines()[-1].endswith(
        "where the image has no data as it was (--target-zeroed, checked on a sample)"), out.stdout


def test_no_data_runs_cover_the_whole_target_and_the_sample_its_edges():
    from xenp2v.protocol import ChunkKind, Extent
    c = 4 * MiB
    # The map leaves chunk 3 out; the image ends inside chunk 5; the target is 30 MiB.
    data = [Extent(ChunkKind.DATA, 1, 2), Extent(ChunkKind.DATA, 5, 1)]
    runs = restore.no_data_runs(data, 21 * MiB, c, 30 * MiB)
    assert runs == [(0, c), (3 * c, 2 * c), (21 * MiB, 9 * MiB)]
    blocks = restore.sample_blocks(runs)
    assert 256 <= len(blocks) <= restore.SAMPLE_BLOCKS
    inside = lambda o, n: any(s <= o and o + n <= s + length for s, length in runs)  # noqa: E731
    assert all(inside(o, n) for o, n in blocks)
    for s, length in runs:   # md 1.1 and 1.2 at a start, 1.0 at an end
        assert {(s, 4096), (s + 4096, 4096)} <= set(blocks)
        assert {(s + length - 8192, 4096), (s + length - 4096, 4096)} <= set(blocks)
    # md 0.90 and the backup GPT: anywhere in the last 128 KiB of the disk.
    assert {(30 * MiB - k * 4096, 4096) for k in range(1, 33)} <= set(blocks)


def test_offloaded_zeroing_counts_each_step_of_at_most_128_mib_as_it_returns(tmp_path, monkeypatch):
    """A slow BLKZEROOUT (a starved guest: the console stayed at 'restore 0 B of 3.0 GiB' for an
    hour in CI) shows movement: each offloaded call zeroes at most 128 MiB, and its bytes are
    done before the next call starts, so the console and the watchdog say where it is."""
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.truncate(1536 * MiB)
    events = []
    zero_range = restore.zero_range
    monkeypatch.setattr(restore, "zero_range",
                        lambda fd, offset, n: (events.append(("zero", n)), zero_range(fd, offset, n)))

    class Recorder:
        def advance(self, disk, done=0, sent=0):
            events.append(("done", done))

    runs = [(0, 1024 * MiB), (1040 * MiB, 496 * MiB)]
    fd = os.open(target, os.O_RDWR)
    try:
        assert restore.zeroing_offloaded(fd)
        assert restore._zero_runs(fd, runs, "xvda", Recorder()) == 1520 * MiB
    finally:
        os.close(fd)
    assert events[0::2] == [("zero", n) for _, n in events[1::2]]   # each call, then its bytes
    assert sum(n for _, n in events[1::2]) == 1520 * MiB
    assert max(n for _, n in events[1::2]) <= 128 * MiB
