"""Recorded machines replayed: JSON round trip, report, disk choice; the pure parts on fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.probe import Machine, Prober, ProbeError, probe_machine
from agent.probe import disks as edge
from agent.probe import oses, system
from agent.probe.report import human_size, render

MACHINES = Path(__file__).parents[1] / "machines"
RECORDED = sorted(MACHINES.glob("*.json"))
sys.path.insert(0, str(MACHINES))
import regf  # noqa: E402


def test_six_machines_are_recorded():
    assert {p.stem for p in RECORDED} >= {"bios-mbr", "uefi-gpt-lvm", "md-raid1", "nvme",
                                          "two-disks-usb", "windows"}


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_replay_round_trip_and_report(path):
    text = path.read_text()
    machine = probe_machine(recorded=path)
    # Recordings older than a field lack it: what they hold comes back as it was.
    assert _within(json.loads(text), machine.to_json())
    assert Machine.loads(machine.dumps()) == machine
    assert "Set by hand" in machine.note and "/dev/loop" not in text
    report = render(machine)
    for disk in machine.disks:
        assert disk.name in report and disk.transport in report
        assert machine.select_disks([disk.name]) == [disk]
        assert machine.select_disks([disk.path]) == [disk]
    assert machine.select_disks(None) == machine.disks
    roots = machine.os_roots()
    assert roots, "every recorded machine has an OS"
    for where, fs in roots:
        assert f"{where}: {fs.os.name}" in report
    assert machine.problems == [] and "Problems:" not in report


def _within(recorded, produced) -> bool:
    if isinstance(recorded, dict):
        return isinstance(produced, dict) and all(k in produced and _within(v, produced[k])
                                                  for k, v in recorded.items())
    if isinstance(recorded, list):
        return isinstance(produced, list) and len(recorded) == len(produced) and \
            all(_within(a, b) for a, b in zip(recorded, produced))
    return recorded == produced


def test_nics_recorded_before_their_other_names_load_without_them():
    nic = probe_machine(recorded=MACHINES / "bios-mbr.json").nics[0]
    assert (nic.name, nic.altnames, nic.udev_names) == ("eno1", [], {})


def test_a_nics_every_name():
    props = {"ID_NET_NAME_PATH": "enp0s3", "ID_NET_NAME_SLOT": "ens3", "ID_NET_NAME_MAC": "enx525400123456",
             "ID_NET_DRIVER": "e1000"}
    assert system.udev_names(props) == {"path": "enp0s3", "slot": "ens3", "mac": "enx525400123456"}
    machine = Machine(firmware="bios", nics=[system.Nic("ens3", "52:54:00:12:34:56", altnames=["enp0s3"],
                                                        udev_names=system.udev_names(props))])
    assert Machine.loads(machine.dumps()) == machine
    # This machine's own links, through `ip -j link`: every name is a string.
    assert all(isinstance(n, str) for names in system.altnames().values() for n in names)


def test_what_the_recordings_show():
    m = {p.stem: probe_machine(recorded=p) for p in RECORDED}
    assert m["bios-mbr"].firmware == "bios" and m["uefi-gpt-lvm"].firmware == "uefi"
    assert m["uefi-gpt-lvm"].volume_groups[0].lvs[0].segments[0].pv == "/dev/sda3"
    assert m["md-raid1"].raids[0].members == ["/dev/sda1", "/dev/sdb1"]
    nvme = m["nvme"].disks[0]
    assert (nvme.name, nvme.transport) == ("nvme0n1", "nvme")
    assert [p.path for p in nvme.partitions] == ["/dev/nvme0n1p1", "/dev/nvme0n1p2", "/dev/nvme0n1p3"]
    usb = m["two-disks-usb"]
    assert [d.name for d in usb.disks] == ["sda", "sdb"]
    assert usb.boot_medium.transport == "usb" and usb.boot_medium.removable
    assert "Boot medium (not offered): sdc" in render(usb)
    assert m["windows"].is_virtual and not m["bios-mbr"].is_virtual
    assert m["windows"].os_roots()[0][1].os.build == "17763"


def test_select_disks_says_what_is_wrong():
    machine = probe_machine(recorded=MACHINES / "two-disks-usb.json")
    with pytest.raises(ValueError, match=r"no disk sdz here; the disks are: sda, sdb\."):
        machine.select_disks(["sdz"])
    with pytest.raises(ValueError, match="sdc is the boot medium"):
        machine.select_disks(["sda", "sdc"])
    assert [d.name for d in machine.select_disks(["sdb", "/dev/sda", "sdb"])] == ["sdb", "sda"]


def test_bad_recordings_are_refused_with_a_sentence(tmp_path):
    data = json.loads((MACHINES / "bios-mbr.json").read_text())
    cases = {
        "old.json": {**data, "format": 0},
        "extra.json": {**data, "colour": "red"},
        "shape.json": {**data, "disks": {"sda": 1}},
    }
    for name, content in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
    with pytest.raises(ProbeError, match="format 0; this agent reads format 1"):
        Prober(tmp_path / "old.json").machine()
    with pytest.raises(ProbeError, match="unknown fields: colour"):
        Prober(tmp_path / "extra.json").machine()
    with pytest.raises(ProbeError, match="machine.disks should be a list"):
        Prober(tmp_path / "shape.json").machine()
    with pytest.raises(ProbeError, match="Cannot read the recorded machine"):
        Prober(tmp_path / "absent.json").machine()


def test_probe_command_replays_anywhere(tmp_path):
    saved = tmp_path / "again.json"
    cmd = [sys.executable, "-m", "agent.cli", "probe", "--machine", str(MACHINES / "nvme.json")]
    out = subprocess.run(cmd + ["--save", str(saved)], capture_output=True, text=True, check=True)
    assert "nvme0n1p2" in out.stdout and "Ubuntu 24.04 LTS" in out.stdout
    assert saved.read_text() == probe_machine(recorded=MACHINES / "nvme.json").dumps()
    as_json = subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=True)
    assert json.loads(as_json.stdout) == json.loads(saved.read_text())
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "probe", "--machine",
                          str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert bad.returncode == 1 and "Cannot read the recorded machine" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                    (4 << 30, "4.0 GiB"), (3 << 40, "3.0 TiB"), (None, "?")])
def test_human_size(n, text):
    assert human_size(n) == text


@pytest.mark.parametrize("tran,subsystems,name,expected", [
    ("sata", "block:scsi:pci", "sda", "sata"),
    ("usb", "block:scsi:usb:pci", "sdc", "usb"),
    (None, "block:virtio:pci", "vda", "virtio"),
    (None, "block:nvme:pci", "nvme0n1", "nvme"),
    (None, "block:xen", "xvda", "xen"),
    (None, "block", "xvdb", "xen"),
    (None, "block:scsi:ata:pci", "sda", "sata"),
    (None, "block:scsi:pci", "sdb", "scsi"),
    (None, "block", "loop3", "loop"),
    (None, "block:mmc:pci", "mmcblk0", "mmc"),
])
def test_transport(tran, subsystems, name, expected):
    assert edge.transport(tran, subsystems, name) == expected


def test_boot_device():
    mounts = {"/dev/sdc1": "/run/live/medium", "/dev/sda1": "/mnt"}
    assert edge.boot_device(Path("/run/live/medium"), mounts) == "/dev/sdc1"
    assert edge.boot_device(Path("/run/live/medium"), {"/dev/vda2": "/"}) == "/dev/vda2"
    assert edge.boot_device(Path("/run/live/medium"), {"/dev/sda1": "/mnt"}) is None


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("-> "):
            path.symlink_to(content[3:])
        else:
            path.write_text(content)
    return root


def test_linux_os_follows_absolute_links_inside_the_tree(tmp_path):
    root = _tree(tmp_path, {
        "usr/lib/os-release": 'NAME="Guest"\nPRETTY_NAME="Guest OS 1"\nID=guest\nVERSION_ID=1\n',
        "etc/os-release": "-> /usr/lib/os-release",  # absolute: must not read the live system's
        "lib": "-> /usr/lib",
        "usr/lib/modules/5.1-guest/modules.dep": "",
        "usr/lib/modules/not-a-kernel/README": "",
        "boot/vmlinuz-5.1-guest": "",
        "boot/vmlinuz-0-rescue-abc": "",
        "etc/sysconfig/network": "NETWORKING=yes\nHOSTNAME=old-style.example.com\n",
    })
    found = oses.find_os(root)
    assert (found.name, found.id, found.version) == ("Guest OS 1", "guest", "1")
    assert found.kernels == ["5.1-guest"] and found.hostname == "old-style.example.com"
    assert oses.resolve(root, "etc/../etc/os-release") == root / "usr/lib/os-release"
    assert oses.resolve(root, "etc/missing") is None
    _tree(tmp_path, {"loop": "-> loop"})
    assert oses.resolve(root, "loop/x") is None


def test_btrfs_subvolume_root_and_no_os(tmp_path):
    _tree(tmp_path, {"@/etc/os-release": "ID=arch\nNAME=Arch\n", "@home/u/.bashrc": ""})
    assert oses.find_os(tmp_path, "ext4") is None
    found = oses.find_os(tmp_path, "btrfs")
    assert (found.name, found.root) == ("Arch", "/@")
    assert oses.find_os(tmp_path / "@home", "btrfs") is None


def test_windows_found_case_insensitively(tmp_path):
    root = _tree(tmp_path, {"WINDOWS/system32/NTOSKRNL.EXE": "MZ"})
    config = root / "WINDOWS/system32/config"
    config.mkdir()
    (config / "software").write_bytes(regf.hive({"Microsoft": {"Windows NT": {"CurrentVersion": {
        "ProductName": "Windows 10 Pro", "CurrentBuild": "19045", "DisplayVersion": "22H2"}}}}))
    found = oses.find_os(root)
    assert (found.family, found.name, found.version, found.build, found.hostname) == (
        "windows", "Windows 10 Pro", "22H2", "19045", None)
    (config / "software").write_bytes(regf.hive({"Microsoft": {"Windows NT": {"CurrentVersion": {
        "ProductName": "Windows 10 Enterprise", "CurrentBuild": "22631"}}}}))
    assert oses.find_os(root).name == "Windows 11 Enterprise"
    (config / "software").write_bytes(b"not a hive")
    assert oses.find_os(root).name == "Windows (version unknown)"


def test_system_from_a_fixture_sysfs(tmp_path):
    sysfs = _tree(tmp_path / "sys", {
        "class/dmi/id/sys_vendor": "QEMU\n",
        "class/dmi/id/product_name": "Standard PC (Q35 + ICH9, 2009)\n",
        "class/dmi/id/product_serial": "To Be Filled By O.E.M.\n",
        "class/dmi/id/product_uuid": "6B2E4F1A-0C3D-4E5F-8A9B-112233445566\n",
        "firmware/efi/systab": "",
        **{f"devices/system/cpu/cpu{n}/topology/{k}": v
           for n in range(8)
           for k, v in (("physical_package_id", str(n // 4)), ("core_id", str(n % 4 // 2)))},
    })
    procfs = _tree(tmp_path / "proc", {
        "cpuinfo": "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 hypervisor\n"})
    assert system.firmware(sysfs) == "uefi" and system.firmware(tmp_path) == "bios"
    assert system.dmi(sysfs) == {"vendor": "QEMU", "product": "Standard PC (Q35 + ICH9, 2009)",
                                 "serial": None,
                                 "system_uuid": "6b2e4f1a-0c3d-4e5f-8a9b-112233445566"}
    cpu = system.cpu(procfs, sysfs)
    assert (cpu.model, cpu.sockets, cpu.cores, cpu.threads, cpu.hypervisor) == (
        "Test CPU 9000", 2, 4, 8, True)
    machine = Machine(firmware="uefi", cpu=cpu, **system.dmi(sysfs))
    assert machine.is_virtual


def test_multipath_maps_from_sysfs(tmp_path):
    sysfs = _tree(tmp_path, {
        "block/dm-0/dm/uuid": "mpath-3600508b4000156d700012000000b0000\n",
        "block/dm-0/dm/name": "mpatha\n",
        "block/dm-0/slaves/sdb": "", "block/dm-0/slaves/sdc": "",
        "block/dm-1/dm/uuid": "LVM-abcdef\n",
        "block/dm-1/slaves/dm-0": "",
    })
    (mp,) = edge.multipaths(sysfs)
    assert (mp.name, mp.wwid, mp.path, mp.paths) == (
        "mpatha", "3600508b4000156d700012000000b0000", "/dev/dm-0", ["/dev/sdb", "/dev/sdc"])
    machine = Machine(firmware="bios", multipaths=[mp])
    assert "Multipath mpatha (WWID 3600508b4000156d700012000000b0000): /dev/sdb, /dev/sdc" \
        in render(machine)
    assert Machine.from_json(machine.to_json()) == machine
