"""Restore through a link that cuts connections, and from an image damaged on the server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from agent import capture, restore
from agent.restore import RestoreError
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
