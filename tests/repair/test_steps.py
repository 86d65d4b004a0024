"""Repair steps on fixture guest trees, one per distro family: the exact file changes, then a
second plan on the changed tree that must be empty."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.repair.apply import apply_plan
from agent.repair.facts import Facts, Filesystem, RaidArray, Reference, names_from_disk
from agent.repair.plan import Plan
from agent.repair.steps import LEGACY_SETUP, STAMP, family, plan_repair
from agent.repair.tree import GuestTree

ROOT_UUID = "11111111-1111-4111-8111-111111111111"
BOOT_UUID = "22222222-2222-4222-8222-222222222222"
SWAP_UUID = "33333333-3333-4333-8333-333333333333"
LUKS_UUID = "44444444-4444-4444-8444-444444444444"
ESP_UUID = "ABCD-1234"
BY_ID = "/dev/disk/by-id/ata-SAMSUNG_SSD_860_S3Z9NB0K123456"

DEBIAN_OS = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
UBUNTU_OS = 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nID=ubuntu\nID_LIKE=debian\n'
RHEL_OS = 'PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
SUSE_OS = 'PRETTY_NAME="openSUSE Leap 15.5"\nID="opensuse-leap"\nID_LIKE="suse opensuse"\n'
ARCH_OS = 'PRETTY_NAME="Arch Linux"\nID=arch\n'
MODULES_DEP = ("kernel/drivers/ata/ata_piix.ko.xz: kernel/drivers/ata/libata.ko.xz\n"
               "kernel/drivers/ata/ata_generic.ko.xz:\nkernel/drivers/ata/ahci.ko.xz:\n"
               "kernel/drivers/block/xen-blkfront.ko.xz:\nkernel/drivers/net/xen-netfront.ko.xz:\n"
               "kernel/drivers/block/virtio_blk.ko.xz:\nkernel/drivers/scsi/virtio_scsi.ko.xz:\n"
               "kernel/drivers/net/virtio_net.ko.xz:\nkernel/drivers/scsi/sd_mod.ko.xz:\n")
BUILTIN = "kernel/drivers/virtio/virtio_pci.ko\n"


def make_tree(root: Path, files: dict[str, str]) -> GuestTree:
    for path, text in files.items():
        host = root / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text)
    return GuestTree(root)


def fs(device: str, fstype: str, uuid: str, partition: int | None) -> Filesystem:
    return Filesystem(device, fstype, uuid, None, partition)


DISK = [fs("/dev/xvda1", "ext4", BOOT_UUID, 1), fs("/dev/xvda2", "ext4", ROOT_UUID, 2),
        fs("/dev/xvda3", "swap", SWAP_UUID, 3)]


def facts(names: dict[str, Filesystem], nics: dict[str, str] | None = None, **kw) -> Facts:
    return Facts(filesystems=DISK, names=names, nics=nics or {}, disk="/dev/xvda", **kw)


def changes(steps) -> dict[str, str | None]:
    return {c.path: c.new for c in Plan(steps).changes}


def apply_and_replan(tree: GuestTree, f: Facts) -> Plan:
    """Apply the plan's file changes (commands succeed), then plan again."""
    apply_plan(tree.root, plan_repair(tree, f), lambda cmd: (0, ""), lambda line: None)
    return Plan(plan_repair(tree, f))


def assert_second_run_empty(tree: GuestTree, f: Facts) -> None:
    again = apply_and_replan(tree, f)
    assert [s.name for s in again.steps if not s.empty] == []


def test_debian_by_name_and_by_id_become_uuids(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": DEBIAN_OS,
        "/etc/fstab": "# <file system> <mount point> <type> <options> <dump> <pass>\n"
                      "/dev/sda2  /      ext4  errors=remount-ro 0 1\n"
                      f"{BY_ID}-part1 /boot ext4 defaults 0 2\n"
                      "/dev/sda3  none   swap  sw 0 0\n"
                      "tmpfs /tmp tmpfs defaults 0 0\n",
        "/etc/initramfs-tools/conf.d/resume": "RESUME=/dev/sda3\n",
        "/etc/initramfs-tools/initramfs.conf": "MODULES=dep\nBUSYBOX=auto\n",
        "/etc/initramfs-tools/modules": "# List of modules\n",
        "/etc/default/grub": 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="root=/dev/sda2 resume=/dev/sda3 quiet"\n'
                             "GRUB_DISABLE_LINUX_UUID=true\n",
        "/etc/network/interfaces": "auto lo\niface lo inet loopback\n\nallow-hotplug eth0\n"
                                   "iface eth0 inet static\n  address 192.0.2.10/24\n"
                                   "auto eth0:1\niface eth0:1 inet static\n  address 192.0.2.11/24\n"
                                   "auto eth10\niface eth10 inet dhcp\n",
        "/etc/udev/rules.d/70-persistent-net.rules": 'SUBSYSTEM=="net", ATTR{address}=="00:11:22:33:44:55", NAME="eth0"\n',
        "/lib/modules/6.1.0-18-amd64/modules.dep": MODULES_DEP,
        "/lib/modules/6.1.0-18-amd64/modules.builtin": BUILTIN,
        "/usr/sbin/grub-mkconfig": "", "/usr/lib/grub/i386-pc/normal.mod": "",
    })
    refs = [Reference("/dev/sda2", "/", "ext4"), Reference(f"{BY_ID}-part1", "/boot", "ext4"),
            Reference("/dev/sda3", None, "swap")]
    names, notes = names_from_disk(refs, DISK)
    assert notes == []
    f = facts(names, {"eth0": "enX0"})
    steps = plan_repair(tree, f)
    got = changes(steps)
    assert got["/etc/fstab"] == (
        "# <file system> <mount point> <type> <options> <dump> <pass>\n"
        f"UUID={ROOT_UUID}  /      ext4  errors=remount-ro 0 1\n"
        f"UUID={BOOT_UUID} /boot ext4 defaults 0 2\n"
        f"UUID={SWAP_UUID}  none   swap  sw 0 0\n"
        "tmpfs /tmp tmpfs defaults 0 0\n")
    assert got["/etc/initramfs-tools/conf.d/resume"] == f"RESUME=UUID={SWAP_UUID}\n"
    assert got["/etc/default/grub"] == (
        f'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="root=UUID={ROOT_UUID} resume=UUID={SWAP_UUID} quiet"\n')
    assert got["/etc/network/interfaces"] == (
        "auto lo\niface lo inet loopback\n\nallow-hotplug enX0\n"
        "iface enX0 inet static\n  address 192.0.2.10/24\n"
        "auto enX0:1\niface enX0:1 inet static\n  address 192.0.2.11/24\n"
        "auto eth10\niface eth10 inet dhcp\n")
    assert got["/etc/udev/rules.d/70-persistent-net.rules"] is None
    assert got["/etc/initramfs-tools/initramfs.conf"] == "MODULES=most\nBUSYBOX=auto\n"
    # virtio_pci is built in, xen-platform-pci absent from this kernel: neither is asked for.
    assert got["/etc/initramfs-tools/modules"] == (
        "# List of modules\n# Added by xenp2v repair: drivers for the VM's disk and network controllers.\n"
        "xen-blkfront\nxen-netfront\nata_piix\nata_generic\nvirtio_blk\nvirtio_scsi\nvirtio_net\nahci\nsd_mod\n")
    commands = [str(c) for c in Plan(steps).commands]
    assert commands == ["update-initramfs -u -k all", "grub-install --target=i386-pc /dev/xvda",
                        "grub-mkconfig -o /boot/grub/grub.cfg"]
    assert got[STAMP] == "repaired by xenp2v\n"
    assert_second_run_empty(tree, f)


def test_ubuntu_netplan_luks_and_lvm(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": UBUNTU_OS,
        "/etc/fstab": "/dev/mapper/ubuntu--vg-root / ext4 defaults 0 1\n"
                      "/dev/sda1 /boot ext4 defaults 0 2\n/dev/ubuntu-vg/swap none swap sw 0 0\n",
        "/etc/crypttab": "sda3_crypt /dev/sda3 none luks,discard\n",
        "/etc/netplan/00-installer-config.yaml": "network:\n  ethernets:\n    ens33:\n      dhcp4: true\n  version: 2\n",
        "/etc/lvm/devices/system.devices": "VERSION=1.1.2\nIDTYPE=sys_wwid IDNAME=naa.5000 DEVNAME=/dev/sda3 PVID=x\n",
        "/etc/initramfs-tools/initramfs.conf": "MODULES=most\n",
    })
    disk = [fs("/dev/xvda1", "ext4", BOOT_UUID, 1), fs("/dev/xvda3", "crypto_LUKS", LUKS_UUID, 3)]
    refs = [Reference("/dev/sda1", "/boot", "ext4"), Reference("/dev/sda3", None, "crypto_LUKS")]
    names, _ = names_from_disk(refs, disk)
    f = Facts(filesystems=disk, names=names, nics={"ens33": "enX0"}, disk="/dev/xvda")
    got = changes(plan_repair(tree, f))
    assert got["/etc/fstab"] == ("/dev/mapper/ubuntu--vg-root / ext4 defaults 0 1\n"
                                 f"UUID={BOOT_UUID} /boot ext4 defaults 0 2\n/dev/ubuntu-vg/swap none swap sw 0 0\n")
    assert got["/etc/crypttab"] == f"sda3_crypt UUID={LUKS_UUID} none luks,discard\n"
    assert got["/etc/netplan/00-installer-config.yaml"] == \
        "network:\n  ethernets:\n    enX0:\n      dhcp4: true\n  version: 2\n"
    assert got["/etc/lvm/devices/system.devices"] is None
    assert "/etc/initramfs-tools/initramfs.conf" not in got
    assert_second_run_empty(tree, f)


def test_rhel_bls_ifcfg_dracut_selinux(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": RHEL_OS,
        "/etc/fstab": "/dev/sda2 / xfs defaults 0 0\n/dev/sda1 /boot xfs defaults 0 0\n",
        "/boot/loader/entries/abc-5.14.0-362.el9.x86_64.conf":
            "title Rocky Linux\nlinux /vmlinuz-5.14.0-362.el9.x86_64\n"
            "options root=/dev/sda2 ro resume=/dev/sda3 crashkernel=1G-4G:192M\n",
        "/etc/kernel/cmdline": "root=/dev/sda2 ro resume=/dev/sda3\n",
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX="resume=/dev/sda3"\nGRUB_ENABLE_BLSCFG=true\n',
        "/etc/sysconfig/network-scripts/ifcfg-eth0": 'DEVICE=eth0\nNAME=eth0\nHWADDR=00:11:22:33:44:55\n'
                                                     'BOOTPROTO=none\nIPADDR=192.0.2.20\n',
        "/etc/selinux/config": "SELINUX=enforcing\nSELINUXTYPE=targeted\n",
        "/etc/dracut.conf": "",
        "/usr/sbin/grub2-mkconfig": "",
        "/usr/lib/modules/5.14.0-362.el9.x86_64/modules.dep": MODULES_DEP,
    })
    disk = [fs("/dev/xvda1", "xfs", BOOT_UUID, 1), fs("/dev/xvda2", "xfs", ROOT_UUID, 2),
            fs("/dev/xvda3", "swap", SWAP_UUID, 3)]
    refs = [Reference("/dev/sda2", "/", "xfs"), Reference("/dev/sda1", "/boot", "xfs"),
            Reference("/dev/sda3", None, "swap")]
    names, _ = names_from_disk(refs, disk)
    f = Facts(filesystems=disk, names=names, nics={"eth0": "enX0"}, disk="/dev/xvda")
    steps = plan_repair(tree, f)
    got = changes(steps)
    assert got["/boot/loader/entries/abc-5.14.0-362.el9.x86_64.conf"].endswith(
        f"options root=UUID={ROOT_UUID} ro resume=UUID={SWAP_UUID} crashkernel=1G-4G:192M\n")
    assert got["/etc/kernel/cmdline"] == f"root=UUID={ROOT_UUID} ro resume=UUID={SWAP_UUID}\n"
    assert got["/etc/default/grub"] == f'GRUB_CMDLINE_LINUX="resume=UUID={SWAP_UUID}"\nGRUB_ENABLE_BLSCFG=true\n'
    assert got["/etc/sysconfig/network-scripts/ifcfg-eth0"] is None
    assert got["/etc/sysconfig/network-scripts/ifcfg-enX0"] == \
        "DEVICE=enX0\nNAME=enX0\nBOOTPROTO=none\nIPADDR=192.0.2.20\n"
    assert got["/etc/dracut.conf.d/90-xenp2v.conf"].splitlines()[1] == \
        'add_drivers+=" xen-blkfront xen-netfront ata_piix ata_generic virtio_blk virtio_scsi virtio_net ahci sd_mod "'
    assert 'hostonly="no"' in got["/etc/dracut.conf.d/90-xenp2v.conf"]
    assert got["/.autorelabel"] == ""
    assert [str(c) for c in Plan(steps).commands] == [
        "dracut -f --regenerate-all", "grub2-mkconfig -o /boot/grub2/grub.cfg"]
    assert_second_run_empty(tree, f)


def test_suse_btrfs_by_id_and_ifcfg(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": SUSE_OS,
        "/etc/fstab": f"{BY_ID}-part2 / btrfs defaults 0 0\n"
                      f"{BY_ID}-part2 /home btrfs subvol=/@/home 0 0\n"
                      f"{BY_ID}-part2 /.snapshots btrfs subvol=/@/.snapshots 0 0\n",
        "/etc/default/grub": f'GRUB_CMDLINE_LINUX_DEFAULT="splash=silent resume={BY_ID}-part3 quiet"\n',
        "/etc/sysconfig/network/ifcfg-eth0": "BOOTPROTO='dhcp'\nSTARTMODE='auto'\n",
        "/etc/sysconfig/network/ifroute-eth0": "default 192.0.2.1 - eth0\n",
        "/etc/dracut.conf.d/10-hostonly.conf": 'hostonly="yes"\n',
        "/usr/sbin/grub2-mkconfig": "",
    })
    disk = [fs("/dev/xvda2", "btrfs", ROOT_UUID, 2), fs("/dev/xvda3", "swap", SWAP_UUID, 3)]
    refs = [Reference(f"{BY_ID}-part2", "/", "btrfs"), Reference(f"{BY_ID}-part3", None, "swap")]
    names, _ = names_from_disk(refs, disk)
    f = Facts(filesystems=disk, names=names, nics={"eth0": "eth1"}, disk="/dev/xvda")
    got = changes(plan_repair(tree, f))
    assert got["/etc/fstab"] == (f"UUID={ROOT_UUID} / btrfs defaults 0 0\n"
                                 f"UUID={ROOT_UUID} /home btrfs subvol=/@/home 0 0\n"
                                 f"UUID={ROOT_UUID} /.snapshots btrfs subvol=/@/.snapshots 0 0\n")
    assert got["/etc/default/grub"] == f'GRUB_CMDLINE_LINUX_DEFAULT="splash=silent resume=UUID={SWAP_UUID} quiet"\n'
    assert got["/etc/sysconfig/network/ifcfg-eth0"] is None
    assert got["/etc/sysconfig/network/ifcfg-eth1"] == "BOOTPROTO='dhcp'\nSTARTMODE='auto'\n"
    assert got["/etc/sysconfig/network/ifroute-eth1"] == "default 192.0.2.1 - eth1\n"
    assert "/etc/dracut.conf.d/90-xenp2v.conf" in got
    assert_second_run_empty(tree, f)


def test_arch_nvme_mkinitcpio_networkd_networkmanager_uefi(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": ARCH_OS,
        "/etc/fstab": "/dev/nvme0n1p2 / ext4 rw,relatime 0 1\n/dev/nvme0n1p1 /boot/efi vfat rw 0 2\n",
        "/etc/mkinitcpio.conf": "MODULES=(nvme)\nHOOKS=(base udev autodetect modconf block filesystems fsck)\n",
        "/etc/systemd/network/20-wired.network": "[Match]\nName=enp3s0\n\n[Network]\nDHCP=yes\n",
        "/etc/NetworkManager/system-connections/Wired.nmconnection":
            "[connection]\nid=Wired\ntype=ethernet\ninterface-name=enp3s0\n",
        "/usr/bin/grub-mkconfig": "",
        "/usr/lib/modules/6.7.4-arch1-1/modules.dep": MODULES_DEP,
    })
    disk = [fs("/dev/xvda1", "vfat", ESP_UUID, 1), fs("/dev/xvda2", "ext4", ROOT_UUID, 2)]
    refs = [Reference("/dev/nvme0n1p2", "/", "ext4"), Reference("/dev/nvme0n1p1", "/boot/efi", "vfat")]
    names, _ = names_from_disk(refs, disk)
    f = Facts(filesystems=disk, names=names, nics={"enp3s0": "enX0"}, disk="/dev/xvda",
              bios=False, uefi=True)
    steps = plan_repair(tree, f)
    got = changes(steps)
    assert got["/etc/fstab"] == f"UUID={ROOT_UUID} / ext4 rw,relatime 0 1\nUUID={ESP_UUID} /boot/efi vfat rw 0 2\n"
    assert got["/etc/mkinitcpio.conf"].splitlines()[0] == \
        "MODULES=(nvme xen-blkfront xen-netfront ata_piix ata_generic virtio_blk virtio_scsi virtio_net ahci sd_mod)"
    assert got["/etc/systemd/network/20-wired.network"] == "[Match]\nName=enX0\n\n[Network]\nDHCP=yes\n"
    assert got["/etc/NetworkManager/system-connections/Wired.nmconnection"].endswith("interface-name=enX0\n")
    assert [str(c) for c in Plan(steps).commands] == [
        "mkinitcpio -P",
        "grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram",
        "grub-mkconfig -o /boot/grub/grub.cfg"]
    assert_second_run_empty(tree, f)


def test_apply_keeps_backups_and_a_failed_command_puts_the_files_back(tmp_path):
    tree = make_tree(tmp_path, {"/etc/os-release": DEBIAN_OS, "/etc/fstab": "/dev/sda1 / ext4 defaults 0 1\n",
                                "/etc/initramfs-tools/initramfs.conf": "MODULES=most\n"})
    f = facts({"/dev/sda1": DISK[1]})
    first = Plan(plan_repair(tree, f))
    lines = []
    try:
        apply_plan(tmp_path, plan_repair(tree, f), lambda cmd: (1, "mkinitramfs: boom"), lines.append)
        raise AssertionError("a failing command must stop the repair")
    except Exception as e:  # RepairError, with what to do next
        assert "update-initramfs -u -k all" in str(e) and "run repair again" in str(e)
        assert "put back as it was" in str(e)
    assert "  changed /etc/fstab (backup in /var/backups/xenp2v/" in "\n".join(lines)
    assert tree.read("/etc/fstab") == "/dev/sda1 / ext4 defaults 0 1\n"
    assert not tree.exists(STAMP) and not tree.exists("/var/backups")
    # Nothing of the failed run is left: the next plan is the first one again.
    assert Plan(plan_repair(tree, f)).render() == first.render()
    apply_plan(tmp_path, plan_repair(tree, f), lambda cmd: (0, ""), lines.append)
    backups = list(tmp_path.glob("var/backups/xenp2v/*/etc/fstab"))
    assert [b.read_text() for b in backups] == ["/dev/sda1 / ext4 defaults 0 1\n"]


def test_dry_run_render_shows_steps_and_diffs(tmp_path):
    tree = make_tree(tmp_path, {"/etc/os-release": DEBIAN_OS, "/etc/fstab": "/dev/sda2 / ext4 defaults 0 1\n"})
    text = Plan(plan_repair(tree, facts({"/dev/sda2": DISK[1]}))).render()
    assert "== device names in fstab: 1 file(s), 0 command(s)" in text
    assert f"-/dev/sda2 / ext4 defaults 0 1\n+UUID={ROOT_UUID} / ext4 defaults 0 1\n" in text
    assert "--- a/etc/fstab\n+++ b/etc/fstab\n" in text


MD0 = "3b5c1a3e:0c2d4b8e:9d5b7f4b:ab43e2c1"
MD1 = "7f0e2c44:51b9a3d0:c2e8f6a1:0d9b4e77"


def test_debian_mdadm_conf_by_member_names_gets_uuids(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": DEBIAN_OS,
        "/etc/fstab": "/dev/md0 / ext4 errors=remount-ro 0 1\n/dev/md1 none swap sw 0 0\n",
        "/etc/mdadm/mdadm.conf": "# mdadm.conf\nDEVICE /dev/sda1 /dev/sdb1 /dev/sda2 /dev/sdb2\n"
                                 "HOMEHOST <system>\nMAILADDR root\n\n"
                                 "ARRAY /dev/md0 metadata=1.2 name=deb:0 devices=/dev/sda1,/dev/sdb1\n"
                                 "ARRAY /dev/md/1 level=raid1 num-devices=2 devices=/dev/sda2,/dev/sdb2\n",
        "/etc/initramfs-tools/initramfs.conf": "MODULES=most\n",
        "/etc/initramfs-tools/modules": "".join(f"{d}\n" for d in
                                                ("xen-blkfront", "xen-netfront", "xen-platform-pci", "ata_piix",
                                                 "ata_generic", "nvme", "nvme-core", "virtio_pci", "virtio_blk", "virtio_scsi",
                                                 "virtio_net", "ahci", "sd_mod")),
        STAMP: "repaired by xenp2v\n",
    })
    arrays = [RaidArray(MD0, "deb:0", "1.2", "raid1", (1,)), RaidArray(MD1, "deb:1", "1.2", "raid1", (2,))]
    f = facts({}, arrays=arrays)
    steps = plan_repair(tree, f)
    assert changes(steps) == {
        "/etc/mdadm/mdadm.conf": "# mdadm.conf\nDEVICE partitions containers\nHOMEHOST <system>\nMAILADDR root\n\n"
                                 f"ARRAY /dev/md0 metadata=1.2 name=deb:0 UUID={MD0}\n"
                                 f"ARRAY /dev/md/1 level=raid1 num-devices=2 UUID={MD1}\n"}
    # A changed mdadm.conf goes into the initramfs: the rebuild runs although the last repair finished.
    assert [str(c) for c in Plan(steps).commands] == ["update-initramfs -u -k all"]
    assert_second_run_empty(tree, f)


def test_rhel_mdadm_conf_continuation_lines_missing_array_and_dracut(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": RHEL_OS,
        "/etc/fstab": "/dev/md/root / xfs defaults 0 0\n/dev/md/boot /boot xfs defaults 0 0\n",
        "/etc/mdadm.conf": "ARRAY /dev/md/boot level=raid1 num-devices=2 metadata=1.0 name=localhost:boot "
                           f"UUID={MD0}\n   devices=/dev/sda1,/dev/sdb1\n",
        "/etc/dracut.conf": "",
    })
    arrays = [RaidArray(MD0, "localhost:boot", "1.0", "raid1", (1,)),
              RaidArray(MD1, "localhost:root", "1.2", "raid1", (2,))]
    f = facts({}, arrays=arrays)
    got = changes(plan_repair(tree, f))
    assert got["/etc/mdadm.conf"] == (
        f"ARRAY /dev/md/boot level=raid1 num-devices=2 metadata=1.0 name=localhost:boot UUID={MD0}\n"
        f"ARRAY /dev/md/root metadata=1.2 UUID={MD1} name=localhost:root\n")
    assert got["/etc/dracut.conf.d/90-xenp2v.conf"].endswith(
        "hostonly=\"no\"\n# The guest's mdadm.conf names its arrays.\nmdadmconf=\"yes\"\n")
    assert_second_run_empty(tree, f)


def test_mdadm_conf_by_uuid_already_is_left_alone(tmp_path):
    text = f"DEVICE partitions\nARRAY /dev/md0 metadata=1.2 UUID={MD0} name=deb:0\nARRAY /dev/md9 UUID={MD1}\n"
    tree = make_tree(tmp_path, {"/etc/os-release": DEBIAN_OS, "/etc/fstab": "", "/etc/mdadm/mdadm.conf": text})
    steps = plan_repair(tree, facts({}, arrays=[RaidArray(MD0, "deb:0", "1.2", "raid1", (1,))]))
    assert "/etc/mdadm/mdadm.conf" not in changes(steps)


SLES11_RELEASE = "SUSE Linux Enterprise Server 11 (x86_64)\nVERSION = 11\nPATCHLEVEL = 4\n"
SLES11_MODULES_DEP = ("kernel/drivers/ata/ata_piix.ko: kernel/drivers/ata/libata.ko\n"
                      "kernel/drivers/ata/ata_generic.ko:\nkernel/drivers/ata/ahci.ko:\n"
                      "kernel/drivers/scsi/sd_mod.ko:\nkernel/drivers/virtio/virtio_pci.ko:\n"
                      "kernel/drivers/block/virtio_blk.ko:\nkernel/drivers/net/virtio_net.ko:\n"
                      "updates/xen-platform-pci.ko:\nupdates/xen-vbd.ko: updates/xen-platform-pci.ko\n"
                      "updates/xen-vnif.ko: updates/xen-platform-pci.ko\n")


def test_sles11_mkinitrd_and_legacy_grub_without_os_release(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/SuSE-release": SLES11_RELEASE,
        "/etc/fstab": f"{BY_ID}-part3 swap swap defaults 0 0\n"
                      f"{BY_ID}-part2 / ext3 acl,user_xattr 1 1\n"
                      f"{BY_ID}-part1 /boot ext3 acl,user_xattr 1 2\n"
                      "proc /proc proc defaults 0 0\n",
        "/boot/grub/menu.lst": "default 0\ntimeout 8\n"
                               "title SUSE Linux Enterprise Server 11 SP4 - 3.0.101-63\n"
                               "    root (hd0,0)\n"
                               f"    kernel /vmlinuz-3.0.101-63-default root={BY_ID}-part2 resume={BY_ID}-part3 "
                               "splash=silent crashkernel=256M-:128M showopts vga=0x314\n"
                               "    initrd /initrd-3.0.101-63-default\n",
        "/boot/grub/device.map": "(hd0)\t/dev/sda\n",
        "/etc/sysconfig/bootloader": 'LOADER_TYPE="grub"\n'
                                     f'DEFAULT_APPEND="resume={BY_ID}-part3 splash=silent showopts"\n',
        "/etc/sysconfig/kernel": 'INITRD_MODULES="processor thermal ata_piix ata_generic fan jbd ext3 edd"\n'
                                 'DOMU_INITRD_MODULES="xennet xenblk"\n',
        "/etc/sysconfig/network/ifcfg-eth0": "BOOTPROTO='static'\nIPADDR='192.0.2.30/24'\nSTARTMODE='auto'\n",
        "/etc/udev/rules.d/70-persistent-net.rules": 'SUBSYSTEM=="net", ATTR{address}=="00:11:22:33:44:55", NAME="eth0"\n',
        "/lib/modules/3.0.101-63-default/modules.dep": SLES11_MODULES_DEP,
        "/sbin/mkinitrd": "", "/sbin/grub": "",
    })
    refs = [Reference(f"{BY_ID}-part3", "swap", "swap"), Reference(f"{BY_ID}-part2", "/", "ext3"),
            Reference(f"{BY_ID}-part1", "/boot", "ext3")]
    names, notes = names_from_disk(refs, DISK)
    assert notes == []
    f = facts(names, {"eth0": "eth1"})
    steps = plan_repair(tree, f)
    got = changes(steps)
    assert set(got) == {"/etc/fstab", "/boot/grub/menu.lst", "/etc/sysconfig/bootloader", "/etc/sysconfig/kernel",
                        "/boot/grub/device.map", "/etc/udev/rules.d/70-persistent-net.rules",
                        "/etc/sysconfig/network/ifcfg-eth0", "/etc/sysconfig/network/ifcfg-eth1", STAMP}
    assert got["/etc/fstab"] == (f"UUID={SWAP_UUID} swap swap defaults 0 0\nUUID={ROOT_UUID} / ext3 acl,user_xattr 1 1\n"
                                 f"UUID={BOOT_UUID} /boot ext3 acl,user_xattr 1 2\nproc /proc proc defaults 0 0\n")
    assert got["/boot/grub/menu.lst"].splitlines()[4] == (
        f"    kernel /vmlinuz-3.0.101-63-default root=UUID={ROOT_UUID} resume=UUID={SWAP_UUID} "
        "splash=silent crashkernel=256M-:128M showopts vga=0x314")
    assert got["/etc/sysconfig/bootloader"] == \
        f'LOADER_TYPE="grub"\nDEFAULT_APPEND="resume=UUID={SWAP_UUID} splash=silent showopts"\n'
    # Upstream names where this kernel has them, SUSE's xen-kmp names for the PV disk and NIC.
    assert got["/etc/sysconfig/kernel"] == (
        'INITRD_MODULES="processor thermal ata_piix ata_generic fan jbd ext3 edd xen-platform-pci '
        'virtio_pci virtio_blk virtio_net ahci sd_mod xen-vbd xen-vnif"\nDOMU_INITRD_MODULES="xennet xenblk"\n')
    assert got["/boot/grub/device.map"] is None and got["/etc/sysconfig/network/ifcfg-eth0"] is None
    assert got["/etc/sysconfig/network/ifcfg-eth1"] == "BOOTPROTO='static'\nIPADDR='192.0.2.30/24'\nSTARTMODE='auto'\n"
    commands = [c.argv for c in Plan(steps).commands]
    assert commands == [("mkinitrd",),
                        ("sh", "-c", LEGACY_SETUP, "grub",
                         r"device (hd0) /dev/xvda\nroot (hd0,0)\nsetup (hd0)\nquit\n")]
    assert family(tree) == "suse"
    assert_second_run_empty(tree, f)


def test_legacy_grub_setup_feeds_the_shell_and_reads_its_errors(tmp_path):
    """The command as planned, run by sh with a stand-in `grub` that records its input."""
    fake = tmp_path / "bin/grub"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@" > "$REC.args"\ncat > "$REC.in"\nprintf "%s\\n" "$OUT"\n')
    fake.chmod(0o755)
    script = r"device (hd0) /dev/xvda\nroot (hd0,1)\nsetup (hd0)\nquit\n"
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "REC": str(tmp_path / "rec")}
    ok = ' Running "install /grub/stage1 (hd0) (hd0)1+17 p (hd0,1)/grub/stage2 /grub/menu.lst"... succeeded\nDone.'
    proc = subprocess.run(["sh", "-c", LEGACY_SETUP, "grub", script], env={**env, "OUT": ok},
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "succeeded" in proc.stdout
    assert (tmp_path / "rec.in").read_text() == "device (hd0) /dev/xvda\nroot (hd0,1)\nsetup (hd0)\nquit\n"
    assert (tmp_path / "rec.args").read_text() == "--batch --no-floppy --device-map=/dev/null\n"
    proc = subprocess.run(["sh", "-c", LEGACY_SETUP, "grub", script],
                          env={**env, "OUT": " Checking if \"/boot/grub/stage1\" exists... no\n\nError 15: File not found"},
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Error 15: File not found" in proc.stdout


def test_rhel6_lvm_luks_grub_conf_dracut_per_kernel(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/redhat-release": "CentOS release 6.10 (Final)\n",
        "/etc/fstab": "/dev/mapper/vg_c6-lv_root / ext4 defaults 1 1\n/dev/sda1 /boot ext4 defaults 1 2\n"
                      "/dev/mapper/vg_c6-lv_swap swap swap defaults 0 0\n",
        "/etc/crypttab": f"luks-{LUKS_UUID} UUID={LUKS_UUID} none\n",
        "/boot/grub/grub.conf": "default=0\ntitle CentOS 6 (2.6.32-754.el6.x86_64)\n\troot (hd0,0)\n"
                                "\tkernel /vmlinuz-2.6.32-754.el6.x86_64 ro root=/dev/mapper/vg_c6-lv_root "
                                f"rd_LUKS_UUID=luks-{LUKS_UUID} rd_LVM_LV=vg_c6/lv_root rd_NO_MD crashkernel=auto\n"
                                "\tinitrd /initramfs-2.6.32-754.el6.x86_64.img\n",
        "/etc/sysconfig/network-scripts/ifcfg-eth0": "DEVICE=eth0\nHWADDR=00:11:22:33:44:55\nONBOOT=yes\nBOOTPROTO=dhcp\n",
        "/etc/selinux/config": "SELINUX=disabled\n",
        "/sbin/dracut": "", "/sbin/grub": "",
        "/lib/modules/2.6.32-754.el6.x86_64/modules.dep": MODULES_DEP,
        "/lib/modules/2.6.32-696.el6.x86_64/modules.dep": MODULES_DEP,
    })
    disk = [fs("/dev/xvda1", "ext4", BOOT_UUID, 1), fs("/dev/xvda2", "crypto_LUKS", LUKS_UUID, 2),
            fs("/dev/loop7", "ext4", ROOT_UUID, None)]
    names, _ = names_from_disk([Reference("/dev/sda1", "/boot", "ext4")], disk)
    f = Facts(filesystems=disk, names=names, nics={}, disk="/dev/xvda")
    steps = plan_repair(tree, f)
    got = changes(steps)
    # LV and LUKS names do not depend on the hardware: only /boot's device name changes.
    assert set(got) == {"/etc/fstab", "/etc/dracut.conf.d/90-xenp2v.conf", STAMP}
    assert got["/etc/fstab"].splitlines()[1] == f"UUID={BOOT_UUID} /boot ext4 defaults 1 2"
    # dracut 004 (RHEL 6) has no --regenerate-all: one image per kernel, named as RHEL names them.
    assert [c.argv for c in Plan(steps).commands] == [
        ("dracut", "-f", "/boot/initramfs-2.6.32-696.el6.x86_64.img", "2.6.32-696.el6.x86_64"),
        ("dracut", "-f", "/boot/initramfs-2.6.32-754.el6.x86_64.img", "2.6.32-754.el6.x86_64"),
        ("sh", "-c", LEGACY_SETUP, "grub", r"device (hd0) /dev/xvda\nroot (hd0,0)\nsetup (hd0)\nquit\n")]
    assert_second_run_empty(tree, f)


def test_arch_luks_lvm_cryptdevice(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": ARCH_OS,
        "/etc/fstab": "/dev/mapper/vg-root / ext4 rw,relatime 0 1\n/dev/sda1 /boot ext4 rw,relatime 0 2\n",
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX="cryptdevice=/dev/sda2:cryptlvm root=/dev/vg/root"\n',
        "/etc/mkinitcpio.conf": "MODULES=()\nHOOKS=(base udev autodetect keyboard block encrypt lvm2 filesystems fsck)\n",
        "/usr/bin/grub-mkconfig": "", "/usr/lib/grub/i386-pc/normal.mod": "",
        "/usr/lib/modules/6.7.4-arch1-1/modules.dep": MODULES_DEP,
    })
    disk = [fs("/dev/xvda1", "ext4", BOOT_UUID, 1), fs("/dev/xvda2", "crypto_LUKS", LUKS_UUID, 2)]
    refs = [Reference("/dev/sda1", "/boot", "ext4"), Reference("/dev/sda2", None, None)]
    names, _ = names_from_disk(refs, disk)
    f = Facts(filesystems=disk, names=names, nics={}, disk="/dev/xvda")
    steps = plan_repair(tree, f)
    got = changes(steps)
    assert got["/etc/default/grub"] == f'GRUB_CMDLINE_LINUX="cryptdevice=UUID={LUKS_UUID}:cryptlvm root=/dev/vg/root"\n'
    assert got["/etc/fstab"] == f"/dev/mapper/vg-root / ext4 rw,relatime 0 1\nUUID={BOOT_UUID} /boot ext4 rw,relatime 0 2\n"
    assert got["/etc/mkinitcpio.conf"].splitlines()[0] == \
        "MODULES=(xen-blkfront xen-netfront ata_piix ata_generic virtio_blk virtio_scsi virtio_net ahci sd_mod)"
    assert [str(c) for c in Plan(steps).commands] == [
        "mkinitcpio -P", "grub-install --target=i386-pc /dev/xvda", "grub-mkconfig -o /boot/grub/grub.cfg"]
    assert_second_run_empty(tree, f)


def test_ubuntu_btrfs_subvolumes_and_netplan_by_mac(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": UBUNTU_OS,
        "/etc/fstab": "/dev/sda2 / btrfs defaults,subvol=@ 0 1\n/dev/sda2 /home btrfs defaults,subvol=@home 0 2\n"
                      "/dev/sda1 /boot/efi vfat umask=0077 0 1\n",
        "/etc/netplan/50-cloud-init.yaml": "network:\n  version: 2\n  ethernets:\n    enp0s31f6:\n"
                                           "      match:\n        macaddress: 00:11:22:33:44:55\n"
                                           "      set-name: enp0s31f6\n      addresses: [192.0.2.40/24]\n",
        "/etc/initramfs-tools/initramfs.conf": "MODULES=dep\n",
    })
    disk = [fs("/dev/xvda1", "vfat", ESP_UUID, 1), fs("/dev/xvda2", "btrfs", ROOT_UUID, 2)]
    refs = [Reference("/dev/sda2", "/", "btrfs"), Reference("/dev/sda2", "/home", "btrfs"),
            Reference("/dev/sda1", "/boot/efi", "vfat")]
    names, _ = names_from_disk(refs, disk)
    f = Facts(filesystems=disk, names=names, nics={"enp0s31f6": "enX0"}, disk="/dev/xvda", bios=False, uefi=True)
    got = changes(plan_repair(tree, f))
    assert got["/etc/fstab"] == (f"UUID={ROOT_UUID} / btrfs defaults,subvol=@ 0 1\n"
                                 f"UUID={ROOT_UUID} /home btrfs defaults,subvol=@home 0 2\n"
                                 f"UUID={ESP_UUID} /boot/efi vfat umask=0077 0 1\n")
    assert got["/etc/netplan/50-cloud-init.yaml"] == (
        "network:\n  version: 2\n  ethernets:\n    enX0:\n      match:\n        macaddress: 00:11:22:33:44:55\n"
        "      set-name: enX0\n      addresses: [192.0.2.40/24]\n")
    assert_second_run_empty(tree, f)


def test_nvme_driver_goes_into_the_initramfs_for_the_uefi_profile(tmp_path):
    # XCP-ng's UEFI profile shows the disk on emulated NVMe: a guest booted from SATA has no
    # nvme driver in its initramfs (MODULES=list or dep) and loses its root there.
    dep = MODULES_DEP + ("kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz\n"
                         "kernel/drivers/nvme/host/nvme-core.ko.xz:\n")
    tree = make_tree(tmp_path, {
        "/etc/os-release": DEBIAN_OS,
        "/etc/fstab": f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n",
        "/etc/initramfs-tools/initramfs.conf": "MODULES=list\n",
        "/etc/initramfs-tools/modules": "ahci\nlibahci\nsd_mod\next4\n",
        "/lib/modules/6.1.0-18-amd64/modules.dep": dep,
        "/lib/modules/6.1.0-18-amd64/modules.builtin": BUILTIN,
    })
    got = changes(plan_repair(tree, facts({})))
    added = got["/etc/initramfs-tools/modules"].split("# Added by xenp2v repair")[1].splitlines()[1:]
    assert {"nvme", "nvme-core", "xen-blkfront"} <= set(added)
    assert "ahci" not in added and "sd_mod" not in added
