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
from pathlib import Path

import pytest

from agent import capture, restore
from agent.progress import Progress
from support import rescan, run
from sourcedisks import MiB, Volume, _hash_tree, checksums, fsck, loop_at, mounted
from test_capture_restore import settings_for

REPO = Path(__file__).resolve().parents[2]
SENDER = REPO / "agent" / "precopy.py"


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
