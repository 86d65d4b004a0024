"""A TCP proxy in front of a p2v-server that breaks connections as a bad link or a crash would.

Tests and the chaos suite (`make chaos`) put it between the agent and the server. Each accepted
connection is forwarded byte for byte; while ``cuts`` is above zero, a connection is broken once
``after`` bytes have come back from the server: reset (RST), closed (FIN) or stalled (nothing more
passes until the agent gives up). Imported as `cutproxy` (tests/ is on sys.path).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

MODES = ("reset", "fin", "stall")


class CutProxy:
    """127.0.0.1:``port`` -> 127.0.0.1:``target_port``; ``cut`` counts the connections broken."""

    def __init__(self, target_port: int, after: int | tuple[int, int] = 1 << 20, cuts: int = 0,
                 modes: tuple[str, ...] = ("reset",), stall: float = 75.0, seed: int = 0):
        self.target_port = target_port
        self.after = after
        self.cuts = cuts
        self.modes = modes
        self.stall = stall
        self.random = random.Random(seed)
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
                doomed = self.cuts > 0
                if doomed:
                    self.cuts -= 1
                after = self.after if isinstance(self.after, int) else self.random.randint(*self.after)
                mode = self.random.choice(self.modes)
            threading.Thread(target=self._serve, args=(client, after if doomed else None, mode),
                             daemon=True).start()

    def _serve(self, client: socket.socket, after: int | None, mode: str) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        threading.Thread(target=_pump, args=(client, server, None, None), daemon=True).start()
        broken = _pump(server, client, after, mode, self.stall)
        if broken:
            with self._lock:
                self.cut[mode] += 1
            if mode == "reset":  # closed with unsent data discarded: the kernel sends RST
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # shutdown first: close() alone leaves the socket open while the other pump's recv()
        # still holds it, and nothing would reach the agent.
        for s, how in ((client, socket.SHUT_RD if broken and mode == "reset" else socket.SHUT_RDWR),
                       (server, socket.SHUT_RDWR)):
            try:
                s.shutdown(how)
            except OSError:
                pass
            s.close()


def _pump(src: socket.socket, dst: socket.socket, after: int | None, mode: str | None,
          stall: float = 0.0) -> bool:
    """Copies src to dst until either ends; True if it broke the stream after ``after`` bytes."""
    passed = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return False
            if after is not None and passed + len(data) >= after:
                dst.sendall(data[:after - passed])
                if mode == "stall":
                    time.sleep(stall)
                return True
            dst.sendall(data)
            passed += len(data)
    except OSError:
        return False
