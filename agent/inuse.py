"""Sources in use: what on this machine holds a disk or one of its partitions, in words.

A disk that is mounted, swapped on, held by an active LV, an md array or another device-mapper
map, opened by a btrfs filesystem, or behind a writable loop device changes while it is read: its
used-block map describes a moment that has already passed. Capture refuses such a disk and says,
one sentence per use, what to stop.

Everything comes from the kernel's own tables, matched by major:minor: /proc/self/mountinfo,
/proc/swaps, the holders in sysfs, /sys/fs/btrfs/*/devices and the loop devices' status. A
read-only loop device over the disk (the plan's own views) cannot change it and is not a use.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SYS = Path("/sys")

_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")  # struct loop_info64 from <linux/loop.h>

Number = tuple[int, int]  # (major, minor)


@dataclass(frozen=True)
class Use:
    """One thing that uses a disk: `device` (sdb1) `what` (is mounted on /home); `todo` is what
    stops it (umount /home)."""

    device: str
    what: str
    todo: str

    def sentence(self) -> str:
        return f"{self.device} {self.what}: {self.todo}."


def uses(disk: str) -> list[Use]:
    """Everything that uses `disk` (a path such as /dev/sdb) or a partition on it, in words;
    [] for a disk nothing uses. A path that is not a block device (an image file) has none."""
    try:
        st = os.stat(disk)
    except OSError:
        return []
    if not stat.S_ISBLK(st.st_mode):
        return []
    nodes = _nodes(_number(st.st_rdev))
    mounts = _mountinfo()
    found: list[Use] = []
    found += _mounted(nodes, mounts)
    found += _swapped(nodes, mounts)
    found += _held(nodes)
    found += _btrfs_open(nodes, {u.device for u in found})
    found += _loop_backed(nodes, mounts)
    return found


# --- the disk's own nodes ------------------------------------------------------------------------

def _number(dev: int) -> Number:
    return os.major(dev), os.minor(dev)


def _parse_number(text: str) -> Number:
    major, _, minor = text.strip().partition(":")
    return int(major), int(minor)


def _nodes(disk: Number) -> dict[Number, str]:
    """(major, minor) -> kernel name for the disk, its partitions and its kpartx partition maps."""
    entry = (SYS / "dev/block" / f"{disk[0]}:{disk[1]}").resolve()
    out = {disk: entry.name}
    for child in entry.iterdir():
        if (child / "partition").exists():
            out[_parse_number((child / "dev").read_text())] = child.name
    for holder in _holders(entry):
        # multipath-tools' partition maps (kpartx) are the disk's partitions under another name
        if _text(holder / "dm/uuid").startswith("part"):
            out[_parse_number((holder / "dev").read_text())] = holder.name
    return out


def _holders(entry: Path) -> list[Path]:
    try:
        return sorted((entry / "holders").iterdir())
    except OSError:
        return []


def _text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


# --- what uses them ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Mount:
    number: Number       # the superblock's device (anonymous, 0:N, for btrfs)
    source: str          # the device or path it was mounted from
    target: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo() -> list[_Mount]:
    out = []
    for line in (PROC / "self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if len(fields) >= 5 and len(after) >= 2:
            out.append(_Mount(_parse_number(fields[2]), _unescape(after[1]), _unescape(fields[4])))
    return out


def _block_number(path: str) -> Number | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _number(st.st_rdev) if stat.S_ISBLK(st.st_mode) else None


def _devices_of(number: Number, mounts: list[_Mount]) -> set[Number]:
    """The block devices behind a superblock's device number: itself, or for an anonymous one
    (btrfs, overlay) the devices it was mounted from."""
    if number[0] != 0:
        return {number}
    return {n for m in mounts if m.number == number and (n := _block_number(m.source))}


def _mounted(nodes: dict[Number, str], mounts: list[_Mount]) -> list[Use]:
    where: dict[str, list[str]] = {}
    for m in mounts:
        numbers = _devices_of(m.number, mounts) | {_block_number(m.source)}
        for number in numbers:
            if number in nodes and m.target not in where.setdefault(nodes[number], []):
                where[nodes[number]].append(m.target)
    return [Use(name, f"is mounted on {', '.join(targets)}",
                f"unmount it (umount {' '.join(targets)})")
            for name, targets in where.items()]


def _swapped(nodes: dict[Number, str], mounts: list[_Mount]) -> list[Use]:
    out = []
    for line in (PROC / "swaps").read_text().splitlines()[1:]:
        if not line.split():
            continue
        path = _unescape(line.split()[0])
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            if _number(st.st_rdev) in nodes:
                out.append(Use(nodes[_number(st.st_rdev)], "is active swap", f"run swapoff {path}"))
            continue
        for number in _devices_of(_number(st.st_dev), mounts):
            if number in nodes:
                out.append(Use(nodes[number], f"holds the active swap file {path}",
                               f"run swapoff {path}"))
    return out


def _held(nodes: dict[Number, str]) -> list[Use]:
    out = []
    for number, name in nodes.items():
        for holder in _holders(SYS / "dev/block" / f"{number[0]}:{number[1]}"):
            uuid = _text(holder / "dm/uuid")
            if uuid.startswith("part"):
                continue  # one of the disk's partition maps, itself looked at
            out.append(_holder_use(name, holder.name, _text(holder / "dm/name"), uuid))
    return out


def _holder_use(name: str, holder: str, dm_name: str, dm_uuid: str) -> Use:
    if holder.startswith("md"):
        return Use(name, f"is a member of the assembled array {holder}",
                   f"stop it (mdadm --stop /dev/{holder})")
    if dm_uuid.startswith("LVM-"):
        vg, lv = _vg_lv(dm_name)
        return Use(name, f"is held by {holder}, the active LV {vg}/{lv}",
                   f"deactivate its volume group (vgchange -an {vg})")
    if dm_uuid.startswith("CRYPT-"):
        return Use(name, f"is held by {holder}, the open encrypted volume {dm_name}",
                   f"close it (cryptsetup close {dm_name})")
    if dm_name:
        return Use(name, f"is held by {holder}, the device-mapper map {dm_name}",
                   f"remove it (dmsetup remove {dm_name})")
    return Use(name, f"is held by {holder}", f"stop {holder}")


def _vg_lv(dm_name: str) -> tuple[str, str]:
    """LVM's device-mapper name (VG-LV, a hyphen inside a name doubled) split into VG and LV."""
    vg, lv = (re.split(r"(?<!-)-(?!-)", dm_name, maxsplit=1) + [""])[:2]
    return vg.replace("--", "-"), lv.replace("--", "-")


def _btrfs_open(nodes: dict[Number, str], reported: set[str]) -> list[Use]:
    """Devices of a btrfs filesystem the kernel has open (mounted, perhaps through another
    device of it, or lazily unmounted and still busy)."""
    out = []
    by_name = {name: name for name in nodes.values()}
    for devices in sorted((SYS / "fs/btrfs").glob("*/devices")):
        fsid = devices.parent.name
        for dev in sorted(devices.iterdir()):
            name = by_name.get(dev.name)
            if name and name not in reported:
                out.append(Use(name, f"is a device of the open btrfs filesystem {fsid}",
                               "unmount that filesystem wherever it is mounted"))
    return out


def _loop_backed(nodes: dict[Number, str], mounts: list[_Mount]) -> list[Use]:
    """Writable loop devices over the disk, or over a file on one of its filesystems."""
    out = []
    for loop in sorted((SYS / "block").glob("loop*")):
        backing = _text(loop / "loop/backing_file")
        if not backing:
            continue  # not bound to anything
        status = _backing(backing) or _loop_status(f"/dev/{loop.name}")
        if status is None:
            continue
        fs_dev, rdev = status
        if rdev in nodes:
            if _text(loop / "ro") != "1":
                out.append(Use(nodes[rdev], f"is the backing device of the writable {loop.name}",
                               f"detach it (losetup -d /dev/{loop.name})"))
            continue
        for number in _devices_of(fs_dev, mounts):
            if number in nodes:
                out.append(Use(nodes[number], f"holds {backing}, the backing file of {loop.name}",
                               f"detach it (losetup -d /dev/{loop.name})"))
    return out


def _backing(path: str) -> tuple[Number, Number] | None:
    """(device of the file's filesystem, device number of a block device) of a loop device's
    backing file, by its name; None when the name no longer leads to it."""
    if path.endswith(" (deleted)"):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _number(st.st_dev), _number(st.st_rdev) if stat.S_ISBLK(st.st_mode) else (0, 0)


def _loop_status(dev: str) -> tuple[Number, Number] | None:
    """The same from the loop device itself (LOOP_GET_STATUS64), for a backing file whose name
    leads nowhere now (deleted, or on a lazily unmounted filesystem); None when it cannot be
    asked. Only then is another process's loop device opened, and only for a moment."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        buf = bytearray(_LOOP_INFO64.size)
        fcntl.ioctl(fd, _LOOP_GET_STATUS64, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = _LOOP_INFO64.unpack(buf)
    return _number(fields[0]), _number(fields[2])
