"""Restore through a link that cuts connections, and from an image damaged on the server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from agent.transfer import capture, restore
from agent.transfer.restore import RestoreError
from agent.settings import Settings
from cutproxy import CutProxy
from test_capture_restore import settings_for
from test_restore import read, settings_client, small_source

MiB = 1024 * 1024
CHUNK = 4 * MiB


def _data_extents(server, job: str, disk: str) -> list[tuple[int, int]]:
    return [(e["start"], e["count"]) for e in settings_client(server).image_map(job, disk)["extents"]
            if e["kind"] == "data"]


def test_cut_connections_are_retried_not_taken_for_damage(loopdev, p2v_server):
    src = small_source(loopdev)
    job = capture.run(settings_for(p2v_server, disks=[src]),
                      identity={"system_uuid": str(uuid.uuid4())}).job
    disk = Path(src).name
    image = p2v_server.data_dir / "jobs" / job / "disks" / f"{disk}.img"
    # One stream: the first connection carries the JSON calls (never 1 MiB, never cut), the
    # next four each break 1 MiB into the first chunk, reset or closed: four cuts of one chunk,
    # more than the damage attempts, and what a server crashing mid-body does to the agent.
    proxy = CutProxy(p2v_server.port, after=1 * MiB, cuts=5, modes=("reset", "fin"), seed=3)
    try:
        target = loopdev(64 * MiB, "cut-target")
        settings = Settings(server=proxy.url(), token=p2v_server.token,
                            fingerprint=p2v_server.fingerprint, job=job, streams=1)
        result = restore.run(settings, target, retry_for=120)
    finally:
        proxy.close()
    assert sum(proxy.cut.values()) == 4, proxy.cut
    assert result.fetched_chunks == sum(n for _, n in _data_extents(p2v_server, job, disk))
    for start, n in _data_extents(p2v_server, job, disk):
        assert read(target, start * CHUNK, n * CHUNK) == read(str(image), start * CHUNK, n * CHUNK)


def test_a_damaged_image_is_named_as_such(loopdev, p2v_server):
    src = small_source(loopdev)
    job = capture.run(settings_for(p2v_server, disks=[src]),
                      identity={"system_uuid": str(uuid.uuid4())}).job
    disk = Path(src).name
    image = p2v_server.data_dir / "jobs" / job / "disks" / f"{disk}.img"
    start, _ = _data_extents(p2v_server, job, disk)[0]
    with open(image, "r+b") as f:                  # a bit flipped on the server's disk
        f.seek(start * CHUNK + 100)
        byte = f.read(1)
        f.seek(start * CHUNK + 100)
        f.write(bytes([byte[0] ^ 1]))
        os.fsync(f.fileno())
    target = loopdev(64 * MiB, "damage-target")
    with pytest.raises(RestoreError, match=rf"Chunk {start} of {disk} arrived whole 3 times.*"
                                           rf"image of job {job} looks damaged.*p2v-server verify"):
        restore.run(settings_for(p2v_server, job=job, streams=1), target)


def test_a_target_in_use_under_another_name_is_refused(loopdev, tmp_path):
    import subprocess
    from sourcedisks import mounted
    from support import rescan, run

    # The backing file of a loop device whose filesystem is mounted.
    loop = loopdev(64 * MiB, "backed")
    backing = run("losetup", "-nO", "BACK-FILE", loop).stdout.strip()
    run("mkfs.ext4", "-q", loop)
    second = run("losetup", "--show", "-f", backing).stdout.strip()   # the same file again
    try:
        with mounted(loop, "ext4") as mnt:
            with pytest.raises(RestoreError, match=rf"{backing} is in use under another name: "
                                                   rf"{loop} maps the same file.*mounted on {mnt}"):
                restore.open_target(backing, 64 * MiB)
            with pytest.raises(RestoreError, match=rf"{second} is in use under another name: "
                                                   rf"{loop} maps the same backing file"):
                restore.open_target(second, 64 * MiB)
        fd, _, _ = restore.open_target(second, 64 * MiB)                 # unmounted: free again
        os.close(fd)
    finally:
        subprocess.run(["losetup", "-d", second], capture_output=True)

    # A partition of the loop device over the file, mounted.
    parted = loopdev(64 * MiB, "parted")
    run("sfdisk", "-q", parted, input="label: dos\nstart=2048, type=83\n")
    part = rescan(parted)[0]
    run("mkfs.ext4", "-q", part)
    file = run("losetup", "-nO", "BACK-FILE", parted).stdout.strip()
    with mounted(part, "ext4") as mnt:
        with pytest.raises(RestoreError, match=rf"{Path(part).name} is mounted on {mnt}"):
            restore.open_target(file, 64 * MiB)

    # A block device with a writable loop device over it.
    disk = loopdev(64 * MiB, "under")
    over = run("losetup", "--show", "-f", disk).stdout.strip()
    try:
        with pytest.raises(RestoreError, match=rf"{disk} is in use: .*backing device of the writable "
                                               rf"{Path(over).name}"):
            restore.open_target(disk, 64 * MiB)
    finally:
        subprocess.run(["losetup", "-d", over], capture_output=True)
