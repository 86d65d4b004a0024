"""Configuration the repair reads beyond fstab and grub: LVM filters, multipath and old controller
names, where the boot loader goes next time, the ESP's own menu and GRUB's environment block,
extlinux, SUSE's GRUB modules. Exact file changes, then a second plan that must be empty."""

from __future__ import annotations

import pytest

from agent.repair.facts import Facts, names_from_disk
from agent.repair.plan import Plan
from agent.repair.runner import guest_references
from agent.repair.steps import plan_repair
from test_steps import (BOOT_UUID, DISK, ESP_UUID, RHEL_OS, ROOT_UUID, SUSE_OS, SWAP_UUID, DEBIAN_OS,
                        assert_second_run_empty, changes, facts, fs, make_tree)

RHEL8_OS = 'PRETTY_NAME="CentOS Linux 8"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="8"\n'


def test_lvm_filters_that_accept_only_the_old_disks_are_commented_out(tmp_path):
    lvm_conf = ("devices {\n\tdir = \"/dev\"\n"
                "\tfilter = [ \"a|^/dev/disk/by-id/scsi-3600508b1001c5a3d.*|\", \"a|^/dev/mapper/mpath.*|\",\n"
                "\t           \"r|.*|\" ]\n"
                "\t# filter = [ \"a|.*|\" ]\n"
                "\tglobal_filter = [ \"a|/dev/sd[a-b].*|\", \"r|.*|\" ]\n"
                "}\n")
    tree = make_tree(tmp_path, {
        "/etc/os-release": RHEL_OS, "/etc/fstab": "/dev/mapper/rhel-root / xfs defaults 0 0\n",
        "/etc/lvm/lvm.conf": lvm_conf,
        "/etc/lvm/lvmlocal.conf": "devices {\n  global_filter = [ \"a|.*|\" ]\n}\n",
        "/etc/lvm/lvm.conf.d/10-site.conf": "devices {\n  filter = \"r|/dev/cdrom|\"\n}\n",
        "/etc/lvm/lvm.conf.d/20-old.conf": "devices { filter = [ \"a|/dev/cciss/.*|\", \"r|.*|\" ] }\n",
        "/etc/dracut.conf": "",
    })
    f = facts({})
    steps = plan_repair(tree, f)
    got = changes(steps)
    note = "# xenp2v repair: this filter accepted only the source machine's disks; LVM now scans every disk."
    assert got["/etc/lvm/lvm.conf"] == (
        "devices {\n\tdir = \"/dev\"\n"
        f"\t{note}\n"
        "\t# filter = [ \"a|^/dev/disk/by-id/scsi-3600508b1001c5a3d.*|\", \"a|^/dev/mapper/mpath.*|\",\n"
        "\t#            \"r|.*|\" ]\n"
        "\t# filter = [ \"a|.*|\" ]\n"
        f"\t{note}\n"
        "\t# global_filter = [ \"a|/dev/sd[a-b].*|\", \"r|.*|\" ]\n"
        "}\n")
    assert got["/etc/lvm/lvm.conf.d/20-old.conf"] == \
        f"{note}\n# devices {{ filter = [ \"a|/dev/cciss/.*|\", \"r|.*|\" ] }}\n"
    # Filters the VM's disk passes stay.
    assert "/etc/lvm/lvmlocal.conf" not in got and "/etc/lvm/lvm.conf.d/10-site.conf" not in got
    # The initramfs carries lvm.conf: it is rebuilt.
    assert [str(c) for c in Plan(steps).commands][0] == "dracut -f --regenerate-all"
    assert_second_run_empty(tree, f)


# (partition n of the source's boot disk, a partition of another of its disks or None)
NAMES = [
    ("/dev/cciss/c0d0p{n}", "/dev/cciss/c0d1p1"),
    ("/dev/ida/c0d0p{n}", "/dev/ida/c1d0p1"),
    ("/dev/hda{n}", "/dev/hdb1"),
    ("/dev/xvda{n}", "/dev/xvdb1"),
    ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1-part{n}", None),
    ("/dev/mapper/mpatha-part{n}", "/dev/mapper/mpathb-part1"),
    ("/dev/mapper/mpatha{n}", "/dev/mapper/mpathb1"),
    ("/dev/mapper/mpathap{n}", "/dev/mapper/mpathbp1"),
    ("/dev/mapper/3600508b1001c5a3d9d9d4c2a0e0f0001-part{n}", "/dev/mapper/3600508b1001c5a3d9d9d4c2a0e0f0002-part1"),
]


@pytest.mark.parametrize("name,other", NAMES, ids=[n.removeprefix("/dev/") for n, _ in NAMES])
def test_multipath_and_old_controller_names_become_uuids(tmp_path, name, other):
    home = f"{other} /home ext4 defaults 0 2\n" if other else ""
    tree = make_tree(tmp_path, {
        "/etc/os-release": DEBIAN_OS,
        "/etc/fstab": f"{name.format(n=2)} / ext4 defaults 0 1\n{name.format(n=1)} /boot ext4 defaults 0 2\n"
                      f"{name.format(n=3)} none swap sw 0 0\n{home}",
        "/etc/default/grub": f'GRUB_CMDLINE_LINUX="root={name.format(n=2)} resume={name.format(n=3)}"\n',
        "/etc/initramfs-tools/conf.d/resume": f"RESUME={name.format(n=3)}\n",
        "/etc/multipath/bindings": "# Format:\n# alias wwid\n#\nmpatha 3600508b1001c5a3d9d9d4c2a0e0f0001\n",
        "/etc/multipath/wwids": "/3600508b1001c5a3d9d9d4c2a0e0f0001/\n",
        "/etc/initramfs-tools/initramfs.conf": "MODULES=most\n",
    })
    names, notes = names_from_disk(guest_references(tree), DISK)
    assert notes == ([f"{other} is on another disk of the source machine; left as it is."] if other else [])
    f = facts(names)
    got = changes(plan_repair(tree, f))
    assert got["/etc/fstab"] == (f"UUID={ROOT_UUID} / ext4 defaults 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n"
                                 f"UUID={SWAP_UUID} none swap sw 0 0\n{home}")
    assert got["/etc/default/grub"] == f'GRUB_CMDLINE_LINUX="root=UUID={ROOT_UUID} resume=UUID={SWAP_UUID}"\n'
    assert got["/etc/initramfs-tools/conf.d/resume"] == f"RESUME=UUID={SWAP_UUID}\n"
    assert got["/etc/multipath/bindings"] is None and got["/etc/multipath/wwids"] is None
    assert_second_run_empty(tree, f)


DEBCONF = """Name: grub-pc/install_devices
Template: grub-pc/install_devices
Value: /dev/disk/by-id/ata-SAMSUNG_SSD_860_S3Z9NB0K123456
Owners: grub-pc
Flags: seen
Variables:
 CHOICES = /dev/sda (500107 MB; SAMSUNG SSD 860)
 RAW_CHOICES = /dev/disk/by-id/ata-SAMSUNG_SSD_860_S3Z9NB0K123456

Name: grub-pc/install_devices_empty
Template: grub-pc/install_devices_empty
Value: false
Owners: grub-pc

Name: grub-efi/install_devices
Template: grub-efi/install_devices
Value: /dev/disk/by-id/ata-SAMSUNG_SSD_860_S3Z9NB0K123456-part1
Owners: grub-efi-amd64

Name: keyboard-configuration/layout
Template: keyboard-configuration/layout
Value: /dev/sda
Owners: keyboard-configuration
"""


def test_debconf_install_devices_name_the_vms_disk(tmp_path):
    tree = make_tree(tmp_path, {"/etc/os-release": DEBIAN_OS, "/etc/fstab": "", "/var/cache/debconf/config.dat": DEBCONF})
    disk = [fs("/dev/xvda1", "vfat", ESP_UUID, 1), fs("/dev/xvda2", "ext4", ROOT_UUID, 2)]
    # Repaired from a host that sees the disk as a loop device: the guest will call it /dev/xvda.
    f = Facts(filesystems=disk, disk="/dev/loop3")
    got = changes(plan_repair(tree, f))
    assert got["/var/cache/debconf/config.dat"] == DEBCONF.replace(
        "Value: /dev/disk/by-id/ata-SAMSUNG_SSD_860_S3Z9NB0K123456\n", "Value: /dev/xvda\n").replace(
        "Value: /dev/disk/by-id/ata-SAMSUNG_SSD_860_S3Z9NB0K123456-part1\n", "Value: /dev/xvda1\n")
    assert_second_run_empty(tree, f)


def test_suse_grub_installdevice_names_the_vms_disk(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": SUSE_OS, "/etc/fstab": "",
        "/etc/default/grub_installdevice": "/dev/disk/by-id/ata-SAMSUNG_SSD_860_S3Z9NB0K123456-part2\n"
                                           "/dev/disk/by-id/wwn-0x5002538e40a0b1c2\nactivate\ngeneric_mbr\n",
    })
    f = facts({})
    got = changes(plan_repair(tree, f))
    assert got["/etc/default/grub_installdevice"] == "/dev/xvda2\n/dev/xvda\nactivate\ngeneric_mbr\n"
    assert_second_run_empty(tree, f)


def grubenv(text: str) -> str:
    return text + "#" * (1024 - len(text))


def test_rhel8_uefi_menu_on_the_esp_grubenv_and_bls(tmp_path):
    esp_menu = ("set timeout=5\n### BEGIN /etc/grub.d/10_linux ###\nmenuentry 'CentOS Linux' {\n"
                "\tlinuxefi /vmlinuz-4.18.0-348.el8.x86_64 root=/dev/sda3 ro resume=/dev/sda2 rhgb quiet\n}\n")
    tree = make_tree(tmp_path, {
        "/etc/os-release": RHEL8_OS,
        "/etc/fstab": "/dev/sda3 / xfs defaults 0 0\n/dev/sda1 /boot/efi vfat umask=0077 0 2\n"
                      "/dev/sda2 none swap defaults 0 0\n",
        "/boot/efi/EFI/centos/grub.cfg": esp_menu,
        "/boot/efi/EFI/centos/grubenv": grubenv("# GRUB Environment Block\nsaved_entry=abc-4.18.0-348.el8.x86_64\n"
                                               "kernelopts=root=/dev/sda3 ro resume=/dev/sda2 rhgb quiet \n"),
        "/boot/efi/EFI/centos/shimx64.efi": "", "/boot/efi/EFI/centos/grubx64.efi": "",
        "/boot/loader/entries/abc-4.18.0-348.el8.x86_64.conf": "title CentOS\noptions $kernelopts $tuned_params\n",
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX="resume=/dev/sda2 rhgb quiet"\nGRUB_ENABLE_BLSCFG=true\n',
        "/etc/dracut.conf": "", "/usr/sbin/grub2-mkconfig": "",
    })
    (tmp_path / "etc/grub2-efi.cfg").symlink_to("../boot/efi/EFI/centos/grub.cfg")
    disk = [fs("/dev/xvda1", "vfat", ESP_UUID, 1), fs("/dev/xvda2", "swap", SWAP_UUID, 2),
            fs("/dev/xvda3", "xfs", ROOT_UUID, 3)]
    names, notes = names_from_disk(guest_references(tree), disk)
    assert notes == []
    f = Facts(filesystems=disk, names=names, disk="/dev/xvda", bios=False, uefi=True)
    steps = plan_repair(tree, f)
    got = changes(steps)
    assert got["/boot/efi/EFI/centos/grub.cfg"] == esp_menu.replace(
        "root=/dev/sda3 ro resume=/dev/sda2", f"root=UUID={ROOT_UUID} ro resume=UUID={SWAP_UUID}")
    env = got["/boot/efi/EFI/centos/grubenv"]
    assert len(env) == 1024 and env.rstrip("#") == (
        "# GRUB Environment Block\nsaved_entry=abc-4.18.0-348.el8.x86_64\n"
        f"kernelopts=root=UUID={ROOT_UUID} ro resume=UUID={SWAP_UUID} rhgb quiet \n")
    assert "/boot/loader/entries/abc-4.18.0-348.el8.x86_64.conf" not in got
    assert [str(c) for c in Plan(steps).commands][-2:] == [
        "grub2-mkconfig -o /boot/grub2/grub.cfg", "grub2-mkconfig -o /boot/efi/EFI/centos/grub.cfg"]
    assert_second_run_empty(tree, f)


def test_rhel9_esp_stub_is_left_to_hand_over(tmp_path):
    stub = f"search --no-floppy --fs-uuid --set=dev {ROOT_UUID}\nset prefix=($dev)/boot/grub2\nexport $prefix\n" \
           "configfile $prefix/grub.cfg\n"
    tree = make_tree(tmp_path, {
        "/etc/os-release": RHEL_OS, "/etc/fstab": f"UUID={ROOT_UUID} / xfs defaults 0 0\n"
                                                  f"UUID={ESP_UUID} /boot/efi vfat umask=0077 0 2\n",
        "/boot/efi/EFI/rocky/grub.cfg": stub, "/etc/dracut.conf": "", "/usr/sbin/grub2-mkconfig": "",
    })
    steps = plan_repair(tree, Facts(filesystems=DISK, disk="/dev/xvda", bios=False, uefi=True))
    assert "/boot/efi/EFI/rocky/grub.cfg" not in changes(steps)
    assert [str(c) for c in Plan(steps).commands][-1] == "grub2-mkconfig -o /boot/grub2/grub.cfg"


def test_extlinux_menu_gets_uuids(tmp_path):
    menu = "DEFAULT linux\nLABEL linux\n  KERNEL /vmlinuz\n  APPEND root=/dev/sda2 resume=/dev/sda3 ro\n"
    tree = make_tree(tmp_path, {"/etc/os-release": DEBIAN_OS, "/etc/fstab": "/dev/sda2 / ext4 defaults 0 1\n",
                                "/boot/extlinux/extlinux.conf": menu})
    names, _ = names_from_disk(guest_references(tree), DISK)
    f = facts(names)
    got = changes(plan_repair(tree, f))
    assert got["/boot/extlinux/extlinux.conf"] == menu.replace(
        "root=/dev/sda2 resume=/dev/sda3", f"root=UUID={ROOT_UUID} resume=UUID={SWAP_UUID}")
    assert_second_run_empty(tree, f)


def test_suse_grub_bios_modules_under_usr_share_are_found(tmp_path):
    tree = make_tree(tmp_path, {
        "/etc/os-release": SUSE_OS, "/etc/fstab": f"UUID={ROOT_UUID} / btrfs defaults 0 0\n",
        "/usr/sbin/grub2-mkconfig": "", "/usr/share/grub2/i386-pc/normal.mod": "",
        "/usr/share/grub2/i386-pc/core.img": "", "/etc/dracut.conf": "",
    })
    steps = plan_repair(tree, facts({}))
    commands = [str(c) for c in Plan(steps).commands]
    assert commands == ["dracut -f --regenerate-all", "grub2-install --target=i386-pc /dev/xvda",
                        "grub2-mkconfig -o /boot/grub2/grub.cfg"]
    assert not any("BIOS modules are not installed" in n for s in steps for n in s.notes)
