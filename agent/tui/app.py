"""The app: the session's state, the flow's entry, quit and the shell escape; `make_app` for tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.app import App, SuspendNotSupported

from agent.probe import Machine
from agent.settings import Settings
from agent.tui.common import ConfirmScreen
from agent.tui.edges import Edges
from agent.unattended import Situation


@dataclass
class Session:
    """What the person chose so far; `settings` is the one object the core runs on."""

    settings: Settings
    machine: Machine | None = None
    situation: Situation | None = None
    windows: dict[str, list[str]] = field(default_factory=dict)  # disk path: Windows warnings
    keep_macs: bool = True
    job: str | None = None                               # the job the transfer filled
    outcome: list[str] = field(default_factory=list)   # what the transfer or repair did
    finished: bool = False


class P2VApp(App[int]):
    CSS_PATH = "p2v.tcss"
    TITLE = "xenp2v"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, settings: Settings, edges: Edges | None = None):
        super().__init__()
        self.session = Session(settings)
        self.edges = edges or Edges()

    def on_mount(self) -> None:
        from agent.tui.start import StartScreen

        self.push_screen(StartScreen())

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


def make_app(settings: Settings | None = None, edges: Edges | None = None) -> P2VApp:
    return P2VApp(settings or Settings(), edges)
