"""The server client: certificate pinning, token, bounded retries, plain HTTP."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from agent.transfer.client import Client, ServerError
import cutproxy
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


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_that_cannot_be_read_is_named(p2v_server, variable, monkeypatch, tmp_path):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "nonexistent.pem"))
    with pytest.raises(ServerError, match=f"The CA bundle {variable}=.*nonexistent.pem cannot be "
                                          rf"read \(No such file or directory\): correct the path "
                                          f"or unset {variable}, or pass the fingerprint"):
        Client(p2v_server.url, p2v_server.token, retry_for=5).health()
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    monkeypatch.setenv(variable, str(tmp_path / "junk.pem"))
    with pytest.raises(ServerError, match=f"The CA bundle {variable}=.*junk.pem cannot be read"):
        Client(p2v_server.url, p2v_server.token, retry_for=5).get_chunk(
            "nope", "sda", 0, memoryview(bytearray(16)))
    # A pinned certificate needs no bundle.
    assert Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint).health()["ok"]


def test_a_certificate_the_systems_store_trusts_is_verified(p2v_server, monkeypatch):
    """A site CA installed in the system's store (here SSL_CERT_FILE, as OpenSSL reads it) is
    trusted without a fingerprint, as certifi's CAs are; a bundle named in the environment
    still counts."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cert = str(p2v_server.data_dir / "tls" / "cert.pem")
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    assert Client(p2v_server.url, p2v_server.token, retry_for=5).health()["ok"]
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    assert Client(p2v_server.url, p2v_server.token, retry_for=5).health()["ok"]


def test_the_wrong_scheme_is_said_at_once(p2v_server, p2v_server_factory):
    plain = p2v_server_factory(plain=True)
    tls_as_http = p2v_server.url.replace("https://", "http://")
    plain_as_https = plain.url.replace("http://", "https://")
    start = time.monotonic()
    with pytest.raises(ServerError, match=f"The server at {tls_as_http} speaks HTTPS \\(TLS\\): "
                                          f"give {p2v_server.url}, as p2v-server printed it, "
                                          "with the fingerprint"):
        Client(tls_as_http, p2v_server.token, retry_for=60).health()
    with pytest.raises(ServerError, match=f"The server at {plain_as_https} speaks plain HTTP, not "
                                          f"TLS: give {plain.url}, as p2v-server printed it, and "
                                          "no fingerprint"):
        Client(plain_as_https, plain.token, p2v_server.fingerprint, retry_for=60).put_chunk(
            "nope", "sda", 0, b"x", "blake3:" + "0" * 64, False)
    assert time.monotonic() - start < 10


def test_a_server_that_hangs_up_is_retried_in_either_scheme():
    """A closed connection is also what a TLS server does to plain HTTP: the client asks in the
    other scheme, and a server that hangs up on that too is a network fault, retried."""
    import socket
    import threading
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(1)
            conn.close()
    threading.Thread(target=hang_up, daemon=True).start()
    try:
        for url, pin in ((f"http://127.0.0.1:{port}", None),
                         (f"https://127.0.0.1:{port}", "sha256:" + "a" * 64)):
            start = time.monotonic()
            with pytest.raises(ServerError, match="kept failing for 2 s"):
                Client(url, "t", pin, retry_for=2).health()
            assert 1.5 <= time.monotonic() - start < 10
    finally:
        listener.close()


class _TLSFrontEnd(cutproxy.CutProxy):
    """A TLS front end (nginx, a Go server) before a TLS p2v-server: resets the first
    ``resets`` TLS connections (a cut link), forwards the others, and answers a plain HTTP
    request with the 400 those front ends send."""

    def __init__(self, target_port: int, resets: int = 1):
        self.resets = resets
        self.plain_asked = 0
        super().__init__(target_port)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        if client.recv(1, socket.MSG_PEEK) != b"\x16":   # not a TLS handshake record
            client.recv(65536)
            with self._lock:
                self.plain_asked += 1
            body = b"The plain HTTP request was sent to HTTPS port\n"
            head = (b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            client.sendall(head + body)
            client.close()
            return
        with self._lock:
            reset, self.resets = self.resets > 0, self.resets - 1
        if reset:
            client.recv(65536)   # the ClientHello, then a reset
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        cutproxy._Link(self, client, None, "reset").run()


def test_a_reset_through_a_tls_front_end_is_retried_not_blamed_on_the_scheme(p2v_server):
    """F6: a TLS front end answers plain HTTP with "HTTP/1.1 400"; one reset of a TLS
    connection through it is a fault of the moment (a handshake goes through), retried, not
    "speaks plain HTTP, not TLS"."""
    proxy = _TLSFrontEnd(p2v_server.port)
    try:
        client = Client(proxy.url("https"), p2v_server.token, p2v_server.fingerprint,
                        retry_for=30, backoff=(0.2, 1.0))
        start = time.monotonic()
        assert client.health()["ok"]
        assert time.monotonic() - start < 10
        assert proxy.resets < 0 and proxy.connections >= 3   # reset, handshake check, retry
        # A reset of a chunk's own connection too.
        proxy.resets = 1
        client._drop_link()
        with pytest.raises(ServerError, match="answered 404: There is no job nope"):
            client.put_chunk("nope", "sda", 0, b"x", "blake3:" + "0" * 64, False)
    finally:
        proxy.close()


def test_https_to_a_plain_service_that_is_not_a_p2v_server_says_so():
    """https:// to a plain HTTP service that is not a p2v-server (its health is not the
    server's JSON): check the address and port, not "give http://"."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{other.server_address[1]}"
    try:
        start = time.monotonic()
        with pytest.raises(ServerError, match=f"The server at {url} answers plain HTTP but is not "
                                              "a p2v-server: check the address and port"):
            Client(url, "t", "sha256:" + "a" * 64, retry_for=60).health()
        assert time.monotonic() - start < 10
    finally:
        other.shutdown()
        other.server_close()
