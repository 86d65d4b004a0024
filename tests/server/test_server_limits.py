"""Bad input against the real server: each refused with the right status, nothing stored wrong."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading

import pytest
import zstandard

from server.store import Store
from support import P2VServer, needs_root, run
from wire import CHUNK, Wire
from xenp2v import protocol as p

SIZE = 8 * CHUNK + 512


@pytest.fixture(scope="module")
def p2v_server(tmp_path_factory):
    """One server for the whole module: each test makes its own job on it."""
    server = P2VServer(tmp_path_factory.mktemp("limits") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def job(p2v_server):
    r = Wire(p2v_server).create([{"id": "sda", "size": SIZE, "chunk_size": CHUNK}], resume=False)
    assert r.status_code == 201, r.text
    yield r.json()["id"]
    # Whatever was sent, the server never failed on it.
    assert "Traceback" not in p2v_server.log.read_text()
    assert p2v_server.proc.poll() is None


def refused(r, status: int, code: str):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code and body["detail"] and "Traceback" not in body["detail"]
    return body


def test_token_is_required_and_checked(p2v_server, job):
    data = os.urandom(CHUNK)
    for token in ("", "wrong", p2v_server.token + "x", p2v_server.token[:-1]):
        refused(Wire(p2v_server, token=token).put(job, "sda", 0, data), 401, "unauthorized")
        refused(Wire(p2v_server, token=token).call("GET", p.jobs_path()), 401, "unauthorized")
    r = Wire(p2v_server).call("GET", p.jobs_path(), headers={"Authorization": "Basic eDp5"})
    refused(r, 401, "unauthorized")
    assert Wire(p2v_server).call("GET", p.health_path(), headers={"Authorization": ""}).ok
    assert Wire(p2v_server).held(job, "sda") == {}
    assert p2v_server.token not in p2v_server.log.read_text().split("p2v.mode=auto", 1)[1]


def test_bad_chunks_are_refused_and_never_counted(p2v_server, job):
    wire = Wire(p2v_server)
    data = os.urandom(CHUNK)
    refused(wire.put(job, "sda", 0, data, digest=p.chunk_digest(b"other")), 422, "bad_digest")
    refused(wire.put(job, "sda", 0, data, compress=True, digest=p.chunk_digest(b"x")), 422, "bad_digest")
    refused(wire.put(job, "sda", 0, data, digest="md5:1234"), 400, "bad_request")
    refused(wire.call("PUT", p.chunk_path(job, "sda", 0), data=data), 400, "bad_request")
    refused(wire.put(job, "sda", 9, data), 416, "out_of_range")
    refused(wire.put(job, "sda", 10 ** 9, data), 416, "out_of_range")
    for index in ("-1", "1e3", "0x10", "9" * 40, "%2e%2e", "1%0A", "%201"):
        r = wire.call("PUT", p.chunks_path(job, "sda") + "/" + index, data=data,
                      headers={p.DIGEST_HEADER: p.chunk_digest(data)})
        assert r.status_code in (400, 416) and r.json()["error"] in ("bad_request", "out_of_range")
    # Lengths: short plain body, plain body larger than the chunk, short last chunk sent full.
    refused(wire.put(job, "sda", 0, data[:-1]), 422, "bad_length")
    refused(wire.put(job, "sda", 0, data + b"x"), 413, "too_large")
    refused(wire.put(job, "sda", 8, data), 413, "too_large")
    refused(wire.put(job, "sda", 8, data[:100]), 422, "bad_length")
    # Compressed: a bomb that expands far past the chunk, garbage, an unknown encoding.
    bomb = zstandard.ZstdCompressor().compress(bytes(64 * CHUNK))
    r = wire.call("PUT", p.chunk_path(job, "sda", 1), data=bomb,
                  headers={p.DIGEST_HEADER: p.chunk_digest(bytes(CHUNK)), p.ENCODING_HEADER: "zstd"})
    refused(r, 422, "bad_length")
    r = wire.call("PUT", p.chunk_path(job, "sda", 1), data=b"\x28\xb5\x2f\xfdgarbage" * 100,
                  headers={p.DIGEST_HEADER: p.chunk_digest(data), p.ENCODING_HEADER: "zstd"})
    refused(r, 400, "bad_request")
    r = wire.call("PUT", p.chunk_path(job, "sda", 1), data=data,
                  headers={p.DIGEST_HEADER: p.chunk_digest(data), p.ENCODING_HEADER: "gzip"})
    refused(r, 400, "bad_request")
    assert wire.held(job, "sda") == {}
    # Nothing bad was written where a good chunk now goes: it is stored as sent.
    assert wire.put(job, "sda", 0, data).status_code == 201
    assert wire.held(job, "sda") == {0: p.chunk_digest(data)}


def test_bad_json_and_bad_inventories(p2v_server, job):
    wire = Wire(p2v_server)
    refused(wire.call("POST", p.jobs_path(), data=b"{not json"), 400, "bad_request")
    refused(wire.call("POST", p.jobs_path(), data=b"\xff\xfe"), 400, "bad_request")
    refused(wire.call("POST", p.jobs_path(), json=[1, 2]), 400, "bad_request")
    refused(wire.call("POST", p.jobs_path(), data=b"[" * 100000), 400, "bad_request")
    refused(wire.call("POST", p.jobs_path(), data=b'{"name": NaN, "disks": []}'), 400, "bad_request")
    for disks in ([], [{"id": "../etc", "size": 10}], [{"id": "sda", "size": 0}],
                  [{"id": "sda", "size": "10"}], [{"id": "sda", "size": 1 << 60}],
                  [{"id": "sda", "size": 10}, {"id": "sda", "size": 10}],
                  [{"id": "sda", "size": 10, "chunk_size": 1000}],
                  [{"id": "sda", "size": 100, "used": 101}], "sda", [None]):
        refused(wire.create(disks), 400, "bad_request")
    refused(wire.create([{"id": "sda", "size": 10}], name="x" * 500), 400, "bad_request")
    refused(wire.create([{"id": "sda", "size": 10}], name="a\nb"), 400, "bad_request")
    big = {"name": "x", "disks": [{"id": "sda", "size": 10}], "pad": "x" * p.MAX_JSON_BODY}
    refused(wire.call("POST", p.jobs_path(), data=json.dumps(big)), 413, "too_large")
    for body in (b"[", b"[]", b'{"digest": 3}', b'{"digest": "blake3:00"}',
                 json.dumps({"digest": "blake3:" + "0" * 64, "zero": [[0]]}).encode(),
                 json.dumps({"digest": "blake3:" + "0" * 64, "zero": [["a", 1]]}).encode(),
                 json.dumps({"digest": "blake3:" + "0" * 64, "bad_ranges": {}}).encode()):
        refused(wire.call("POST", p.complete_path(job, "sda"), data=body), 400, "bad_request")
    refused(wire.complete(job, "sda", "blake3:" + "0" * 64, zero=[(5, 10)]), 416, "out_of_range")
    refused(wire.complete(job, "sda", "blake3:" + "0" * 64, bad_ranges=[(SIZE, 1)]), 416, "out_of_range")
    refused(wire.call("POST", p.events_path(job), data=b"nope"), 400, "bad_request")
    refused(wire.call("POST", p.events_path(job), json=[]), 400, "bad_request")
    refused(wire.call("POST", p.events_path(job), data=b'{"done": Infinity}'), 400, "bad_request")
    refused(wire.call("POST", p.repair_path(job), json=["x"]), 400, "bad_request")
    assert wire.call("GET", p.job_path(job)).json()["disks"][0]["state"] == "receiving"


def test_unknown_things_and_path_tricks(p2v_server, job):
    wire = Wire(p2v_server)
    refused(wire.call("GET", p.job_path("nosuchjob")), 404, "not_found")
    refused(wire.call("GET", p.chunks_path(job, "sdz")), 404, "not_found")
    refused(wire.call("GET", p.API + "/nothing"), 404, "not_found")
    refused(wire.call("DELETE", p.job_path(job)), 405, "method_not_allowed")
    refused(wire.call("GET", p.map_path(job, "sda")), 409, "conflict")
    refused(wire.call("GET", p.machine_path("4c4c4544-0042-3510-8052-b4c04f4e4e31")), 404, "not_found")
    data = os.urandom(CHUNK)
    digest = {p.DIGEST_HEADER: p.chunk_digest(data)}
    for job_part in ("..", ".", ".hidden", "..%2F..%2Fetc", "%2e%2e", "a%00b", "x" * 65, job + "%0A"):
        for disk_part in ("sda", "..", "..%2Fsda", "%2e%2e%2fx", "sda%0A"):
            url = f"{p2v_server.url}{p.API}/jobs/{job_part}/disks/{disk_part}/chunks/0"
            r = wire.session.put(url, data=data, headers={**digest, **p2v_server.headers}, verify=wire.verify)
            assert r.status_code in (400, 404), (url, r.status_code, r.text)
            assert r.json()["error"] in ("bad_request", "not_found")
    # Raw request lines that requests would normalise.
    for path in (f"/api/v1/jobs/{job}/disks/../../../../etc/passwd/chunks/0",
                 f"/api/v1/jobs/{job}/disks/..%2F..%2F..%2Fxenp2v.db/chunks/0"):
        status = raw_put(p2v_server, path, data)
        assert status in (400, 404), (path, status)
    inside = {str(x.relative_to(p2v_server.data_dir)) for x in p2v_server.data_dir.rglob("*")}
    assert not any(".." in x for x in inside)
    assert Wire(p2v_server).held(job, "sda") == {}
    assert not any(p2v_server.data_dir.parent.glob("etc*"))


def raw_put(server, path: str, data: bytes) -> int:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", server.port)) as plain:
        with ctx.wrap_socket(plain) as s:
            head = (f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
                    f"{p.DIGEST_HEADER}: {p.chunk_digest(data)}\r\nContent-Length: {len(data)}\r\n"
                    "Connection: close\r\n\r\n")
            s.sendall(head.encode() + data)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_full_disk_refuses_jobs_and_chunks_with_numbers(p2v_server_factory, tmp_path):
    needs_root()
    mnt = tmp_path / "small"
    mnt.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt))
    server = None
    try:
        server = p2v_server_factory(data_dir=mnt / "data")
        wire = Wire(server)
        body = refused(wire.create([{"id": "sda", "size": 1 << 30}]), 507, "insufficient_storage")
        assert "1.0 GiB" in body["detail"] and str(1 << 30) in body["detail"]
        # Used bytes alone say nothing of how many whole chunks hold them: the disk is reserved.
        refused(wire.create([{"id": "sda", "size": 1 << 30, "used": 4 << 20, "chunk_size": CHUNK}]),
                507, "insufficient_storage")
        # 4 MiB of used blocks spread over 1000 chunks: 62.5 MiB are stored, and do not fit.
        spread = {"id": "sda", "size": 1 << 30, "used": 4 << 20, "used_chunks": 1000,
                  "chunk_size": CHUNK}
        body = refused(wire.create([spread]), 507, "insufficient_storage")
        assert f"need 62.5 MiB ({1000 * CHUNK} bytes" in body["detail"]
        said = int(re.search(r"has [0-9.]+ MiB \((\d+) bytes\) free", body["detail"])[1])
        assert abs(said - os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize) < 1 << 20
        assert "larger disk" in body["detail"]
        job = wire.create([{**spread, "used_chunks": 64}]).json()["id"]
        # The promised space counts for the next job too, and the refusal names whose it is.
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        body = refused(wire.create([{"id": "sdb", "size": free - (2 << 20)}], uuid="other"), 507,
                       "insufficient_storage")
        assert f"{64 * CHUNK} bytes) are held for unfinished jobs ({job} 4.0 MiB)" in body["detail"]
        # Someone else fills the disk: a chunk is refused and not counted.
        with open(mnt / "filler", "wb") as f:
            try:
                while True:
                    f.write(bytes(1 << 20))
            except OSError:
                pass
        data = os.urandom(CHUNK)
        refused(wire.put(job, "sda", 5, data), 507, "insufficient_storage")
        assert wire.held(job, "sda") == {}
        os.unlink(mnt / "filler")
        assert wire.put(job, "sda", 5, data).status_code == 201
        assert wire.held(job, "sda") == {5: p.chunk_digest(data)}
    finally:
        if server:
            server.stop()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_parallel_creates_never_promise_more_space_than_there_is(p2v_server_factory, tmp_path):
    """Each create checks the free space against what unfinished jobs hold, then records its own
    promise: two creates at once must not both pass the check before either is recorded."""
    needs_root()
    mnt = tmp_path / "small"
    mnt.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(mnt))
    server = None
    try:
        server = p2v_server_factory(data_dir=mnt / "data")
        # 72 MiB each (64 disks of 18 chunks): one job fits in 100 MiB, two do not.
        disks = [{"id": f"d{i}", "size": 1 << 30, "used_chunks": 18, "chunk_size": CHUNK}
                 for i in range(64)]
        wires = [Wire(server) for _ in range(8)]
        for w in wires:
            w.call("GET", p.health_path())  # connected beforehand: the creates race each other
        for round_ in range(12):
            start = threading.Barrier(len(wires))
            answers: list[tuple[int, dict]] = []

            def create(wire: Wire, n: int) -> None:
                start.wait()
                r = wire.create(disks, uuid=f"4c4c4544-0000-0000-{round_:04d}-{n:012d}")
                answers.append((r.status_code, r.json()))

            threads = [threading.Thread(target=create, args=(w, n)) for n, w in enumerate(wires)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            made = [body["id"] for status, body in answers if status == 201]
            assert sorted(s for s, _ in answers) == [201] + [507] * 7, f"round {round_}: {made}"
            # The job fails, and its promise goes with it: the next round has the space again.
            store = Store(server.data_dir)
            store.cancel_job(made[0], "cancelled by the test")
            store.close()
    finally:
        if server:
            server.stop()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
