"""Sources in use: a disk that is mounted, swapped on or behind a writable loop device is refused
with a sentence that says what to stop; a disk nothing uses is captured; the probe, its report
and the TUI's disk screen say the same."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from agent import capture, inuse
from agent.capture import CaptureError
from agent.probe import LiveProber, Machine
from agent.probe.report import render
from agent.tui.disks import disk_details
from support import rescan, run
from sourcedisks import MiB, loop_at, mounted
from test_capture_restore import settings_for


def two_partitions(loopdev) -> tuple[str, str, str]:
    """A 64 MiB disk: an ext4 partition with a file, then a 16 MiB partition with swap."""
    dev = loopdev(64 * MiB, "busy")
    run("sfdisk", "-q", dev, input="label: dos\nstart=2048, size=40M, type=83\nsize=16M, type=82\n")
    part, swap = rescan(dev)
    run("mkfs.ext4", "-q", part)
    run("mkswap", swap)
    return dev, part, swap


def refused(server, dev: str) -> str:
    with pytest.raises(CaptureError) as e:
        capture.run(settings_for(server, disks=[dev]), identity={"system_uuid": str(uuid.uuid4())})
    return str(e.value)


def test_a_mounted_partition_is_refused(loopdev, p2v_server):
    dev, part, _ = two_partitions(loopdev)
    with mounted(part, "ext4") as mnt:
        message = refused(p2v_server, dev)
    assert f"{Path(part).name} is mounted on {mnt}: unmount it (umount {mnt})." in message
    assert "would change while it is copied" in message
    assert inuse.uses(dev) == []


def test_active_swap_is_refused(loopdev, p2v_server):
    dev, _, swap = two_partitions(loopdev)
    run("swapon", swap)
    try:
        message = refused(p2v_server, dev)
    finally:
        run("swapoff", swap)
    assert f"{Path(swap).name} is active swap: run swapoff {swap}." in message


def test_a_writable_loop_over_a_partition_is_refused_a_read_only_view_is_not(loopdev, p2v_server):
    dev, part, _ = two_partitions(loopdev)
    with loop_at(part, 0, 8 * MiB) as loop:
        message = refused(p2v_server, dev)
    assert (f"{Path(part).name} is the backing device of the writable {Path(loop).name}: "
            f"detach it (losetup -d {loop}).") in message
    with loop_at(dev, MiB, 8 * MiB, readonly=True):   # what the plan's own views are
        assert inuse.uses(dev) == []


def test_a_loop_backed_by_a_file_of_a_lazily_unmounted_filesystem_is_refused(loopdev, p2v_server):
    dev, part, _ = two_partitions(loopdev)
    with mounted(part, "ext4") as mnt:
        image = mnt / "inner.img"
        image.write_bytes(bytes(4 * MiB))
        loop = run("losetup", "--show", "-f", str(image)).stdout.strip()
        run("umount", "-l", str(mnt))   # gone from mountinfo, still open behind the loop
        run("mount", "-t", "tmpfs", "none", str(mnt))   # for the helper's own umount
    try:
        message = refused(p2v_server, dev)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    # the kernel names the file from the detached mount's root now: /inner.img
    assert (f"{Path(part).name} holds /{image.name}, the backing file of {Path(loop).name}: "
            f"detach it (losetup -d {loop}).") in message


def test_a_disk_nothing_uses_is_captured(loopdev, p2v_server):
    dev, _, _ = two_partitions(loopdev)
    assert inuse.uses(dev) == []
    result = capture.run(settings_for(p2v_server, disks=[dev]),
                         identity={"system_uuid": str(uuid.uuid4())})
    assert [d.device for d in result.disks] == [dev]


def test_the_probe_and_the_disk_screen_say_what_uses_a_disk(loopdev):
    dev, part, _ = two_partitions(loopdev)
    with mounted(part, "ext4") as mnt:
        machine = LiveProber(devices=[dev], medium=Path("/nonexistent")).machine()
    (disk,) = machine.disks
    said = f"{Path(part).name} is mounted on {mnt}: unmount it (umount {mnt})."
    assert disk.in_use == [said]
    assert f"in use: {said}" in render(machine)
    assert said in disk_details(machine, disk)
    assert Machine.loads(machine.dumps()) == machine
    assert LiveProber(devices=[dev], medium=Path("/nonexistent")).machine().disks[0].in_use == []
