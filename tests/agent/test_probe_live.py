"""The probe on real loop-device machines (the recordings' builders), with no udev running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.probe import LiveProber
from agent.probe import disks as edge
from agent.probe.report import render
from support import needs_root, run

sys.path.insert(0, str(Path(__file__).parents[1] / "machines"))
import record  # noqa: E402


def _views_of(devices: list[str]) -> set[str]:
    """Loop devices over any of `devices` or their partitions (others' tests make loops too)."""
    lines = run("losetup", "-a").stdout.splitlines()
    return {line for line in lines if any(f"({dev}" in line for dev in devices)}


def _probe_mounts() -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if "p2v-probe-" in line]


@pytest.fixture
def lab():
    needs_root()
    with record.lab() as the_lab:
        yield the_lab


def _probe(lab, name):
    setup = record.build(name, lab)
    views_before = _views_of(setup.devices)
    machine = record.probe(setup)
    assert _views_of(setup.devices) == views_before, "the probe left loop devices behind"
    assert not any(setup.devices[0] in line for line in _probe_mounts()), "the probe left mounts"
    assert machine.problems == []
    return setup, machine


def test_bios_mbr(lab):
    setup, machine = _probe(lab, "bios-mbr")
    (disk,) = machine.disks
    assert disk.path == setup.devices[0] and disk.size == 16 * record.GiB
    assert disk.table == "dos" and disk.table_id == "0x5e1f00d1"
    assert [p.number for p in disk.partitions] == [1, 2, 5]
    root, extended, swap = disk.partitions
    assert root.start == 1 << 20 and root.size == 12 * record.GiB and root.bootable
    assert root.partuuid == "5e1f00d1-01" and extended.fs is None
    # The UUID comes from the device itself, with no udev: the filesystem's own tool agrees.
    assert f"Filesystem UUID:          {root.fs.uuid}" in run("dumpe2fs", "-h", root.path).stdout
    assert (root.fs.type, root.fs.label) == ("ext4", "root")
    assert 0 < root.fs.used < root.fs.size <= root.size
    assert (swap.fs.type, swap.fs.label) == ("swap", "swap")
    os_ = root.fs.os
    assert (os_.family, os_.id, os_.version, os_.hostname) == ("linux", "debian", "12", "tower")
    assert os_.kernels == ["6.1.0-18-amd64", "6.1.0-21-amd64"]


def test_uefi_gpt_lvm(lab):
    _, machine = _probe(lab, "uefi-gpt-lvm")
    (disk,) = machine.disks
    esp, boot, pv = disk.partitions
    assert disk.table == "gpt" and esp.type == record.ESP and esp.name == "EFI System Partition"
    assert esp.fs.type == "vfat" and esp.fs.label == "ESP" and esp.fs.used > 0
    assert boot.fs.os is None and boot.fs.boot_files == ["vmlinuz-5.14.0-362.8.1.el9_3.x86_64"]
    assert pv.fs.type == "LVM2_member"
    (vg,) = machine.volume_groups
    assert vg.name == "rl" and vg.pvs == [pv.path]
    lvs = {lv.name: lv for lv in vg.lvs}
    assert lvs["root"].fs.type == "xfs" and lvs["swap"].fs.type == "swap"
    (segment,) = lvs["root"].segments
    assert segment.pv == pv.path and segment.size == 40 * record.GiB
    os_ = lvs["root"].fs.os
    assert (os_.id, os_.id_like, os_.hostname) == ("rocky", ["rhel", "centos", "fedora"],
                                                   "db01.example.com")
    assert [where for where, _ in machine.os_roots()] == ["/dev/rl/root"]


def test_md_raid1(lab):
    _, machine = _probe(lab, "md-raid1")
    assert len(machine.disks) == 2
    assert [d.partitions[0].fs.type for d in machine.disks] == ["linux_raid_member"] * 2
    (raid,) = machine.raids
    assert raid.level == "raid1" and raid.name == "mirror:0" and raid.raid_devices == 2
    assert raid.members == [d.partitions[0].path for d in machine.disks]
    assert raid.data_offset == 1 << 20
    assert raid.fs.type == "ext4" and raid.fs.os.name == "Ubuntu 22.04.4 LTS"


def test_nvme_btrfs_subvolume(lab):
    _, machine = _probe(lab, "nvme")
    esp, root, swap = machine.disks[0].partitions
    assert (esp.fs.type, root.fs.type, swap.fs.type) == ("vfat", "btrfs", "swap")
    assert root.fs.label == "ubuntu" and 0 < root.fs.used < root.fs.size
    assert root.fs.os.root == "/@" and root.fs.os.kernels == ["6.8.0-31-generic"]


def test_boot_medium_is_found_and_left_out(lab):
    setup, machine = _probe(lab, "two-disks-usb")
    first, second, stick = setup.devices
    assert [d.path for d in machine.disks] == [first, second]
    assert machine.boot_medium.path == stick
    assert all(stick not in where for where, _ in machine.filesystems())
    with pytest.raises(ValueError, match="is the boot medium"):
        machine.select_disks([stick])
    data = second.removeprefix("/dev/")
    assert machine.select_disks([data]) == [machine.disks[1]]
    assert machine.disks[1].partitions[0].fs.type == "xfs"
    assert machine.disks[1].partitions[0].fs.os is None


def test_windows_version_from_registry(lab):
    _, machine = _probe(lab, "windows")
    reserved, system = machine.disks[0].partitions
    assert reserved.fs.label == "System Reserved" and reserved.fs.os is None
    os_ = system.fs.os
    assert (os_.family, os_.name, os_.build, os_.hostname) == (
        "windows", "Windows Server 2019 Standard", "17763", "FILESRV01")
    assert 0 < system.fs.used < system.fs.size


def test_partition_without_node_is_read_through_a_view(loopdev):
    dev = loopdev(64 << 20)
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    subprocess.run(["partx", "-a", dev], capture_output=True)
    run("mkfs.ext4", "-q", "-L", "hidden", f"{dev}p1")
    run("partx", "-d", dev)  # as when nothing made the partition nodes
    assert not Path(f"{dev}p1").exists()
    machine = LiveProber(devices=[dev], medium=Path("/nonexistent")).machine()
    (part,) = machine.disks[0].partitions
    assert part.path == f"{dev}p1" and part.fs.label == "hidden" and part.fs.used > 0


def test_probe_command_saves_what_it_prints(loopdev, tmp_path):
    dev = loopdev(64 << 20)
    run("mkfs.ext4", "-q", "-L", "whole", dev)
    saved = tmp_path / "box.json"
    out = run(sys.executable, "-m", "agent.cli", "probe", "--disks", dev, "--save", str(saved))
    assert f"{dev.removeprefix('/dev/')}" in out.stdout and '"whole"' in out.stdout
    data = json.loads(saved.read_text())
    assert data["disks"][0]["path"] == dev and data["disks"][0]["fs"]["label"] == "whole"
    replay = run(sys.executable, "-m", "agent.cli", "probe", "--machine", str(saved))
    assert replay.stdout == out.stdout


def test_luks_partition_is_listed_not_opened(loopdev):
    dev = loopdev(64 << 20)
    run("sfdisk", "-q", dev, input="label: gpt\nsize=32M,type=L\n,,L\n")
    subprocess.run(["partx", "-a", dev], capture_output=True)
    plain, secret = f"{dev}p1", f"{dev}p2"
    run("mkfs.ext4", "-q", plain)
    run("cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", secret, "-", input="passphrase")
    machine = LiveProber(devices=[dev], medium=Path("/nonexistent")).machine()
    (luks,) = machine.luks
    assert luks.device == secret and luks.version == "2"
    assert luks.uuid == run("cryptsetup", "luksUUID", secret).stdout.strip()
    assert machine.disks[0].partitions[1].fs.type == "crypto_LUKS"
    assert machine.problems == []


def test_what_cannot_be_read_is_reported_not_fatal(loopdev):
    dev = loopdev(96 << 20)
    run("lvm", "pvcreate", "-q", "--devices", dev, dev)
    run("lvm", "vgcreate", "-q", "--devices", dev, "vgsplit", dev)
    no_dm = ["--driverloaded", "n", "--devices", dev, "-q"]
    run("lvm", "lvcreate", *no_dm, "-an", "-Zn", "-L", "8M", "-n", "first", "vgsplit")
    run("lvm", "lvcreate", *no_dm, "-an", "-Zn", "-L", "8M", "-n", "second", "vgsplit")
    run("lvm", "lvextend", *no_dm, "-L", "16M", "vgsplit/first")  # now in two segments
    machine = LiveProber(devices=[dev], medium=Path("/nonexistent")).machine()
    (vg,) = machine.volume_groups
    first = next(lv for lv in vg.lvs if lv.name == "first")
    assert len(first.segments) == 2 and first.fs is None
    assert machine.problems == [
        "/dev/vgsplit/first spans several segments and is not active; "
        "its filesystem was not examined."]
    assert "Problems:\n  - /dev/vgsplit/first spans several segments" in render(machine)


def test_this_machine_with_no_disk_named():
    needs_root()
    machine = LiveProber().machine()
    root = edge.boot_device(Path("/nonexistent"))  # no live medium here: the device behind /
    if root:
        assert machine.boot_medium.path == edge.parent_disk(root)
        assert all(d.path != machine.boot_medium.path for d in machine.disks)
    assert not any(d.name.startswith(("loop", "zram", "ram", "dm-", "md")) for d in machine.disks)
    assert machine.cpu.threads == os.cpu_count() and machine.memory > 0
    assert machine.firmware in ("bios", "uefi")
    assert render(machine).startswith("Machine:")
