"""Job tokens: each job gets its own on create; it can touch only that job, and ends with it."""

from __future__ import annotations

import os

from agent.transfer.client import Client
from wire import CHUNK, Wire
from xenp2v import protocol as p


def test_a_job_token_touches_its_job_only_and_ends_with_it(p2v_server):
    admin = Wire(p2v_server)
    made = []
    for uuid in ("4c4c4544-0042-3510-8052-b4c04f4e4e31", "4c4c4544-0042-3510-8052-b4c04f4e4e32"):
        r = admin.create([{"id": "sda", "size": 2 * CHUNK, "chunk_size": CHUNK}], uuid=uuid)
        assert r.status_code == 201, r.text
        made.append((r.json()["id"], r.json()["token"]))
    (mine, token), (theirs, _) = made
    assert token != p2v_server.token
    wire = Wire(p2v_server, token=token)
    data = os.urandom(CHUNK)
    assert wire.put(mine, "sda", 0, data).status_code == 201
    assert wire.held(mine, "sda") == {0: p.chunk_digest(data)}
    assert wire.call("GET", p.job_path(mine)).status_code == 200
    # Another job: neither read nor written, whatever the route.
    for method, path, kw in [("GET", p.job_path(theirs), {}), ("GET", p.chunks_path(theirs, "sda"), {}),
                             ("GET", p.map_path(theirs, "sda"), {}),
                             ("POST", p.events_path(theirs), {"json": {"phase": "x"}}),
                             ("POST", p.log_path(theirs), {"data": b"x"}),
                             ("POST", p.repair_path(theirs), {"json": {"ok": True}}),
                             ("POST", p.complete_path(theirs, "sda"), {"json": {"digest": "x"}}),
                             ("GET", p.jobs_path(), {}), ("POST", p.jobs_path(), {"json": {}})]:
        r = wire.call(method, path, **kw)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, r.text)
    r = wire.put(theirs, "sda", 0, data)
    assert r.status_code == 403, r.text
    assert admin.held(theirs, "sda") == {}
    assert admin.call("GET", p.job_path(theirs)).json()["state"] == "receiving"
    # The job ends: its token with it.
    r = wire.complete(mine, "sda", p.image_digest(2 * CHUNK, CHUNK, {0: p.chunk_digest(data)}, [1]),
                      zero=[(1, 1)])
    assert r.status_code == 200, r.text
    assert wire.call("POST", p.repair_path(mine), json={"ok": True}).status_code == 204
    import time
    time.sleep(2.5)
    r = wire.call("GET", p.job_path(mine))
    assert r.status_code == 401 and "no longer works" in r.json()["detail"], r.text
    assert admin.call("GET", p.job_path(mine)).status_code == 200


def test_the_agent_uses_the_job_token_after_create(p2v_server):
    client = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint)
    job = client.create_job({"name": "pc", "machine": {"system_uuid": "4c4c4544-0042-3510-8052-b4c04f4e4e33"},
                             "disks": [{"id": "sda", "size": CHUNK, "chunk_size": CHUNK}]})
    assert client.token == job["token"] != p2v_server.token
    data = os.urandom(CHUNK)
    client.put_chunk(job["id"], "sda", 0, data, p.chunk_digest(data), False)
    assert client.held_chunks(job["id"], "sda") == {0: p.chunk_digest(data)}


def test_a_cancelled_jobs_token_says_the_job_was_cancelled(p2v_server):
    import re
    import time

    import pytest
    import requests

    from agent.transfer.client import ServerError

    client = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint, retry_for=5.0)
    job = client.create_job({"name": "pc", "machine": {"system_uuid": "4c4c4544-0042-3510-8052-b4c04f4e4e34"},
                             "disks": [{"id": "sda", "size": 2 * CHUNK, "chunk_size": CHUNK}]})["id"]
    data = os.urandom(CHUNK)
    client.put_chunk(job, "sda", 0, data, p.chunk_digest(data), False)
    http = requests.Session()
    http.verify, http.trust_env = False, False
    origin = {"Origin": p2v_server.url}
    assert http.post(p2v_server.url + "/signin", data={"secret": p2v_server.token}, headers=origin,
                     allow_redirects=False).status_code == 303
    csrf = re.search(r'name="csrf" value="([^"]+)"', http.get(p2v_server.url + "/").text).group(1)
    assert http.post(f"{p2v_server.url}/jobs/{job}/cancel", data={"csrf": csrf}, headers=origin,
                     allow_redirects=False).status_code == 303
    time.sleep(2.5)     # past the server's cache of token states
    r = Wire(p2v_server, token=client.token).put(job, "sda", 1, data)
    assert r.status_code == 409 and r.json()["error"] == "job_cancelled", r.text
    assert "Cancelled from the dashboard" in r.json()["detail"]
    for call in (lambda: client.put_chunk(job, "sda", 1, data, p.chunk_digest(data), False),
                 lambda: client.post_events(job, {"disk": "sda", "phase": "capture"})):
        with pytest.raises(ServerError) as err:
            call()
        assert str(err.value).startswith("The job was cancelled on the server (by the admin): ")
        assert "check --token" not in str(err.value) and err.value.code == "job_cancelled"
