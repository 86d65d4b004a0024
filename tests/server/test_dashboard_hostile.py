"""What an agent (or a job token's holder) sends cannot take the dashboard down: fields of the
wrong kind are refused at the API (422 bad_field, protocol's shapes), and records already stored
with such fields (an older server's) show as "?" while the rest of the list and page still draw.
Against a real p2v-server."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest
import requests
import urllib3

urllib3.disable_warnings()

MiB = 1024 * 1024


def inventory(**machine) -> dict:
    return {"name": "web01", "machine": {"system_uuid": str(uuid.uuid4()), "memory": 2 << 30,
                                        "nics": [{"name": "eth0", "mac": "52:54:00:00:00:01",
                                                  "altnames": ["enp0s3"]}], **machine},
            "disks": [{"id": "d0", "size": 64 * MiB, "plan": ["read whole"], "warnings": []}]}


def create(server, inv: dict | None = None) -> requests.Response:
    return requests.post(server.url + "/api/v1/jobs", json=inv or inventory(),
                         headers=server.headers, verify=False)


def signed_in(server) -> requests.Session:
    s = requests.Session()
    s.verify, s.trust_env = False, False
    r = s.post(server.url + "/signin", data={"secret": server.token},
               headers={"Origin": server.url}, allow_redirects=False)
    assert r.status_code == 303, r.text
    return s


BAD_EVENTS = [{"disk": "d0", "phase": "capture", "sent": "lots"},
              {"disk": "d0", "phase": "capture", "rate": "fast"},
              {"disk": "d0", "phase": "capture", "total": "big"},
              {"disk": "d0", "phase": ["capture"]},
              [{"disk": "d0", "phase": "capture"}, {"disk": "d0", "eta": True}]]
BAD_INVENTORIES = [{"memory": "16G"},
                   {"nics": [{"name": "eth0", "mac": "x", "altnames": 3}]},
                   {"nics": "eth0"}]
BAD_REPORTS = [{"status": "planned", "steps": 3},
               {"status": "planned", "steps": [{"step": "fstab", "diff": ["+a", "-b"]}]},
               {"status": 1},
               {"status": "planned", "warnings": "careful"}]


def test_fields_of_the_wrong_kind_are_refused_at_the_api(p2v_server):
    job = create(p2v_server).json()
    token = {"Authorization": f"Bearer {job['token']}"}
    base = f"{p2v_server.url}/api/v1/jobs/{job['id']}"
    for event in BAD_EVENTS:
        r = requests.post(base + "/events", json=event, headers=token, verify=False)
        assert r.status_code == 422 and r.json()["error"] == "bad_field", (event, r.text)
        assert "must be" in r.json()["detail"]
    good = {"disk": "d0", "phase": "capture", "done": 1, "total": 2, "sent": 1, "rate": 1.5,
            "eta": None, "message": "reading", "newer_field": {"any": "thing"}}
    assert requests.post(base + "/events", json=good, headers=token, verify=False).status_code == 204
    for machine in BAD_INVENTORIES:
        r = create(p2v_server, inventory(**machine))
        assert r.status_code == 422 and r.json()["error"] == "bad_field", (machine, r.text)
    for disk_fields in ({"plan": 7}, {"warnings": 5}, {"plan": ["ok", None]}):
        inv = inventory()
        inv["disks"][0].update(disk_fields)
        r = create(p2v_server, inv)
        assert r.status_code == 422 and r.json()["error"] == "bad_field", (disk_fields, r.text)
    for report in BAD_REPORTS:
        r = requests.post(base + "/repair", json=report, headers=token, verify=False)
        assert r.status_code == 422 and r.json()["error"] == "bad_field", (report, r.text)
    assert requests.get(base, headers=p2v_server.headers, verify=False).json()["repair"] in (None, {})


def spoil(server, job: str) -> None:
    """Stores what the API now refuses, as an older server would have kept it."""
    conn = sqlite3.connect(server.data_dir / "xenp2v.db", timeout=30)
    with conn:
        row = conn.execute("SELECT inventory FROM jobs WHERE id=?", (job,)).fetchone()
        inv = json.loads(row[0])
        inv["machine"].update(memory="16G", nics=[{"name": "eth0", "altnames": 3, "addresses": 4}])
        inv["memory"] = "lots"
        inv["disks"][0].update(plan=7, warnings=5)
        bad_event = {"disk": "d0", "phase": "capture", "sent": "lots", "rate": "fast",
                     "total": "big", "done": [], "eta": "soon", "message": 3}
        conn.execute("INSERT INTO events (job, at, event) VALUES (?, ?, ?)",
                     (job, 0, json.dumps(bad_event)))
        conn.execute("UPDATE jobs SET inventory=?, last_event=?, repair=? WHERE id=?",
                     (json.dumps(inv), json.dumps(bad_event),
                      json.dumps({"status": "planned", "steps": [3, {"step": "x", "diff": ["a"],
                                                                    "files": 2}],
                                  "warnings": 5}), job))
    conn.close()


def test_a_job_with_bad_records_shows_question_marks_and_never_breaks_the_list(p2v_server):
    bad = create(p2v_server).json()["id"]
    good = create(p2v_server, {**inventory(), "name": "db01"}).json()["id"]
    spoil(p2v_server, bad)
    s = signed_in(p2v_server)
    for path in ("/", "/parts/jobs"):
        r = s.get(p2v_server.url + path)
        assert r.status_code == 200, (path, r.text[-2000:])
        assert f'href="/jobs/{good}"' in r.text and f'href="/jobs/{bad}"' in r.text
    for path in (f"/jobs/{bad}", f"/parts/jobs/{bad}"):
        r = s.get(p2v_server.url + path)
        assert r.status_code == 200, (path, r.text[-2000:])
        assert "?" in r.text
    page = s.get(f"{p2v_server.url}/jobs/{bad}").text
    assert "Read plan" in page and "(VM: ?)" in page


@pytest.mark.parametrize("where", ["sent", "rate", "eta", "total"])
def test_the_list_survives_each_bad_event_field(p2v_server, where):
    job = create(p2v_server).json()["id"]
    conn = sqlite3.connect(p2v_server.data_dir / "xenp2v.db", timeout=30)
    with conn:
        event = {"disk": "d0", "phase": "capture", "rate": 5.0, where: ["?"]}
        conn.execute("INSERT INTO events (job, at, event) VALUES (?, ?, ?)",
                     (job, 0, json.dumps(event)))
        conn.execute("UPDATE jobs SET last_event=? WHERE id=?", (json.dumps(event), job))
    conn.close()
    s = signed_in(p2v_server)
    for path in ("/", "/parts/jobs", f"/jobs/{job}"):
        assert s.get(p2v_server.url + path).status_code == 200, path


def test_events_are_refused_beyond_a_mebibyte(p2v_server):
    job = create(p2v_server).json()
    r = requests.post(f"{p2v_server.url}/api/v1/jobs/{job['id']}/events", verify=False,
                      headers={"Authorization": f"Bearer {job['token']}"},
                      json=[{"disk": "d0", "phase": "capture", "message": "x" * 1000}] * 2000)
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
