"""A disk with unreadable sectors: a loop device over a FUSE file that answers EIO in given ranges.

This kernel has no device-mapper (so no `error` target); FUSE gives the same thing to the agent:
a real block device whose reads fail with EIO over chosen byte ranges and succeed elsewhere.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import stat
import subprocess
import time
from pathlib import Path

import fuse

from support import run


class _Faulty(fuse.Operations):
    def __init__(self, backing: str, bad: list[tuple[int, int]]):
        self.fd = os.open(backing, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.bad = bad

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == "/disk":
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": self.size}
        raise fuse.FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "disk"]

    def read(self, path, size, offset, fh):
        if any(offset < e and s < offset + size for s, e in self.bad):
            raise fuse.FuseOSError(errno.EIO)
        return os.pread(self.fd, size, offset)


def _serve(backing: str, bad: list[tuple[int, int]], mountpoint: str) -> None:
    fuse.FUSE(_Faulty(backing, bad), mountpoint, foreground=True, ro=True, direct_io=True,
              allow_other=True)


class FaultyDisk:
    """Context manager: a read-only loop device showing `backing`, failing in `bad` ranges."""

    def __init__(self, backing: str, bad: list[tuple[int, int]], mountpoint: Path):
        self.backing, self.bad, self.mountpoint = backing, bad, mountpoint
        self.proc: multiprocessing.Process | None = None
        self.dev: str | None = None

    def __enter__(self) -> str:
        self.mountpoint.mkdir(exist_ok=True)
        self.proc = multiprocessing.get_context("fork").Process(
            target=_serve, args=(self.backing, self.bad, str(self.mountpoint)), daemon=True)
        self.proc.start()
        deadline = time.monotonic() + 30
        while not (self.mountpoint / "disk").exists():
            if time.monotonic() > deadline or not self.proc.is_alive():
                self.__exit__()
                raise AssertionError("The FUSE file with bad sectors did not come up.")
            time.sleep(0.05)
        self.dev = run("losetup", "--show", "-f", "-r", "-P", str(self.mountpoint / "disk")).stdout.strip()
        subprocess.run(["partx", "-a", self.dev], capture_output=True)
        return self.dev

    def __exit__(self, *exc) -> None:
        if self.dev:
            subprocess.run(["partx", "-d", self.dev], capture_output=True)
            subprocess.run(["losetup", "-d", self.dev], capture_output=True)
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        if self.proc:
            self.proc.join(timeout=10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
