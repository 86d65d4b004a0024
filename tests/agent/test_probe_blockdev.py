"""agent.disk.blockdev on real loop devices: no udev, so everything comes from the devices themselves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.disk import blockdev
from support import rescan, run

sys.path.insert(0, str(Path(__file__).parents[1] / "machines"))
import md_superblock  # noqa: E402

MiB = 1024 * 1024
LVM_NO_DM = ("--driverloaded", "n")  # this kernel has no device-mapper: write LVM metadata only


def test_gpt_disk_with_filesystems_and_lvm(loopdev):
    dev = loopdev(200 * MiB)
    run("sfdisk", "-q", dev, input="label: gpt\n,50M,U\nsize=60M,type=L,name=root\n,,E6D6D379-F507-44C2-A23C-238F2A3DF928\n")
    esp, root, pv = rescan(dev)
    run("mkfs.vfat", "-n", "ESP", esp)
    run("mkfs.ext4", "-q", "-L", "root", root)
    run("lvm", "pvcreate", "-q", "--devices", pv, pv)
    run("lvm", "vgcreate", "-q", "--devices", pv, "vgtest", pv)
    run("lvm", "lvcreate", *LVM_NO_DM, "--devices", pv, "-q", "-an", "-Zn", "-L", "20M", "-n", "home", "vgtest")

    assert blockdev.disk_size(dev) == 200 * MiB
    assert blockdev.sector_sizes(dev) == (512, 512)

    table = blockdev.partition_table(dev)
    assert table.label == "gpt" and table.sector_size == 512
    assert [p.node for p in table.partitions] == [esp, root, pv]
    assert [p.number for p in table.partitions] == [1, 2, 3]
    assert table.partitions[0].start == 1 * MiB and table.partitions[0].size == 50 * MiB
    assert table.partitions[0].type == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert table.partitions[1].name == "root"

    fs = blockdev.filesystem(root)
    assert fs["TYPE"] == "ext4" and fs["LABEL"] == "root"
    assert fs["PART_ENTRY_UUID"] == table.partitions[1].partuuid
    assert run("dumpe2fs", "-h", root).stdout.count(fs["UUID"]) == 1
    assert blockdev.filesystem(esp)["TYPE"] == "vfat"
    assert blockdev.filesystem(pv)["TYPE"] == "LVM2_member"

    (vg,) = blockdev.lvm_layout([pv])
    assert vg.name == "vgtest" and vg.pvs == [pv]
    (lv,) = vg.lvs
    assert (lv.name, lv.size, lv.path) == ("home", 20 * MiB, "/dev/vgtest/home")
    (seg,) = lv.segments
    assert seg["pv"] == pv and seg["start"] == 0 and seg["size"] == 20 * MiB
    assert seg["pv_start"] == 1 * MiB  # LVM's default data area offset
    assert blockdev.lvm_layout([esp]) == []


def test_mbr_disk_with_logical_partitions(loopdev):
    dev = loopdev(64 * MiB)
    run("sfdisk", "-q", dev, input="label: dos\nlabel-id: 0x1234abcd\n,20M,83,*\n,,5\n,10M,82\n,,7\n")
    nodes = rescan(dev)
    table = blockdev.partition_table(dev)
    assert table.label == "dos" and table.id == "0x1234abcd"
    by_number = {p.number: p for p in table.partitions}
    assert sorted(by_number) == [1, 2, 5, 6]
    assert by_number[1].bootable and not by_number[5].bootable
    assert by_number[1].type == "83" and by_number[5].type == "82"
    assert by_number[5].partuuid == "1234abcd-05"
    assert nodes == [p.node for p in table.partitions]
    run("mkswap", by_number[5].node)
    swap = blockdev.filesystem(by_number[5].node)
    assert swap["TYPE"] == "swap" and swap["PART_ENTRY_UUID"] == "1234abcd-05"


def test_blank_disk_and_missing_device(loopdev):
    dev = loopdev(8 * MiB)
    assert blockdev.partition_table(dev) is None
    assert blockdev.filesystem(dev) == {}
    assert blockdev.md_member(dev) is None
    with pytest.raises(blockdev.BlockDevError, match="/dev/nonexistent"):
        blockdev.disk_size("/dev/nonexistent")
    with pytest.raises(blockdev.BlockDevError, match="partition table of /dev/nonexistent"):
        blockdev.partition_table("/dev/nonexistent")


def test_md_raid1_members(loopdev):
    a, b = loopdev(40 * MiB, "a"), loopdev(40 * MiB, "b")
    offset = md_superblock.write_raid1([a, b], "box:0")
    members = [blockdev.md_member(a), blockdev.md_member(b)]
    assert {m.array_uuid for m in members} == {members[0].array_uuid}
    assert [m.role for m in members] == [0, 1]
    assert members[0].level == "raid1" and members[0].raid_devices == 2
    assert members[0].metadata == "1.2" and members[0].data_offset == offset
    assert blockdev.filesystem(a)["TYPE"] == "linux_raid_member"
