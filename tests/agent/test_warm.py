"""Warm migration end to end: pre-copy passes of a mounted, changing source by the single-file
sender (run with an isolated Python: standard library only), then the final sync from the
'stick' (capture with the safe plan); every file restored equals the source at cutover, and a
final sync that fails leaves the last pass restorable."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.transfer import capture, restore
from agent.transfer.client import Client
from agent.disk.plan import plan_disk
from agent.transfer.source import SourceDisk
from agent.transfer.progress import Progress
from support import detach_loop, loop_backing, rescan, run
from sourcedisks import MiB, Volume, _hash_tree, checksums, fsck, loop_at, mounted
from test_capture_restore import settings_for

REPO = Path(__file__).resolve().parents[2]
SENDER = REPO / "agent" / "warm" / "precopy.py"


def precopy(server, dev: str, job: str | None = None) -> tuple[str, str]:
    """One pass of the sender as a technician runs it on the source: (job id, its output)."""
    cmd = [sys.executable, "-I", "-S", str(SENDER), "--server", server.url, "--token",
           server.token, "--fingerprint", server.fingerprint, "--disks", dev]
    proc = subprocess.run(cmd + (["--job", job] if job else []), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return re.search(r"pass into job (\S+)", proc.stdout).group(1), proc.stdout


def change(root: Path, rng: random.Random, step: int) -> None:
    """Files added, changed (in place, partly) and deleted."""
    for i in range(3):
        (root / f"new{step}-{i}").write_bytes(rng.randbytes(3 * MiB))
    for old in sorted(root.glob("f*"))[:2]:
        with open(old, "r+b") as f:
            f.seek(MiB)
            f.write(rng.randbytes(512 * 1024))
    for gone in sorted(root.glob("f*"))[-1:]:
        gone.unlink()


class FailAfter:
    """A progress subscriber that breaks the capture once it has read some of a disk."""

    def __call__(self, event) -> None:
        if event.phase == "capture" and event.done > 0:
            raise RuntimeError("the stick was pulled")


def restored_files(server, job: str, loopdev, volume: Volume, live: bool = False) -> dict[str, str]:
    """sha256 of every restored file. `live`: the last pass was taken from the mounted source,
    so the filesystem's journal is replayed first, as the VM's first mount does."""
    target = loopdev(256 * MiB, "target")
    restore.run(settings_for(server, job=job, streams=2), target)
    if live:
        with loop_at(target, volume.offset, volume.size) as node, mounted(node, "ext4") as mnt:
            return _hash_tree(mnt)
    fsck(target, volume)
    return checksums(target, volume)


def test_precopy_passes_then_final_sync_restore_the_source_at_cutover(loopdev, p2v_server):
    dev = loopdev(256 * MiB, "warm")
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    (part,) = rescan(dev)
    start = int(run("cat", f"/sys/class/block/{Path(part).name}/start").stdout) * 512
    size = int(run("blockdev", "--getsize64", part).stdout)
    run("mkfs.ext4", "-q", part, "96M")  # grown to the whole partition before the cutover
    volume = Volume("root", "ext4", start, size)
    rng = random.Random(21)

    with mounted(part, "ext4") as mnt:  # the source keeps running through the pre-copy passes
        for i in range(6):
            (mnt / f"f{i}").write_bytes(rng.randbytes(4 * MiB))
        os.sync()
        job, out = precopy(p2v_server, dev)
        assert "version 1" in out
        change(mnt, rng, 1)
        run("fsfreeze", "-f", str(mnt))  # this pass is consistent: the failed sync's fallback
        try:
            again, out = precopy(p2v_server, dev, job)
        finally:
            run("fsfreeze", "-u", str(mnt))
        assert again == job and "version 2" in out
    at_pass2 = checksums(dev, Volume("root", "ext4", start, 96 * MiB))

    # Downtime: the source is stopped, changed once more and its filesystem grown.
    run("resize2fs", part)
    with mounted(part, "ext4") as mnt:
        change(mnt, rng, 2)
        (mnt / "big").write_bytes(rng.randbytes(40 * MiB))  # only fits the grown filesystem
    at_cutover = checksums(dev, volume)

    # A final sync that fails half-way leaves version 2 as the restorable image.
    broken = Progress([FailAfter()], interval=0)
    with pytest.raises(capture.CaptureError):
        capture.run(settings_for(p2v_server, disks=[dev], job=job, streams=2), broken)
    assert restored_files(p2v_server, job, loopdev, Volume("root", "ext4", start, 96 * MiB),
                          live=True) == at_pass2

    result = capture.run(settings_for(p2v_server, disks=[dev], job=job, streams=2))
    assert result.job == job and result.sync == 3
    (disk,) = result.disks
    assert disk.sent < disk.planned  # only what changed since the last pass
    assert restored_files(p2v_server, job, loopdev, volume) == at_cutover


def test_the_final_sync_sends_the_disks_under_the_names_the_pass_saw(loopdev, p2v_server, caplog):
    """The running system saw the disk as one loop device, the stick sees it as another (sda
    there, sdb here): the final sync pairs them by size, table and filesystems, says so, and
    seals the job's disk, not a new one."""
    dev = loopdev(128 * MiB, "named")
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    (part,) = rescan(dev)
    start = int(run("cat", f"/sys/class/block/{Path(part).name}/start").stdout) * 512
    volume = Volume("root", "ext4", start, int(run("blockdev", "--getsize64", part).stdout))
    run("mkfs.ext4", "-q", part)
    rng = random.Random(7)
    with mounted(part, "ext4") as mnt:
        for i in range(4):
            (mnt / f"f{i}").write_bytes(rng.randbytes(2 * MiB))
    job, _ = precopy(p2v_server, dev)

    backing = loop_backing(dev)
    stick = run("losetup", "--show", "-f", str(backing)).stdout.strip()  # attached first: another name
    run("partx", "-d", dev)
    run("losetup", "-d", dev)
    try:
        assert stick != dev
        (part,) = rescan(stick)
        with mounted(part, "ext4") as mnt:
            change(mnt, rng, 1)
        at_cutover = checksums(stick, volume)
        result = capture.run(settings_for(p2v_server, disks=[stick], job=job, streams=2))
        assert result.job == job and result.sync == 2
        assert [d.id for d in result.disks] == [Path(dev).name]
        assert f"{Path(dev).name} there is {Path(stick).name} here" in caplog.text
        assert restored_files(p2v_server, job, loopdev, volume) == at_cutover
    finally:
        detach_loop(stick, backing)


def test_disks_pair_up_by_all_but_the_name_one_to_one_or_not_at_all():
    from agent.warm.precopied import renamed

    def disk(name, size, uuid):
        return {"id": name, "size": size, "serial": None, "filesystem": None,
                "table": {"label": "gpt", "id": "A", "partitions": [
                    {"start": 1 << 20, "size": size - (2 << 20), "fstype": "ext4", "uuid": uuid}]}}

    there = [disk("sda", 1 << 30, "u1"), disk("sdb", 2 << 30, "u2")]
    assert renamed([disk("sdb", 1 << 30, "u1"), disk("sdc", 2 << 30, "u2")], there) == \
        {"sdb": "sda", "sdc": "sdb"}
    assert renamed([disk("sda", 1 << 30, "u1"), disk("sdb", 2 << 30, "u2")], there) == {}
    assert renamed([disk("sdb", 1 << 30, "u1")], there) == {}              # one of them missing
    assert renamed([disk("sdb", 1 << 30, "u9"), disk("sdc", 2 << 30, "u2")], there) == {}
    twins = [disk("sda", 1 << 30, "u1"), disk("sdb", 1 << 30, "u1")]       # clones: no telling
    assert renamed([disk("sdc", 1 << 30, "u1"), disk("sdd", 1 << 30, "u1")], twins) == {}


def test_a_final_sync_reads_each_held_chunk_once_and_a_free_one_never(loopdev, p2v_server,
                                                                       monkeypatch):
    """The downtime is mostly reading: a chunk the pass sent is read whole once (not its used
    parts, then whole again to compare), and one the filesystem no longer uses is not read."""
    dev = loopdev(128 * MiB, "reads")
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    (part,) = rescan(dev)
    start = int(run("cat", f"/sys/class/block/{Path(part).name}/start").stdout) * 512
    volume = Volume("root", "ext4", start, int(run("blockdev", "--getsize64", part).stdout))
    run("mkfs.ext4", "-q", part)
    rng = random.Random(5)
    with mounted(part, "ext4") as mnt:
        for i in range(6):
            (mnt / f"f{i}").write_bytes(rng.randbytes(MiB + 4096 * i))  # chunks partly used
        (mnt / "junk").write_bytes(rng.randbytes(24 * MiB))
    job, _ = precopy(p2v_server, dev)
    with mounted(part, "ext4") as mnt:
        change(mnt, rng, 1)
        (mnt / "junk").unlink()   # its chunks were sent and are free now
    at_cutover = checksums(dev, volume)

    client = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint)
    held = client.held_chunks(job, Path(dev).name)
    plan = plan_disk(dev, [dev])
    chunk_size = client.job(job)["disks"][0]["chunk_size"]
    free_held = held.keys() - {i for i, parts in plan.chunks(chunk_size) if parts}
    assert free_held
    reads = Counter()
    real = SourceDisk.read_chunk

    def counted(self, index, *args, **kw):
        reads[index] += 1
        return real(self, index, *args, **kw)

    monkeypatch.setattr(SourceDisk, "read_chunk", counted)
    result = capture.run(settings_for(p2v_server, disks=[dev], job=job, streams=2))
    assert result.sync == 2
    assert max(reads.values()) == 1, {i: n for i, n in reads.items() if n > 1}
    assert not free_held & reads.keys()
    assert restored_files(p2v_server, job, loopdev, volume) == at_cutover


def test_a_final_sync_declares_the_chunks_no_longer_used_before_it_reads(loopdev, p2v_server):
    """Punching the chunks the pass sent and the source no longer uses took the server seconds
    at the seal (the pass reads a lived-in disk's free space): the final sync declares them
    first and the server punches them while the rest is read. So even a sync that breaks off
    at its first chunk has them forgotten, in its own version only."""
    dev = loopdev(96 * MiB, "unused")
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    (part,) = rescan(dev)
    run("mkfs.ext4", "-q", part)
    rng = random.Random(8)
    with mounted(part, "ext4") as mnt:
        (mnt / "kept").write_bytes(rng.randbytes(8 * MiB))
        (mnt / "junk").write_bytes(rng.randbytes(32 * MiB))
    job, _ = precopy(p2v_server, dev)
    with mounted(part, "ext4") as mnt:
        (mnt / "junk").unlink()

    client = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint)
    did = Path(dev).name
    held = client.held_chunks(job, did)
    chunk_size = client.job(job)["disks"][0]["chunk_size"]
    used = {i for i, parts in plan_disk(dev, [dev]).chunks(chunk_size) if parts}
    assert held.keys() - used
    with pytest.raises(capture.CaptureError):
        capture.run(settings_for(p2v_server, disks=[dev], job=job, streams=1),
                    Progress([FailAfter()], interval=0))
    deadline = time.monotonic() + 30
    while (client.held_chunks(job, did).keys() - used) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not client.held_chunks(job, did).keys() - used
    assert client.held_chunks(job, did, sealed=True) == held  # the pass, as it was
