"""Hostile and unlucky requests against the real server: never a 5xx, every error body JSON,
one log line per malformed request and never the token in the log."""

from __future__ import annotations

import json
import os
import posixpath
import random
import socket
import subprocess
import time

import pytest

from support import needs_root, run
from wire import CHUNK, Wire
from xenp2v import protocol as p


def raw(server, request: bytes, read: bool = True) -> tuple[int, dict | None]:
    """(status, JSON body or None) of one raw request on its own connection (plain HTTP)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request)
        if not read:
            return 0, None
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            piece = s.recv(65536)
            if not piece:
                break
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head, answer[:400]
    return status, json.loads(body)


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


@pytest.fixture
def plain(p2v_server_factory):
    return p2v_server_factory(plain=True)


def test_malformed_requests_get_json_and_one_log_line(plain):
    token = plain.token.encode()
    before = plain.log.read_text()
    cases = [
        (b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n", 401),
        (b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: \xc3(\x80 " + token + b"\r\n\r\n", 401),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\x01\r\n\r\n", 400),
        (b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token
         + b"A" * 9000 + b"\r\n\r\n", 400),
        (b"GET /api/v1/jobs/\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
         b"Content-Length: 3\r\n\r\n", 400),
    ]
    for request, status in cases:
        got, body = raw(plain, request)
        assert got == status, (request, body)
        assert set(body) == {"error", "detail"}, body
        assert plain.token not in body["detail"]
    time.sleep(0.3)
    log = plain.log.read_text()[len(before):]
    assert plain.token not in log, log
    assert "Traceback" not in log and "failed" not in log, log
    assert len(log.splitlines()) <= len(cases), log   # one line each at most
    assert plain.proc.poll() is None


def test_a_client_that_goes_away_is_not_a_server_failure(plain):
    wire = Wire(plain)
    job = wire.create([{"id": "sda", "size": 2 * CHUNK, "chunk_size": CHUNK}], resume=False).json()["id"]
    before = plain.log.read_text()
    head = (f"PUT {p.chunk_path(job, 'sda', 0)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{plain.token}\r\n{p.DIGEST_HEADER}: blake3:{'0' * 64}\r\nContent-Length: {CHUNK}\r\n\r\n")
    for _ in range(3):                          # cut mid-body
        raw(plain, head.encode() + os.urandom(CHUNK // 3), read=False)
    data = [os.urandom(CHUNK), os.urandom(CHUNK)]
    for i, chunk in enumerate(data):
        assert wire.put(job, "sda", i, chunk).status_code == 201
    digest = p.image_digest(2 * CHUNK, CHUNK, {i: p.chunk_digest(c) for i, c in enumerate(data)}, [])
    assert wire.complete(job, "sda", digest).status_code == 200
    for _ in range(3):                          # gone before the chunk's answer is written
        with socket.create_connection(("127.0.0.1", plain.port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET {p.chunk_path(job, 'sda', 0)} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                      f"Bearer {plain.token}\r\n\r\n".encode())
            s.recv(100)
    time.sleep(0.5)
    log = plain.log.read_text()[len(before):]
    assert "Traceback" not in log and " failed" not in log, log
    assert wire.held(job, "sda").keys() == {0, 1}


def test_fuzzed_requests_never_get_a_5xx(plain):
    """A short form of the chaos suite's fuzzer: every route, method and odd header."""
    wire = Wire(plain)
    job = wire.create([{"id": "sda", "size": 2 * CHUNK, "chunk_size": CHUNK}], resume=False).json()["id"]
    statuses = fuzz(plain, job, 300, random.Random(18))
    assert not [s for s in statuses if s >= 500], statuses
    assert "Traceback" not in plain.log.read_text()


def fuzz(server, job: str, count: int, rng: random.Random) -> list[int]:
    """`count` random requests (routes, methods, headers, bodies): the statuses answered.
    Every answer must be JSON {"error", "detail"} unless it is a success, or a page on a
    dashboard path."""
    paths = [p.health_path(), p.jobs_path(), p.job_path(job), p.chunks_path(job, "sda"),
             p.chunk_path(job, "sda", 0), p.chunk_path(job, "sda", 1), p.map_path(job, "sda"),
             p.complete_path(job, "sda"), p.log_path(job), p.events_path(job),
             p.repair_path(job), p.machine_path("4c4c4544-0042-3510-8052-b4c04f4e4e31"),
             "/", "/api/v1/jobs/../../etc/passwd", "/api/v1/jobs/%00", "/api/v1/jobs/" + "a" * 300,
             p.chunk_path(job, "sda", 99999999999999), p.chunk_path(job, "sda", -1),
             p.chunk_path(job, "../x", 0)]
    methods = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    bodies = [b"", b"{", b"[]", b"{}", b'{"name": 1}', b"null", b'"x"', b"[" * 5000 + b"]" * 5000,
              b'{"digest": "blake3:' + b"0" * 64 + b'", "zero": [[0, 1]]}', b'{"phase": "x"}',
              b'{"disks": [{"id": "sda", "size": -1}]}', b"\xff\xfe\x00", os.urandom(300),
              b'{"a": NaN}', b'{"disks": [{"id": "sda", "size": 1e400}], "name": "x"}']
    headers = [{}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer"},
               {p.DIGEST_HEADER: "blake3:zz"}, {p.DIGEST_HEADER: "blake3:" + "0" * 64},
               {p.ENCODING_HEADER: "zstd"}, {p.ENCODING_HEADER: "gzip"}, {p.ENCODING_HEADER: "br"},
               {"Content-Type": "application/json; charset=latin-1"}, {"Accept-Encoding": "zstd"},
               {"Expect": "100-continue"}]
    wire = Wire(server)
    statuses = []
    for _ in range(count):
        method, path = rng.choice(methods), rng.choice(paths)
        extra = {**rng.choice(headers), **rng.choice(headers)}
        token = rng.choice([server.token, server.token, "wrong", ""])
        r = wire.session.request(method, server.url + path, data=rng.choice(bodies), timeout=30,
                                 headers={"Authorization": f"Bearer {token}", **extra},
                                 verify=wire.verify)
        statuses.append(r.status_code)
        if r.status_code >= 400 and method != "HEAD":
            if r.headers.get("Content-Type", "").startswith("text/html"):  # a dashboard path's page
                assert not posixpath.normpath(path).startswith(p.API + "/"), (method, path, r.text)
                assert '<meta name="viewport"' in r.text, (method, path, r.text)
            else:
                assert set(r.json()) == {"error", "detail"}, (method, path, r.text)
    return statuses


def test_events_on_a_full_disk_are_507(p2v_server_factory, tmp_path):
    needs_root()
    mnt = tmp_path / "small"
    mnt.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt))
    server = None
    try:
        server = p2v_server_factory(plain=True, data_dir=mnt / "data")
        wire = Wire(server)
        job = wire.create([{"id": "sda", "size": CHUNK, "chunk_size": CHUNK}], resume=False).json()["id"]
        with open(mnt / "filler", "wb") as f:
            try:
                while True:
                    f.write(bytes(1 << 16))
            except OSError:
                pass
        event = {"phase": "capture", "note": "x" * 100_000}
        statuses = {wire.call("POST", p.events_path(job), json=[event] * 8).status_code
                    for _ in range(10)}
        assert statuses == {507}, statuses
        body = wire.call("POST", p.events_path(job), json=event).json()
        assert body["error"] == "insufficient_storage" and "full" in body["detail"]
        os.unlink(mnt / "filler")
        assert wire.call("POST", p.events_path(job), json=event).status_code == 204
    finally:
        if server:
            server.stop()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
