"""VM: name, vCPUs, memory, disks and NIC MACs, defaults from the probe, warnings."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Button, Checkbox, Input, Label, Static

from agent.probe.report import human_size
from agent.settings import SettingsError, parse_size, update
from agent.tui.common import Step, Tick, buttons, in_form_words
from agent.vmspec import default_memory, default_name, default_vcpus, memory_text, warnings

def mac_note(keep: bool) -> str:
    """One line under the MAC checkbox: what each choice costs."""
    if keep:
        return "The VM takes the source's MACs: keep the source off this LAN while the VM runs."
    return ("Warning: new MACs; DHCP reservations, firewall rules and licences tied to the old ones "
            "do not follow, and the source may come back on the same LAN.")

class VmScreen(Step):
    NAME = "vm"
    TITLE = "VM"
    HELP = ("How the new VM looks. The defaults come from this machine: its host name, its CPU "
            "threads and its memory. Memory takes a unit: 4G or 4096M. Keep MACs gives the VM's "
            "network cards this machine's MAC addresses, so DHCP reservations and licences tied "
            "to a MAC keep working; untick it if this machine stays on the network.")

    def body(self) -> ComposeResult:
        session = self.app.session
        machine, settings = session.machine, session.settings
        vcpus = settings.vcpus or default_vcpus(machine)
        memory = settings.memory or default_memory(machine)
        with Grid(id="vm-form"):
            yield Label("Name")
            yield Input(settings.name or default_name(machine), id="name")
            yield Label("vCPUs")
            yield Input(str(vcpus), id="vcpus")
            yield Label("Memory")
            yield Input(memory_text(memory), id="memory")
        yield Tick("Keep the NICs' MAC addresses " + ", ".join(n.mac for n in machine.nics),
                       session.keep_macs, id="macs")
        yield Static(mac_note(session.keep_macs), id="macs-note")
        chosen = [d for d in machine.disks if d.path in (settings.disks or [])]
        yield Static("Disks    " + ", ".join(f"{d.name} ({human_size(d.size)})" for d in chosen),
                     id="vm-disks")
        yield Static("", id="warnings")
        yield Static("", id="status")
        yield buttons(("next", "Next", "primary"))

    def on_mount(self) -> None:
        self.query_one("#name", Input).focus()
        self.refresh_warnings()

    @on(Input.Changed)
    def refresh_warnings(self) -> None:
        try:
            vcpus = int(self.query_one("#vcpus", Input).value)
        except ValueError:
            vcpus = None
        try:
            memory = parse_size(self.query_one("#memory", Input).value)
        except ValueError:
            memory = None
        found = warnings(self.app.session.machine, self.app.session.settings, vcpus, memory)
        self.query_one("#warnings", Static).update(
            "\n".join(f"Warning: {in_form_words(w)}" for w in found))

    @on(Checkbox.Changed, "#macs")
    def macs_changed(self, event: Checkbox.Changed) -> None:
        self.query_one("#macs-note", Static).update(mac_note(event.value))

    @on(Input.Submitted)
    @on(Button.Pressed, "#next")
    def next(self) -> None:
        session = self.app.session
        # An empty field means the default shown at first, never "None".
        defaults = {"name": default_name(session.machine), "vcpus": str(default_vcpus(session.machine)),
                    "memory": memory_text(default_memory(session.machine))}
        values = {name: self.query_one(f"#{name}", Input).value.strip() or defaults[name]
                  for name in ("name", "vcpus", "memory")}
        try:
            session.settings = update(session.settings, values)
        except SettingsError as e:
            self.say(" ".join(e.problems), True)
            return
        session.keep_macs = self.query_one("#macs", Checkbox).value
        self.app.go("summary")
