"""Repairs that cannot go wrong: guest paths stay inside the guest's root, and a failing step puts
every file back."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from agent.repair.apply import apply_plan
from agent.repair.facts import Facts, Filesystem
from agent.repair.guest import RepairError
from agent.repair.plan import Plan
from agent.repair.steps import STAMP, family, plan_repair
from agent.repair.tree import GuestTree

ROOT_UUID = "11111111-1111-4111-8111-111111111111"
BOOT_UUID = "22222222-2222-4222-8222-222222222222"
SWAP_UUID = "33333333-3333-4333-8333-333333333333"
DISK = [Filesystem("/dev/xvda1", "ext4", BOOT_UUID, None, 1), Filesystem("/dev/xvda2", "ext4", ROOT_UUID, None, 2),
        Filesystem("/dev/xvda3", "swap", SWAP_UUID, None, 3)]
NAMES = {"/dev/sda1": DISK[0], "/dev/sda2": DISK[1], "/dev/sda3": DISK[2]}
DEBIAN_OS = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
SUSE_OS = 'PRETTY_NAME="SUSE Linux Enterprise Server 15 SP5"\nID="sles"\nID_LIKE="suse"\n'


def write(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        host = root / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text)


def link(root: Path, path: str, target: str) -> None:
    host = root / path.lstrip("/")
    host.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, host)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: its kind, mode, owner, and contents' digest or link target."""
    out = {}
    for where, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(where) / name
            st = os.lstat(path)
            what = (os.readlink(path) if stat.S_ISLNK(st.st_mode) else
                    hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None)
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777,
                                                st.st_uid, st.st_gid, what)
    return out


# --- every guest path resolves inside the guest's root ------------------------------------------

@pytest.fixture
def linked_guest(tmp_path):
    """A SUSE guest whose /boot, os-release, grub defaults and a rule file are absolute links, and
    a decoy live system at the links' absolute targets (a Debian, with the same files)."""
    live, root = tmp_path / "live", tmp_path / "guest"
    shared = {"/boot/loader/entries/sles.conf": "title SLES\noptions root=/dev/sda2 resume=/dev/sda3 quiet\n",
              "/boot/grub2/grub.cfg": "linux /vmlinuz root=/dev/sda2\n",
              "/etc/default/grub": 'GRUB_CMDLINE_LINUX_DEFAULT="resume=/dev/sda3 splash=silent"\n'}
    write(live, {**shared, "/etc/os-release": DEBIAN_OS, "/etc/udev/rules.d/70-persistent-net.rules": "keep\n"})
    # Inside the guest the same absolute paths hold the guest's own files.
    write(root, {str(live) + path: text for path, text in shared.items()})
    write(root, {f"{live}/usr/lib/os-release": SUSE_OS,
                 "/etc/fstab": "/dev/sda2 / ext4 defaults 0 1\n/dev/sda1 /boot ext4 defaults 0 2\n"})
    link(root, "/boot", f"{live}/boot")
    link(root, "/etc/os-release", f"{live}/usr/lib/os-release")
    link(root, "/etc/default/grub", f"{live}/etc/default/grub")
    link(root, "/etc/udev/rules.d/70-persistent-net.rules", "/dev/null")
    # What the chroot's /dev holds while the steps apply (a copy of this machine's /dev/null).
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return root, live


def test_links_resolve_inside_the_guest_like_chroot(tmp_path):
    from agent.repair.tree import resolve_guest
    link(tmp_path, "/a/up", "../../../../b")
    link(tmp_path, "/a/abs", "/b/c")
    link(tmp_path, "/loop1", "/loop2")
    link(tmp_path, "/loop2", "loop1")
    assert resolve_guest(tmp_path, "/a/up/x") == "/b/x"
    assert resolve_guest(tmp_path, "/a/abs/../d") == "/b/d"
    assert resolve_guest(tmp_path, "/../../etc/passwd") == "/etc/passwd"
    tree = GuestTree(tmp_path)
    assert tree.read("/loop1") is None and not tree.exists("/loop1")


def test_a_guest_with_absolute_links_is_planned_and_repaired_inside_its_root(linked_guest):
    root, live = linked_guest
    live_before = snapshot(live)
    tree = GuestTree(root)
    assert family(tree) == "suse"
    f = Facts(filesystems=DISK, names=NAMES, disk="/dev/xvda")
    steps = plan_repair(tree, f)
    got = {c.path: c.new for c in Plan(steps).changes}
    # The rule file linked to /dev/null is empty, nothing to change; the links are read in the guest.
    assert set(got) == {"/boot/loader/entries/sles.conf", "/etc/default/grub", "/etc/fstab", STAMP}
    assert got["/boot/loader/entries/sles.conf"] == \
        f"title SLES\noptions root=UUID={ROOT_UUID} resume=UUID={SWAP_UUID} quiet\n"
    apply_plan(root, steps, lambda cmd: (0, ""), lambda line: None)
    assert (root / f"{str(live).lstrip('/')}/boot/loader/entries/sles.conf").read_text() == \
        got["/boot/loader/entries/sles.conf"]
    assert (root / f"{str(live).lstrip('/')}/etc/default/grub").read_text() == \
        f'GRUB_CMDLINE_LINUX_DEFAULT="resume=UUID={SWAP_UUID} splash=silent"\n'
    assert os.readlink(root / "boot") == f"{live}/boot"
    assert os.readlink(root / "etc/udev/rules.d/70-persistent-net.rules") == "/dev/null"
    assert snapshot(live) == live_before
    assert [s.name for s in plan_repair(tree, f) if not s.empty] == []


def test_a_write_that_would_land_in_the_guests_dev_is_refused(tmp_path):
    write(tmp_path, {"/etc/os-release": DEBIAN_OS, "/etc/fstab": "/dev/sda2 / ext4 defaults 0 1\n"})
    link(tmp_path, "/var/lib/xenp2v", "/dev/shm")
    steps = plan_repair(GuestTree(tmp_path), Facts(filesystems=DISK, names=NAMES, disk="/dev/xvda"))
    with pytest.raises(RepairError, match=r"leads to /dev/shm/repaired.*put back"):
        apply_plan(tmp_path, steps, lambda cmd: (0, ""), lambda line: None)
    assert (tmp_path / "etc/fstab").read_text() == "/dev/sda2 / ext4 defaults 0 1\n"


# --- apply is all-or-nothing ---------------------------------------------------------------------

@pytest.fixture
def debian_guest(tmp_path):
    root = tmp_path / "guest"
    write(root, {
        "/etc/os-release": DEBIAN_OS,
        "/etc/fstab": "/dev/sda2 / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot ext4 defaults 0 2\n"
                      "/dev/sda3 none swap sw 0 0\n",
        "/etc/crypttab": "",
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX="root=/dev/sda2 resume=/dev/sda3"\n',
        "/etc/initramfs-tools/initramfs.conf": "MODULES=dep\n",
        "/etc/initramfs-tools/conf.d/resume": "RESUME=/dev/sda3\n",
        "/etc/udev/rules.d/70-persistent-net.rules": 'SUBSYSTEM=="net", NAME="eth0"\n',
        "/usr/sbin/grub-mkconfig": "", "/usr/lib/grub/i386-pc/normal.mod": "",
    })
    os.chmod(root / "etc/default/grub", 0o600)
    os.chmod(root / "etc/fstab", 0o640)
    os.chown(root / "etc/fstab", 0, 42)
    link(root, "/etc/mtab", "../proc/self/mounts")
    return root


def test_a_failing_late_command_puts_the_guest_back_byte_for_byte(debian_guest):
    root = debian_guest
    before = snapshot(root)
    steps = plan_repair(GuestTree(root), Facts(filesystems=DISK, names=NAMES, disk="/dev/xvda"))
    plan = Plan(steps)
    # Files changed, removed and created (among them in directories that did not exist).
    assert {c.old is None for c in plan.changes} == {True, False} and any(c.new is None for c in plan.changes)
    ran = []

    def run_command(cmd):
        ran.append(str(cmd))
        return (1, "grub-install: error: cannot find a GRUB drive for /dev/xvda.") if "grub-install" in cmd.argv[0] \
            else (0, "")

    with pytest.raises(RepairError) as failed:
        apply_plan(root, steps, run_command, lambda line: None)
    assert ran == ["update-initramfs -u -k all", "grub-install --target=i386-pc /dev/xvda"]
    message = str(failed.value)
    assert message.startswith("Step 'bootloader' failed: 'grub-install --target=i386-pc /dev/xvda' exited "
                              "with status 1 (grub-install: error: cannot find a GRUB drive for /dev/xvda.).")
    assert "Every file the repair had changed was put back as it was." in message
    assert "(update-initramfs -u -k all) are not undone" in message
    assert snapshot(root) == before


def test_a_file_that_cannot_be_written_in_the_last_step_puts_the_guest_back(debian_guest):
    root = debian_guest
    write(root, {"/var/lib/xenp2v": "a file where the repair record's directory goes\n"})
    before = snapshot(root)
    steps = plan_repair(GuestTree(root), Facts(filesystems=DISK, names=NAMES, disk="/dev/xvda"))
    with pytest.raises(RepairError, match=r"^Step 'repair record' failed: .*put back as it was"):
        apply_plan(root, steps, lambda cmd: (0, ""), lambda line: None)
    assert snapshot(root) == before


def test_the_guest_agents_package_is_staged_inside_the_guest_and_undone(tmp_path):
    """A guest whose /var/lib is an absolute link: the package files go to the guest's own copy
    of the link's target, never onto this machine's; a failed repair takes them away again."""
    from agent.repair import guest_tools
    live, root = tmp_path / "live", tmp_path / "guest"
    write(live, {"/var/lib/dpkg/status": "the live system's\n"})
    write(root, {f"{live}/var/lib/dpkg/status": "the guest's\n", "/etc/os-release": DEBIAN_OS})
    link(root, "/var/lib", f"{live}/var/lib")
    debs = tmp_path / "iso"
    write(debs, {"/a.deb": "!<arch>\n", "/b.deb": "!<arch>\n"})
    package = guest_tools.ToolsPackage("deb", "8.4.0", "amd64", (debs / "a.deb", debs / "b.deb"), "iso")
    live_before, guest_before = snapshot(live), snapshot(root)
    undo = guest_tools.stage(root, package)
    staged = root / str(live).lstrip("/") / "var/lib/xenp2v/guest-tools"
    assert sorted(p.name for p in staged.iterdir()) == ["a.deb", "b.deb"]
    assert snapshot(live) == live_before
    undo()
    assert snapshot(root) == guest_before and snapshot(live) == live_before


def test_a_guest_link_at_the_repairs_own_file_names_leads_nowhere(tmp_path):
    """The guest holds links where apply writes its new files (`fstab.xenp2v-new`) pointing at
    this machine's files: they are replaced, the live files stay as they were."""
    live, root = tmp_path / "live", tmp_path / "guest"
    write(live, {"/etc/shadow": "root:secret:\n", "/etc/grub": "live grub defaults\n"})
    write(root, {"/etc/os-release": DEBIAN_OS, "/etc/fstab": "/dev/sda2 / ext4 defaults 0 1\n",
                 "/etc/default/grub": 'GRUB_CMDLINE_LINUX="root=/dev/sda2"\n'})
    link(root, "/etc/fstab.xenp2v-new", f"{live}/etc/shadow")
    link(root, "/etc/default/grub.xenp2v-new", f"{live}/etc/grub")
    live_before = snapshot(live)
    steps = plan_repair(GuestTree(root), Facts(filesystems=DISK, names=NAMES, disk="/dev/xvda"))
    apply_plan(root, steps, lambda cmd: (0, ""), lambda line: None)
    assert snapshot(live) == live_before
    assert (root / "etc/fstab").read_text() == f"UUID={ROOT_UUID} / ext4 defaults 0 1\n"
    assert not os.path.lexists(root / "etc/fstab.xenp2v-new")


def test_a_file_two_steps_change_is_put_back_as_it_was_before_the_first(tmp_path):
    from agent.repair.plan import FileChange, StepPlan
    write(tmp_path, {"/etc/default/grub": "original\n"})
    os.chmod(tmp_path / "etc/default/grub", 0o600)
    before = snapshot(tmp_path)
    first, second, last = StepPlan("first"), StepPlan("second"), StepPlan("last")
    first.changes.append(FileChange("/etc/default/grub", "original\n", "first\n"))
    second.changes.append(FileChange("/etc/default/grub", "first\n", "second\n"))
    last.changes.append(FileChange("/etc/new", None, "x\n"))
    from agent.repair.plan import Command
    last.commands.append(Command(("false",), "fail"))
    with pytest.raises(RepairError, match="Every file the repair had changed was put back as it was"):
        apply_plan(tmp_path, [first, second, last], lambda cmd: (1, "no"), lambda line: None)
    assert snapshot(tmp_path) == before
