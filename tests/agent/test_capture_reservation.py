"""The server sets aside what a capture will really store: every chunk that holds used blocks is
stored whole, so used blocks scattered over a disk take far more room than their own bytes."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from agent.transfer import capture
from agent.transfer.client import Client
from agent.disk.plan import plan_disk
from support import rescan, run
from sourcedisks import MiB, mounted
from test_capture_restore import settings_for


def scattered_source(loopdev) -> str:
    """4 GiB of ext4 without flex_bg, 64 small files in 64 top-level directories: the allocator
    spreads them, and their groups' metadata, over the whole filesystem."""
    dev = loopdev(4096 * MiB, "scattered")
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    (part,) = rescan(dev)
    run("mkfs.ext4", "-q", "-J", "size=4", "-O", "^flex_bg", part)
    with mounted(part, "ext4") as mnt:
        for i in range(64):
            (mnt / f"d{i}").mkdir()
            (mnt / f"d{i}" / "f").write_bytes(os.urandom(4096))
    os.sync()
    return dev


def test_the_reservation_covers_the_whole_chunks_stored(loopdev, p2v_server):
    dev = scattered_source(loopdev)
    used = plan_disk(dev).read_bytes
    settings = settings_for(p2v_server, disks=[dev])
    result = capture.run(settings, identity={"system_uuid": str(uuid.uuid4())})
    (disk,) = result.disks
    job = Client(settings.server, settings.token, settings.fingerprint).job(result.job)
    reserved = job["disks"][0]["expected_bytes"]
    image = p2v_server.data_dir / "jobs" / result.job / "disks" / f"{disk.id}.img"
    stored = os.stat(image).st_blocks * 512
    print(f"used {used / MiB:.1f} MiB, stored {stored / MiB:.1f} MiB, reserved {reserved / MiB:.1f} MiB")
    assert stored > 3 * used        # the case at hand: scattered used blocks
    assert stored <= reserved < disk.size // 8


def test_a_capture_that_cannot_fit_is_refused_before_a_chunk_is_sent(loopdev, p2v_server_factory,
                                                                      tmp_path):
    dev = scattered_source(loopdev)
    used = plan_disk(dev).read_bytes
    small = tmp_path / "small"
    small.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(small))
    server = None
    try:
        server = p2v_server_factory(data_dir=small / "data")
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        assert used < free // 2      # a check of the used bytes alone would let this job in
        with pytest.raises(capture.CaptureError) as refused:
            capture.run(settings_for(server, disks=[dev]), retry_for=5,
                        identity={"system_uuid": str(uuid.uuid4())})
        said = str(refused.value)
        assert "need" in said and "free" in said and "larger disk" in said, said
        assert not list((small / "data" / "jobs").iterdir())  # nothing was stored
    finally:
        if server:
            server.stop()
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
