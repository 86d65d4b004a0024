"""Capture to a real p2v-server and restore onto a second loop device: every file comes back."""

from __future__ import annotations

import uuid

import pytest

from agent.transfer import capture, restore
from agent.disk.plan import plan_disk
from agent.transfer.progress import Progress
from agent.settings import Settings
from support import rescan, run
from sourcedisks import DISK_SIZE, MiB, SECRET, build, checksums, fsck


def settings_for(server, **kw) -> Settings:
    return Settings(server=server.url, token=server.token, fingerprint=server.fingerprint, **kw)


def sfdisk_dump(dev: str) -> str:
    return run("sfdisk", "--dump", dev).stdout.replace(dev, "DEV")


def test_every_filesystem_survives_capture_and_restore(loopdev, p2v_server):
    src = build(loopdev, files_per_fs=8, file_size=2 * MiB)
    before = {v.name: checksums(src.dev, v) for v in src.volumes}
    assert all(len(files) >= 6 for files in before.values()), before
    plan = plan_disk(src.dev)

    events = []
    result = capture.run(settings_for(p2v_server, disks=[src.dev], name="every-fs", streams=4),
                         Progress([events.append], interval=0.0),
                         identity={"system_uuid": str(uuid.uuid4())})
    (disk,) = result.disks
    assert not result.resumed and disk.id == src.dev.split("/")[-1]
    # Bytes sent are the used bytes (at most), far from the disk's size.
    assert disk.planned == plan.read_bytes < 250 * MiB
    assert disk.sent <= plan.read_bytes and disk.sent < DISK_SIZE // 5
    assert disk.zero_chunks > 0 and disk.data_chunks > 10 and not disk.bad_ranges
    assert events[-1].phase == "done" and events[-1].done == plan.read_bytes
    assert any(e.phase == "capture" and 0 < e.done < e.total for e in events)
    image = p2v_server.data_dir / "jobs" / result.job / "disks" / f"{disk.id}.img"
    assert SECRET[:64] not in image.read_bytes()  # deleted files never leave the machine
    log = (p2v_server.data_dir / "jobs" / result.job / "agent.log").read_text()
    assert "used blocks only" in log and "sealed" in log

    target = loopdev(DISK_SIZE, "target")
    got = restore.run(settings_for(p2v_server, job=result.job, streams=4), target)
    assert got.fetched_chunks == disk.data_chunks and got.kept_chunks == 0
    rescan(target)
    assert sfdisk_dump(target) == sfdisk_dump(src.dev)
    for volume in src.volumes:
        fsck(target, volume)
        assert checksums(target, volume) == before[volume.name], volume.name
    # The swap partition keeps its header.
    assert run("blkid", "-p", "-o", "value", "-s", "TYPE", f"{target}p4").stdout.strip() == "swap"

    # A second restore onto the same disk fetches nothing: it is already right.
    again = restore.run(settings_for(p2v_server, job=result.job), target)
    assert again.fetched_chunks == 0 and again.kept_chunks == disk.data_chunks


def test_a_capture_that_fails_after_its_job_opened_tells_the_server_why(loopdev, p2v_server,
                                                                       monkeypatch):
    # Issue 17, item 6: an unattended run that fails powers off after printing why, and the
    # server heard nothing: the agent's log went up only on success or with progress.
    import uuid as uuid_mod

    from agent.transfer import capture as capture_mod
    src = build(loopdev, files_per_fs=1, file_size=MiB)

    def broken(*args, **kwargs):
        raise capture_mod.CaptureError("Sending sdz failed: the disk went away.")

    monkeypatch.setattr(capture_mod, "capture_disk", broken)
    with pytest.raises(capture_mod.CaptureError, match="the disk went away"):
        capture_mod.run(settings_for(p2v_server, disks=[src.dev], name="fails"),
                        identity={"system_uuid": str(uuid_mod.uuid4())})
    (log_file,) = (p2v_server.data_dir / "jobs").glob("*/agent.log")
    assert "capture failed: Sending sdz failed: the disk went away." in log_file.read_text()
