"""The technician's TUI (Textual): it fills the Settings and shows progress; the work is done by
the same functions the unattended run calls (agent.unattended).

This package is the only place that imports textual; `p2v-agent` imports it late, and only
when a person sits at the terminal. `make_app()` (agent.tui.app) builds the app for tests with
their own edges (a recorded machine, a loop device, a test server).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from agent.settings import Settings

LOG = Path(tempfile.gettempdir()) / "xenp2v-agent.log"


def run(settings: Settings) -> int:
    from agent.tui.app import make_app

    # Log records go to a file, never to the terminal the TUI draws on.
    handler = logging.FileHandler(LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return make_app(settings).run() or 0
