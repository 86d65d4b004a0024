"""A minimal agent side of the wire protocol for the server's tests: requests, many streams."""

from __future__ import annotations

import queue
import threading

import requests
import zstandard

from xenp2v import protocol as p

CHUNK = p.MIN_CHUNK_SIZE  # small chunks keep the tests fast


class Wire:
    """Requests against one P2VServer, with its token, trusting only the server's own certificate."""

    def __init__(self, server, token: str | None = None):
        self.server = server
        self.token = server.token if token is None else token
        self.session = requests.Session()
        self.verify = trust(server)

    def url(self, path: str) -> str:
        return self.server.url + path

    def call(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return self.session.request(method, self.url(path), headers=headers, timeout=60,
                                    verify=self.verify, **kw)

    def create(self, disks, name="web01", uuid="4c4c4544-0042-3510-8052-b4c04f4e4e31", **extra):
        body = {"name": name, "machine": {"system_uuid": uuid}, "disks": disks, **extra}
        return self.call("POST", p.jobs_path(), json=body)

    def put(self, job, disk, index, data: bytes, compress=False, digest=None) -> requests.Response:
        headers = {p.DIGEST_HEADER: digest or p.chunk_digest(data)}
        if compress:
            data = zstandard.ZstdCompressor(level=1).compress(data)
            headers[p.ENCODING_HEADER] = p.ZSTD
        return self.call("PUT", p.chunk_path(job, disk, index), data=data, headers=headers)

    def held(self, job, disk) -> dict[int, str]:
        r = self.call("GET", p.chunks_path(job, disk))
        assert r.status_code == 200, r.text
        return {int(k): v for k, v in r.json()["chunks"].items()}

    def complete(self, job, disk, digest, zero=(), bad_ranges=()) -> requests.Response:
        return self.call("POST", p.complete_path(job, disk),
                         json={"digest": digest, "zero": [list(z) for z in zero],
                               "bad_ranges": [list(b) for b in bad_ranges]})



def trust(server) -> str | bool:
    """What requests should verify against: the certificate the server made (valid for 127.0.0.1)."""
    return str(server.data_dir / "tls" / "cert.pem") if server.url.startswith("https:") else True


def upload(server, job: str, disk: str, chunks: dict[int, bytes], streams: int = 4,
           compress=lambda i: False, stop: threading.Event | None = None) -> list[int]:
    """PUTs every chunk over ``streams`` connections; returns the indices answered 2xx."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for index in chunks:
        todo.put(index)
    done: list[int] = []
    failures: list[str] = []

    def stream():
        wire = Wire(server)
        while not (stop and stop.is_set()):
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            try:
                r = wire.put(job, disk, index, chunks[index], compress=compress(index))
            except requests.RequestException as err:
                failures.append(f"chunk {index}: {err}")
                return
            if r.status_code in (200, 201):
                done.append(index)
            else:
                failures.append(f"chunk {index}: {r.status_code} {r.text}")
                return

    threads = [threading.Thread(target=stream) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures and not stop:
        raise AssertionError("; ".join(failures[:5]))
    return done
