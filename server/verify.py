"""`p2v-server verify JOB`: re-read a job's images and check them against the journal.

Every data chunk is read back and hashed; every zero chunk must read as zeros (holes are skipped
with SEEK_DATA, so a mostly empty terabyte costs little); a sealed disk's journal must still give
the digest it was sealed with.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from server.datadir import add_data_dir, existing_store
from server.store import Store
from xenp2v.protocol import (
    ChunkKind, DiskState, chunk_digest, chunk_span, image_digest,
)


@dataclass
class DiskReport:
    disk: str
    state: str
    data_chunks: int = 0
    zero_chunks: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        head = (f"disk {self.disk} ({self.state}): {self.data_chunks} data chunks, "
                f"{self.zero_chunks} zero chunks")
        if not self.problems:
            return head + ": all good"
        return head + f": {len(self.problems)} problems\n" + "\n".join("  " + p for p in self.problems)


def _bad_data(path, size, chunk_size, held: dict[int, str]) -> list[str]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        def check(item):
            index, digest = item
            offset, length = chunk_span(size, chunk_size, index)
            data = os.pread(fd, length, offset)
            actual = chunk_digest(data) if len(data) == length else "a short read"
            return None if actual == digest else f"chunk {index}: journal says {digest}, image has {actual}"

        with ThreadPoolExecutor(2) as pool:
            return [p for p in pool.map(check, sorted(held.items())) if p]
    finally:
        os.close(fd)


def _nonzero(path, offset: int, length: int) -> int | None:
    """The first offset in [offset, offset+length) that does not read zero, or None."""
    end = offset + length
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = offset
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole up to the end of the file
                return None
            if pos >= end:
                return None
            data = os.pread(fd, min(1 << 20, end - pos), pos)
            if not data:
                return None
            if data.count(0) != len(data):
                return pos + next(i for i, b in enumerate(data) if b)
            pos += len(data)
    return None


def verify_disk(store: Store, job_id: str, disk: dict) -> DiskReport:
    report = DiskReport(disk["id"], disk["state"])
    held = store.held_chunks(job_id, disk["id"])
    report.data_chunks = len(held)
    path = store.working_path(job_id, disk["id"])
    report.problems += _bad_data(path, disk["size"], disk["chunk_size"], held)
    if disk["state"] != DiskState.SEALED:
        return report
    image = store.sealed_image(job_id, disk["id"])
    zero = [e for e in image.extents if e.kind is ChunkKind.ZERO]
    report.zero_chunks = sum(e.count for e in zero)
    for e in zero:
        offset = e.start * image.chunk_size
        at = _nonzero(path, offset, min(e.count * image.chunk_size, image.size - offset))
        if at is not None:
            report.problems.append(f"zero chunk {at // image.chunk_size}: byte {at} is not zero")
    zero_idx = [i for e in zero for i in range(e.start, e.start + e.count)]
    digest = image_digest(image.size, image.chunk_size, held, zero_idx)
    if digest != disk["digest"]:
        report.problems.append(f"the journal gives image digest {digest}, sealed as {disk['digest']}")
    return report


def verify_job(store: Store, job_id: str) -> list[DiskReport]:
    job = store.get_job(job_id)
    return [verify_disk(store, job_id, d) for d in job["disks"]]


def register(sub) -> None:
    p = sub.add_parser("verify", help="re-read a job's images and check every chunk",
                       description="Re-read a job's images: every data chunk's digest, every zero "
                                   "chunk reads zeros, the sealed image digest.")
    add_data_dir(p)
    p.add_argument("job", metavar="JOB", help="the job id ('p2v-server jobs' lists them)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with existing_store(args) as store:
        reports = verify_job(store, args.job)
    print(f"job {args.job}")
    for r in reports:
        print(r.line())
    bad = sum(len(r.problems) for r in reports)
    if bad:
        print(f"{bad} problems found: the image does not hold what the agent sent; capture this "
              "disk again.", file=sys.stderr)
        return 1
    return 0
