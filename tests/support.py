"""Test helpers shared by every suite: commands, loop devices, a real p2v-server process.

Imported as `support` (tests/ is on sys.path through the root conftest); a module named
`conftest` would be shadowed by tests/iso/conftest.py."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; a failure shows the command's stderr."""
    proc = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("This test needs root (loop devices, mount); run 'make test' as root.")



def loop_backing(dev: str) -> str | None:
    """The file (or device) loop device `dev` shows now; None when it is detached."""
    try:
        return Path(f"/sys/block/{Path(dev).name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def detach_loop(dev: str, backing: str | os.PathLike) -> None:
    """Unmount what is on `dev`, drop its partition nodes and detach it, but only while it still
    shows `backing`: a test that detached it itself may have freed the number for another user."""
    if loop_backing(dev) != os.path.realpath(backing):
        return
    subprocess.run(["umount", "-R", "-l", dev], capture_output=True)
    subprocess.run(["partx", "-d", dev], capture_output=True)
    subprocess.run(["losetup", "-d", dev], capture_output=True)


def rescan(dev: str) -> list[str]:
    """Make the partition nodes of `dev` and return them in order."""
    subprocess.run(["partx", "-u", dev], capture_output=True)
    subprocess.run(["partx", "-a", dev], capture_output=True)
    out = run("lsblk", "-lnpo", "NAME,TYPE", dev).stdout.split()
    return [name for name, kind in zip(out[::2], out[1::2]) if kind == "part"]


class P2VServer:
    """A real `p2v-server serve` in a subprocess, on 127.0.0.1, with its own data directory.

    ``url``, ``token`` and ``fingerprint`` are what it printed; ``kill()`` sends SIGKILL,
    ``stop()`` SIGTERM, ``start()`` starts it again on the same port and data directory.
    """

    def __init__(self, data_dir: Path, plain: bool = False, args: tuple[str, ...] = (),
                 host: str = "127.0.0.1", prefix: tuple[str, ...] = ()):
        """``host``: the address to listen on; ``prefix``: what the command runs under (the
        benchmark's `ip netns exec NS`)."""
        self.data_dir = Path(data_dir)
        self.plain = plain
        self.args = tuple(args)
        self.host = host
        self.prefix = tuple(prefix)
        self.port = free_port()
        self.url = f"{'http' if plain else 'https'}://{host}:{self.port}"
        self.log = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.token: str | None = None
        self.fingerprint: str | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "P2VServer":
        if self.proc and self.proc.poll() is None:
            raise AssertionError("The test server is already running.")
        start_at = self.log.stat().st_size if self.log.exists() else 0
        cmd = [*self.prefix, sys.executable, "-m", "server.cli", "serve", "--data-dir",
               str(self.data_dir), "--listen", f"{self.host}:{self.port}", *(["--plain-http"] if self.plain else []),
               *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=Path(__file__).resolve().parent.parent,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log.read_text(errors="replace")[start_at:]
                self.stop()
                raise AssertionError(f"p2v-server did not come up ({' '.join(cmd)}):\n{text}")
            time.sleep(0.05)
        banner = self.log.read_text(errors="replace")[start_at:]
        self.token = _banner_value(banner, "Token:")
        self.fingerprint = None if self.plain else _banner_value(banner, "Fingerprint:")
        return self

    def _healthy(self) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2, context=ctx) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: what a crash or `kill -9` does to the server."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies, so a killed test run leaves no server."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _banner_value(banner: str, key: str) -> str:
    for line in banner.splitlines():
        if line.strip().startswith(key):
            return line.split(key, 1)[1].strip()
    raise AssertionError(f"p2v-server printed no '{key}' line:\n{banner}")
