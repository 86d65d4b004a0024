"""Disks: what each disk holds, the boot stick shown but not offered, selection with Space."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Button, DataTable, Static

from agent.probe import Disk, Machine
from agent.probe.report import human_size
from agent.settings import SettingsError, update
from agent.tui.common import Step, buttons
from agent.tui.looking import look
from agent.tui.messages import Probed
from agent.vmspec import on_disk, wanted_here
from xenp2v.units import counted

STICK = "boot-stick"


def disk_row(machine: Machine, disk: Disk) -> tuple[str, ...]:
    filesystems = [p.fs for p in disk.partitions if p.fs] + ([disk.fs] if disk.fs else [])
    kinds = sorted({fs.type for fs in filesystems if fs.type})
    used = [fs.used for fs in filesystems if fs.used is not None]
    oses = sorted({fs.os.name for where, fs in machine.os_roots() if on_disk(machine, disk, where)})
    return (disk.name, human_size(disk.size), ", ".join(oses)[:24] or "none",
            human_size(sum(used)) if used else "?", ",".join(kinds) or "none",
            (disk.model or "?")[:16], (disk.serial or "?")[:14], disk.transport or "?",
            str(len(disk.partitions)))


def disk_details(machine: Machine, disk: Disk) -> str:
    lines = [f"{disk.path}: {human_size(disk.size)}, {disk.model or 'unknown model'}, "
             f"serial {disk.serial or '?'}, {disk.transport or '?'}, "
             f"{ {'gpt': 'GPT', 'dos': 'MBR'}.get(disk.table or '', 'no partition table')}"]
    for p in disk.partitions:
        fs = p.fs
        what = "no filesystem" if fs is None else (fs.type or "?") + (
            f", used {human_size(fs.used)}" if fs.used is not None else "") + (
            f", {fs.os.name}" if fs.os else "")
        lines.append(f"  {p.path.removeprefix('/dev/')}: {human_size(p.size)}, {what}")
    if disk.in_use:
        lines.append("In use, so it cannot be copied until that stops:")
        lines += [f"  {sentence}" for sentence in disk.in_use]
    return "\n".join(lines)


class DiskTable(DataTable):
    """The disks: Space ticks; Enter goes on (a tired Enter must not untick the system disk).
    Space is the table's own: on a button (a Space meant to press Next) it ticks nothing."""

    BINDINGS = [Binding("enter", "screen.next", "Next", show=False),
                Binding("space", "screen.toggle", "Tick", show=False)]


class DisksScreen(Step):
    NAME = "disks"
    TITLE = "Disks"
    HELP = ("Every disk of this machine that can be copied. Move with the arrows; Space ticks "
            "or unticks a disk, Enter goes on. Copy every disk the system uses (a root on one "
            "disk and /home on another need both). The boot stick the agent runs from is shown "
            "at the bottom and cannot be ticked: it is never copied.\n\nA disk missing? Load "
            "its controller's driver in the shell (F9 or Ctrl+T): back from it, the agent looks "
            "at the disks again (or press Look again).")

    def body(self) -> ComposeResult:
        yield DiskTable(id="disks", cursor_type="row", zebra_stripes=True)
        yield Static("", id="details")
        yield Static("", id="status")
        yield buttons(("next", "Next", "primary"), ("again", "Look again", "default"))

    def on_mount(self) -> None:
        machine = self.app.session.machine
        self.chosen = wanted_here(machine, self.app.session.settings.disks)
        self.seen = {d.path for d in machine.disks}
        table = self.query_one("#disks", DataTable)
        table.add_columns("Copy", "Disk", "Size", "Systems", "Used", "Filesystems", "Model",
                          "Serial", "Bus", "Parts")
        self.fill()
        table.focus()
        self.tell()

    def tell(self) -> None:
        machine = self.app.session.machine
        if not machine.disks:
            self.say("No disk can be copied here. Load the disk controller's driver in the shell "
                     "(F9 or Ctrl+T), then Look again.", True)
        elif machine.problems:
            self.say(machine.problems[0], True)

    @on(Button.Pressed, "#again")
    def look_again(self) -> None:
        self.say("Looking at the disks again...")
        self.probe()

    @work(thread=True, exclusive=True)
    def probe(self) -> None:
        self.post_message(look(self.app))

    def on_probed(self, message: Probed) -> None:
        if message.problem:
            self.say(message.problem, True)
            return
        session = self.app.session
        machine = session.machine = message.machine
        session.situation = message.situation or session.situation
        session.windows = message.windows
        fresh = {d.path for d in machine.disks} - self.seen
        self.seen |= fresh
        here = {d.path for d in machine.disks}
        self.chosen = (self.chosen & here) | (fresh & wanted_here(machine, session.settings.disks))
        self.fill()
        names = [d.name for d in machine.disks if d.path in fresh]
        self.say(f"New: {', '.join(names)}." if names else "No new disk.")
        self.tell()

    def fill(self) -> None:
        machine = self.app.session.machine
        table = self.query_one("#disks", DataTable)
        row = table.cursor_row
        table.clear()
        for disk in machine.disks:
            table.add_row(Text("[x]" if disk.path in self.chosen else "[ ]"),
                          *disk_row(machine, disk), key=disk.path)
        if machine.boot_medium:
            stick = machine.boot_medium
            table.add_row(Text("---"), stick.name, human_size(stick.size), "boot stick, not copied",
                          "", "", (stick.model or "?")[:16], (stick.serial or "?")[:14],
                          stick.transport or "?", "", key=STICK)
        table.move_cursor(row=row)

    @on(DataTable.RowHighlighted, "#disks")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        machine = self.app.session.machine
        key = event.row_key.value
        if key == STICK:
            text = "The boot stick the agent runs from. It is never copied."
        else:
            text = disk_details(machine, next(d for d in machine.disks if d.path == key))
        self.query_one("#details", Static).update(text)

    def action_toggle(self) -> None:
        self.toggle()

    @on(DataTable.RowSelected, "#disks")
    def toggle(self) -> None:
        table = self.query_one("#disks", DataTable)
        if not table.row_count:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if key == STICK:
            self.say("That is the boot stick: it cannot be copied.", True)
            return
        self.chosen ^= {key}
        self.fill()
        self.say(f"{counted(len(self.chosen), 'disk')} ticked.")

    def action_next(self) -> None:
        self.next()

    @on(Button.Pressed, "#next")
    def next(self) -> None:
        machine = self.app.session.machine
        if not self.chosen:
            self.say("Tick at least one disk (Space).", True)
            return
        session = self.app.session
        chosen = [d.path for d in machine.disks if d.path in self.chosen]
        try:
            session.settings = update(session.settings, {"disks": chosen})
        except SettingsError as e:
            self.say(" ".join(e.problems), True)
            return
        self.app.go("vm")
