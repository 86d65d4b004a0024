"""Bandwidth limit, the compression decision, and progress events, without a server."""

from __future__ import annotations

import io
import os
import time

import pytest

from agent.link import WARMUP_CHUNKS, Compression, RateLimit
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


def feed(compression: Compression, link_rate: float, chunks: int) -> list[bool]:
    """Encode `chunks` chunks over a link of `link_rate` bytes/s; which ones were compressed."""
    out = []
    for _ in range(chunks):
        body, compressed = compression.encode(bytearray(TEXT), len(TEXT))
        compression.sent(len(body), len(body) / link_rate)
        out.append(compressed)
    return out


def test_auto_compresses_on_a_slow_link_and_not_on_a_fast_one():
    slow = feed(Compression("auto", 4), 10 * MiB, 40)
    assert all(slow[WARMUP_CHUNKS:])
    fast = feed(Compression("auto", 4), 1e12, 40)
    assert not any(fast[WARMUP_CHUNKS:])


def test_fixed_modes_and_zero_filled_chunks():
    assert all(feed(Compression("zstd", 1), 1e12, 5))
    assert not any(feed(Compression("off", 1), 1, 5))
    sparse = bytearray(4 * MiB)
    sparse[:4096] = os.urandom(4096)
    fast = Compression("auto", 4)
    feed(fast, 1e12, 20)
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
