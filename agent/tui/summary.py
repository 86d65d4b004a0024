"""Summary: everything the transfer will use, on one screen, and the button that starts it."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Button, Static

from agent.windows import winwarn
from agent.probe.report import human_size
from agent.tui.common import Step, buttons, in_form_words
from agent.tui.network import network_line
from agent.vmspec import warnings


def summary(session) -> str:
    s, machine = session.settings, session.machine
    chosen = [d for d in machine.disks if d.path in (s.disks or [])]
    lines = [
        f"Server       {s.server}",
        f"Fingerprint  {(s.fingerprint or 'none (plain HTTP)')[:26]}...",
        f"VM name      {s.name}",
        f"vCPUs        {s.vcpus}      Memory  {human_size(s.memory)}",
        f"Network      {network_line(s.ip)}",
        f"NICs         {len(machine.nics)}, MACs {'kept' if session.keep_macs else 'new'}",
        "Disks        " + ", ".join(f"{d.name} ({human_size(d.size)})" for d in chosen),
        f"Transfer     {s.streams} streams, compression {s.compress}, "
        f"limit {human_size(s.bwlimit) + '/s' if s.bwlimit else 'none'}",
    ]
    found = winwarn.lines(session.windows, s.disks or []) + warnings(machine, s, s.vcpus, s.memory)
    lines += [f"Warning: {in_form_words(w)}" for w in found]
    lines.append("")
    lines.append("The disks are only read. The transfer can be stopped and started again: it "
                 "resumes where it stopped.")
    return "\n".join(lines)


class SummaryScreen(Step):
    NAME = "summary"
    TITLE = "Summary"
    HELP = ("Check every line. Esc goes back to change something. Start begins the transfer; "
            "the source disks are only read, never written.")

    def body(self) -> ComposeResult:
        with VerticalScroll(id="summary"):
            yield Static(summary(self.app.session))
        yield buttons(("start", "Start the transfer", "success"), ("back", "Back", "default"))

    def on_mount(self) -> None:
        self.query_one("#start", Button).focus()

    @on(Button.Pressed, "#back")
    def back(self) -> None:
        self.action_back()

    @on(Button.Pressed, "#start")
    def start(self) -> None:
        self.app.go("transfer")
