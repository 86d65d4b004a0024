"""/metrics, read with prometheus_client's own parser, says what a real capture and restore did."""

from __future__ import annotations

import shutil
import uuid

import pytest
import requests
import urllib3

from agent.transfer import capture, restore
from agent.transfer.progress import Progress
from agent.settings import Settings
from test_dashboard import source_disk  # noqa: F401 (a fixture)

parser = pytest.importorskip("prometheus_client.parser")
urllib3.disable_warnings()


def scrape(server, token: str) -> dict:
    r = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"},
                     verify=False)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in parser.text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict, name: str, **labels) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def test_metrics_match_a_capture_and_a_restore(source_disk, p2v_server_factory, loopdev):
    dev, _ = source_disk
    server = p2v_server_factory(args=("--metrics-token", "scrape-only-token"))
    settings = Settings(server=server.url, token=server.token, fingerprint=server.fingerprint)
    for token in ("", "wrong", server.token + "x"):
        assert requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"},
                            verify=False).status_code == 401
    assert requests.get(server.url + "/api/v1/jobs", verify=False,
                        headers={"Authorization": "Bearer scrape-only-token"}).status_code == 401

    result = capture.run(Settings(**{**settings.__dict__, "disks": [dev], "name": "metrics"}),
                         Progress(), identity={"system_uuid": str(uuid.uuid4())})
    (disk,) = result.disks
    target = loopdev(disk.size, "target")
    got = restore.run(Settings(**{**settings.__dict__, "job": result.job}), target)

    m = scrape(server, "scrape-only-token")
    assert scrape(server, server.token).keys() >= m.keys()
    job = requests.get(f"{server.url}/api/v1/jobs/{result.job}", headers=server.headers,
                       verify=False).json()
    assert value(m, "xenp2v_chunks_written_total") == disk.data_chunks
    assert value(m, "xenp2v_received_bytes_total") == disk.sent
    assert value(m, "xenp2v_stored_bytes") == job["disks"][0]["held_bytes"] > 0
    assert value(m, "xenp2v_restore_bytes_total") == got.received > 0
    assert value(m, "xenp2v_seals_total") == 1
    for name in ("xenp2v_chunk_resends_total", "xenp2v_chunk_digest_failures_total",
                 "xenp2v_seal_failures_total", "xenp2v_image_digest_failures_total"):
        assert value(m, name) == 0, name
    assert value(m, "xenp2v_jobs", state="sealed") == 1
    assert value(m, "xenp2v_jobs", state="receiving") == 0
    free = shutil.disk_usage(server.data_dir).free
    assert abs(value(m, "xenp2v_data_dir_free_bytes") - free) < 256 * 1024 * 1024
    route = "/api/v1/jobs/{job}/disks/{disk}/chunks/{index}"
    puts = value(m, "xenp2v_http_request_duration_seconds_count", method="PUT", route=route,
                 status="2xx")
    assert puts == disk.data_chunks
    assert value(m, "xenp2v_http_request_duration_seconds_bucket", method="PUT", route=route,
                 status="2xx", le="+Inf") == puts
    assert value(m, "xenp2v_http_request_duration_seconds_sum", method="PUT", route=route,
                 status="2xx") > 0
