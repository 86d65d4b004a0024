"""The server client: certificate pinning, token, bounded retries, plain HTTP."""

from __future__ import annotations

import time

import pytest

from agent.transfer.client import Client, ServerError
from support import free_port


def test_pinned_certificate_and_token(p2v_server):
    ok = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint)
    assert ok.health()["protocol"] == 1
    assert ok.request("GET", "/api/v1/jobs").json() == []
    colons = ":".join(p2v_server.fingerprint.removeprefix("sha256:")[i:i + 2] for i in range(0, 64, 2))
    assert Client(p2v_server.url, p2v_server.token, colons.upper()).health()["ok"]

    wrong = Client(p2v_server.url, p2v_server.token, "sha256:" + "0" * 64, retry_for=5)
    with pytest.raises(ServerError, match="does not match the fingerprint given .* it presents "
                                          + p2v_server.fingerprint):
        wrong.health()
    unpinned = Client(p2v_server.url, p2v_server.token, retry_for=5)
    with pytest.raises(ServerError, match="--fingerprint sha256:HEX"):
        unpinned.health()
    # Chunk bodies travel on their own connections (not requests'): the same pin, the same words.
    digest = "blake3:" + "0" * 64
    with pytest.raises(ServerError, match="does not match the fingerprint given .* it presents "
                                          + p2v_server.fingerprint):
        wrong.put_chunk("nope", "sda", 0, b"x", digest, False)
    with pytest.raises(ServerError, match="--fingerprint sha256:HEX"):
        unpinned.get_chunk("nope", "sda", 0, memoryview(bytearray(16)))
    with pytest.raises(ServerError, match="answered 404: There is no job nope") as err:
        ok.put_chunk("nope", "sda", 0, b"x", digest, False)
    assert err.value.status == 404
    with pytest.raises(ServerError, match="refused the token") as err:
        Client(p2v_server.url, "not-the-token", p2v_server.fingerprint).request("GET", "/api/v1/jobs")
    assert err.value.status == 401
    with pytest.raises(ServerError, match="answered 404: There is no job nope"):
        ok.job("nope")


def test_bad_settings_are_sentences():
    with pytest.raises(ServerError, match="not a URL"):
        Client("server:8443", "t")
    with pytest.raises(ServerError, match="No token given"):
        Client("https://h:1", "")
    with pytest.raises(ServerError, match="not of the form sha256"):
        Client("https://h:1", "t", "md5:abc")


def test_an_unreachable_server_is_retried_for_a_bounded_time():
    client = Client(f"https://127.0.0.1:{free_port()}", "t", "sha256:" + "a" * 64, retry_for=3)
    start = time.monotonic()
    with pytest.raises(ServerError, match="kept failing for 3 s.*resumes where it stopped"):
        client.health()
    assert 2 <= time.monotonic() - start < 10


def test_plain_http(p2v_server_factory):
    server = p2v_server_factory(plain=True)
    assert Client(server.url, server.token).health()["ok"]
