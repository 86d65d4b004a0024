"""The warm-migration row of `make bench`: the fixture pre-copied while mounted, 100 MiB of its
files changed, then the final sync from the 'stick', timed: the downtime.

- The source is a writable copy of the fixture (``out/warm-source.img``, made once per bench run
  and removed after it), attached with direct I/O like the fixture.
- The pre-copy pass: agent/warm/precopy.py, run as on the source (``python3 -I -S``, the standard
  library only) while its filesystem is mounted, into a fresh TLS server. Not timed as downtime.
- The change: the largest files rewritten in place with random bytes (incompressible) until
  100 MiB are, and the server's clone of the pass made (it copies the image where its data
  directory has no reflinks, as it does while a source runs on between passes), then the
  filesystem unmounted (the source shut down).
- What changed: each chunk of the source at cutover digested and compared with what the server
  holds of the pass; the chunks that differ (file data, and the filesystem's metadata: journal,
  inode tables, superblock) are what a final sync cannot avoid sending.
- The final sync: ``p2v-agent capture --job JOB`` with the default flags, cold cache, timed like
  every other contender (wall, wire bytes both ways).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench import fixture
from bench.measure import allocated, drop_cache
from xenp2v import protocol

CHANGE = 100 << 20   # bytes of file data the source changes between the pass and the cutover
SENDER = Path(__file__).resolve().parent.parent / "agent" / "warm" / "precopy.py"


def source(bench) -> Path:
    """The writable copy of the fixture the warm row changes (made at its first use)."""
    copy = bench.out / "warm-source.img"
    if not copy.exists():
        partial = copy.with_suffix(".partial")
        subprocess.run(["cp", "--sparse=always", str(bench.src_image), str(partial)], check=True)
        partial.rename(copy)
    return copy


def remove_source(bench) -> None:
    (bench.out / "warm-source.img").unlink(missing_ok=True)


@contextmanager
def mounted(node: str):
    with tempfile.TemporaryDirectory(prefix="xenp2v-warm-") as mnt:
        fixture.sh("mount", node, mnt)
        try:
            yield Path(mnt)
        finally:
            fixture.sh("umount", mnt)


def precopy(server, dev: str) -> str:
    """One pre-copy pass of `dev` by the single-file sender; the job id."""
    cmd = [sys.executable, "-I", "-S", str(SENDER), "--server", server.url, "--token",
           server.token, "--disks", dev, "--name", "bench-warm"]
    cmd += ["--fingerprint", server.fingerprint] if server.fingerprint else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"the pre-copy pass failed: {proc.stderr.strip()}")
    return re.search(r"pass into job (\S+)", proc.stdout).group(1)


def change_files(root: Path, budget: int, rng: random.Random) -> int:
    """Rewrites the largest regular files under `root` in place (same length, same blocks) with
    random bytes until `budget` bytes are written; the bytes written."""
    files = sorted((p for p in root.rglob("*") if p.is_file() and not p.is_symlink()),
                   key=lambda p: (-p.stat().st_size, str(p)))
    written = 0
    for path in files:
        if written >= budget:
            break
        length = min(path.stat().st_size, budget - written)
        with open(path, "r+b") as f:
            done = 0
            while done < length:
                piece = min(4 << 20, length - done)
                f.write(rng.randbytes(piece))
                done += piece
            os.fsync(f.fileno())
        written += length
    return written


def changed_chunks(dev: str, chunk_size: int, held: dict[int, str]) -> int:
    """Bytes of the chunks of `dev` whose content differs from what the server holds (`held`:
    index -> blake3 digest of the pass), all-zero chunks left out (they are declared, not sent)."""
    size = os.stat(dev).st_size or int(fixture.sh("blockdev", "--getsize64", dev))
    out = 0
    with open(dev, "rb", buffering=0) as f:
        for index in range((size + chunk_size - 1) // chunk_size):
            data = f.read(chunk_size)
            if not data.strip(b"\0"):
                continue
            if held.get(index) != protocol.chunk_digest(data):
                out += len(data)
    return out


def cloned(data: Path, job: str, disk: str, timeout: float = 1800) -> None:
    """Until the server has made the next version of the pass's image (a copy, where its data
    directory has no reflinks), as it does while a source runs on between passes."""
    ready = data / "jobs" / job / "disks" / f"{disk}.v2.next"
    log = data.parent / f"{data.name}-server.log"
    deadline = time.monotonic() + timeout
    while not ready.exists():
        failed = [line for line in log.read_text(errors="replace").splitlines()
                  if "made ahead for its next pass failed" in line]
        if failed:
            raise RuntimeError(f"the server could not clone the pass: {failed[-1]} (the warm row "
                               "needs about 14 GB free where the bench's cache is)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server made no {ready} in {timeout:.0f} s")
        time.sleep(0.5)


def held_chunks(server, job: str, disk: str) -> dict:
    """The server's chunk listing of `disk` ({"chunk_size", "chunks": {index: digest}})."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # our own test server
    request = urllib.request.Request(server.url + protocol.chunks_path(job, disk),
                                     headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(request, timeout=60, context=context) as answer:
        return json.load(answer)


def final_sync(bench):
    """The row: one pass, the change, the timed final sync; a Run with `changed` set."""
    image = source(bench)
    data = bench.fresh("p2v-warm")
    server = bench.server(data, tls=True)
    try:
        with fixture.Loop(image) as loop:
            with mounted(loop.part1) as mnt:  # the source runs through its pre-copy pass
                job = precopy(server, loop.dev)
                files = change_files(mnt, CHANGE, random.Random())
                cloned(data, job, Path(loop.dev).name)
            listing = held_chunks(server, job, Path(loop.dev).name)
            changed = changed_chunks(loop.dev, listing["chunk_size"],
                                     {int(i): d for i, d in listing["chunks"].items()})
            drop_cache(loop.dev, loop.part1)
            run, out = bench.timed_agent(server, ["capture", *bench.agent_args(server), "--disks",
                                                  loop.dev, "--job", job, "--name", "bench-warm"],
                                         [], "warm-final-sync")
            if "final sync sealed" not in out:
                raise RuntimeError(f"the capture was not a final sync of job {job}: {out}")
        run.out = allocated(str(data / "jobs"))
        run.changed, run.files = changed, files
        run.data = changed   # what the final sync had to move: the per-GiB figures count that
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    return run
