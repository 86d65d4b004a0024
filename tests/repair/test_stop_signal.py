"""SIGTERM, SIGHUP or Ctrl-C in the middle of `p2v-agent repair --disk FILE`: the agent turns each
into an exception, so its loop device over FILE is detached and its /tmp/xenp2v-repair-* directory
removed, and it ends with one sentence and 128 + the signal (not killed with everything left
attached, nor a KeyboardInterrupt traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import needs_root, rescan, run

REPO = Path(__file__).resolve().parents[2]


def loops_over(image: Path) -> list[str]:
    listed = run("losetup", "-l", "-n", "-O", "NAME,BACK-FILE").stdout.splitlines()
    return [line.split()[0] for line in listed if line.split()[-1] == str(image)]


def workdirs(tmp: Path) -> set[Path]:
    return set(tmp.glob("xenp2v-repair-*"))


@pytest.mark.parametrize("signum,status,name", [(signal.SIGTERM, 143, "SIGTERM"),
                                                 (signal.SIGHUP, 129, "SIGHUP"),
                                                 (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_during_repair_of_an_image_detaches_its_loop_and_removes_its_workdir(
        tmp_path, signum, status, name):
    needs_root()
    image = tmp_path / "guest.img"
    with open(image, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    run("sfdisk", "-q", str(image), input="label: dos\n,,83\n")
    loop = run("losetup", "--show", "-f", "-P", str(image)).stdout.strip()
    try:
        (part,) = rescan(loop)
        run("mkfs.ext4", "-q", part)
    finally:
        subprocess.run(["partx", "-d", loop], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    stop_at_first_mount(tmp_path, ["repair", "--disk", str(image)], image, signum, status,
                        f"Stopped ({name}): p2v-agent repair did not finish")


def stop_at_first_mount(tmp_path: Path, argv: list[str], image: Path, signum: int, status: int,
                        sentence: str) -> None:
    """Run `p2v-agent ARGV`, send `signum` while its repair mounts the guest's root for the first
    time, and check it ends with `sentence` and `status`, no loop device over `image` and no work
    directory left."""
    # The repair's first mount (looking for the guest's root, after its loop device and its work
    # directory exist) hangs: a `mount` first on PATH says so and sleeps.
    shim, marker = tmp_path / "bin", tmp_path / "mounting"
    shim.mkdir()
    (shim / "mount").write_text(f"#!/bin/sh\ntouch {marker}\nexec sleep 120\n")
    (shim / "mount").chmod(0o755)
    # Its own TMPDIR: the work directories other runs on this machine make are not its.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}", PYTHONPATH=str(REPO), TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *argv],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A run in the background (nohup ... &) ignores SIGINT, and so would
                            # the agent: Ctrl-C's KeyboardInterrupt needs the default back.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=10)
        assert len(loops_over(image)) == 1
        assert len(workdirs(tmp)) == 1
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == status, (proc.returncode, err)
        assert sentence in err
        assert "Traceback" not in err
        assert str(image) not in run("losetup", "-l", "-n", "-O", "BACK-FILE").stdout
        assert not workdirs(tmp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for dev in loops_over(image):  # the repair's own, left by an agent killed outright
            subprocess.run(["partx", "-d", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_sigterm_during_restore_and_repair_onto_an_image_leaves_nothing_attached(loopdev, p2v_server,
                                                                                 tmp_path):
    from agent.settings import Settings
    from agent.transfer.progress import Progress
    from agent.unattended import capture
    needs_root()
    dev = loopdev(48 * 1024 * 1024, "source")
    run("sfdisk", "-q", dev, input="label: dos\n,32MiB,83\n,,82\n")
    root, swap = rescan(dev)
    run("mkfs.ext4", "-q", root)
    run("mkswap", swap)
    preset = dict(server=p2v_server.url, token=p2v_server.token, fingerprint=p2v_server.fingerprint)
    job = capture(Settings(**preset, disks=[dev], name="stop"), Progress()).job
    image = tmp_path / "copy.img"
    with open(image, "wb") as f:
        f.truncate(48 * 1024 * 1024)
    stop_at_first_mount(tmp_path, ["restore-and-repair", "--server", p2v_server.url,
                                   f"--token={p2v_server.token}", "--fingerprint",
                                   p2v_server.fingerprint, "--job", job, "--target", str(image)],
                        image, signal.SIGTERM, 143,
                        "Stopped (SIGTERM): p2v-agent restore-and-repair did not finish")
