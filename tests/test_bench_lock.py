"""`make bench` refuses to start beside another bench: both would use the same network
namespace, nftables counters and CPUs, and each spoils the other's figures (a second run, with
its own --cache even, left a restore with 0 bytes counted on the wire)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_second_bench_says_one_is_running_and_leaves_its_work_alone(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept").write_text("the first bench's work")
    lock = tmp_path / "bench.lock"
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242, started 04:53:23\n")
        held.flush()
        second = subprocess.run([sys.executable, "bench/run.py", "--cache", str(tmp_path),
                                 "--links", "none", "--agents", "0"],
                                cwd=REPO, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "XENP2V_BENCH_LOCK": str(lock)})
    assert second.returncode == 2, second.stderr
    assert "Another benchmark is running on this machine (pid 4242, started 04:53:23)" \
        in second.stderr
    assert (tmp_path / "out" / "kept").read_text() == "the first bench's work"
    assert not list(tmp_path.glob("*.img"))      # no fixture was made either
