"""Sources in use: what on this machine holds a disk or one of its partitions, in words.

A disk that is mounted, swapped on, held by an active LV, an md array or another device-mapper
map, opened by a btrfs filesystem, or behind a writable loop device changes while it is read: its
used-block map describes a moment that has already passed. Capture refuses such a disk and says,
one sentence per use, what to stop.

Everything comes from the kernel's own tables, matched by major:minor: /proc/self/mountinfo,
/proc/swaps, the holders in sysfs, /sys/fs/btrfs/*/devices and the loop devices' status. A
read-only loop device over the disk (the plan's own views) cannot change it and is not a use.

Those tables do not see everything (a mount in another mount namespace, the external log of a
mounted XFS, the external journal of a mounted ext4, a bcache set); the kernel's own exclusive
claim does. Every mount, swap, md or device-mapper holder, btrfs device, external log or journal
holds its device claimed, and opening a claimed device with O_EXCL fails with EBUSY. So the disk
and each partition is opened so, and closed at once (a mount racing that instant would see EBUSY
once); a claim no table explains is looked for in every mount namespace, in the mounted
filesystems' external log, realtime and journal devices, and else named as the kernel's. A
read-only loop view and partclone open without O_EXCL: they neither claim nor are refused.
"""

from __future__ import annotations

import errno
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
    found += _claimed(nodes, {u.device for u in found})
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
    fstype: str = ""
    options: str = ""    # the superblock's options (XFS: logdev=, rtdev=)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo(pid: str = "self") -> list[_Mount]:
    out = []
    for line in (PROC / pid / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if len(fields) >= 5 and len(after) >= 2:
            out.append(_Mount(_parse_number(fields[2]), _unescape(after[1]), _unescape(fields[4]),
                              after[0], _unescape(after[2]) if len(after) > 2 else ""))
    return out


def mount_points() -> list[str]:
    """Where something is mounted in this mount namespace (/proc/self/mountinfo's targets,
    octal escapes undone)."""
    return [m.target for m in _mountinfo()]


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
    info = loop_info(dev)
    return None if info is None else (_number(info[0]), _number(info[2]))


def loop_info(dev: str) -> tuple[int, int, int] | None:
    """(lo_device, lo_inode, lo_rdevice) of loop device `dev` (LOOP_GET_STATUS64: the device and
    inode of its backing file, and the backing's device number when that is a block device);
    None when it maps nothing or cannot be asked."""
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
    return fields[0], fields[1], fields[2]


# --- what the kernel claims ----------------------------------------------------------------------

def _claimed(nodes: dict[Number, str], reported: set[str]) -> list[Use]:
    """The nodes the kernel holds claimed that no check above explained, each with the use found
    for it. A claimed partition makes its disk busy too, and a claimed disk every partition:
    the disk itself counts when it has no partition, or when all of them are busy and nothing
    explains any of them."""
    busy = {number: name for number, name in nodes.items() if _busy(name, number)}
    if not busy:
        return []
    disk, *parts = nodes
    spaces = _namespaces()
    found = {number: _explain(busy[number], number, spaces)
             for number in parts if number in busy and busy[number] not in reported}
    if disk in busy and busy[disk] not in reported:
        whole_claimed = all(p in busy and busy[p] not in reported for p in parts) and not any(
            found.values())
        if whole_claimed:
            return [_explain(busy[disk], disk, spaces) or _kernel_claim(busy[disk])]
    return [use or _kernel_claim(busy[number]) for number, use in found.items()]


def _busy(name: str, number: Number) -> bool:
    """Does the kernel refuse to open /dev/`name` exclusively (EBUSY)? False when there is no
    such node, or it is another device, or it cannot be opened at all."""
    path = f"/dev/{name}"
    if _block_number(path) != number:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        return e.errno == errno.EBUSY
    os.close(fd)
    return False


@dataclass(frozen=True)
class _Namespace:
    pid: str             # a process in it ("self" for this one)
    command: str
    mounts: list[_Mount]

    def inside(self, path: str) -> str:
        """`path` as this namespace's processes see it, from here."""
        return path if self.pid == "self" else f"{PROC}/{self.pid}/root{path}"

    def todo(self, target: str) -> str:
        if self.pid == "self":
            return f"unmount it (umount {target})"
        return (f"unmount it there (nsenter -t {self.pid} -m umount {target}) or stop "
                f"process {self.pid} ({self.command})")

    def where(self) -> str:
        return "" if self.pid == "self" else (f" in another mount namespace (that of process "
                                              f"{self.pid}, {self.command})")


def _namespaces() -> list[_Namespace]:
    """This mount namespace, then one process of every other one, with its mounts."""
    out = [_Namespace("self", "", _mountinfo())]
    seen = {_link(PROC / "self/ns/mnt")}
    for entry in sorted(PROC.glob("[0-9]*"), key=lambda p: int(p.name)):
        ns = _link(entry / "ns/mnt")
        if not ns or ns in seen:
            continue
        try:
            mounts = _mountinfo(entry.name)
        except OSError:
            continue  # gone meanwhile
        seen.add(ns)
        out.append(_Namespace(entry.name, _text(entry / "comm"), mounts))
    return out


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _explain(name: str, number: Number, spaces: list[_Namespace]) -> Use | None:
    """What claims `name` where the mount tables show it; None when they do not."""
    for ns in spaces:
        targets = [m.target for m in ns.mounts
                   if m.number == number or _block_number(ns.inside(m.source)) == number]
        if targets:
            targets = list(dict.fromkeys(targets))
            return Use(name, f"is mounted on {', '.join(targets)}{ns.where()}",
                       ns.todo(" ".join(targets)))
    for ns in spaces:
        for m in ns.mounts:
            if role := _companion(m, name, number, ns):
                return Use(name, f"is {role} of the {m.fstype} filesystem on {m.source} mounted "
                                 f"on {m.target}{ns.where()}", ns.todo(m.target))
    return None


def _kernel_claim(name: str) -> Use:
    return Use(name, "is claimed by the kernel (it cannot be opened exclusively), yet no mount, "
                     "swap, holder or btrfs filesystem here names it",
               "find what holds it (a mount inside a container, the external journal or log of a "
               "mounted filesystem, a bcache or RAID set; lsblk and /proc/*/mountinfo show most) "
               "and stop that")


_EXT_MAGIC = 0xEF53


def _companion(m: _Mount, name: str, number: Number, ns: _Namespace) -> str | None:
    """What device `number` is to the mounted filesystem `m`, when it is one of its other
    devices: the external log or realtime device of an XFS (its logdev=, rtdev= options), the
    external journal of an ext3/4 (its superblock's journal UUID is the device's UUID)."""
    for option in m.options.split(","):
        key, _, path = option.partition("=")
        role = {"logdev": "the external log", "rtdev": "the realtime device"}.get(key)
        if role and path and _block_number(ns.inside(path)) == number:
            return role
    if m.fstype in ("ext3", "ext4") and m.source.startswith("/"):
        journal = _ext_superblock(f"/dev/{name}")
        fs = _ext_superblock(ns.inside(m.source))
        if journal and fs and journal[0x68:0x78] == fs[0xD0:0xE0] and any(fs[0xD0:0xE0]):
            return "the external journal"
    return None


def _ext_superblock(path: str) -> bytes | None:
    """The 1 KiB ext2/3/4 superblock (also a journal device's) of `path`, or None."""
    try:
        with open(path, "rb") as f:
            f.seek(1024)
            sb = f.read(1024)
    except OSError:
        return None
    return sb if len(sb) == 1024 and struct.unpack_from("<H", sb, 0x38)[0] == _EXT_MAGIC else None
