"""Each Windows installation recognised from its own registry, read-only: product, edition,
build, architecture and the ControlSet it boots, on real NTFS disks whose hives hivex wrote."""

from __future__ import annotations

import hashlib

import pytest

from agent.probe import probe_machine
from agent.probe.report import render
from support import run
from windowsdisk import windows_disk


def _digest(dev: str) -> str:
    return hashlib.sha256(open(run("losetup", "-nO", "BACK-FILE", dev).stdout.strip(), "rb").read()).hexdigest()


@pytest.mark.parametrize("layout, table, expected", [
    ("10", "gpt", ("Windows Server 2019 Datacenter", "6.3", "17763", "ServerDatacenter", "AMD64")),
    ("7", "dos", ("Windows Server 2008 R2 Standard", "6.1", "7601", "ServerStandard", "AMD64")),
    ("xp", "dos", ("Microsoft Windows XP", "5.1", "2600", None, "x86")),
])
def test_windows_is_recognised_from_its_registry(loopdev, tmp_path, layout, table, expected):
    dev, system = windows_disk(loopdev, tmp_path, layout, table)
    before = _digest(dev)
    machine = probe_machine(devices=[dev])
    (where, fs), = machine.os_roots()
    assert where == system
    o = fs.os
    assert (o.name, o.version, o.build, o.edition, o.arch) == expected
    assert (o.family, o.control_set, o.hostname) == ("windows", "ControlSet001", "FILESRV01")
    assert f"build {expected[2]}" in render(machine) and "boots ControlSet001" in render(machine)
    assert _digest(dev) == before   # read-only
