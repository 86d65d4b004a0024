"""Sources in use: a disk that is mounted, swapped on or behind a writable loop device is refused
with a sentence that says what to stop; a disk nothing uses is captured; the probe, its report
and the TUI's disk screen say the same."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agent.disk import inuse
from agent.transfer import capture
from agent.transfer.capture import CaptureError
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


# --- what only the kernel's exclusive claim shows --------------------------------------------------

@contextlib.contextmanager
def in_another_namespace(mount_args: list[str], mnt: Path):
    """`mount mount_args mnt` inside a new private mount namespace, held by a sleeping process
    (the namespace, and so the mount, ends with it); yields that process."""
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount "$@" && echo ready && exec sleep 900', "sh", *mount_args, str(mnt)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":
            time.sleep(0.01)   # the shell's exec is a moment behind its echo
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_partition_mounted_in_another_mount_namespace_is_refused(loopdev, p2v_server, tmp_path):
    dev, part, _ = two_partitions(loopdev)
    mnt = tmp_path / "elsewhere"
    mnt.mkdir()
    with in_another_namespace([part], mnt) as proc:
        assert str(mnt) not in Path("/proc/self/mountinfo").read_text()
        message = refused(p2v_server, dev)
    assert (f"{Path(part).name} is mounted on {mnt} in another mount namespace (that of process "
            f"{proc.pid}, sleep): unmount it there (nsenter -t {proc.pid} -m umount {mnt}) or "
            f"stop process {proc.pid} (sleep).") in message
    assert inuse.uses(dev) == []   # the namespace went with its process


def xfs_with_external_log(loopdev) -> tuple[str, str]:
    """(data disk, log disk): an XFS on one loop device whose log is the whole other one."""
    data, log = loopdev(320 * MiB, "xfs-data"), loopdev(80 * MiB, "xfs-log")
    run("mkfs.xfs", "-q", "-f", "-l", f"logdev={log},size=64m", data)
    return data, log


def test_the_external_log_of_a_mounted_xfs_is_refused(loopdev, p2v_server, tmp_path):
    data, log = xfs_with_external_log(loopdev)
    mnt = tmp_path / "xfs"
    mnt.mkdir()
    run("mount", "-o", f"logdev={log}", data, str(mnt))
    try:
        message = refused(p2v_server, log)
        assert inuse.uses(data)   # the data disk by its mount, as before
    finally:
        run("umount", str(mnt))
    assert (f"{Path(log).name} is the external log of the xfs filesystem on {data} mounted on "
            f"{mnt}: unmount it (umount {mnt}).") in message
    assert inuse.uses(log) == []


def test_the_external_log_of_an_xfs_mounted_in_another_namespace_is_refused(loopdev, tmp_path):
    data, log = xfs_with_external_log(loopdev)
    mnt = tmp_path / "xfs"
    mnt.mkdir()
    with in_another_namespace(["-o", f"logdev={log}", data], mnt) as proc:
        (use,) = inuse.uses(log)
    assert use.what == (f"is the external log of the xfs filesystem on {data} mounted on {mnt} "
                        f"in another mount namespace (that of process {proc.pid}, sleep)")


def test_the_external_journal_of_a_mounted_ext4_is_refused(loopdev, tmp_path):
    journal, data = loopdev(32 * MiB, "jbd"), loopdev(64 * MiB, "ext4")
    run("mke2fs", "-q", "-F", "-O", "journal_dev", "-b", "4096", journal)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-J", f"device={journal}", data)
    with mounted(data, "ext4") as mnt:
        (use,) = inuse.uses(journal)
    assert use.sentence() == (f"{Path(journal).name} is the external journal of the ext4 "
                              f"filesystem on {data} mounted on {mnt}: unmount it (umount {mnt}).")


def test_a_claim_nothing_names_is_still_refused(loopdev):
    """A process holding the partition open with O_EXCL claims it as a mount would (mkfs and
    fsck do so); no table names it, the kernel's refusal does."""
    dev, part, _ = two_partitions(loopdev)
    fd = os.open(part, os.O_RDONLY | os.O_EXCL)
    try:
        (use,) = inuse.uses(dev)
    finally:
        os.close(fd)
    assert use.device == Path(part).name
    assert "is claimed by the kernel" in use.what
    fd = os.open(dev, os.O_RDONLY | os.O_EXCL)   # the whole disk: every partition is busy too
    try:
        (use,) = inuse.uses(dev)
    finally:
        os.close(fd)
    assert use.device == Path(dev).name
    assert inuse.uses(dev) == []
