"""Building a Machine: from the hardware (LiveProber) or from a recording (RecordedProber).

The choice is made once, by `Prober(recorded=...)`; everything after takes the Machine it returns.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from agent.disk import blockdev, inuse
from agent.probe import disks as edge
from agent.probe import oses, system
from agent.probe.model import (
    Disk, Filesystem, LogicalVolume, LuksVolume, LvmSegment, Machine, Partition, RaidArray,
    VolumeGroup,
)


class RecordedProber:
    """A machine saved by `p2v-agent probe --save`, replayed as if it were this one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def machine(self) -> Machine:
        try:
            return Machine.loads(self.path.read_text())
        except OSError as e:
            raise ProbeError(f"Cannot read the recorded machine {self.path}: {e.strerror}.") from None
        except ValueError as e:
            raise ProbeError(f"{self.path} is not a recorded machine this agent can read: {e}") \
                from None


class ProbeError(Exception):
    pass


@dataclass
class _Found:
    """Signatures met on the way through the disks, sorted out once every disk is read."""

    pvs: list[str] = field(default_factory=list)
    raid_members: list[blockdev.MdMember] = field(default_factory=list)
    luks: list[LuksVolume] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class LiveProber:
    """This machine's hardware. `devices` limits the disks to those named (loop devices in tests,
    `capture --disks` elsewhere); `medium` is where the live system's boot medium is mounted."""

    def __init__(self, devices: list[str] | None = None, medium: Path = edge.LIVE_MEDIUM):
        self.devices = devices
        self.medium = medium

    def machine(self) -> Machine:
        ident = system.dmi()
        machine = Machine(firmware=system.firmware(), cpu=system.cpu(), memory=system.memory(),
                          nics=system.nics(), secure_boot=system.secure_boot(), **ident)
        machine.multipaths = edge.multipaths()
        paths = edge.disk_paths(self.devices)
        if self.devices is None:
            # A multipath LUN shows once per path; the map is the disk, its paths are not.
            joined = {p for mp in machine.multipaths for p in mp.paths}
            paths = [p for p in paths if p not in joined] + [mp.path for mp in machine.multipaths]
        try:
            all_disks = edge.identify(paths)
        except blockdev.BlockDevError as e:
            machine.problems.append(str(e))
            return machine
        boot = edge.boot_device(self.medium)
        boot_disk = edge.parent_disk(boot) if boot else None
        machine.disks = [d for d in all_disks if d.path != boot_disk]
        machine.boot_medium = next((d for d in all_disks if d.path == boot_disk), None)
        for disk in machine.disks:
            disk.in_use = [use.sentence() for use in inuse.uses(disk.path)]
        mounts = edge.mountpoints()
        found = _Found()
        for disk in machine.disks:
            try:
                self._read_disk(disk, found, mounts)
            except blockdev.BlockDevError as e:
                found.problems.append(f"{e} Part of {disk.path} was not examined.")
        machine.volume_groups = self._volume_groups(found, mounts)
        machine.raids = self._raids(found, mounts)
        machine.luks = found.luks
        machine.problems += found.problems
        return machine

    def _read_disk(self, disk: Disk, found: _Found, mounts: dict[str, str]) -> None:
        try:
            table = blockdev.partition_table(disk.path)
        except blockdev.BlockDevError as e:
            found.problems.append(f"{e} The whole of {disk.path} will be read.")
            return
        if table is None:
            disk.fs = self._signature(disk.path, disk.path, found, mounts)
            return
        disk.table, disk.table_id = table.label, table.id
        for p in table.partitions:
            part = Partition(path=p.node, number=p.number, start=p.start, size=p.size, type=p.type,
                             partuuid=p.partuuid, name=p.name, bootable=p.bootable)
            disk.partitions.append(part)
            if p.type.lower() in ("5", "f", "85"):
                continue  # an MBR extended partition: a container, its logicals are listed too
            with _node(disk.path, p) as node:
                part.fs = self._signature(node, p.node, found, mounts)

    def _signature(self, node: str, name: str, found: _Found, mounts: dict[str, str]) \
            -> Filesystem | None:
        """Read the signature at `node` (known to people as `name`) and sort it."""
        fs = edge.filesystem(node)
        if fs is None:
            return None
        if fs.type == "LVM2_member":
            found.pvs.append(name)
        elif fs.type == "linux_raid_member":
            member = blockdev.md_member(node)
            if member:
                member.device = name
                found.raid_members.append(member)
        elif fs.type == "crypto_LUKS":
            found.luks.append(LuksVolume(device=name, uuid=fs.uuid, version=fs.version))
        else:
            _examine(node, fs, mounts, found.problems, name)
        return fs

    def _volume_groups(self, found: _Found, mounts: dict[str, str]) -> list[VolumeGroup]:
        try:
            layout = blockdev.lvm_layout(found.pvs)
        except blockdev.BlockDevError as e:
            found.problems.append(f"{e} LVM volumes will be read whole.")
            return []
        groups = []
        for vg in layout:
            group = VolumeGroup(name=vg.name, uuid=vg.uuid, size=vg.size,
                                extent_size=vg.extent_size, pvs=vg.pvs)
            for lv in vg.lvs:
                if lv.hidden:
                    continue  # a component of another LV (raid image, cache origin, pool data)
                volume = LogicalVolume(
                    name=lv.name, path=lv.path, size=lv.size, uuid=lv.uuid,
                    segments=[LvmSegment(**s) for s in lv.segments])
                group.lvs.append(volume)
                volume.fs = _look_inside(
                    _lv_node(volume), volume.path, found, mounts,
                    f"{volume.path} spans several segments and is not active; "
                    "its filesystem was not examined.")
            groups.append(group)
        return groups

    def _raids(self, found: _Found, mounts: dict[str, str]) -> list[RaidArray]:
        try:
            assembled = {a.uuid: a for a in blockdev.md_arrays()}
        except blockdev.BlockDevError as e:
            found.problems.append(str(e))
            assembled = {}
        arrays: dict[str, RaidArray] = {}
        for m in sorted(found.raid_members, key=lambda m: (m.role is None, m.role or 0)):
            raid = arrays.setdefault(m.array_uuid, RaidArray(
                uuid=m.array_uuid, name=m.name, level=m.level, metadata=m.metadata,
                raid_devices=m.raid_devices, data_offset=m.data_offset))
            raid.members.append(m.device)
        for raid in arrays.values():
            live = assembled.get(raid.uuid)
            raid.path = live.path if live else None
            name = raid.path or f"RAID {raid.name or raid.uuid}"
            raid.fs = _look_inside(
                _raid_node(raid), name, found, mounts,
                f"The {raid.level} array {raid.name or raid.uuid} is not assembled; "
                "its filesystem was not examined.")
        return list(arrays.values())


def _look_inside(view, name: str, found: _Found, mounts: dict[str, str], unreadable: str) \
        -> Filesystem | None:
    """The filesystem in an LV or array, through `view` (a context giving a node, or None)."""
    try:
        with view as node:
            if node is None:
                found.problems.append(unreadable)
                return None
            fs = edge.filesystem(node)
            if fs:
                _examine(node, fs, mounts, found.problems, name)
            return fs
    except blockdev.BlockDevError as e:
        found.problems.append(f"{e} What {name} holds was not examined.")
        return None


def _examine(node: str, fs: Filesystem, mounts: dict[str, str], problems: list[str],
             name: str) -> None:
    """Size, use and OS of the filesystem at `node`.

    Use comes from the filesystem's own metadata where a tool reads it (it counts metadata
    blocks, as a copy must), else from statvfs; the OS from a read-only mount.
    """
    if fs.type not in oses.MOUNTABLE:
        return
    usage = edge.superblock_usage(node, fs.type)
    if usage:
        fs.size, fs.used = usage
    where = mounts.get(os.path.realpath(node))
    try:
        with (contextlib.nullcontext(Path(where)) if where else oses.mounted(node, fs.type)) as root:
            if not usage:
                fs.size, fs.used = oses.used_bytes(root)
            fs.os = oses.find_os(root, fs.type)
            if fs.os is None:
                fs.boot_files = oses.boot_files(root)
    except oses.MountError as e:
        if not usage:
            problems.append(f"{e}; how much of {name} is in use is unknown, so it will be read "
                            "whole.")


@contextlib.contextmanager
def _node(disk: str, p: blockdev.Partition) -> Iterator[str]:
    """The partition's device node, or a read-only view of its bytes when the node is missing."""
    if Path(p.node).exists():
        yield p.node
    else:
        with blockdev.readonly_view(disk, p.start, p.size) as view:
            yield view


@contextlib.contextmanager
def _lv_node(lv: LogicalVolume) -> Iterator[str | None]:
    """An active LV's node, or a read-only view of a linear LV's one segment on its PV."""
    if Path(lv.path).exists():
        yield lv.path
    elif len(lv.segments) == 1:
        seg = lv.segments[0]
        with blockdev.readonly_view(seg.pv, seg.pv_start, seg.size) as view:
            yield view
    else:
        yield None


@contextlib.contextmanager
def _raid_node(raid: RaidArray) -> Iterator[str | None]:
    """An assembled array's node, or a read-only view of one RAID1 member's data."""
    if raid.path and Path(raid.path).exists():
        yield raid.path
    elif raid.level == "raid1" and raid.members:
        with blockdev.readonly_view(raid.members[0], raid.data_offset) as view:
            yield view
    else:
        yield None


def Prober(recorded: str | Path | None = None, **live) -> RecordedProber | LiveProber:
    """The one place that decides between this machine and a recording of one."""
    return RecordedProber(recorded) if recorded else LiveProber(**live)
