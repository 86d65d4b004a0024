"""The manual path in a VM: the job given on the boot line is restored onto this VM's disk, then
the repair screen plans the changes for the copied system."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.transfer.progress import Progress
from agent.settings import Settings
from agent.tui.app import make_app
from agent.tui.edges import Edges
from agent import unattended
from agent.unattended import capture
from support import rescan, run
from tests.tui.helpers import recorded, screen_text, wait_for, wait_screen

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


def captured(copied_disk, p2v_server) -> tuple[dict, str]:
    preset = dict(server=p2v_server.url, token=p2v_server.token, fingerprint=p2v_server.fingerprint)
    return preset, capture(Settings(**preset, disks=[copied_disk[0]], name="restore-me"),
                           Progress()).job


def in_a_vm(tmp_path, **more) -> Edges:
    return Edges(probe=recorded("bios-mbr", tmp_path, vendor="QEMU", product="Standard PC",
                                system_uuid="0e2a9c1d-0000-4000-8000-00000000beef"),
                 nics=lambda: [], power=lambda argv: None, shell=lambda: None, **more)


def test_restore_writes_the_disk_p2v_disks_names_when_no_free_vm_disk_is_found(
        copied_disk, loopdev, p2v_server, tmp_path, monkeypatch):
    preset, job = captured(copied_disk, p2v_server)
    target = loopdev(64 * MiB, "named")
    monkeypatch.setattr(unattended, "vm_disks", lambda: [])   # not a Xen VM: none found
    app = make_app(Settings(**preset, job=job, disks=[target]), in_a_vm(tmp_path, repair_disk=target))

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 120, "the probe")
            await pilot.press("enter")                   # Restore
            await wait_for(pilot, lambda: type(app.screen).__name__ not in ("StartScreen",
                                                                            "RestoreScreen"),
                           120, "the restore")
            assert type(app.screen).__name__ == "RepairScreen", app.session.outcome
            assert "restored onto " + target in app.session.outcome[0]

    asyncio.run(walk())
    rescan(target)
    assert run("blkid", "-p", "-s", "TYPE", "-o", "value", f"{target}p1").stdout.strip() == "ext4"


def test_a_failed_restore_says_what_to_do_and_resumes_once_a_disk_is_attached(
        copied_disk, loopdev, p2v_server, tmp_path, monkeypatch):
    preset, job = captured(copied_disk, p2v_server)
    attached: list[str] = []
    monkeypatch.setattr(unattended, "vm_disks", lambda: list(attached))
    log = tmp_path / "xenp2v-agent.log"
    app = make_app(Settings(**preset, job=job), in_a_vm(tmp_path), log=log)

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 120, "the probe")
            await pilot.press("enter")                   # Restore
            await wait_screen(pilot, "DoneScreen", timeout=120)
            text = screen_text(app).replace("\n", " ")
            assert "The restore did not finish." in text
            source = Path(copied_disk[0]).name
            assert (f"The restore stopped: Job {job} has 1 disk ({source} of 64.0 MiB) but this "
                    "machine has 0 free disks") in text, text
            assert "name the disks to write with p2v.disks= on the boot line" in text, text
            await pilot.press("f1")
            await wait_screen(pilot, "HelpScreen")
            help_text = screen_text(app).replace("\n", " ")
            assert "The transfer is over" not in help_text and "Power off this machine once" \
                not in help_text, help_text
            assert f"The agent's log, {log}, has more" in help_text, help_text
            assert "Resume the restore" in help_text, help_text
            await pilot.press("escape")
            await wait_screen(pilot, "DoneScreen")
            assert str(app.screen.query_one("#resume").label) == "Resume the restore"
            attached.append(loopdev(64 * MiB, "attached"))   # hot-plugged in XenCenter
            app.screen.query_one("#resume").press()
            await wait_for(pilot, lambda: type(app.screen).__name__ not in ("DoneScreen",
                                                                            "RestoreScreen"),
                           120, "the restore")
            assert type(app.screen).__name__ == "RepairScreen", app.session.outcome
            assert "restored onto " + attached[0] in app.session.outcome[0]

    asyncio.run(walk())
