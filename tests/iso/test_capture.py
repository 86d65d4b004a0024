"""The whole unattended path through the built ISO: a loop-backed source disk in a QEMU machine
booted with p2v.* flags on the kernel line is captured to a p2v-server on the host (QEMU user
networking: the host is 10.0.2.2), and the sealed image on the server is the source disk."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import rescan, run
from tests.iso.vm import BOOT_TIMEOUT, edit_entry, start

CAPTURE_TIMEOUT = 1800
pytestmark = pytest.mark.timeout(BOOT_TIMEOUT + CAPTURE_TIMEOUT + 600)


def make_source_disk(loopdev, workdir: Path) -> str:
    """A 256 MiB disk: GPT, one ext4 partition holding a few files (free space reads as zeros)."""
    dev = loopdev(256 << 20, name="source")
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    part = rescan(dev)[0]
    run("mkfs.ext4", "-q", "-L", "source", part)
    mnt = workdir / "mnt"
    mnt.mkdir()
    run("mount", part, str(mnt))
    try:
        for i in range(8):
            (mnt / f"file-{i}").write_bytes(hashlib.sha256(str(i).encode()).digest() * (32768 * i + 1))
    finally:
        run("umount", str(mnt))
    subprocess.run(["partx", "-d", dev], capture_output=True)
    return dev


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def test_unattended_capture_to_the_server(iso, loopdev, p2v_server, tmp_path):
    source = make_source_disk(loopdev, tmp_path)
    flags = (f"p2v.server=https://10.0.2.2:{p2v_server.port} p2v.token={p2v_server.token} "
             f"p2v.fingerprint={p2v_server.fingerprint} p2v.mode=capture p2v.disks=vda "
             f"p2v.name=iso-test p2v.unattended p2v.post=poweroff")
    vm = start(iso, tmp_path, "bios", disks=[source])
    try:
        edit_entry(vm, "s", flags)
        deadline = time.monotonic() + BOOT_TIMEOUT + CAPTURE_TIMEOUT
        while vm.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(5)
        assert vm.proc.poll() is not None, (
            f"The machine did not power off after the capture; serial log: {vm.log}")
    finally:
        vm.close()

    jobs = json.loads(server_cli(p2v_server, "jobs", "--json"))
    assert len(jobs) == 1 and [d["state"] for d in jobs[0]["disks"]] == ["sealed"], jobs
    image = tmp_path / "image.raw"
    server_cli(p2v_server, "export", jobs[0]["id"], "--format", "raw", "--out", str(image))
    assert sha256_of(str(image)) == sha256_of(source)


def server_cli(server, *args: str) -> str:
    return run(sys.executable, "-m", "server.cli", *args, "--data-dir", str(server.data_dir),
               cwd=Path(__file__).resolve().parents[2]).stdout
