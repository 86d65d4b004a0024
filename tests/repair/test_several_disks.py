"""Several disks, and old systems: names of a second source disk, the VM's boot disk, firmware
that finds no boot code, RHEL 5's mkinitrd. Fixture trees give the exact file changes and a
second plan that must be empty; loop disks run the repair's own mapping, as `repair` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.disk import blockdev
from agent.transfer import capture
from agent.cli import main
from agent.disk.plan import plan_disk
from agent.repair import runner
from agent.repair.facts import Facts
from agent.repair.guest import RepairError
from agent.repair.runner import Request, repair
from server.inventory import parse_inventory
from support import rescan, run
from xenp2v import protocol
from agent.repair.plan import Plan
from agent.repair.steps import LEGACY_SETUP, plan_repair
from test_steps import (BOOT_UUID, DEBIAN_OS, DISK, ROOT_UUID, SWAP_UUID, assert_second_run_empty,
                        changes, make_tree)

RHEL5_RELEASE = "Red Hat Enterprise Linux Server release 5.11 (Tikanga)\n"


def test_fstab_lines_no_vm_disk_holds_get_nofail_and_a_warning_every_time(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": DEBIAN_OS,
        "/etc/fstab": f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"
                      "/dev/sdb1\t/home\text4\tdefaults\t0 2\n"
                      "/dev/sdc1 /data xfs\n"
                      "#/dev/sdb1 /old ext4 defaults 0 0\n",
        "/etc/initramfs-tools/initramfs.conf": "MODULES=most\n",
    })
    why = {"/dev/sdb1": "/dev/sdb1 is on another disk of the source machine, and the VM's other disks "
                        "hold no ext4 filesystem it could be",
           "/dev/sdc1": "/dev/sdc1 is on another disk of the source machine, and the VM's other disks "
                        "hold no xfs filesystem it could be"}
    f = Facts(filesystems=DISK, names={}, disk="/dev/xvda", unplaced=why)
    steps = plan_repair(tree, f)
    assert changes(steps)["/etc/fstab"] == (f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"
                                           "/dev/sdb1\t/home\text4\tdefaults,nofail\t0 2\n"
                                           "/dev/sdc1 /data xfs defaults,nofail\n"
                                           "#/dev/sdb1 /old ext4 defaults 0 0\n")
    warnings = Plan(steps).warnings
    assert warnings == [
        f"{why['/dev/sdb1']}: /home is marked nofail in /etc/fstab, so the VM boots without it. Attach "
        "the disk that holds it to the VM and put its UUID in place of /dev/sdb1 in the guest's /etc/fstab.",
        f"{why['/dev/sdc1']}: /data is marked nofail in /etc/fstab, so the VM boots without it. Attach "
        "the disk that holds it to the VM and put its UUID in place of /dev/sdc1 in the guest's /etc/fstab."]
    assert "WARNING: /dev/sdb1 is on another disk" in Plan(steps).render()
    assert_second_run_empty(tree, f)
    # Still unplaced on the second run: still said.
    assert Plan(plan_repair(tree, f)).warnings == warnings


def rhel5_tree(tmp_path):
    return make_tree(tmp_path, {
        "/etc/redhat-release": RHEL5_RELEASE,
        "/etc/fstab": "LABEL=/ / ext3 defaults 1 1\n/dev/sda1 /boot ext3 defaults 1 2\n"
                      "/dev/sda3 swap swap defaults 0 0\n",
        "/boot/grub/grub.conf": "default=0\ntimeout=5\ntitle Red Hat Enterprise Linux Server (2.6.18-419.el5)\n"
                                "\troot (hd0,0)\n\tkernel /vmlinuz-2.6.18-419.el5 ro root=LABEL=/ "
                                "resume=/dev/sda3\n\tinitrd /initrd-2.6.18-419.el5.img\n",
        "/etc/modprobe.conf": "alias eth0 e1000\nalias scsi_hostadapter cciss\n",
        # The plain kernel with the PV-on-HVM kmod, and kernel-xen with its own PV disk driver.
        "/lib/modules/2.6.18-419.el5/modules.dep":
            "/lib/modules/2.6.18-419.el5/kernel/drivers/ata/ata_piix.ko: /lib/modules/2.6.18-419.el5/kernel/drivers/ata/libata.ko\n"
            "/lib/modules/2.6.18-419.el5/kernel/drivers/scsi/sd_mod.ko: /lib/modules/2.6.18-419.el5/kernel/drivers/scsi/scsi_mod.ko\n"
            "/lib/modules/2.6.18-419.el5/extra/xenpv/xen-vbd.ko: /lib/modules/2.6.18-419.el5/extra/xenpv/xen-platform-pci.ko\n",
        "/lib/modules/2.6.18-419.el5xen/modules.dep":
            "/lib/modules/2.6.18-419.el5xen/kernel/drivers/xen/blkfront/xenblk.ko:\n"
            "/lib/modules/2.6.18-419.el5xen/kernel/drivers/scsi/sd_mod.ko:\n",
        "/sbin/mkinitrd": "", "/sbin/grub": "",
    })


def test_rhel5_mkinitrd_rebuilds_each_initrd_with_the_vms_disk_drivers(tmp_path):
    tree = rhel5_tree(tmp_path)
    f = Facts(filesystems=DISK, names={"/dev/sda1": DISK[0], "/dev/sda3": DISK[2]}, disk="/dev/xvda")
    steps = plan_repair(tree, f)
    commands = [c.argv for c in Plan(steps).commands]
    assert commands[:2] == [
        ("mkinitrd", "-f", "--with=xen-vbd", "--with=ata_piix", "--with=sd_mod",
         "/boot/initrd-2.6.18-419.el5.img", "2.6.18-419.el5"),
        ("mkinitrd", "-f", "--with=xenblk", "--with=sd_mod",
         "/boot/initrd-2.6.18-419.el5xen.img", "2.6.18-419.el5xen")]
    assert commands[2][:4] == ("sh", "-c", LEGACY_SETUP, "grub")
    drivers = next(s for s in steps if s.name == "initramfs drivers")
    assert any("RHEL 5's mkinitrd" in n for n in drivers.notes)
    assert changes(steps)["/etc/fstab"] == (f"LABEL=/ / ext3 defaults 1 1\nUUID={BOOT_UUID} /boot ext3 defaults 1 2\n"
                                           f"UUID={SWAP_UUID} swap swap defaults 0 0\n")
    assert_second_run_empty(tree, f)


def test_legacy_grub_goes_to_the_vms_first_disk_when_the_root_is_on_the_second(tmp_path):
    tree = rhel5_tree(tmp_path)
    f = Facts(filesystems=DISK, names={"/dev/sda1": DISK[0], "/dev/sda3": DISK[2]}, disk="/dev/loop7",
              root_disk="/dev/loop8")
    script = [c.argv[4] for c in Plan(plan_repair(tree, f)).commands if c.argv[0] == "sh"]
    assert script == [r"device (hd0) /dev/loop7\ndevice (hd1) /dev/loop8\nroot (hd1,0)\nsetup (hd0)\nquit\n"]


# --- loop disks ------------------------------------------------------------------------------------

MiB = 1 << 20
SAMSUNG = "/dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z9NB0K111111"
WD = "/dev/disk/by-id/ata-WDC_WD10EZEX-08WN4A0_WD-WCC6Y0123456"
GUEST = {"/etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n',
         "/etc/initramfs-tools/initramfs.conf": "MODULES=most\n",
         "/usr/sbin/grub-mkconfig": "", "/usr/lib/grub/i386-pc/normal.mod": "", "/boot/.mountpoint": ""}


def disk(loopdev, size: int, table: str, name: str) -> tuple[str, list[str]]:
    dev = loopdev(size, name)
    run("sfdisk", "-q", dev, input=table)
    return dev, rescan(dev)


def mkfs(part: str, fstype: str, label: str | None = None) -> str:
    if fstype == "swap":
        run("mkswap", *(["-L", label] if label else []), part)
    else:
        run(f"mkfs.{fstype}", "-q", *(["-L", label] if label else []), part)
    return run("blkid", "-p", "-s", "UUID", "-o", "value", part).stdout.strip()


def write(part: str, files: dict[str, str], where: Path) -> None:
    where.mkdir(exist_ok=True)
    run("mount", part, str(where))
    try:
        for path, text in files.items():
            (where / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (where / path.lstrip("/")).write_text(text)
    finally:
        run("umount", str(where))


def fstab_diff(lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    diff = text[text.index("+++ b/etc/fstab"):].split("\n==", 1)[0]
    return [line for line in diff.splitlines()[2:] if line.startswith(("+", "-"))]


def test_capture_records_each_partition_and_repair_maps_a_second_disks_by_id_name_by_it(loopdev, tmp_path):
    root_disk, (boot, root) = disk(loopdev, 64 * MiB, "label: dos\n,24MiB,83\n,,83\n", "root")
    data_disk, (home,) = disk(loopdev, 32 * MiB, "label: dos\n,,83\n", "data")
    uuids = {"boot": mkfs(boot, "ext4"), "root": mkfs(root, "ext4"), "home": mkfs(home, "ext4", "home")}
    write(root, {**GUEST, "/etc/fstab": f"{SAMSUNG}-part2 / ext4 errors=remount-ro 0 1\n"
                                        f"{SAMSUNG}-part1 /boot ext4 defaults 0 2\n"
                                        f"{WD}-part1 /home ext4 defaults 0 2\n"}, tmp_path / "mnt")
    # udev's names of the two disks on the source, as the live system shows them.
    dev_disk = tmp_path / "dev-disk"
    (dev_disk / "by-id").mkdir(parents=True)
    (dev_disk / "by-id" / Path(SAMSUNG).name).symlink_to(root_disk)
    (dev_disk / "by-id" / Path(WD).name).symlink_to(data_disk)
    inventory = {"machine": {"firmware": "bios"}, "disks": [
        capture.disk_inventory(plan_disk(dev), serial, blockdev.partition_table(dev), capture.disk_links(dev, dev_disk))
        for dev, serial in ((root_disk, "S3Z9NB0K111111"), (data_disk, "WD-WCC6Y0123456"))]}
    assert inventory["disks"][1]["links"] == [WD]
    assert inventory["disks"][1]["table"]["partitions"] == [
        {"number": 1, "start": MiB, "size": 31 * MiB, "type": "83", "fstype": "ext4",
         "uuid": uuids["home"], "label": "home"}]
    assert [p["uuid"] for p in inventory["disks"][0]["table"]["partitions"]] == [uuids["boot"], uuids["root"]]
    # The server takes it, and resuming compares starts, sizes and the filesystems in them.
    parse_inventory({"name": "web01", **inventory})
    assert protocol.disk_identity(inventory["disks"][1])[3][2] == ((MiB, 31 * MiB, "ext4", uuids["home"]),)

    said: list[str] = []
    repair(Request(disks=[root_disk, data_disk], inventory=inventory, dry_run=True), said.append)
    assert fstab_diff(said) == [
        f"-{SAMSUNG}-part2 / ext4 errors=remount-ro 0 1", f"-{SAMSUNG}-part1 /boot ext4 defaults 0 2",
        f"-{WD}-part1 /home ext4 defaults 0 2",
        f"+UUID={uuids['root']} / ext4 errors=remount-ro 0 1", f"+UUID={uuids['boot']} /boot ext4 defaults 0 2",
        f"+UUID={uuids['home']} /home ext4 defaults 0 2"]


def test_repair_disk_finds_another_disks_filesystems_or_marks_them_nofail(loopdev, tmp_path, monkeypatch, capsys):
    root_disk, (boot, root) = disk(loopdev, 64 * MiB, "label: dos\n,24MiB,83\n,,83\n", "root")
    data_disk, (home, swap) = disk(loopdev, 48 * MiB, "label: dos\n,32MiB,83\n,,82\n", "data")
    uuids = {"boot": mkfs(boot, "ext4"), "root": mkfs(root, "ext4"), "home": mkfs(home, "ext4"),
             "swap": mkfs(swap, "swap")}
    write(root, {**GUEST, "/etc/fstab": "/dev/sda2 / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot ext4 defaults 0 2\n"
                                        "/dev/sdb1 /home ext4 defaults 0 2\n/dev/sdb2 none swap sw 0 0\n"
                                        "/dev/sdc1 /data xfs defaults 0 2\n"}, tmp_path / "mnt")
    # The VM's other disk, as this machine sees it.
    monkeypatch.setattr(runner, "attached_disks", lambda named: [data_disk] if named == root_disk else [])
    assert main(["repair", "--dry-run", "--disk", root_disk]) == 0
    out = capsys.readouterr().out
    assert fstab_diff(out.splitlines()) == [
        "-/dev/sda2 / ext4 errors=remount-ro 0 1", "-/dev/sda1 /boot ext4 defaults 0 2",
        "-/dev/sdb1 /home ext4 defaults 0 2", "-/dev/sdb2 none swap sw 0 0", "-/dev/sdc1 /data xfs defaults 0 2",
        f"+UUID={uuids['root']} / ext4 errors=remount-ro 0 1", f"+UUID={uuids['boot']} /boot ext4 defaults 0 2",
        f"+UUID={uuids['home']} /home ext4 defaults 0 2", f"+UUID={uuids['swap']} none swap sw 0 0",
        "+/dev/sdc1 /data xfs defaults,nofail 0 2"]
    assert (f"WARNING: /dev/sdb1 (/home) is taken for {home}, the only ext4 filesystem on the VM's other "
            "disks that nothing else names: only its type says so; check it.") in out
    assert ("WARNING: /dev/sdc1 is on another disk of the source machine, and the VM's other disks hold no "
            "xfs filesystem it could be: /data is marked nofail in /etc/fstab") in out


def test_repair_of_several_named_disks_puts_another_disks_by_id_name_on_it_not_on_the_root(loopdev, tmp_path, capsys):
    # make e2e's two-disks-by-id, repaired from the host: both VM disks named, the boot disk first.
    qemu = "/dev/disk/by-id/ata-QEMU_HARDDISK_SRC000"
    root_disk, (root, swap) = disk(loopdev, 64 * MiB, "label: dos\n,48MiB,83\n,,82\n", "root")
    data_disk, (home,) = disk(loopdev, 32 * MiB, "label: dos\n,,83\n", "data")
    uuids = {"root": mkfs(root, "ext4"), "swap": mkfs(swap, "swap"), "home": mkfs(home, "ext4")}
    write(root, {**GUEST, "/etc/fstab": f"/dev/sda1 / ext4 errors=remount-ro 0 1\n{qemu}1-part2 none swap sw 0 0\n"
                                        f"{qemu}2-part1 /home ext4 defaults 0 2\n"}, tmp_path / "mnt")
    assert main(["repair", "--dry-run", "--disk", root_disk, "--disk", data_disk]) == 0
    out = capsys.readouterr().out
    assert fstab_diff(out.splitlines()) == [
        "-/dev/sda1 / ext4 errors=remount-ro 0 1", f"-{qemu}1-part2 none swap sw 0 0",
        f"-{qemu}2-part1 /home ext4 defaults 0 2",
        f"+UUID={uuids['root']} / ext4 errors=remount-ro 0 1", f"+UUID={uuids['swap']} none swap sw 0 0",
        f"+UUID={uuids['home']} /home ext4 defaults 0 2"]
    assert f"$ grub-install --target=i386-pc {root_disk}    #" in out


def test_disks_named_by_hand_are_a_repair_from_outside_the_vm_whatever_this_machine_is(monkeypatch):
    # Several --disk are the VM's disks attached to this machine: its own NICs are not the VM's
    # even when it is a VM itself (the host path of make e2e runs in one).
    from agent.repair import command
    asked: list[Request] = []
    monkeypatch.setattr(command, "repair", lambda request: asked.append(request) or {"status": "ok"})
    assert main(["repair", "--disk", "/dev/sdx", "--disk", "/dev/sdy"]) == 0
    assert main(["repair", "--disk", "/dev/sdx"]) == 0
    # `disk` named: the runner takes the VM's NICs from the job, not from this machine.
    assert [(r.disk, r.disks) for r in asked] == [("/dev/sdx", ["/dev/sdx", "/dev/sdy"]), ("/dev/sdx", [])]


def test_grub_goes_to_the_vms_first_disk_when_the_root_is_on_the_second(loopdev, tmp_path):
    first, (srv,) = disk(loopdev, 32 * MiB, "label: dos\n,,83\n", "first")
    second, (root,) = disk(loopdev, 64 * MiB, "label: dos\n,,83\n", "second")
    uuids = {"srv": mkfs(srv, "ext4"), "root": mkfs(root, "ext4")}
    write(root, {**GUEST, "/etc/fstab": "/dev/sdb1 / ext4 errors=remount-ro 0 1\n/dev/sda1 /srv ext4 defaults 0 2\n"},
          tmp_path / "mnt")
    said: list[str] = []
    report = repair(Request(disks=[first, second], dry_run=True), said.append)
    assert report["disk"] == second
    text = "\n".join(said)
    assert f"$ grub-install --target=i386-pc {first}    #" in text
    assert f"grub-install --target=i386-pc {second}" not in text
    assert fstab_diff(said)[-2:] == [f"+UUID={uuids['root']} / ext4 errors=remount-ro 0 1",
                                     f"+UUID={uuids['srv']} /srv ext4 defaults 0 2"]


def test_firmware_that_finds_no_boot_code_fails_the_repair_with_what_to_change(loopdev, tmp_path):
    # A UEFI source: GPT, an EFI system partition, no BIOS boot partition.
    gpt, (esp, root) = disk(loopdev, 64 * MiB,
                            "label: gpt\n,8MiB,C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n,,L\n", "uefi")
    mkfs(root, "ext4")
    write(root, {**GUEST, "/etc/fstab": "/dev/sda2 / ext4 errors=remount-ro 0 1\n"}, tmp_path / "mnt")
    with pytest.raises(RepairError, match=r"The VM starts with BIOS firmware, but its boot disk .* has a GPT "
                                          r"partition table without a BIOS boot partition.*Give the VM UEFI "
                                          r"firmware \(xe vm-param-set uuid=<VM> HVM-boot-params:firmware=uefi\)"):
        repair(Request(disks=[gpt], inventory={"machine": {"firmware": "bios"}, "disks": []}), lambda line: None)
    report = repair(Request(disks=[gpt], dry_run=True, inventory={"machine": {"firmware": "uefi"}, "disks": []}),
                    lambda line: None)
    assert report["status"] == "planned"
    # A BIOS source on MBR into a UEFI VM.
    mbr, (part,) = disk(loopdev, 64 * MiB, "label: dos\n,,83\n", "bios")
    mkfs(part, "ext4")
    write(part, {**GUEST, "/etc/fstab": "/dev/sda1 / ext4 errors=remount-ro 0 1\n"}, tmp_path / "mnt")
    with pytest.raises(RepairError, match=r"The VM starts with UEFI firmware, but its boot disk .* has no EFI "
                                          r"system partition.*Give the VM BIOS firmware"):
        repair(Request(disks=[mbr], dry_run=True, inventory={"machine": {"firmware": "uefi"}, "disks": []}),
               lambda line: None)
