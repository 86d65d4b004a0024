"""Resume: a cut connection, a server killed mid-transfer, an agent killed mid-transfer."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from agent.transfer import capture
from agent.transfer.client import Client
from agent.disk.plan import plan_disk
from agent.transfer.progress import Progress
from support import free_port, rescan, run
from sourcedisks import MiB, mounted
from test_capture_restore import settings_for

REPO = Path(__file__).resolve().parents[2]


def source_disk(loopdev, data_mib: int = 64) -> str:
    dev = loopdev(256 * MiB, "resume")
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    (part,) = rescan(dev)
    run("mkfs.ext4", "-q", part)
    rng = random.Random(3)
    with mounted(part, "ext4") as mnt:
        for i in range(data_mib // 8):
            (mnt / f"f{i}").write_bytes(rng.randbytes(8 * MiB))
    os.sync()
    return dev


def assert_image_matches(server, job: str, dev: str) -> None:
    """The server's image holds the source's bytes wherever the plan reads."""
    image = server.data_dir / "jobs" / job / "disks" / f"{Path(dev).name}.img"
    with open(dev, "rb") as src, open(image, "rb") as img:
        for s, e in plan_disk(dev).used:
            src.seek(s)
            img.seek(s)
            assert src.read(e - s) == img.read(e - s), f"bytes {s}-{e} differ"


class CuttingProxy:
    """TCP proxy to the server that, once `cut_after` bytes went up, resets every connection and
    refuses new ones for `down_for` seconds: a network cut in the middle of a transfer."""

    def __init__(self, port: int, cut_after: int, down_for: float = 2.0):
        self.target = ("127.0.0.1", port)
        self.cut_after, self.down_for = cut_after, down_for
        self.port = free_port()
        self.up = 0
        self.cuts = 0
        self.down_until = 0.0
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                _reset(client)
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if up:
                    self._count(len(data))
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _count(self, n: int) -> None:
        with self.lock:
            self.up += n
            if self.cuts or self.up < self.cut_after:
                return
            self.cuts += 1
            self.down_until = time.monotonic() + self.down_for
            socks, self.socks = self.socks, []
        for s in socks:
            _reset(s)

    def close(self) -> None:
        self.listener.close()


def _reset(s: socket.socket) -> None:
    """Abort the connection with a RST. shutdown() first: a close() alone would neither wake the
    pump thread blocked in recv() on it nor send anything while that recv() holds the socket."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def test_a_cut_connection_is_retried_and_the_capture_completes(loopdev, p2v_server):
    dev = source_disk(loopdev)
    proxy = CuttingProxy(p2v_server.port, cut_after=24 * MiB)
    try:
        settings = settings_for(p2v_server, disks=[dev], streams=4, compress="off")
        settings.server = f"https://127.0.0.1:{proxy.port}"
        result = capture.run(settings, identity={"system_uuid": str(uuid.uuid4())})
    finally:
        proxy.close()
    assert proxy.cuts == 1
    (disk,) = result.disks
    assert disk.sent >= 64 * MiB
    assert_image_matches(p2v_server, result.job, dev)


def test_a_server_killed_mid_transfer_is_waited_for(loopdev, p2v_server):
    dev = source_disk(loopdev)
    midway = threading.Event()

    def watch(event):
        if event.phase == "capture" and event.done > event.total // 3:
            midway.set()

    settings = settings_for(p2v_server, disks=[dev], streams=4, compress="off", bwlimit=32 * MiB)
    outcome = {}

    def agent():
        try:
            outcome["result"] = capture.run(settings, Progress([watch], interval=0.0),
                                            identity={"system_uuid": str(uuid.uuid4())})
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    # The server is restarted from this thread: it dies with the thread that started it.
    runner = threading.Thread(target=agent)
    runner.start()
    assert midway.wait(120), "the capture never got a third of the way"
    p2v_server.kill()
    killed_while_running = runner.is_alive()
    time.sleep(1.5)
    p2v_server.start()
    runner.join(300)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert killed_while_running
    (disk,) = result.disks
    assert disk.data_chunks >= 16
    jobs = json.loads(run(sys.executable, "-m", "server.cli", "jobs", "--json", "--data-dir",
                          str(p2v_server.data_dir), cwd=REPO).stdout)
    assert [d["state"] for j in jobs for d in j["disks"]] == ["sealed"]
    log = (p2v_server.data_dir / "jobs" / result.job / "agent.log").read_text()
    assert "retrying" in log  # it did wait for the server
    assert_image_matches(p2v_server, result.job, dev)


AGENT = """
import sys
from agent.transfer import capture
from agent.settings import Settings
s = Settings(server=sys.argv[1], token=sys.argv[2], fingerprint=sys.argv[3], disks=[sys.argv[4]],
             streams=2, compress="off", bwlimit=8 * 1024 * 1024)
capture.run(s, identity={"system_uuid": sys.argv[5]})
"""


def test_an_agent_killed_mid_transfer_resumes_and_sends_only_the_rest(loopdev, p2v_server):
    dev = source_disk(loopdev)
    machine = str(uuid.uuid4())
    agent = subprocess.Popen([sys.executable, "-c", AGENT, p2v_server.url, p2v_server.token,
                              p2v_server.fingerprint, dev, machine], cwd=REPO)
    client = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint)
    try:
        held: dict = {}
        deadline = time.monotonic() + 120
        while len(held) < 6:
            assert agent.poll() is None and time.monotonic() < deadline, "the agent ended early"
            time.sleep(0.2)
            jobs = client.request("GET", "/api/v1/jobs").json()
            if jobs:
                held = client.held_chunks(jobs[0]["id"], Path(dev).name)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    result = capture.run(settings_for(p2v_server, disks=[dev], compress="off"),
                         identity={"system_uuid": machine})
    assert result.resumed and result.job == jobs[0]["id"]
    (disk,) = result.disks
    assert disk.skipped_chunks >= len(held) - 1
    assert disk.sent <= (disk.data_chunks - disk.skipped_chunks) * disk.chunk_size
    assert_image_matches(p2v_server, result.job, dev)
