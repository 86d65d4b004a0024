"""Where a restore writes (agent/transfer/targets.py), on real loop devices: every target is
checked before the first byte is written, and two names of one disk count as one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.transfer.restore import RestoreError, open_target
from agent.transfer.targets import choose, device
from support import rescan, run

MiB = 1 << 20


def job(*sizes: int) -> dict:
    return {"id": "j1", "disks": [{"id": f"sd{'ab'[i]}", "size": s, "position": i}
                                  for i, s in enumerate(sizes)]}


def refused(named: list[str], *sizes: int) -> str:
    with pytest.raises(RestoreError) as e:
        choose(job(*sizes), named, lambda: [])
    return str(e.value)


def marked(dev: str) -> bytes:
    with open(dev, "rb") as f:
        return f.read(1 << 20)


def test_one_disk_under_two_names_is_refused_before_anything_is_written(loopdev, tmp_path):
    # A symlink next to its disk: disk 2 of the job would have been written over disk 1.
    dev = loopdev(64 * MiB, "one")
    with open(dev, "r+b") as f:
        f.write(b"keep me")
    before = marked(dev)
    link = tmp_path / "another-name"
    link.symlink_to(dev)
    said = refused([str(link), dev], 32 * MiB, 32 * MiB)
    assert said.startswith(f"{link} and {dev} are the same disk (or file) under two names"), said
    said = refused([dev.replace("/dev/", "/dev//"), Path(dev).name], 32 * MiB, 32 * MiB)
    assert "are the same disk (or file) under two names" in said, said
    assert marked(dev) == before


def test_two_loop_devices_over_one_file_and_a_file_twice_are_one_target(tmp_path):
    backing = tmp_path / "backing.img"
    backing.write_bytes(b"\0" * (64 * MiB))
    first = run("losetup", "--show", "-f", str(backing)).stdout.strip()
    try:
        second = run("losetup", "--show", "-f", str(backing)).stdout.strip()
        try:
            said = refused([first, second], 32 * MiB, 32 * MiB)
            assert "are the same disk (or file) under two names" in said, said
        finally:
            run("losetup", "-d", second)
    finally:
        run("losetup", "-d", first)
    said = refused([str(backing), f"{tmp_path}/./backing.img"], 32 * MiB, 32 * MiB)
    assert "are the same disk (or file) under two names" in said, said
    new = tmp_path / "new.img"
    said = refused([str(new), f"{tmp_path}/./new.img"], 32 * MiB, 32 * MiB)
    assert "are the same disk (or file) under two names" in said, said


def test_a_partition_is_not_a_disk_to_restore_onto(loopdev):
    dev = loopdev(64 * MiB, "parted")
    subprocess.run(["sfdisk", "-q", dev], input="label: gpt\n,16M\n,16M\n", text=True, check=True)
    rescan(dev)
    said = refused([f"{dev}p2"], 8 * MiB)
    assert said.startswith(f"{dev}p2 is a partition (/dev/{Path(dev).name}p2) of the disk {dev}; "
                           "a restore writes whole disks. Name the disk itself"), said
    with pytest.raises(RestoreError, match="is a partition"):
        open_target(f"{dev}p2", 8 * MiB)      # `p2v-agent restore --target` checks it too


def test_a_read_only_disk_is_refused_before_the_first_disk_is_written(loopdev, tmp_path):
    writable = loopdev(64 * MiB, "writable")
    backing = tmp_path / "ro.img"
    backing.write_bytes(b"\0" * (64 * MiB))
    ro = run("losetup", "--show", "-f", "-r", str(backing)).stdout.strip()
    try:
        said = refused([writable, ro], 32 * MiB, 32 * MiB)
        assert said.startswith(f"{ro} is read-only"), said
    finally:
        run("losetup", "-d", ro)


def test_a_bare_name_is_a_device_for_p2v_disks_and_a_file_for_target():
    assert device("xvdb") == "/dev/xvdb"
    assert device("new1.img", "--target") == "new1.img"
    assert device("/dev/xvdb", "--target") == "/dev/xvdb"


def test_one_new_file_through_a_bind_mount_is_one_target(tmp_path):
    # Two paths of one file still to be made: disk 2 was written over disk 1 and both "restored".
    (tmp_path / "d1").mkdir()
    (tmp_path / "bind").mkdir()
    run("mount", "--bind", str(tmp_path / "d1"), str(tmp_path / "bind"))
    try:
        said = refused([str(tmp_path / "d1" / "new.img"), str(tmp_path / "bind" / "new.img")],
                       8 * MiB, 8 * MiB)
        assert "are the same disk (or file) under two names" in said, said
        assert not (tmp_path / "d1" / "new.img").exists()
        assert choose(job(8 * MiB, 8 * MiB), [str(tmp_path / "d1" / "a.img"),
                                              str(tmp_path / "bind" / "b.img")], lambda: [])
    finally:
        run("umount", str(tmp_path / "bind"))


def test_a_loop_device_whose_file_lost_its_name_is_still_that_file(tmp_path):
    # The loop's backing_file reads "… (deleted)": the loop device was taken for another disk.
    first = tmp_path / "f.img"
    first.write_bytes(b"\0" * (16 * MiB))
    other = tmp_path / "h.img"
    os.link(first, other)
    loop = run("losetup", "--show", "-f", str(first)).stdout.strip()
    try:
        first.unlink()
        said = refused([str(other), loop], 8 * MiB, 8 * MiB)
        assert "are the same disk (or file) under two names" in said, said
    finally:
        run("losetup", "-d", loop)


def test_a_loop_device_over_a_mounted_partition_is_refused(loopdev, tmp_path):
    # Its checks saw nothing: a restore through it overwrote a mounted ext4.
    dev = loopdev(64 * MiB, "under")
    subprocess.run(["sfdisk", "-q", dev], input="label: gpt\n,32M\n", text=True, check=True)
    rescan(dev)
    run("mkfs.ext4", "-q", f"{dev}p1")
    (tmp_path / "mnt").mkdir()
    run("mount", f"{dev}p1", str(tmp_path / "mnt"))
    over_part = over_disk = None
    try:
        over_part = run("losetup", "--show", "-f", f"{dev}p1").stdout.strip()
        over_disk = run("losetup", "--show", "-f", dev).stdout.strip()
        for loop, under in ((over_part, f"{Path(dev).name}p1"), (over_disk, Path(dev).name)):
            said = refused([loop], 8 * MiB)
            assert said.startswith(f"{loop} is a loop device over the block device /dev/{under}"), said
            with pytest.raises(RestoreError, match="is a loop device over the block device"):
                open_target(loop, 8 * MiB)
    finally:
        for loop in (over_part, over_disk):
            if loop:
                run("losetup", "-d", loop)
        run("umount", str(tmp_path / "mnt"))


def test_a_target_on_a_read_only_filesystem_is_refused_before_the_first_is_written(tmp_path):
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "exist.img").write_bytes(b"\0" * (8 * MiB))
    run("mount", "--bind", "-o", "ro", str(tmp_path / "ro"), str(tmp_path / "ro"))
    try:
        for second in ("new.img", "exist.img"):
            said = refused([str(tmp_path / "rw" / "first.img"), str(tmp_path / "ro" / second)],
                           8 * MiB, 8 * MiB)
            assert said == (f"{tmp_path / 'ro' / second} is on a read-only filesystem; choose a "
                            "target on a writable one (or remount it read-write) and start again. "
                            "(p2v.disks= names it.)")
            assert not (tmp_path / "rw" / "first.img").exists()
    finally:
        run("umount", str(tmp_path / "ro"))
