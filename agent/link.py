"""The link to the server: a bandwidth limit, and whether zstd pays for it.

Compression pays when the link, not the CPU, is the bottleneck: the compressed path moves
`link_rate / ratio` bytes of disk per second but costs `compress_rate` per core. `auto` compresses
the first chunks to learn the ratio and the CPU's speed, measures what the link carries, then
keeps comparing the two (re-sampling one chunk in SAMPLE_EVERY so the ratio stays current).
"""

from __future__ import annotations

import os
import threading
import time

import zstandard

ZSTD_LEVEL = 1          # fast: above ~1 GB/s per core, ratios close to level 3 on disk data
WARMUP_CHUNKS = 8
SAMPLE_EVERY = 16


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
    """Decides chunk by chunk whether to zstd-compress; thread-safe."""

    def __init__(self, mode: str, streams: int):
        if mode not in ("auto", "zstd", "off"):
            raise ValueError(f"compress must be auto, zstd or off, not {mode!r}")
        self.mode = mode
        self.streams = max(1, streams)
        self.cores = max(1, min(streams, os.cpu_count() or 1))
        self._lock = threading.Lock()
        self._local = threading.local()
        self._seen = 0
        self._in = self._out = 0            # bytes in and out of sampled compressions
        self._cpu = 0.0                     # seconds spent compressing them
        self._wire = 0                      # bytes put on the wire …
        self._wire_time = 0.0               # … in this many seconds of sending, all streams
        self.compressing = mode == "zstd"

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        return c

    def encode(self, data: bytearray, read: int | None = None) -> tuple[bytes | bytearray, bool]:
        """(body, compressed?) for one chunk: compressed only when it pays and shrinks it.

        `read` is how many of its bytes came from the disk; the rest were zero-filled. A chunk
        mostly zero-filled is always compressed under `auto`: zstd passes zeros at many GB/s, and
        a few used blocks then cost what they weigh, not a whole chunk.
        """
        if self.mode == "off":
            return data, False
        if self.mode == "auto" and read is not None and read < len(data) // 2:
            body = self._compressor().compress(data)
            return (body, True) if len(body) < len(data) else (data, False)
        with self._lock:
            self._seen += 1
            sample = self.mode == "auto" and (self._seen <= WARMUP_CHUNKS
                                              or self._seen % SAMPLE_EVERY == 0)
            use = self.compressing
        if not (use or sample):
            return data, False
        start = time.thread_time()
        body = self._compressor().compress(data)
        spent = time.thread_time() - start
        with self._lock:
            self._in += len(data)
            self._out += len(body)
            self._cpu += spent
            if self.mode == "auto":
                self.compressing = self._pays()
        if len(body) < len(data) and (use or self.compressing):
            return body, True
        return data, False

    def sent(self, n: int, seconds: float) -> None:
        """Record one send of `n` bytes that took `seconds`, to measure what the link carries.

        Timing the sends themselves (not the wall clock) measures the link even when the disk
        or the CPU is what holds the transfer back.
        """
        with self._lock:
            self._wire += n
            self._wire_time += seconds

    def _pays(self) -> bool:
        if not self._in or not self._cpu or not self._wire_time:
            return True  # nothing measured yet: try it, the warm-up decides
        link_rate = self._wire / self._wire_time * self.streams
        ratio = self._out / self._in
        compress_rate = self._in / self._cpu * self.cores
        # Disk bytes per second each way: raw is bound by the link; zstd by the link's
        # bytes stretched by the ratio, or by the CPU, whichever is slower.
        return min(compress_rate, link_rate / max(ratio, 1e-3)) > link_rate * 1.1
