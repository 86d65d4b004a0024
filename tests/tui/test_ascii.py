"""A serial or SOL console that is not UTF-8: the TUI draws with ASCII alone (issue 17).

The real agent in tmux with TERM=vt220 (what a serial getty announces): nothing but ASCII
reaches the terminal, the frames are + - |, a radio button is (*); on the Transfer screen a
bar is # done and - to go; the footer names a shell key a VT100 keyboard has."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.console import Console

from agent.transfer.progress import ProgressEvent
from agent.settings import Settings, load_settings
from agent.tui.app import make_app
from agent.tui.ascii import to_ascii, wants_ascii
from tests.tui.helpers import wait_for
from tests.tui.test_tired import PRESET, edges, open_screen, walk
from tests.tui.test_tmux import AGENT, Tmux, appears, tmux  # noqa: F401 - the fixture

GiB = 1 << 30


def not_ascii(screen: str) -> list[str]:
    return sorted({ch for ch in screen if not ch.isascii()})


def test_a_vt220_console_gets_ascii_only(tmux, tmp_path):  # noqa: F811 - the fixture
    status = tmp_path / "status"
    agent = f"{AGENT} --config {tmp_path / 'none.cfg'} --cmdline quiet"
    repo = Path(__file__).resolve().parents[2]
    # PYTHONPATH given here: a tmux server already running would not pass on the test's own.
    tmux.start(f"cd {repo} && TERM=vt220 LANG=C.UTF-8 PYTHONPATH={repo} {agent}; "
               f"echo $? > {status}; sleep 600")

    screen = tmux.wait("Migrate this machine", 120)
    assert not not_ascii(screen), screen
    assert "+--" in screen and "f9/^t Shell" in screen, screen   # a frame; a key without F9
    tmux.keys("Enter")                                   # migrate
    screen = tmux.wait("Network  step 2 of 8")
    assert not not_ascii(screen), screen
    assert "(*) DHCP" in screen and "( ) Static" in screen, screen
    tmux.keys("C-q")
    tmux.wait("Quit the agent?")
    tmux.keys("Tab", "Enter")
    assert appears(status), tmux.pane()


def test_p2v_ascii_decides_first_else_the_terminal_and_the_locale():
    serial = {"TERM": "vt220", "LANG": "C.UTF-8"}
    vga = {"TERM": "linux", "LANG": "C.UTF-8"}
    assert wants_ascii(None, serial) and not wants_ascii(None, vga)
    assert wants_ascii(None, {"TERM": "linux", "LANG": "en_US.ISO-8859-1"})
    assert wants_ascii(None, {"TERM": "xterm", "LC_ALL": "C", "LANG": "C.UTF-8"})
    assert not wants_ascii(load_settings("quiet p2v.ascii=0", cfg_paths=[]).ascii, serial)
    assert wants_ascii(load_settings("quiet p2v.ascii", cfg_paths=[]).ascii, vga)
    assert to_ascii("╭─┐│▐X▌━▔▁…") == "+-+||X|--_."            # cell for cell


def test_a_bar_is_hashes_done_and_dashes_to_go_and_boxes_are_bracketed_in_ascii():
    def capture(settings, progress, machine=None, keep_macs=None):
        """A quarter of sda, reported until the screen goes away (its report then stops it)."""
        while True:
            for subscriber in progress.subscribers:
                subscriber(ProgressEvent("sda", "capture", GiB, 4 * GiB, GiB, 1 << 20, 60.0))
            time.sleep(0.2)

    app = make_app(Settings(**PRESET, disks=["/dev/sda"]), edges(capture=capture), ascii=True)

    async def steps(pilot):
        from agent.tui.transfer import TransferScreen
        from agent.tui.vm import VmScreen
        await open_screen(pilot, TransferScreen())
        bar = app.screen.query_one("#bar-sda")
        await wait_for(pilot, lambda: bar.percentage == 0.25, 30, "the report")
        await pilot.pause(0.2)
        inner = bar.query_one("Bar")
        console = Console(width=inner.size.width, color_system=None)
        with console.capture() as drawn:
            console.print(inner.render())
        line = drawn.get().rstrip("\n")
        assert line == "#" * (len(line) // 4) + "-" * (len(line) - len(line) // 4), line
        await pilot.app.pop_screen()
        await open_screen(pilot, VmScreen())
        assert str(app.screen.query_one("#macs").render()).startswith("[X] Keep")

    walk(app, steps)
