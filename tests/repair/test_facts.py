"""Mapping old device and NIC names onto the VM: from the disk alone, and from a job's inventory."""

from __future__ import annotations

from agent.repair.facts import (Filesystem, Reference, blkid_cache, names_from_disk, names_from_inventory,
                                names_on_other_disks, partition_ref)

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


MiB = 1 << 20
SAMSUNG = "/dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z9NB0K111111"
WD = "/dev/disk/by-id/ata-WDC_WD10EZEX-08WN4A0_WD-WCC6Y0123456"
HOME = Filesystem("/dev/xvdb1", "ext4", "home-uuid", "home", 1, MiB, 100 * MiB)
SRV = Filesystem("/dev/xvdb2", "xfs", None, None, 2, 101 * MiB, 50 * MiB)


def record(number: int, start: int, size: int, fstype: str, uuid: str | None, label: str | None = None) -> dict:
    return {"number": number, "start": start, "size": size, "type": "83", "fstype": fstype,
            "uuid": uuid, "label": label}


def two_disks(links: bool = True) -> dict:
    """A capture inventory of a machine with a root disk and a data disk, as agent/transfer/capture.py
    records it."""
    return {"disks": [
        {"id": "sda", "device": "/dev/sda", "serial": "S3Z9NB0K111111",
         "links": [SAMSUNG, "/dev/disk/by-path/pci-0000:00:1f.2-ata-1"] if links else [],
         "table": {"label": "dos", "id": "0x1", "partitions": [
             record(1, MiB, 200 * MiB, "ext4", "boot-uuid"), record(2, 201 * MiB, 800 * MiB, "ext4", "root-uuid")]}},
        {"id": "sdb", "device": "/dev/sdb", "serial": "WD-WCC6Y0123456",
         "links": [WD, "/dev/disk/by-path/pci-0000:00:1f.2-ata-2"] if links else [],
         "table": {"label": "dos", "id": "0x2", "partitions": [
             record(1, MiB, 100 * MiB, "ext4", "home-uuid", "home"), record(2, 101 * MiB, 50 * MiB, "xfs", None)]}},
    ]}


def test_a_second_disks_by_id_name_maps_to_its_own_filesystem_not_the_root_disks_partition():
    refs = [Reference(f"{SAMSUNG}-part2", "/", "ext4"), Reference(f"{SAMSUNG}-part1", "/boot", "ext4"),
            Reference(f"{WD}-part1", "/home", "ext4"),
            Reference("/dev/disk/by-path/pci-0000:00:1f.2-ata-2-part2", "/srv", "xfs"),
            Reference("/dev/sdb1", "/home2", "ext4")]
    # Without the inventory, the disk's own by-id name and the other disk's look alike; but
    # partition 1 of this disk is /boot, so WD's partition 1 for /home is another disk's.
    assert f"{WD}-part1" not in names_from_disk(refs, [ROOT, BOOT])[0]
    names, missing = names_from_inventory(refs, two_disks(), [[ROOT, BOOT], [HOME, SRV]])
    assert names == {f"{SAMSUNG}-part2": ROOT, f"{SAMSUNG}-part1": BOOT, f"{WD}-part1": HOME,
                     "/dev/sdb1": HOME,
                     # No UUID, no label: its start and size on the VM's second disk.
                     "/dev/disk/by-path/pci-0000:00:1f.2-ata-2-part2": SRV}
    assert missing == {}
    # Without udev's names in the inventory, a by-id name that ends in the disk's serial is it.
    names, _ = names_from_inventory(refs, two_disks(links=False), [[ROOT, BOOT], [HOME, SRV]])
    assert names[f"{WD}-part1"] == HOME and "/dev/disk/by-path/pci-0000:00:1f.2-ata-2-part2" not in names


QEMU1 = "/dev/disk/by-id/ata-QEMU_HARDDISK_SRC0001"
QEMU2 = "/dev/disk/by-id/ata-QEMU_HARDDISK_SRC0002"


def test_another_disks_by_id_name_is_not_this_disks_partition_a_kernel_name_mounts_elsewhere():
    # make e2e's two-disks-by-id: / by kernel name, swap by this disk's by-id name, /home by the
    # second disk's. Partition 1 of this disk is the root: /home cannot be it.
    root = Filesystem("/dev/xvda1", "ext4", "root-uuid", None, 1)
    swap = Filesystem("/dev/xvda2", "swap", "swap-uuid", None, 2)
    refs = [Reference("/dev/sda1", "/", "ext4"), Reference(f"{QEMU1}-part2", "none", "swap"),
            Reference(f"{QEMU2}-part1", "/home", "ext4")]
    names, notes = names_from_disk(refs, [root, swap])
    assert names == {"/dev/sda1": root, f"{QEMU1}-part2": swap}
    assert notes == [f"{QEMU2}-part1 is on another disk of the source machine; left as it is."]
    # The same after a first repair named / and swap by their UUIDs (a second run maps nothing).
    refs[:2] = [Reference("UUID=root-uuid", "/", "ext4"), Reference("UUID=swap-uuid", "none", "swap")]
    assert names_from_disk(refs, [root, swap]) == ({}, notes)
    # One btrfs mounted twice (its subvolumes) is one filesystem under two names: still this disk's.
    pool = Filesystem("/dev/xvda1", "btrfs", "pool-uuid", None, 1)
    refs = [Reference("/dev/sda1", "/", "btrfs"), Reference(f"{QEMU1}-part1", "/home", "btrfs")]
    assert names_from_disk(refs, [pool])[0] == {"/dev/sda1": pool, f"{QEMU1}-part1": pool}


def test_a_partition_no_vm_disk_holds_is_missing_not_guessed():
    refs = [Reference("/dev/sda2", "/", "ext4"), Reference(f"{WD}-part1", "/home", "ext4")]
    # The VM got only the root disk: the inventory says the name is the data disk's, so it is
    # not the root disk's partition 1 either.
    names, missing = names_from_inventory(refs, two_disks(), [[ROOT, BOOT]])
    assert names == {"/dev/sda2": ROOT}
    assert missing == {f"{WD}-part1": f"{WD}-part1 held fstype ext4, uuid home-uuid, label home on the "
                                      "source's disk sdb, and no disk of the VM holds it"}
    # A label another filesystem shares, a UUID of another type: neither is a match.
    twin = Filesystem("/dev/xvdc1", "ext4", "other", "home", 1, MiB, 100 * MiB)
    assert names_from_inventory([Reference(f"{WD}-part1", "/home", "ext4")],
                                {"disks": [{"device": "/dev/sdb", "links": [WD], "table": {"partitions": [
                                    record(1, MiB, 100 * MiB, "ext4", None, "home")]}}]},
                                [[HOME, twin]])[0] == {}


def test_another_disk_without_an_inventory_is_found_by_type_and_the_guests_blkid_cache():
    data = Filesystem("/dev/xvdc1", "ext4", "data-uuid", "data", 1, MiB, 100 * MiB)
    swap = Filesystem("/dev/xvdb2", "swap", "swap-uuid", None, 2, 101 * MiB, 10 * MiB)
    refs = [Reference("UUID=root-uuid", "/", "ext4"), Reference("/dev/sdb1", "/home", "ext4"),
            Reference("/dev/sdb2", "none", "swap")]
    names, unplaced, warnings = names_on_other_disks(refs[1:], [HOME, data, swap], {"root-uuid"}, {})
    assert names == {"/dev/sdb2": swap}
    assert unplaced == {"/dev/sdb1": "/dev/sdb1 is on another disk of the source machine, and the VM's "
                                     "other disks hold more than one ext4 filesystem it could be "
                                     "(/dev/xvdb1, /dev/xvdc1)"}
    assert warnings == ["/dev/sdb2 (none) is taken for /dev/xvdb2, the only swap filesystem on the VM's "
                        "other disks that nothing else names: only its type says so; check it."]
    # The guest's blkid cache remembers what /dev/sdb1 held: that settles it, without a warning.
    cache = blkid_cache('<device DEVNO="0x0811" TIME="1700000000.1" LABEL="data" UUID="data-uuid" '
                        'TYPE="ext4">/dev/sdb1</device>\n')
    names, unplaced, warnings = names_on_other_disks(refs[1:2], [HOME, data], set(), cache)
    assert (names, unplaced, warnings) == ({"/dev/sdb1": data}, {}, [])
    # A filesystem the configuration already names by UUID is not a candidate.
    names, unplaced, _ = names_on_other_disks(refs[1:2], [HOME, data], {"home-uuid"}, {})
    assert names == {"/dev/sdb1": data}
    names, unplaced, _ = names_on_other_disks(refs[1:2], [], set(), {})
    assert unplaced["/dev/sdb1"].endswith("hold no ext4 filesystem it could be")


def test_a_repair_from_outside_the_vm_takes_the_vm_nics_the_server_made():
    from agent.repair.network import VmNic
    from agent.repair.runner import vm_nics
    from xenp2v.protocol import job_inventory

    source = {"machine": {"nics": [{"name": "ens3", "mac": "52:54:00:12:34:56"},
                                   {"name": "ens4", "mac": "52:54:00:12:34:57"}]}}
    # No VM made by the server (manual path): the VM is taken to keep the source's MACs.
    assert vm_nics(job_inventory({"inventory": source})) == [VmNic("52:54:00:12:34:56", 0),
                                                            VmNic("52:54:00:12:34:57", 1)]
    # The server made it with --new-macs: the pool's MACs, by VIF number, as its record has them.
    job = {"inventory": source, "records": {"xenserver": {"vm": {
        "firmware": "bios", "nics": [{"device": 0, "mac": "CE:11:22:33:44:55", "source": "ens3"},
                                     {"device": 1, "mac": "ce:11:22:33:44:66", "source": "ens4"}]}}}}
    assert vm_nics(job_inventory(job)) == [VmNic("ce:11:22:33:44:55", 0), VmNic("ce:11:22:33:44:66", 1)]
