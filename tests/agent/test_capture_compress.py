"""`--compress auto` on a real capture over a slow link: what it sends, not a model of it."""

from __future__ import annotations

import os
import random
import uuid

from agent.transfer import capture
from cutproxy import CutProxy
from sourcedisks import MiB
from test_capture_restore import settings_for


def poorly_then_well(loopdev, poorly: int, well: int) -> str:
    """A disk with no partition table (read whole): `poorly` bytes of random data that zstd
    cannot shrink, then `well` bytes of words that zstd -1 makes about a third of."""
    dev = loopdev(poorly + well, "poorly-then-well")
    pick = random.Random(11)
    words = [bytes(pick.choices(b"abcdefghijklmnopqrstuvwxyz", k=pick.randint(2, 9)))
             for _ in range(1000)]
    blocks = [b" ".join(pick.choices(words, k=MiB // 5))[:MiB] for _ in range(16)]
    with open(dev, "r+b") as f:
        f.write(os.urandom(poorly))
        for _ in range(well // MiB):    # zstd -1 looks back less than 1 MiB: no block repeats
            f.write(pick.choice(blocks))
    return dev


def test_auto_compresses_what_follows_a_first_stretch_that_compresses_poorly(loopdev, p2v_server):
    # A 16 MiB/s link up to the server. auto's first trial falls in the random data, where
    # zstd gains nothing, and rightly keeps plain; its next trial was due after 30 s, longer
    # than the whole capture (28 s plain), so the words went plain too, three times the bytes.
    dev = poorly_then_well(loopdev, 80 * MiB, 368 * MiB)
    link = CutProxy(p2v_server.port, up_rate=16 * MiB)
    try:
        settings = settings_for(p2v_server, disks=[dev], streams=4)
        settings.server = link.url()
        result = capture.run(settings, identity={"system_uuid": str(uuid.uuid4())},
                             chunk_size=1 * MiB).disks[0]
    finally:
        link.close()
    assert result.planned == 448 * MiB
    # Plain throughout: 448 MiB. The random data, the first trial and its hold plain (about
    # 12 s: 190 MiB), then zstd's third of the rest (about 280 MiB in all).
    assert result.sent < 0.75 * 448 * MiB, result
