"""agent.windows.winwarn: the Windows warnings before the transfer, from real loop disks."""

from __future__ import annotations

import time
from pathlib import Path

from agent.windows import winwarn
from agent.probe import probe_machine
from support import rescan, run

MiB = 1 << 20
MACHINES = Path(__file__).resolve().parents[1] / "machines"


def test_dynamic_disk_and_bitlocker_are_said_from_the_probe_and_the_boot_sector(loopdev):
    dev = loopdev(64 * MiB, "win")
    run("sfdisk", "-q", dev, input="label: dos\n,16MiB,42\n,,7\n")
    ldm, encrypted = rescan(dev)
    with open(encrypted, "r+b") as f:            # a BitLocker volume's boot sector OEM id
        f.write(b"\xebR\x90-FVE-FS-" + bytes(501))
    started = time.monotonic()
    found = winwarn.check(probe_machine(devices=[dev]))
    print(f"winwarn.check: {time.monotonic() - started:.2f} s")
    said = found[dev]
    assert said[0].startswith(f"{ldm} is part of a Windows dynamic disk (LDM)")
    assert said[1].startswith(f"{encrypted} is encrypted with BitLocker")
    assert "recovery key" in said[1] and len(said) == 2


def test_a_recorded_machine_is_not_looked_at_here():
    machine = probe_machine(recorded=MACHINES / "windows.json")
    assert winwarn.check(machine) == {"/dev/sda": []}
