"""The link to the server: a bandwidth limit, and whether zstd pays for it.

Compression pays when the link, not the CPU, is the bottleneck. Which one it is cannot be told
from one side: the time a PUT takes includes the server's work (decoding, hashing, the write
and its fdatasync), so a rule built on "bytes per second of a send" saw a slow link wherever the
server or the CPU was slow, and compressed on a 10 Gbit/s link where that halved the rate.
`auto` therefore measures what matters, disk bytes acknowledged per second, both ways: it tries
zstd for a trial window, then no compression for one (after a first window of warming up, not
measured), keeps the faster, and tries the other way again every RETRY_SECONDS (the data, the
link and the machine's load change during a capture).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import zstandard

ZSTD_LEVEL = 1          # fast: above ~1 GB/s per core, ratios close to level 3 on disk data
TRIAL_SECONDS = 1.0     # a trial window lasts at least this long ...
TRIAL_CHUNKS = 2        # ... and until this many chunks per stream came back in it
RETRY_SECONDS = 30.0    # how often the way not taken is tried again


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

    Each stream calls ``encode`` for a chunk, sends the body, then ``sent`` once the server
    acknowledged it (on the same thread). Under ``auto``, the chunks encoded one way in a trial
    window give that way's rate: their disk bytes over the window's time, all streams together.
    ``clock`` (seconds) is for tests.
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
        self.rates: dict[bool, float] = {}   # compressing? -> disk bytes/s of its last window
        self._window_start: float | None = None
        self._window_bytes = 0
        self._window_chunks = 0
        self._decided_at: float | None = None   # when auto last chose; None while it tries
        self._warming = mode == "auto"       # the first window is not measured (see sent)

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        return c

    def encode(self, data: bytearray, read: int | None = None) -> tuple[bytes | bytearray, bool]:
        """(body, compressed?) for one chunk: compressed only when it pays and shrinks it.

        `read` is how many of its bytes came from the disk; the rest were zero-filled. A chunk
        mostly zero-filled is always compressed under `auto`: zstd passes zeros at many GB/s, and
        a few used blocks then cost what they weigh, not a whole chunk. Such chunks count in no
        trial window.
        """
        self._local.way = None
        if self.mode == "off":
            return data, False
        if self.mode == "auto" and read is not None and read < len(data) // 2:
            use = True
        else:
            with self._lock:
                use = self.compressing
                if self.mode == "auto":
                    if self._window_start is None:
                        self._window_start = self._clock()
                    self._local.way = use
        if not use:
            return data, False
        body = self._compressor().compress(data)
        return (body, True) if len(body) < len(data) else (data, False)

    def sent(self, n: int, seconds: float, disk: int | None = None) -> None:
        """The server acknowledged the body this thread last encoded: `n` bytes on the wire in
        `seconds`, carrying `disk` bytes of the disk (default: `n`)."""
        way = getattr(self._local, "way", None)
        self._local.way = None
        if self.mode != "auto" or way is None:
            return
        with self._lock:
            if way != self.compressing or self._window_start is None:
                return   # encoded before the last switch: not this window's
            self._window_bytes += n if disk is None else disk
            self._window_chunks += 1
            now = self._clock()
            elapsed = now - self._window_start
            if elapsed < TRIAL_SECONDS or self._window_chunks < TRIAL_CHUNKS * self.streams:
                return
            if self._warming:
                # The first window holds the start (connections, the first reads, the
                # server's first writes): measured, it made zstd look slow on a 1 Gbit/s link.
                self._warming = False
                self._switch(way, now)
                return
            self.rates[way] = self._window_bytes / elapsed
            if self._decided_at is None:            # trying
                if (not way) not in self.rates:
                    self._switch(not way, now)      # the other way's trial next
                else:                               # both measured, one window each: choose
                    self._decided_at = now
                    self._switch(self._choice(), now)
            elif now - self._decided_at >= RETRY_SECONDS:
                self._decided_at = None             # try the other way again, then choose
                self.rates.pop(not way, None)
                self._switch(not way, now)
            else:
                self._switch(way, now)              # a new window of the same way

    def _choice(self) -> bool:
        """Compress only if that moved more disk bytes per second (ties: the cheaper, off)."""
        return self.rates.get(True, 0.0) > self.rates.get(False, 0.0)

    def _switch(self, way: bool, now: float) -> None:
        self.compressing = way
        self._window_start = now
        self._window_bytes = self._window_chunks = 0
