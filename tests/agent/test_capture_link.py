"""Bandwidth limit, the compression decision, and progress events, without a server."""

from __future__ import annotations

import io
import os
import time

import pytest

from agent.link import RETRY_SECONDS, Compression, RateLimit
from agent.progress import PlainLines, Progress

MiB = 1024 * 1024
TEXT = (b"compressible text, as most of a system disk is\n" * (4 * MiB // 48 + 1))[:4 * MiB]


def test_rate_limit_holds_the_rate_over_all_streams():
    limit = RateLimit(20 * MiB)
    start = time.monotonic()
    for _ in range(15):          # 60 MiB: one second of burst, then 2 s at 20 MiB/s
        limit.take(4 * MiB)
    assert 1.7 < time.monotonic() - start < 4
    unlimited = RateLimit(None)
    start = time.monotonic()
    for _ in range(100):
        unlimited.take(4 * MiB)
    assert time.monotonic() - start < 0.1


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(compression: Compression, chunks: int, raw: float = 0.0, zstd: float = 0.0,
         clock: Clock | None = None, put: float = 0.03) -> list[bool]:
    """Encode `chunks` chunks through a pipeline that moves one chunk every `raw` seconds sent
    as it is, every `zstd` seconds compressed (on `clock`); each PUT is answered after `put`
    seconds whatever it carried, as when the server's fdatasync, not the link, sets its time.
    Which chunks were compressed."""
    out = []
    data = TEXT[:256 * 1024]      # the clock says what a chunk costs; a small one is quick
    for _ in range(chunks):
        body, compressed = compression.encode(bytearray(data), len(data))
        if clock:
            clock.now += zstd if compressed else raw
        compression.sent(len(body), put, len(data))
        out.append(compressed)
    return out


def test_auto_keeps_the_way_that_moves_more_disk_bytes_per_second():
    # A 1 Gbit/s-like link: 4 MiB raw take 35 ms of link, compressed 5 ms of CPU.
    clock = Clock()
    slow = feed(Compression("auto", 4, clock), 700, raw=0.035, zstd=0.005, clock=clock)
    assert all(slow[-250:])
    # A fast link where compressing is what holds the capture back (CPU-bound: 20 ms a chunk
    # against 4 ms), though each PUT takes as long either way: the old rule timed the PUTs,
    # saw a slow link, and compressed.
    clock = Clock()
    fast = feed(Compression("auto", 4, clock), 600, raw=0.004, zstd=0.02, clock=clock)
    assert not any(fast[-300:])
    assert sum(fast) < 120          # the trial of zstd, not the whole capture


def test_auto_tries_the_other_way_again_when_things_change():
    clock = Clock()
    comp = Compression("auto", 4, clock)
    assert not any(feed(comp, 400, raw=0.004, zstd=0.02, clock=clock)[-200:])
    # The link slows down (another capture shares it): within RETRY_SECONDS plus two trial
    # windows, auto compresses.
    after = feed(comp, int((RETRY_SECONDS + 4) / 0.004), raw=0.2, zstd=0.02, clock=clock)
    assert all(after[-20:])


def test_fixed_modes_and_zero_filled_chunks():
    assert all(feed(Compression("zstd", 1), 5))
    assert not any(feed(Compression("off", 1), 5))
    sparse = bytearray(4 * MiB)
    sparse[:4096] = os.urandom(4096)
    clock = Clock()
    fast = Compression("auto", 4, clock)
    assert not any(feed(fast, 400, raw=0.004, zstd=0.02, clock=clock)[-100:])
    body, compressed = fast.encode(sparse, 4096)    # mostly zero-filled: always worth it
    assert compressed and len(body) < 16 * 1024
    random_chunk = bytearray(os.urandom(4 * MiB))   # never sent larger than it is
    assert Compression("zstd", 1).encode(random_chunk, len(random_chunk)) == (random_chunk, False)
    with pytest.raises(ValueError):
        Compression("fast", 1)


def test_progress_events_and_plain_lines():
    events = []
    stream = io.StringIO()
    progress = Progress([events.append, PlainLines(stream)], interval=0.0)
    progress.start("sda", 100 * MiB, "capture")
    for _ in range(10):
        time.sleep(0.01)
        progress.advance("sda", done=5 * MiB, sent=2 * MiB)
    progress.phase("sda", "done", "sealed")
    assert [e.phase for e in (events[0], events[-1])] == ["capture", "done"]
    middle = events[5]
    assert middle.done == 25 * MiB and middle.sent == 10 * MiB and middle.rate > 0
    assert middle.eta is not None and middle.eta > 0
    lines = stream.getvalue().splitlines()
    assert lines[5].startswith("sda: capture 25.0 MiB of 100.0 MiB (25%),") and "left" in lines[5]
    assert lines[-1].endswith(": sealed")
