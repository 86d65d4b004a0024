"""Progress of a capture or restore: bytes done and total per disk, rate, ETA.

Workers report bytes as they go; subscribers (the TUI, plain console lines, the server's event
log) receive a ProgressEvent at most every `interval` seconds per disk, and always at a disk's
start and end. Subscribers run in the reporting thread, so they must be quick.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass
from typing import Callable, TextIO

from xenp2v.units import human_bytes as human  # agent.transfer.progress.human: the screens' name

RATE_WINDOW = 10.0   # seconds of history the rate is measured over


def terminal_logging() -> None:
    """Warnings and errors onto the terminal (stderr) of a command run by hand; nothing less.

    A capture or restore raises the agent's logger to INFO to keep its story for the server's
    event log; on the terminal those records repeated what the progress lines already say (a
    capture printed "sealed" three times), so the terminal's handler itself stops below WARNING.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


@dataclass(frozen=True)
class ProgressEvent:
    disk: str
    phase: str           # "capture", "restore", "seal", "done", "failed"
    done: int            # bytes of this disk processed
    total: int           # bytes of this disk to process
    sent: int            # bytes that crossed the network for this disk, either way
    rate: float          # bytes per second, recent
    eta: float | None    # seconds left, None when unknown
    message: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if self.phase == "plan":
            return f"{self.disk}: plan: {self.message}" if self.message else f"{self.disk}: plan"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (f"{self.disk}: {self.phase} {human(self.done)} of {human(self.total)} "
                f"({pct:.0f}%), {human(self.rate)}/s, {human(self.sent)} on the wire")
        if self.eta is not None and self.phase in ("capture", "restore"):
            text += f", {format_eta(self.eta)} left"
        if self.message:
            text += f": {self.message}"
        return text


Subscriber = Callable[[ProgressEvent], None]


class _Disk:
    def __init__(self, total: int, phase: str):
        self.total = total
        self.phase = phase
        self.done = 0
        self.sent = 0
        self.samples: deque[tuple[float, int]] = deque()
        self.last_emit = 0.0


class Progress:
    def __init__(self, subscribers: list[Subscriber] | None = None, interval: float = 1.0):
        self.subscribers: list[Subscriber] = list(subscribers or [])
        self.interval = interval
        self._disks: dict[str, _Disk] = {}
        self._lock = threading.Lock()
        self.last_change = time.monotonic()   # when a byte was last done or a phase changed

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.append(subscriber)

    def start(self, disk: str, total: int, phase: str, message: str = "") -> None:
        with self._lock:
            self._disks[disk] = _Disk(total, phase)
            self.last_change = time.monotonic()
            event = self._event(disk, time.monotonic(), message)
        self._emit(event)

    def advance(self, disk: str, done: int = 0, sent: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            d = self._disks[disk]
            d.done += done
            d.sent += sent
            if done or sent:
                self.last_change = now
            if now - d.last_emit < self.interval:
                return
            event = self._event(disk, now)
        self._emit(event)

    def phase(self, disk: str, phase: str, message: str = "") -> None:
        with self._lock:
            self._disks[disk].phase = phase
            self.last_change = time.monotonic()
            event = self._event(disk, time.monotonic(), message)
        self._emit(event)

    def where(self) -> str:
        """Each unfinished disk as 'vda restore 1.2 GiB of 3.0 GiB (40%)', joined by '; '."""
        with self._lock:
            return "; ".join(
                f"{name} {d.phase} {human(d.done)} of {human(d.total)} "
                f"({100.0 * d.done / d.total if d.total else 100.0:.0f}%)"
                for name, d in self._disks.items() if d.phase not in ("done", "failed"))

    def _event(self, disk: str, now: float, message: str = "") -> ProgressEvent:
        d = self._disks[disk]
        d.last_emit = now
        d.samples.append((now, d.done))
        while len(d.samples) > 2 and now - d.samples[1][0] > RATE_WINDOW:
            d.samples.popleft()
        t0, done0 = d.samples[0]
        rate = (d.done - done0) / (now - t0) if now > t0 else 0.0
        eta = (d.total - d.done) / rate if rate > 0 else None
        return ProgressEvent(disk, d.phase, d.done, d.total, d.sent, rate, eta, message)

    def _emit(self, event: ProgressEvent) -> None:
        for subscriber in self.subscribers:
            subscriber(event)


class PlainLines:
    """Unattended mode: one plain line per event, for a console or a log file."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def __call__(self, event: ProgressEvent) -> None:
        print(event.line(), file=self.stream, flush=True)


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Watchdog:
    """Says so when a transfer stops moving: after `after` seconds without a byte done or a phase
    change, `say` gets a sentence naming the disks and how far they are, then every thread's
    stack (what the agent waits on: a report can name it), and again every `after` seconds
    while it lasts. Used as a context manager around a capture or a restore.

    It only reports: the transfer's own timeouts (the client's retry_for) decide when to give up.
    """

    def __init__(self, progress: Progress, say: Callable[[str], None], after: float = 300.0,
                 poll: float = 10.0):
        self.progress, self.say, self.after, self.poll = progress, say, after, poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self.reports = 0

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        reported = 0.0
        while not self._stop.wait(self.poll):
            now = time.monotonic()
            since = max(self.progress.last_change, reported)
            if now - since < self.after:
                continue
            reported = now
            self.reports += 1
            still = now - self.progress.last_change
            where = self.progress.where() or "no disk under way"
            self.say(f"No progress for {format_eta(still)} ({where}): still waiting. What each "
                     "thread is doing follows, for a report if this does not move again.")
            for line in _stacks():
                self.say(line)


def _stacks() -> list[str]:
    """Every thread's stack but the watchdog's own, innermost call last, as lines."""
    names = {t.ident: t.name for t in threading.enumerate()}
    lines = []
    for ident, frame in sys._current_frames().items():
        if names.get(ident) == "watchdog":
            continue
        lines.append(f"  thread {names.get(ident, ident)}:")
        for entry in traceback.format_stack(frame)[-6:]:
            lines.extend("    " + part for part in entry.rstrip().splitlines())
    return lines
