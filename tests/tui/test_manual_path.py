"""The manual path end to end on this machine: the boot line the Done screen shows, exactly as
shown, is all a blank VM gets; read by the agent's own kernel-line parser, it restores the job
from a real p2v-server onto blank loop disks and repairs the copy, with no other input."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import requests

from agent import unattended
from agent.probe import probe_machine
from agent.settings import load_settings
from agent.tui.app import make_app
from support import rescan, run
from tests.tui.helpers import MACHINES, wait_screen
from tests.tui.test_capture_flow import edges_for, to_summary

MiB = 1 << 20


def shown_boot_line(app) -> str:
    """The Done screen's boot line as a person types it from the screen: its keys, one a line
    from p2v.server= on, joined with spaces; the fingerprint's second line, as the screen says,
    right after its first with no space."""
    rows = [row.strip() for row in str(app.screen.query_one("#result").render()).splitlines()]
    first = next(i for i, row in enumerate(rows) if row.startswith("p2v.server="))
    words: list[str] = []
    for row in rows[first:]:
        if row.startswith("p2v."):
            words.append(row)
        elif words and words[-1].startswith("p2v.fingerprint=") and len(words[-1]) < 87:
            words[-1] += row
        else:
            break
    return " ".join(words)


def test_the_done_screens_boot_line_alone_restores_and_repairs_a_blank_vm(copied_disk, loopdev,
                                                                          p2v_server, monkeypatch,
                                                                          tmp_path):
    source, source_root = copied_disk
    app = make_app(load_settings(cmdline="quiet", cfg_paths=[]), edges_for(source, []))

    async def capture_through_the_tui():
        async with app.run_test(size=(80, 24)) as pilot:
            await to_summary(pilot, p2v_server, name="manual-path")
            await pilot.press("enter")                   # Start the transfer
            await wait_screen(pilot, "DoneScreen", timeout=180)
            return shown_boot_line(app)

    line = asyncio.run(capture_through_the_tui())
    assert "..." not in line and p2v_server.token not in line     # the job's own token, not the admin's

    # A blank VM: one empty disk of the source's size, booted with that line and nothing else.
    blank = loopdev(64 * MiB, "blankvm")
    monkeypatch.setattr(unattended, "vm_disks", lambda: [blank])
    settings = load_settings(cmdline=f"BOOT_IMAGE=/live/vmlinuz boot=live {line}", cfg_paths=[])
    assert settings.runs_unattended
    vm = probe_machine(recorded=MACHINES / "windows.json")        # a VM the server does not know
    out = io.StringIO()
    powered: list = []
    status = unattended.run(settings, out, vm, command=powered.append)

    assert status == 0, out.getvalue()
    assert "Repair ok: Debian GNU/Linux 12 (bookworm)." in out.getvalue(), out.getvalue()
    blkid = ["blkid", "-p", "-s", "UUID", "-o", "value"]
    restored_root = rescan(blank)[0]
    assert run(*blkid, restored_root).stdout == run(*blkid, source_root).stdout
    mnt = tmp_path / "vm"
    mnt.mkdir()
    run("mount", "-o", "ro", restored_root, str(mnt))
    try:
        fstab = (mnt / "etc/fstab").read_text()
    finally:
        run("umount", str(mnt))
    assert fstab.startswith("UUID=") and "/dev/sda1" not in fstab, fstab
    job = requests.get(f"{p2v_server.url}/api/v1/jobs/{settings.job}", headers=p2v_server.headers,
                       verify=False, timeout=30).json()
    assert job["name"] == "manual-path" and job["state"] == "done", job       # the report arrived
    assert powered == []                                  # p2v.post: the console waits


def test_repair_chosen_with_the_job_on_the_boot_line_plans_with_its_record_and_reports_to_it(
        copied_disk, p2v_server):
    from agent.transfer.progress import Progress
    from agent.settings import Settings
    from agent.tui.edges import Edges
    from tests.tui.helpers import recorded, wait_for

    source, _ = copied_disk
    pin = dict(server=p2v_server.url, fingerprint=p2v_server.fingerprint)
    captured = unattended.capture(Settings(**pin, token=p2v_server.token, disks=[source],
                                           name="repair-given"), Progress())
    seen = {}

    def plan(disk, inventory, say, passphrases=None):
        seen["inventory"] = inventory
        return {"disk": source, "root": source + "p1", "os": "Debian", "family": "debian",
                "changed": True, "steps": []}

    def apply(disk, inventory, say, client=None, job=None, passphrases=None):
        seen["report to"] = job
        return {"status": "ok", "os": "Debian"}

    edges = Edges(probe=recorded("windows"), nics=lambda: [], power=lambda argv: None,
                  shell=lambda: None, plan_repair=plan, apply_repair=apply, repair_disk=source)
    # What the Done screen's line gives, the restore done before: the job's own token.
    app = make_app(Settings(**pin, token=captured.token, job=captured.job), edges)

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 120, "the probe")
            choices = app.screen.query_one("#choices")
            await pilot.press(*["down"] * [choices.get_option_at_index(i).id
                                          for i in range(choices.option_count)].index("repair"))
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen.query_one("#apply").display, 60, "the plan")
            app.screen.query_one("#apply").press()
            await pilot.pause(0.3)
            await pilot.press("tab", "enter")
            await wait_for(pilot, lambda: "report to" in seen, 60, "the repair")

    asyncio.run(walk())
    assert seen["inventory"] and seen["inventory"]["name"] == "repair-given", seen["inventory"]
    assert seen["report to"] == captured.job


def test_the_server_screen_takes_the_jobs_own_token_with_the_job_on_the_boot_line(copied_disk,
                                                                                 p2v_server):
    """The restore path without a fingerprint shows the Server screen first: the line's token,
    the job's own, may read that job but not list jobs, and is accepted for it."""
    from agent.transfer.progress import Progress
    from agent.settings import Settings
    from tests.tui.helpers import screen_text, wait_for
    from tests.tui.test_tired import edges, open_screen, walk

    source, _ = copied_disk
    captured = unattended.capture(Settings(server=p2v_server.url, token=p2v_server.token,
                                           fingerprint=p2v_server.fingerprint, disks=[source],
                                           name="server-screen"), Progress())
    app = make_app(Settings(server=p2v_server.url, token=captured.token, job=captured.job),
                   edges("windows"))

    async def steps(pilot):
        from agent.tui.server import ServerScreen
        await open_screen(pilot, ServerScreen())
        app.screen.query_one("#test").press()
        await wait_for(pilot, lambda: app.screen.query_one("#trust").display, 60, "the fingerprint")
        await pilot.press("tab", "enter")               # Trust it (Tab: never focused)
        await wait_for(pilot, lambda: "accepts the token" in screen_text(app), 60, "the token check")

    walk(app, steps)
