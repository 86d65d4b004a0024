"""Every screen as the Linux VGA console draws it (16 colours, no bright backgrounds): each
focusable widget and each progress bar's track must be visible (tests/tui/vga.py)."""

from __future__ import annotations

import asyncio

import pytest

from agent.tui.common import ConfirmScreen, HelpScreen, PassphraseScreen
from tests.tui.helpers import wait_for
from tests.tui.test_snapshots import PRESET, app_for, chosen, goto
from tests.tui.vga import cells, invisible


def look(machine: str, before, settings=None) -> list[str]:
    app = app_for(machine, **(settings or {}))

    async def run():
        async with app.run_test(size=(80, 24)) as pilot:
            await before(pilot)
            app.set_focus(None)            # every widget as it looks without the focus
            await pilot.pause(0.2)
            return invisible(app)
    return asyncio.run(run())


def static_chosen(pilot):
    async def run():
        await goto("Network")(pilot)
        pilot.app.screen.query_one("#static").value = True
        await pilot.pause(0.2)
    return run()


def moving(screen_name: str, prepare=None):
    """run_before: open a Transfer or Restore screen and wait until its second disk moves."""
    async def run(pilot):
        await goto(screen_name, prepare=prepare)(pilot)
        await wait_for(pilot,
                       lambda: "ETA" in str(pilot.app.screen.query_one("#line-sdb").render()),
                       60, "the progress")
    return run


async def helping(pilot):
    await goto("Disks")(pilot)
    await pilot.press("f1")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), 10, "the help")


async def dialog(pilot, screen):
    await goto("Disks")(pilot)
    await pilot.app.push_screen(screen)
    await pilot.pause(0.2)


SCREENS = {
    "start": ("two-disks-usb", lambda p: goto("Start")(p), None),
    "network": ("two-disks-usb", static_chosen, None),
    "server": ("two-disks-usb", lambda p: goto("Server")(p), None),
    "disks": ("two-disks-usb", lambda p: goto("Disks")(p), None),
    "vm": ("two-disks-usb", lambda p: goto("Vm", prepare=chosen)(p), None),
    "summary": ("two-disks-usb", lambda p: goto("Summary", prepare=chosen)(p), PRESET),
    "transfer": ("two-disks-usb", moving("Transfer", chosen), PRESET),
    "done": ("two-disks-usb", lambda p: goto("Done", False, False, prepare=chosen)(p), PRESET),
    "restore": ("windows", moving("Restore"), dict(job="20261127-0930-files-1a2b3c", **PRESET)),
    "repair": ("windows", lambda p: goto("Repair")(p), None),
    "help": ("two-disks-usb", helping, None),
    "confirm": ("two-disks-usb", lambda p: dialog(p, ConfirmScreen("Quit?")), None),
    "passphrase": ("two-disks-usb", lambda p: dialog(p, PassphraseScreen("Passphrase: ")), None),
}


@pytest.mark.parametrize("screen", SCREENS)
def test_every_field_button_and_bar_shows_on_the_vga_console(screen):
    machine, before, settings = SCREENS[screen]
    assert look(machine, before, settings) == []


def test_the_check_sees_black_on_black():
    """The check itself: an Input framed black on black is reported."""
    from textual.app import App
    from textual.widgets import Input

    class Dark(App):
        CSS = "Screen { background: black; } Input { border: tall black; background: black; }"

        def compose(self):
            yield Input(id="empty")

    async def run():
        app = Dark()
        async with app.run_test(size=(40, 5)) as pilot:
            app.set_focus(None)
            await pilot.pause(0.1)
            assert cells(app)[0][0][2] == (0, 0, 0)
            return invisible(app)
    assert asyncio.run(run()) == ["Input#empty: its frame is (0, 0, 0) on (0, 0, 0), "
                                  "the same as around it"]
