"""On a loop disk: a guest filesystem with no room (for the backups, the new files or the repair
record) or mounted read-only is left exactly as it was, with a sentence that says why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.repair.apply import apply_plan
from agent.repair.facts import Facts
from agent.repair.guest import RepairError
from agent.repair.steps import plan_repair
from agent.repair.tree import GuestTree
from support import run
from test_safety import DISK, NAMES, snapshot, write

GUEST = {
    "/etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n',
    "/etc/fstab": "/dev/sda2 / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot ext4 defaults 0 2\n"
                  "/dev/sda3 none swap sw 0 0\n",
    "/etc/default/grub": 'GRUB_CMDLINE_LINUX="root=/dev/sda2 resume=/dev/sda3"\n',
    "/etc/initramfs-tools/initramfs.conf": "MODULES=dep\n",
    "/etc/initramfs-tools/conf.d/resume": "RESUME=/dev/sda3\n",
    "/etc/udev/rules.d/70-persistent-net.rules": 'SUBSYSTEM=="net", NAME="eth0"\n',
}


def with_times(root: Path) -> dict[str, tuple]:
    """`snapshot`, and each file's modification time."""
    return {path: (*what, os.lstat(root / path).st_mtime_ns if what[0] != 0o040000 else None)
            for path, what in snapshot(root).items()}


@pytest.fixture
def small_guest(loopdev, tmp_path):
    """A 4 MiB ext4 (1 KiB blocks, nothing reserved) holding a Debian guest, mounted; 200 pad
    files of one block each under /pad, then a filler to the last block (inodes are left)."""
    dev = loopdev(4 * 1024 * 1024)
    run("mkfs.ext4", "-q", "-b", "1024", "-m", "0", "-O", "^has_journal", dev)
    root = tmp_path / "guest"
    root.mkdir()
    run("mount", dev, str(root))
    try:
        write(root, GUEST)
        (root / "pad").mkdir()
        n = 200
        for i in range(n):
            (root / f"pad/{i:05d}").write_bytes(b"x" * 1024)
        fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while os.write(fd, b"x" * 1024) == 1024:
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        os.sync()
        yield root, n
    finally:
        run("umount", str(root))


def test_a_full_guest_filesystem_is_left_as_it_was_whatever_room_is_left(small_guest):
    root, pads = small_guest
    steps = plan_repair(GuestTree(root), Facts(filesystems=DISK, names=NAMES, disk="/dev/xvda"))
    failures = 0
    for freed in range(pads):
        # One more block free each time: the repair runs out at every point of its writes in turn.
        (root / f"pad/{freed:05d}").unlink()
        os.sync()
        before = with_times(root)
        try:
            apply_plan(root, steps, lambda cmd: (0, ""), lambda line: None)
        except RepairError as e:
            failures += 1
            assert "No space left on device" in str(e) and "put back as it was" in str(e), str(e)
            assert with_times(root) == before, f"after {freed + 1} blocks freed: {e}"
            continue
        break
    else:
        pytest.fail("the repair never found room")
    assert failures > 3
    assert "UUID=" in (root / "etc/fstab").read_text()


def test_a_read_only_guest_is_refused_with_a_sentence(small_guest):
    root, _ = small_guest
    run("mount", "-o", "remount,ro", str(root))
    before = with_times(root)
    steps = plan_repair(GuestTree(root), Facts(filesystems=DISK, names=NAMES, disk="/dev/xvda"))
    with pytest.raises(RepairError) as failed:
        apply_plan(root, steps, lambda cmd: (0, ""), lambda line: None)
    assert "Read-only file system" in str(failed.value)
    assert with_times(root) == before


def test_the_guest_agents_package_that_finds_no_room_leaves_nothing(small_guest, tmp_path):
    from agent.repair import guest_tools
    root, _ = small_guest
    big = tmp_path / "big.deb"
    big.write_bytes(b"x" * 64 * 1024)
    small = tmp_path / "small.deb"
    small.write_bytes(b"x")
    for n in range(8):                  # room for the directories and the small file, not the big one
        (root / f"pad/{n:05d}").unlink()
    before = with_times(root)
    package = guest_tools.ToolsPackage("deb", "8.4.0", "amd64", (small, big), "iso")
    with pytest.raises(guest_tools.ToolsError, match=r"^The guest agent's package could not be copied to "
                       r"/var/lib/xenp2v/guest-tools in the guest \(No space left on device\); make room"):
        guest_tools.stage(root, package)
    assert with_times(root) == before


def test_a_log_that_finds_no_room_is_a_warning_not_a_crash(small_guest):
    from agent.repair.apply import LOG, append_log
    root, _ = small_guest
    before = with_times(root)
    said = append_log(root, ["--- xenp2v repair", "a line"])
    assert said == f"The repair is done, but its log could not be written to the guest's {LOG} " \
                   "(No space left on device)."
    assert {k: v for k, v in with_times(root).items() if k != "var/log"} == \
        {k: v for k, v in before.items() if k != "var/log"}
