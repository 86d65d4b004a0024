"""Fixtures of the TUI tests."""

from __future__ import annotations

import pytest

from support import rescan, run

MiB = 1 << 20


@pytest.fixture
def copied_disk(loopdev, tmp_path):
    """A restored copy of a Debian system whose fstab still names /dev/sda1."""
    dev = loopdev(64 * MiB, "copied")
    run("sfdisk", "-q", dev, input="label: dos\nstart=2048, type=83\n")
    part = rescan(dev)[0]
    run("mkfs.ext4", "-q", part)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", part, str(mnt))
    try:
        (mnt / "etc").mkdir()
        (mnt / "etc/os-release").write_text(
            'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
        (mnt / "etc/fstab").write_text("/dev/sda1 / ext4 errors=remount-ro 0 1\n")
    finally:
        run("umount", str(mnt))
    return dev, part
