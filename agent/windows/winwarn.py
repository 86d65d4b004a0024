"""The Windows warnings a technician must see before the transfer, from the probe and cheap looks.

The capture's plan (agent.disk.plan) says the same things, but only once the transfer has begun. These
come earlier, from the same checks on the disks the probe found:

- a partition of a dynamic disk (LDM) or a Storage Spaces pool: from the partition type the probe
  read (windisk.partition_kind), no look at the disk;
- a BitLocker volume: blkid's TYPE from the probe, or its boot sector's OEM id
  (windisk.bitlocker);
- an NTFS volume left hibernated (hibernation or Fast Startup), marked dirty or with a $LogFile to
  replay: fsstate.unclean, which runs ntfsinfo and reads the heads of hiberfil.sys and $LogFile
  (ntfscat) - a second or so per volume, read-only.

A disk is looked at only when the node the probe named is a block device of the probed size here:
a recorded machine's /dev/sda is not this machine's.
"""

from __future__ import annotations

import os
import stat

from agent.disk import fsstate
from agent.windows import windisk
from agent.probe import Disk, Machine


def check(machine: Machine, disks: list[str] | None = None) -> dict[str, list[str]]:
    """{disk path: [warning sentences]} for the `disks` (paths or names; None: all the probe
    found) that are attached here; a disk with nothing to say has an empty list."""
    chosen = [d for d in machine.disks
              if disks is None or d.path in disks or d.name in disks]
    return {disk.path: disk_warnings(disk) if attached(disk) else [] for disk in chosen}


def disk_warnings(disk: Disk) -> list[str]:
    """The warnings for one attached disk, partition by partition (or its whole-disk volume)."""
    out = []
    volumes = [(p.path, p.type, p.fs) for p in disk.partitions]
    if not disk.partitions and disk.fs:
        volumes = [(disk.path, None, disk.fs)]
    for node, ptype, fs in volumes:
        if ptype and disk.table and (why := windisk.partition_kind(disk.table, ptype)):
            out.append(f"{node} {why}.")
            continue
        fstype = fs.type if fs else None
        if fstype == "BitLocker" or (fstype in (None, "ntfs") and windisk.bitlocker(node)):
            out.append(f"{node} {windisk.BITLOCKER_WARNING}.")
            continue
        if fstype == "ntfs" and (why := fsstate.unclean(node, "ntfs")):
            out.append(unclean_warning(node, why))
    return out


def stops(machine: Machine, devices: list[str]) -> list[str]:
    """The sentences for NTFS volumes on `devices` (paths) that hold a Windows not yet on its
    disk (hibernated, Fast Startup, a $LogFile to replay): a copy of one cannot be made to boot
    (repair refuses it), so a capture stops on them unless told to go on."""
    out = []
    for disk in machine.disks:
        if disk.path not in devices or not attached(disk):
            continue
        volumes = [(p.path, p.fs) for p in disk.partitions] or [(disk.path, disk.fs)]
        for node, fs in volumes:
            if fs and fs.type == "ntfs" and (why := fsstate.unclean(node, "ntfs")) in (
                    fsstate.NTFS_HIBERNATED, fsstate.NTFS_LOG_TO_REPLAY):
                out.append(f"NTFS on {node} {why}.")
    return out


def unclean_warning(node: str, why: str) -> str:
    """The sentence for the NTFS on `node` that fsstate.unclean judged (`why`)."""
    if why in (fsstate.NTFS_HIBERNATED, fsstate.NTFS_LOG_TO_REPLAY):
        return f"NTFS on {node} {why}: the capture stops on it. {fsstate.remedy('ntfs', why)}"
    return f"NTFS on {node} {why}: it will be read whole. {fsstate.remedy('ntfs', why)}"


def attached(disk: Disk) -> bool:
    """Is `disk.path` a block device here, of the size the probe gave it?"""
    try:
        if not stat.S_ISBLK(os.stat(disk.path).st_mode):
            return False
        fd = os.open(disk.path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.lseek(fd, 0, os.SEEK_END) == disk.size
    finally:
        os.close(fd)


def lines(found: dict[str, list[str]], disks=None) -> list[str]:
    """The warnings of `found` for the `disks` (a collection of paths; None: all), in the
    probe's order."""
    return [w for path, warnings in found.items() if disks is None or path in disks
            for w in warnings]
