"""A TCP proxy in front of a p2v-server that breaks connections as a bad link or a crash would.

Tests and the chaos suite (`make chaos`) put it between the agent and the server. Each accepted
connection is forwarded byte for byte; while ``cuts`` is above zero, a connection is broken once
``after`` bytes have passed (each connection with ``probability``; coming back from the server, or either way with
``direction="both"``): reset (RST), closed (FIN) or stalled (nothing more passes for ``stall``
seconds, then it is closed). With ``rate`` (bytes per second) the server's answers pass no
faster than that, all connections together: a slow link; ``up_rate`` does the same for what
the agent sends (a capture's chunks). Imported as `cutproxy` (tests/ is on
sys.path).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

from agent.transfer.link import RateLimit

MODES = ("reset", "fin", "stall")


class CutProxy:
    """127.0.0.1:``port`` -> ``target_host``:``target_port``; ``cut`` counts the connections broken."""

    def __init__(self, target_port: int, after: int | tuple[int, int] = 1 << 20, cuts: int = 0,
                 modes: tuple[str, ...] = ("reset",), stall: float = 75.0, seed: int = 0,
                 direction: str = "down", probability: float = 1.0, target_host: str = "127.0.0.1",
                 rate: int | None = None, up_rate: int | None = None):
        self.target_port = target_port
        self.target_host = target_host  # e.g. a server in a network namespace, behind a veth
        self.after = after
        self.cuts = cuts
        self.modes = modes
        self.stall = stall
        self.direction = direction
        self.probability = probability  # of a connection being doomed while cuts are left
        self.random = random.Random(seed)
        self.limit = RateLimit(rate)
        self.up_limit = RateLimit(up_rate)
        self.cut = {m: 0 for m in MODES}
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def add_cuts(self, n: int) -> None:
        with self._lock:
            self.cuts += n

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                doomed = self.cuts > 0 and self.random.random() < self.probability
                if doomed:
                    self.cuts -= 1
                after = self.after if isinstance(self.after, int) else self.random.randint(*self.after)
                mode = self.random.choice(self.modes)
            link = _Link(self, client, after if doomed else None, mode)
            threading.Thread(target=link.run, daemon=True).start()


class _Link:
    """One proxied connection: two pumps, one shared count of the bytes that passed."""

    def __init__(self, proxy: CutProxy, client: socket.socket, after: int | None, mode: str):
        self.proxy, self.client, self.after, self.mode = proxy, client, after, mode
        self.passed = 0
        self.broken = False
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            self.server = socket.create_connection((self.proxy.target_host, self.proxy.target_port), timeout=10)
        except OSError:
            self.client.close()
            return
        self.server.settimeout(None)
        up = threading.Thread(target=self._pump, args=(self.client, self.server, False), daemon=True)
        up.start()
        self._pump(self.server, self.client, True)
        up.join()
        for s in (self.client, self.server):
            s.close()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        counted = down or self.proxy.direction == "both"
        try:
            while True:
                data = src.recv(65536)
                if not data or self.broken:
                    if not self.broken:
                        dst.shutdown(socket.SHUT_WR)
                    return
                with self.lock:
                    cut_here = (counted and self.after is not None and not self.broken
                                and self.passed + len(data) > self.after)  # a byte held back
                    if cut_here:
                        self.broken = True
                    elif counted:
                        self.passed += len(data)
                if cut_here:
                    dst.sendall(data[:self.after - self.passed])
                    self._break()
                    return
                (self.proxy.limit if down else self.proxy.up_limit).take(len(data))
                dst.sendall(data)
        except OSError:
            if not self.broken:
                for s in (self.client, self.server):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def _break(self) -> None:
        if self.mode == "stall":
            time.sleep(self.proxy.stall)
        with self.proxy._lock:
            self.proxy.cut[self.mode] += 1
        if self.mode == "reset":  # closed with unsent data discarded: the kernel sends RST
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # shutdown wakes the other pump's recv(); close() alone would leave the socket open
        # while that recv() holds it, and nothing would reach the agent.
        for s, how in ((self.client, socket.SHUT_RD if self.mode == "reset" else socket.SHUT_RDWR),
                       (self.server, socket.SHUT_RDWR)):
            try:
                s.shutdown(how)
            except OSError:
                pass
