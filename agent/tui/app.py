"""The app: the session's state, the screens by name, quit and the shell escape; `make_app` for
tests.

The screens never import one another: each goes on with `self.app.go("vm")`, and only this
module knows every screen (tests/test_layout.py keeps the package free of import cycles)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from textual.app import App, SuspendNotSupported
from textual.driver import Driver
from textual.screen import Screen

from agent.probe import Machine
from agent.settings import Settings
from agent.tui.ascii import ascii_driver, wants_ascii
from agent.tui.common import STEPS, ConfirmScreen, Step
from agent.tui.disks import DisksScreen
from agent.tui.done import DoneScreen
from agent.tui.edges import Edges
from agent.tui.network import NetworkScreen
from agent.tui.repair import RepairScreen
from agent.tui.restore import RestoreScreen
from agent.tui.server import ServerScreen
from agent.tui.start import StartScreen
from agent.tui.summary import SummaryScreen
from agent.tui.transfer import TransferScreen
from agent.tui.vm import VmScreen
from agent.unattended import Situation

FLOW: tuple[type[Step], ...] = (StartScreen, NetworkScreen, ServerScreen, DisksScreen, VmScreen,
                                SummaryScreen, TransferScreen, DoneScreen, RestoreScreen,
                                RepairScreen)


@dataclass
class Session:
    """What the person chose so far; `settings` is the one object the core runs on."""

    settings: Settings
    machine: Machine | None = None
    situation: Situation | None = None
    windows: dict[str, list[str]] = field(default_factory=dict)  # disk path: Windows warnings
    keep_macs: bool = True
    job: str | None = None                               # the job the transfer filled
    job_token: str | None = field(default=None, repr=False)  # that job's own token (the server's)
    outcome: list[str] = field(default_factory=list)   # what the transfer or repair did
    finished: bool = False
    steps: tuple[str, ...] = STEPS                     # the chosen flow's, numbered in titles


class P2VApp(App[int]):
    CSS_PATH = "p2v.tcss"
    TITLE = "xenp2v"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, settings: Settings, edges: Edges | None = None, ascii: bool | None = None,
                 log: Path | None = None):
        # Decided before Textual picks its driver (in App.__init__): None asks p2v.ascii, TERM
        # and the locale.
        self.ascii = wants_ascii(settings.ascii, os.environ) if ascii is None else ascii
        super().__init__()
        self.session = Session(settings)
        self.edges = edges or Edges()
        self.log_file = log   # where the agent logs (agent.cli's LOG), said after a failure
        # name: what makes that screen; a test may put its own.
        self.screens: dict[str, Callable[..., Screen]] = {s.NAME: s for s in FLOW}

    def get_driver_class(self) -> type[Driver]:
        driver = super().get_driver_class()
        return ascii_driver(driver) if self.ascii else driver

    def on_mount(self) -> None:
        self.go("start")

    def go(self, name: str, *args, replace: bool = False, **kwargs) -> None:
        """On to the screen called `name` (made with the arguments given); `replace`: instead of
        this one, which Esc then does not come back to."""
        screen = self.screens[name](*args, **kwargs)
        if replace:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    async def action_quit(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.exit(0 if self.session.finished else 1)

        if self.session.finished:
            self.exit(0)
            return
        self.push_screen(ConfirmScreen("Quit the agent? Nothing is lost: a transfer started "
                                       "again later resumes where it stopped.",
                                       yes="Quit", no="Stay"), answer)

    def action_shell(self) -> None:
        """A root shell; back from it, the screen looks at the disks again (a driver loaded
        there, a disk attached, may show new ones)."""
        try:
            with self.suspend():
                print("xenp2v: a root shell. Type exit to come back to the agent.", flush=True)
                self.edges.shell()
        except SuspendNotSupported:      # no terminal to hand over (tests): the edge alone
            self.edges.shell()
        look_again = getattr(self.screen, "look_again", None)
        if look_again:
            look_again()


def make_app(settings: Settings | None = None, edges: Edges | None = None,
             ascii: bool | None = None, log: Path | None = None) -> P2VApp:
    return P2VApp(settings or Settings(), edges, ascii, log)
