"""A shaped link for the benchmark: the receiving side in a network namespace behind a veth pair.

The sender (agent, dd, partclone, nbdkit) stays in the host's namespace at SRC; the receiver
(p2v-server, nc, nbdcopy) runs in the namespace ``xenp2v-bench`` at DST, through
``ip netns exec`` (which execs, so the PID is the receiver's). Both ends of the veth pair are
shaped with ``tc``: a token bucket (tbf) at the link's rate each way, and a one-way delay with
netem where the kernel has it. Kernels without netem (CONFIG_NET_SCH_NETEM unset, as on the
build machine) get the rate alone; ``Link.delay_ms`` is then 0 and the table says so.

The wire counter counts what crosses the veth (both directions, whole IP packets).
"""

from __future__ import annotations

import subprocess
import time

from bench.measure import counted_bytes

NS = "xenp2v-bench"
SRC_IF, DST_IF = "xp2v-src", "xp2v-dst"
SRC, DST = "10.213.77.1", "10.213.77.2"
TABLE = "xenp2v_bench_link"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def in_ns(cmd: list[str]) -> list[str]:
    """`cmd` run inside the receiving namespace."""
    return ["ip", "netns", "exec", NS, *cmd]


class Link:
    """A veth pair shaped to `rate_mbit` each way (plus `delay_ms` one way, if netem exists).

    Use as a context manager: the namespace and the veth pair are made on entry and removed on
    exit (also what an interrupted earlier run left behind).
    """

    def __init__(self, name: str, rate_mbit: int, delay_ms: float = 0.5):
        self.name = name
        self.rate_mbit = rate_mbit
        self.want_delay_ms = delay_ms
        self.delay_ms = 0.0

    def __enter__(self) -> "Link":
        teardown()
        sh("ip", "netns", "add", NS)
        sh("ip", "link", "add", SRC_IF, "type", "veth", "peer", "name", DST_IF, "netns", NS)
        sh("ip", "addr", "add", f"{SRC}/30", "dev", SRC_IF)
        sh("ip", "link", "set", SRC_IF, "up")
        sh(*in_ns(["ip", "addr", "add", f"{DST}/30", "dev", DST_IF]))
        sh(*in_ns(["ip", "link", "set", DST_IF, "up"]))
        sh(*in_ns(["ip", "link", "set", "lo", "up"]))
        delays = [self._shape([], SRC_IF), self._shape(["ip", "netns", "exec", NS], DST_IF)]
        self.delay_ms = min(delays)
        return self

    def _shape(self, prefix: list[str], dev: str) -> float:
        """tbf at the rate, under netem's delay when the kernel has netem: the delay it got."""
        rate = self.rate_mbit * 1_000_000 // 8          # bytes per second
        # Burst: 2 ms of the rate, at least a 64 KiB GSO packet; queue: 20 ms of the rate.
        burst = max(rate // 500, 128 * 1024)
        limit = max(rate // 50, 4 * burst)
        tbf = ["tbf", "rate", f"{self.rate_mbit}mbit", "burst", str(burst), "limit", str(limit)]
        got = 0.0
        if self.want_delay_ms:
            netem = sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
                       "delay", f"{self.want_delay_ms}ms", "limit", "100000", check=False)
            if netem.returncode == 0:
                sh(*prefix, "tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf)
                return self.want_delay_ms
        sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", *tbf)
        return got

    def describe(self) -> str:
        delay = (f"{self.delay_ms:g} ms one way" if self.delay_ms
                 else "no added delay (this kernel has no netem)")
        return f"{self.name}: veth into a namespace, tbf {self.rate_mbit} Mbit/s each way, {delay}"

    def __exit__(self, *exc) -> None:
        teardown()


def teardown() -> None:
    sh("ip", "link", "del", SRC_IF, check=False)     # takes its peer with it
    sh("ip", "netns", "del", NS, check=False)


class LinkCounter:
    """Bytes crossing the veth pair both ways (the host's end: out and in), like WireCounter."""

    def __init__(self):
        sh("nft", "delete", "table", "inet", TABLE, check=False)
        sh("nft", "add", "table", "inet", TABLE)
        sh("nft", "add", "chain", "inet", TABLE, "out",
           "{ type filter hook output priority 0; policy accept; }")
        sh("nft", "add", "chain", "inet", TABLE, "in",
           "{ type filter hook input priority 0; policy accept; }")

    def start(self, port: int) -> None:
        for chain, key in (("out", "oif"), ("in", "iif")):
            sh("nft", "flush", "chain", "inet", TABLE, chain)
            for direction in ("dport", "sport"):
                sh("nft", "add", "rule", "inet", TABLE, chain, key, SRC_IF, "tcp", direction,
                   str(port), "counter")

    def bytes(self) -> int:
        return sum(counted_bytes(sh("nft", "-j", "list", "chain", "inet", TABLE, chain).stdout)
                   for chain in ("out", "in"))

    def close(self) -> None:
        sh("nft", "delete", "table", "inet", TABLE, check=False)


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Until something listens on `port` inside the namespace (without connecting to it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh(*in_ns(["ss", "-Hltn", f"sport = :{port}"]), check=False).stdout
        if out.strip():
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listened on port {port} in {NS} within {timeout:.0f} s")
