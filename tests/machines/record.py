"""Build machines from loop devices, probe them, and save the recordings in this directory.

Run as root from the repository:  .venv/bin/python tests/machines/record.py [NAME ...]

Each builder makes real partition tables, filesystems, LVM, md RAID1 members and OS trees on
sparse loop devices; the probe reads them as it reads any disk. What a loop device cannot show
(its bus, model, serial, name, removable flag) and what this box cannot be (its DMI, CPU, NICs,
firmware) is then set by `adjust()`, and each file's "note" says what was set. The tests use the
same builders to check the probe on real devices.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import md_superblock  # noqa: E402
import regf  # noqa: E402

from agent.probe import LiveProber, Machine  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
LVM_NO_DM = ["--driverloaded", "n"]  # writes LVM metadata even where the kernel has no device-mapper
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
RAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"


def sh(*args: str, input: str | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, input=input, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


class Lab:
    """Sparse loop disks, partitions and rw mounts in a temporary directory, all undone at exit."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.loops: list[str] = []
        self.mounts: list[Path] = []

    def disk(self, size: int) -> str:
        backing = self.tmp / f"disk{len(self.loops)}.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        dev = sh("losetup", "--show", "-f", str(backing)).strip()
        self.loops.append(dev)
        return dev

    def partition(self, dev: str, script: str) -> list[str]:
        sh("sfdisk", "-q", "--wipe", "always", dev, input=script)
        subprocess.run(["partx", "-a", dev], capture_output=True)
        subprocess.run(["partx", "-u", dev], capture_output=True)
        out = sh("lsblk", "-lnpo", "NAME,TYPE", dev).split()
        return [name for name, kind in zip(out[::2], out[1::2]) if kind == "part"]

    def mount(self, dev: str, *options: str) -> Path:
        where = self.tmp / f"mnt{len(self.mounts)}"
        where.mkdir()
        sh("mount", *options, dev, str(where))
        self.mounts.append(where)
        return where

    def view(self, dev: str, offset: int, size: int | None = None) -> str:
        """A writable loop over part of `dev` (an LV's segment, a RAID member's data)."""
        args = ["losetup", "--show", "-f", "-o", str(offset)]
        if size:
            args += ["--sizelimit", str(size)]
        view = sh(*args, dev).strip()
        self.loops.append(view)
        return view

    def release(self, keep: Path | None = None) -> None:
        """Unmount what the builder wrote through (all but `keep`), as a powered-off disk is."""
        for where in reversed(self.mounts):
            if where != keep:
                sh("umount", str(where))
        self.mounts = [keep] if keep in self.mounts else []

    def close(self) -> None:
        for where in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        for dev in reversed(self.loops):
            subprocess.run(["partx", "-d", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    with tempfile.TemporaryDirectory(prefix="p2v-lab-") as tmp:
        the_lab = Lab(Path(tmp))
        try:
            yield the_lab
        finally:
            the_lab.close()


def write(root: Path, files: dict[str, str]) -> None:
    """Files and symlinks ("-> target") under `root`."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("-> "):
            path.symlink_to(content[3:])
        else:
            path.write_text(content)


def linux_root(root: Path, os_release: str, hostname: str, kernels: list[str],
               boot: Path | None = None) -> None:
    """A root filesystem's identity: os-release (usr-merged, linked from /etc), hostname, fstab,
    modules for each kernel, and the kernels in /boot (or in `boot`, a separate /boot)."""
    write(root, {
        "usr/lib/os-release": os_release,
        "etc/os-release": "-> ../usr/lib/os-release",
        "lib": "-> usr/lib",
        "etc/hostname": hostname + "\n",
        "etc/fstab": "# static file system information\n",
        **{f"usr/lib/modules/{k}/modules.dep": "" for k in kernels},
    })
    (root / "boot").mkdir(exist_ok=True)
    for k in kernels:
        (boot or root / "boot").joinpath(f"vmlinuz-{k}").write_bytes(b"\0" * 1024)


def os_release(pretty: str, id: str, version: str, like: str = "") -> str:
    name = pretty.split(" ")[0]
    text = f'PRETTY_NAME="{pretty}"\nNAME="{name}"\nVERSION_ID="{version}"\nID={id}\n'
    return text + (f'ID_LIKE="{like}"\n' if like else "")


@dataclass
class Setup:
    devices: list[str]                    # the disks to probe, boot medium included
    names: dict[str, str]                 # loop device → the name the machine shows (sda, nvme0n1)
    disks: dict[str, dict]                # shown name → Disk fields a loop device cannot show
    machine: dict                         # Machine fields this box cannot show
    note: str
    medium: Path | None = None            # where the boot medium is mounted, if one is


def _box(vendor: str, product: str, serial: str, uuid: str, firmware: str, cpu: dict,
         memory: int, nics: list[dict]) -> dict:
    return {"vendor": vendor, "product": product, "serial": serial, "system_uuid": uuid,
            "firmware": firmware, "cpu": {"hypervisor": False, **cpu}, "memory": memory,
            "nics": [{"speed": 1000, "link": True, "addresses": [], **n} for n in nics]}


def bios_mbr(lab: Lab) -> Setup:
    """An old tower: BIOS, MBR, Debian 12 on ext4, swap in a logical partition."""
    dev = lab.disk(16 * GiB)
    root, _ext, swap = lab.partition(dev, "label: dos\nlabel-id: 0x5e1f00d1\n"
                                          ",12G,83,*\n,,5\n,,82\n")
    sh("mkfs.ext4", "-q", "-L", "root", root)
    sh("mkswap", "-L", "swap", swap)
    linux_root(lab.mount(root), os_release("Debian GNU/Linux 12 (bookworm)", "debian", "12"),
               "tower", ["6.1.0-18-amd64", "6.1.0-21-amd64"])
    return Setup(
        devices=[dev], names={dev: "sda"},
        disks={"sda": {"model": "ATA WDC WD5000AAKX-0", "serial": "WD-WCAYUJ512345",
                       "wwn": "0x50014ee2b1234567", "transport": "sata", "rotational": True}},
        machine=_box("Dell Inc.", "OptiPlex 7010", "7XK2QW1", "4c4c4544-0058-4b10-8032-b7c04f515731",
                     "bios", {"model": "Intel(R) Core(TM) i5-3470 CPU @ 3.20GHz", "sockets": 1,
                              "cores": 4, "threads": 4}, 8 * GiB,
                     [{"name": "eno1", "mac": "b8:ca:3a:6e:11:22", "driver": "e1000e"}]),
        note="",
    )


def uefi_gpt_lvm(lab: Lab) -> Setup:
    """A UEFI server: GPT, ESP, separate /boot, Rocky Linux 9 on XFS in LVM with swap."""
    dev = lab.disk(64 * GiB)
    esp, boot, pv = lab.partition(dev, f"label: gpt\nsize=600M,type={ESP},name=\"EFI System Partition\"\n"
                                       f"size=1G,type={LINUX}\ntype={LVM}\n")
    sh("mkfs.vfat", "-F", "32", "-n", "ESP", esp)
    sh("mkfs.ext4", "-q", boot)
    sh("lvm", "pvcreate", "-q", "--devices", pv, pv)
    sh("lvm", "vgcreate", "-q", "--devices", pv, "rl", pv)
    for name, size in (("swap", "4G"), ("root", "40G")):
        sh("lvm", "lvcreate", *LVM_NO_DM, "--devices", pv, "-q", "-an", "-Zn", "-L", size,
           "-n", name, "rl")
    segments = json.loads(sh("lvm", "lvs", "--devices", pv, "--reportformat", "json", "--units",
                             "b", "--nosuffix", "-o", "lv_name,seg_pe_ranges,lv_size"))
    pe_start = int(sh("lvm", "pvs", "--devices", pv, "--noheadings", "--units", "b",
                      "--nosuffix", "-o", "pe_start", pv).strip())
    views = {}
    for row in segments["report"][0]["lv"]:
        first = int(row["seg_pe_ranges"].rsplit(":", 1)[1].split("-")[0])
        views[row["lv_name"]] = lab.view(pv, pe_start + first * 4 * MiB, int(row["lv_size"]))
    sh("mkswap", views["swap"])
    sh("mkfs.xfs", "-q", views["root"])
    kernels = ["5.14.0-362.8.1.el9_3.x86_64"]
    linux_root(lab.mount(views["root"]),
               os_release("Rocky Linux 9.3 (Blue Onyx)", "rocky", "9.3", "rhel centos fedora"),
               "db01.example.com", kernels, boot=lab.mount(boot))
    return Setup(
        devices=[dev], names={dev: "sda"},
        disks={"sda": {"model": "DELL PERC H730P Mini", "serial": None,
                       "wwn": "0x61866da0a1b2c3d4", "transport": "sas", "rotational": False}},
        machine=_box("Dell Inc.", "PowerEdge R630", "9GHT5K2", "4c4c4544-0047-4810-8054-b9c04f354b32",
                     "uefi", {"model": "Intel(R) Xeon(R) CPU E5-2630 v4 @ 2.20GHz", "sockets": 2,
                              "cores": 20, "threads": 40}, 128 * GiB,
                     [{"name": "eno1", "mac": "24:6e:96:10:20:30", "driver": "tg3"},
                      {"name": "eno2", "mac": "24:6e:96:10:20:31", "driver": "tg3",
                       "link": False, "speed": None}]),
        note="",
    )


def md_raid1(lab: Lab) -> Setup:
    """Two mirrored disks: each one MBR partition, an md v1.2 RAID1 holding Ubuntu on ext4."""
    disks, members = [], []
    for _ in range(2):
        dev = lab.disk(8 * GiB)
        (member,) = lab.partition(dev, "label: dos\n,,fd,*\n")
        disks.append(dev)
        members.append(member)
    offset = md_superblock.write_raid1(members, "mirror:0")
    data = [lab.view(m, offset) for m in members]
    sh("mkfs.ext4", "-q", "-L", "root", data[0])
    linux_root(lab.mount(data[0]), os_release("Ubuntu 22.04.4 LTS", "ubuntu", "22.04", "debian"),
               "mirror", ["5.15.0-101-generic"])
    lab.release()
    sh("e2image", "-ra", data[0], data[1])  # the mirror: only the blocks in use need copying
    return Setup(
        devices=disks, names={disks[0]: "sda", disks[1]: "sdb"},
        disks={"sda": {"model": "ATA ST1000DM010-2EP1", "serial": "Z9A1B2C3", "transport": "sata",
                       "rotational": True},
               "sdb": {"model": "ATA ST1000DM010-2EP1", "serial": "Z9A1B2D4", "transport": "sata",
                       "rotational": True}},
        machine=_box("Supermicro", "X11SSL-F", "0123456789", "00000000-0000-0000-0000-0cc47a123456",
                     "bios", {"model": "Intel(R) Xeon(R) CPU E3-1230 v6 @ 3.50GHz", "sockets": 1,
                              "cores": 4, "threads": 8}, 32 * GiB,
                     [{"name": "eno1", "mac": "0c:c4:7a:12:34:56", "driver": "igb"}]),
        note="The RAID superblocks were written by tests/machines/md_superblock.py (this kernel "
             "has no md driver) and the array's filesystem made through the member's data offset.",
    )


def nvme(lab: Lab) -> Setup:
    """A laptop: NVMe, GPT, ESP, Ubuntu 24.04 on btrfs in subvolume @, swap partition."""
    dev = lab.disk(32 * GiB)
    esp, root, swap = lab.partition(dev, f"label: gpt\nsize=512M,type={ESP}\n"
                                         f"size=28G,type={LINUX}\ntype={SWAP}\n")
    sh("mkfs.vfat", "-F", "32", esp)
    sh("mkfs.btrfs", "-q", "-L", "ubuntu", root)
    sh("mkswap", swap)
    top = lab.mount(root)
    for sub in ("@", "@home"):
        sh("btrfs", "subvolume", "create", str(top / sub))
    linux_root(top / "@", os_release("Ubuntu 24.04 LTS", "ubuntu", "24.04", "debian"),
               "laptop", ["6.8.0-31-generic"])
    return Setup(
        devices=[dev], names={dev: "nvme0n1"},
        disks={"nvme0n1": {"model": "Samsung SSD 980 PRO 1TB", "serial": "S5GXNX0T123456A",
                           "wwn": "eui.002538b1210a1b2c", "transport": "nvme", "rotational": False}},
        machine=_box("LENOVO", "20XW0055GE", "PF3ABCDE", "8f0e4c2a-1b3d-11b2-a85c-9c2dcd123456",
                     "uefi", {"model": "11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz",
                              "sockets": 1, "cores": 4, "threads": 8}, 16 * GiB,
                     [{"name": "wlp0s20f3", "mac": "9c:2d:cd:12:34:56", "driver": "iwlwifi",
                       "speed": None}]),
        note="",
    )


def two_disks_usb(lab: Lab) -> Setup:
    """A file server booted from the USB stick: Debian 11 on one disk, data XFS on another."""
    first, second, stick = lab.disk(16 * GiB), lab.disk(24 * GiB), lab.disk(4 * GiB)
    root, swap = lab.partition(first, "label: dos\n,14G,83,*\n,,82\n")
    (data,) = lab.partition(second, "label: gpt\n,,L\n")
    (live,) = lab.partition(stick, "label: dos\n,,83,*\n")
    sh("mkfs.ext4", "-q", root)
    sh("mkswap", swap)
    sh("mkfs.xfs", "-q", "-L", "data", data)
    sh("mkfs.ext4", "-q", "-L", "P2V-LIVE", live)
    linux_root(lab.mount(root), os_release("Debian GNU/Linux 11 (bullseye)", "debian", "11"),
               "files", ["5.10.0-28-amd64"])
    (lab.mount(data) / "shares").mkdir()
    medium = lab.mount(live)
    return Setup(
        devices=[first, second, stick], names={first: "sda", second: "sdb", stick: "sdc"},
        disks={"sda": {"model": "ATA Samsung SSD 870", "serial": "S6PNNS0T111111",
                       "transport": "sata", "rotational": False},
               "sdb": {"model": "ATA WDC WD40EFRX-68N", "serial": "WD-WCC7K1234567",
                       "transport": "sata", "rotational": True},
               "sdc": {"model": "SanDisk Cruzer Blade", "serial": "4C530001230517104412",
                       "transport": "usb", "removable": True, "rotational": False}},
        machine=_box("HP", "ProLiant MicroServer Gen10", "CZ3812ABCD",
                     "30393137-3436-5a43-3338-313241424344", "bios",
                     {"model": "AMD Opteron(tm) X3421 APU", "sockets": 1, "cores": 4,
                      "threads": 4}, 16 * GiB,
                     [{"name": "enp3s0f0", "mac": "70:10:6f:aa:bb:01", "driver": "bnx2"}]),
        note="The USB stick holds ext4 here, not the ISO's iso9660 (this kernel has no isofs); "
             "it was mounted as the live medium.",
        medium=medium,
    )


def windows(lab: Lab) -> Setup:
    """Windows Server 2019 on BIOS/MBR: System Reserved and C: on NTFS."""
    dev = lab.disk(40 * GiB)
    reserved, system = lab.partition(dev, "label: dos\n,500M,7,*\n,,7\n")
    sh("mkntfs", "-Q", "-q", "-L", "System Reserved", reserved)
    sh("mkntfs", "-Q", "-q", "-L", "Windows", system)
    sh("ntfslabel", "--new-serial", system)  # mkntfs seeds its serial from the clock
    c = lab.mount(system, "-t", "ntfs-3g")
    config = c / "Windows/System32/config"
    config.mkdir(parents=True)
    (c / "Windows/System32/ntoskrnl.exe").write_bytes(b"MZ")
    (config / "SOFTWARE").write_bytes(regf.hive({"Microsoft": {"Windows NT": {"CurrentVersion": {
        "ProductName": "Windows Server 2019 Standard", "EditionID": "ServerStandard",
        "CurrentVersion": "6.3", "CurrentBuild": "17763", "DisplayVersion": "1809"}}}}))
    (config / "SYSTEM").write_bytes(regf.hive({"ControlSet001": {"Control": {"ComputerName": {
        "ComputerName": {"ComputerName": "FILESRV01"}}}}, "Select": {"Current": "1"}}))
    return Setup(
        devices=[dev], names={dev: "sda"},
        disks={"sda": {"model": "VMware Virtual disk", "serial": "6000c29a1b2c3d4e5f60718293a4b5c6",
                       "transport": "sas", "rotational": True}},
        machine=_box("VMware, Inc.", "VMware Virtual Platform", "VMware-56 4d 12 34",
                     "564d1234-5678-9abc-def0-123456789abc", "bios",
                     {"model": "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz", "sockets": 2,
                      "cores": 2, "threads": 2, "hypervisor": True}, 8 * GiB,
                     [{"name": "Ethernet0", "mac": "00:50:56:9a:12:34", "driver": "vmxnet3",
                       "speed": 10000}]),
        note="The registry hives were written by tests/machines/regf.py with the values a "
             "Windows Server 2019 install holds; the rest of Windows is absent.",
    )


BUILDERS: dict[str, Callable[[Lab], Setup]] = {
    "bios-mbr": bios_mbr, "uefi-gpt-lvm": uefi_gpt_lvm, "md-raid1": md_raid1, "nvme": nvme,
    "two-disks-usb": two_disks_usb, "windows": windows,
}


def build(name: str, the_lab: Lab) -> Setup:
    """Build machine `name` in `the_lab`, its filesystems unmounted but for the boot medium."""
    setup = BUILDERS[name](the_lab)
    the_lab.release(keep=setup.medium)
    return setup


def probe(setup: Setup) -> Machine:
    """What the probe sees of a setup, nothing adjusted."""
    return LiveProber(devices=setup.devices, medium=setup.medium or Path("/nonexistent")).machine()


def adjust(machine: Machine, setup: Setup, name: str) -> Machine:
    """Rename loop devices to the machine's names and set what a loop device cannot show."""
    def rename(value):
        if isinstance(value, str):
            for loop, shown in setup.names.items():
                base = loop.removeprefix("/dev/")
                sep = "p" if shown[-1].isdigit() else ""
                value = re.sub(rf"\b{base}p(\d+)\b", rf"{shown}{sep}\1", value)
                value = re.sub(rf"\b{base}\b", shown, value)
            return value
        if isinstance(value, list):
            return [rename(v) for v in value]
        if isinstance(value, dict):
            return {k: rename(v) for k, v in value.items()}
        return value

    data = rename(machine.to_json())
    for disk in data["disks"] + ([data["boot_medium"]] if data["boot_medium"] else []):
        disk.update(setup.disks.get(disk["name"], {}))
    for key, value in setup.machine.items():
        data[key] = {**(data[key] or {}), **value} if key == "cpu" else value
    shown = ", ".join(sorted(setup.disks))
    data["note"] = (f"Recorded by tests/machines/record.py ({name}) from loop devices. Set by hand: "
                    f"disk names ({shown}), their model, serial, WWN, transport, rotational and "
                    "removable flags; DMI identity, firmware, CPU, memory and NICs. "
                    + setup.note).strip()
    return Machine.from_json(data)


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        print(f"No machine called {', '.join(unknown)}; choose from {', '.join(BUILDERS)}.",
              file=sys.stderr)
        return 2
    for name in names or list(BUILDERS):
        with lab() as the_lab:
            setup = build(name, the_lab)
            machine = adjust(probe(setup), setup, name)
        (HERE / f"{name}.json").write_text(machine.dumps())
        print(f"{name}: {len(machine.disks)} disk(s), problems: {machine.problems or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
