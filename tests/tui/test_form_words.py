"""Someone filling in a form is told of its fields and screens, never of a CLI flag or a boot-line
key (issue 17): the core's real errors, from a real server and the real repair runner, as the
screens show them. And the disk chosen on the Repair screen is the one the repair changes."""

from __future__ import annotations

import re

import pytest

from agent.transfer.client import Client, ServerError
from agent.settings import Settings
from agent.tui.app import make_app
from agent.tui.common import in_form_words
from tests.tui.helpers import screen_text, wait_for
from tests.tui.test_snapshots import fixed_plan
from tests.tui.test_tired import edges, open_screen, walk

FLAG = re.compile(r"--[a-z]|p2v\.[a-z]")


def test_a_refused_token_names_the_token_field(p2v_server):
    app = make_app(Settings(), edges())

    async def steps(pilot):
        from agent.tui.server import ServerScreen
        await open_screen(pilot, ServerScreen())
        app.screen.query_one("#url").value = p2v_server.url
        app.screen.query_one("#token").value = "not-the-token"
        app.screen.query_one("#fingerprint").value = p2v_server.fingerprint
        app.screen.query_one("#test").press()
        status = lambda: str(app.screen.query_one("#status").render())   # noqa: E731
        await wait_for(pilot, lambda: "refused the token" in status(), 60, "the refusal")
        assert "the Token field" in status() and not FLAG.search(status()), status()

    walk(app, steps)


def test_a_certificate_that_does_not_match_is_said_in_the_forms_words(p2v_server):
    with pytest.raises(ServerError) as refused:
        Client(p2v_server.url, p2v_server.token, "sha256:" + "00" * 32, retry_for=0).health()
    said = in_form_words(str(refused.value))
    assert "--server" in str(refused.value)               # what a shell user is told
    assert "the Server URL" in said and not FLAG.search(said), said


def test_repair_on_a_physical_machine_offers_its_disks_and_repairs_the_one_chosen(monkeypatch):
    from agent.repair import runner
    monkeypatch.setattr(runner, "is_vm", lambda: False)
    applied = []

    def plan(disk, inventory, say, passphrases=None):
        if disk is None:
            return runner.repair(runner.Request(dry_run=True), say)   # what the real one says
        return fixed_plan(disk, inventory, say, passphrases)

    def apply(disk, inventory, say, client=None, job=None, passphrases=None):
        applied.append(disk)
        return {"status": "ok", "os": "Debian GNU/Linux 12 (bookworm)"}

    app = make_app(Settings(), edges("two-disks-usb", plan_repair=plan, apply_repair=apply))

    async def steps(pilot):
        from agent.tui.repair import RepairScreen
        await open_screen(pilot, RepairScreen())
        await wait_for(pilot, lambda: app.screen.query_one("#pick-disk").display, 30, "the choice")
        status = str(app.screen.query_one("#status").render())
        assert "not a VM" in status and "Choose the disk" in status, status
        assert not FLAG.search(status), status
        await pilot.press("down", "enter")                # the second disk
        chosen = app.screen.disk
        await wait_for(pilot, lambda: app.screen.query_one("#apply").display, 30, "the plan")
        app.screen.query_one("#apply").press()
        await pilot.pause(0.3)
        await pilot.press("tab", "enter")                 # Apply, in the dialog
        await wait_for(pilot, lambda: applied, 30, "the repair")
        assert applied == [chosen] and chosen == "/dev/sdb", (applied, screen_text(app))

    walk(app, steps)
