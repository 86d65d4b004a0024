"""Upload, seal, restore and resume against the real `p2v-server serve` process."""

from __future__ import annotations

import hashlib
import json
import random
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import zstandard

from wire import CHUNK, Wire, upload
from xenp2v import protocol as p


def disk_content(count: int, size: int, seed: int = 7):
    """Data chunks (random, one compressible, one all zeros), zero chunks, free chunks."""
    rng = random.Random(seed)
    data, zero = {}, []
    for i in range(count):
        length = p.chunk_span(size, CHUNK, i)[1]
        roll = rng.random()
        if roll < 0.55 or i == count - 1:
            data[i] = rng.randbytes(length)
        elif roll < 0.7:
            data[i] = ((b"text %d " % i) * length)[:length]
        elif roll < 0.85:
            zero.append(i)
    data[1] = bytes(p.chunk_span(size, CHUNK, 1)[1])  # a data chunk may read as zeros
    zero = [i for i in zero if i not in data]
    return data, zero


def image_digest(size, data, zero):
    return p.image_digest(size, CHUNK, {i: p.chunk_digest(b) for i, b in data.items()}, zero)


def test_banner_fingerprint_is_the_certificate_served(p2v_server):
    pem = ssl.get_server_certificate(("127.0.0.1", p2v_server.port))
    der = ssl.PEM_cert_to_DER_cert(pem)
    assert p2v_server.fingerprint == "sha256:" + hashlib.sha256(der).hexdigest()
    banner = p2v_server.log.read_text()
    line = (f"p2v.server={p2v_server.url} p2v.token={p2v_server.token} "
            f"p2v.fingerprint={p2v_server.fingerprint} p2v.mode=auto")
    assert line in banner
    assert (p2v_server.data_dir / "token").stat().st_mode & 0o077 == 0
    assert (p2v_server.data_dir / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    # The certificate and token are kept: a restart presents the same ones.
    p2v_server.stop()
    token, fingerprint = p2v_server.token, p2v_server.fingerprint
    p2v_server.start()
    assert (p2v_server.token, p2v_server.fingerprint) == (token, fingerprint)
    assert p2v_server.token not in p2v_server.log.read_text().split("Kernel command line")[-1].split(
        "p2v.mode=auto")[-1]


def test_parallel_out_of_order_upload_of_two_jobs_then_seal_and_restore(p2v_server):
    size = 40 * CHUNK + 1000
    count = p.chunk_count(size, CHUNK)
    wire = Wire(p2v_server)
    jobs = []
    for n, uuid in enumerate(("11111111-2222-3333-4444-555555555555", "aaaaaaaa-2222-3333-4444-555555555555")):
        r = wire.create([{"id": "sda", "size": size, "chunk_size": CHUNK, "used": size // 2}],
                        name=f"host{n}", uuid=uuid)
        assert r.status_code == 201, r.text
        answer = r.json()
        assert answer["resumed"] is False
        assert answer["disks"][0] | {"id": "sda", "size": size, "chunk_size": CHUNK, "chunks": count} == answer["disks"][0]
        data, zero = disk_content(count, size, seed=n)
        order = list(data)
        random.Random(n).shuffle(order)
        jobs.append((answer["id"], data, zero, {i: data[i] for i in order}))

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(upload, p2v_server, job, "sda", shuffled, streams=4,
                                 compress=lambda i: i % 2 == 0) for job, _, _, shuffled in jobs]:
            done.result()

    job, data, zero, _ = jobs[0]
    # A chunk sent twice is harmless, plain or compressed.
    assert wire.put(job, "sda", 3, data[3]).status_code == 200
    assert wire.put(job, "sda", 3, data[3], compress=True).status_code == 200
    held = wire.held(job, "sda")
    assert held == {i: p.chunk_digest(b) for i, b in data.items()}

    # Not sealed yet: nothing is served for restore.
    assert wire.call("GET", p.map_path(job, "sda")).status_code == 409
    assert wire.call("GET", p.chunk_path(job, "sda", 0)).status_code == 409

    # A digest that leaves out one zero chunk does not seal.
    r = wire.complete(job, "sda", image_digest(size, data, zero[1:]), zero=[(z, 1) for z in zero])
    assert r.status_code == 422 and r.json()["error"] == "bad_digest"
    assert wire.call("GET", p.job_path(job)).json()["disks"][0]["state"] == "receiving"

    good = image_digest(size, data, zero)
    r = wire.complete(job, "sda", good, zero=list(p.runs(zero)), bad_ranges=[[4096, 512]])
    assert r.status_code == 200, r.text
    assert r.json()["disk"]["state"] == "sealed" and r.json()["job_state"] == "sealed"
    assert wire.complete(job, "sda", good).status_code == 200  # a retried completion is harmless
    assert wire.complete(job, "sda", "blake3:" + "0" * 64).status_code == 409

    # Sealed: never changes again.
    r = wire.put(job, "sda", 1, data[1])
    assert r.status_code == 409 and r.json()["error"] == "conflict"

    # The map says data / zero / free exactly.
    r = wire.call("GET", p.map_path(job, "sda"))
    assert r.status_code == 200
    extents = [p.Extent.from_json(e) for e in r.json()["extents"]]
    assert extents == p.image_map(count, data, zero)
    assert (r.json()["size"], r.json()["chunk_size"]) == (size, CHUNK)

    # Restore: every data chunk comes back as sent, zero chunks as zeros, free ones are 404.
    for i in range(count):
        r = wire.call("GET", p.chunk_path(job, "sda", i))
        if i in data:
            assert r.status_code == 200 and r.content == data[i]
            assert r.headers[p.DIGEST_HEADER] == p.chunk_digest(data[i])
        elif i in zero:
            assert r.status_code == 200 and r.content == bytes(p.chunk_span(size, CHUNK, i)[1])
        else:
            assert r.status_code == 404
    # Compressed on request when that is smaller: here the data chunk of zeros, not random data.
    r = wire.call("GET", p.chunk_path(job, "sda", 1), headers={"Accept-Encoding": "zstd"}, stream=True)
    assert r.headers["Content-Encoding"] == "zstd"
    assert zstandard.ZstdDecompressor().stream_reader(r.raw.read()).read() == data[1]
    r = wire.call("GET", p.chunk_path(job, "sda", count - 1), headers={"Accept-Encoding": "zstd"})
    assert "Content-Encoding" not in r.headers and r.content == data[count - 1]

    # The image on disk holds the data where it belongs, and reads zeros in zero chunks.
    image = (p2v_server.data_dir / "jobs" / job / "disks" / "sda.img").read_bytes()
    assert len(image) == size
    for i, b in data.items():
        off = i * CHUNK
        assert image[off:off + len(b)] == b
    for i in zero:
        assert image[i * CHUNK:(i + 1) * CHUNK].count(0) == CHUNK

    # The second job was not touched by the first.
    other, odata, _, _ = jobs[1]
    assert wire.held(other, "sda") == {i: p.chunk_digest(b) for i, b in odata.items()}
    out = subprocess.run([sys.executable, "-m", "server.cli", "jobs", "--json",
                          "--data-dir", str(p2v_server.data_dir)], capture_output=True, text=True)
    listed = {j["id"]: j for j in json.loads(out.stdout)}
    assert listed[job]["state"] == "sealed" and listed[other]["state"] == "receiving"
    assert listed[job]["disks"][0] | {"id": "sda", "size": size, "state": "sealed"} == listed[job]["disks"][0]


def test_resume_after_sigkill_mid_upload(p2v_server):
    size = 300 * CHUNK
    count = p.chunk_count(size, CHUNK)
    rng = random.Random(3)
    data = {i: rng.randbytes(CHUNK) for i in range(count)}
    wire = Wire(p2v_server)
    disks = [{"id": "sda", "size": size, "chunk_size": CHUNK}]
    job = wire.create(disks).json()["id"]

    stop = threading.Event()
    sent: list[int] = []
    uploader = threading.Thread(
        target=lambda: sent.extend(upload(p2v_server, job, "sda", data, streams=4, stop=stop)))
    uploader.start()
    deadline = time.monotonic() + 60
    while len(wire.held(job, "sda")) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    p2v_server.kill()
    stop.set()
    uploader.join()
    assert len(sent) < count, "the kill came too late to interrupt the upload"

    p2v_server.start()
    wire = Wire(p2v_server)
    held = wire.held(job, "sda")
    # What it reports, it holds, byte for byte; and it reports every chunk acknowledged before.
    image = (p2v_server.data_dir / "jobs" / job / "disks" / "sda.img").read_bytes()
    assert held and all(d == p.chunk_digest(data[i]) for i, d in held.items())
    assert all(p.chunk_digest(image[i * CHUNK:(i + 1) * CHUNK]) == d for i, d in held.items())
    assert set(sent) <= set(held)

    r = wire.create(disks)
    assert r.status_code == 200 and r.json()["resumed"] is True and r.json()["id"] == job
    assert r.json()["disks"][0]["held_chunks"] == len(held)
    # Asked not to resume, the server starts a new job.
    assert wire.create(disks, resume=False).json()["id"] != job

    upload(p2v_server, job, "sda", {i: b for i, b in data.items() if i not in held})
    r = wire.complete(job, "sda", image_digest(size, data, []))
    assert r.status_code == 200, r.text
    out = subprocess.run([sys.executable, "-m", "server.cli", "verify", job,
                          "--data-dir", str(p2v_server.data_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"disk sda (sealed): {count} data chunks, 0 zero chunks: all good" in out.stdout
