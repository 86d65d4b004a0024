"""Log, events, machine lookup and repair report; the app's hooks for the XenServer automation."""

from __future__ import annotations

import asyncio
import threading

from aiohttp.test_utils import TestClient, TestServer

from server.api import RUNNER_OPTIONS, make_app
from server.store import Store
from wire import CHUNK, Wire
from xenp2v import protocol as p

UUID = "4c4c4544-0042-3510-8052-b4c04f4e4e31"


def test_log_events_machine_lookup_and_repair_report(p2v_server):
    wire = Wire(p2v_server)
    job = wire.create([{"id": "sda", "size": 4 * CHUNK, "chunk_size": CHUNK}]).json()["id"]
    assert wire.call("POST", p.log_path(job), data=b"probe: 2 disks\ncapture: started").status_code == 204
    assert wire.call("POST", p.log_path(job), data="mot accentué\n".encode()).status_code == 204
    log = (p2v_server.data_dir / "jobs" / job / "agent.log").read_text()
    assert log == "probe: 2 disks\ncapture: started\nmot accentué\n"
    r = wire.call("POST", p.log_path(job), data=b"x" * (p.MAX_LOG_BODY + 1))
    assert r.status_code == 413

    assert wire.call("POST", p.events_path(job), json={"phase": "capture", "done": 10}).status_code == 204
    assert wire.call("POST", p.events_path(job),
                     json=[{"phase": "capture", "done": 20}, {"phase": "seal"}]).status_code == 204
    got = wire.call("GET", p.job_path(job)).json()
    assert got["last_event"]["phase"] == "seal" and got["last_event"]["at"]

    # Repair mode finds its job by the VM's SMBIOS UUID once the automation has set it.
    assert wire.call("GET", p.machine_path(UUID)).status_code == 404
    store = Store(p2v_server.data_dir)
    store.set_target_uuid(job, UUID.upper())
    store.close()
    r = wire.call("GET", p.machine_path(UUID))
    assert r.status_code == 200 and r.json()["id"] == job
    assert wire.call("GET", p.machine_path("../../x")).status_code in (400, 404)

    report = {"ok": True, "steps": [{"name": "fstab", "changed": True}]}
    # A job still receiving takes no repair report: no VM was restored from its disk yet.
    r = wire.call("POST", p.repair_path(job), json=report)
    assert r.status_code == 409 and "not sealed" in r.json()["detail"], r.text
    assert wire.call("GET", p.job_path(job)).json()["state"] == "receiving"
    seal_all_zero(wire, job, "sda", 4)
    assert wire.call("POST", p.repair_path(job), json=report).status_code == 204
    got = wire.call("GET", p.job_path(job)).json()
    assert got["repair"] == report and got["state"] == "done"
    assert wire.call("POST", p.repair_path("nosuchjob"), json=report).status_code == 404


def seal_all_zero(wire: Wire, job: str, disk: str, chunks: int) -> None:
    """Seals a disk whose every chunk is in use and all zero."""
    r = wire.complete(job, disk, p.image_digest(chunks * CHUNK, CHUNK, {}, range(chunks)),
                      zero=[(0, chunks)])
    assert r.status_code == 200, r.text


def test_hooks_run_after_the_answer_without_holding_it(tmp_path):
    store = Store(tmp_path)
    release = threading.Event()
    calls: list[tuple] = []

    def sealed(job_id):
        release.wait(30)
        calls.append(("sealed", job_id))

    def repaired(job_id, report):
        calls.append(("repair", job_id, report))

    async def scenario():
        app = make_app(store, "t0ken", on_job_sealed=sealed, on_repair_report=repaired)
        async with TestClient(TestServer(app, **RUNNER_OPTIONS)) as client:
            auth = {"Authorization": "Bearer t0ken"}
            r = await client.post(p.jobs_path(), headers=auth, json={
                "name": "x", "machine": {}, "disks": [{"id": "sda", "size": 2 * CHUNK, "chunk_size": CHUNK}]})
            job = (await r.json())["id"]
            r = await client.post(p.complete_path(job, "sda"), headers=auth,
                                  json={"digest": p.image_digest(2 * CHUNK, CHUNK, {}, [0, 1]),
                                        "zero": [[0, 2]]})
            assert r.status == 200, await r.text()
            assert calls == []  # answered while the hook still runs
            release.set()
            r = await client.post(p.repair_path(job), headers=auth, json={"ok": False, "detail": "grub"})
            assert r.status == 204
            for _ in range(100):
                if len(calls) == 2:
                    break
                await asyncio.sleep(0.05)
            return job

    job = asyncio.run(scenario())
    assert sorted(calls, key=str) == [("repair", job, {"ok": False, "detail": "grub"}), ("sealed", job)]
    assert store.get_job(job)["state"] == "failed"
    store.close()


def test_a_client_that_stops_mid_body_is_dropped_and_others_go_on(tmp_path, monkeypatch):
    import server.api

    monkeypatch.setattr(server.api, "BODY_IDLE_TIMEOUT", 0.5)
    store = Store(tmp_path)

    async def scenario():
        app = make_app(store, "t0ken")
        async with TestClient(TestServer(app, **RUNNER_OPTIONS)) as client:
            auth = {"Authorization": "Bearer t0ken"}
            r = await client.post(p.jobs_path(), headers=auth, json={
                "name": "x", "machine": {}, "disks": [{"id": "sda", "size": 2 * CHUNK, "chunk_size": CHUNK}]})
            job = (await r.json())["id"]
            reader, writer = await asyncio.open_connection(client.host, client.port)
            writer.write((f"PUT {p.chunk_path(job, 'sda', 0)} HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer t0ken\r\n{p.DIGEST_HEADER}: {p.chunk_digest(b'')}\r\n"
                          f"Content-Length: {CHUNK}\r\n\r\n").encode() + b"x" * 1000)
            await writer.drain()
            # Meanwhile the server answers others.
            assert (await client.get(p.health_path())).status == 200
            answer = await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400") and b"stopped arriving" in answer
            r = await client.get(p.chunks_path(job, "sda"), headers=auth)
            return (await r.json())["chunks"]

    assert asyncio.run(scenario()) == {}
    store.close()
