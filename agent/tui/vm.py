"""VM: name, vCPUs, memory, disks and NIC MACs, defaults from the probe, warnings."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Button, Checkbox, Input, Label, Static

from agent.probe import Machine
from agent.probe.report import human_size
from agent.settings import Settings, SettingsError, parse_size, update
from agent.tui.common import Step, Tick, buttons
from agent.tui.disks import left_out

VHD_LIMIT = 2040 << 30      # VHD-based storage holds at most about 2 TiB per disk
XEN_VCPUS = 32              # what XenServer supports for most guests


def default_name(machine: Machine) -> str:
    for _, fs in machine.os_roots():
        if fs.os.hostname:
            return fs.os.hostname
    return (machine.product or "migrated").replace(" ", "-")[:40]


def memory_text(size: int) -> str:
    gib = size / (1 << 30)
    return f"{gib:.0f}G" if gib >= 1 and gib == int(gib) else f"{size >> 20}M"


def default_memory(machine: Machine) -> int:
    """The machine's memory as a person would size a VM: the kernel's total (24105M, short of
    what is installed by what firmware keeps) rounded to whole GiB, or to 256M below 2G."""
    size = machine.memory or 2 << 30
    step = 1 << 30 if size >= 2 << 30 else 256 << 20
    return max(step, (size + step // 2) // step * step)


def vcpus_text(count: int) -> str:
    return f"{count} vCPU" + ("" if count == 1 else "s")


def warnings(machine: Machine, settings: Settings, vcpus: int | None, memory: int | None) -> list[str]:
    out = left_out(machine, settings.disks or [])
    chosen = [d for d in machine.disks if d.path in (settings.disks or [])]
    if vcpus and vcpus > XEN_VCPUS:
        out.append(f"{vcpus_text(vcpus)}: XenServer supports at most {XEN_VCPUS} for most guests.")
    if memory and machine.memory and memory > machine.memory:
        out.append(f"{human_size(memory)} is more memory than this machine has; check that the "
                   "pool's host has that much free.")
    for disk in chosen:
        if disk.size > VHD_LIMIT:
            out.append(f"{disk.name} is {human_size(disk.size)}: over 2 TiB, it cannot go into a "
                       "VHD or a VHD-based storage repository; use raw or qcow2 storage.")
    if any(fs.os.family == "windows" for _, fs in machine.os_roots()):
        out.append("A Windows system was found: after the transfer, the repair makes it start "
                   "on the VM's disk controller (IDE or NVMe) and disables other hypervisors' "
                   "tools; XenServer's PV drivers are installed at first boot only when their "
                   "package is given (--windows-drivers, p2v.windows_drivers).")
    return out



def mac_note(keep: bool) -> str:
    """One line under the MAC checkbox: what each choice costs."""
    if keep:
        return "The VM takes the source's MACs: keep the source off this LAN while the VM runs."
    return ("Warning: new MACs; DHCP reservations, firewall rules and licences tied to the old ones "
            "do not follow, and the source may come back on the same LAN.")

class VmScreen(Step):
    TITLE = "VM"
    HELP = ("How the new VM looks. The defaults come from this machine: its host name, its CPU "
            "threads and its memory. Memory takes a unit: 4G or 4096M. Keep MACs gives the VM's "
            "network cards this machine's MAC addresses, so DHCP reservations and licences tied "
            "to a MAC keep working; untick it if this machine stays on the network.")

    def body(self) -> ComposeResult:
        session = self.app.session
        machine, settings = session.machine, session.settings
        vcpus = settings.vcpus or self.default_vcpus()
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

    def default_vcpus(self) -> int:
        machine = self.app.session.machine
        return machine.cpu.threads if machine.cpu else 2

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
        self.query_one("#warnings", Static).update("\n".join(f"Warning: {w}" for w in found))

    @on(Checkbox.Changed, "#macs")
    def macs_changed(self, event: Checkbox.Changed) -> None:
        self.query_one("#macs-note", Static).update(mac_note(event.value))

    @on(Input.Submitted)
    @on(Button.Pressed, "#next")
    def next(self) -> None:
        session = self.app.session
        # An empty field means the default shown at first, never "None".
        defaults = {"name": default_name(session.machine), "vcpus": str(self.default_vcpus()),
                    "memory": memory_text(default_memory(session.machine))}
        values = {name: self.query_one(f"#{name}", Input).value.strip() or defaults[name]
                  for name in ("name", "vcpus", "memory")}
        try:
            session.settings = update(session.settings, values)
        except SettingsError as e:
            self.say(" ".join(e.problems), True)
            return
        session.keep_macs = self.query_one("#macs", Checkbox).value
        from agent.tui.summary import SummaryScreen
        self.app.push_screen(SummaryScreen())
