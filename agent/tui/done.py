"""Done: what happened, what comes next, and what this machine does now."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Button, Static

from agent.probe.report import human_size
from agent.settings import update
from agent.tui.common import ConfirmScreen, Step, buttons
from agent.unattended import manual_boot_line, post_action
from agent.vmspec import vcpus_text


def next_steps(session) -> str:
    s = session.settings
    job = session.job or "?"
    machine = session.machine
    disks = [d for d in machine.disks if d.path in (s.disks or [])]
    token = ("The token works for this job only, until its repair is reported."
             if session.job_token else
             "Put the token p2v-server printed after p2v.token= (this server gave no job token).")
    return (
        "Next: with a pool set up, p2v-server makes the VM and repairs it by itself (p2v-server "
        f"jobs follows it). Otherwise make a VM by hand ({vcpus_text(s.vcpus)}, "
        f"{human_size(s.memory)} memory, {machine.firmware.upper()} firmware, disks of "
        + ", ".join(human_size(d.size) for d in disks)
        + ") and boot it from this ISO with these keys on its boot line, on one line with a "
        "space between them; it restores the disks and repairs the system by itself:\n"
        + key_lines(manual_boot_line(s, job, session.job_token)) + "\n"
        f"{token}"
    )


def key_lines(line: str) -> str:
    """The boot line one key a line (where a line ends, a space goes); the fingerprint, too long
    for an 80-column screen, folded by us after its first 32 hex digits with a line that says
    so: folded by the screen at whatever width, it read as two words, and typed with a space
    the VM's agent stopped at 'is not a certificate fingerprint'."""
    out, note = [], []
    for word in line.split(" "):
        key, _, value = word.partition("=")
        if key == "p2v.fingerprint" and value.startswith("sha256:"):
            hexdigits = value.removeprefix("sha256:")
            out.append(f"{key}=sha256:{hexdigits[:32]}\n{hexdigits[32:]}")
            note = ["(the fingerprint is one word on two lines: type the second line right after "
                    "the first, with no space)"]
        else:
            out.append(word)
    return "\n".join(out + note)


def help_text(ok: bool, cancelled: bool, again: str | None, log: Path | None = None,
              boot_line_disks: bool = False) -> str:
    """The Done screen's help for the outcome: after a failure, what to do next, not what a
    success would mean. `boot_line_disks`: the restore stopped at the disks p2v.disks= names,
    which no screen can change."""
    if ok:
        return ("The transfer is over. Power off this machine once the VM runs (keep it until "
                "then: it is the original). Reboot starts this machine again from its own disks "
                "if the stick is removed. Shell gives a root shell; type exit to come back.")
    what = "restore" if again == "restore" else "transfer"
    head = (f"The {what} was stopped before the end." if cancelled else
            f"The {what} did not finish: the reason is on this screen (arrows scroll it). "
            "The agent's log" + (f", {log}," if log else "") + " has more (p2v.debug on the "
            "boot line logs every step); Shell gives a root shell to read it (type exit to "
            "come back).")
    if not again:
        retry = ""
    elif boot_line_disks:
        retry = (" The disks to write come from p2v.disks= on the boot line, which this agent "
                 "cannot change: reboot, edit p2v.disks= on the boot line (or remove it to use "
                 "the VM's free disks), and choose Restore again; what is done is not done again.")
    elif cancelled:
        retry = (f" Resume the {what} when you are ready: it goes on where it stopped, and what "
                 "is done is not done again.")
    else:
        retry = (f" Put right what stopped it (the network, the server, a disk to attach), then "
                 f"Resume the {what}: it goes on where it stopped, and what is done is not done "
                 "again.")
    keep = (" This VM does not boot from its disks until the restore and the repair finish."
            if what == "restore" else
            " This machine's disks were only read: keep it as it is, it is the original.")
    return head + retry + keep + " Power off and Reboot ask first."


class DoneScreen(Step):
    NAME = "done"
    TITLE = "Done"
    HELP = help_text(True, False, None)
    BINDINGS = [Binding("escape", "nothing", show=False)]

    def __init__(self, ok: bool, cancelled: bool, again: str | None = None):
        super().__init__()
        self.ok, self.cancelled, self.again = ok, cancelled, again

    def body(self) -> ComposeResult:
        session = self.app.session
        self.HELP = help_text(self.ok, self.cancelled, self.again, self.app.log_file,
                              self.boot_line_disks())
        what = "restore" if self.again == "restore" else "transfer"
        head = (f"The {what} is complete." if self.ok else
                f"The {what} was stopped; the job stays on the server." if self.cancelled else
                f"The {what} did not finish.")
        text = head + "\n" + "\n".join(session.outcome)
        if self.ok:
            text += "\n\n" + next_steps(session)
        with VerticalScroll(id="outcome"):
            yield Static(text, id="result", classes="" if self.ok else "problem")
        yield Static("", id="status")
        # Resuming would stop at the same p2v.disks=.
        rows = [] if self.ok or not self.again or self.boot_line_disks() else [
            ("resume", f"Resume the {what}", "primary")]
        yield buttons(*rows, ("poweroff", "Power off", "default"), ("reboot", "Reboot", "default"),
                      ("shell", "Shell", "default"), ("quit", "Quit", "default"))

    def boot_line_disks(self) -> bool:
        """The restore stopped at the disks p2v.disks= names (too small, too few, one twice)."""
        session = self.app.session
        return (not self.ok and not self.cancelled and self.again == "restore"
                and bool(session.settings.disks)
                and any("p2v.disks=" in line for line in session.outcome))

    def on_mount(self) -> None:
        if self.ok:
            # The text first: the boot line may need scrolling, and a tired Enter does nothing.
            self.query_one("#outcome").focus()
            self.say("Arrows scroll the text; Tab goes to the buttons.")
        else:
            self.query(Button).first().focus()

    def action_nothing(self) -> None:
        """Nothing to go back to: the transfer is over."""

    @on(Button.Pressed, "#resume")
    def resume(self) -> None:
        """The same job again: what the server already holds is not sent twice."""
        session = self.app.session
        if session.job:
            session.settings = update(session.settings, {"job": session.job})
        self.app.go(self.again, replace=True)

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
