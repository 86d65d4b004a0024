"""Connections that hold the server's descriptors: idle ones, ones that trickle their headers,
too many from one address, and what the server logs once it has no descriptor left. Against a
real p2v-server, with raw sockets."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
import time

import requests

from server.guard import HEADER_DEADLINE, MAX_PER_ADDRESS
from xenp2v import protocol as p


def tls_socket(server) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "cert.pem"))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=30),
                               server_hostname="127.0.0.1")


def read_all(sock: socket.socket) -> bytes:
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return got


IDLE_TIMEOUT = 5.0


def test_idle_and_trickling_connections_are_closed(p2v_server_factory):
    p2v_server = p2v_server_factory(args=("--idle-timeout", str(IDLE_TIMEOUT)))
    idle = tls_socket(p2v_server)                      # handshake done, never a request
    trickler = tls_socket(p2v_server)
    stop = threading.Event()

    def trickle():                                     # one header byte a second, for ever
        line = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        for byte in line:
            if stop.is_set():
                return
            try:
                trickler.send(bytes([byte]))
            except (OSError, ssl.SSLError):
                return
            time.sleep(1)

    started = time.monotonic()
    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    closed_idle = {}

    def wait_idle():
        read_all(idle)
        closed_idle["after"] = time.monotonic() - started

    waiter = threading.Thread(target=wait_idle, daemon=True)
    waiter.start()
    answer = read_all(trickler)
    trickled_for = time.monotonic() - started
    stop.set()
    waiter.join(timeout=IDLE_TIMEOUT + 10)
    assert trickled_for < HEADER_DEADLINE + 10, trickled_for
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "request_timeout" and "headers" in body["detail"], body
    assert closed_idle.get("after", 1e9) < IDLE_TIMEOUT + 10, closed_idle
    log = p2v_server.log.read_text()
    assert log.count("its request line and headers took longer than") == 1, log[-2000:]
    assert "Traceback" not in log
    idle.close()
    trickler.close()


def test_one_address_is_capped_and_running_out_of_descriptors_is_one_line_now_and_then(
        p2v_server_factory):
    server = p2v_server_factory(plain=True)
    held: list[socket.socket] = []

    def connect(source: str) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))
        held.append(s)
        return s

    def served(s: socket.socket) -> bool:
        """Whether the server answers a request on this connection."""
        try:
            s.sendall(b"GET " + p.health_path().encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    try:
        mine = [connect("127.0.0.2") for _ in range(MAX_PER_ADDRESS + 5)]
        answered = [served(s) for s in mine]
        assert answered.count(True) == MAX_PER_ADDRESS, answered.count(True)
        assert requests.get(server.url + p.health_path(), timeout=10).ok   # others still get in

        # Few descriptors left: connections from many addresses exhaust them.
        in_use = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
        subprocess.run(["prlimit", f"--pid={server.proc.pid}", f"--nofile={in_use + 40}"], check=True)
        for n in range(3, 6):
            for _ in range(MAX_PER_ADDRESS // 2):
                connect(f"127.0.0.{n}")
        time.sleep(7)                                  # asyncio retries the accept each second
    finally:
        for s in held:
            s.close()
    log = server.log.read_text()
    lines = [line for line in log.splitlines() if "Cannot accept connections" in line]
    assert 1 <= len(lines) <= 3, log[-3000:]
    assert "Traceback" not in log and "out of system resource" not in log, log[-3000:]
    assert log.count("Refused a connection from 127.0.0.2") == 1, log[-3000:]
    deadline = time.monotonic() + 10                    # descriptors back: served again
    while True:
        try:
            if requests.get(server.url + p.health_path(), timeout=5).ok:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the server does not accept connections again"
        time.sleep(0.5)
