"""Tab follows the layout on every screen (issue 17): from the widget that has the focus, Tab
visits every field, list and button once, top to bottom and left to right, then comes round."""

from __future__ import annotations

import asyncio

import pytest

from agent.tui.messages import ServerChecked
from tests.tui.helpers import wait_for
from tests.tui.test_snapshots import PRESET, app_for, chosen, probed


def place(widget) -> tuple[int, int]:
    return widget.region.y, widget.region.x


def static_chosen(app):
    app.screen.query_one("#static").value = True


def trust_offered(app):
    app.screen.post_message(ServerChecked(True, "sha256:" + "ab" * 32, "Compare it.",
                                          token_checked=False))


def picker_shown(app):
    from agent.tui.messages import RepairPlanned
    app.screen.post_message(RepairPlanned(None, "", "No system was found."))


# (screen module, its arguments, what is set before, what is done on it, machine)
SCREENS = {
    "start": (None, (), None, None, "two-disks-usb"),
    "network": ("Network", (), None, None, "two-disks-usb"),
    "network-static": ("Network", (), None, static_chosen, "two-disks-usb"),
    "server": ("Server", (), None, None, "two-disks-usb"),
    "server-trust": ("Server", (), None, trust_offered, "two-disks-usb"),
    "disks": ("Disks", (), None, None, "two-disks-usb"),
    "vm": ("Vm", (), chosen, None, "two-disks-usb"),
    "summary": ("Summary", (), chosen, None, "two-disks-usb"),
    "transfer": ("Transfer", (), chosen, None, "two-disks-usb"),
    "done": ("Done", (True, False), chosen, None, "two-disks-usb"),
    "done-failed": ("Done", (False, False), chosen, None, "two-disks-usb"),
    "repair": ("Repair", (), None, None, "windows"),
    "repair-pick": ("Repair", (), None, picker_shown, "windows"),
}


@pytest.mark.parametrize("name", SCREENS)
def test_tab_follows_the_layout(name):
    module, args, prepare, then, machine = SCREENS[name]
    app = app_for(machine, **PRESET)
    if name == "done-failed":
        from agent.tui.transfer import TransferScreen
        args = (False, False, TransferScreen)

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await probed(pilot)
            if module:
                if prepare:
                    prepare(app)
                screen = __import__(f"agent.tui.{module.lower()}", fromlist=["x"])
                await app.push_screen(getattr(screen, f"{module}Screen")(*args))
                await pilot.pause(0.3)
            if module == "Repair":
                await wait_for(pilot, lambda: app.screen.query_one("#apply").display, 30, "the plan")
            if then:
                then(app)
                await pilot.pause(0.3)
            focusable = [w for w in app.screen.focus_chain if w.region.area]
            assert app.focused in focusable, f"the focus starts on {app.focused}"
            visited = [app.focused]
            for _ in focusable:
                await pilot.press("tab")
                visited.append(app.focused)
            assert visited[-1] is visited[0], "Tab did not come round"
            first = min(range(len(focusable)), key=lambda i: place(visited[i]))
            order = visited[first:-1] + visited[:first]
            ids = [f"{type(w).__name__}#{w.id}" for w in order]
            assert order == sorted(focusable, key=place), ids
            assert len(set(map(id, order))) == len(focusable), ids

    asyncio.run(walk())
