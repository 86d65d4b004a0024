"""Transfer: a bar per disk with rate and ETA, overall progress, the log, cancel with confirmation.

The capture runs in a worker thread; a progress subscriber and a log handler turn what it reports
into messages. Cancel is a flag the subscriber checks: the next progress report stops the run,
and the job stays on the server to resume.
"""

from __future__ import annotations

import logging
import re
import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Label, ProgressBar, RichLog, Static

from agent.transfer.capture import CaptureError
from agent.transfer.client import ServerError
from agent.transfer.restore import RestoreError
from agent.transfer.progress import Progress, ProgressEvent, format_eta, human
from agent.tui.common import ConfirmScreen, Step, TrackBar, buttons, in_form_words
from agent.tui.messages import TransferEnded, TransferLog, TransferProgress
from agent.unattended import capture_summary
from xenp2v.units import counted

LOG = logging.getLogger(__name__)


JOB_LINE = re.compile(r"^info: job (\S+) \((new|resumed)\)")
FINAL_LINE = re.compile(r"^info: final sync of pre-copy job (\S+): version (\d+)")


class Cancelled(Exception):
    """The person stopped the transfer."""


class _LogLines(logging.Handler):
    def __init__(self, screen: "TransferScreen"):
        super().__init__(logging.INFO)
        self.screen = screen

    def emit(self, record: logging.LogRecord) -> None:
        self.screen.post_message(TransferLog(f"{record.levelname.lower()}: {record.getMessage()}"))


def disk_line(event: ProgressEvent, done: str) -> str:
    """A disk's line on the Transfer or Restore screen; `done` is what a finished disk says."""
    if event.phase in ("capture", "restore"):
        eta = format_eta(event.eta) if event.eta is not None else "--:--"
        return f"{human(event.done)}/{human(event.total)} {human(event.rate)}/s ETA {eta}"
    return {"plan": "mapping the blocks in use",
            "seal": "sealing: the server checks the whole image",
            "done": done}.get(event.phase, event.phase)


class FinalSync:
    """What a final sync (warm migration) has done and what it expects: the bytes to send,
    extrapolated from what the chunks read so far changed, and the downtime, the time since it
    started plus what is left to read at the recent rate."""

    def __init__(self, job: str, version: int):
        self.job, self.version = job, version
        self.started = time.monotonic()
        self.disks: dict[str, ProgressEvent] = {}

    def update(self, event: ProgressEvent) -> None:
        if event.phase in ("capture", "seal", "done"):
            self.disks[event.disk] = event

    def to_send(self) -> int:
        """Bytes expected on the wire in all: what was sent, scaled to all that is read."""
        done = sum(e.done for e in self.disks.values())
        sent = sum(e.sent for e in self.disks.values())
        total = sum(e.total for e in self.disks.values())
        return int(sent * total / done) if done else 0

    def left(self) -> float | None:
        """Seconds left at the current rate; None until there is one."""
        reading = [e for e in self.disks.values() if e.phase == "capture"]
        if not reading:
            return 0.0 if self.disks else None
        rate = reading[-1].rate
        rest = sum(e.total - e.done for e in self.disks.values() if e.phase == "capture")
        return rest / rate if rate > 0 else None

    def line(self) -> str:
        sent = sum(e.sent for e in self.disks.values())
        left = self.left()
        downtime = ("--:--" if left is None
                    else f"{format_eta(time.monotonic() - self.started + left)}")
        return (f"Final sync of job {self.job}: {human(sent)} sent of about "
                f"{human(max(sent, self.to_send()))} to send; expected downtime {downtime}"
                + (f" ({format_eta(left)} left)." if left is not None else "."))


class TransferScreen(Step):
    NAME = "transfer"
    TITLE = "Transfer"
    DONE = "done: sealed on the server"     # what a finished disk's line says
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
                yield TrackBar(total=100, show_eta=False, id="overall")
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
                          TrackBar(total=None, show_eta=False, id=f"bar-{did}"),
                          Static("waiting", id=f"line-{did}", classes="disk-line"),
                          classes="disk", id=f"disk-{did}")

    def on_mount(self) -> None:
        self.cancelled = False
        self.job: str | None = None      # known from the log as soon as the server gives it
        self.fractions: dict[str, float] = {}
        self.done: dict[str, int] = {}        # bytes each disk had sent at its last report
        self.last: dict[str, ProgressEvent] = {}  # each disk's last report
        self.cut: dict[str, int] | None = None   # the same, when the server went away
        self.back = ""                           # said once the server answers again
        self.final: FinalSync | None = None      # a final sync of warm migration, once known
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
            job, lines, token = self.work(Progress([report], interval=0.5))
        except Cancelled:
            self.post_message(TransferEnded(self.job, [f"The {self.NAME} was cancelled."], False,
                                            True))
        except (CaptureError, RestoreError, ServerError) as e:
            LOG.debug("Where the transfer stopped:", exc_info=True)   # p2v.debug: in the log
            stopped = isinstance(e.__cause__, Cancelled)
            said = (f"The {self.NAME} was cancelled." if stopped else
                    in_form_words(f"The {self.NAME} stopped: {e}"))
            self.post_message(TransferEnded(self.job, [said], False, stopped))
        else:
            self.post_message(TransferEnded(job, lines, True, False, token))
        finally:
            agent_log.removeHandler(handler)

    def work(self, progress: Progress) -> tuple[str | None, list[str], str | None]:
        """The core action, in the worker thread: (job, what happened, the job's own token)."""
        session = self.app.session
        result = self.app.edges.capture(session.settings, progress, session.machine,
                                        session.keep_macs)
        return result.job, capture_summary(result), result.token

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
        self.last[event.disk] = event
        line = disk_line(event, self.DONE)
        if self.cut is not None and copying:
            # The rate and time left of before the cut would be a lie: say what is happening.
            line = f"{human(event.done)}/{human(event.total)} waiting for the server"
        self.query_one(f"#line-{event.disk}", Static).update(line)
        self.fractions[event.disk] = 1.0 if event.phase == "done" else (
            event.done / event.total if event.total else 0.0)
        disks = max(len(self.disk_ids()), len(self.fractions), 1)
        overall = 100 * sum(self.fractions.values()) / disks
        self.query_one("#overall", ProgressBar).update(progress=overall)
        finished = sum(1 for f in self.fractions.values() if f >= 1.0)
        self.query_one("#overall-line", Static).update(f"{finished} of {counted(disks, 'disk')} done")
        if self.final is not None:
            self.final.update(event)
            if copying:
                line = "final sync: " + line
                self.query_one(f"#line-{event.disk}", Static).update(line)
        if copying and self.cut is None:
            self.say(f"{self.back}{self.final.line()}" if self.final is not None
                     else f"{self.back}Copying {event.disk}...")

    def on_transfer_log(self, message: TransferLog) -> None:
        line = message.line
        job = JOB_LINE.match(line)
        if job:
            self.job = job[1]
        final = FINAL_LINE.match(line)
        if final:
            self.final = FinalSync(final[1], int(final[2]))
            self.say(f"Final sync of pre-copy job {final[1]}: only what changed since the last "
                     "pass is sent.")
        if "retrying" in line:
            line += " (the transfer resumes where it stopped)"
            if self.cut is None:
                self.cut = dict(self.done)
                self.show_waiting()
            self.say("The server cannot be reached right now: retrying, then resuming.")
        elif "(resumed)" in line:
            self.say("Resuming: what the server already holds is not sent again.")
        self.query_one("#log", RichLog).write(line)

    def show_waiting(self) -> None:
        """Each disk being copied says it waits for the server: a capture blocked in its retries
        reports nothing, so the rate and time left of before the cut would stay on screen."""
        for disk, event in self.last.items():
            if event.phase in ("capture", "restore"):
                line = f"{human(event.done)}/{human(event.total)} waiting for the server"
                self.query_one(f"#line-{disk}", Static).update(
                    ("final sync: " if self.final is not None else "") + line)

    def on_transfer_ended(self, message: TransferEnded) -> None:
        self.ended(message)

    def ended(self, message: TransferEnded) -> None:
        """What follows the work (Textual calls message handlers of every class in the MRO, so
        subclasses change this, not the handler)."""
        session = self.app.session
        session.outcome = message.lines
        session.job = message.job or session.job
        session.job_token = message.token or session.job_token
        session.finished = message.ok
        self.app.go("done", message.ok, message.cancelled, again=self.NAME, replace=True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.cancelled = True
                self.say("Stopping at the next chunk...")

        self.app.push_screen(ConfirmScreen("Stop the transfer? The job stays on the server; "
                                           "starting the transfer again resumes it.",
                                           yes="Stop it", no="Go on"), answer)
