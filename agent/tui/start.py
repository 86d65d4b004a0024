"""Start: what this machine is, in one glance, and what to do with it."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from agent.windows import winwarn
from agent.probe import Machine
from agent.probe.report import human_size
from agent.tui.common import REPAIR_STEPS, RESTORE_STEPS, STEPS, Step
from agent.tui.looking import look
from agent.tui.messages import Probed
from agent.vmspec import wanted_here

CHOICES = {
    "capture": "Migrate this machine: send its disks to the server",
    "restore": "Restore the job given on the boot line onto this VM, then repair",
    "repair": "Repair the copied system on this machine's disks",
    "shell": "Open a shell (F9 or Ctrl+T), then come back here",
}


def windows_text(found: dict[str, list[str]], disks: set[str] | None) -> str:
    """The Windows warnings (winwarn) for the `disks` (paths; None: all), a "Warning:" line each."""
    return "\n".join(f"Warning: {w}" for w in winwarn.lines(found, disks))


def glance(machine: Machine) -> str:
    """The machine in a few lines that fit 80 columns."""
    kind = "virtual machine" if machine.is_virtual else "physical machine"
    ident = " ".join(filter(None, [machine.vendor, machine.product])) or "unknown machine"
    lines = [f"Machine  {ident} ({kind}, {machine.firmware.upper()})"]
    cpu = f"{machine.cpu.threads} CPU threads" if machine.cpu else "CPU unknown"
    lines.append(f"CPU      {cpu}, memory {human_size(machine.memory)}")
    oses = {}
    for where, fs in machine.os_roots():
        oses.setdefault(where, fs.os.name)
    for disk in machine.disks:
        found = [name for where, name in oses.items() if where.startswith(disk.path)]
        lines.append(f"Disk     {disk.name} {human_size(disk.size)} "
                     f"{disk.model or ''} {('- ' + ', '.join(found)) if found else ''}".rstrip())
    if not machine.disks:
        lines.append("Disks    none found to migrate")
    others = [name for where, name in oses.items()
              if not any(where.startswith(d.path) for d in machine.disks)]
    if others:
        lines.append(f"Systems  {', '.join(others)} (on LVM or RAID)")
    if machine.boot_medium:
        lines.append(f"Stick    {machine.boot_medium.name} (the boot stick, never copied)")
    links = ", ".join(f"{n.name} {'up' if n.link else 'down'}" for n in machine.nics) or "no card"
    lines.append(f"Network  {links}")
    return "\n".join(lines)


class StartScreen(Step):
    NAME = "start"
    TITLE = "Start"
    HELP = ("The agent looks at this machine first: its hardware, disks and the systems on "
            "them. Nothing is written to the disks. A Windows volume that cannot be copied by "
            "its used blocks alone (hibernated or Fast Startup, BitLocker, dynamic disks, "
            "Storage Spaces) is said here, with what to do: it would be read whole.\n\nOn a "
            "physical machine, choose to migrate it: the next screens set the network, the "
            "server, the disks and the VM. In a VM that the server created for a job, choose "
            "repair: the copied system is made to boot on the VM's hardware.")

    def body(self) -> ComposeResult:
        yield Static("Looking at this machine's hardware and disks...", id="glance")
        yield Static("", id="windows", classes="warnings")
        yield Static("", id="status")
        yield OptionList(id="choices")

    def on_mount(self) -> None:
        self.query_one("#choices", OptionList).display = False
        self.probe()

    @work(thread=True, exclusive=True)
    def probe(self) -> None:
        self.post_message(look(self.app))

    def look_again(self) -> None:
        """After the shell: a driver loaded there may show new disks."""
        self.query_one("#glance", Static).update("Looking at this machine's hardware and disks again...")
        self.probe()

    def on_probed(self, message: Probed) -> None:
        if message.problem:
            self.say(message.problem + " Open a shell (F9 or Ctrl+T) to look, or quit (Ctrl+Q).",
                     True)
            return
        session = self.app.session
        session.machine, session.situation = message.machine, message.situation
        session.windows = message.windows
        text = glance(message.machine)
        for problem in message.machine.problems[:3]:
            text += f"\nProblem  {problem}"
        self.query_one("#glance", Static).update(text)
        found = windows_text(message.windows, wanted_here(message.machine, session.settings.disks))
        windows = self.query_one("#windows", Static)
        windows.update(found)
        windows.display = bool(found)
        self.say(message.situation.reason)
        preset = session.settings.mode
        first = preset if preset in CHOICES else message.situation.mode
        first = first if first in CHOICES else "capture"
        offered = [c for c in CHOICES if c != "restore" or session.settings.job]
        order = [first] + [c for c in offered if c != first]
        choices = self.query_one("#choices", OptionList)
        choices.clear_options()
        choices.add_options([Option(CHOICES[c], id=c) for c in order])
        choices.display = True
        choices.highlighted = 0
        choices.focus()

    @on(OptionList.OptionSelected, "#choices")
    def chosen(self, event: OptionList.OptionSelected) -> None:
        choice = event.option.id
        session = self.app.session
        if choice == "shell":
            self.app.action_shell()
        elif choice == "restore":
            settings = session.settings
            if settings.server and settings.server.startswith("https:") and not settings.fingerprint:
                # Nothing to trust the server's certificate by yet: the Server screen first.
                session.steps = RESTORE_STEPS
                self.app.go("server", then="restore")
            else:
                session.steps = tuple(s for s in RESTORE_STEPS if s != "Server")
                self.app.go("restore")
        elif choice == "repair":
            session.steps = REPAIR_STEPS
            self.app.go("repair")
        else:
            session.steps = STEPS
            self.app.go("network")
