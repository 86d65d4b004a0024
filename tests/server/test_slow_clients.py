"""Slow clients: 16 uploads trickling a byte every few seconds hold neither every chunk slot nor
theirs for long; other agents go on meanwhile."""

from __future__ import annotations

import asyncio
import os
import time

from aiohttp.test_utils import TestClient, TestServer

import server.api
from server.api import RUNNER_OPTIONS, make_app
from server.store import Store
from wire import CHUNK
from xenp2v import protocol as p


def test_trickling_uploads_hold_neither_every_slot_nor_theirs_for_long(tmp_path, monkeypatch):
    # The real rule, made quick: a 64 KiB body must arrive within 2 s + 64 KiB at 16 KiB/s.
    monkeypatch.setattr(server.api, "BODY_GRACE", 2.0)
    store = Store(tmp_path)

    async def trickle(host: str, port: int, path: str) -> tuple[bytes, float]:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
        writer.write((f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n"
                      f"{p.DIGEST_HEADER}: {p.chunk_digest(bytes(CHUNK))}\r\n"
                      f"Content-Length: {CHUNK}\r\n\r\n").encode())
        answer = b""
        try:
            while not answer:
                writer.write(b"\0")
                await writer.drain()
                try:
                    answer = await asyncio.wait_for(reader.read(65536), 1.0)
                except TimeoutError:
                    continue
        except ConnectionError:
            pass
        writer.close()
        return answer, time.monotonic() - started

    async def scenario():
        app = make_app(store, "t0ken")
        async with TestClient(TestServer(app, **RUNNER_OPTIONS)) as client:
            auth = {"Authorization": "Bearer t0ken"}
            r = await client.post(p.jobs_path(), headers=auth, json={
                "name": "x", "machine": {}, "disks": [{"id": "sda", "size": 64 * CHUNK, "chunk_size": CHUNK}]})
            job = (await r.json())["id"]
            slow = [asyncio.create_task(trickle(client.host, client.port, p.chunk_path(job, "sda", i)))
                    for i in range(16)]
            await asyncio.sleep(1.0)          # every trickler is in (or waiting for) a slot
            started = time.monotonic()
            for i in range(32, 40):           # another agent, from another address, goes on
                data = os.urandom(CHUNK)
                r = await asyncio.wait_for(client.put(
                    p.chunk_path(job, "sda", i), data=data,
                    headers={**auth, p.DIGEST_HEADER: p.chunk_digest(data)}), 10)
                assert r.status == 201, await r.text()
            other = time.monotonic() - started
            answers = await asyncio.wait_for(asyncio.gather(*slow), 40)
            return other, answers

    other, answers = asyncio.run(scenario())
    store.close()
    # Without the per-client limit it waits for the tricklers' 15 s deadline; the margin is for load.
    assert other < 8.0, f"the other agent waited {other:.1f} s for slots"
    for answer, took in answers:
        assert b" 400 " in answer.split(b"\r\n", 1)[0] and b"arrived too slowly" in answer, answer
        assert took < 20, took   # 8 in slots dropped after ~6 s, then the 8 that waited
