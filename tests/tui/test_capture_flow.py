"""The whole capture flow, keyboard only, from a real loop device to a real p2v-server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import requests

from agent.warm import precopy
from agent.probe import probe_machine
from agent.settings import Settings
from agent.tui.app import make_app
from agent.tui.edges import Edges
from support import rescan, run
from tests.tui.helpers import screen_text, wait_for, wait_screen

MiB = 1 << 20


@pytest.fixture
def source(loopdev, tmp_path):
    """A 96 MiB disk: MBR, one ext4 partition holding 12 MiB of random files (6 s at 2 MiB/s)."""
    dev = loopdev(96 * MiB, "source")
    run("sfdisk", "-q", dev, input="label: dos\nstart=2048, type=83\n")
    part = rescan(dev)[0]
    run("mkfs.ext4", "-q", "-L", "tuisrc", part)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", part, str(mnt))
    try:
        for i in range(4):
            (mnt / f"file{i}").write_bytes(os.urandom(3 * MiB))
        (mnt / "etc").mkdir()
        (mnt / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n')
        (mnt / "etc/hostname").write_text("tuibox\n")
        (mnt / "etc/fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    finally:
        run("umount", str(mnt))
    return dev


def jobs(server) -> list[dict]:
    return requests.get(f"{server.url}/api/v1/jobs", headers=server.headers, verify=False,
                        timeout=30).json()


def edges_for(dev: str, powered: list) -> Edges:
    return Edges(probe=lambda devices: probe_machine(devices=[dev]), nics=lambda: [],
                 power=powered.append, shell=lambda: None)


async def to_summary(pilot, server, name: str | None = None):
    """Start → Network → Server (typed, tested, fingerprint trusted) → Disks → VM → Summary."""
    app = pilot.app
    await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 120, "the probe")
    assert "Disk     loop" in screen_text(app)
    await pilot.press("enter")                       # Migrate this machine
    await wait_screen(pilot, "NetworkScreen")
    await pilot.press("enter")                       # Next (focused)
    await wait_screen(pilot, "ServerScreen")
    await pilot.press(*server.url)
    await pilot.press("tab", *server.token, "enter")  # Enter in a field runs the test
    await wait_for(pilot, lambda: app.screen.query_one("#trust").display, 60, "the server test")
    assert server.fingerprint in screen_text(app).replace("\n" + " " * 7, "")
    await pilot.press("tab", "enter")                # Trust it (Tab: never focused): only now the token goes
    await wait_for(pilot, lambda: "accepts the token" in screen_text(app), 60, "the token check")
    await pilot.press("enter")                       # Next
    await wait_screen(pilot, "DisksScreen")
    await pilot.press("tab", "enter")                # the loop disk is ticked; Next
    await wait_screen(pilot, "VmScreen")
    if name:
        app.screen.query_one("#name").value = name
    await pilot.press("tab", "tab", "ctrl+a")         # to Memory
    app.screen.query_one("#memory").value = "1G"
    await pilot.press("enter")
    await wait_screen(pilot, "SummaryScreen")


def test_capture_flow_to_a_real_server(source, p2v_server):
    powered: list = []
    app = make_app(Settings(), edges_for(source, powered))

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await to_summary(pilot, p2v_server, name="tui-walk")
            text = screen_text(app)
            assert "tui-walk" in text and "1.0 GiB" in text and p2v_server.url in text
            await pilot.press("enter")                   # Start the transfer
            await wait_screen(pilot, "DoneScreen", timeout=180)   # (a small disk: Transfer may flash by)
            text = screen_text(app)
            assert "The transfer is complete" in text, text
            assert "p2v.mode=restore" in text and f"p2v.job={app.session.job}" in text
            app.screen.query_one("#poweroff").press()
            await wait_screen(pilot, "ConfirmScreen")    # asks first
            await pilot.press("tab", "enter")
            await wait_for(pilot, lambda: powered, 30, "the power off")
            app.screen.query_one("#quit").press()
            await pilot.pause(0.5)
        return app.return_value

    assert asyncio.run(walk()) == 0
    assert powered == [["systemctl", "poweroff"]]
    (job,) = jobs(p2v_server)
    assert job["name"] == "tui-walk" and job["id"] == app.session.job
    assert [d["state"] for d in job["disks"]] == ["sealed"]
    detail = requests.get(f"{p2v_server.url}/api/v1/jobs/{job['id']}", headers=p2v_server.headers,
                          verify=False, timeout=30).json()
    inventory = detail["inventory"]
    assert inventory["memory"] == 1 << 30 and inventory["disks"][0]["device"] == source
    verify = subprocess.run([sys.executable, "-m", "server.cli", "verify", "--data-dir", str(p2v_server.data_dir),
                             job["id"]], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def test_cancel_asks_then_resume_finishes(source, p2v_server):
    app = make_app(Settings(bwlimit=2 * MiB, streams=1), edges_for(source, []))

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await to_summary(pilot, p2v_server)
            await pilot.press("enter")
            await wait_screen(pilot, "TransferScreen")
            await wait_for(pilot, lambda: "MiB/s" in screen_text(app), 120, "progress")
            await pilot.press("escape")                  # Cancel asks first
            await wait_screen(pilot, "ConfirmScreen")
            await pilot.press("enter")                   # "Go on" is the default
            await wait_screen(pilot, "TransferScreen")
            await pilot.press("escape")
            await wait_screen(pilot, "ConfirmScreen")
            await pilot.press("tab", "enter")            # Stop it
            await wait_screen(pilot, "DoneScreen", timeout=120)
            assert "stopped; the job stays on the server" in screen_text(app)
            app.screen.query_one("#resume").press()
            await wait_for(pilot, lambda: type(app.screen).__name__ != "DoneScreen" or
                           "(resumed)" in screen_text(app), 60, "the resumed transfer")
            await wait_screen(pilot, "DoneScreen", timeout=180)
            assert "The transfer is complete" in screen_text(app)
            assert "(resumed)" in screen_text(app)

    asyncio.run(walk())
    (job,) = jobs(p2v_server)
    assert [d["state"] for d in job["disks"]] == ["sealed"]


def test_a_server_cut_mid_transfer_shows_as_resuming_not_failure(source, p2v_server):
    app = make_app(Settings(bwlimit=2 * MiB, streams=1), edges_for(source, []))

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await to_summary(pilot, p2v_server)
            await pilot.press("enter")
            await wait_for(pilot, lambda: "MiB/s" in screen_text(app), 120, "progress")
            p2v_server.kill()
            await wait_for(pilot, lambda: "retrying, then resuming" in screen_text(app), 120,
                           "the cut shown as a retry")
            assert type(app.screen).__name__ == "TransferScreen"
            p2v_server.start()
            await wait_screen(pilot, "DoneScreen", timeout=180)
            assert "The transfer is complete" in screen_text(app)

    asyncio.run(walk())
    (job,) = jobs(p2v_server)
    assert [d["state"] for d in job["disks"]] == ["sealed"]


def test_a_final_sync_shows_the_bytes_to_send_and_the_expected_downtime(source, p2v_server,
                                                                         tmp_path):
    """Warm migration: a pre-copy pass of the disk by the single-file sender, 8 MiB of files
    written since, then the TUI's transfer is the final sync and says so, with what it expects."""
    sender = [sys.executable, "-I", "-S", precopy.__file__, "--server", p2v_server.url,
              "--token", p2v_server.token, "--fingerprint", p2v_server.fingerprint, "--disks",
              source]
    passed = subprocess.run(sender, capture_output=True, text=True, timeout=300)
    assert passed.returncode == 0, passed.stderr
    (job,) = jobs(p2v_server)
    mnt = tmp_path / "changed"
    mnt.mkdir()
    run("mount", rescan(source)[0], str(mnt))
    try:
        (mnt / "new").write_bytes(os.urandom(8 * MiB))
    finally:
        run("umount", str(mnt))
    # This box has no SMBIOS identity to find the job by: the boot line names it, as the README says.
    app = make_app(Settings(bwlimit=2 * MiB, streams=1, job=job["id"], mode="capture"),
                   edges_for(source, []))
    seen: list[str] = []

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await to_summary(pilot, p2v_server)
            await pilot.press("enter")
            await wait_for(pilot, lambda: "expected downtime 0:" in screen_text(app), 120,
                           "the final sync's figures")
            seen.append(screen_text(app))
            await wait_screen(pilot, "DoneScreen", timeout=180)
            seen.append(screen_text(app))

    asyncio.run(walk())
    transfer, done = seen
    assert f"Final sync of job {job['id']}:" in transfer and "to send" in transfer, transfer
    assert "final sync: " in transfer, transfer
    assert "final sync sealed version 2" in done, done
