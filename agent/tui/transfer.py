"""Transfer: a bar per disk with rate and ETA, overall progress, the log, cancel with confirmation.

The capture runs in a worker thread; a progress subscriber and a log handler turn what it reports
into messages. Cancel is a flag the subscriber checks: the next progress report stops the run,
and the job stays on the server to resume.
"""

from __future__ import annotations

import logging
import re

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Label, ProgressBar, RichLog, Static

from agent.capture import CaptureError
from agent.client import ServerError
from agent.restore import RestoreError
from agent.progress import Progress, ProgressEvent, format_eta, human
from agent.tui.common import ConfirmScreen, Step, buttons
from agent.tui.messages import TransferEnded, TransferLog, TransferProgress
from agent.unattended import capture_summary


JOB_LINE = re.compile(r"^info: job (\S+) \((new|resumed)\)")


class Cancelled(Exception):
    """The person stopped the transfer."""


class _LogLines(logging.Handler):
    def __init__(self, screen: "TransferScreen"):
        super().__init__(logging.INFO)
        self.screen = screen

    def emit(self, record: logging.LogRecord) -> None:
        self.screen.post_message(TransferLog(f"{record.levelname.lower()}: {record.getMessage()}"))


def disk_line(event: ProgressEvent) -> str:
    if event.phase in ("capture", "restore"):
        eta = format_eta(event.eta) if event.eta is not None else "--:--"
        return f"{human(event.done)}/{human(event.total)} {human(event.rate)}/s ETA {eta}"
    return {"plan": "mapping the blocks in use",
            "seal": "sealing: the server checks the whole image",
            "done": "done: sealed on the server"}.get(event.phase, event.phase)


class TransferScreen(Step):
    TITLE = "Transfer"
    HELP = ("Each disk has a bar with its rate and the time left; the last bar is the whole "
            "transfer. The log shows what the agent does. If the network or the server goes "
            "away, the agent retries for ten minutes and goes on where it stopped: that is shown "
            "as 'resuming', not as a failure. Cancel (Esc) stops the transfer; the job stays on "
            "the server and a new transfer of the same disks resumes it.")
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def body(self) -> ComposeResult:
        with Vertical(id="bars"):
            for did in self.disk_ids():
                yield self.disk_row(did)
            with Horizontal(classes="disk", id="overall-row"):
                yield Label("overall", classes="disk-name")
                yield ProgressBar(total=100, show_eta=False, id="overall")
                yield Static("", id="overall-line", classes="disk-line")
        yield RichLog(id="log", wrap=True, max_lines=2000, min_width=20)
        yield Static("Starting...", id="status")
        yield buttons(("cancel", "Cancel", "error"))

    def disk_ids(self) -> list[str]:
        """The disks known before the work starts; others get their bar at their first report."""
        return [path.rsplit("/", 1)[-1] for path in self.app.session.settings.disks or []]

    @staticmethod
    def disk_row(did: str) -> Horizontal:
        return Horizontal(Label(did, classes="disk-name"),
                          ProgressBar(total=None, show_eta=False, id=f"bar-{did}"),
                          Static("waiting", id=f"line-{did}", classes="disk-line"),
                          classes="disk", id=f"disk-{did}")

    def on_mount(self) -> None:
        self.cancelled = False
        self.job: str | None = None      # known from the log as soon as the server gives it
        self.fractions: dict[str, float] = {}
        self.done: dict[str, int] = {}        # bytes each disk had sent at its last report
        self.cut: dict[str, int] | None = None   # the same, when the server went away
        self.back = ""                           # said once the server answers again
        self.query_one("#cancel", Button).focus()
        self.run_capture()

    def on_unmount(self) -> None:
        self.cancelled = True    # the app is going away: stop the capture at its next report

    @work(thread=True, exclusive=True)
    def run_capture(self) -> None:
        def report(event: ProgressEvent) -> None:
            if self.cancelled:
                raise Cancelled()
            self.post_message(TransferProgress(event))

        handler = _LogLines(self)
        agent_log = logging.getLogger("agent")
        agent_log.addHandler(handler)
        try:
            job, lines = self.work(Progress([report], interval=0.5))
        except Cancelled:
            self.post_message(TransferEnded(self.job, ["The transfer was cancelled."], False, True))
        except (CaptureError, RestoreError, ServerError) as e:
            stopped = isinstance(e.__cause__, Cancelled)
            self.post_message(TransferEnded(self.job, ["The transfer was cancelled." if stopped else
                                                       f"The transfer stopped: {e}"], False, stopped))
        else:
            self.post_message(TransferEnded(job, lines, True, False))
        finally:
            agent_log.removeHandler(handler)

    def work(self, progress: Progress) -> tuple[str | None, list[str]]:
        """The core action, in the worker thread: (job, what happened)."""
        session = self.app.session
        result = self.app.edges.capture(session.settings, progress, session.machine,
                                        session.keep_macs)
        return result.job, capture_summary(result)

    async def on_transfer_progress(self, message: TransferProgress) -> None:
        event = message.event
        if not self.query(f"#bar-{event.disk}"):
            await self.query_one("#bars").mount(self.disk_row(event.disk),
                                          before=self.query_one("#overall-row"))
        self.query_one(f"#bar-{event.disk}", ProgressBar).update(total=max(event.total, 1),
                                                                 progress=event.done)
        copying = event.phase in ("capture", "restore")
        if self.cut is not None and copying and event.done > self.cut.get(event.disk, -1):
            self.cut = None
            self.query_one("#log", RichLog).write("info: connected again; the transfer goes on "
                                                   "where it stopped")
            self.back = "Connected again: the transfer goes on where it stopped. "
        self.done[event.disk] = event.done
        line = disk_line(event)
        if self.cut is not None and copying:
            # The rate and time left of before the cut would be a lie: say what is happening.
            line = f"{human(event.done)}/{human(event.total)} waiting for the server"
        self.query_one(f"#line-{event.disk}", Static).update(line)
        self.fractions[event.disk] = 1.0 if event.phase == "done" else (
            event.done / event.total if event.total else 0.0)
        disks = max(len(self.disk_ids()), len(self.fractions), 1)
        overall = 100 * sum(self.fractions.values()) / disks
        self.query_one("#overall", ProgressBar).update(progress=overall)
        self.query_one("#overall-line", Static).update(
            f"{sum(1 for f in self.fractions.values() if f >= 1.0)} of {disks} disks done")
        if copying and self.cut is None:
            self.say(f"{self.back}Copying {event.disk}...")

    def on_transfer_log(self, message: TransferLog) -> None:
        line = message.line
        job = JOB_LINE.match(line)
        if job:
            self.job = job[1]
        if "retrying" in line:
            line += " (the transfer resumes where it stopped)"
            if self.cut is None:
                self.cut = dict(self.done)
            self.say("The server cannot be reached right now: retrying, then resuming.")
        elif "(resumed)" in line:
            self.say("Resuming: what the server already holds is not sent again.")
        self.query_one("#log", RichLog).write(line)

    def on_transfer_ended(self, message: TransferEnded) -> None:
        self.ended(message)

    def ended(self, message: TransferEnded) -> None:
        """What follows the work (Textual calls message handlers of every class in the MRO, so
        subclasses change this, not the handler)."""
        session = self.app.session
        session.outcome = message.lines
        session.job = message.job or session.job
        session.finished = message.ok
        from agent.tui.done import DoneScreen
        self.app.switch_screen(DoneScreen(message.ok, message.cancelled, type(self)))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.cancelled = True
                self.say("Stopping at the next chunk...")

        self.app.push_screen(ConfirmScreen("Stop the transfer? The job stays on the server; "
                                           "starting the transfer again resumes it.",
                                           yes="Stop it", no="Go on"), answer)
