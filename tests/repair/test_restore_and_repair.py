"""`p2v-agent restore-and-repair` on real loop devices against a real p2v-server: a captured
Debian-like disk is restored onto another disk, repaired there, and the server gets the report."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.cli import main
from agent.transfer.client import Client
from agent.transfer.progress import Progress
from agent.settings import Settings
from agent.unattended import capture
from support import rescan, run

MiB = 1 << 20
FSTAB = "/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/sda2 none swap sw 0 0\n"


def source_disk(loopdev, mnt: Path) -> str:
    """An MBR disk: ext4 root with a Debian tree naming /dev/sda*, and swap; no bootloader."""
    dev = loopdev(48 * MiB, "source")
    run("sfdisk", "-q", dev, input="label: dos\n,32MiB,83\n,,82\n")
    root, swap = rescan(dev)
    run("mkfs.ext4", "-q", root)
    run("mkswap", swap)
    mnt.mkdir()
    run("mount", root, str(mnt))
    try:
        (mnt / "etc").mkdir()
        (mnt / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n')
        (mnt / "etc/fstab").write_text(FSTAB)
    finally:
        run("umount", str(mnt))
    return dev


def test_restore_and_repair_onto_another_disk(loopdev, p2v_server, tmp_path, capsys):
    source = source_disk(loopdev, tmp_path / "src")
    preset = dict(server=p2v_server.url, token=p2v_server.token, fingerprint=p2v_server.fingerprint)
    job = capture(Settings(**preset, disks=[source], name="rr"), Progress()).job
    target = loopdev(48 * MiB, "vmdisk")

    assert main(["restore-and-repair", "--server", p2v_server.url, f"--token={p2v_server.token}",
                 "--fingerprint", p2v_server.fingerprint, "--job", job, "--target", target]) == 0
    out = capsys.readouterr().out
    assert f"restored onto {target}" in out and "Repair ok: Debian GNU/Linux 12." in out

    root, swap = rescan(target)
    uuids = {p: run("blkid", "-p", "-s", "UUID", "-o", "value", p).stdout.strip() for p in (root, swap)}
    mnt = tmp_path / "check"
    mnt.mkdir()
    run("mount", "-o", "ro", root, str(mnt))
    try:
        assert (mnt / "etc/fstab").read_text() == (f"UUID={uuids[root]} / ext4 errors=remount-ro 0 1\n"
                                                   f"UUID={uuids[swap]} none swap sw 0 0\n")
        assert (mnt / "var/lib/xenp2v/repaired").exists()
        assert "device names in fstab" in (mnt / "var/log/xenp2v-repair.log").read_text()
    finally:
        run("umount", str(mnt))

    report = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint).job(job)["repair"]
    assert report["status"] == "ok" and report["disk"] == target and report["root"] == f"{target}p1"
    assert any(s["step"] == "device names in fstab" and s["files"] == ["/etc/fstab"]
               for s in report["steps"])


def test_too_few_targets_is_a_sentence_and_half_the_settings_is_refused(loopdev, p2v_server, tmp_path,
                                                                        capsys):
    assert main(["restore-and-repair", "--server", p2v_server.url, "--token", "t"]) == 2
    assert "needs --server URL, --token T and --job ID" in capsys.readouterr().err
    source = source_disk(loopdev, tmp_path / "src")
    preset = dict(server=p2v_server.url, token=p2v_server.token, fingerprint=p2v_server.fingerprint)
    job = capture(Settings(**preset, disks=[source], name="rr"), Progress()).job
    target = loopdev(16 * MiB, "small")
    assert main(["restore-and-repair", "--server", p2v_server.url, f"--token={p2v_server.token}",
                 "--fingerprint", p2v_server.fingerprint, "--job", job, "--target", target]) == 1
    err = capsys.readouterr().err
    assert "Restore failed:" in err and "give a disk at least that large" in err
    assert "Traceback" not in err


def loops_over(path: Path) -> list[str]:
    """The loop devices showing `path` now."""
    lines = run("losetup", "-l", "-n", "-O", "NAME,BACK-FILE").stdout.splitlines()
    return [line.split()[0] for line in lines
            if len(line.split()) > 1 and line.split()[1] == str(path.resolve())]


def test_restore_and_repair_onto_an_image_file_leaves_no_loop_device(loopdev, p2v_server, tmp_path, capsys):
    source = source_disk(loopdev, tmp_path / "src")
    preset = dict(server=p2v_server.url, token=p2v_server.token, fingerprint=p2v_server.fingerprint)
    job = capture(Settings(**preset, disks=[source], name="rr"), Progress()).job
    image = tmp_path / "copy.img"
    with open(image, "wb") as f:
        f.truncate(48 * MiB)

    try:
        assert main(["restore-and-repair", "--server", p2v_server.url, f"--token={p2v_server.token}",
                     "--fingerprint", p2v_server.fingerprint, "--job", job, "--target", str(image)]) == 0
        out = capsys.readouterr().out
        assert "Repair ok: Debian GNU/Linux 12." in out
        assert loops_over(image) == []
    finally:
        for loop in loops_over(image):   # only the loop devices over this test's own file
            subprocess.run(["partx", "-d", loop], capture_output=True)
            subprocess.run(["losetup", "-d", loop], capture_output=True)

    # The repair reached the image: fstab names UUIDs now.
    check = run("losetup", "--show", "-f", "-P", str(image)).stdout.strip()
    try:
        root = rescan(check)[0]
        uuid = run("blkid", "-p", "-s", "UUID", "-o", "value", root).stdout.strip()
        mnt = tmp_path / "check"
        mnt.mkdir()
        run("mount", "-o", "ro", root, str(mnt))
        try:
            assert (mnt / "etc/fstab").read_text().startswith(f"UUID={uuid} / ext4")
        finally:
            run("umount", str(mnt))
    finally:
        subprocess.run(["partx", "-d", check], capture_output=True)
        run("losetup", "-d", check)


def test_a_failed_repair_of_an_image_file_leaves_no_loop_device(tmp_path, capsys):
    image = tmp_path / "blank.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    run("sfdisk", "-q", str(image), input="label: dos\n,8MiB,83\n")
    try:
        assert main(["repair", "--disk", str(image)]) == 1
        assert f"{image} holds no system that repair can fix" in capsys.readouterr().err
        assert loops_over(image) == []
    finally:
        for loop in loops_over(image):
            subprocess.run(["partx", "-d", loop], capture_output=True)
            subprocess.run(["losetup", "-d", loop], capture_output=True)
