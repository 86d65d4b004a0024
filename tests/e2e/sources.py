"""Source machines for the boot tests: Debian bookworm disks built with debootstrap, cached.

Each source is what a technician meets in the field: fstab and grub name the disk by its
controller's name (`/dev/sda1`, by-id links), the NIC is configured by name in ifupdown, and
the initramfs holds only the drivers of its own AHCI controller (an explicit module list: built
here through a loop device, `MODULES=dep` would pick the loop driver instead). A unit prints
`XENP2V-BOOT-OK root=<dev> net=<iface>:<addr>` on the serial line once multi-user is reached
with the network up.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from agent.disk.blockdev import lvm_layout

CACHE = Path(os.environ.get("XENP2V_E2E_CACHE", "/var/cache/xenp2v/e2e"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = ("systemd-sysv,udev,kmod,ifupdown,iproute2,linux-image-amd64,initramfs-tools,zstd,"
            "grub-pc-bin,grub-efi-amd64-bin,grub2-common,lvm2,e2fsprogs")
SOURCE_NIC = "ens3"         # e1000 in PCI slot 3 of QEMU's pc machine
ADDRESS = "10.0.2.15/24"    # QEMU user networking, restricted: nothing leaves the emulator
DISK_SIZE = 3 * 1024**3
SERIAL = "SRC0001"          # the source disk's serial: its by-id name (boot.CONTROLLERS gives it)
BY_ID = f"/dev/disk/by-id/ata-QEMU_HARDDISK_{SERIAL}"
LVM_CONFIG = "devices { obtain_device_list_from_udev=0 use_devicesfile=0 } activation { udev_sync=0 udev_rules=0 }"

MARKER_SCRIPT = """#!/bin/sh
# Says on the serial line that the system is up: which root, which NIC with which address.
root=$(findmnt -no SOURCE /)
net=$(ip -o -4 addr show scope global | awk '{print $2 ":" $4}' | head -n 1)
# Through the kernel log, which the kernel prints on its console (ttyS0): a write to /dev/ttyS0
# itself is lost when the serial getty starts at the same moment and hangs the line up.
echo "XENP2V-BOOT-OK root=$root net=${net:-none}" > /dev/kmsg
"""
# The lvm-filter source's lvm.conf settings (in its `devices {` section): only its PV, by-id
# and by its kernel name. By-id alone does not boot: the initramfs's udev rule runs pvscan on
# the partition's add event, before udev makes that partition's links (lvmteam/lvm2#104).
LVM_ACCEPT = f'"a|^{BY_ID}-part3$|", "a|^/dev/sda3$|", "r|.*|"'
LVM_FILTER = f"\tfilter = [ {LVM_ACCEPT} ]\n\tglobal_filter = [ {LVM_ACCEPT} ]\n"
MOUNT = re.compile(r"XENP2V-MOUNT (\S+) (\S+) (\S+) (\S+)")


def mounts_script(points: tuple[str, ...]) -> str:
    """Lines for the marker script: for each mount point, `XENP2V-MOUNT <point> <source> <fstype>
    <marker>` (the marker file .xenp2v-fs at the mounted filesystem's top, `none` without one),
    then findmnt's table of real filesystems, each line on the serial console (kernel log)."""
    return ("for point in " + " ".join(points) + "; do\n"
            "  src=$(findmnt -no SOURCE --mountpoint \"$point\" | head -n 1)\n"
            "  kind=$(findmnt -no FSTYPE --mountpoint \"$point\" | head -n 1)\n"
            "  mark=$(cat \"${point%/}/.xenp2v-fs\" 2>/dev/null || echo none)\n"
            "  echo \"XENP2V-MOUNT $point ${src:-none} ${kind:-none} ${mark:-none}\" > /dev/kmsg\n"
            "done\n"
            "findmnt --real -rno TARGET,SOURCE,FSTYPE,UUID | while read -r line; do\n"
            "  echo \"findmnt: $line\" > /dev/kmsg\n"
            "done\n")


def marker_name(point: str) -> str:
    """What the marker file on the filesystem mounted at `point` says: root, home, boot."""
    return point.strip("/").replace("/", "-") or "root"


MARKER_UNIT = """[Unit]
Description=xenp2v e2e boot marker
Wants=network-online.target
After=network-online.target multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/xenp2v-boot-ok

[Install]
WantedBy=multi-user.target
"""


def sh(*args: str, timeout: int = 1800, **kw) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def base_tree() -> Path:
    """The debootstrapped tree every source starts from; built once, kept in the cache."""
    base, stamp = CACHE / f"base-{SUITE}", CACHE / f"base-{SUITE}.stamp"
    if stamp.exists() and stamp.read_text() == PACKAGES and base.is_dir():
        return base
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f"base-{SUITE}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    sh("debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(tmp), MIRROR, timeout=3600)
    for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    tmp.rename(base)
    stamp.write_text(PACKAGES)
    return base


@dataclass(frozen=True)
class Layout:
    """How a source's disk is cut, and how its configuration names what is on it."""

    name: str
    firmware: str                 # bios | uefi
    sfdisk: str                   # sfdisk script of the first disk
    more_disks: tuple[tuple[str, int], ...] = ()   # (sfdisk script, size) of each other disk
    recipe_version: str = "5"
    # Mount points whose filesystem each boot reports (XENP2V-MOUNT lines, see mounts_script):
    # each filesystem carries a marker file naming it, so a wrong one mounted there shows.
    mounted: tuple[str, ...] = ()

    def images(self) -> list[Path]:
        """The cached disk images, first disk first."""
        more = "".join(f"{script}{size}" for script, size in self.more_disks)
        checks = mounts_script(self.mounted) if self.mounted else ""
        checks += LVM_FILTER if self.name == "lvm-filter" else ""
        digest = hashlib.sha256((self.sfdisk + more + self.recipe_version + PACKAGES + MARKER_SCRIPT +
                                 MARKER_UNIT + checks).encode()).hexdigest()[:12]
        return [CACHE / f"source-{self.name}-{digest}.img"] + \
            [CACHE / f"source-{self.name}-{digest}-disk{n}.img" for n in range(2, len(self.more_disks) + 2)]

    def sizes(self) -> list[int]:
        return [DISK_SIZE] + [size for _, size in self.more_disks]


GPT_LVM = ("label: gpt\n,1MiB,21686148-6449-6E6F-744E-656564454649\n"
           ",300MiB,0FC63DAF-8483-4772-8E79-3D69D8477DE4\n,,E6D6D379-F507-44C2-A23C-238F2A3DF928\n")
LAYOUTS = {
    "bios-mbr": Layout("bios-mbr", "bios", "label: dos\n,2800MiB,83,*\n,,82\n"),
    "gpt-lvm": Layout("gpt-lvm", "bios", GPT_LVM),
    "uefi-esp": Layout("uefi-esp", "uefi",
                       "label: gpt\n,100MiB,C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
                       ",,0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"),
    # /home on a second disk, named /dev/sdb1 in fstab: the VM must get its disks in the same order.
    "two-disks": Layout("two-disks", "bios", "label: dos\n,2800MiB,83,*\n,,82\n",
                        more_disks=(("label: dos\n,,83\n", 1024**3),)),
    # /home on a second disk named by-id in fstab (root and swap by the first disk's by-id name):
    # names the source's own udev makes on its AHCI disks (boot.py gives them their serials).
    "two-disks-by-id": Layout("two-disks-by-id", "bios", "label: dos\n,2800MiB,83,*\n,,82\n",
                              more_disks=(("label: dos\n,,83\n", 1024**3),), mounted=("/", "/home")),
    # gpt-lvm whose lvm.conf filter and global_filter accept only the source disk's PV (by-id,
    # /dev/sda3), rejecting every other device: on virtio or Xen's PV disk the root VG is not found.
    "lvm-filter": Layout("lvm-filter", "bios", GPT_LVM, mounted=("/", "/boot")),
}


@dataclass(frozen=True)
class NetVariant:
    """A source whose network is set up otherwise than by name in ifupdown: a copy of the `base`
    layout's image with `files` written into its root (systemd-networkd enabled, ifupdown left
    with lo only). Its VM gets a MAC other than the source's (boot.NEW_MAC), as the server's
    --new-macs makes it; after the repair the NIC must come up as `address` says."""

    name: str
    files: tuple[tuple[str, str], ...]     # (path in the guest, text)
    address: str                            # what the marker must show: ADDRESS, or another static one
    dhcp: bool = False                      # the address must be a lease (`ip` says dynamic)
    source_nic: str = SOURCE_NIC            # the NIC's name on the source
    names_itself: bool = False              # the guest names the NIC by its MAC (no --nic by hand)
    base: str = "bios-mbr"
    recipe_version: str = "1"

    @property
    def firmware(self) -> str:
        return LAYOUTS[self.base].firmware

    def images(self) -> list[Path]:
        digest = hashlib.sha256((LAYOUTS[self.base].images()[0].name + repr(self.files) + NET_REPORT_SCRIPT +
                                 NET_REPORT_UNIT + self.recipe_version).encode()).hexdigest()[:12]
        return [CACHE / f"source-{self.name}-{digest}.img"]

    def sizes(self) -> list[int]:
        return LAYOUTS[self.base].sizes()


SOURCE_MAC = "52:54:00:12:34:56"     # boot.MAC: the source's e1000
STATIC_ADDRESS = "10.0.2.77/24"      # not a lease QEMU's DHCP would give: seen up, it was the static one
# What netplan writes for `match: {macaddress: …}` + `set-name: lan0` (10-netplan-*.link and
# .network): the NIC is named and configured by its MAC alone.
_BY_MAC = (("/etc/systemd/network/10-lan0.link",
            f"[Match]\nMACAddress={SOURCE_MAC}\n\n[Link]\nName=lan0\n"),
           ("/etc/systemd/network/10-lan0.network",
            f"[Match]\nMACAddress={SOURCE_MAC}\n\n[Network]\nAddress={STATIC_ADDRESS}\n"))
NET_VARIANTS = {
    # (a) a static address on a NIC named and configured by its MAC.
    "net-static-mac": NetVariant("net-static-mac", _BY_MAC, STATIC_ADDRESS, source_nic="lan0", names_itself=True),
    # (b) DHCP on the NIC by its MAC (QEMU's user network leases 10.0.2.15).
    "net-dhcp": NetVariant("net-dhcp", (("/etc/systemd/network/20-wired.network",
                                         f"[Match]\nMACAddress={SOURCE_MAC}\n\n[Network]\nDHCP=ipv4\n"),),
                           ADDRESS, dhcp=True),
    # (c) the NIC by its path name, an alternative name of the slot name ens3 (systemd 252 gives both).
    "net-altname": NetVariant("net-altname", (("/etc/systemd/network/20-wired.network",
                                               f"[Match]\nName=enp0s3\n\n[Network]\nAddress={ADDRESS}\n"),),
                              ADDRESS),
}
# Each address the guest has, with its flags (a lease says "dynamic"), on the serial line.
# Each NIC with its MAC and alternative names (what the probe reads, `ip link`), too.
NET_REPORT_SCRIPT = """#!/bin/sh
ip -o -4 addr show scope global | while read -r line; do echo "XENP2V-NET $line" > /dev/kmsg; done
ip -o link show | grep link/ether | while read -r line; do echo "XENP2V-LINK $line" > /dev/kmsg; done
"""
# Before the marker: the boot test stops the machine when it sees the marker.
NET_REPORT_UNIT = MARKER_UNIT.replace("boot marker", "addresses").replace(
    "xenp2v-boot-ok", "xenp2v-net-report").replace("[Unit]\n", "[Unit]\nBefore=xenp2v-boot-ok.service\n")
NETWORKD_UNITS = (("multi-user.target.wants", "systemd-networkd.service"),
                  ("sockets.target.wants", "systemd-networkd.socket"),
                  ("network-online.target.wants", "systemd-networkd-wait-online.service"),
                  ("multi-user.target.wants", "xenp2v-net-report.service"))


def variant(name: str):
    """The Layout or NetVariant called `name`."""
    return LAYOUTS.get(name) or NET_VARIANTS[name]


SCENARIOS = (*LAYOUTS, *NET_VARIANTS)


def source_image(name: str, say=print) -> Path:
    """The first (boot) disk of scenario `name`, built when missing."""
    return source_images(name, say)[0]


def source_images(name: str, say=print) -> list[Path]:
    """The cached source disks of scenario `name`, first disk first, built when missing."""
    if name in NET_VARIANTS:
        return [_net_image(NET_VARIANTS[name], say)]
    layout = LAYOUTS[name]
    images = layout.images()
    if all(image.exists() for image in images):
        return images
    base = base_tree()
    tmps = [image.with_suffix(".tmp") for image in images]
    for tmp, size in zip(tmps, layout.sizes()):
        tmp.unlink(missing_ok=True)
        with open(tmp, "wb") as f:
            f.truncate(size)
    started = time.monotonic()
    with ExitStack() as stack:
        loops = []
        for tmp, script in zip(tmps, [layout.sfdisk] + [s for s, _ in layout.more_disks]):
            loop = sh("losetup", "--show", "-f", "-P", str(tmp)).strip()
            stack.callback(subprocess.run, ["losetup", "-d", loop], capture_output=True)
            sh("sfdisk", "-q", loop, input=script)
            subprocess.run(["partx", "-a", loop], capture_output=True)
            subprocess.run(["partx", "-u", loop], capture_output=True)
            stack.callback(subprocess.run, ["partx", "-d", loop], capture_output=True)
            loops.append(loop)
        loop = loops[0]
        root, mounts, fstab, cmdline_root, modules = _filesystems(layout, loops, stack)
        stack.callback(subprocess.run, ["sync"])
        mnt = CACHE / f"mnt-{layout.name}"
        _mount(root, mnt, stack)
        for dev, point in mounts:
            _mount(dev, mnt / point.lstrip("/"), stack)
        sh("cp", "-a", f"{base}/.", str(mnt))
        _configure(mnt, fstab, cmdline_root, modules)
        if layout.more_disks:
            _home(mnt)
        if layout.mounted:
            _checks(mnt, layout)
        for point, kind in (("proc", "proc"), ("sys", "sysfs")):
            sh("mount", "-t", kind, kind, str(mnt / point))
            stack.callback(subprocess.run, ["umount", "-l", str(mnt / point)], capture_output=True)
        sh("mount", "--bind", "/dev", str(mnt / "dev"))
        stack.callback(subprocess.run, ["umount", "-l", str(mnt / "dev")], capture_output=True)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        sh("chroot", str(mnt), "update-initramfs", "-u", "-k", "all", env=env)
        if layout.firmware == "bios":
            sh("chroot", str(mnt), "grub-install", "--target=i386-pc", loop, env=env)
        else:
            sh("chroot", str(mnt), "grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi",
               "--removable", "--no-nvram", env=env)
        sh("chroot", str(mnt), "grub-mkconfig", "-o", "/boot/grub/grub.cfg", env=env)
        cfg = mnt / "boot/grub/grub.cfg"
        # grub-mkconfig named a loop device; the source machine calls its root as fstab does.
        cfg.write_text(re.sub(r"root=/dev/\S+", f"root={cmdline_root}", cfg.read_text()))
    for tmp, image in zip(tmps, images):
        tmp.rename(image)
    say(f"built source {name} in {time.monotonic() - started:.0f} s: {' '.join(map(str, images))}")
    return images


def _net_image(net: NetVariant, say) -> Path:
    """A copy of the base layout's first disk with the variant's network files on its root
    (partition 1: the bios-mbr layout's)."""
    image = net.images()[0]
    if image.exists():
        return image
    base = source_images(net.base, say)[0]
    tmp = image.with_suffix(".tmp")
    sh("cp", "--sparse=always", str(base), str(tmp))
    with ExitStack() as stack:
        loop = sh("losetup", "--show", "-f", "-P", str(tmp)).strip()
        stack.callback(subprocess.run, ["losetup", "-d", loop], capture_output=True)
        subprocess.run(["partx", "-a", loop], capture_output=True)
        stack.callback(subprocess.run, ["partx", "-d", loop], capture_output=True)
        mnt = CACHE / f"mnt-{net.name}"
        _mount(f"{loop}p1", mnt, stack)
        (mnt / "etc/network/interfaces").write_text("auto lo\niface lo inet loopback\n")
        for path, text in net.files:
            (mnt / path.lstrip("/")).write_text(text)
        script = mnt / "usr/local/sbin/xenp2v-net-report"
        script.write_text(NET_REPORT_SCRIPT)
        script.chmod(0o755)
        (mnt / "etc/systemd/system/xenp2v-net-report.service").write_text(NET_REPORT_UNIT)
        for wants, unit in NETWORKD_UNITS:
            link = mnt / "etc/systemd/system" / wants / unit
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                where = "/etc/systemd/system" if unit.startswith("xenp2v") else "/lib/systemd/system"
                link.symlink_to(f"{where}/{unit}")
    tmp.rename(image)
    say(f"built source {net.name} from {base.name}: {image}")
    return image


def _mount(dev: str, where: Path, stack: ExitStack) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if "vfat" in Path("/proc/filesystems").read_text() or "vfat" not in sh("blkid", "-p", dev):
        sh("mount", dev, str(where))
        stack.callback(subprocess.run, ["umount", "-l", str(where)], capture_output=True)
    else:
        # This kernel has no vfat: FUSE writes the ESP (fsname: grub-install finds the device).
        sh("fusefat", "-o", f"rw+,fsname={dev}", dev, str(where))
        stack.callback(subprocess.run, ["umount", str(where)], capture_output=True)


def _filesystems(layout: Layout, loops: list[str], stack: ExitStack):
    """Make the filesystems; returns (root device, [(device, mountpoint)], fstab, root=, modules)."""
    loop = loops[0]
    p = lambda n: f"{loop}p{n}"  # noqa: E731
    ahci = ["ahci", "libahci", "sd_mod", "ext4"]
    if layout.name in ("bios-mbr", "two-disks", "two-disks-by-id"):
        sh("mkfs.ext4", "-q", p(1))
        sh("mkswap", p(2))
        fstab = "/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/sda2 none swap sw 0 0\n"
        if layout.name == "bios-mbr":
            return p(1), [], fstab, "/dev/sda1", ahci
        sh("mkfs.ext4", "-q", f"{loops[1]}p1")
        if layout.name == "two-disks-by-id":
            # Every name by-id, the root's on grub's command line too: AHCI probes its disks in
            # parallel, so which one is sda differs from boot to boot (seen: the 1 GiB one).
            second = BY_ID.replace(SERIAL, "SRC0002")
            fstab = (f"{BY_ID}-part1 / ext4 errors=remount-ro 0 1\n{BY_ID}-part2 none swap sw 0 0\n"
                     f"{second}-part1 /home ext4 defaults 0 2\n")
            return p(1), [(f"{loops[1]}p1", "/home")], fstab, f"{BY_ID}-part1", ahci
        fstab += "/dev/sdb1 /home ext4 defaults 0 2\n"
        return p(1), [(f"{loops[1]}p1", "/home")], fstab, "/dev/sda1", ahci
    if layout.name in ("gpt-lvm", "lvm-filter"):
        sh("mkfs.ext4", "-q", p(2))
        # Made without device-mapper (this kernel may lack it): the LVs are written through loop
        # devices over their one linear segment each.
        cfg = ("--config", LVM_CONFIG)
        sh("lvm", "pvcreate", *cfg, "-q", p(3))
        sh("lvm", "vgcreate", *cfg, "-q", "vgsrc", p(3))
        for lv, size in (("swap", ("-L", "256M")), ("root", ("-l", "100%FREE"))):
            sh("lvm", "lvcreate", "--driverloaded", "n", *cfg, "-an", "-Zn", "-q", "-y", *size, "-n", lv, "vgsrc")
        lvs = {lv.name: _map_lv(lv, stack) for vg in lvm_layout([p(3)]) for lv in vg.lvs}
        sh("mkfs.ext4", "-q", lvs["root"])
        sh("mkswap", lvs["swap"])
        fstab = ("/dev/mapper/vgsrc-root / ext4 errors=remount-ro 0 1\n"
                 f"{BY_ID}-part2 /boot ext4 defaults 0 2\n"
                 "/dev/mapper/vgsrc-swap none swap sw 0 0\n")
        return lvs["root"], [(p(2), "/boot")], fstab, "/dev/mapper/vgsrc-root", ahci + ["dm_mod"]
    sh("mkfs.vfat", "-F", "32", p(1))
    sh("mkfs.ext4", "-q", p(2))
    fstab = "/dev/sda2 / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot/efi vfat umask=0077 0 1\n"
    return p(2), [(p(1), "/boot/efi")], fstab, "/dev/sda2", ahci


def _map_lv(lv, stack: ExitStack) -> str:
    seg = lv.segments[0]
    loop = sh("losetup", "--show", "-f", "--offset", str(seg["pv_start"]), "--sizelimit", str(lv.size),
              seg["pv"]).strip()
    stack.callback(subprocess.run, ["losetup", "-d", loop], capture_output=True)
    return loop


def _home(mnt: Path) -> None:
    """A user's files on the second disk, so that its capture carries data."""
    home = mnt / "home/user"
    home.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        (home / f"notes-{i}.txt").write_text(f"file {i} of the user's home on the second disk\n" * 4096)


def _checks(mnt: Path, layout: Layout) -> None:
    """A marker file on each filesystem the boot checks; the marker script reports the mounts; the
    lvm-filter source's filters (before its initramfs is made: the initramfs carries them)."""
    for point in layout.mounted:
        (mnt / point.lstrip("/") / ".xenp2v-fs").write_text(marker_name(point) + "\n")
    script = mnt / "usr/local/sbin/xenp2v-boot-ok"
    head, sep, tail = MARKER_SCRIPT.partition("echo \"XENP2V-BOOT-OK")
    script.write_text(head + mounts_script(layout.mounted) + sep + tail)
    if layout.name == "lvm-filter":
        conf = mnt / "etc/lvm/lvm.conf"
        text = conf.read_text()
        if not re.search(r"^devices \{\n", text, re.MULTILINE):
            raise RuntimeError(f"{conf} has no 'devices {{' section to put the filter in")
        conf.write_text(re.sub(r"^devices \{\n", lambda m: m[0] + LVM_FILTER, text, count=1, flags=re.MULTILINE))


def _configure(mnt: Path, fstab: str, root: str, modules: list[str]) -> None:
    (mnt / "etc/fstab").write_text(fstab)
    (mnt / "etc/hostname").write_text("source\n")
    (mnt / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\n"
        f"auto {SOURCE_NIC}\niface {SOURCE_NIC} inet static\n    address {ADDRESS}\n")
    # rootdelay: a disk the initramfs cannot see fails the boot in 30 s, not 180.
    (mnt / "etc/default/grub").write_text(
        "GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_DISTRIBUTOR=Debian\n"
        "GRUB_CMDLINE_LINUX_DEFAULT=\"\"\n"
        "GRUB_CMDLINE_LINUX=\"console=ttyS0,115200 rootdelay=30\"\n"
        "GRUB_TERMINAL=serial\nGRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"\n"
        "GRUB_DISABLE_LINUX_UUID=true\nGRUB_DISABLE_OS_PROBER=true\n")
    conf = mnt / "etc/initramfs-tools/initramfs.conf"
    conf.write_text(conf.read_text().replace("MODULES=most", "MODULES=list"))
    (mnt / "etc/initramfs-tools/modules").write_text("".join(f"{m}\n" for m in modules))
    if "sda" in fstab and "swap" in fstab and root == "/dev/sda1":
        (mnt / "etc/initramfs-tools/conf.d/resume").write_text("RESUME=/dev/sda2\n")
    script = mnt / "usr/local/sbin/xenp2v-boot-ok"
    script.write_text(MARKER_SCRIPT)
    script.chmod(0o755)
    (mnt / "etc/systemd/system/xenp2v-boot-ok.service").write_text(MARKER_UNIT)
    wants = mnt / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "xenp2v-boot-ok.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/xenp2v-boot-ok.service")
