"""A sealed image built by hand: a sparse raw file and its extents, as the store would hold it."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from xenp2v.protocol import Extent, chunk_count, image_map


@dataclass
class HandImage:
    job: str
    disk: str
    path: Path
    size: int
    chunk_size: int
    extents: list[Extent]


def make_image(directory: Path, disk: str, size: int, chunk_size: int, seed: int = 1,
               zero_data_chunk: bool = True) -> HandImage:
    """Random data in about half the chunks, some zero chunks, the rest free (holes).

    One data chunk is all zeros when ``zero_data_chunk``: a data chunk may read as zeros.
    """
    rng = random.Random(seed)
    count = chunk_count(size, chunk_size)
    data, zero = [0, count - 1], []
    for i in range(1, count - 1):
        roll = rng.random()
        if roll < 0.5:
            data.append(i)
        elif roll < 0.7:
            zero.append(i)
    path = directory / f"{disk}.img"
    with open(path, "wb") as f:
        f.truncate(size)
        for i in sorted(data):
            if zero_data_chunk and i == sorted(data)[1]:
                continue
            offset = i * chunk_size
            length = min(chunk_size, size - offset)
            f.seek(offset)
            # Partly filled, like a filesystem's used blocks in a chunk.
            f.write(rng.randbytes(length // 2) + bytes(length - length // 2))
    return HandImage("job1", disk, path, size, chunk_size, image_map(count, data, zero))


@dataclass
class HandStore:
    """The part of server.store.Store that exports and provisioning read."""

    jobs: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)
    states: list = field(default_factory=list)
    targets: dict = field(default_factory=dict)

    def add(self, job: dict, images: list[HandImage]) -> None:
        self.jobs[job["id"]] = job
        for image in images:
            self.images[(job["id"], image.disk)] = image

    def get_job(self, job_id: str) -> dict:
        return {**self.jobs[job_id], "records": self.records.get(job_id, {})}

    def sealed_image(self, job_id: str, disk_id: str) -> HandImage:
        return self.images[(job_id, disk_id)]

    def set_state(self, job_id, state, detail=None):
        self.states.append((str(state), detail))
        self.jobs[job_id]["state"] = str(state)

    def set_target_uuid(self, job_id, system_uuid):
        self.targets[job_id] = system_uuid

    def record(self, job_id, key, value):
        self.records.setdefault(job_id, {})[key] = value

    def issue_token(self, job_id):
        self.tokens = getattr(self, "tokens", []) + [(job_id, f"job-token-{len(getattr(self, 'tokens', []))}")]
        return self.tokens[-1][1]


def job_for(images: list[HandImage], name: str = "web01", cpus: int = 2,
            memory: int = 1 << 30, firmware: str = "bios", os_name: str = "Debian GNU/Linux 12",
            nics=(("eth0", "52:54:00:12:34:56"),)) -> dict:
    return {
        "id": images[0].job, "name": name, "state": "sealed",
        "disks": [{"id": i.disk, "size": i.size, "state": "sealed"} for i in images],
        "inventory": {
            "name": name,
            "machine": {"system_uuid": "4c4c4544-0000-1000-8000-000000000001", "cpus": cpus,
                        "memory": memory, "firmware": firmware, "os": {"name": os_name},
                        "nics": [{"name": n, "mac": m} for n, m in nics]},
            "disks": [{"id": i.disk, "size": i.size} for i in images],
        },
    }


def same_bytes(a: os.PathLike, b: os.PathLike) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True
