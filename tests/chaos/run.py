"""`make chaos`: the standing fault suite. Real agent, real p2v-server, loopback and a network
namespace behind a veth pair, bounded in time.

What it does to them, each part until its share of the time is used or its count reached:

- captures and restores through a cutting proxy (tests/cutproxy.py): resets, FINs and stalls at
  random points of either direction, on every connection;
- the same across a veth pair into a network namespace the suite makes (`ip netns`), the link
  taken down now and then;
- the server killed with SIGKILL at each step of a chunk write, a seal and a restore read
  (tests/chaos/stepkill.py), and at random moments of captures and restores, and started again;
- hostile requests: corrupted, truncated, oversize and zstd-bomb chunk bodies, malformed HTTP
  (bad request lines, headers that are not UTF-8 or carry the token), and a fuzzer over every
  route, method and header;
- a full disk (a tmpfs data directory): the capture stops with 507, resumes once there is room;
- 16 slow clients trickling a byte every 5 s while a capture runs.

Every capture is restored and compared byte for byte with its source disk. It prints a table of
counts and ends PASS only when every run ended byte-identical, no request got a 5xx (the server
logged no failure), and the counts reached their floors. `--short` is the form `make test` runs
(tests/chaos/test_chaos_short.py). Needs root (loop devices, tmpfs).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for extra in (REPO, REPO / "tests", REPO / "tests" / "server", REPO / "tests" / "chaos"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from agent.transfer import capture, restore  # noqa: E402
from agent.transfer.capture import CaptureError  # noqa: E402
from agent.transfer.client import Client  # noqa: E402
from agent.settings import Settings  # noqa: E402
from cutproxy import CutProxy  # noqa: E402
from stepkill import STEPS  # noqa: E402
from support import P2VServer, rescan, run  # noqa: E402
from test_server_hostile import fuzz, raw  # noqa: E402
from wire import Wire  # noqa: E402
from xenp2v import protocol as p  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
SOURCE_SIZE = 32 * MiB


@dataclass
class Budget:
    """Time (s) and floors of each part; the full run is about 15 minutes."""

    cut_capture_s: float = 240               # at least, and until the cut floors are reached
    kill_s: float = 60                       # at least, and until the kill floor is reached
    fuzz_requests: int = 10_000
    slow_clients: int = 16
    slow_s: float = 40
    stall: float = 3.0                       # a stalled connection, before it is closed
    timeout: tuple = (3.0, 2.5)              # the agent's connect and read timeouts
    # Test knobs, explicit: jobs of 64 KiB chunks (the protocol's smallest) so that a cut
    # every few hundred KiB still lets every chunk through, and retries that wait 0.05 s
    # doubling to 1 s instead of 0.5 s to 15 s. The agent still retries each call for
    # `retry_for` seconds; only the waits between its attempts are shorter.
    chunk_size: int = 64 * KiB
    backoff: tuple = (0.05, 1.0)
    cut_after: tuple = (8 * KiB, 1 * MiB)    # bytes through a doomed connection before its cut
    netns_s: float = 60                      # migrations to a server in a namespace, link flapping
    step_rounds: int = 3                     # kills at every step of STEPS, this many times each
    max_s: float = 840                       # the cut and kill parts stop here whatever counts
    floors: dict = field(default_factory=lambda: {"kills": 50, "cuts during capture": 200,
                                                  "cuts during restore": 100,
                                                  "fuzzed requests": 10_000})


SHORT = Budget(cut_capture_s=0, kill_s=0, fuzz_requests=300, slow_clients=0, slow_s=0,
               stall=2.5, timeout=(3.0, 2.0), max_s=50, step_rounds=1, netns_s=0, cut_after=(32 * KiB, 2 * MiB),
               floors={"kills": 2, "cuts during capture": 3, "cuts during restore": 2,
                       "fuzzed requests": 300})


class Namespace:
    """A network namespace the suite makes, ``name``, joined to the host by a veth pair: the
    host's end ``outer_if`` at ``outer``, the namespace's at ``inner``. Removed on exit."""

    name, outer_if, inner_if = "xenp2v-chaos", "xp2v-chaos-o", "xp2v-chaos-i"
    outer, inner = "10.213.78.1", "10.213.78.2"
    downs = 0  # times its link was taken down

    def __enter__(self) -> "Namespace":
        self.__exit__()
        ns = ("ip", "netns", "exec", self.name)
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.outer_if, "type", "veth", "peer", "name", self.inner_if,
            "netns", self.name)
        run("ip", "addr", "add", f"{self.outer}/30", "dev", self.outer_if)
        run("ip", "link", "set", self.outer_if, "up")
        run(*ns, "ip", "addr", "add", f"{self.inner}/30", "dev", self.inner_if)
        run(*ns, "ip", "link", "set", self.inner_if, "up")
        run(*ns, "ip", "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "link", "del", self.outer_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@dataclass
class Tally:
    counts: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    failures: list = field(default_factory=list)

    def fail(self, text: str) -> None:
        print(f"FAILURE: {text}", flush=True)
        self.failures.append(text)


class Chaos:
    def __init__(self, work: Path, budget: Budget, seed: int):
        self.work, self.budget = work, budget
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.loops: list[str] = []
        self.mounts: list[Path] = []
        self.servers: list[P2VServer] = []

    # --- fixtures ----------------------------------------------------------------------------

    def loop(self, size: int, name: str) -> str:
        backing = self.work / f"{name}.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        dev = run("losetup", "--show", "-f", "-P", str(backing)).stdout.strip()
        self.loops.append(dev)
        return dev

    def source(self) -> str:
        """32 MiB, MBR: a 24 MiB ext4 with 8 MiB of random files, then 6 MiB of zeros in use."""
        dev = self.loop(SOURCE_SIZE, "source")
        run("sfdisk", "-q", dev, input="label: dos\nstart=2048, size=24M, type=83\nsize=6M, type=da\n")
        part = rescan(dev)[0]
        run("mkfs.ext4", "-q", "-b", "4096", part)
        mnt = Path(tempfile.mkdtemp(prefix="chaos-mnt-", dir=self.work))
        run("mount", part, str(mnt))
        try:
            for i in range(4):
                (mnt / f"f{i}").write_bytes(random.Random(i).randbytes(2 * MiB))
        finally:
            run("umount", str(mnt))
        os.sync()
        return dev

    def server(self, data_dir: Path | None = None) -> P2VServer:
        server = P2VServer(data_dir or self.work / f"data-{len(self.servers)}")
        self.servers.append(server)
        return server.start()

    def cleanup(self) -> None:
        for server in self.servers:
            server.stop()
        for mnt in self.mounts:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        for dev in reversed(self.loops):
            subprocess.run(["partx", "-d", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)

    # --- one migration, checked ------------------------------------------------------------

    def settings(self, server: P2VServer, url: str | None = None, **kw) -> Settings:
        return Settings(server=url or server.url, token=server.token,
                        fingerprint=server.fingerprint, compress="off", **kw)

    def client(self, url: str, server: P2VServer) -> Client:
        return Client(url, server.token, server.fingerprint, retry_for=300,
                      timeout=self.budget.timeout, backoff=self.budget.backoff)

    def migrate(self, server: P2VServer, src: str, what: str, capture_url: str | None = None,
                restore_url: str | None = None) -> str | None:
        """Capture `src`, restore it into a new file, compare: the job id, or None on failure."""
        client = self.client(capture_url or server.url, server)
        try:
            job = capture.run(self.settings(server, capture_url, disks=[src], streams=4),
                              client=client, identity={"system_uuid": str(uuid.uuid4())},
                              chunk_size=self.budget.chunk_size).job
        except CaptureError as err:
            self.tally.fail(f"{what}: capture failed: {err}")
            return None
        self.check_restore(server, job, src, what, restore_url)
        return job

    def check_restore(self, server, job, src, what, restore_url=None) -> None:
        target = self.work / f"target-{job}.img"
        client = self.client(restore_url or server.url, server)
        try:
            restore.run(self.settings(server, restore_url, job=job, streams=4), str(target),
                        client=client)
        except restore.RestoreError as err:
            self.tally.fail(f"{what}: restore of {job} failed: {err}")
            return
        finally:
            self.tally.counts["runs"] += 1
        same = _digest(src) == _digest(str(target))
        self.tally.counts["bytes compared"] += 2 * SOURCE_SIZE
        if not same:
            self.tally.fail(f"{what}: {job} restored is not byte-identical to {src}")
        else:
            self.tally.counts["runs byte-identical"] += 1
        target.unlink()

    # --- the parts ---------------------------------------------------------------------------

    def cuts(self, src: str, link: Namespace | None = None) -> None:
        """Migrations through two cutting proxies (capture, restore) until the cut floors are
        reached and `cut_capture_s` has passed; with `link`, the server runs in a network
        namespace behind a veth pair, the proxies cut across it and the link is taken down now
        and then (`netns_s` seconds of migrations)."""
        if link:
            server = P2VServer(self.work / "data-netns", host=link.inner,
                               prefix=("ip", "netns", "exec", link.name))
            self.servers.append(server)
            server.start()
        else:
            server = self.server()
        where = "across the veth" if link else "on loopback"
        target = link.inner if link else "127.0.0.1"
        capture_proxy = CutProxy(server.port, after=self.budget.cut_after, cuts=1 << 30,
                                 modes=("reset", "fin", "stall"), stall=self.budget.stall, seed=1,
                                 direction="both", target_host=target)
        restore_proxy = CutProxy(server.port, after=self.budget.cut_after, cuts=1 << 30,
                                 modes=("reset", "fin", "stall"), stall=self.budget.stall, seed=2,
                                 direction="both", target_host=target)
        floors = self.budget.floors
        end = time.monotonic() + (self.budget.netns_s if link else self.budget.cut_capture_s)
        stop = threading.Event()
        flapper = threading.Thread(target=self.flap, args=(link, stop), daemon=True)
        if link:
            flapper.start()
        try:
            while True:
                began = time.monotonic()
                self.migrate(server, src, f"cuts {where}", capture_proxy.url(), restore_proxy.url())
                print(f"cuts {where}: a run in {time.monotonic() - began:.0f} s; so far "
                      f"{sum(capture_proxy.cut.values())} during capture, "
                      f"{sum(restore_proxy.cut.values())} during restore", flush=True)
                reached = link or (
                    self.tally.counts["cuts during capture"] + sum(capture_proxy.cut.values())
                    >= floors["cuts during capture"]
                    and self.tally.counts["cuts during restore"] + sum(restore_proxy.cut.values())
                    >= floors["cuts during restore"])
                if (time.monotonic() > end and reached) or self.out_of_time():
                    break
        finally:
            stop.set()
            if link:
                flapper.join()
            capture_proxy.close()
            restore_proxy.close()
        self.tally.counts["cuts during capture"] += sum(capture_proxy.cut.values())
        self.tally.counts["cuts during restore"] += sum(restore_proxy.cut.values())
        for mode in ("reset", "fin", "stall"):
            self.tally.counts[f"  of which {mode}s"] += capture_proxy.cut[mode] + restore_proxy.cut[mode]
        if link:
            self.tally.counts["  of which across the veth"] += (sum(capture_proxy.cut.values())
                                                                + sum(restore_proxy.cut.values()))
            self.tally.counts["veth link downs"] += link.downs
        server.stop()
        self.server_log_clean(server, f"cuts {where}")

    def netns_cuts(self) -> None:
        if not self.budget.netns_s:
            return
        with Namespace() as link:
            self.cuts(self.src, link)

    def flap(self, link: Namespace, stop: threading.Event) -> None:
        """The veth taken down for 0.3 to 3 s every 1 to 4 s: packets lost, not refused."""
        while not stop.wait(self.rng.uniform(1.0, 4.0)):
            run("ip", "link", "set", link.outer_if, "down")
            link.downs += 1
            stop.wait(self.rng.uniform(0.3, 3.0))
            run("ip", "link", "set", link.outer_if, "up")
            run("ip", "addr", "replace", f"{link.outer}/30", "dev", link.outer_if)

    def step_kills(self, src: str) -> None:
        """kill -9 at each step of a chunk write, a seal and a restore read (tests/chaos/stepkill.py),
        in that order, `step_rounds` times: the server is started again armed for the next step
        each time it died, while migrations go on."""
        server = self.server()
        steps = list(STEPS) * self.budget.step_rounds
        at = 0
        stop = threading.Event()

        def armed(step: str) -> tuple[str, ...]:
            nth = 1 if step.startswith("seal") else self.rng.randint(1, 40)
            return (sys.executable, str(Path(__file__).with_name("stepkill.py")), step, str(nth))

        server.stop()
        server.prefix = armed(steps[0])
        server.start()

        def restarter():
            # Kills are counted from the server's log (stepkill.py's line), not from deaths.
            nonlocal at
            while not stop.wait(0.05):
                if server.proc.poll() is None:
                    continue
                at += 1  # it died at its step, maybe while starting (agents were waiting)
                server.prefix = armed(steps[at]) if at < len(steps) else ()
                time.sleep(self.rng.uniform(0.05, 0.3))
                try:
                    server.start()
                except Exception as err:  # noqa: BLE001 - said; a dead one is seen next turn
                    if server.proc.poll() is None:
                        self.tally.fail(f"step kills: the server did not start again: {err}")
                        server.kill()

        thread = threading.Thread(target=restarter, daemon=True)
        thread.start()
        try:
            while at < len(steps) and not self.out_of_time():
                self.migrate(server, src, "step kills")
        finally:
            stop.set()
            thread.join()
            server.stop()
        log = server.log.read_text(errors="replace")
        for step in STEPS:
            killed = log.count(f"chaos: kill -9 at step '{step}'")
            self.tally.counts["kills"] += killed
            self.tally.counts[f"  at step {step}"] += killed
            if not killed:
                self.tally.fail(f"step kills: the server was never killed at step '{step}'")
        self.server_log_clean(server, "step kills")

    def kills(self, src: str) -> None:
        server = self.server()
        stop = threading.Event()

        def killer():
            while not stop.is_set():
                if stop.wait(self.rng.uniform(0.3, 2.0)):
                    return
                server.kill()
                self.tally.counts["kills"] += 1
                time.sleep(self.rng.uniform(0.1, 0.5))
                server.start()

        end = time.monotonic() + self.budget.kill_s
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            while ((time.monotonic() < end or self.tally.counts["kills"] < self.budget.floors["kills"])
                   and not self.out_of_time()) or not self.tally.counts["kills"]:
                self.migrate(server, src, "kills")
        finally:
            stop.set()
            thread.join()
        self.server_log_clean(server, "kills")

    def hostile(self) -> None:
        plain = P2VServer(self.work / "data-plain", plain=True)
        self.servers.append(plain)
        plain.start()
        wire = Wire(plain)
        job = wire.create([{"id": "sda", "size": 2 * p.MIN_CHUNK_SIZE,
                            "chunk_size": p.MIN_CHUNK_SIZE}], resume=False).json()["id"]
        statuses = fuzz(plain, job, self.budget.fuzz_requests, self.rng)
        self.tally.counts["fuzzed requests"] += len(statuses)
        self.tally.statuses.update(statuses)
        self.tally.statuses.update(self.bad_bodies(plain, job))
        self.tally.statuses.update(self.malformed(plain))
        self.server_log_clean(plain, "hostile", token=True)
        plain.stop()

    def bad_bodies(self, server: P2VServer, job: str) -> list[int]:
        """Corrupted, truncated, oversize and bomb chunk bodies: each refused, nothing held."""
        import zstandard
        wire, size = Wire(server), p.MIN_CHUNK_SIZE
        data = os.urandom(size)
        out = []
        cases = [
            ("corrupted", dict(data=bytes([data[0] ^ 1]) + data[1:]), p.chunk_digest(data), {}),
            ("short", dict(data=data[:-1]), p.chunk_digest(data), {}),
            ("oversize", dict(data=data + b"x" * size), p.chunk_digest(data), {}),
            ("bomb", dict(data=zstandard.ZstdCompressor(level=19).compress(bytes(1 << 30))),
             p.chunk_digest(bytes(size)), {p.ENCODING_HEADER: p.ZSTD}),
            ("not zstd", dict(data=os.urandom(1000)), p.chunk_digest(data), {p.ENCODING_HEADER: p.ZSTD}),
        ]
        for _ in range(max(1, self.budget.fuzz_requests // 500)):
            for name, body, digest, headers in cases:
                r = wire.call("PUT", p.chunk_path(job, "sda", 0), headers={p.DIGEST_HEADER: digest,
                                                                          **headers}, **body)
                out.append(r.status_code)
                self.tally.counts[f"bad bodies ({name})"] += 1
                if r.status_code < 400:
                    self.tally.fail(f"a {name} chunk body was taken: {r.status_code}")
        if wire.held(job, "sda"):
            self.tally.fail("a bad chunk body was held")
        # Truncated on the wire: Content-Length promised, the connection closed midway.
        for _ in range(20):
            raw(server, (f"PUT {p.chunk_path(job, 'sda', 1)} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                         f"Bearer {server.token}\r\n{p.DIGEST_HEADER}: {p.chunk_digest(data)}\r\n"
                         f"Content-Length: {size}\r\n\r\n").encode() + data[:size // 2], read=False)
            self.tally.counts["bad bodies (cut on the wire)"] += 1
        return out

    def malformed(self, server: P2VServer) -> list[int]:
        token = server.token.encode()
        cases = [b"GARBAGE\r\n\r\n",
                 b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
                 b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\x01\r\n\r\n",
                 b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
                 b"GET /api/v1/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /api/v1/health HTTP/9.9\r\nHost: x\r\n\r\n",
                 b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]
        out = []
        for _ in range(max(1, self.budget.fuzz_requests // 200)):
            for request in cases:
                status, _ = raw(server, request)
                out.append(status)
                self.tally.counts["malformed HTTP"] += 1
        return out

    def full_disk(self, src: str) -> None:
        mnt = self.work / "small"
        mnt.mkdir()
        run("mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mnt))
        self.mounts.append(mnt)
        server = self.server(mnt / "data")
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize > 12 * MiB:
                    f.write(bytes(MiB))
            except OSError:
                pass
        ident = {"system_uuid": str(uuid.uuid4())}
        settings = self.settings(server, disks=[src], streams=4)
        try:
            capture.run(settings, identity=ident, retry_for=5)
            self.tally.fail("disk full: the capture went through a full disk")
        except CaptureError as err:
            if "507" not in str(err) and "full" not in str(err) and "free" not in str(err):
                self.tally.fail(f"disk full: the capture stopped without saying so: {err}")
        self.tally.counts["disk-full runs"] += 1
        filler.unlink()
        try:
            job = capture.run(settings, identity=ident).job
        except CaptureError as err:
            self.tally.fail(f"disk full: the capture did not go through once freed: {err}")
            return
        self.check_restore(server, job, src, "disk full")
        self.server_log_clean(server, "disk full")
        server.stop()

    def slow(self, src: str) -> None:
        if not self.budget.slow_clients:
            return
        server = self.server()
        wire = Wire(server)
        job = wire.create([{"id": "sda", "size": 64 * p.MIN_CHUNK_SIZE,
                            "chunk_size": p.MIN_CHUNK_SIZE}], resume=False).json()["id"]
        answers: list[int] = []
        done = threading.Event()

        def trickle(i: int) -> None:
            import ssl
            ctx = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "cert.pem"))
            ctx.check_hostname = False
            sock = socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.2", 0))
            s = ctx.wrap_socket(sock)
            s.sendall((f"PUT {p.chunk_path(job, 'sda', i)} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                       f"Bearer {server.token}\r\n{p.DIGEST_HEADER}: {p.chunk_digest(bytes(p.MIN_CHUNK_SIZE))}"
                       f"\r\nContent-Length: {p.MIN_CHUNK_SIZE}\r\n\r\n").encode())
            s.settimeout(5)
            answer = b""
            while not answer and not done.is_set():
                try:
                    s.sendall(b"\0")
                    answer = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    break
            s.close()
            if answer:
                answers.append(int(answer.split(b" ", 2)[1]))

        threads = [threading.Thread(target=trickle, args=(i,), daemon=True)
                   for i in range(self.budget.slow_clients)]
        for t in threads:
            t.start()
        time.sleep(2)
        started = time.monotonic()
        self.migrate(server, src, "slow clients")
        took = time.monotonic() - started
        for t in threads:
            t.join(self.budget.slow_s)
        done.set()
        self.tally.counts["slow clients"] += len(threads)
        self.tally.counts["slow clients dropped"] += len(answers)
        self.tally.statuses.update(answers)
        if took > 60:
            self.tally.fail(f"slow clients: a capture and restore beside them took {took:.0f} s")
        self.server_log_clean(server, "slow clients")

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started > self.budget.max_s

    def server_log_clean(self, server: P2VServer, what: str, token: bool = False) -> None:
        """A 5xx or a failure the server logged, and the token in its log (past the banner)."""
        text = server.log.read_text(errors="replace")
        body = text.split("p2v.mode=auto", 1)[-1]
        failed = sum(1 for line in body.splitlines()
                     if " failed" in line and ("HTTP layer" in line or " /api/" in line))
        self.tally.statuses[500] += failed + body.count("Traceback")
        if failed or "Traceback" in body:
            self.tally.fail(f"{what}: the server logged failures (see {server.log})")
        if token and server.token in body.replace(f"p2v.token={server.token}", ""):
            self.tally.fail(f"{what}: the token is in the server's log ({server.log})")

    # --- the whole ---------------------------------------------------------------------------

    def run(self) -> bool:
        self.started = started = time.monotonic()
        try:
            src = self.src = self.source()
            parts = {"hostile": self.hostile, "full disk": lambda: self.full_disk(src),
                     "cuts": lambda: self.cuts(src), "cuts across a veth": self.netns_cuts,
                     "step kills": lambda: self.step_kills(src), "kills": lambda: self.kills(src),
                     "slow clients": lambda: self.slow(src)}
            for name, part in parts.items():
                began = time.monotonic()
                part()
                print(f"part {name}: {time.monotonic() - began:.0f} s", flush=True)
        finally:
            self.cleanup()
        return self.report(time.monotonic() - started)

    def report(self, took: float) -> bool:
        rows = list(self.tally.counts.items())
        rows += [(f"requests answered {s}", n) for s, n in sorted(self.tally.statuses.items())]
        width = max(len(k) for k, _ in rows) + 2
        print(f"\n{'xenp2v chaos':<{width}}count")
        for key, n in rows:
            print(f"{key:<{width}}{n}")
        short = [f"{k} {self.tally.counts[k]} < {floor}" for k, floor in self.budget.floors.items()
                 if self.tally.counts[k] < floor]
        fives = sum(n for s, n in self.tally.statuses.items() if s >= 500)
        ok = (not self.tally.failures and not short and not fives
              and self.tally.counts["runs"] == self.tally.counts["runs byte-identical"] > 0)
        print(f"{'time':<{width}}{took:.0f} s")
        for line in short:
            print(f"below the floor: {line}")
        print("PASS" if ok else f"FAIL ({len(self.tally.failures)} failures, {fives} 5xx)")
        return ok


def _digest(path: str) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while piece := f.read(4 * MiB):
            h.update(piece)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the short form `make test` runs")
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make chaos needs root (loop devices, tmpfs).", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="xenp2v-chaos-"))
    try:
        ok = Chaos(work, SHORT if args.short else Budget(), args.seed).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
