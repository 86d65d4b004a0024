"""Upload throughput on loopback, one and four streams of 4 MiB chunks, over TLS, as an agent sends.

The data directory is on tmpfs, so this measures the server (TLS, hashing, writing, journal),
not the disk under it, which other work on the machine may be keeping busy. Prints the figures
(MB/s); the floor asserted is far below them, so that only a real regression (a stall, a lost
core) fails the suite on a noisy machine.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time

import requests

from wire import trust
from xenp2v import protocol as p

CHUNK = p.DEFAULT_CHUNK_SIZE
CHUNKS = 64  # 256 MiB a run
FLOOR_MB_S = 15


def measure(server, streams: int) -> float:
    buffers = [os.urandom(CHUNK) for _ in range(8)]
    digests = [p.chunk_digest(b) for b in buffers]
    size = CHUNKS * CHUNK
    s = requests.Session()
    r = s.post(server.url + p.jobs_path(), headers=server.headers, verify=trust(server),
               json={"name": f"bench{streams}", "machine": {}, "disks": [{"id": "sda", "size": size}]})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(CHUNKS):
        todo.put(i)
    errors: list[str] = []

    def stream():
        session = requests.Session()
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            headers = {**server.headers, p.DIGEST_HEADER: digests[i % len(buffers)]}
            r = session.put(server.url + p.chunk_path(job, "sda", i), data=buffers[i % len(buffers)],
                            headers=headers, verify=trust(server), timeout=120)
            if r.status_code != 201:
                errors.append(r.text)
                return

    threads = [threading.Thread(target=stream) for _ in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert not errors, errors[:3]
    return size / elapsed / 1e6


def test_upload_throughput_one_and_four_streams(p2v_server_factory, capsys):
    ram = tempfile.mkdtemp(prefix="p2v-bench-", dir="/dev/shm")
    try:
        server = p2v_server_factory(data_dir=os.path.join(ram, "data"))
        one = measure(server, 1)
        four = measure(server, 4)
        server.stop()
    finally:
        shutil.rmtree(ram)
    with capsys.disabled():
        print(f"\nupload over TLS on loopback, 4 MiB chunks, data dir on tmpfs: "
              f"1 stream {one:.0f} MB/s, 4 streams {four:.0f} MB/s")
    assert one > FLOOR_MB_S and four > FLOOR_MB_S
