"""Pilot helpers: waits with generous timeouts (the test machine is slow and shared)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from agent.probe import probe_machine

MACHINES = Path(__file__).resolve().parent.parent / "machines"


async def wait_for(pilot, predicate, timeout: float = 60.0, what: str = "the screen"):
    """Let the app run until `predicate()` is true; fail with what the screen shows."""
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause()
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - widgets may not exist yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out waiting for {what}; on screen: {screen_text(pilot.app)}")
        await asyncio.sleep(0.1)


async def wait_screen(pilot, name: str, timeout: float = 60.0):
    await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == name, timeout, name)


def screen_text(app) -> str:
    """The text of every Static and Label on the current screen."""
    from textual.widgets import Label, Static
    return " | ".join(str(w.render()) for w in app.screen.query(Static) if w.display
                      and not isinstance(w, Label))[:3000]


def recorded(name: str, tmp_path: Path | None = None, **changes):
    """A recorded machine, maybe with some fields changed (saved under tmp_path)."""
    path = MACHINES / f"{name}.json"
    if changes:
        data = json.loads(path.read_text())
        data.update(changes)
        path = tmp_path / f"{name}-changed.json"
        path.write_text(json.dumps(data))
    return lambda devices: probe_machine(recorded=path)
