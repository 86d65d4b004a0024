"""On loop disks: a guest's absolute links never lead the repair onto this machine's tree, and the
repair ends with the guest synced and unmounted (or says it is not)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.repair import guest
from agent.repair.runner import Request, repair
from support import rescan, run
from test_safety import DEBIAN_OS, SUSE_OS, snapshot

FSTAB = "/dev/sda2 / ext4 defaults 0 1\n/dev/sda1 /boot ext4 defaults 0 2\n"
ENTRY = "title SLES 15\nlinux /vmlinuz\noptions root=/dev/sda2 quiet\n"


@pytest.fixture
def linked_disk(loopdev, tmp_path):
    """A 64 MiB MBR disk: /boot (ext4) and a SUSE root (ext4) whose /boot, os-release and
    70-persistent-net.rules are absolute links; `live` stands for this machine's tree at the
    links' targets (a Debian with its own /boot)."""
    live = tmp_path / "live"
    for path, text in {"boot/marker": "the live system's /boot\n", "etc/os-release": DEBIAN_OS,
                       "usr/lib/os-release": DEBIAN_OS}.items():
        (live / path).parent.mkdir(parents=True, exist_ok=True)
        (live / path).write_text(text)
    dev = loopdev(64 * 1024 * 1024)
    run("sfdisk", "-q", dev, input="label: dos\n,20MiB,83\n,,83\n")
    boot, root = rescan(dev)
    run("mkfs.ext4", "-q", boot)
    run("mkfs.ext4", "-q", root)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", boot, str(mnt))
    try:
        (mnt / "loader/entries").mkdir(parents=True)
        (mnt / "loader/entries/sles.conf").write_text(ENTRY)
    finally:
        run("umount", str(mnt))
    run("mount", root, str(mnt))
    try:
        inside = mnt / str(live).lstrip("/")
        (inside / "boot").mkdir(parents=True)
        (inside / "usr/lib").mkdir(parents=True)
        (inside / "usr/lib/os-release").write_text(SUSE_OS)
        (mnt / "etc/udev/rules.d").mkdir(parents=True)
        (mnt / "etc/fstab").write_text(FSTAB)
        os.symlink(f"{live}/usr/lib/os-release", mnt / "etc/os-release")
        os.symlink(f"{live}/boot", mnt / "boot")
        os.symlink("/dev/null", mnt / "etc/udev/rules.d/70-persistent-net.rules")
    finally:
        run("umount", str(mnt))
    uuids = {part: run("blkid", "-p", "-s", "UUID", "-o", "value", part).stdout.strip() for part in (boot, root)}
    return dev, boot, root, uuids, live


def read_back(part: str, where: Path, *paths: str) -> list[str]:
    where.mkdir(exist_ok=True)
    run("mount", "-o", "ro", part, str(where))
    try:
        return [os.readlink(where / p) if (where / p).is_symlink() else (where / p).read_text() for p in paths]
    finally:
        run("umount", str(where))


def test_a_guest_with_absolute_links_is_repaired_inside_its_root(linked_disk, tmp_path, monkeypatch):
    dev, boot, root, uuids, live = linked_disk
    live_before = snapshot(live)
    targets = []
    real_mount = guest.mount

    def recording_mount(source, target, stack, *args, **kw):
        targets.append(Path(target))
        return real_mount(source, target, stack, *args, **kw)

    monkeypatch.setattr(guest, "mount", recording_mount)
    lines = []
    report = repair(Request(disk=dev), say=lines.append)
    assert report["status"] == "ok" and report["family"] == "suse", lines
    assert "unmount" not in report
    assert not [t for t in targets if t == live or live in t.parents]
    assert snapshot(live) == live_before
    assert read_back(boot, tmp_path / "b", "loader/entries/sles.conf") == \
        [ENTRY.replace("root=/dev/sda2", f"root=UUID={uuids[root]}")]
    fstab, os_release, rules = read_back(root, tmp_path / "r", "etc/fstab", "etc/os-release",
                                         "etc/udev/rules.d/70-persistent-net.rules")
    assert fstab == f"UUID={uuids[root]} / ext4 defaults 0 1\nUUID={uuids[boot]} /boot ext4 defaults 0 2\n"
    assert (os_release, rules) == (f"{live}/usr/lib/os-release", "/dev/null")
    mounts = Path("/proc/mounts").read_text()
    assert boot not in mounts and root not in mounts


def test_a_guest_still_busy_at_the_end_is_reported_not_silently_detached(linked_disk):
    dev, boot, root, uuids, live = linked_disk
    held = []

    def say(line: str) -> None:
        # Something keeps a file of the guest open past the repair's end.
        if line.startswith("Found ") and not held:
            where = next(f.split()[1] for f in Path("/proc/mounts").read_text().splitlines()
                         if f.split()[0] == root)
            held.append(open(Path(where) / "etc/fstab"))

    try:
        report = repair(Request(disk=dev), say=say)
    finally:
        for f in held:
            f.close()
    assert held and report["status"] == "ok"
    (problem,) = report["unmount"]
    assert "could not be unmounted" in problem and "detached lazily" in problem
    assert report["detail"] == problem
    assert root not in Path("/proc/mounts").read_text()


def test_unmount_syncs_and_unmounts_for_real(tmp_path):
    where = tmp_path / "t"
    where.mkdir()
    run("mount", "-t", "tmpfs", "tmpfs", str(where))
    (where / "sub").mkdir()
    run("mount", "-t", "tmpfs", "tmpfs", str(where / "sub"))
    try:
        assert guest.unmount(where) is None
        assert str(where) not in Path("/proc/mounts").read_text()
    finally:
        subprocess.run(["umount", "-R", str(where)], capture_output=True)



def _loops_over(image: Path) -> list[str]:
    listed = run("losetup", "-l", "-n", "-O", "NAME,BACK-FILE").stdout.splitlines()
    return sorted(line.split()[0] for line in listed if line.split()[-1] == str(image))


def test_an_image_mounted_through_another_loop_device_is_refused_before_attaching(tmp_path, capsys):
    """repair --disk FILE (or --disk /dev/loopB over FILE) while someone's /dev/loopA over FILE
    has its partition mounted: the repair would mount the same ext4 a second time, read-write."""
    from agent.cli import main
    image = tmp_path / "r2.img"
    with open(image, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    run("sfdisk", "-q", str(image), input="label: dos\n,,83\n")
    theirs = run("losetup", "--show", "-f", "-P", str(image)).stdout.strip()
    second = run("losetup", "--show", "-f", str(image)).stdout.strip()
    mnt = tmp_path / "theirs"
    mnt.mkdir()
    try:
        (part,) = rescan(theirs)
        run("mkfs.ext4", "-q", part)
        run("mount", part, str(mnt))
        try:
            for disk in (str(image), second):
                assert main(["repair", "--disk", disk]) == 1
                err = " ".join(capsys.readouterr().err.split())
                assert f"{disk} is in use under another name: {theirs} maps the same" in err, err
                assert f"is mounted on {mnt}" in err and "start again" in err, err
                assert "Traceback" not in err
                assert _loops_over(image) == sorted([theirs, second])
        finally:
            subprocess.run(["umount", str(mnt)])
    finally:
        for dev in (second, theirs):
            subprocess.run(["partx", "-d", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)
