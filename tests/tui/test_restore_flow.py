"""The manual path in a VM: the job given on the boot line is restored onto this VM's disk, then
the repair screen plans the changes for the copied system."""

from __future__ import annotations

import asyncio

from agent.transfer.progress import Progress
from agent.settings import Settings
from agent.tui.app import make_app
from agent.tui.edges import Edges
from agent.unattended import capture
from support import rescan, run
from tests.tui.helpers import recorded, screen_text, wait_for

MiB = 1 << 20


def test_restore_then_repair_plan(copied_disk, loopdev, p2v_server, tmp_path):
    source, _ = copied_disk
    preset = dict(server=p2v_server.url, token=p2v_server.token, fingerprint=p2v_server.fingerprint)
    job = capture(Settings(**preset, disks=[source], name="restore-me"), Progress()).job
    target = loopdev(64 * MiB, "vmdisk")
    edges = Edges(probe=recorded("bios-mbr", tmp_path, vendor="QEMU", product="Standard PC",
                                 system_uuid="0e2a9c1d-0000-4000-8000-00000000beef"),
                  nics=lambda: [], power=lambda argv: None, shell=lambda: None,
                  restore_targets=[target], repair_disk=target)
    app = make_app(Settings(**preset, job=job), edges)

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 120, "the probe")
            assert f"Job {job} was given" in screen_text(app)
            assert app.screen.query_one("#choices").get_option_at_index(0).id == "restore"
            await pilot.press("enter")                   # Restore is offered first
            await wait_for(pilot, lambda: type(app.screen).__name__ not in ("StartScreen",
                                                                            "RestoreScreen"),
                           120, "the restore")
            assert type(app.screen).__name__ == "RepairScreen", app.session.outcome
            await wait_for(pilot, lambda: app.screen.query_one("#apply").display, 120, "the plan")
            assert f"on {target}p1" in screen_text(app)
            assert "+UUID=" in app.screen.plan_text
            assert "restored onto " + target in app.session.outcome[0]

    asyncio.run(walk())
    rescan(target)
    assert run("blkid", "-p", "-s", "TYPE", "-o", "value", f"{target}p1").stdout.strip() == "ext4"
