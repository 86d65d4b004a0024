"""`p2v-agent repair --disk` on real loop devices: it finds the guest, plans without writing, and
refuses what it must not touch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.cli import main
from agent.repair import guest
from support import rescan, run

FSTAB = "/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/sda2 none swap sw 0 0\n"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def guest_disk(loopdev, tmp_path):
    """A 64 MiB MBR disk: ext4 root holding a small Debian tree that names /dev/sda*, and swap."""
    dev = loopdev(64 * 1024 * 1024)
    run("sfdisk", "-q", dev, input="label: dos\n,40MiB,83\n,,82\n")
    root, swap = rescan(dev)
    run("mkfs.ext4", "-q", root)
    run("mkswap", swap)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", root, str(mnt))
    try:
        for path, text in {"etc/os-release": "PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\n",
                           "etc/fstab": FSTAB,
                           "etc/network/interfaces": "auto ens3\niface ens3 inet dhcp\n",
                           "etc/initramfs-tools/initramfs.conf": "MODULES=dep\n",
                           "usr/sbin/grub-mkconfig": "", "usr/lib/grub/i386-pc/normal.mod": ""}.items():
            (mnt / path).parent.mkdir(parents=True, exist_ok=True)
            (mnt / path).write_text(text)
    finally:
        run("umount", str(mnt))
    uuids = {part: run("blkid", "-p", "-s", "UUID", "-o", "value", part).stdout.strip() for part in (root, swap)}
    return dev, root, swap, uuids


def test_dry_run_prints_every_diff_and_writes_nothing(guest_disk, capsys, tmp_path):
    dev, root, swap, uuids = guest_disk
    backing = Path(run("losetup", "-nO", "BACK-FILE", dev).stdout.strip())
    before = digest(backing)
    assert main(["repair", "--dry-run", "--disk", dev, "--nic", "ens3=enX0"]) == 0
    out = capsys.readouterr().out
    assert "Found Debian GNU/Linux 12 (debian family)" in out
    assert f"+UUID={uuids[root]} / ext4 errors=remount-ro 0 1\n+UUID={uuids[swap]} none swap sw 0 0\n" in out
    assert "-auto ens3\n-iface ens3 inet dhcp\n+auto enX0\n+iface enX0 inet dhcp\n" in out
    assert "$ update-initramfs -u -k all" in out and f"$ grub-install --target=i386-pc {dev}" in out
    run("sync")
    assert digest(backing) == before
    assert root not in Path("/proc/mounts").read_text()


def test_a_disk_without_an_os_is_refused(loopdev, capsys):
    dev = loopdev(32 * 1024 * 1024)
    run("sfdisk", "-q", dev, input="label: dos\n,,83\n")
    (part,) = rescan(dev)
    run("mkfs.ext4", "-q", part)
    assert main(["repair", "--disk", dev]) == 1
    err = capsys.readouterr().err
    assert f"{dev} holds no system that repair can fix" in err
    assert "Traceback" not in err


def test_a_disk_in_use_here_is_refused(guest_disk, tmp_path, capsys):
    dev, root, _, _ = guest_disk
    mnt = tmp_path / "busy"
    mnt.mkdir()
    run("mount", "-o", "ro", root, str(mnt))
    try:
        assert main(["repair", "--disk", dev]) == 1
    finally:
        subprocess.run(["umount", str(mnt)])
    assert "has filesystems mounted on this machine" in capsys.readouterr().err


def test_bad_nic_flag_and_half_a_server_are_sentences(capsys):
    assert main(["repair", "--disk", "/dev/null", "--nic", "ens3"]) == 1
    assert "--nic 'ens3' is not of the form OLD=NEW" in capsys.readouterr().err
    assert main(["repair", "--job", "j1"]) == 1
    assert "--server, --token and --job go together" in capsys.readouterr().err


def test_chroot_dev_has_by_uuid_links_and_host_dev_is_untouched(guest_disk):
    dev, root, swap, uuids = guest_disk
    host_had_by_uuid = Path("/dev/disk/by-uuid").exists()
    with ExitStack() as stack:
        work = guest.workdir(stack)
        layout = guest.read_layout(dev, stack)
        assert layout.bios and not layout.uefi
        (found, subvolume), = guest.find_roots(layout, work)
        assert (found.device, subvolume) == (root, None)
        mounted, _ = guest.mount_guest(found, None, layout.filesystems, {}, work, stack)
        guest.enter(mounted, layout.filesystems, layout.volume_groups, stack)
        link = mounted / "dev/disk/by-uuid" / uuids[root]
        assert link.is_symlink() and os.readlink(link) == root
        assert (mounted / "dev" / Path(dev).name).is_block_device()
    assert Path("/dev/disk/by-uuid").exists() == host_had_by_uuid
    assert root not in Path("/proc/mounts").read_text()


@pytest.fixture
def job_server():
    """A stand-in for p2v-server's two repair calls on 127.0.0.1: the job, and the report."""
    got: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            got["auth"] = self.headers.get("Authorization")
            body = json.dumps({"id": "j1", "inventory": {"nics": [{"name": "ens3", "mac": "00:16:3e:00:00:01"}]}})
            self.send_response(200 if self.path == "/api/v1/jobs/j1" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def do_POST(self):
            got[self.path] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", got
    server.shutdown()
    server.server_close()


def test_the_server_hears_a_refusal(loopdev, job_server, capsys):
    url, got = job_server
    dev = loopdev(16 * 1024 * 1024)
    assert main(["repair", "--disk", dev, "--server", url, "--token", "secret", "--job", "j1"]) == 1
    assert got["auth"] == "Bearer secret"
    report = got["/api/v1/jobs/j1/repair"]
    assert report["status"] == "failed" and "holds no system that repair can fix" in report["error"]
    assert "holds no system that repair can fix" in capsys.readouterr().err


def test_a_system_older_than_os_release_is_found_by_its_release_file(loopdev, capsys, tmp_path):
    dev = loopdev(32 * 1024 * 1024)
    run("sfdisk", "-q", dev, input="label: dos\n,,83\n")
    (part,) = rescan(dev)
    run("mkfs.ext4", "-q", part)
    mnt = tmp_path / "old"
    mnt.mkdir()
    run("mount", part, str(mnt))
    try:
        (mnt / "etc").mkdir()
        (mnt / "etc/redhat-release").write_text("CentOS release 6.10 (Final)\n")
        (mnt / "etc/fstab").write_text("/dev/sda1 / ext4 defaults 1 1\n")
    finally:
        run("umount", str(mnt))
    assert main(["repair", "--dry-run", "--disk", dev]) == 0
    out = capsys.readouterr().out
    uuid = run("blkid", "-p", "-s", "UUID", "-o", "value", part).stdout.strip()
    assert "Found CentOS release 6.10 (Final) (rhel family)" in out
    assert f"-/dev/sda1 / ext4 defaults 1 1\n+UUID={uuid} / ext4 defaults 1 1\n" in out
