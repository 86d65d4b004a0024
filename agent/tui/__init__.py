"""The technician's TUI (Textual): it fills the Settings and shows progress; the work is done by
the same functions the unattended run calls (agent.unattended).

This package is the only place that imports textual; `p2v-agent` imports it late, and only
when a person sits at the terminal. `make_app()` (agent.tui.app) builds the app for tests with
their own edges (a recorded machine, a loop device, a test server).
"""

from __future__ import annotations

from pathlib import Path

from agent.settings import Settings


def run(settings: Settings, log: Path | None = None) -> int:
    """The TUI on this terminal; log records go to `log` (agent.cli's LOG), never onto it, and
    a failed run's screen says where that is."""
    from agent.tui.app import make_app

    return make_app(settings, log=log).run() or 0
