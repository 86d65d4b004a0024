"""`make bench`: xenp2v against the tools technicians use today, same disk, one run, one table.

Every contender moves the cached 8 GiB fixture disk (bench/fixture.py) over 127.0.0.1 to a
receiving end that writes an image file (or, for restore, a device):

- dd | nc            the seed's dd tutorial: dd bs=4M | nc  ->  nc > image
- clonezilla         partclone.ext4 -c | zstd -T0 -3 | nc  ->  nc > sda1.ext4-ptcl-img.zst
                     (Clonezilla's -z9p: the image stays compressed, as Clonezilla stores it)
- nbdkit+nbdcopy     virt-p2v's engine: nbdkit file plugin on the disk, nbdcopy to a file
- xenp2v ...         p2v-agent capture to p2v-server, plain HTTP and TLS, compression off/zstd;
                     p2v-agent restore from p2v-server onto a second loop device

Rounds go through all contenders in turn (so noise spreads over all of them); the table shows
the median wall time. The wall time runs from the sender's start until the receiver has finished
and its output is fsynced. Source and outputs are dropped from the page cache before each run.
"""

from __future__ import annotations

import argparse
import os
import resource
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # support.py: the test suite's P2VServer

from bench import fixture  # noqa: E402
import psutil  # noqa: E402
from bench.measure import PeakRSS, WireCounter, allocated, drop_cache, wait_listening  # noqa: E402
from support import P2VServer, free_port  # noqa: E402

AGENT = [str(REPO / ".venv/bin/p2v-agent")]
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
    """User + system CPU of the children reaped meanwhile, plus a long-lived server's share."""
    def now() -> float:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = kids.ru_utime + kids.ru_stime
        if server_pid:
            t = psutil.Process(server_pid).cpu_times()
            total += t.user + t.system
        return total
    box = [now()]
    yield box
    box[0] = now() - box[0]


class Bench:
    def __init__(self, cache: Path, source: fixture.Loop, size: int, profile: Path | None,
                 streams: int | None = None):
        self.cache = cache
        self.out = cache / "out"
        self.src = source
        self.size = size
        self.counter = WireCounter()
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

    # --- the peers: a sender pipeline into a receiver that writes one file --------------------

    def pipe(self, sender: str, out: Path) -> Run:
        port = free_port()
        drop_cache(self.src.dev, self.src.part1)
        with open(out, "wb") as sink, PeakRSS() as rss, cpu_seconds() as cpu:
            receiver = subprocess.Popen(["nc", "-d", "-l", "127.0.0.1", str(port)], stdout=sink)
            rss.watch("recv", receiver.pid)
            wait_listening(port)
            self.counter.start(port)
            start = time.monotonic()
            proc = subprocess.Popen(["bash", "-o", "pipefail", "-c",
                                     sender.format(port=port)], stderr=subprocess.PIPE, text=True)
            rss.watch("send", proc.pid)
            _, err = proc.communicate()
            receiver.wait(timeout=600)
            os.fsync(sink.fileno())
            wall = time.monotonic() - start
        if proc.returncode or receiver.returncode:
            raise RuntimeError(f"{sender} failed: {err.strip()}")
        return Run(wall, self.counter.bytes(), allocated(str(out)), rss.peak["send"],
                   rss.peak["recv"], cpu[0])

    def dd_nc(self) -> Run:
        out = self.fresh("dd.img")
        run = self.pipe(f"dd if={self.src.dev} bs=4M status=none | nc -N 127.0.0.1 {{port}}", out)
        out.unlink()
        return run

    def clonezilla(self) -> Run:
        out = self.fresh("sda1.ext4-ptcl-img.zst")
        run = self.pipe(f"partclone.ext4 -z 10485760 -N -c -s {self.src.part1} -o - 2>/dev/null"
                        f" | zstd -q -T0 -3 | nc -N 127.0.0.1 {{port}}", out)
        out.unlink()
        return run

    def nbd(self) -> Run:
        port = free_port()
        out = self.fresh("nbd.img")
        with open(out, "wb") as f:
            f.truncate(self.size)
        drop_cache(self.src.dev)
        with PeakRSS() as rss, cpu_seconds() as cpu:
            server = subprocess.Popen(["nbdkit", "-r", "-f", "-i", "127.0.0.1", "-p", str(port),
                                       "file", self.src.dev])
            try:
                rss.watch("send", server.pid)
                wait_listening(port)
                self.counter.start(port)
                start = time.monotonic()
                copy = subprocess.Popen(["nbdcopy", f"nbd://127.0.0.1:{port}", str(out)])
                rss.watch("recv", copy.pid)
                copy.wait(timeout=3600)
                drop_cache(str(out))
                wall = time.monotonic() - start
            finally:
                server.terminate()
                server.wait(timeout=30)
        if copy.returncode:
            raise RuntimeError(f"nbdcopy failed ({copy.returncode})")
        run = Run(wall, self.counter.bytes(), allocated(str(out)), rss.peak["send"], rss.peak["recv"],
                  cpu[0])
        out.unlink()
        return run

    # --- xenp2v ---------------------------------------------------------------------------------

    def server(self, data: Path, tls: bool) -> P2VServer:
        return P2VServer(data, plain=not tls, args=("--token", TOKEN)).start()

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
            agent = subprocess.Popen(AGENT + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=REPO)
            rss.watch("send", agent.pid)
            spy = self.spy(what, agent.pid, server.proc.pid)
            out, err = agent.communicate()
            drop_cache(*sync)
            wall = time.monotonic() - start
            for p in spy:  # py-spy writes its profile on SIGINT (the server keeps running)
                p.send_signal(signal.SIGINT)
                p.wait(timeout=120)
        if agent.returncode:
            raise RuntimeError(f"p2v-agent {args[0]} failed: {err.strip()}")
        return Run(wall, self.counter.bytes(), 0, rss.peak["send"], rss.peak["recv"], cpu[0]), out

    def spy(self, what: str, agent: int, server: int) -> list[subprocess.Popen]:
        """py-spy on agent and server for this run, when asked (--profile DIR)."""
        if not self.profile:
            return []
        self.profile.mkdir(parents=True, exist_ok=True)
        spy = str(REPO / ".venv/bin/py-spy")
        return [subprocess.Popen([spy, "record", "-r", "50", "-f", "raw", "-p", str(pid),
                                  "-o", str(self.profile / f"{what}-{side}.txt")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for side, pid in (("agent", agent), ("server", server))]

    def capture(self, tls: bool, compress: str, keep: bool = False) -> Run:
        data = self.fresh(f"p2v-{'tls' if tls else 'http'}-{compress}")
        server = self.server(data, tls)
        try:
            images = str(data / "jobs")
            drop_cache(self.src.dev, self.src.part1)
            run, out = self.timed_agent(server, ["capture", *self.agent_args(server), "--disks",
                                                 self.src.dev, "--compress", compress,
                                                 "--name", "bench"], [], f"capture-{compress}")
            # No fsync to add to the time: the server fdatasyncs every chunk before acknowledging it.
            for top, _, files in os.walk(images):
                drop_cache(*(os.path.join(top, f) for f in files if f.endswith(".img")))
            run.out = allocated(images)
        finally:
            server.stop()
        if keep:
            self.restore_data = data
            self.restore_job = re.search(r"sealed in job (\S+?):", out).group(1)
        else:
            shutil.rmtree(data)
        return run

    def restore(self) -> Run:
        target = self.fresh("restore-target.img")
        with open(target, "wb") as f:
            f.truncate(self.size)
        server = self.server(self.restore_data, tls=False)
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
        finally:
            server.stop()
        target.unlink()
        return run


CONTENDERS = {
    "dd | nc": Bench.dd_nc,
    "clonezilla (partclone|zstd|nc)": Bench.clonezilla,
    "nbdkit + nbdcopy": Bench.nbd,
    "xenp2v http, compress off": lambda b: b.capture(False, "off", keep=True),
    "xenp2v http, zstd": lambda b: b.capture(False, "zstd"),
    "xenp2v tls, compress off": lambda b: b.capture(True, "off"),
    "xenp2v tls, zstd": lambda b: b.capture(True, "zstd"),
    "xenp2v restore (http)": Bench.restore,
}
PEERS = ("dd | nc", "clonezilla (partclone|zstd|nc)", "nbdkit + nbdcopy")
PEER_SHORT = {"dd | nc": "dd", "clonezilla (partclone|zstd|nc)": "cz", "nbdkit + nbdcopy": "nbd"}


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def table(results: dict[str, Result], header: str) -> str:
    peers = {p: results[p] for p in PEERS if p in results}
    cols = ["contender", "wall s", "runs", "CPU s", "wire MB", "image MB", "src RSS MB",
            "recv RSS MB"]
    cols += [f"t/{PEER_SHORT[p]}" for p in peers] + ["wire/cz"]
    rows = []
    for name, r in results.items():
        row = [name, f"{r.wall:.1f}", " ".join(f"{x.wall:.0f}" for x in r.runs),
               f"{statistics.median(x.cpu for x in r.runs):.0f}", mb(r.median("wire")),
               mb(r.median("out")), mb(r.worst("send_rss")), mb(r.worst("recv_rss"))]
        row += [f"{r.wall / p.wall:.2f}" for p in peers.values()]
        cz = peers.get("clonezilla (partclone|zstd|nc)")
        row.append(f"{r.median('wire') / cz.median('wire'):.2f}" if cz else "-")
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    fmt = lambda row: " | ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                 for i, (v, w) in enumerate(zip(row, widths)))
    lines = [header, fmt(cols), "-+-".join("-" * w for w in widths)] + [fmt(row) for row in rows]
    return "\n".join(lines)


def targets(results: dict[str, Result], tera: Result | None) -> list[str]:
    out = []

    def check(ok: bool | None, text: str) -> None:
        out.append(f"{'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {text}")

    get = results.get
    dd, cz, nbd = get("dd | nc"), get("clonezilla (partclone|zstd|nc)"), get("nbdkit + nbdcopy")
    for proto in ("http", "tls"):
        off, z = get(f"xenp2v {proto}, compress off"), get(f"xenp2v {proto}, zstd")
        if off and nbd and dd:
            check(off.wall <= nbd.wall / 2 and off.wall <= dd.wall / 4,
                  f"{proto} compress off: {off.wall:.1f} s <= nbdkit+nbdcopy/2 "
                  f"({nbd.wall / 2:.1f} s) and <= dd|nc/4 ({dd.wall / 4:.1f} s)")
        if z and cz:
            check(z.median("wire") <= 1.1 * cz.median("wire") and z.wall < cz.wall,
                  f"{proto} zstd: wire {mb(z.median('wire'))} MB <= 1.1 x clonezilla "
                  f"({mb(int(1.1 * cz.median('wire')))} MB) and {z.wall:.1f} s < {cz.wall:.1f} s")
    if tera:
        check(tera.wall < 180, f"1 TiB disk, 1% used: {tera.wall:.1f} s < 180 s")
    else:
        check(None, "1 TiB disk, 1% used: not run (make bench BENCH_ARGS=--tera)")
    ours = [r for n, r in results.items() if n.startswith("xenp2v")] + ([tera] if tera else [])
    if ours:
        agent = max(r.worst("send_rss") for r in ours)
        server = max(r.worst("recv_rss") for r in ours)
        check(agent < 150e6 and server < 150e6,
              f"peak memory: agent {mb(agent)} MB, server {mb(server)} MB, each < 150 MB")
    rest, off = get("xenp2v restore (http)"), get("xenp2v http, compress off")
    if rest and off:
        check(rest.wall <= off.wall, f"restore {rest.wall:.1f} s <= capture {off.wall:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/var/cache/xenp2v/bench"),
                    help="where the fixture disks and outputs live (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=3, help="runs per contender (default 3)")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only contenders whose name contains NAME (may repeat)")
    ap.add_argument("--tera", action="store_true",
                    help="also capture a 1 TiB disk with 1%% used (makes it once: ~10 GiB copied)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="record py-spy profiles of agent and server (raw stacks) into DIR")
    ap.add_argument("--streams", type=int, metavar="N",
                    help="parallel connections of agent capture and restore (default: theirs)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("The benchmark needs root (loop devices, nftables, page cache): run it with sudo.",
              file=sys.stderr)
        return 2
    names = [n for n in CONTENDERS if not args.only or any(o in n for o in args.only)]
    if "xenp2v restore (http)" in names and "xenp2v http, compress off" not in names:
        names.insert(names.index("xenp2v restore (http)"), "xenp2v http, compress off")
    image = fixture.ensure(args.cache, fixture.SPEC_8G)
    tera_image = fixture.ensure(args.cache, fixture.SPEC_1T) if args.tera else None
    (args.cache / "out").mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    results = {n: Result(n) for n in names}
    tera = None
    with fixture.Loop(image, read_only=True) as src:
        bench = Bench(args.cache, src, image.stat().st_size, args.profile, args.streams)
        try:
            for round_ in range(args.runs):
                for name in names:
                    run = CONTENDERS[name](bench)
                    results[name].runs.append(run)
                    print(f"round {round_ + 1}/{args.runs}  {name}: {run.wall:.1f} s, "
                          f"wire {mb(run.wire)} MB, image {mb(run.out)} MB, "
                          f"RSS {mb(run.send_rss)}/{mb(run.recv_rss)} MB, CPU {run.cpu:.0f} s  "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
            if tera_image:
                with fixture.Loop(tera_image, read_only=True) as big:
                    tb = Bench(args.cache, big, tera_image.stat().st_size, args.profile,
                               args.streams)
                    tera = Result("xenp2v http, off, 1 TiB 1% used")
                    tera.runs.append(tb.capture(False, "off"))
                    tb.counter.close()
        finally:
            bench.counter.close()
            if bench.restore_data:
                shutil.rmtree(bench.restore_data, ignore_errors=True)
    load_after = os.getloadavg()
    header = (f"xenp2v bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: 8 GiB ext4 "
              f"fixture (2.5 GiB files, 2 GiB deleted random), {os.cpu_count()} cores, load "
              f"{load_before[0]:.1f}/{load_before[1]:.1f} before, {load_after[0]:.1f}/"
              f"{load_after[1]:.1f} after; cold cache each run; median of {args.runs}\n"
              "wall s = median; runs = each run's time; wire = TCP bytes both ways on lo (nft); "
              "image = allocated (du); RSS = peak of each side's process tree; CPU = user+sys s of both sides; "
              "t/X = time ratio to peer X; wire/cz = wire ratio to clonezilla")
    shown = dict(results)
    if tera:
        shown[tera.name] = tera
    print()
    print(table(shown, header))
    print()
    print("\n".join(targets(results, tera)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
