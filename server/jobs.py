"""`p2v-server jobs`: the jobs in a data directory and their state."""

from __future__ import annotations

import argparse
import json

from server.datadir import add_data_dir, existing_store
from xenp2v.units import human_bytes


def register(sub) -> None:
    p = sub.add_parser("jobs", help="list jobs and their state",
                       description="List the jobs in the data directory, with each disk's state.")
    add_data_dir(p)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of jobs (id, name, state, disks with id, size, state)")
    p.set_defaults(func=run)


def summary(job: dict) -> dict:
    """The shape `jobs --json` promises, plus progress fields."""
    return {
        "id": job["id"], "name": job["name"], "state": job["state"], "detail": job["detail"],
        "created": job["created"], "updated": job["updated"],
        "disks": [{k: d[k] for k in ("id", "size", "state", "held_bytes", "expected_bytes", "digest")}
                  for d in job["disks"]],
    }


def table(jobs: list[dict]) -> str:
    if not jobs:
        return "No jobs yet."
    lines = [f"{'JOB':<40} {'NAME':<20} {'STATE':<12} DISKS"]
    for job in jobs:
        disks = ", ".join(f"{d['id']} {human_bytes(d['size'])} {d['state']}"
                          + ("" if d["state"] == "sealed" else
                             f" ({human_bytes(d['held_bytes'])} of ~{human_bytes(d['expected_bytes'])})")
                          for d in job["disks"])
        lines.append(f"{job['id']:<40} {job['name'][:20]:<20} {job['state']:<12} {disks}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with existing_store(args) as store:
        jobs = [summary(j) for j in store.list_jobs()]
    print(json.dumps(jobs, indent=2) if args.json else table(jobs))
    return 0
