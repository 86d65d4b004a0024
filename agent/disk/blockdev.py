"""Reading block devices directly, without udev: sizes, partition tables, filesystems, LVM, md RAID.

These are the agent's edge functions for disks. Each runs one ioctl or one tool (sfdisk, blkid,
lvm, mdadm) and returns plain data; a failure raises BlockDevError with a sentence a technician
can act on. They work on loop devices as on real disks, and on images in regular files where the
tool allows it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import stat
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# ioctl numbers from <linux/fs.h>.
_BLKSSZGET = 0x1268
_BLKPBSZGET = 0x127B

# Without a udev daemon, LVM must neither wait for udev nor ask it for the device list.
_LVM_CONFIG = (
    "devices { obtain_device_list_from_udev=0 use_devicesfile=0 } "
    "activation { udev_sync=0 udev_rules=0 }"
)


class BlockDevError(Exception):
    """A device could not be read; the message says which and why."""


@dataclass
class Partition:
    node: str              # /dev/sda1, /dev/loop3p2
    number: int
    start: int             # bytes from the start of the disk
    size: int              # bytes
    type: str              # MBR type code ("83", "ee") or GPT type GUID (upper case)
    partuuid: str | None   # GPT partition GUID or MBR "<disk id>-<nn>", lower case
    name: str | None = None  # GPT partition name
    bootable: bool = False   # MBR active flag


@dataclass
class PartitionTable:
    label: str             # "dos" or "gpt"
    id: str | None         # GPT disk GUID or MBR disk identifier (0x…)
    sector_size: int
    partitions: list[Partition] = field(default_factory=list)


@dataclass
class LogicalVolume:
    vg: str
    name: str
    path: str              # /dev/VG/LV
    size: int
    uuid: str
    active: bool
    segments: list[dict] = field(default_factory=list)  # {"start", "size", "pv", "pv_start"} in bytes
    # What LVM says it is. attr is lvs's lv_attr: attr[0] "o" an origin with snapshots, "O" one
    # with a snapshot merge pending, "s"/"S" a (merging) snapshot, "-" a plain LV, … (lvs(8)).
    attr: str = ""
    types: list[str] = field(default_factory=list)  # segment types in order: linear, striped, …
    hidden: bool = False   # not a volume of its own: a component (image, data, cache, origin, …)
    parent: str = ""       # the LV it is a component of, when LVM names one
    origin: str = ""       # a snapshot's origin; a cache's or writecache's hidden origin LV
    pool: str = ""         # a thin LV's pool; a cache's pool or cache volume


@dataclass
class VolumeGroup:
    name: str
    uuid: str
    size: int
    extent_size: int
    pvs: list[str] = field(default_factory=list)        # device paths
    lvs: list[LogicalVolume] = field(default_factory=list)
    missing_pvs: list[str] = field(default_factory=list)  # PV UUIDs not among the devices asked


@dataclass
class MdArray:
    path: str              # /dev/md0
    level: str             # raid1, raid5, …
    uuid: str
    name: str | None
    metadata: str | None
    size: int
    members: list[str] = field(default_factory=list)    # device paths


@dataclass
class MdMember:
    device: str
    array_uuid: str        # mdadm's form, aa:bb:cc:dd
    name: str | None
    level: str
    raid_devices: int
    metadata: str          # superblock version: 0.90, 1.0, 1.2
    data_offset: int       # bytes from the member's start to the array's data
    role: int | None       # slot in the array, None for a spare


def _run(args: list[str], what: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise BlockDevError(f"Cannot {what}: the tool '{args[0]}' is not installed.") from None
    except subprocess.TimeoutExpired:
        raise BlockDevError(f"Cannot {what}: '{args[0]}' did not answer within 2 minutes.") from None
    if proc.returncode not in ok:
        detail = proc.stderr.strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        raise BlockDevError(f"Cannot {what}: {reason.rstrip('.')}.")
    return proc


def _open(dev: str, what: str) -> int:
    try:
        return os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise BlockDevError(f"Cannot {what}: {dev}: {e.strerror}.") from None


def disk_size(dev: str) -> int:
    """Size in bytes of a block device (or image file)."""
    fd = _open(dev, "read the size of a disk")
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def sector_sizes(dev: str) -> tuple[int, int]:
    """(logical, physical) sector sizes in bytes; an image file counts as 512/512."""
    fd = _open(dev, "read the sector size of a disk")
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            return 512, 512
        buf = bytearray(4)
        fcntl.ioctl(fd, _BLKSSZGET, buf)
        logical = struct.unpack("i", buf)[0]
        fcntl.ioctl(fd, _BLKPBSZGET, buf)
        physical = struct.unpack("I", buf)[0]
        return logical, physical
    finally:
        os.close(fd)


# What partition_table() and filesystem() found, per device, inside remembering(); else None.
_remembered: dict | None = None


@contextlib.contextmanager
def remembering() -> Iterator[None]:
    """Within it, partition_table() and filesystem() run their tool once per device: a capture
    asks about each disk three times (probe, plan, inventory), and nothing may change a disk in
    between (one in use is refused). A final sync's start-up is downtime (warm migration)."""
    global _remembered
    outer = _remembered is None
    if outer:
        _remembered = {}
    try:
        yield
    finally:
        if outer:
            _remembered = None


def _loop_identity(dev: str) -> tuple:
    """What a loop device shows (its backing file, offset, size limit); () for another device.
    A view's loop device is detached and its name reused over other bytes (LV segments,
    partitions without a node) within one capture: its name alone says nothing."""
    loop = Path("/sys/class/block") / Path(os.path.realpath(dev)).name / "loop"
    try:
        return tuple((loop / f).read_text().strip()
                     for f in ("backing_file", "offset", "sizelimit"))
    except OSError:
        return ()


def _once(key: tuple, find):
    """find(), or inside remembering() the copy of what it gave for `key` the first time."""
    memo = _remembered
    if memo is None:
        return find()
    key = (*key, _loop_identity(key[1]))
    if key not in memo:
        memo[key] = find()
    return copy.deepcopy(memo[key])


def partition_table(dev: str) -> PartitionTable | None:
    """The partition table of `dev` as sfdisk reads it, or None when there is none."""
    return _once(("table", dev), lambda: _partition_table(dev))


def _partition_table(dev: str) -> PartitionTable | None:
    proc = _run(["sfdisk", "--json", dev], f"read the partition table of {dev}", ok=(0, 1))
    if proc.returncode == 1:
        if "does not contain a recognized partition table" in proc.stderr:
            return None
        raise BlockDevError(f"Cannot read the partition table of {dev}: {proc.stderr.strip()}")
    return parse_sfdisk(json.loads(proc.stdout))


def parse_sfdisk(doc: dict) -> PartitionTable:
    """Turn `sfdisk --json` output into a PartitionTable with byte offsets."""
    pt = doc["partitiontable"]
    sector = int(pt.get("sectorsize", 512))
    label = pt["label"]
    disk_id = pt.get("id")
    parts = []
    for p in pt.get("partitions", []):
        number = _partition_number(p["node"])
        if label == "dos":
            ident = (disk_id or "0x0").lower().removeprefix("0x")
            partuuid = f"{int(ident, 16):08x}-{number:02x}"
        else:
            partuuid = p.get("uuid", "").lower() or None
        parts.append(Partition(
            node=p["node"],
            number=number,
            start=int(p["start"]) * sector,
            size=int(p["size"]) * sector,
            type=str(p.get("type", "")).upper() if label == "gpt" else str(p.get("type", "")),
            partuuid=partuuid,
            name=p.get("name"),
            bootable=bool(p.get("bootable", False)),
        ))
    return PartitionTable(label=label, id=disk_id, sector_size=sector, partitions=parts)


def _partition_number(node: str) -> int:
    digits = ""
    for ch in reversed(node):
        if not ch.isdigit():
            break
        digits = ch + digits
    return int(digits)


def filesystem(dev: str) -> dict[str, str]:
    """What `blkid -p` finds on `dev` (TYPE, UUID, LABEL, VERSION, PART_ENTRY_*, …); {} for nothing."""
    return _once(("filesystem", dev), lambda: _filesystem(dev))


def _filesystem(dev: str) -> dict[str, str]:
    proc = _run(["blkid", "-p", "-o", "export", dev], f"probe {dev} for a filesystem", ok=(0, 2))
    if proc.returncode == 2:
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = re.sub(r"\\(.)", r"\1", value)  # export form escapes spaces and quotes
    return out


def devices_matching(token: str) -> list[dict[str, str]]:
    """Every block device on this machine whose probe matches blkid's `token` (NAME=value, e.g.
    UUID=..., TYPE=xfs_external_log), probed afresh (no cache, no udev): blkid's export fields
    (DEVNAME, TYPE, UUID, LOGUUID, ...) for each; [] when none."""
    proc = _run(["blkid", "-c", "/dev/null", "-o", "export", "-t", token],
                f"look for block devices with {token}", ok=(0, 2))
    out = []
    for block in proc.stdout.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = re.sub(r"\\(.)", r"\1", value)
        if "DEVNAME" in fields:
            out.append(fields)
    return out


def disks_under(dev: str) -> set[str]:
    """The kernel names of the whole disks `dev` lies on: {sda} for /dev/sda2; for a loop device
    over a block device, that device's disks; for a device-mapper or md device, its slaves'.
    A path that is no block device: {itself, made absolute}."""
    try:
        st = os.stat(dev)
    except OSError:
        return {os.path.realpath(dev)}
    if not stat.S_ISBLK(st.st_mode):
        return {os.path.realpath(dev)}
    entry = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}").resolve()
    if (entry / "partition").exists():
        entry = entry.parent
    backing = entry / "loop/backing_file"
    if backing.exists():
        path = backing.read_text().strip()
        if path.startswith("/dev/") and os.path.exists(path):
            return disks_under(path)
    slaves = sorted((entry / "slaves").glob("*")) if (entry / "slaves").is_dir() else []
    if slaves:
        return set().union(*(disks_under(f"/dev/{slave.name}") for slave in slaves))
    return {entry.name}


def _lvm_report(args: list[str], what: str, devices: list[str] | None) -> list[dict]:
    scope = ["--devices", ",".join(devices)] if devices else []
    proc = _run(
        ["lvm", *args, *scope, "--config", _LVM_CONFIG, "--reportformat", "json", "--units", "b",
         "--nosuffix"],
        what,
    )
    report = json.loads(proc.stdout)["report"]
    return [row for section in report for rows in section.values() for row in rows]


def lvm_layout(devices: list[str] | None = None) -> list[VolumeGroup]:
    """Every volume group LVM sees (only on `devices` when given), with PVs, LVs and segments.

    Needs no device-mapper: it reads LVM metadata only. Segment offsets are in bytes, so an LV's
    contents can be read straight from its PVs.
    """
    if devices == []:
        return []
    vgs = {
        row["vg_uuid"]: VolumeGroup(
            name=row["vg_name"], uuid=row["vg_uuid"], size=int(row["vg_size"]),
            extent_size=int(row["vg_extent_size"]),
        )
        for row in _lvm_report(["vgs", "-o", "vg_name,vg_uuid,vg_size,vg_extent_size"],
                               "list LVM volume groups", devices)
    }
    pe_start = {}
    for row in _lvm_report(["pvs", "-o", "pv_name,pv_uuid,vg_uuid,pe_start"],
                           "list LVM physical volumes", devices):
        pe_start[row["pv_name"]] = int(row["pe_start"])
        if row["vg_uuid"] in vgs and row["pv_name"] == "[unknown]":
            vgs[row["vg_uuid"]].missing_pvs.append(row["pv_uuid"])
        elif row["vg_uuid"] in vgs:
            vgs[row["vg_uuid"]].pvs.append(row["pv_name"])
    lvs: dict[str, LogicalVolume] = {}
    rows = _lvm_report(
        ["lvs", "-a", "--segments", "-o",
         "vg_uuid,lv_name,lv_path,lv_size,lv_uuid,lv_active,lv_attr,segtype,origin,pool_lv,"
         "lv_parent,seg_start,seg_size,seg_pe_ranges"],
        "list LVM logical volumes", devices,
    )
    for row in rows:
        vg = vgs[row["vg_uuid"]]
        if row["lv_uuid"] not in lvs:
            name = row["lv_name"].strip("[]")   # -a shows hidden LVs in brackets
            lvs[row["lv_uuid"]] = LogicalVolume(
                vg=vg.name, name=name,
                path=row["lv_path"] or f"/dev/{vg.name}/{name}",
                size=int(row["lv_size"]), uuid=row["lv_uuid"], active=row["lv_active"] == "active",
                attr=row["lv_attr"], hidden=row["lv_name"].startswith("["),
                parent=row["lv_parent"].strip("[]"), origin=row["origin"].strip("[]"),
                pool=row["pool_lv"].strip("[]"),
            )
            vg.lvs.append(lvs[row["lv_uuid"]])
        lv = lvs[row["lv_uuid"]]
        lv.types.append(row["segtype"])
        start, size = int(row["seg_start"]), int(row["seg_size"])
        # A linear segment has one PV range; striped and mirrored ones list one range per PV.
        # Ranges on another LV (a raid image, a cache origin) are that LV's segments, not these.
        for pv_range in row["seg_pe_ranges"].split():
            pv, _, extents = pv_range.rpartition(":")
            if pv not in pe_start:
                continue
            first = int(extents.split("-")[0])
            lv.segments.append({
                "start": start, "size": size, "pv": pv,
                "pv_start": pe_start[pv] + first * vg.extent_size,
            })
    return list(vgs.values())


def lvm_activate(vg: str) -> None:
    """Activate every LV of `vg` (read-only use), without waiting for udev."""
    _run(["lvm", "vgchange", "--config", _LVM_CONFIG, "-ay", vg], f"activate volume group {vg}")


def md_arrays() -> list[MdArray]:
    """Every running md RAID array, with its members."""
    arrays = []
    for entry in sorted(Path("/sys/block").glob("md*")):
        path = f"/dev/{entry.name}"
        proc = _run(["mdadm", "--detail", "--export", path], f"read RAID array {path}", ok=(0, 1))
        if proc.returncode != 0:
            continue  # an md node with no array assembled behind it
        info = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        members = sorted(v for k, v in info.items() if k.startswith("MD_DEVICE_") and k.endswith("_DEV"))
        arrays.append(MdArray(
            path=path, level=info.get("MD_LEVEL", ""), uuid=info.get("MD_UUID", ""),
            name=info.get("MD_NAME"), metadata=info.get("MD_METADATA"),
            size=disk_size(path), members=members,
        ))
    return arrays


def md_member(dev: str) -> MdMember | None:
    """The md RAID superblock on `dev`, read with `mdadm --examine` (no md driver needed)."""
    proc = _run(["mdadm", "--examine", dev], f"read the RAID superblock of {dev}", ok=(0, 1))
    if proc.returncode != 0:
        return None
    info = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(" : ")
        if sep:
            info[key.strip()] = value.strip()
    if "Raid Level" not in info:
        return None  # mdadm also describes MBR and GPT headers; those are not RAID members
    offset = info.get("Data Offset", "0 sectors").split()[0]
    role = info.get("Device Role", "")
    return MdMember(
        device=dev,
        array_uuid=info.get("Array UUID") or info.get("UUID", ""),
        name=info.get("Name", "").split(" ")[0] or None,
        level=info.get("Raid Level", ""),
        raid_devices=int(info.get("Raid Devices", "0")),
        metadata=info.get("Version", ""),
        data_offset=int(offset) * 512,
        role=int(role.split()[-1]) if role.startswith("Active device") else None,
    )


@contextlib.contextmanager
def readonly_view(dev: str, offset: int = 0, size: int | None = None) -> Iterator[str]:
    """A read-only loop device over `size` bytes of `dev` from `offset` (an LV segment, the data
    of a RAID member, a partition without a node); detached when the block ends."""
    args = ["losetup", "--show", "-f", "-r", "-o", str(offset)]
    if size is not None:
        args += ["--sizelimit", str(size)]
    loop = _run([*args, dev], f"open a read-only view of {dev}").stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=60)
