"""Many machines at once: N agents capture N different disks into one server at the same time.

Each agent captures its own small disk (fixture.SPEC_SMALL, made once per slot: its own GPT and
filesystem UUIDs, so the server sees N different machines' disks even though every agent runs on
this host with the same SMBIOS identity). First one agent alone into a fresh server, then all N
at once into another fresh one. Every job must end sealed, and `p2v-server verify` must find
every chunk of every image as sent. Reported: aggregate disk bytes per second (all images over
the time until the last agent is done) against the lone agent's, each agent's time, and the
server's peak RSS and CPU seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import fixture
from bench.measure import PeakRSS, allocated, drop_cache


@dataclass
class FleetRun:
    agents: int
    wall: float                 # start of all agents until the last one is done
    times: list[float]          # each agent's own time
    data: int                   # image bytes held at the end, all agents
    server_rss: int
    server_cpu: float
    agent_rss: int              # the largest agent's peak
    verified: int               # jobs sealed and verified

    @property
    def rate(self) -> float:
        return self.data / self.wall


def small_disks(cache: Path, count: int) -> list[Path]:
    """The cached small disks, made the first time (each about 40 s on this machine)."""
    return [fixture.ensure(cache, fixture.small_spec(n)) for n in range(count)]


def run(bench, images: list[Path], count: int, tls: bool = True) -> FleetRun:
    """`count` agents at once (bench's server settings, link and agent flags), defaults else."""
    data = bench.fresh(f"fleet-{count}")
    loops = [fixture.Loop(image, read_only=True) for image in images[:count]]
    for loop in loops:
        loop.__enter__()
    server = bench.server(data, tls)
    try:
        for loop in loops:
            drop_cache(loop.dev, loop.part1)
        t0 = psutil.Process(server.proc.pid).cpu_times()
        with PeakRSS() as rss:
            rss.watch("server", server.proc.pid)
            start = time.monotonic()
            agents = [subprocess.Popen(
                bench.agent_cmd(["capture", *bench.agent_args(server), "--disks", loop.dev,
                                 "--name", f"fleet-{n}"]),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for n, loop in enumerate(loops)]
            for n, agent in enumerate(agents):
                rss.watch(f"agent{n}", agent.pid)
            ends: dict[int, float] = {}
            while len(ends) < len(agents):
                for n, agent in enumerate(agents):
                    if n not in ends and agent.poll() is not None:
                        ends[n] = time.monotonic() - start
                time.sleep(0.05)
            wall = max(ends.values())
        t1 = psutil.Process(server.proc.pid).cpu_times()
        jobs = []
        for n, agent in enumerate(agents):
            out, err = agent.communicate()
            if agent.returncode:
                raise RuntimeError(f"agent {n} of {count} failed: {err.strip()[-800:]}")
            jobs.append(re.search(r"sealed in job (\S+?):", out).group(1))
    finally:
        server.stop()
        for loop in loops:
            loop.__exit__(None, None, None)
    for job in jobs:   # every chunk of every image read back and checked
        check = subprocess.run([sys.executable, "-m", "server.cli", "verify", "--data-dir",
                                str(data), job], capture_output=True, text=True, cwd=bench.repo)
        if check.returncode:
            raise RuntimeError(f"verify of job {job} failed: {check.stdout}{check.stderr}")
    held = allocated(str(data / "jobs"))
    shutil.rmtree(data)
    return FleetRun(count, wall, [ends[n] for n in range(len(agents))], held,
                    rss.peak["server"], (t1.user + t1.system) - (t0.user + t0.system),
                    max(v for k, v in rss.peak.items() if k.startswith("agent")), len(jobs))


def line(r: FleetRun) -> str:
    times = " ".join(f"{t:.1f}" for t in r.times)
    return (f"{r.agents} agent{'s' if r.agents > 1 else ''}: {r.wall:.1f} s, {r.data / 1e6:,.0f} MB "
            f"held, aggregate {r.rate / 1e6:,.0f} MB/s; each agent's time {times} s; server RSS "
            f"{r.server_rss / 1e6:,.0f} MB, CPU {r.server_cpu:.1f} s; agent RSS "
            f"{r.agent_rss / 1e6:,.0f} MB; {r.verified} sealed and verified")
