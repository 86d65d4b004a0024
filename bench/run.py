"""`make bench`: xenp2v against the tools technicians use today, same disk, one run, one table.

Every contender moves the cached 8 GiB fixture disk (bench/fixture.py) over 127.0.0.1 to a
receiving end that writes an image file (or, for restore, a device):

- dd | nc            the seed's dd tutorial: dd bs=4M | nc  ->  nc > image
- clonezilla         partclone.ext4 -c | zstd -T0 -3 | nc  ->  nc > sda1.ext4-ptcl-img.zst
                     (Clonezilla's -z9p: the image stays compressed, as Clonezilla stores it)
- nbdkit+nbdcopy     virt-p2v's engine: nbdkit file plugin on the disk, nbdcopy to a file
- xenp2v ...         p2v-agent capture to p2v-server, plain HTTP and TLS, compression off/zstd;
                     p2v-agent restore from p2v-server onto a second loop device
- xenp2v warm        a copy of the fixture pre-copied while mounted, 100 MiB of its files
                     changed, then the final sync timed: the downtime (bench/warm.py)

Rounds go through all contenders in turn (so noise spreads over all of them); the table shows
the median wall time. The wall time runs from the sender's start until the receiver has finished
and its output is fsynced. Source and outputs are dropped from the page cache before each run.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # support.py: the test suite's P2VServer

from bench import fixture, fleet, netns, warm  # noqa: E402
import psutil  # noqa: E402
from bench.measure import PeakRSS, WireCounter, allocated, drop_cache, wait_listening  # noqa: E402
from support import P2VServer, free_port  # noqa: E402

# This checkout's agent (run from REPO), whichever venv runs the bench.
AGENT = [sys.executable, "-m", "agent.cli"]
TOKEN = "bench-token"
# The agent must not pick up the host's kernel command line or a stray p2v.cfg.
AGENT_SOURCES = ["--cmdline", "", "--config", "/dev/null"]


@dataclass
class Run:
    wall: float
    wire: int
    out: int
    send_rss: int
    recv_rss: int
    cpu: float = 0.0    # user + system seconds of sender and receiver together
    agent_cpu: float | None = None   # ... of agent and server apart (ours only)
    server_cpu: float | None = None
    flow_rate: float | None = None   # wire bytes per second while data flowed (shaped links)
    data: int = 0                    # bytes of disk data moved (ours; else `out` stands for it)
    changed: int | None = None       # warm row: bytes of the source's chunks changed since the pass
    files: int = 0                   # warm row: bytes of file data changed since the pass


@dataclass
class Result:
    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    def worst(self, attr: str) -> int:
        return max(getattr(r, attr) for r in self.runs)

    def median(self, attr: str) -> int:
        return int(statistics.median(getattr(r, attr) for r in self.runs))


@contextmanager
def cpu_seconds(server_pid: int | None = None):
    """User + system CPU of the children reaped meanwhile, plus a long-lived server's share:
    box[0] both, box[1] the children's, box[2] the server's."""
    def now() -> tuple[float, float]:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        server = 0.0
        if server_pid:
            t = psutil.Process(server_pid).cpu_times()
            server = t.user + t.system
        return kids.ru_utime + kids.ru_stime, server
    kids, server = now()
    box = [0.0, 0.0, 0.0]
    yield box
    kids2, server2 = now()
    box[:] = [kids2 - kids + server2 - server, kids2 - kids, server2 - server]


class FlowSampler:
    """Samples a wire counter every 0.2 s; stop() gives the rate while data flowed: the bytes
    between 5% and 95% of the total over the time between those marks."""

    def __init__(self, counter, interval: float = 0.2):
        self.counter = counter
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append((time.monotonic(), self.counter.bytes()))

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        if len(self.samples) < 3:
            return None
        total = self.samples[-1][1]
        lo = next(s for s in self.samples if s[1] >= 0.05 * total)
        hi = next(s for s in self.samples if s[1] >= 0.95 * total)
        return (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else None


class Bench:
    def __init__(self, cache: Path, source: fixture.Loop, size: int, profile: Path | None,
                 streams: int | None = None, link: netns.Link | None = None):
        self.cache = cache
        self.src_image = source.image
        self.out = outputs(cache)
        self.src = source
        self.size = size
        # Loopback, or a shaped link: receivers in the namespace at DST, senders here at SRC.
        self.link = link
        self.counter = netns.LinkCounter() if link else WireCounter()
        self.recv_host = netns.DST if link else "127.0.0.1"
        self.send_host = netns.SRC if link else "127.0.0.1"
        self.profile = profile
        self.streams = streams
        self.restore_data: Path | None = None   # a data dir holding a sealed capture
        self.restore_job = ""

    def fresh(self, name: str) -> Path:
        path = self.out / name
        (self.out / f"{name}-server.log").unlink(missing_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return path

    def receiving(self, cmd: list[str]) -> list[str]:
        """`cmd` run where receivers run (the link's namespace, or here on loopback)."""
        return netns.in_ns(cmd) if self.link else cmd

    def listening(self, port: int) -> None:
        (netns.wait_listening if self.link else wait_listening)(port)

    # --- the peers: a sender pipeline into a receiver that writes one file --------------------

    def pipe(self, sender: str, out: Path) -> Run:
        port = free_port()
        drop_cache(self.src.dev, self.src.part1)
        with open(out, "wb") as sink, PeakRSS() as rss, cpu_seconds() as cpu:
            receiver = subprocess.Popen(self.receiving(["nc", "-d", "-l", self.recv_host, str(port)]),
                                        stdout=sink)
            rss.watch("recv", receiver.pid)
            self.listening(port)
            self.counter.start(port)
            start = time.monotonic()
            flow = FlowSampler(self.counter) if self.link else None
            proc = subprocess.Popen(["bash", "-o", "pipefail", "-c",
                                     sender.format(host=self.recv_host, port=port)], stderr=subprocess.PIPE, text=True)
            rss.watch("send", proc.pid)
            _, err = proc.communicate()
            receiver.wait(timeout=600)
            os.fsync(sink.fileno())
            wall = time.monotonic() - start
            flow_rate = flow.stop() if flow else None
        if proc.returncode or receiver.returncode:
            raise RuntimeError(f"{sender} failed: {err.strip()}")
        return Run(wall, self.counter.bytes(), allocated(str(out)), rss.peak["send"],
                   rss.peak["recv"], cpu[0], flow_rate=flow_rate)

    def dd_nc(self) -> Run:
        out = self.fresh("dd.img")
        run = self.pipe(f"dd if={self.src.dev} bs=4M status=none | nc -N {{host}} {{port}}", out)
        out.unlink()
        return run

    def clonezilla(self) -> Run:
        out = self.fresh("sda1.ext4-ptcl-img.zst")
        run = self.pipe(f"partclone.ext4 -z 10485760 -N -c -s {self.src.part1} -o - 2>/dev/null"
                        f" | zstd -q -T0 -3 | nc -N {{host}} {{port}}", out)
        out.unlink()
        return run

    def nbd(self) -> Run:
        port = free_port()
        out = self.fresh("nbd.img")
        with open(out, "wb") as f:
            f.truncate(self.size)
        drop_cache(self.src.dev)
        with PeakRSS() as rss, cpu_seconds() as cpu:
            server = subprocess.Popen(["nbdkit", "-r", "-f", "-i", self.send_host, "-p", str(port),
                                       "file", self.src.dev])
            try:
                rss.watch("send", server.pid)
                wait_listening(port)
                self.counter.start(port)
                start = time.monotonic()
                flow = FlowSampler(self.counter) if self.link else None
                copy = subprocess.Popen(self.receiving(["nbdcopy", f"nbd://{self.send_host}:{port}",
                                                        str(out)]))
                rss.watch("recv", copy.pid)
                copy.wait(timeout=3600)
                drop_cache(str(out))
                wall = time.monotonic() - start
                flow_rate = flow.stop() if flow else None
            finally:
                server.terminate()
                server.wait(timeout=30)
        if copy.returncode:
            raise RuntimeError(f"nbdcopy failed ({copy.returncode})")
        run = Run(wall, self.counter.bytes(), allocated(str(out)), rss.peak["send"], rss.peak["recv"],
                  cpu[0], flow_rate=flow_rate)
        out.unlink()
        return run

    # --- xenp2v ---------------------------------------------------------------------------------

    def server(self, data: Path, tls: bool) -> P2VServer:
        return P2VServer(data, plain=not tls, args=("--token", TOKEN), host=self.recv_host,
                         prefix=tuple(netns.in_ns([])) if self.link else ()).start()

    repo = REPO

    def agent_cmd(self, args: list[str]) -> list[str]:
        """What runs `p2v-agent ARGS` from this checkout (a Popen's argument list; cwd: REPO)."""
        return ["env", "-C", str(REPO), *AGENT, *args]

    def agent_args(self, server: P2VServer) -> list[str]:
        args = ["--server", server.url, "--token", TOKEN, *AGENT_SOURCES]
        args += ["--streams", str(self.streams)] if self.streams else []
        return args + (["--fingerprint", server.fingerprint] if server.fingerprint else [])

    def timed_agent(self, server: P2VServer, args: list[str], sync: list[str],
                    what: str) -> tuple[Run, str]:
        with PeakRSS() as rss, cpu_seconds(server.proc.pid) as cpu:
            rss.watch("recv", server.proc.pid)
            self.counter.start(server.port)
            start = time.monotonic()
            agent = subprocess.Popen(self.agent_cmd(args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            rss.watch("send", agent.pid)
            spy = self.spy(what, agent.pid, server.proc.pid)
            flow = FlowSampler(self.counter) if self.link else None
            out, err = agent.communicate()
            drop_cache(*sync)
            wall = time.monotonic() - start
            flow_rate = flow.stop() if flow else None
            for p in spy:  # py-spy writes its profile on SIGINT (the server keeps running)
                p.send_signal(signal.SIGINT)
                p.wait(timeout=120)
        if agent.returncode:
            raise RuntimeError(f"p2v-agent {args[0]} failed: {err.strip()}")
        return Run(wall, self.counter.bytes(), 0, rss.peak["send"], rss.peak["recv"], cpu[0],
                   cpu[1], cpu[2], flow_rate), out

    def spy(self, what: str, agent: int, server: int) -> list[subprocess.Popen]:
        """py-spy on agent and server for this run, when asked (--profile DIR)."""
        if not self.profile:
            return []
        self.profile.mkdir(parents=True, exist_ok=True)
        spy = str(Path(sys.executable).parent / "py-spy")
        return [subprocess.Popen([spy, "record", "-r", "50", "-f", "raw", "-p", str(pid),
                                  "-o", str(self.profile / f"{what}-{side}.txt")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for side, pid in (("agent", agent), ("server", server))]

    def capture(self, tls: bool, compress: str | None, keep: bool = False) -> Run:
        """One capture of the fixture; `compress` None: the agent's default (auto)."""
        data = self.fresh(f"p2v-{'tls' if tls else 'http'}-{compress or 'default'}")
        server = self.server(data, tls)
        try:
            images = str(data / "jobs")
            drop_cache(self.src.dev, self.src.part1)
            flags = ["--compress", compress] if compress else []
            run, out = self.timed_agent(server, ["capture", *self.agent_args(server), "--disks",
                                                 self.src.dev, *flags, "--name", "bench"], [],
                                        f"capture-{'tls' if tls else 'http'}-{compress or 'auto'}")
            # No fsync to add to the time: the server fdatasyncs every chunk before acknowledging it.
            for top, _, files in os.walk(images):
                drop_cache(*(os.path.join(top, f) for f in files if f.endswith(".img")))
            run.out = allocated(images)
            # What --compress auto measured and chose, from the log the agent uploaded.
            for line in auto_choices(Path(images)):
                print(f"  {line}", flush=True)
        finally:
            server.stop()
        if keep:
            self.restore_data = data
            self.restore_job = re.search(r"sealed in job (\S+?):", out).group(1)
        else:
            shutil.rmtree(data)
        return run

    def restore(self, tls: bool = True) -> Run:
        """The kept capture restored onto a second loop device, with the agent's defaults."""
        target = self.fresh("restore-target.img")
        with open(target, "wb") as f:
            f.truncate(self.size)
        server = self.server(self.restore_data, tls=tls)
        try:
            with fixture.Loop(target) as loop:
                images = [str(p) for p in (self.restore_data / "jobs").rglob("*.img")]
                drop_cache(*images)
                run, _ = self.timed_agent(server, ["restore", *self.agent_args(server), "--job",
                                                   self.restore_job, "--target", loop.dev],
                                          [loop.dev], "restore")
                loop.rescan()
                check = subprocess.run(["e2fsck", "-fn", loop.part1], capture_output=True, text=True)
                if check.returncode:
                    raise RuntimeError(f"the restored filesystem is damaged: {check.stdout[-500:]}")
            run.out = allocated(str(target))
            run.data = allocated(str(self.restore_data / "jobs"))
        finally:
            server.stop()
        target.unlink()
        return run


DEFAULT = "xenp2v tls, default flags"    # what a technician runs: TLS, --compress auto
RESTORE = "xenp2v restore (tls, default)"
WARM = "xenp2v warm, final sync (tls, default)"
CONTENDERS = {
    "dd | nc": Bench.dd_nc,
    "clonezilla (partclone|zstd|nc)": Bench.clonezilla,
    "nbdkit + nbdcopy": Bench.nbd,
    DEFAULT: lambda b: b.capture(True, None, keep=True),
    "xenp2v http, default flags": lambda b: b.capture(False, None),
    "xenp2v http, compress off": lambda b: b.capture(False, "off"),
    "xenp2v http, zstd": lambda b: b.capture(False, "zstd"),
    "xenp2v tls, compress off": lambda b: b.capture(True, "off"),
    "xenp2v tls, zstd": lambda b: b.capture(True, "zstd"),
    RESTORE: Bench.restore,
    WARM: warm.final_sync,
}
# On shaped links: the peers, the defaults both ways, and what auto chooses between.
LINK_CONTENDERS = ("dd | nc", "clonezilla (partclone|zstd|nc)", "nbdkit + nbdcopy", DEFAULT,
                   "xenp2v http, default flags", "xenp2v tls, compress off", "xenp2v tls, zstd",
                   RESTORE, WARM)
# name, Mbit/s, one-way delay asked of netem (ms)
LINKS = {"1g": ("1 Gbit/s link", 1000, 0.5), "10g": ("10 Gbit/s link", 10000, 0.1)}
FLEET = "agents at once"
PEERS = ("dd | nc", "clonezilla (partclone|zstd|nc)", "nbdkit + nbdcopy")
PEER_SHORT = {"dd | nc": "dd", "clonezilla (partclone|zstd|nc)": "cz", "nbdkit + nbdcopy": "nbd"}


def sides(run: Run) -> str:
    """Agent and server CPU apart, in seconds and per GiB of disk data moved (ours only)."""
    if run.agent_cpu is None:
        return ""
    data = run.data or run.out
    gib = max(data, 1) / (1 << 30)
    return (f" (agent {run.agent_cpu:.1f} s = {run.agent_cpu / gib:.2f} s/GiB, server "
            f"{run.server_cpu:.1f} s = {run.server_cpu / gib:.2f} s/GiB, {data / 1e6 / run.wall:,.0f} MB/s)")


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def table(results: dict[str, Result], header: str) -> str:
    peers = {p: results[p] for p in PEERS if p in results}
    cols = ["contender", "wall s", "runs", "CPU s", "wire MB", "image MB", "src RSS MB",
            "recv RSS MB"]
    cols += [f"t/{PEER_SHORT[p]}" for p in peers] + ["wire/cz"]
    flows = any(x.flow_rate for r in results.values() for x in r.runs)
    cols += ["Mbit/s flowing"] if flows else []
    rows = []
    for name, r in results.items():
        row = [name, f"{r.wall:.1f}", " ".join(f"{x.wall:.0f}" for x in r.runs),
               f"{statistics.median(x.cpu for x in r.runs):.0f}", mb(r.median("wire")),
               mb(r.median("out")), mb(r.worst("send_rss")), mb(r.worst("recv_rss"))]
        row += [f"{r.wall / p.wall:.2f}" for p in peers.values()]
        cz = peers.get("clonezilla (partclone|zstd|nc)")
        row.append(f"{r.median('wire') / cz.median('wire'):.2f}" if cz else "-")
        if flows:
            rates = [x.flow_rate for x in r.runs if x.flow_rate]
            row.append(f"{statistics.median(rates) * 8 / 1e6:,.0f}" if rates else "-")
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    fmt = lambda row: " | ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                 for i, (v, w) in enumerate(zip(row, widths)))
    lines = [header, fmt(cols), "-+-".join("-" * w for w in widths)] + [fmt(row) for row in rows]
    return "\n".join(lines)


def targets(loop: dict[str, Result], links: dict[str, dict[str, Result]],
            fleets: list[fleet.FleetRun], tera: Result | None) -> list[str]:
    """The issue's targets (#20, and the earlier ones that still hold), each PASS, FAIL or n/a."""
    out = []

    def check(ok: bool | None, text: str) -> None:
        out.append(f"{'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {text}")

    get = loop.get
    dd, cz, nbd = get("dd | nc"), get("clonezilla (partclone|zstd|nc)"), get("nbdkit + nbdcopy")
    for name, factor in ((DEFAULT, 0.4), ("xenp2v http, default flags", 0.35)):
        ours = get(name)
        if ours and nbd:
            check(ours.wall <= factor * nbd.wall,
                  f"loopback, {name.removeprefix('xenp2v ')}: {ours.wall:.1f} s <= {factor} x "
                  f"nbdkit+nbdcopy ({factor * nbd.wall:.1f} s)")
    for proto in ("http", "tls"):
        off, z = get(f"xenp2v {proto}, compress off"), get(f"xenp2v {proto}, zstd")
        if off and nbd and dd:
            check(off.wall <= nbd.wall / 2 and off.wall <= dd.wall / 4,
                  f"loopback, {proto} compress off: {off.wall:.1f} s <= nbdkit+nbdcopy/2 "
                  f"({nbd.wall / 2:.1f} s) and <= dd|nc/4 ({dd.wall / 4:.1f} s)")
        if z and cz:
            check(z.median("wire") <= 1.1 * cz.median("wire") and z.wall < cz.wall,
                  f"loopback, {proto} zstd: wire {mb(z.median('wire'))} MB <= 1.1 x clonezilla "
                  f"({mb(int(1.1 * cz.median('wire')))} MB) and {z.wall:.1f} s < {cz.wall:.1f} s")
    for key, results in links.items():
        label, rate_mbit, _ = LINKS[key]
        ours, dd, cz, nbd = (results.get(n) for n in (DEFAULT, "dd | nc",
                                                       "clonezilla (partclone|zstd|nc)",
                                                       "nbdkit + nbdcopy"))
        if not ours:
            continue
        if key == "1g" and dd and cz:
            check(ours.wall <= 0.15 * dd.wall and ours.wall <= 0.6 * cz.wall,
                  f"{label}, default flags: {ours.wall:.1f} s <= 0.15 x dd|nc ({0.15 * dd.wall:.1f}"
                  f" s) and <= 0.6 x clonezilla ({0.6 * cz.wall:.1f} s)")
            flows = [r.flow_rate for r in ours.runs if r.flow_rate]
            if flows:
                use = statistics.median(flows) / (rate_mbit * 1e6 / 8)
                check(use >= 0.9, f"{label}, default flags: {use:.0%} of the link's rate in use "
                                  "while data flows (>= 90%)")
        if key == "10g" and nbd:
            check(ours.wall <= 0.5 * nbd.wall,
                  f"{label}, default flags: {ours.wall:.1f} s <= 0.5 x nbdkit+nbdcopy "
                  f"({0.5 * nbd.wall:.1f} s)")
    if tera:
        check(tera.wall < 180, f"1 TiB disk, 1% used: {tera.wall:.1f} s < 180 s")
    else:
        check(None, "1 TiB disk, 1% used: not run (make bench BENCH_ARGS=--tera)")
    if len(fleets) == 2:
        one, many = fleets
        check(many.rate >= 0.8 * one.rate and many.verified == many.agents,
              f"{many.agents} agents at once: aggregate {many.rate / 1e6:,.0f} MB/s >= 0.8 x one "
              f"agent's {one.rate / 1e6:,.0f} MB/s ({0.8 * one.rate / 1e6:,.0f}), "
              f"{many.verified} of {many.agents} sealed and verified")
        check(many.server_rss < 400e6 and many.agent_rss < 150e6,
              f"{many.agents} agents at once: server {mb(many.server_rss)} MB < 400 MB, "
              f"each agent {mb(many.agent_rss)} MB at most < 150 MB")
    every = [loop, *links.values()]
    ours = [r for res in every for n, r in res.items() if n.startswith("xenp2v")]
    ours += [tera] if tera else []
    if ours:
        agent = max(r.worst("send_rss") for r in ours)
        server = max(r.worst("recv_rss") for r in ours)
        check(agent < 150e6 and server < 150e6,
              f"peak memory, one agent: agent {mb(agent)} MB, server {mb(server)} MB, each < 150 MB")
    for where, res in (("loopback", loop), *((LINKS[k][0], r) for k, r in links.items())):
        rest, cap = res.get(RESTORE), res.get(DEFAULT)
        if rest and cap:
            check(rest.wall <= cap.wall,
                  f"{where}: restore {rest.wall:.1f} s <= capture {cap.wall:.1f} s (default flags)")
    for where, res in (("loopback", loop), *((LINKS[k][0], r) for k, r in links.items())):
        sync, cap = res.get(WARM), res.get(DEFAULT)
        if sync:
            changed, files = sync.median("changed"), sync.median("files")
            check(sync.median("wire") <= 1.1 * changed,
                  f"{where}, warm, final sync: wire {mb(sync.median('wire'))} MB <= 1.1 x the "
                  f"changed bytes plus metadata ({mb(int(1.1 * changed))} MB: {mb(changed)} MB of "
                  f"chunks changed for {mb(files)} MB of files)")
        if sync and cap:
            check(sync.wall <= cap.wall / 4,
                  f"{where}, warm, final sync (the downtime): {sync.wall:.1f} s <= a quarter of "
                  f"a full capture's ({cap.wall / 4:.1f} s; default flags)")
    return out


def rounds(bench: Bench, names: list[str], runs: int, where: str) -> dict[str, Result]:
    """Each contender `runs` times, a round of all of them at a time (noise spreads over all)."""
    results = {n: Result(n) for n in names}
    for round_ in range(runs):
        for name in names:
            run = CONTENDERS[name](bench)
            results[name].runs.append(run)
            flow = f", {run.flow_rate * 8 / 1e6:,.0f} Mbit/s flowing" if run.flow_rate else ""
            if run.changed is not None:
                flow += f", {mb(run.changed)} MB of chunks changed for {mb(run.files)} MB of files"
            print(f"{where} round {round_ + 1}/{runs}  {name}: {run.wall:.1f} s, "
                  f"wire {mb(run.wire)} MB{flow}, image {mb(run.out)} MB, "
                  f"RSS {mb(run.send_rss)}/{mb(run.recv_rss)} MB, CPU {run.cpu:.1f} s"
                  f"{sides(run)}  (load {os.getloadavg()[0]:.1f})", flush=True)
    if bench.restore_data:
        shutil.rmtree(bench.restore_data, ignore_errors=True)
        bench.restore_data = None
    warm.remove_source(bench)
    return results


def selected(names, only: list[str] | None) -> list[str]:
    """The contenders to run: those named (all without `only`), and the full capture that the
    restore and warm rows are compared with, run first."""
    names = [n for n in names if not only or any(o in n for o in only)]
    for compared in (RESTORE, WARM):
        if compared in names and DEFAULT not in names:
            names.insert(names.index(compared), DEFAULT)
    return names


def auto_choices(images: Path) -> list[str]:
    """The agent's "compress auto: ..." log lines of the jobs under `images` (from the time)."""
    return [line.split(" ", 1)[1] for log in sorted(images.glob("*/agent.log"))
            for line in log.read_text(errors="replace").splitlines() if "compress auto:" in line]


def outputs(cache: Path) -> Path:
    """Where this bench writes its images and data directories: its own folder, so that two
    benches at once on a shared machine never remove each other's (removed at the end)."""
    return cache / "out" / str(os.getpid())


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/var/cache/xenp2v/bench"),
                    help="where the fixture disks and outputs live (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=3, help="runs per contender (default 3)")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only the rows whose name contains NAME (may repeat; the "
                         f"many-agents row is {FLEET!r}): e.g. --only warm")
    ap.add_argument("--links", default="1g,10g", metavar="LIST",
                    help="shaped links to run the contenders over too: 1g, 10g, comma-separated, "
                         "or none (default: %(default)s)")
    ap.add_argument("--link-runs", type=int, metavar="N", help="runs per contender on links "
                    "(default: --runs)")
    ap.add_argument("--agents", type=int, default=8, metavar="N",
                    help="agents at once in the many-machines row (0: skip it; default 8)")
    ap.add_argument("--no-loopback", action="store_true", help="skip the loopback table")
    ap.add_argument("--tera", action="store_true",
                    help="also capture a 1 TiB disk with 1%% used (makes it once: ~10 GiB copied)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="record py-spy profiles of agent and server (raw stacks) into DIR")
    ap.add_argument("--streams", type=int, metavar="N",
                    help="parallel connections of agent capture and restore (default: theirs)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("The benchmark needs root (loop devices, nftables, namespaces, page cache): run it "
              "with sudo.", file=sys.stderr)
        return 2
    link_keys = [k for k in args.links.split(",") if k and k != "none"]
    unknown = [k for k in link_keys if k not in LINKS]
    if not selected(LINK_CONTENDERS, args.only):
        link_keys = []
    if unknown:
        print(f"--links: unknown {', '.join(unknown)}; choose from {', '.join(LINKS)} or none.",
              file=sys.stderr)
        return 2
    # Machine-wide, whatever --cache: the namespace, the nftables counters and the loopback
    # are shared by every bench run here.
    lock = open(os.environ.get("XENP2V_BENCH_LOCK", "/run/lock/xenp2v-bench.lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        print(f"Another benchmark is running on this machine ({lock.read().strip() or 'pid unknown'}): "
              "two at once share the network namespace, the traffic counters and the CPUs, and "
              "spoil each other's figures (and work). Wait for it to end.", file=sys.stderr)
        return 2
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}, started {time.strftime('%H:%M:%S')}\n")
    lock.flush()
    image = fixture.ensure(args.cache, fixture.SPEC_8G)
    tera_image = fixture.ensure(args.cache, fixture.SPEC_1T) if args.tera else None
    fleet_row = args.agents and (not args.only or any(o in FLEET for o in args.only))
    smalls = fleet.small_disks(args.cache, args.agents) if fleet_row else []
    outputs(args.cache).mkdir(parents=True, exist_ok=True)
    load_before = load()
    loop_results: dict[str, Result] = {}
    link_results: dict[str, dict[str, Result]] = {}
    link_text: dict[str, str] = {}
    fleets: list[fleet.FleetRun] = []
    tera = None
    size = image.stat().st_size
    try:
        with fixture.Loop(image, read_only=True) as src:
            if not args.no_loopback:
                bench = Bench(args.cache, src, size, args.profile, args.streams)
                try:
                    loop_results = rounds(bench, selected(CONTENDERS, args.only), args.runs, "lo")
                finally:
                    bench.counter.close()
            for key in link_keys:
                label, rate, delay = LINKS[key]
                with netns.Link(label, rate, delay) as link:
                    bench = Bench(args.cache, src, size, args.profile, args.streams, link)
                    try:
                        link_results[key] = rounds(bench, selected(LINK_CONTENDERS, args.only),
                                                   args.link_runs or args.runs, key)
                    finally:
                        bench.counter.close()
                    link_text[key] = link.describe()
            if tera_image:
                with fixture.Loop(tera_image, read_only=True) as big:
                    tb = Bench(args.cache, big, tera_image.stat().st_size, args.profile, args.streams)
                    tera = Result("xenp2v http, off, 1 TiB 1% used")
                    tera.runs.append(tb.capture(False, "off"))
                    tb.counter.close()
            if smalls:
                bench = Bench(args.cache, src, size, args.profile, args.streams)
                try:
                    for count in (1, args.agents):
                        fleets.append(fleet.run(bench, smalls, count))
                        print(f"lo {fleet.line(fleets[-1])}  (load {load()})", flush=True)
                finally:
                    bench.counter.close()
    finally:
        shutil.rmtree(outputs(args.cache), ignore_errors=True)
    header = (f"xenp2v bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: 8 GiB ext4 "
              f"fixture (2.5 GiB files, 2 GiB deleted random), {os.cpu_count()} cores, load "
              f"{load_before} before, {load()} after; cold cache each run; median of {args.runs}"
              f" ({args.link_runs or args.runs} on links)\n"
              "wall s = median; runs = each run's time; wire = TCP bytes both ways (nft); "
              "image = allocated (du); RSS = peak of each side's process tree; CPU = user+sys s "
              "of both sides; t/X = time ratio to peer X; wire/cz = wire ratio to clonezilla; "
              "default flags = TLS (or plain HTTP) and --compress auto")
    shown = dict(loop_results)
    if tera:
        shown[tera.name] = tera
    print()
    if shown:
        print(table(shown, header + "\nloopback (127.0.0.1)"))
        print()
    for key, results in link_results.items():
        print(table(results, link_text[key]))
        print()
    if fleets:
        print(f"Many machines at once (loopback, TLS, default flags; {fleets[-1].agents} small "
              "disks of 1 GiB, 320 MiB of files each):")
        for r in fleets:
            print("  " + fleet.line(r))
        print()
    print("\n".join(targets(loop_results, link_results, fleets, tera)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
