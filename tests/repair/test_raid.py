"""md RAID in the repair, on real RAID1 superblocks (written from user space by
tests/machines/md_superblock.py: this kernel has no md driver, so `mdadm --create` cannot run).

Without md the mirror is read through one member, for a dry run only; with md (the live ISO) the
array is assembled, which a recording mdadm stands in for here.
"""

from __future__ import annotations

import importlib.util
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from agent.repair import raid
from agent.repair.guest import RepairError
from agent.repair.runner import Request, Tools, repair
from support import rescan, run

MiB = 1 << 20
_spec = importlib.util.spec_from_file_location(
    "md_superblock", Path(__file__).parents[1] / "machines" / "md_superblock.py")
md_superblock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(md_superblock)

MDADM_CONF = ("DEVICE /dev/sda1 /dev/sdb1\nMAILADDR root\n"
              "ARRAY /dev/md0 metadata=1.2 name=mirror:0 devices=/dev/sda1,/dev/sdb1\n")


@pytest.fixture
def mirror(loopdev, tmp_path):
    """Two disks, each one partition that is half of a RAID1 ("mirror:0") holding a Debian root
    whose fstab names /dev/md0 and whose mdadm.conf finds the array by its old members' names."""
    members = []
    for n in range(2):
        disk = loopdev(40 * MiB, f"half{n}")
        run("sfdisk", "-q", disk, input="label: dos\n,,fd\n")
        (member,) = rescan(disk)
        members.append((disk, member))
    offset = md_superblock.write_raid1([m for _, m in members], "mirror:0")
    for _, member in members:
        data = run("losetup", "--show", "-f", "-o", str(offset), member).stdout.strip()
        try:
            run("mkfs.ext4", "-q", "-U", "5e0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d", data)
            mnt = tmp_path / "mnt"
            mnt.mkdir(exist_ok=True)
            run("mount", data, str(mnt))
            try:
                for path, text in {"etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n',
                                   "etc/fstab": "/dev/md0 / ext4 errors=remount-ro 0 1\n",
                                   "etc/mdadm/mdadm.conf": MDADM_CONF}.items():
                    (mnt / path).parent.mkdir(parents=True, exist_ok=True)
                    (mnt / path).write_text(text)
            finally:
                run("umount", str(mnt))
        finally:
            run("losetup", "-d", data)
    uuid = run("mdadm", "--examine", members[0][1]).stdout.split("Array UUID : ")[1].split()[0]
    return members, uuid


class RecordingMdadm:
    def __init__(self, status: int = 0, err: str = ""):
        self.calls: list[list[str]] = []
        self.status, self.err = status, err

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        return subprocess.CompletedProcess(argv, self.status if "--assemble" in argv else 0, "", self.err)


def no_md() -> raid.Mdadm:
    def refuse(argv):
        raise AssertionError(f"mdadm must not run without md: {argv}")
    return raid.Mdadm(refuse, has_md=lambda: False)


def test_members_are_read_from_real_superblocks(mirror):
    (disk_a, member_a), (disk_b, member_b) = mirror[0]
    uuid = mirror[1]
    (found,) = raid.members_on(disk_a)
    assert (found.node, found.partition, found.info.array_uuid, found.info.name, found.info.level) == \
        (member_a, 1, uuid, "mirror:0", "raid1")
    assert raid.arrays([found]) == [raid.RaidArray(uuid, "mirror:0", "1.2", "raid1", (1,))]
    assert raid.guest_names(raid.arrays([found])[0]) == ["/dev/md/0", "/dev/md0"]


def test_with_md_the_array_is_assembled_from_every_disk_given_and_stopped(mirror):
    (disk_a, member_a), (disk_b, member_b) = mirror[0]
    own, peers = raid.members_on(disk_a), raid.members_on(disk_b)
    rec = RecordingMdadm()
    with ExitStack() as stack:
        devices, views, notes = raid.assemble(own, peers, raid.Mdadm(rec, lambda: True), stack, readonly=False)
        assert rec.calls == [["mdadm", "--assemble", "--run", "/dev/md/xenp2v-0", member_a, member_b]]
    assert rec.calls[-1] == ["mdadm", "--stop", "/dev/md/xenp2v-0"]
    assert devices == {mirror[1]: "/dev/md/xenp2v-0"} and views == [] and notes == []

    rec = RecordingMdadm()
    with ExitStack() as stack:
        _, _, notes = raid.assemble(own, [], raid.Mdadm(rec, lambda: True), stack, readonly=True)
    assert rec.calls[0] == ["mdadm", "--assemble", "--run", "--readonly", "/dev/md/xenp2v-0", member_a]
    assert notes == ["RAID raid1 mirror:0 runs on 1 of its 2 members (the others are not on the disks "
                     "given): the guest has to add them back."]

    rec = RecordingMdadm(1, "mdadm: /dev/md/xenp2v-0 is already in use.\n")
    with ExitStack() as stack:
        devices, _, notes = raid.assemble(own, peers, raid.Mdadm(rec, lambda: True), stack, readonly=False)
    assert devices == {} and notes == ["RAID raid1 mirror:0 cannot be assembled (mdadm: /dev/md/xenp2v-0 is "
                                       "already in use); what it holds is not repaired."]
    assert rec.calls == [["mdadm", "--assemble", "--run", "/dev/md/xenp2v-0", member_a, member_b]]


def test_without_md_a_mirror_root_is_planned_through_one_member_and_not_written(mirror, capsys):
    (disk_a, member_a), (disk_b, _) = mirror[0]
    uuid = mirror[1]
    backing = Path(run("losetup", "-nO", "BACK-FILE", disk_a).stdout.strip())
    before = backing.read_bytes()
    out: list[str] = []
    report = repair(Request(disk=disk_a, dry_run=True), out.append, Tools(mdadm=no_md()))
    text = "\n".join(out)
    assert report["root"] == "/dev/md/0" and report["status"] == "planned"
    assert (f"RAID raid1 mirror:0 is read through its member {member_a}: this machine has no md driver, "
            "so it can be looked at but not changed.") in text
    assert ("-DEVICE /dev/sda1 /dev/sdb1\n+DEVICE partitions containers\n MAILADDR root\n"
            "-ARRAY /dev/md0 metadata=1.2 name=mirror:0 devices=/dev/sda1,/dev/sdb1\n"
            f"+ARRAY /dev/md0 metadata=1.2 name=mirror:0 UUID={uuid}\n") in text
    assert "/etc/fstab" not in [path for s in report["steps"] for path in s["files"]]

    with pytest.raises(RepairError, match="^The system on /dev/md/0 is on md RAID, and this machine has "
                                          "no md driver to change it without splitting the mirror"):
        repair(Request(disk=disk_a), out.append, Tools(mdadm=no_md()))
    run("sync")
    assert backing.read_bytes() == before
    assert member_a not in Path("/proc/mounts").read_text()
