"""Windows' page, swap and hibernation files of a cleanly shut down NTFS are not sent: their
extents are free. The restored NTFS is clean, the files are still there, every other file reads
the same. A hibernation file Windows may resume from is sent, and p2v.keep_pagefile sends all."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

from agent.transfer import capture, restore
from agent.disk.plan import plan_disk, subtract, total
from agent.settings import Settings
from support import rescan, run

MIB = 1024 * 1024
DISK = 256 * MIB
PAGEFILE = 96 * MIB
SWAPFILE = 8 * MIB
HIBERFIL = 24 * MIB


def _windows_volume(loopdev, hiberfil_header: bytes = b"\0\0\0\0") -> tuple[str, str, dict]:
    """A disk with one NTFS (C:) holding user files and random page, swap and hibernation
    files, unmounted cleanly. Returns (disk, C:'s node, {name: random bytes of the scratch file})."""
    dev = loopdev(DISK)
    run("sfdisk", "-q", dev, input="label: dos\n,,7,*\n")
    (part,) = rescan(dev)
    run("mkntfs", "-Q", "-q", "-L", "Windows", part)
    scratch = {"pagefile.sys": os.urandom(PAGEFILE), "swapfile.sys": os.urandom(SWAPFILE),
               "hiberfil.sys": hiberfil_header + os.urandom(HIBERFIL - len(hiberfil_header))}
    mnt = Path(run("mktemp", "-d").stdout.strip())
    run("mount", "-t", "ntfs-3g", part, str(mnt))
    try:
        (mnt / "Users/ann").mkdir(parents=True)
        for i in range(6):
            (mnt / f"Users/ann/doc{i}.bin").write_bytes(os.urandom(3 * MIB + i))
        (mnt / "Windows").mkdir()
        (mnt / "Windows/notes.txt").write_text("small resident file\n")
        for name, data in scratch.items():
            (mnt / name).write_bytes(data)
    finally:
        run("umount", str(mnt))
        mnt.rmdir()
    return dev, part, scratch


def _files(part: str) -> dict[str, str]:
    """sha256 of every file on the NTFS at `part`, mounted read-only."""
    mnt = Path(run("mktemp", "-d").stdout.strip())
    run("mount", "-t", "ntfs-3g", "-o", "ro", part, str(mnt))
    try:
        return {str(p.relative_to(mnt)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(mnt.rglob("*")) if p.is_file()}
    finally:
        run("umount", str(mnt))
        mnt.rmdir()


def test_page_swap_and_hibernation_files_are_not_sent_and_the_volume_comes_back(loopdev, p2v_server):
    dev, part, scratch = _windows_volume(loopdev)
    before = _files(part)
    plan = plan_disk(dev)
    whole = plan_disk(dev, keep_pagefile=True)
    saved = whole.read_bytes - plan.read_bytes
    # Every byte of the three files but hiberfil.sys's first cluster (its header) is free.
    assert PAGEFILE + SWAPFILE + HIBERFIL - 4096 <= saved <= PAGEFILE + SWAPFILE + HIBERFIL
    (note,) = [n for n in plan.notes if "not sent" in n]
    assert "pagefile.sys, swapfile.sys, hiberfil.sys not sent, 128.0 MiB saved" in note
    assert "p2v.keep_pagefile" in note and not plan.warnings

    settings = Settings(server=p2v_server.url, token=p2v_server.token,
                        fingerprint=p2v_server.fingerprint, disks=[dev], name="win", streams=2,
                        compress="zstd")
    result = capture.run(settings, identity={"system_uuid": str(uuid.uuid4())})
    (disk,) = result.disks
    # The bytes on the wire (zstd: a chunk's free bytes go as zeros): the user files and NTFS's
    # metadata, not the 128 MiB of random page, swap and hibernation data.
    assert plan.read_bytes < 24 * MIB and disk.sent < 24 * MIB, (disk.sent, plan.read_bytes)
    image = (p2v_server.data_dir / "jobs" / result.job / "disks" / f"{disk.id}.img").read_bytes()
    for name, data in scratch.items():
        assert data[PAGEFILE // 3 if name == "pagefile.sys" else 8192:][:4096] not in image, name

    target = loopdev(DISK, "target")
    restore.run(Settings(server=p2v_server.url, token=p2v_server.token,
                         fingerprint=p2v_server.fingerprint, job=result.job), target)
    (restored,) = rescan(target)
    check = subprocess.run(["ntfsfix", "--no-action", restored], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    after = _files(restored)
    assert after.keys() == before.keys()   # the three files are there ...
    for name in scratch:                   # ... with other content (what the target held)
        assert after.pop(name) != before.pop(name)
    assert after == before
    # The header of hiberfil.sys is the source's: no hibernated Windows to resume.
    head = subprocess.run(["ntfscat", restored, "/hiberfil.sys"], capture_output=True,
                          check=True).stdout[:8]
    assert head == scratch["hiberfil.sys"][:8]


def test_a_hibernation_file_windows_may_resume_from_is_sent(loopdev):
    dev, part, _ = _windows_volume(loopdev, hiberfil_header=b"wake")
    plan = plan_disk(dev)
    (note,) = [n for n in plan.notes if "not sent" in n]
    assert "pagefile.sys, swapfile.sys not sent" in note
    whole = plan_disk(dev, keep_pagefile=True)
    assert whole.read_bytes - plan.read_bytes <= PAGEFILE + SWAPFILE


def test_keep_pagefile_reads_them_all(loopdev):
    dev, _, _ = _windows_volume(loopdev)
    plan = plan_disk(dev, keep_pagefile=True)
    assert not [n for n in plan.notes if "not sent" in n]
    assert total(plan.used) > PAGEFILE + SWAPFILE + HIBERFIL
    # Nothing outside what the default plan reads is dropped but the three files' bytes.
    assert subtract(plan_disk(dev).used, plan.used) == []


def test_a_hibernated_windows_is_read_whole_with_what_works_against_fast_startup(loopdev):
    dev, part, _ = _windows_volume(loopdev, hiberfil_header=b"HIBR")
    plan = plan_disk(dev)
    (warning,) = plan.warnings
    assert warning.startswith(f"ntfs on {part} holds a hibernated Windows")
    assert "read whole" in warning and "not sent" not in " ".join(plan.notes)
    # A plain Shut down with Fast Startup on is what left it so: say what works instead.
    assert "hold Shift while clicking Shut down" in warning
    assert "'powercfg /h off'" in warning and "shut it down cleanly" not in warning


def test_a_capture_stops_on_a_hibernated_windows_before_sending_unless_told_to_go_on(
        loopdev, p2v_server):
    # Issue 16: stop, with a sentence that says what to do, on a hibernated system or Fast
    # Startup. A copy of one cannot boot (repair refuses it); the capture used to send the
    # whole volume anyway, hours on a big disk, and the refusal came only at the repair.
    dev, part, _ = _windows_volume(loopdev, hiberfil_header=b"HIBR")
    settings = Settings(server=p2v_server.url, token=p2v_server.token,
                        fingerprint=p2v_server.fingerprint, disks=[dev])
    identity = {"system_uuid": str(uuid.uuid4())}
    try:
        capture.run(settings, identity=identity)
    except capture.CaptureError as e:
        said = str(e)
    else:
        raise AssertionError("a hibernated Windows was captured without being told to")
    assert said.startswith(f"NTFS on {part} holds a hibernated Windows")
    assert "hold Shift while clicking Shut down" in said and "--allow-hibernated" in said
    jobs = p2v_server.data_dir / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir())    # nothing was sent, no job made
    # Told to go on: copied whole, as the plan's warning says.
    result = capture.run(Settings(**{**settings.__dict__, "allow_hibernated": True}),
                         identity=identity)
    (disk,) = result.disks
    assert any("holds a hibernated Windows" in w for w in disk.warnings)
    # The command line's flag reaches the setting.
    out = subprocess.run([sys.executable, "-m", "agent.cli", "capture", "--cmdline", "",
                          "--config", "/dev/null", "--server", p2v_server.url, "--token",
                          p2v_server.token, "--fingerprint", p2v_server.fingerprint,
                          "--disks", dev], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "--allow-hibernated" in out.stderr, out.stderr[-2000:]
