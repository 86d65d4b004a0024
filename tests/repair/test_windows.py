"""The Windows repair on real NTFS disks (mkntfs on loop devices, GPT and MBR as Windows Setup
lays them out) whose SYSTEM hive hivex wrote as XP, 7/2008 R2 and 10/2019 hold it: every value set
is read back with regipy (not the library that wrote it), in every ControlSet; a second run
changes nothing; the hive's backup is the hive as it was.

No Windows boots here: these prove the registry a Windows VM needs, not that it starts.
"""

from __future__ import annotations

import hashlib
import re
import os
import struct
import subprocess
import time
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


def _edit(system: str, tmp_path: Path, change) -> None:
    """Mount C: read-write, call `change(root)`, unmount."""
    mnt = tmp_path / "edit"
    mnt.mkdir(exist_ok=True)
    _mount(system, mnt)
    try:
        change(mnt)
    finally:
        run("umount", str(mnt))


def _mount(system: str, mnt: Path, *options: str) -> None:
    """ntfs-3g opens the device exclusively: on a shared machine another program may hold it
    for a moment (a scan of every block device), so a busy mount is tried again."""
    for attempt in range(3):
        proc = subprocess.run(["mount", "-t", "ntfs-3g", *(["-o", *options] if options else []),
                               system, str(mnt)], capture_output=True, text=True)
        if proc.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"mount {system}: {proc.stderr}")


def _tree(system: str, tmp_path: Path) -> list[str]:
    """Every path on C:, read through a read-only mount."""
    mnt = tmp_path / "tree"
    mnt.mkdir(exist_ok=True)
    _mount(system, mnt, "ro")
    try:
        return sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*"))
    finally:
        run("umount", str(mnt))


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_hibernated_windows_is_refused_with_what_to_do(loopdev, tmp_path, capsys, dry_run):
    # Hibernation or Fast Startup left C: mounted in the hibernated session: ntfs-3g mounts it
    # read-only only, and a change would be lost or break the resume.
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    _edit(system, tmp_path, lambda root: (root / "hiberfil.sys").write_bytes(b"HIBR" + bytes(8188)))
    before, _ = _hive_of(system, tmp_path)
    tree = _tree(system, tmp_path)
    assert _repair(dev, *(["--dry-run"] if dry_run else [])) == 1
    err = capsys.readouterr().err
    assert "holds a hibernated Windows" in err and "shut it down fully" in err, err
    assert "Nothing was changed" in err
    after, _ = _hive_of(system, tmp_path)
    assert after.read_bytes() == before.read_bytes()
    assert _tree(system, tmp_path) == tree


def test_a_windows_whose_log_needs_replaying_is_refused(loopdev, tmp_path, capsys):
    dev, system = windows_disk(loopdev, tmp_path, "7", "dos")
    info = run("ntfsinfo", "-i", "2", "-v", system).stdout
    lcn = int(info.split("Runlist:")[1].splitlines()[1].split()[1], 16)
    cluster = int(run("ntfsinfo", "-m", system).stdout.split("Cluster Size:")[1].split()[0])
    page = bytearray(4096)   # a restart page whose log client is still in use: Windows lost power
    struct.pack_into("<4sHHQIIHhh", page, 0, b"RSTR", 0x1E, 9, 0, 4096, 4096, 0x30, 1, 1)
    struct.pack_into("<QHHHH", page, 0x30, 20, 1, 0xFFFF, 0, 0)
    with open(system, "r+b") as f:
        f.seek(lcn * cluster)
        f.write(bytes(page) * 2)
    before, _ = _hive_of(system, tmp_path)
    assert _repair(dev) == 1
    err = capsys.readouterr().err
    assert "$LogFile needs replaying" in err and "shut it down fully" in err, err
    after, _ = _hive_of(system, tmp_path)
    assert after.read_bytes() == before.read_bytes()


def test_a_full_volume_is_refused_and_left_as_it_was(loopdev, tmp_path, capsys):
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")

    def fill(root: Path) -> None:
        with open(root / "filler.bin", "wb") as f:
            try:
                while True:
                    f.write(bytes(1 << 20))
                    f.flush()
            except OSError:
                pass
    _edit(system, tmp_path, fill)
    before, _ = _hive_of(system, tmp_path)
    tree = _tree(system, tmp_path)
    assert _repair(dev) == 1
    err = capsys.readouterr().err
    assert "Cannot back up the SYSTEM hive" in err and "No space left on device" in err, err
    assert "free" in err and "Nothing was changed" in err
    after, _ = _hive_of(system, tmp_path)
    assert after.read_bytes() == before.read_bytes()
    assert _tree(system, tmp_path) == tree   # no half-written backup, no empty folders


def test_xp_spelled_in_capitals_gets_its_backups_and_log_in_its_own_windows_folder(loopdev, tmp_path,
                                                                                 capsys):
    # XP and 2003 install into C:\WINDOWS; ntfs-3g is case-sensitive, Windows is not: a second
    # folder "Windows" beside it would be a name Windows cannot tell apart.
    dev, system = windows_disk(loopdev, tmp_path, "xp", "dos")
    _edit(system, tmp_path, lambda root: (root / "Windows").rename(root / "WINDOWS"))
    assert _repair(dev) == 0
    capsys.readouterr()
    tree = _tree(system, tmp_path)
    top = [p for p in tree if "/" not in p]
    assert [p for p in top if p.lower() == "windows"] == ["WINDOWS"], top
    assert "WINDOWS/xenp2v/repair.log" in tree
    assert any(p.startswith("WINDOWS/xenp2v/backups/") and p.endswith("/SYSTEM") for p in tree)


@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_a_damaged_hive_is_refused_with_what_to_do(loopdev, tmp_path, capsys, damage):
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")

    def spoil(root: Path) -> None:
        hive = root / "Windows/System32/config/SYSTEM"
        data = bytearray(hive.read_bytes())
        if damage == "garbled":
            data[4096 + 32:4096 + 512] = bytes(range(240)) * 2   # the first bin's cells
        else:
            del data[6000:]
        hive.write_bytes(bytes(data))
    _edit(system, tmp_path, spoil)
    before = _raw_hive(system)
    tree = _tree(system, tmp_path)
    assert _repair(dev) == 1
    err = capsys.readouterr().err
    assert "is damaged" in err and "chkdsk" in err and "Nothing was changed" in err, err
    assert _raw_hive(system) == before
    assert _tree(system, tmp_path) == tree


def _raw_hive(system: str) -> bytes:
    return subprocess.run(["ntfscat", system, "/Windows/System32/config/SYSTEM"],
                          capture_output=True, check=True).stdout


def test_the_reg_diff_shows_each_key_with_its_own_old_and_new_values(loopdev, tmp_path, capsys):
    dev, _system = windows_disk(loopdev, tmp_path, "10", "dos")
    assert _repair(dev, "--dry-run") == 0
    out = capsys.readouterr().out
    diff = out[out.index("--- a/SYSTEM.reg"):]
    hklm = r"HKEY_LOCAL_MACHINE\SYSTEM"
    for cs in SETS:
        # Each key's lines together: a difflib diff of the whole text paired equal lines of
        # different keys, showing vmci's Start=0 kept and intelide's new Start=0 removed.
        assert (f" [{hklm}\\{cs}\\Services\\vmci]\n-\"Start\"=dword:00000000\n"
                f"+\"Start\"=dword:00000004\n") in diff, diff
        assert (f" [{hklm}\\{cs}\\Services\\intelide]\n-\"Start\"=dword:00000003\n"
                f"+\"Start\"=dword:00000000\n") in diff, diff
    # A unified diff patch(1) takes: applied to the old values, it gives the new ones.
    old = tmp_path / "SYSTEM.reg"
    old.write_text("".join(line[1:] + "\n" for line in diff.splitlines()[2:]
                           if line[:1] in " -"))
    new = "".join(line[1:] + "\n" for line in diff.splitlines()[2:] if line[:1] in " +")
    (tmp_path / "reg.diff").write_text(diff.split("\n== ")[0].rstrip("\n") + "\n")
    run("patch", "-s", str(old), str(tmp_path / "reg.diff"))
    assert old.read_text() == new


def test_a_bitlocker_windows_volume_is_named_with_what_to_do(loopdev, tmp_path, capsys):
    # The copy of a BitLocker C: stays encrypted: its registry cannot be read or changed here.
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    with open(system, "r+b") as f:   # what BitLocker writes over the boot sector's OEM id
        f.seek(3)
        f.write(b"-FVE-FS-")
    assert _repair(dev) == 1
    err = capsys.readouterr().err
    assert f"{system} is encrypted with BitLocker" in err, err
    assert "manage-bde -off" in err and "recovery key" in err
    assert "Check that the image was restored" not in err


def test_an_ntfs_that_cannot_be_mounted_is_named_not_taken_for_no_windows(loopdev, tmp_path, capsys):
    # Another program holds C: (ntfs-3g opens it exclusively and fails): the repair said the
    # disk held no Windows and to check the restore.
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    held = os.open(system, os.O_RDONLY | os.O_EXCL)
    try:
        assert _repair(dev, "--dry-run") == 1
    finally:
        os.close(held)
    err = capsys.readouterr().err
    assert f"{system} (NTFS) could not be looked at" in err and "busy" in err, err
    assert "Check that the image was restored" not in err
    assert _repair(dev, "--dry-run") == 0   # free again: found


def test_a_windows_without_its_system_hive_is_named(loopdev, tmp_path, capsys):
    dev, system = windows_disk(loopdev, tmp_path, "7", "dos")
    _edit(system, tmp_path, lambda root: (root / "Windows/System32/config/SYSTEM").unlink())
    tree = _tree(system, tmp_path)
    assert _repair(dev) == 1
    err = capsys.readouterr().err
    assert f"{system} holds a Windows folder but no registry hive Windows\\System32\\config\\SYSTEM" in err, err
    assert "Check that the image was restored" not in err
    assert _tree(system, tmp_path) == tree


PLAN_LINE = re.compile(r"^   HKEY_LOCAL_MACHINE\\SYSTEM\\(.+)\\([^\\]+): (.+) -> (.+?)    # ", re.M)


@pytest.mark.parametrize("layout,table", [("xp", "dos"), ("7", "dos"), ("7", "gpt"), ("10", "dos"),
                                          ("10", "gpt")])
def test_every_value_the_plan_names_reads_back_with_hivex_as_planned(loopdev, tmp_path, capsys,
                                                                     layout, table):
    # hivexget (libhivex's own tool, not the repair's ctypes edge) reads each value the plan's
    # `key\value: old -> new` lines name: its type (dword, REG_SZ, REG_EXPAND_SZ as str(2)) and
    # its data, a dword as little-endian 32 bits.
    dev, system = windows_disk(loopdev, tmp_path, layout, table)
    assert _repair(dev) == 0
    planned = PLAN_LINE.findall(capsys.readouterr().out)
    assert len(planned) >= 6, planned   # 7 on UEFI: no stornvme, the other hypervisors only
    hive = tmp_path / "SYSTEM-read"
    hive.write_bytes(_raw_hive(system))
    keys: dict[str, str] = {}
    for key, name, _old, new in planned:
        if key not in keys:
            keys[key] = subprocess.run(["hivexget", str(hive), key], capture_output=True,
                                       text=True, check=True).stdout
        if new.startswith("dword:"):
            want = f'"{name}"=dword:{int(new[6:]):08x}'
        elif name == "ImagePath":
            want = f'"{name}"=str(2):{new.replace(chr(92), chr(92) * 2)}'
        else:
            want = f'"{name}"={new.replace(chr(92), chr(92) * 2)}'
        assert want in keys[key].splitlines(), (key, want, keys[key])
    raw = subprocess.run(["hivexsh", "-f", "/dev/null", str(hive)], capture_output=True)
    assert raw.returncode == 0   # libhivex opens the written hive
