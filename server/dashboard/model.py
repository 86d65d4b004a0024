"""What the dashboard shows of a job, as plain data: the store's job and its latest events in,
the rows and bars the templates draw out. No I/O here."""

from __future__ import annotations

import logging

from xenp2v.protocol import (
    EVENT_FIELDS, INVENTORY_FIELDS, NUMBER, REPAIR_FIELDS, DiskState, JobState, conform, fits,
)
from xenp2v.units import human_bytes

log = logging.getLogger("xenp2v.server")

LIVE_PHASES = ("capture", "restore")
UNKNOWN = "?"   # what a value of the wrong kind (an older or broken agent's) shows as


def number(value: object) -> float | None:
    """``value`` when it is a finite number (not a bool), else None."""
    return value if value is not None and fits(value, NUMBER) else None


def human(n: object) -> str:
    if n is None:
        return "—"
    if number(n) is None:
        return UNKNOWN
    return human_bytes(n)


def duration(seconds: object) -> str:
    if seconds is None:
        return "—"
    if number(seconds) is None:
        return UNKNOWN
    if seconds < 0:
        return "—"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def machine_label(inventory: dict) -> str:
    machine = inventory.get("machine") or {}
    words = [w for w in (machine.get("vendor"), machine.get("product")) if isinstance(w, str) and w]
    return " ".join(words)


def disk_view(disk: dict, event: dict | None, planned: dict | None, receiving: bool,
              stored_rate: float | None = None) -> dict:
    """One disk's line: a progress bar from what the server holds (it moves with every chunk);
    while the capture runs, the rate the server stores at (``stored_rate``, bytes/s, when it has
    watched long enough), else the agent's latest event's, and the ETA from it."""
    event = conform(event, EVENT_FIELDS)
    planned = conform(planned, INVENTORY_FIELDS["disks"][0])
    sealed = disk["state"] == DiskState.SEALED
    expected = disk["expected_bytes"] or disk["size"]
    if sealed:
        pct = 100
    else:   # zero chunks are never sent, so only the seal says 100 %
        pct = min(99, int(100 * disk["held_bytes"] / expected)) if expected else 0
    live = receiving and not sealed and event.get("phase") in LIVE_PHASES
    rate = eta = None
    if live and stored_rate:
        rate, eta = stored_rate, max(0, expected - disk["held_bytes"]) / stored_rate
    elif live and event.get("rate"):   # an agent's first event says 0 B/s: not a rate yet
        rate, eta = event["rate"], event.get("eta")   # UNKNOWN when of the wrong kind
    return {
        "id": disk["id"], "size": disk["size"], "state": disk["state"], "pct": pct,
        "held": disk["held_bytes"], "expected": expected,
        "sent": event.get("sent"), "phase": event.get("phase") or ("sealed" if sealed else "waiting"),
        "rate": rate, "eta": eta,
        "message": event.get("message") or "",
        "warnings": list(planned.get("warnings") or []),   # strings, UNKNOWN for a bad one
        "bad_ranges": disk.get("bad_ranges") or [],
        "digest": disk.get("digest"),
    }


def job_view(job: dict, latest: dict[str, dict], rates: dict[str, float] | None = None) -> dict:
    """A job's line in the list (and the head of its page); ``latest``: the last event per disk,
    ``rates``: bytes/s the server stores each disk at now."""
    rates = rates or {}
    inventory = inventory_view(job.get("inventory"))
    planned = {d["id"]: d for d in inventory.get("disks") or []
               if isinstance(d, dict) and isinstance(d.get("id"), str)}
    receiving = job["state"] == JobState.RECEIVING
    disks = [disk_view(d, latest.get(d["id"]), planned.get(d["id"]), receiving, rates.get(d["id"]))
             for d in job["disks"]]
    last = conform(job.get("last_event"), EVENT_FIELDS)
    phase = job["state"] if not receiving else (last.get("phase") or "waiting for chunks")
    warnings = [f"{d['id']}: {w}" for d in disks for w in d["warnings"]]
    if job["records"].get("not_resumed"):
        warnings.append(job["records"]["not_resumed"])
    return {
        "id": job["id"], "name": job["name"], "machine": machine_label(inventory),
        "state": job["state"], "detail": job["detail"], "phase": phase,
        "phase_message": (last.get("message") or "") if receiving else "", "updated": job["updated"],
        "created": job["created"], "disks": disks,
        "sent": sum(number(d["sent"]) or 0 for d in disks), "stored": sum(d["held"] for d in disks),
        "sealed": all(d["state"] == DiskState.SEALED for d in disks) and bool(disks),
        "warnings": warnings,
        "bad_ranges": sum(len(d["bad_ranges"]) for d in disks),
    }


def job_view_or_stub(job: dict, latest: dict[str, dict], rates: dict[str, float] | None = None) -> dict:
    """``job_view``, or when the job's records are beyond showing, its line with what is sure
    (id, name, state) and "?" for the rest: one broken job never takes the list down."""
    try:
        return job_view(job, latest, rates)
    except Exception:
        log.exception("The dashboard could not show job %s in full", job.get("id"))
        return {
            "id": job.get("id"), "name": job.get("name") or UNKNOWN, "machine": "",
            "state": job.get("state") or UNKNOWN, "detail": job.get("detail") or "",
            "phase": UNKNOWN, "phase_message": "", "updated": job.get("updated"),
            "created": job.get("created"), "disks": [], "sent": None, "stored": None,
            "sealed": False, "warnings": ["Some of this job's records cannot be shown: the "
                                          "server's log has the details."],
            "bad_ranges": 0,
        }


def inventory_view(inventory: object) -> dict:
    """The inventory as the job's page shows it: fields of the wrong kind are "?"."""
    return conform(inventory, INVENTORY_FIELDS)


def repair_view(report: object) -> dict | None:
    """The repair report as the job's page shows it (fields of the wrong kind "?"), or None."""
    return conform(report, REPAIR_FIELDS) if report else None


def event_view(event: object) -> dict:
    return conform(event, EVENT_FIELDS)


class Rates:
    """The rate each disk is stored at, from what the server held at each look (the pages poll
    every 2 s), over the last RATE_WINDOW seconds. Not thread-safe: hold a lock around it."""

    RATE_WINDOW = 10.0

    def __init__(self):
        self.samples: dict[tuple[str, str], list[tuple[float, int]]] = {}

    def look(self, job: dict, now: float) -> dict[str, float]:
        out = {}
        for disk in job["disks"]:
            key = (job["id"], disk["id"])
            if disk["state"] == DiskState.SEALED:
                self.samples.pop(key, None)
                continue
            seen = self.samples.setdefault(key, [])
            seen.append((now, disk["held_bytes"]))
            while len(seen) > 2 and now - seen[1][0] > self.RATE_WINDOW:
                seen.pop(0)
            (t0, held0), (t1, held1) = seen[0], seen[-1]
            if t1 - t0 >= 1.0:
                out[disk["id"]] = (held1 - held0) / (t1 - t0)
        return out


def diff_lines(diff: str) -> list[tuple[str, str]]:
    """(kind, line) of a unified diff, kind one of add, del, hunk, file, same."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        elif line.startswith("@@"):
            kind = "hunk"
        else:
            kind = "same"
        out.append((kind, line))
    return out


def actions(job: dict, can_provision: bool) -> list[str]:
    """The actions that make sense for the job now, in the order they are offered."""
    state = job["state"]
    sealed = all(d["state"] == DiskState.SEALED for d in job["disks"]) and bool(job["disks"])
    out = []
    if can_provision and sealed and state in (JobState.SEALED, JobState.FAILED):
        out.append("provision")
    if any(d["held_chunks"] for d in job["disks"]):
        out.append("verify")
    if state == JobState.RECEIVING:
        out.append("cancel")
    if state not in (JobState.RECEIVING, JobState.PROVISIONING, JobState.REPAIRING):
        out.append("delete")
    return out


ACTION_TEXT = {
    "provision": ("Provision", "Create this job's VM on the pool, import its disks and boot it on "
                  "the xenp2v ISO for the repair."),
    "verify": ("Verify", "Re-read every chunk of the job's images and check it against its digest. "
               "It reads the whole images: it takes a while on large disks."),
    "cancel": ("Cancel", "Stop this capture: the server refuses its further chunks and the agent "
               "stops with a message. The job cannot be resumed; a new capture starts over."),
    "delete": ("Delete", "Remove the job, its disk images, agent log and events from this server. "
               "A VM already made on a pool is not touched. This cannot be undone."),
}
