"""The Windows warnings before the transfer, from a real NTFS on a loop device: a Windows 10 disk
(tests/windowsdisk.py) shut down with Fast Startup on, its C: holding a hibernated session."""

from __future__ import annotations

import asyncio
import io

import pytest

from agent import unattended
from agent.probe import probe_machine
from agent.settings import Settings, update
from agent.tui.app import make_app
from agent.tui.edges import Edges
from support import rescan, run
from tests.tui.helpers import screen_text, wait_for
from windowsdisk import windows_disk

MiB = 1 << 20
HIBERNATED = "holds a hibernated Windows"


@pytest.fixture
def hibernated(loopdev, tmp_path) -> tuple[str, str]:
    """(disk, C:): Windows 10 on MBR, hiberfil.sys's header saying 'HIBR' (Fast Startup)."""
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    mnt = tmp_path / "c"
    run("mount", "-t", "ntfs-3g", system, str(mnt))
    try:
        (mnt / "hiberfil.sys").write_bytes(b"HIBR" + bytes(MiB - 4))
    finally:
        run("umount", str(mnt))
    return dev, system


@pytest.fixture
def linux_disk(loopdev) -> str:
    dev = loopdev(32 * MiB, "linux")
    run("sfdisk", "-q", dev, input="label: dos\n,,83\n")
    run("mkfs.ext4", "-q", rescan(dev)[0])
    return dev


def flat(app) -> str:
    return " ".join(screen_text(app).split())


def test_start_and_summary_show_a_hibernated_windows_before_the_transfer(hibernated, linux_disk):
    dev, system = hibernated
    edges = Edges(probe=lambda devices: probe_machine(devices=[dev, linux_disk]), nics=lambda: [],
                  power=lambda argv: None, shell=lambda: None)
    app = make_app(Settings(server="https://10.0.0.5:8443", token="t"), edges)

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 120,
                           "the probe")
            start = flat(app)
            assert f"Warning: NTFS on {system} {HIBERNATED}" in start, start
            assert "powercfg /h off" in start
            from agent.tui.summary import SummaryScreen
            # Only the Linux disk chosen: the Windows disk's warning is not its business.
            app.session.settings = update(app.session.settings, {"disks": [linux_disk]})
            await app.push_screen(SummaryScreen())
            await pilot.pause(0.3)
            assert HIBERNATED not in flat(app)
            app.pop_screen()
            app.session.settings = update(app.session.settings, {"disks": [dev, linux_disk]})
            await app.push_screen(SummaryScreen())
            await pilot.pause(0.3)
            summary = flat(app)
            assert f"Warning: NTFS on {system} {HIBERNATED}" in summary, summary
            # Looked at before the transfer: no capture, no plan has run.
            assert app.session.job is None

    asyncio.run(walk())


def test_start_names_only_the_disks_p2v_disks_gives(hibernated, linux_disk):
    dev, _ = hibernated
    edges = Edges(probe=lambda devices: probe_machine(devices=[dev, linux_disk]), nics=lambda: [],
                  power=lambda argv: None, shell=lambda: None)
    app = make_app(Settings(disks=[linux_disk]), edges)

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 120,
                           "the probe")
            assert HIBERNATED not in flat(app)
            assert app.session.windows[dev]             # found, kept for the Summary

    asyncio.run(walk())


def test_unattended_prints_the_warning_before_the_capture_starts(hibernated, p2v_server):
    dev, system = hibernated
    out = io.StringIO()
    settings = Settings(server=p2v_server.url, token=p2v_server.token,
                        fingerprint=p2v_server.fingerprint, mode="capture", disks=[dev],
                        name="hibernated", post="wait")
    status = unattended.run(settings, out, command=lambda argv: None)
    lines = out.getvalue().splitlines()
    # The capture then stops on it, before anything is sent (issue 16: stop, with what to do).
    assert status != 0 and "--allow-hibernated" in out.getvalue(), out.getvalue()
    assert not [line for line in lines if line.startswith(f"{dev.split('/')[-1]}: ")]
    out = io.StringIO()
    status = unattended.run(Settings(**{**settings.__dict__, "allow_hibernated": True}), out,
                            command=lambda argv: None)
    lines = out.getvalue().splitlines()
    assert status == 0, out.getvalue()
    warned = [i for i, line in enumerate(lines)
              if line.startswith(f"Warning: NTFS on {system} {HIBERNATED}")]
    assert warned, out.getvalue()
    progress = [i for i, line in enumerate(lines) if line.startswith(f"{dev.split('/')[-1]}: ")]
    assert progress and warned[0] < progress[0], out.getvalue()
    assert "powercfg /h off" in lines[warned[0]]
