"""Disks as the kernel shows them, without udev: sysfs (through pyudev), lsblk, blkid, fs tools.

No udev daemon runs in every place the agent runs, so no ID_* properties and no /dev/disk/by-*:
identity comes from lsblk and the sysfs attributes, filesystems from `blkid -p`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import psutil
import pyudev

from agent.disk import blockdev
from agent.probe.model import Disk, Filesystem, Multipath

# Block devices that are never a machine's disks unless asked for by name.
_NOT_DISKS = re.compile(r"^(loop|ram|zram|dm-|md|sr|fd|nbd|mtdblock|pmem)")
_LSBLK_COLUMNS = "NAME,PATH,SIZE,MODEL,VENDOR,SERIAL,WWN,ROTA,TRAN,RM,RO,LOG-SEC,PHY-SEC,SUBSYSTEMS"
LIVE_MEDIUM = Path("/run/live/medium")


def disk_paths(devices: list[str] | None = None) -> list[str]:
    """Whole disks: the ones named (paths or names), else every real disk this kernel sees."""
    if devices:
        return [d if d.startswith("/") else f"/dev/{d}" for d in devices]
    context = pyudev.Context()
    out = []
    for dev in context.list_devices(subsystem="block", DEVTYPE="disk"):
        if _NOT_DISKS.match(dev.sys_name) or dev.attributes.get("size") in (None, b"0"):
            continue
        out.append(dev.device_node or f"/dev/{dev.sys_name}")
    return sorted(out)


def _sysfs_text(base: Path, *names: str) -> str | None:
    for name in names:
        try:
            raw = (base / name).read_bytes()
        except OSError:
            continue
        if name.endswith("vpd_pg80"):
            raw = raw[4:]  # page header: qualifier, page code, length
        text = raw.decode(errors="replace").strip(" \0\n")
        if text:
            return text
    return None


def transport(tran: str | None, subsystems: str | None, name: str) -> str | None:
    """lsblk's TRAN, else what the device's place in the bus tree says."""
    if tran:
        return tran
    chain = (subsystems or "").split(":")
    for bus in ("usb", "nvme", "virtio", "xen", "mmc", "ata"):
        if bus in chain:
            return "sata" if bus == "ata" else bus
    if name.startswith("xvd"):
        return "xen"
    if name.startswith("loop"):
        return "loop"
    return "scsi" if "scsi" in chain else None


def identify(paths: list[str]) -> list[Disk]:
    """Size, sectors, model, serial, WWN, rotational, transport, removable for each disk."""
    if not paths:
        return []
    proc = subprocess.run(["lsblk", "--json", "--bytes", "--nodeps", "-o", _LSBLK_COLUMNS, *paths],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["lsblk failed"])[-1]
        raise blockdev.BlockDevError(f"Cannot list the disks: {reason}")
    disks = []
    for row in json.loads(proc.stdout)["blockdevices"]:
        name = row["name"]
        sysfs = Path("/sys/class/block") / name
        vendor = (row.get("vendor") or "").strip()
        if re.fullmatch(r"0x[0-9a-f]+", vendor):
            vendor = ""  # a PCI vendor number (virtio, NVMe), not a name
        model = " ".join(filter(None, [vendor, (row.get("model") or "").strip()])) or None
        disks.append(Disk(
            name=name,
            path=row["path"],
            size=int(row["size"]),
            logical_sector=int(row.get("log-sec") or 512),
            physical_sector=int(row.get("phy-sec") or 512),
            model=model or _sysfs_text(sysfs, "device/model"),
            serial=row.get("serial") or _sysfs_text(sysfs, "device/serial", "device/vpd_pg80"),
            wwn=row.get("wwn") or _sysfs_text(sysfs, "wwid", "device/wwid"),
            rotational=bool(row.get("rota")),
            transport=transport(row.get("tran"), row.get("subsystems"), name),
            removable=bool(row.get("rm")),
            read_only=bool(row.get("ro")),
        ))
    return disks


def mountpoints() -> dict[str, str]:
    """Mounted block devices and where: a filesystem already mounted is read there, not again."""
    out = {}
    for part in psutil.disk_partitions(all=True):
        if part.device.startswith("/dev/"):
            # /proc/mounts says /dev/mapper/vg-lv where LVM says /dev/vg/lv: key by the real node.
            out.setdefault(os.path.realpath(part.device), part.mountpoint)
    return out


def boot_device(medium: Path = LIVE_MEDIUM, mounts: dict[str, str] | None = None) -> str | None:
    """The block device the agent runs from: the one holding the live medium, else the one
    mounted on /. None when neither is a block device (netboot, toram, overlay root)."""
    mounts = mountpoints() if mounts is None else mounts
    by_place = {place: dev for dev, place in mounts.items()}  # first device wins on a shared place
    return by_place.get(str(medium)) or by_place.get("/")


def parent_disk(dev: str) -> str:
    """The whole disk a partition node belongs to (sysfs knows); `dev` itself for a disk."""
    name = Path(dev).resolve().name
    entry = Path("/sys/class/block") / name
    if (entry / "partition").exists():
        return f"/dev/{entry.resolve().parent.name}"
    return dev


def filesystem(dev: str) -> Filesystem | None:
    """What blkid finds on `dev`, as a Filesystem (usage and OS filled in later); None if nothing."""
    found = blockdev.filesystem(dev)
    if not found.get("TYPE"):
        return None
    return Filesystem(type=found["TYPE"], uuid=found.get("UUID"), label=found.get("LABEL"),
                      version=found.get("VERSION"))


def _numbers(text: str, pattern: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}


def superblock_usage(dev: str, fstype: str) -> tuple[int, int] | None:
    """(size, used) in bytes from the filesystem's own metadata, for when it cannot be mounted."""
    tools = {
        "ext2": ["dumpe2fs", "-h", dev], "ext3": ["dumpe2fs", "-h", dev],
        "ext4": ["dumpe2fs", "-h", dev],
        "xfs": ["xfs_db", "-r", "-c", "sb 0", "-c", "print dblocks fdblocks blocksize", dev],
        "btrfs": ["btrfs", "inspect-internal", "dump-super", dev],
        "vfat": ["fsck.fat", "-n", "-v", dev],
    }
    if fstype not in tools:
        return None
    try:
        proc = subprocess.run(tools[fstype], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout
    if fstype.startswith("ext"):
        n = _numbers(out, r"^(Block count|Free blocks|Block size):\s+(\d+)")
        if len(n) == 3:
            return n["Block count"] * n["Block size"], \
                (n["Block count"] - n["Free blocks"]) * n["Block size"]
    elif fstype == "xfs":
        n = _numbers(out, r"^(dblocks|fdblocks|blocksize) = (\d+)")
        if len(n) == 3:
            return n["dblocks"] * n["blocksize"], (n["dblocks"] - n["fdblocks"]) * n["blocksize"]
    elif fstype == "btrfs":
        n = _numbers(out, r"^(total_bytes|bytes_used)\s+(\d+)")
        if len(n) == 2:
            return n["total_bytes"], n["bytes_used"]
    else:
        cluster = re.search(r"(\d+) bytes per cluster", out)
        data_start = re.search(r"Data area starts at byte (\d+)", out)
        clusters = re.search(r"(\d+)/(\d+) clusters", out)
        if cluster and data_start and clusters:
            size_bytes = int(data_start.group(1)) + int(clusters.group(2)) * int(cluster.group(1))
            return size_bytes, int(data_start.group(1)) + int(clusters.group(1)) * int(cluster.group(1))
    return None


def multipaths(sysfs: Path = Path("/sys")) -> list[Multipath]:
    """device-mapper multipath maps (dm uuid "mpath-<wwid>") and the disks each one joins."""
    out = []
    for dm in sorted((sysfs / "block").glob("dm-*")):
        uuid = _sysfs_text(dm, "dm/uuid") or ""
        if uuid.startswith("mpath-"):
            out.append(Multipath(
                name=_sysfs_text(dm, "dm/name") or dm.name,
                wwid=uuid.removeprefix("mpath-"),
                path=f"/dev/{dm.name}",
                paths=sorted(f"/dev/{p.name}" for p in (dm / "slaves").iterdir()),
            ))
    return out
