"""Source disks for capture and restore tests: every filesystem the agent maps, filled with files.

This kernel has neither device-mapper nor md, so the LVM volume and the RAID1 array are written as
the tools would (LVM metadata only; an md superblock from user space) and their filesystems are
reached through loop devices over the bytes they occupy, exactly as the agent's plan reads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from support import rescan, run

sys.path.insert(0, str(Path(__file__).parents[1] / "machines"))
import md_superblock  # noqa: E402

MiB = 1024 * 1024
LVM_NO_DM = ("--driverloaded", "n")
SECRET = b"DELETED-SECRET-" * 64   # written, then deleted: must never reach the server

LAYOUT = """label: gpt
size=1MiB, type=21686148-6449-6F64-744E-656564454649, name=bios
size=64MiB, type=uefi, name=esp
size=200MiB, name=root
size=32MiB, type=swap
size=300MiB, name=srv
size=200MiB, name=home
size=100MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=win
size=200MiB, type=lvm, name=pv
size=150MiB, type=raid, name=md
"""
DISK_SIZE = 1280 * MiB


@dataclass
class Volume:
    """A filesystem on the disk: where it lives (offset, size on the disk) and what it is."""

    name: str
    fstype: str
    offset: int
    size: int


@dataclass
class Source:
    dev: str
    volumes: list[Volume] = field(default_factory=list)
    vg: str = ""


def _mkfs(fstype: str, node: str, label: str) -> None:
    cmd = {
        "ext4": ["mkfs.ext4", "-q", "-F", "-L", label, node],
        "xfs": ["mkfs.xfs", "-q", "-f", "-L", label, node],
        "btrfs": ["mkfs.btrfs", "-q", "-f", "-L", label, node],
        "vfat": ["mkfs.vfat", "-n", label.upper()[:11], node],
        "ntfs": ["mkfs.ntfs", "-Q", "-q", "-F", "-L", label, node],
    }[fstype]
    run(*cmd)


@contextlib.contextmanager
def loop_at(dev: str, offset: int, size: int, readonly: bool = False):
    args = ["losetup", "--show", "-f", "-o", str(offset), "--sizelimit", str(size)]
    node = run(*args, *(["-r"] if readonly else []), dev).stdout.strip()
    try:
        yield node
    finally:
        subprocess.run(["losetup", "-d", node], capture_output=True)


@contextlib.contextmanager
def mounted(node: str, fstype: str, readonly: bool = False):
    with tempfile.TemporaryDirectory(prefix="p2v-mnt-") as mnt:
        if fstype == "ntfs":
            run("ntfs-3g", *(["-o", "ro"] if readonly else []), node, mnt)
        else:
            run("mount", *(["-o", "ro"] if readonly else []), "-t", fstype, node, mnt)
        try:
            yield Path(mnt)
        finally:
            run("umount", mnt)


def _fill_tree(root: Path, seed: int, files: int, size: int) -> None:
    rng = random.Random(seed)
    for i in range(files):
        d = root / f"dir{i % 3}"
        d.mkdir(exist_ok=True)
        # Whole 16 KiB blocks: partclone maps btrfs in nodesize units, so a file's last block
        # would otherwise carry the next extent's stale bytes along.
        n = rng.randrange(size // 2, size) // 16384 * 16384
        if i % 2:
            body = rng.randbytes(n)                       # incompressible
        else:
            body = (f"line {i} of a text file that compresses well\n" * (n // 44 + 1)).encode()[:n]
        (d / f"file{i}.bin").write_bytes(body)
    (root / "deleted.bin").write_bytes(SECRET * 256)
    os.sync()
    (root / "deleted.bin").unlink()
    os.sync()


def _fill_vfat(node: str, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _fill_tree(Path(tmp), seed, 6, 512 * 1024)
        run("mcopy", "-s", "-i", node, *[str(p) for p in Path(tmp).iterdir()], "::/")


def build(loopdev, files_per_fs: int = 8, file_size: int = 2 * MiB) -> Source:
    """The full source disk; every filesystem gets `files_per_fs` files of about `file_size`."""
    dev = loopdev(DISK_SIZE, "source")
    run("sfdisk", "-q", dev, input=LAYOUT)
    nodes = rescan(dev)
    table = {p["node"]: p for p in json.loads(
        run("sfdisk", "--json", dev).stdout)["partitiontable"]["partitions"]}
    start = {n: int(table[n]["start"]) * 512 for n in nodes}
    size = {n: int(table[n]["size"]) * 512 for n in nodes}
    bios, esp, root, swap, srv, home, win, pv, md = nodes
    src = Source(dev)
    with open(bios, "wb") as f:  # a bootloader's bytes, in a partition with no filesystem
        f.write(random.Random(1).randbytes(MiB))
    for seed, (node, fstype, name) in enumerate(
            [(esp, "vfat", "esp"), (root, "ext4", "root"), (srv, "xfs", "srv"),
             (home, "btrfs", "home"), (win, "ntfs", "win")]):
        _mkfs(fstype, node, name)
        if fstype == "vfat":
            _fill_vfat(node, seed)
        else:
            with mounted(node, fstype) as mnt:
                _fill_tree(mnt, seed, files_per_fs, file_size)
        src.volumes.append(Volume(name, fstype, start[node], size[node]))
    run("mkswap", "-L", "swap", swap)

    # LVM: a 120 MiB ext4 LV and a 16 MiB swap LV, metadata only (no device-mapper here).
    src.vg = "p2v" + uuid.uuid4().hex[:8]
    run("lvm", "pvcreate", "-q", "--devices", pv, pv)
    run("lvm", "vgcreate", "-q", "--devices", pv, src.vg, pv)
    for lv, mb in (("root", 120), ("swap", 16)):
        run("lvm", "lvcreate", *LVM_NO_DM, "--devices", pv, "-q", "-an", "-Zn", "-L", f"{mb}M",
            "-n", lv, src.vg)
    segs = json.loads(run(
        "lvm", "lvs", "--devices", pv, "--segments", "--reportformat", "json", "--units", "b",
        "--nosuffix", "-o", "lv_name,seg_pe_ranges,seg_size,vg_extent_size", src.vg).stdout)
    pe_start = int(run("lvm", "pvs", "--devices", pv, "--noheadings", "--units", "b", "--nosuffix",
                       "-o", "pe_start", pv).stdout.strip())
    for row in segs["report"][0]["seg"]:
        first = int(row["seg_pe_ranges"].split(":")[1].split("-")[0])
        offset = pe_start + first * int(row["vg_extent_size"])
        length = int(row["seg_size"])
        with loop_at(pv, offset, length) as lvdev:
            if row["lv_name"] == "root":
                _mkfs("ext4", lvdev, "lvroot")
                with mounted(lvdev, "ext4") as mnt:
                    _fill_tree(mnt, 10, files_per_fs, file_size)
                src.volumes.append(Volume("lvroot", "ext4", start[pv] + offset, length))
            else:
                run("mkswap", lvdev)

    # md RAID1: this member and a twin elsewhere; ext4 on the array, from the data offset.
    twin = loopdev(size[md], "twin")
    offset = md_superblock.write_raid1([md, twin], "box:0")
    with loop_at(md, offset, size[md] - offset) as array:
        _mkfs("ext4", array, "mdroot")
        with mounted(array, "ext4") as mnt:
            _fill_tree(mnt, 11, files_per_fs, file_size)
    src.volumes.append(Volume("mdroot", "ext4", start[md] + offset, size[md] - offset))
    os.sync()
    return src


def _hash_tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def checksums(dev: str, volume: Volume) -> dict[str, str]:
    """sha256 of every file of `volume` as it sits on disk `dev` (mounted read-only)."""
    with loop_at(dev, volume.offset, volume.size, readonly=True) as node:
        if volume.fstype == "vfat":
            with tempfile.TemporaryDirectory() as tmp:
                run("mcopy", "-s", "-n", "-i", node, "::/*", tmp)
                return _hash_tree(Path(tmp))
        with mounted(node, volume.fstype, readonly=True) as mnt:
            return _hash_tree(mnt)


def fsck(dev: str, volume: Volume) -> None:
    """A read-only check of `volume` on `dev`; AssertionError with the tool's words if unclean."""
    with loop_at(dev, volume.offset, volume.size, readonly=True) as node:
        cmd = {
            "ext4": ["e2fsck", "-f", "-n", node],
            "xfs": ["xfs_repair", "-n", node],
            "btrfs": ["btrfs", "check", "--readonly", node],
            "vfat": ["fsck.vfat", "-n", node],
            "ntfs": ["ntfsfix", "--no-action", node],
        }[volume.fstype]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{volume.name}: {' '.join(cmd[:-1])}: {proc.stdout}{proc.stderr}"
