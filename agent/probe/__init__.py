"""The probe: what this machine is and what its disks hold, as data.

For the capture, repair and TUI code, the whole interface is:

    from agent.probe import probe_machine
    machine = probe_machine()                      # this machine (needs root)
    machine = probe_machine(recorded="box.json")   # a recorded one, anywhere
    machine = probe_machine(devices=["/dev/loop3"])  # only these disks (tests, --disks)

- ``machine.disks``: the disks that can be migrated, the boot medium already left out
  (``machine.boot_medium`` is that one, or None). ``machine.select_disks(settings.disks)`` picks
  the ones `p2v.disks` names, or raises ValueError with a sentence.
- ``Disk``: ``name``, ``path``, ``size``, ``logical_sector``/``physical_sector``, ``model``,
  ``serial``, ``wwn``, ``transport``, ``removable``, ``table`` ("gpt"/"dos"/None), ``partitions``,
  ``fs`` (a whole-disk filesystem, PV or RAID member).
- ``Partition``: ``path``, ``number``, ``start``/``size`` in bytes, ``type``, ``partuuid``, ``fs``.
- ``Filesystem``: ``type`` (blkid TYPE), ``uuid``, ``label``, ``size``, ``used`` (bytes, None when
  unknown), ``os`` (an ``OperatingSystem``: family, name, id, version, hostname, kernels, root).
- ``machine.volume_groups`` (LVs with byte-offset segments on their PVs), ``machine.raids``
  (md arrays with members and data offset), ``machine.luks``, ``machine.multipaths``.
- ``machine.filesystems()``, ``machine.os_roots()``: (where, Filesystem) pairs.
- ``machine.system_uuid`` (SMBIOS, lower case), ``vendor``, ``product``, ``serial``,
  ``firmware`` ("uefi"/"bios"), ``is_virtual``, ``cpu`` (sockets, cores, threads), ``memory``
  (bytes), ``nics`` (name, mac, driver, speed, link, addresses, altnames, udev_names).
- ``machine.problems``: what could not be read, as sentences to show.
- ``machine.to_json()`` / ``Machine.from_json()``: a recorded machine is that JSON;
  ``report.render(machine)`` is the readable report `p2v-agent probe` prints.
"""

from __future__ import annotations

from pathlib import Path

from agent.probe.model import (
    Cpu, Disk, Filesystem, LogicalVolume, LuksVolume, LvmSegment, Machine, Multipath, Nic,
    OperatingSystem, Partition, RaidArray, VolumeGroup,
)
from agent.probe.prober import LiveProber, ProbeError, Prober, RecordedProber

__all__ = [
    "Cpu", "Disk", "Filesystem", "LiveProber", "LogicalVolume", "LuksVolume", "LvmSegment",
    "Machine", "Multipath", "Nic", "OperatingSystem", "Partition", "ProbeError", "Prober",
    "RaidArray", "RecordedProber", "VolumeGroup", "probe_machine",
]


def probe_machine(recorded: str | Path | None = None, **live) -> Machine:
    """This machine (keyword arguments go to LiveProber), or the recording at `recorded`."""
    return Prober(recorded, **live).machine()
