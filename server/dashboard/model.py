"""What the dashboard shows of a job, as plain data: the store's job and its latest events in,
the rows and bars the templates draw out. No I/O here."""

from __future__ import annotations

from xenp2v.protocol import DiskState, JobState

LIVE_PHASES = ("capture", "restore")


def human(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
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
    event = event or {}
    planned = planned or {}
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
        rate, eta = event["rate"], event.get("eta")
    return {
        "id": disk["id"], "size": disk["size"], "state": disk["state"], "pct": pct,
        "held": disk["held_bytes"], "expected": expected,
        "sent": event.get("sent"), "phase": event.get("phase") or ("sealed" if sealed else "waiting"),
        "rate": rate, "eta": eta,
        "message": event.get("message") or "",
        "warnings": [w for w in planned.get("warnings") or [] if isinstance(w, str)],
        "bad_ranges": disk.get("bad_ranges") or [],
        "digest": disk.get("digest"),
    }


def job_view(job: dict, latest: dict[str, dict], rates: dict[str, float] | None = None) -> dict:
    """A job's line in the list (and the head of its page); ``latest``: the last event per disk,
    ``rates``: bytes/s the server stores each disk at now."""
    rates = rates or {}
    inventory = job.get("inventory") or {}
    planned = {d.get("id"): d for d in inventory.get("disks") or [] if isinstance(d, dict)}
    receiving = job["state"] == JobState.RECEIVING
    disks = [disk_view(d, latest.get(d["id"]), planned.get(d["id"]), receiving, rates.get(d["id"]))
             for d in job["disks"]]
    last = job.get("last_event") or {}
    phase = job["state"] if not receiving else (last.get("phase") or "waiting for chunks")
    warnings = [f"{d['id']}: {w}" for d in disks for w in d["warnings"]]
    if job["records"].get("not_resumed"):
        warnings.append(job["records"]["not_resumed"])
    return {
        "id": job["id"], "name": job["name"], "machine": machine_label(inventory),
        "state": job["state"], "detail": job["detail"], "phase": phase,
        "phase_message": (last.get("message") or "") if receiving else "", "updated": job["updated"],
        "created": job["created"], "disks": disks,
        "sent": sum(d["sent"] or 0 for d in disks), "stored": sum(d["held"] for d in disks),
        "sealed": all(d["state"] == DiskState.SEALED for d in disks) and bool(disks),
        "warnings": warnings,
        "bad_ranges": sum(len(d["bad_ranges"]) for d in disks),
    }


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
