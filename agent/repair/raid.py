"""md RAID arrays on the disks being repaired: assemble them, so what they hold can be repaired.

The members are found by their superblocks (`mdadm --examine`, which needs no md driver) on the
disk and on the other disks the repair may touch. Where this kernel has md, the array is assembled
from them under /dev/md/xenp2v-<name> (never a name the machine's own arrays may have) and the
guest's names for it (/dev/md0, /dev/md/<name>) become aliases. Where it has none, a RAID1 is read
through one member at its data offset, read-only: enough for `--dry-run`; a real run is refused,
since writing one half of a mirror behind md's back would split it.

mdadm runs through `Mdadm`, built on one `runner`, so tests can record what would run.
"""

from __future__ import annotations

import subprocess
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent.disk import blockdev
from agent.repair.facts import RaidArray

Runner = Callable[[list[str]], subprocess.CompletedProcess]


def run_tool(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@dataclass(frozen=True)
class Member:
    node: str                    # /dev/xvda1
    partition: int | None        # its number, when it is on the disk being repaired
    info: blockdev.MdMember


class Mdadm:
    """The edge: assemble and stop arrays."""

    def __init__(self, runner: Runner = run_tool, has_md: Callable[[], bool] | None = None):
        self.runner = runner
        self.has_md = has_md or (lambda: Path("/proc/mdstat").exists())

    def assemble(self, path: str, members: list[str], readonly: bool) -> str | None:
        """Assemble (and start, even degraded); returns None, or mdadm's complaint."""
        argv = ["mdadm", "--assemble", "--run"] + (["--readonly"] if readonly else []) + [path, *members]
        try:
            proc = self.runner(argv)
        except FileNotFoundError:
            return "the tool 'mdadm' is not installed"
        if proc.returncode == 0:
            return None
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        return lines[-1].rstrip(".") if lines else f"exit status {proc.returncode}"

    def stop(self, path: str) -> None:
        self.runner(["mdadm", "--stop", path])


def members_on(disk: str) -> list[Member]:
    """The RAID members among `disk`'s partitions (or the whole disk), read from their superblocks."""
    subprocess.run(["partx", "-a", disk], capture_output=True)
    subprocess.run(["partx", "-u", disk], capture_output=True)
    table = blockdev.partition_table(disk)
    nodes = [(p.node, p.number) for p in table.partitions] if table else [(disk, None)]
    found = []
    for node, number in nodes:
        if blockdev.filesystem(node).get("TYPE") == "linux_raid_member":
            info = blockdev.md_member(node)
            if info is not None:
                found.append(Member(node, number, info))
    return found


def arrays(members: list[Member]) -> list[RaidArray]:
    """Every array with a member on the repaired disk, in the order of its first member."""
    out: dict[str, RaidArray] = {}
    for m in members:
        if m.partition is None:
            continue
        known = out.get(m.info.array_uuid)
        parts = (known.partitions if known else ()) + (m.partition,)
        out[m.info.array_uuid] = RaidArray(m.info.array_uuid, m.info.name, m.info.metadata, m.info.level, parts)
    return list(out.values())


def guest_names(array: RaidArray) -> list[str]:
    """The device names the guest may use for the array: /dev/md/<name>, and /dev/mdN for a number."""
    if not array.name:
        return []
    short = array.name.split(":")[-1]
    return [f"/dev/md/{short}"] + ([f"/dev/md{short}"] if short.isdigit() else [])


def assemble(members: list[Member], peers: list[Member], mdadm: Mdadm, stack: ExitStack,
             readonly: bool) -> tuple[dict[str, str], list[str], list[str]]:
    """Bring up every array with a member in `members`, with its members in `peers` too.

    Returns (array UUID → the device its contents are on, devices that are read-only views,
    notes).
    """
    devices: dict[str, str] = {}
    views: list[str] = []
    notes: list[str] = []
    for array in arrays(members):
        own = [m for m in members + peers if m.info.array_uuid == array.uuid]
        own = list({m.node: m for m in own}.values())
        label = f"RAID {array.level} {array.name or array.uuid}"
        if mdadm.has_md():
            path = f"/dev/md/xenp2v-{(array.name or array.uuid).split(':')[-1]}"
            why = mdadm.assemble(path, [m.node for m in own], readonly)
            if why:
                notes.append(f"{label} cannot be assembled ({why}); what it holds is not repaired.")
                continue
            stack.callback(mdadm.stop, path)
            devices[array.uuid] = path
            if len(own) < own[0].info.raid_devices:
                notes.append(f"{label} runs on {len(own)} of its {own[0].info.raid_devices} members "
                             "(the others are not on the disks given): the guest has to add them back.")
        elif array.level == "raid1":
            view = stack.enter_context(blockdev.readonly_view(own[0].node, own[0].info.data_offset))
            devices[array.uuid] = view
            views.append(view)
            notes.append(f"{label} is read through its member {own[0].node}: this machine has no md "
                         "driver, so it can be looked at but not changed.")
        else:
            notes.append(f"{label} needs the md driver, which this machine lacks: repair from the live ISO.")
    return devices, views, notes
