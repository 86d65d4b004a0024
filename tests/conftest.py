"""Shared fixtures: real loop devices and real processes, cleaned up whatever happens."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; a failure shows the command's stderr."""
    proc = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("This test needs root (loop devices, mount); run 'make test' as root.")


@pytest.fixture
def loopdev(tmp_path: Path):
    """Factory: loopdev(size_bytes, name='disk') -> '/dev/loopN' backed by a sparse file.

    Partition nodes are made with partx because `losetup -P` does not always make them here;
    call `rescan(dev)` after partitioning. Everything is detached at the end of the test.
    """
    needs_root()
    made: list[str] = []

    def make(size: int, name: str = "disk") -> str:
        backing = tmp_path / f"{name}-{len(made)}.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        dev = run("losetup", "--show", "-f", "-P", str(backing)).stdout.strip()
        made.append(dev)
        return dev

    yield make
    for dev in reversed(made):
        subprocess.run(["umount", "-R", "-l", dev], capture_output=True)
        subprocess.run(["partx", "-d", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def rescan(dev: str) -> list[str]:
    """Make the partition nodes of `dev` and return them in order."""
    subprocess.run(["partx", "-u", dev], capture_output=True)
    subprocess.run(["partx", "-a", dev], capture_output=True)
    out = run("lsblk", "-lnpo", "NAME,TYPE", dev).stdout.split()
    return [name for name, kind in zip(out[::2], out[1::2]) if kind == "part"]
