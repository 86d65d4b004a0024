"""`/metrics` in Prometheus' text format (version 0.0.4): what the server did since it started
(counters, kept here as requests pass) and what it holds now (gauges, read from the store).

Counters come from a middleware that looks at each answer, so the API's handlers stay as they
are: a chunk PUT answered 201 was written, 200 was already held (a resend), 422 bad_digest failed
its digest; a completion answered with an error is a seal failure; a chunk GET's body is restore
traffic. Only requests that passed the token check count (latencies excepted): a caller without
a token cannot move a counter. Received bytes are those the handler read, not what a header says.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import defaultdict

from aiohttp import web

from server.api import BODY_READ, SCOPE
from xenp2v.protocol import API, JobState

# Request latency buckets, in seconds: a chunk PUT takes tens of milliseconds, an export minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

CHUNK_ROUTE = API + "/jobs/{job}/disks/{disk}/chunks/{index}"
COMPLETE_ROUTE = API + "/jobs/{job}/disks/{disk}/complete"


class Counters:
    """What the server counted since it started; safe from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.values: dict[str, float] = defaultdict(float)
        # (method, route, status class) -> [count per bucket..., +Inf count, sum]
        self.latency: dict[tuple[str, str, str], list[float]] = {}

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self.values[name] += amount

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, f"{status // 100}xx")
        with self._lock:
            row = self.latency.setdefault(key, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[len(BUCKETS)] += 1
            row[-1] += seconds

    def snapshot(self) -> tuple[dict[str, float], dict[tuple, list[float]]]:
        with self._lock:
            return dict(self.values), {k: list(v) for k, v in self.latency.items()}


COUNTERS = web.AppKey("metrics_counters", Counters)


def _error_code(response: web.StreamResponse) -> str | None:
    body = getattr(response, "body", None)
    if not isinstance(body, (bytes, bytearray)) or not body.startswith(b"{"):
        return None
    try:
        return json.loads(body).get("error")
    except ValueError:
        return None


@web.middleware
async def count(request: web.Request, handler):
    """Times every request and counts what the chunk and completion answers say."""
    start = time.monotonic()
    response = None
    try:
        response = await handler(request)
        return response
    finally:
        counters = request.app[COUNTERS]
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = response.status if response is not None else 500
        counters.observe(request.method, route, status, time.monotonic() - start)
        _count_answer(counters, request, route, status, response)


def _count_answer(counters: Counters, request: web.Request, route: str, status: int,
                  response: web.StreamResponse | None) -> None:
    if SCOPE not in request:    # refused by the token check (or not an API route)
        return
    if route == CHUNK_ROUTE and request.method == "PUT":
        counters.add("received_bytes", request.get(BODY_READ, 0))
        if status == 201:
            counters.add("chunks_written")
        elif status == 200:
            counters.add("chunk_resends")
        elif response is not None and _error_code(response) == "bad_digest":
            counters.add("chunk_digest_failures")
    elif route == CHUNK_ROUTE and request.method == "GET" and status == 200 and response is not None:
        counters.add("restore_bytes", response.content_length or 0)
    elif route == COMPLETE_ROUTE and status >= 400:
        counters.add("seal_failures")
        if response is not None and _error_code(response) == "bad_digest":
            counters.add("image_digest_failures")
    elif route == COMPLETE_ROUTE:
        counters.add("seals")


# name, kind, help, source key in Counters.values
_COUNTERS = (
    ("xenp2v_received_bytes_total", "Bytes of chunk bodies received, as sent (compressed or not).",
     "received_bytes"),
    ("xenp2v_chunks_written_total", "Chunks checked and written into images (rate() of it is the "
     "chunk rate).", "chunks_written"),
    ("xenp2v_chunk_resends_total", "Chunks sent again that the server already held: the agent's "
     "retries after a lost answer, and resumes.", "chunk_resends"),
    ("xenp2v_chunk_digest_failures_total", "Chunks refused because their bytes did not match their "
     "digest.", "chunk_digest_failures"),
    ("xenp2v_seals_total", "Disks sealed (the agent's image digest matched).", "seals"),
    ("xenp2v_seal_failures_total", "Completions refused (wrong image digest, a disk already sealed "
     "otherwise, a cancelled job).", "seal_failures"),
    ("xenp2v_image_digest_failures_total", "Completions whose image digest did not match what the "
     "server holds.", "image_digest_failures"),
    ("xenp2v_restore_bytes_total", "Bytes of chunks served back for restores.", "restore_bytes"),
    ("xenp2v_sign_in_failures_total", "Dashboard sign-ins refused (wrong token or password).",
     "sign_in_failures"),
)


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def exposition(counters: Counters, store) -> str:
    """The whole /metrics page. Reads the store (jobs, held bytes): call it in a worker thread."""
    values, latency = counters.snapshot()
    out: list[str] = []
    for name, text, key in _COUNTERS:
        out += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {_number(values.get(key, 0))}"]
    jobs = store.list_jobs()
    by_state = {str(s): 0 for s in JobState}
    for job in jobs:
        by_state[job["state"]] = by_state.get(job["state"], 0) + 1
    out += ["# HELP xenp2v_jobs Jobs on this server by state.", "# TYPE xenp2v_jobs gauge"]
    out += [f"xenp2v_jobs{_labels(state=s)} {n}" for s, n in by_state.items()]
    stored = sum(d["held_bytes"] for job in jobs for d in job["disks"])
    out += ["# HELP xenp2v_stored_bytes Bytes of chunks held in the images of every job.",
            "# TYPE xenp2v_stored_bytes gauge", f"xenp2v_stored_bytes {stored}"]
    usage = shutil.disk_usage(store.data_dir)
    out += ["# HELP xenp2v_data_dir_free_bytes Free space on the data directory's filesystem.",
            "# TYPE xenp2v_data_dir_free_bytes gauge", f"xenp2v_data_dir_free_bytes {usage.free}",
            "# HELP xenp2v_data_dir_size_bytes Size of the data directory's filesystem.",
            "# TYPE xenp2v_data_dir_size_bytes gauge", f"xenp2v_data_dir_size_bytes {usage.total}"]
    name = "xenp2v_http_request_duration_seconds"
    out += [f"# HELP {name} Time from a request's arrival to its answer, by route.",
            f"# TYPE {name} histogram"]
    for (method, route, status), row in sorted(latency.items()):
        base = dict(method=method, route=route, status=status)
        for bound, n in zip(BUCKETS, row):
            out.append(f"{name}_bucket{_labels(**base, le=repr(bound))} {_number(n)}")
        out.append(f"{name}_bucket{_labels(**base, le='+Inf')} {_number(row[len(BUCKETS)])}")
        out.append(f"{name}_count{_labels(**base)} {_number(row[len(BUCKETS)])}")
        out.append(f"{name}_sum{_labels(**base)} {_number(row[-1])}")
    return "\n".join(out) + "\n"
