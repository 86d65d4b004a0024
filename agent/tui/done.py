"""Done: what happened, what comes next, and what this machine does now."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Button, Static

from agent.probe.report import human_size
from agent.settings import update
from agent.tui.common import ConfirmScreen, Step, buttons
from agent.tui.vm import vcpus_text
from agent.unattended import post_action


def next_steps(session) -> str:
    s = session.settings
    job = session.job or "?"
    machine = session.machine
    disks = [d for d in machine.disks if d.path in (s.disks or [])]
    return (
        "What happens next:\n"
        "- With XenServer details, p2v-server now creates the VM, imports the disks, boots it "
        "from this ISO, repairs the system and starts it. Follow it with p2v-server jobs.\n"
        f"- Otherwise create the VM by hand: {vcpus_text(s.vcpus)}, {human_size(s.memory)} memory, "
        f"{machine.firmware.upper()} firmware, disks of "
        + ", ".join(human_size(d.size) for d in disks)
        + ". Boot it from this ISO with the boot line\n"
        f"  {boot_line(s, job)}\n"
        "  (p2v.token= the token p2v-server printed) and it restores the disks and repairs "
        "the system by itself."
    )


def boot_line(s, job: str) -> str:
    """The manual path's kernel arguments: the fingerprint too, or the VM's restore stops at the
    certificate with no screen to trust it on."""
    words = [f"p2v.server={s.server}", "p2v.token=...",
             f"p2v.fingerprint={s.fingerprint}" if s.fingerprint else "",
             f"p2v.job={job}", "p2v.mode=restore"]
    return " ".join(w for w in words if w)


class DoneScreen(Step):
    TITLE = "Done"
    HELP = ("The transfer is over. Power off this machine once the VM runs (keep it until then: "
            "it is the original). Reboot starts this machine again from its own disks if the "
            "stick is removed. Shell gives a root shell; type exit to come back.")
    BINDINGS = [Binding("escape", "nothing", show=False)]

    def __init__(self, ok: bool, cancelled: bool, again: type | None = None):
        super().__init__()
        self.ok, self.cancelled, self.again = ok, cancelled, again

    def body(self) -> ComposeResult:
        session = self.app.session
        head = ("The transfer is complete." if self.ok else
                "The transfer was stopped; the job stays on the server." if self.cancelled else
                "The transfer did not finish.")
        text = head + "\n" + "\n".join(session.outcome)
        if self.ok:
            text += "\n\n" + next_steps(session)
        with VerticalScroll(id="outcome"):
            yield Static(text, id="result", classes="" if self.ok else "problem")
        yield Static("", id="status")
        rows = [] if self.ok or not self.again else [("resume", "Resume the transfer", "primary")]
        yield buttons(*rows, ("poweroff", "Power off", "default"), ("reboot", "Reboot", "default"),
                      ("shell", "Shell", "default"), ("quit", "Quit", "default"))

    def on_mount(self) -> None:
        self.query(Button).first().focus()

    def action_nothing(self) -> None:
        """Nothing to go back to: the transfer is over."""

    @on(Button.Pressed, "#resume")
    def resume(self) -> None:
        """The same job again: what the server already holds is not sent twice."""
        session = self.app.session
        if session.job:
            session.settings = update(session.settings, {"job": session.job})
        self.app.switch_screen(self.again())

    @on(Button.Pressed, "#poweroff, #reboot")
    def power(self, event: Button.Pressed) -> None:
        action = event.button.id

        def answer(yes: bool | None) -> None:
            if yes:
                self.say(post_action(action, self.app.edges.power))

        what = "Power off" if action == "poweroff" else "Reboot"
        self.app.push_screen(ConfirmScreen(f"{what} this machine now?", yes=what, no="Not now"),
                             answer)

    @on(Button.Pressed, "#shell")
    def shell(self) -> None:
        self.app.action_shell()

    @on(Button.Pressed, "#quit")
    def quit(self) -> None:
        self.app.exit(0 if self.ok else 1)
