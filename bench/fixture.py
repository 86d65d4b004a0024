"""The benchmark's source disks, made once and cached (default /var/cache/xenp2v/bench).

- ``disk8g.img``: 8 GiB, GPT, one ext4 partition holding about 2.5 GiB of real files copied from
  /usr (binaries, libraries, text) and about 2 GiB of random data written, synced and deleted, so
  it still sits in the free space as on a disk that has lived; the rest was never written.
- ``disk1t.img`` (optional): 1 TiB sparse, GPT, ext4, about 1% (10 GiB) of it used by files.
- ``small0.img`` .. ``small7.img``: 1 GiB each, 320 MiB of files and 64 MiB deleted, each with
  its own UUIDs: the disks of the many-agents row.

A disk is made under a temporary name and renamed when complete, so an interrupted run leaves
nothing that a later run would mistake for a finished fixture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30
RANDOM_FILE = 256 << 20


@dataclass
class Spec:
    name: str
    size: int
    real_bytes: int      # files copied from /usr
    deleted_bytes: int   # random data written, synced, then deleted


SPEC_8G = Spec("disk8g", 8 * GiB, int(2.5 * GiB), 2 * GiB)
SPEC_1T = Spec("disk1t", 1024 * GiB, 10 * GiB, 0)


def small_spec(n: int) -> Spec:
    """The n-th small disk of the many-agents row: 1 GiB, 320 MiB of files, 64 MiB deleted."""
    return Spec(f"small{n}", GiB, 320 << 20, 64 << 20)


def sh(*args: str, **kw) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class Loop:
    """A loop device over an image file, with its partition nodes; detached on exit."""

    def __init__(self, image: Path, read_only: bool = False):
        self.image = image
        self.read_only = read_only
        self.dev = ""

    def __enter__(self) -> "Loop":
        # Direct I/O: reads reach the file on disk, not a second page cache of the backing file.
        args = ["losetup", "--show", "-f", "-P", "--direct-io=on"]
        self.dev = sh(*args, *(["-r"] if self.read_only else []), str(self.image)).strip()
        self.rescan()
        return self

    def rescan(self) -> None:
        """Make the partition nodes (udev-less: partx, as losetup -P does not always)."""
        subprocess.run(["partx", "-u", self.dev], capture_output=True)
        subprocess.run(["partx", "-a", self.dev], capture_output=True)

    @property
    def part1(self) -> str:
        return f"{self.dev}p1"

    def __exit__(self, *exc) -> None:
        subprocess.run(["partx", "-d", self.dev], capture_output=True)
        subprocess.run(["losetup", "-d", self.dev], capture_output=True)


def ensure(cache: Path, spec: Spec, log=print) -> Path:
    """The cached fixture image for `spec`, made first when missing."""
    image = cache / f"{spec.name}.img"
    if image.exists():
        return image
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{spec.name}.partial"
    partial.unlink(missing_ok=True)
    log(f"making the fixture {image} (once; later runs reuse it)")
    with open(partial, "wb") as f:
        f.truncate(spec.size)
    sh("sfdisk", "-q", str(partial), input="label: gpt\nstart=2048, type=linux\n")
    with Loop(partial) as loop:
        # Small disks get their inode tables written now, as mkfs does on real ones; a 1 TiB disk
        # leaves them unwritten (noinit_itable), or the fixture would cost 16 GiB of zeros.
        lazy = int(spec.size > 64 * GiB)
        sh("mkfs.ext4", "-q", "-F", "-L", "bench", "-E",
           f"lazy_itable_init={lazy},lazy_journal_init={lazy}", loop.part1)
        with tempfile.TemporaryDirectory(prefix="xenp2v-bench-") as mnt:
            sh("mount", *(["-o", "noinit_itable"] if lazy else []), loop.part1, mnt)
            try:
                copied = copy_real_files(Path(mnt), spec.real_bytes)
                log(f"  {copied / GiB:.2f} GiB of files copied from /usr")
                if spec.deleted_bytes:
                    write_and_delete_random(Path(mnt), spec.deleted_bytes)
                    log(f"  {spec.deleted_bytes / GiB:.2f} GiB of random data written and deleted")
            finally:
                sh("umount", mnt)
    partial.rename(image)
    return image


def copy_real_files(root: Path, budget: int) -> int:
    """Copy regular files and symlinks from /usr under root/copyN/ until `budget` bytes are in."""
    copied, rounds = 0, 0
    while copied < budget:
        dest = root / f"copy{rounds}"
        before = copied
        for top, dirs, files in os.walk("/usr"):
            dirs.sort()
            target = dest / os.path.relpath(top, "/")
            target.mkdir(parents=True, exist_ok=True)
            for name in sorted(files):
                src = os.path.join(top, name)
                try:
                    if os.path.islink(src):
                        os.symlink(os.readlink(src), target / name)
                    elif os.path.isfile(src):
                        shutil.copy2(src, target / name)
                        copied += os.path.getsize(src)
                except OSError:
                    continue  # a file that vanished or cannot be read: the next one will do
                if copied >= budget:
                    return copied
        rounds += 1
        if copied == before:
            raise RuntimeError("/usr holds no readable files to copy into the fixture.")
    return copied


def write_and_delete_random(root: Path, size: int) -> None:
    """Random files, synced to the disk, then deleted: what a used disk's free space looks like."""
    junk = root / "deleted"
    junk.mkdir()
    written, n = 0, 0
    while written < size:
        with open(junk / f"r{n}", "wb") as f:
            for _ in range(RANDOM_FILE // (4 << 20)):
                f.write(os.urandom(4 << 20))
            os.fsync(f.fileno())
        written += RANDOM_FILE
        n += 1
    os.sync()
    shutil.rmtree(junk)
    os.sync()
