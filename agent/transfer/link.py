"""The link to the server: a bandwidth limit, and whether zstd pays for it, either way.

Compression pays when the link, not the CPU, is the bottleneck. Which one it is cannot be told
from one side: the time a PUT takes includes the server's work (decoding, hashing, the write
and its fdatasync), so a rule built on "bytes per second of a send" saw a slow link wherever the
server or the CPU was slow, and compressed on a 10 Gbit/s link where that halved the rate.
`auto` therefore measures what matters, disk bytes acknowledged per second, both ways: after a
first window of warming up (not measured) a trial runs windows of zstd, plain, plain, zstd, and
keeps zstd if it was clearly faster over its two windows. A trial sees seconds of the disk,
and a disk's data compresses unevenly: the bench's first trial fell in a stretch that
compresses 2.5x, where zstd (CPU-bound on a loaded machine) tied with plain, and the plain it
chose held for the whole capture, the next trial being due after 30 s. So the trial runs again
soon after a choice, twice as late after each trial that keeps it, and every RETRY_SECONDS at
least (the data, the link and the machine's load change too). A
restore decides the same way, on its receiving side: it asks the server for zstd bodies or
plain ones (`ask`), and counts the disk bytes of the chunks it wrote per second.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import zstandard

log = logging.getLogger(__name__)

ZSTD_LEVEL = 1          # fast: above ~1 GB/s per core, ratios close to level 3 on disk data
WARMUP_SECONDS = 1.0    # the first window (not measured) lasts at least this long
TRIAL_SECONDS = 0.5     # a trial window lasts at least this long ...
TRIAL_CHUNKS = 1        # ... and until this many chunks per stream came back in it
RETRY_SECONDS = 30.0    # how often the way not taken is tried again, at least ...
FIRST_HOLD = 2.0        # ... and a new choice holds only this many times its trial's time
MARGIN = 1.1            # zstd is kept only if it moved this much more than plain


class RateLimit:
    """A token bucket over all streams: at most `rate` bytes per second, bursts of one second."""

    def __init__(self, rate: int | None):
        self.rate = rate
        self._lock = threading.Lock()
        self._allowance = float(rate or 0)
        self._last = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
            self._last = now
            self._allowance -= n
            wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class Compression:
    """Decides chunk by chunk whether to zstd-compress; thread-safe.

    Each stream takes a chunk's way (``encode`` or ``ask``), moves the chunk, then calls
    ``sent`` once it is done (on the same thread; a second take before it abandons the first).
    Under ``auto`` a trial window gives its way's rate, all streams together: the disk bytes of
    that way's chunks finished in the window over the window's time, measured from one finished
    chunk to the last. A window opens only once no chunk of the other way is moving any more:
    when a chunk takes seconds (a slow guest), the chunks still draining from the way before
    would otherwise count against the way on trial, and made the second way tried look slower
    than it is. ``clock`` (seconds) is for tests.
    """

    def __init__(self, mode: str, streams: int, clock: Callable[[], float] = time.monotonic):
        if mode not in ("auto", "zstd", "off"):
            raise ValueError(f"compress must be auto, zstd or off, not {mode!r}")
        self.mode = mode
        self.streams = max(1, streams)
        self._clock = clock
        self._lock = threading.Lock()
        self._local = threading.local()
        self.compressing = mode != "off"     # auto tries zstd first
        self.rates: dict[bool, float] = {}   # compressing? -> disk bytes/s of its last trial
        self._plan: list[bool] = []          # the trial windows still to run, in order
        self._tried = {True: [0, 0.0], False: [0, 0.0]}   # disk bytes, seconds in this trial
        self._moving = {True: 0, False: 0}   # chunks taken each way and not done yet
        self._window_start: float | None = None   # the first chunk done in the window
        self._window_bytes = 0
        self._window_chunks = 0
        self._trial_start = 0.0              # when the trials that led to the last choice began
        self._decided_at: float | None = None   # when auto last chose; None while it tries
        self._retry_after = RETRY_SECONDS
        self._chosen: bool | None = None     # the way the last trial chose
        self._warming = mode == "auto"       # the first window is not measured (see sent)

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        return c

    def _take(self, way: bool | None) -> None:
        """This thread's next chunk goes `way` (None: it counts in no window)."""
        with self._lock:
            before = getattr(self._local, "way", None)
            if before is not None:              # taken and never done (its send failed)
                self._moving[before] -= 1
            if way is not None:
                self._moving[way] += 1
        self._local.way = way

    def encode(self, data: bytearray, read: int | None = None) -> tuple[bytes | bytearray, bool]:
        """(body, compressed?) for one chunk: compressed only when it pays and shrinks it.

        `read` is how many of its bytes came from the disk; the rest were zero-filled. A chunk
        mostly zero-filled is always compressed under `auto`: zstd passes zeros at many GB/s, and
        a few used blocks then cost what they weigh, not a whole chunk. Such chunks count in no
        trial window.
        """
        if self.mode == "off":
            return data, False
        if self.mode == "auto" and read is not None and read < len(data) // 2:
            self._take(None)
            use = True
        elif self.mode == "auto":
            use = self.compressing
            self._take(use)
        else:
            use = True
        if not use:
            return data, False
        body = self._compressor().compress(data)
        return (body, True) if len(body) < len(data) else (data, False)

    def ask(self) -> bool:
        """Whether to ask the server for the next chunk in zstd (a restore's side of `auto`).

        Pair each call with ``sent`` (on the same thread) once the chunk is in and written.
        """
        if self.mode != "auto":
            return self.mode == "zstd"
        way = self.compressing
        self._take(way)
        return way

    def sent(self, n: int, disk: int | None = None) -> None:
        """The chunk this thread last took is done: `n` bytes on the wire, carrying `disk`
        bytes of the disk (default: `n`)."""
        way = getattr(self._local, "way", None)
        self._local.way = None
        if self.mode != "auto" or way is None:
            return
        with self._lock:
            self._moving[way] -= 1
            if way != self.compressing or self._moving[not way]:
                return   # the way before, or this way's while the way before still drains
            now = self._clock()
            if self._window_start is None:
                self._window_start = now   # the window's time runs from one chunk done ...
                return
            self._window_bytes += n if disk is None else disk   # ... to the last
            self._window_chunks += 1
            elapsed = now - self._window_start
            if self._warming:
                if elapsed < WARMUP_SECONDS or self._window_chunks < TRIAL_CHUNKS * self.streams:
                    return
                # The first window holds the start (connections, the first reads, the
                # server's first writes): measured, it made zstd look slow on a 1 Gbit/s link.
                self._warming = False
                self._try(way, now)
                return
            if elapsed < TRIAL_SECONDS or self._window_chunks < TRIAL_CHUNKS * self.streams:
                return
            if self._decided_at is None:            # trying
                self._tried[way][0] += self._window_bytes
                self._tried[way][1] += elapsed
                if self._plan:
                    self._switch(self._plan.pop(0))
                    return
                self.rates = {w: b / t for w, (b, t) in self._tried.items()}
                self._decided_at = now
                self._hold(self._choice(self._chosen), now - self._trial_start)
                self._switch(self._chosen)
                log.info("compress auto: zstd %.0f MB/s, plain %.0f MB/s of disk bytes in the "
                         "trial; %s for %.0f s", self.rates[True] / 1e6, self.rates[False] / 1e6,
                         "zstd" if self.compressing else "plain", self._retry_after)
            elif now - self._decided_at >= self._retry_after:
                self._try(way, now)                 # try the other way again, then choose
            else:
                self._switch(way)                   # a new window of the same way

    def _try(self, way: bool, now: float) -> None:
        """A trial: windows of `way`, the other way twice, `way` again, each way's rate then
        taken over its two windows. In that order a load or data that changes steadily during
        the trial weighs on both ways alike, and one noisy window counts half."""
        self._decided_at = None
        self._trial_start = now
        self._tried = {True: [0, 0.0], False: [0, 0.0]}
        self._plan = [not way, not way, way]
        self._switch(way)

    def _hold(self, choice: bool, trial: float) -> None:
        """How long `choice` holds before the next trial: FIRST_HOLD times the trial's time
        when the way is new, twice as long as before when the trial confirmed it, up to
        RETRY_SECONDS or ten times the trial's time (trials cost time the worse way: in the long
        run they take at most a tenth of it)."""
        longest = max(RETRY_SECONDS, 10 * trial)
        if choice == self._chosen:
            self._retry_after = min(longest, 2 * self._retry_after)
        else:
            self._retry_after = min(longest, FIRST_HOLD * trial)
        self._chosen = choice

    def _choice(self, chosen: bool | None) -> bool:
        """Start compressing only if that moves clearly more disk bytes per second: by MARGIN,
        as two trials' rates differ that much by chance on a busy machine, and zstd costs CPU
        on both sides. Once `chosen`, zstd is left only for a way that moves more: a stretch of
        data that compresses poorly makes the two ways tie, and plain, chosen on a tie, held on
        into the data that compresses well after it."""
        zstd, plain = self.rates.get(True, 0.0), self.rates.get(False, 0.0)
        return zstd >= plain if chosen else zstd > plain * MARGIN

    def _switch(self, way: bool) -> None:
        self.compressing = way
        self._window_start = None
        self._window_bytes = self._window_chunks = 0
