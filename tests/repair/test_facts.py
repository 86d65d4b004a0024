"""Mapping old device and NIC names onto the VM: from the disk alone, and from a job's inventory."""

from __future__ import annotations

from agent.repair.facts import (Filesystem, Reference, names_from_disk, names_from_inventory,
                                names_on_the_vms_disks, partition_ref)

ROOT = Filesystem("/dev/xvda2", "ext4", "root-uuid", None, 2)
BOOT = Filesystem("/dev/xvda1", "ext4", "boot-uuid", None, 1)


def test_partition_names_of_every_kind():
    assert partition_ref("/dev/sda2") == ("sda", 2)
    assert partition_ref("/dev/hda1") == ("hda", 1)
    assert partition_ref("/dev/xvdb10") == ("xvdb", 10)
    assert partition_ref("/dev/nvme0n1p3") == ("nvme0n1", 3)
    assert partition_ref("/dev/mmcblk0p1") == ("mmcblk0", 1)
    assert partition_ref("/dev/disk/by-path/pci-0000:00:1f.2-ata-1-part2") == ("pci-0000:00:1f.2-ata-1", 2)
    assert partition_ref("/dev/mapper/vg-root") is None
    assert partition_ref("/dev/disk/by-id/ata-DISK") is None   # a whole disk


def test_a_second_disk_and_a_wrong_type_are_left_alone():
    refs = [Reference("/dev/sda2", "/", "ext4"), Reference("/dev/sdb1", "/home", "ext4"),
            Reference("/dev/sda1", "/boot/efi", "vfat")]
    names, notes = names_from_disk(refs, [ROOT, BOOT])
    assert names == {"/dev/sda2": ROOT}
    assert notes == ["/dev/sdb1 is on another disk of the source machine; left as it is.",
                     "/dev/sda1 matches no filesystem on this disk; left as it is."]


def test_a_second_disks_name_left_after_a_first_repair_is_still_another_disk():
    # The first run turned / and /boot into UUIDs; /dev/sdb1 is not partition 1 (/boot) of this disk.
    refs = [Reference("UUID=root-uuid", "/", "ext4"), Reference("UUID=boot-uuid", "/boot", "ext4"),
            Reference("/dev/sdb1", "/home", "ext4")]
    names, notes = names_from_disk(refs, [ROOT, BOOT])
    assert names == {}
    assert notes == ["/dev/sdb1 is on another disk of the source machine; left as it is."]
    # A lone name for a filesystem no UUID claims is still this disk's (root on LVM, ESP by name).
    esp = Filesystem("/dev/xvda1", "vfat", "ESP-UUID", None, 1)
    refs = [Reference("/dev/mapper/vg-root", "/", "ext4"), Reference("/dev/sda1", "/boot/efi", "vfat")]
    assert names_from_disk(refs, [esp])[0] == {"/dev/sda1": esp}


def test_the_source_disks_kernel_names_map_onto_the_vms_disks_in_the_jobs_order():
    home = Filesystem("/dev/vdb1", "ext4", "home-uuid", None, 1)
    inventory = {"disks": [{"id": "sda", "device": "/dev/sda"}, {"id": "sdb", "device": "/dev/sdb"}]}
    refs = [Reference("UUID=root-uuid", "/", "ext4"), Reference("/dev/sdb1", "/home", "ext4"),
            Reference("/dev/sdb2", "/srv", "xfs"), Reference("/dev/sdc1", "/data", "ext4")]
    assert names_on_the_vms_disks(refs, inventory, [[ROOT, BOOT], [home]]) == {"/dev/sdb1": home}
    # One VM disk for two source disks: the second's names stay unmapped.
    assert names_on_the_vms_disks(refs, inventory, [[ROOT, BOOT]]) == {}


def test_inventory_names_map_by_uuid():
    inventory = {"disks": [{"id": "sda", "partitions": [
        {"name": "sda1", "uuid": "boot-uuid", "links": ["/dev/disk/by-id/wwn-0x5000-part1"]},
        {"path": "/dev/sda2", "uuid": "root-uuid"},
        {"name": "sda3", "uuid": "gone"}]}]}
    assert names_from_inventory(inventory, [ROOT, BOOT]) == {
        "/dev/sda1": BOOT, "/dev/disk/by-id/wwn-0x5000-part1": BOOT, "/dev/sda2": ROOT}
