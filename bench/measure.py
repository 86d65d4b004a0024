"""What every contender is measured with, the same way: bytes on the wire, peak memory, cold cache.

- Bytes on the wire: nftables counters on the loopback interface for the contender's TCP port,
  both directions, whole IP packets (headers included; the same for all).
- Peak memory: the resident set of each side's process tree (the process and its children),
  sampled every 50 ms with psutil.
- Page cache: the source and the output are dropped from the page cache before every run
  (BLKFLSBUF on block devices, POSIX_FADV_DONTNEED on files), so every run reads cold.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import threading
import time

import psutil

_BLKFLSBUF = 0x1261  # _IO(0x12, 97)
# One table per bench process: two benches at once (a shared machine) must not delete each other's.
TABLE = f"xenp2v_bench_{os.getpid()}"


class WireCounter:
    """Counts the bytes of one TCP port on lo, both ways, from `start()` to `bytes()`."""

    def __init__(self):
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
        _nft("add", "table", "inet", TABLE)
        _nft("add", "chain", "inet", TABLE, "out",
             "{ type filter hook output priority 0; policy accept; }")

    def start(self, port: int) -> None:
        _nft("flush", "chain", "inet", TABLE, "out")
        for direction in ("dport", "sport"):
            _nft("add", "rule", "inet", TABLE, "out", "oif", "lo", "tcp", direction, str(port),
                 "counter")

    def bytes(self) -> int:
        return counted_bytes(_nft("-j", "list", "chain", "inet", TABLE, "out"))

    def close(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)


def counted_bytes(listing: str) -> int:
    """The bytes all counters in `listing` (the JSON of `nft -j list chain ...`) have counted."""
    total = 0
    for item in json.loads(listing)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                total += expr["counter"]["bytes"]
    return total


def _nft(*args: str) -> str:
    proc = subprocess.run(["nft", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


class PeakRSS:
    """Samples the resident memory of named process trees until stopped; keeps each one's peak."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.roots: dict[str, list[int]] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._lock = threading.Lock()

    def watch(self, side: str, pid: int) -> None:
        with self._lock:
            self.roots.setdefault(side, []).append(pid)
            self.peak.setdefault(side, 0)
        self._sample()

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            roots = {side: list(pids) for side, pids in self.roots.items()}
        for side, pids in roots.items():
            rss = 0
            for pid in pids:
                try:
                    proc = psutil.Process(pid)
                    procs = [proc, *proc.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        continue
            with self._lock:
                self.peak[side] = max(self.peak[side], rss)


def drop_cache(*paths: str) -> None:
    """Drop what the page cache holds of these block devices and files (dirty pages written first)."""
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            if stat.S_ISBLK(mode):
                fcntl.ioctl(fd, _BLKFLSBUF)
            else:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def allocated(path: str) -> int:
    """Bytes a file or directory tree occupies on disk (what du counts)."""
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    total = 0
    for top, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Until something listens on 127.0.0.1:port (without connecting, which would use it up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:.0f} s")
