"""The Windows repair on real NTFS disks (mkntfs on loop devices, GPT and MBR as Windows Setup
lays them out) whose SYSTEM hive hivex wrote as XP, 7/2008 R2 and 10/2019 hold it: every value set
is read back with regipy (not the library that wrote it), in every ControlSet; a second run
changes nothing; the hive's backup is the hive as it was.

No Windows boots here: these prove the registry a Windows VM needs, not that it starts.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
from pathlib import Path

import pytest
from regipy.registry import RegistryHive

from agent.cli import main
from support import run
from windowsdisk import windows_disk

SETS = ("ControlSet001", "ControlSet002")


def _hive_of(system: str, tmp_path: Path, name: str = "SYSTEM") -> tuple[Path, RegistryHive]:
    """A copy of the C: hive `name`, for regipy (read through ntfs-3g, nothing mounted after)."""
    out = tmp_path / f"{name}-{len(list(tmp_path.glob(name + '-*')))}"
    out.write_bytes(subprocess.run(["ntfscat", system, f"/Windows/System32/config/{name}"],
                                   capture_output=True, check=True).stdout)
    return out, RegistryHive(str(out))


def value(hive: RegistryHive, key: str, name: str):
    try:
        return hive.get_key("\\" + key).get_value(name, case_sensitive=False)
    except Exception:  # noqa: BLE001 - regipy raises its own for a missing key
        return None


def _repair(dev: str, *more: str) -> int:
    return main(["repair", "--disk", dev, *more])


@pytest.mark.parametrize("layout", ["10", "7"])
def test_bios_vm_gets_the_ide_stack_at_boot_in_every_control_set(loopdev, tmp_path, capsys, layout):
    dev, system = windows_disk(loopdev, tmp_path, layout, "dos")
    assert _repair(dev) == 0
    out = capsys.readouterr().out
    assert "the VM boots with BIOS" in out
    _, hive = _hive_of(system, tmp_path)
    for cs in SETS:
        for service in ("intelide", "pciide", "atapi"):
            assert value(hive, rf"{cs}\Services\{service}", "Start") == 0, (cs, service)
            assert value(hive, rf"{cs}\Services\{service}", "Type") == 1   # left as it was
        # Another hypervisor's tools are off; a driver the mouse class loads as a filter is not.
        assert value(hive, rf"{cs}\Services\vmci", "Start") == 4
        assert value(hive, rf"{cs}\Services\vmhgfs", "Start") == 4
        assert value(hive, rf"{cs}\Services\VMTools", "Start") == 4
        assert value(hive, rf"{cs}\Services\vmmouse", "Start") == 3
        # What the repair has no business with is untouched.
        assert value(hive, rf"{cs}\Services\disk", "Start") == 0
        assert value(hive, rf"{cs}\Control\ComputerName\ComputerName", "ComputerName") == "FILESRV01"
    if layout == "10":
        for cs in SETS:
            assert value(hive, rf"{cs}\Services\intelide\StartOverride", "0") == 0
            assert value(hive, rf"{cs}\Services\stornvme", "Start") == 3   # BIOS VM: no NVMe
            assert value(hive, rf"{cs}\Services\storahci", "Start") == 0
    else:
        for cs in SETS:
            cddb = rf"{cs}\Control\CriticalDeviceDatabase"
            assert value(hive, rf"{cddb}\pci#ven_8086&dev_7010", "Service") == "intelide"
            assert value(hive, rf"{cddb}\pci#ven_8086&dev_7010", "ClassGUID") == \
                "{4D36E96A-E325-11CE-BFC1-08002BE10318}"
            assert value(hive, rf"{cddb}\primary_ide_channel", "Service") == "atapi"
            assert value(hive, rf"{cddb}\gendisk", "Service") == "disk"


def test_uefi_vm_gets_nvme_at_boot_and_a_second_run_changes_nothing(loopdev, tmp_path, capsys):
    dev, system = windows_disk(loopdev, tmp_path, "10", "gpt")
    before, _ = _hive_of(system, tmp_path)
    assert _repair(dev) == 0
    out = capsys.readouterr().out
    assert "the VM boots with UEFI" in out
    assert r"ControlSet002\Services\stornvme\Start: dword:3 -> dword:0" in out
    assert r"ControlSet001\Services\stornvme\StartOverride\0: dword:3 -> dword:0" in out
    assert '-"Start"=dword:00000003\n+"Start"=dword:00000000\n' in out   # the .reg diff
    assert "XenServer PV drivers are not staged" in out
    after, hive = _hive_of(system, tmp_path)
    for cs in SETS:
        assert value(hive, rf"{cs}\Services\stornvme", "Start") == 0
        assert value(hive, rf"{cs}\Services\stornvme\StartOverride", "0") == 0
        assert value(hive, rf"{cs}\Services\intelide", "Start") == 3   # UEFI VM: no IDE
        assert value(hive, rf"{cs}\Services\vmci", "Start") == 4

    # The backup is the hive as it was; the log says what changed.
    mnt = tmp_path / "look"
    mnt.mkdir()
    run("mount", "-t", "ntfs-3g", "-o", "ro", system, str(mnt))
    try:
        backups = list((mnt / "Windows/xenp2v/backups").glob("*/SYSTEM"))
        assert len(backups) == 1
        assert hashlib.sha256(backups[0].read_bytes()).digest() == \
            hashlib.sha256(before.read_bytes()).digest()
        assert "stornvme\\Start: dword:3 -> dword:0" in (mnt / "Windows/xenp2v/repair.log").read_text()
    finally:
        run("umount", str(mnt))

    assert _repair(dev) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "already repaired" in out
    again, _ = _hive_of(system, tmp_path)
    assert again.read_bytes() == after.read_bytes()


def test_xp_gets_microsofts_ide_fix_and_says_what_is_missing(loopdev, tmp_path, capsys):
    dev, system = windows_disk(loopdev, tmp_path, "xp", "dos")
    assert _repair(dev) == 0
    out = capsys.readouterr().out
    # pciide.sys is not there: said, not invented.
    assert "Windows has no pciide driver (pciide.sys is not in \\Windows\\System32\\drivers)" in out
    _, hive = _hive_of(system, tmp_path)
    for cs in SETS:
        # intelide.sys is there but not installed: installed as a boot driver as Microsoft's fix does.
        svc = rf"{cs}\Services\intelide"
        assert (value(hive, svc, "Start"), value(hive, svc, "Type"), value(hive, svc, "ErrorControl"),
                value(hive, svc, "Group"), value(hive, svc, "ImagePath")) == \
            (0, 1, 1, "System Bus Extender", r"system32\drivers\intelide.sys")
        assert value(hive, rf"{cs}\Services\pciide", "Start") is None
        assert value(hive, rf"{cs}\Control\CriticalDeviceDatabase\pci#cc_0101", "Service") is None
        cddb = rf"{cs}\Control\CriticalDeviceDatabase"
        for device, service in (("pci#ven_8086&dev_7010", "intelide"), ("pci#ven_8086&dev_7111", "intelide"),
                                ("secondary_ide_channel", "atapi"),
                                ("*pnp0600", "atapi")):
            assert value(hive, rf"{cddb}\{device}", "Service") == service, device
        assert value(hive, rf"{cddb}\pci#ven_1000&dev_0030", "Service") == "symmpi"   # kept


def test_dry_run_shows_the_plan_and_writes_nothing(loopdev, tmp_path, capsys):
    dev, system = windows_disk(loopdev, tmp_path, "7", "gpt")
    before, _ = _hive_of(system, tmp_path)
    assert _repair(dev, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "This Windows has no inbox NVMe driver" in out
    assert "ControlSet001\\Services\\vmci\\Start: dword:0 -> dword:4" in out
    after, _ = _hive_of(system, tmp_path)
    assert after.read_bytes() == before.read_bytes()


def test_a_hive_with_pending_log_writes_is_refused(loopdev, tmp_path, capsys):
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    mnt = tmp_path / "dirty"
    mnt.mkdir()
    run("mount", "-t", "ntfs-3g", system, str(mnt))
    try:
        hive = mnt / "Windows/System32/config/SYSTEM"
        data = bytearray(hive.read_bytes())
        struct.pack_into("<I", data, 4, struct.unpack_from("<I", data, 4)[0] + 1)
        hive.write_bytes(bytes(data))
    finally:
        run("umount", str(mnt))
    before, _ = _hive_of(system, tmp_path)
    assert _repair(dev) == 1
    assert "changes still in its transaction logs" in capsys.readouterr().err
    after, _ = _hive_of(system, tmp_path)
    assert after.read_bytes() == before.read_bytes()
