"""Capture: stream the source disks to the server, chunk by chunk, resumable, then seal them.

Per disk: a read plan (agent.disk.plan) names the used bytes; N streams take the chunks that hold
any in turn, and each reads its chunk into its own buffer (unused blocks zero-filled, never read),
sets it aside if it reads all zeros, else digests, maybe compresses, and PUTs it over its own
connection. Memory stays at one chunk per stream (and its compressed copy) whatever the disk,
and the source always has N reads in flight.
Chunks the server already holds with the same digest are not sent again, so a restarted agent
resumes where the last one stopped. At the end: the whole-image digest, the seal, the log.
"""

from __future__ import annotations

import dataclasses
import os
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.disk import blockdev, fsstate, inuse
from agent.warm import precopied
from agent.windows import winwarn
from agent.transfer.client import Client, ServerError
from agent.transfer.link import Compression, RateLimit
from agent.disk.plan import ReadPlan, clip, normalize, plan_disk, total
from agent.probe import Machine, ProbeError, probe_machine
from agent.probe.disks import disk_paths
from agent.transfer.progress import Progress, human
from agent.settings import Settings
from agent.transfer.source import SourceDisk, chunk_buffer, only_parts
from xenp2v import protocol

log = logging.getLogger(__name__)


class CaptureError(Exception):
    """Capture cannot go on; the message says what to do."""


@dataclass
class DiskResult:
    id: str
    device: str
    size: int
    chunk_size: int
    planned: int = 0         # bytes the plan reads
    sent: int = 0            # bytes that crossed the network (after compression)
    data_chunks: int = 0
    zero_chunks: int = 0
    skipped_chunks: int = 0  # already held by the server (resume)
    changed: int = 0         # bytes of the chunks sent (a final sync: what changed since)
    bad_ranges: list[list[int]] = field(default_factory=list)
    digest: str = ""
    warnings: list[str] = field(default_factory=list)  # the plan's, for the summary


@dataclass
class CaptureResult:
    job: str
    resumed: bool
    disks: list[DiskResult]
    sync: int | None = None  # the version a final sync (warm migration) wrote, else None
    # The job token the server gave (protocol: it touches this job only, and stops once the job
    # is done or failed): what the manual path's boot line carries. None from an older server.
    token: str | None = field(default=None, repr=False)


# --- which disks, and the inventory ----------------------------------------------------------------

def disk_device(name: str) -> str:
    return name if name.startswith("/") else f"/dev/{name}"


def disk_id(device: str) -> str:
    return protocol.check_id(Path(device).name, "disk id")


def machine_inventory(machine: Machine) -> dict:
    """The inventory's "machine": identity (what makes the server resume rather than duplicate
    a job) and what the VM is sized from."""
    roots = machine.os_roots()
    return {
        "system_uuid": machine.system_uuid,
        "vendor": machine.vendor,
        "product": machine.product,
        "serial": machine.serial,
        "firmware": machine.firmware,
        "secure_boot": machine.secure_boot,
        "cpus": machine.cpu.threads if machine.cpu else None,
        "memory": machine.memory,
        "nics": [dataclasses.asdict(n) for n in machine.nics],
        "os": dataclasses.asdict(roots[0][1].os) if roots else None,
    }


DEV_DISK = Path("/dev/disk")


def disk_links(device: str, dev_disk: Path = DEV_DISK) -> list[str]:
    """udev's by-id and by-path names of the whole disk `device` (what the source's fstab may
    call it, with -partN); [] where udev made none."""
    real = os.path.realpath(device)
    out = []
    for kind in ("by-id", "by-path"):
        folder = dev_disk / kind
        if folder.is_dir():
            out += [f"/dev/disk/{kind}/{entry.name}" for entry in sorted(folder.iterdir())
                    if entry.is_symlink() and os.path.realpath(entry) == real]
    return out


def partition_record(part: blockdev.Partition) -> dict:
    """A partition as the inventory's table lists it: what the repair finds its filesystem by on
    the VM's disks (UUID, then label, then start and size), never by its number alone."""
    return {"number": part.number, "start": part.start, "size": part.size, "type": part.type,
            **filesystem_record(part.node)}


def filesystem_record(node: str) -> dict:
    """{"fstype", "uuid", "label"}: what blkid finds on `node`, None where it finds nothing."""
    found = blockdev.filesystem(node)
    return {"fstype": found.get("TYPE"), "uuid": found.get("UUID"), "label": found.get("LABEL")}


def disk_inventory(plan: ReadPlan, serial: str | None, table: blockdev.PartitionTable | None,
                   links: list[str] = (), chunk_size: int | None = None) -> dict:
    """One disk of the inventory (see xenp2v.protocol): what the server reserves for it, what
    tells it apart from another machine's disk when a job is resumed (down to the filesystems
    it holds), and what the repair maps the source's device names by."""
    chosen, chunk_size = chunk_size, chunk_size or protocol.chunk_size_for(plan.size)
    whole = filesystem_record(plan.device) if table is None else None
    return {
        "id": disk_id(plan.device), "size": plan.size, "used": min(plan.read_bytes, plan.size),
        "used_chunks": sum(1 for _, parts in plan.chunks(chunk_size) if parts),
        "serial": serial,
        "table": None if table is None else {
            "label": table.label, "id": table.id,
            "partitions": [partition_record(p) for p in table.partitions]},
        "filesystem": whole if whole and whole["fstype"] else None,
        "links": list(links),
        "device": plan.device, "plan": plan.notes, "warnings": plan.warnings,
        **({"chunk_size": chosen} if chosen else {}),
    }


def inventory(settings: Settings, disks: list[dict], machine: dict) -> dict:
    inv = {
        "name": settings.name or socket.gethostname(),
        "machine": machine,
        "disks": disks,
    }
    if settings.vcpus:
        inv["vcpus"] = settings.vcpus
    if settings.memory:
        inv["memory"] = settings.memory
    return inv


def select_disks(settings: Settings, probed: Machine | None) -> tuple[list[str], Machine]:
    """Device paths of the disks to capture, and the probe they come from."""
    limited = False
    if probed is None:
        named = [disk_device(d) for d in settings.disks] if settings.disks else None
        try:
            probed = probe_machine(devices=named)
        except ProbeError as e:
            raise CaptureError(str(e)) from None
        limited = bool(named)
    try:
        disks = probed.select_disks(settings.disks)
    except ValueError as e:
        if not limited:
            raise CaptureError(str(e)) from None
        try:   # the probe looked at the named disks only: the sentence lists the machine's
            probed.select_disks(settings.disks, [Path(p).name for p in disk_paths()])
        except ValueError as e2:
            raise CaptureError(str(e2)) from None
        raise CaptureError(str(e)) from None
    if not disks:
        raise CaptureError("No disk to capture was found; name them with --disks (p2v.disks=).")
    return [d.path for d in disks], probed


def refuse_disks_in_use(devices: list[str]) -> None:
    """CaptureError, one sentence per use, when something on this machine uses a chosen disk:
    a disk in use changes while it is read, and its used-block maps go stale."""
    busy = [use.sentence() for dev in devices for use in inuse.uses(dev)]
    if busy:
        raise CaptureError(
            "A disk to capture is in use, so it would change while it is copied. "
            + " ".join(busy) + " Or boot the stick again without mounting the machine's disks, "
            "then capture again.")


def refuse_hibernated_windows(probed: Machine, devices: list[str]) -> None:
    """CaptureError before anything is sent when a chosen disk holds a Windows that is not on
    its disk yet (hibernated, Fast Startup, a log to replay): its copy could not boot, and the
    hours of the transfer would be lost. `--allow-hibernated` copies it anyway."""
    found = winwarn.stops(probed, devices)
    if found:
        raise CaptureError(
            " ".join(found) + " Windows' last changes are not on the disk yet, so a copy of it "
            f"cannot be made to boot on the VM: {fsstate.WINDOWS_SHUTDOWN}; then capture again. "
            "To copy it as it is anyway (whole, to keep its data; repair refuses such a copy), "
            "capture with --allow-hibernated (p2v.allow_hibernated).")


# --- the run -------------------------------------------------------------------------------------

def run(settings: Settings, progress: Progress | None = None, *, client: Client | None = None,
        probed: Machine | None = None, identity: dict | None = None,
        retry_for: float = 600.0, chunk_size: int | None = None) -> CaptureResult:
    """Capture the settings' disks into a (new or resumed) job; raises CaptureError.

    `probed` is the probe the TUI already made (else the disks are probed here); `identity`
    replaces the machine's identity fields (tests capture many "machines" from one box);
    `chunk_size` (bytes, a power of two the protocol allows) replaces every disk's chosen one
    (tests: make chaos cuts 64 KiB chunks).
    """
    progress = progress or Progress()
    buffer = LogBuffer()
    agent_log = logging.getLogger("agent")
    level = agent_log.level
    agent_log.addHandler(buffer)
    if agent_log.getEffectiveLevel() > logging.INFO:
        agent_log.setLevel(logging.INFO)
    events = None
    job_id = None
    try:
        client = client or Client(settings.server, settings.token, settings.fingerprint,
                                  retry_for=retry_for)
        # The pre-copy job a final sync goes into is looked up while the disks are probed and
        # planned (named by --job) or planned (found by this machine's identity): downtime.
        lookup = _Background(precopy_jobs, client, settings, None) if settings.job else None
        with blockdev.remembering():
            devices, probed = select_disks(settings, probed)
            refuse_disks_in_use(devices)
            if not settings.allow_hibernated:
                refuse_hibernated_windows(probed, devices)
            machine = {**machine_inventory(probed), **(identity or {})}
            lookup = lookup or _Background(precopy_jobs, client, settings, machine)
            plans = []
            for dev in devices:
                progress.start(disk_id(dev), 0, "plan", "mapping the used blocks of its filesystems")
                plan = plan_disk(dev, devices, settings.keep_pagefile)
                for note in plan.notes:
                    if note in plan.warnings:
                        log.warning("plan: %s", note)
                    else:
                        log.info("plan: %s", note)
                plans.append(plan)
            serials = {d.path: d.serial for d in probed.disks}
            disks = [disk_inventory(p, serials.get(p.device), blockdev.partition_table(p.device),
                                    disk_links(p.device), chunk_size) for p in plans]
        names = renamed_disks(lookup.result(), settings, machine, disks)
        for d in disks:
            d["id"] = names.get(d["id"], d["id"])
        job = open_job(client, settings, inventory(settings, disks, machine))
        job_id = job["id"]
        log.info("job %s (%s)", job_id, "resumed" if job.get("resumed") else "new")
        sync = job.get("version") if job.get("pass") == "final" else None
        if sync:
            log.info("final sync of pre-copy job %s: version %d of its images; only the chunks "
                     "that differ from the last pass are sent", job_id, sync)
        if job.get("not_resumed"):
            log.warning("%s", job["not_resumed"])
        geometry = {d["id"]: d for d in job["disks"]}
        events = _ServerEvents(client, job_id, buffer)
        progress.subscribe(events)
        results = []
        for plan, disk in zip(plans, disks):
            did = disk["id"]
            results.append(capture_disk(client, job_id, did, plan, geometry[did]["chunk_size"],
                                        settings, progress, sync=bool(sync)))
        _upload_log(client, job_id, buffer)
        return CaptureResult(job_id, bool(job.get("resumed")), results, sync, job.get("token"))
    except CaptureError as e:
        _tell_server(client, job_id, buffer, str(e))
        raise
    except ServerError as e:
        raise _tell_server(client, job_id, buffer, str(e)) from None
    except blockdev.BlockDevError as e:
        raise _tell_server(client, job_id, buffer,
                           f"{e} Check the disk names given with --disks.") from None
    except OSError as e:
        raise _tell_server(client, job_id, buffer, f"Cannot read {e.filename or 'a source disk'}: "
                           f"{e.strerror}.") from None
    finally:
        agent_log.removeHandler(buffer)
        agent_log.setLevel(level)
        if events in progress.subscribers:  # the caller's Progress may serve a later run
            progress.subscribers.remove(events)


def precopy_jobs(client: Client, settings: Settings, machine: dict | None) -> list[dict]:
    """The jobs a final sync may go into: the one --job names (`machine` None), else the jobs
    the token lists when this machine has an identity; [] for none, an older server, or a token
    that cannot list (the create then decides alone)."""
    if not settings.job and protocol.machine_key(machine or {}) is None:
        return []
    try:
        return [client.job(settings.job)] if settings.job else \
            client.request("GET", protocol.jobs_path(), what="list the jobs").json()
    except ServerError:
        return []


def renamed_disks(jobs: list[dict], settings: Settings, machine: dict,
                  disks: list[dict]) -> dict[str, str]:
    """{disk id here: its id in the machine's pre-copy job among `jobs`} where the stick names a
    disk of that job otherwise than the running system did (said in a warning); {} elsewhere."""
    job = precopied.precopy_job(jobs, machine, settings.job) if jobs else None
    names = precopied.renamed(disks, job["inventory"].get("disks", [])) if job else {}
    if names:
        log.warning("%s", precopied.sentence(job["id"], names))
    return names


class _Background:
    """fn(*args) on a thread of its own; result() waits for it and gives its return or raises
    what it raised."""

    def __init__(self, fn, *args):
        self._out: tuple = ()
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True,
                                        name="lookup")
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._out = (fn(*args), None)
        except BaseException as e:  # noqa: BLE001 - raised again in result(), on the caller's thread
            self._out = (None, e)

    def result(self):
        self._thread.join()
        value, error = self._out
        if error is not None:
            raise error
        return value


def open_job(client: Client, settings: Settings, inv: dict) -> dict:
    """A new job, the server's unfinished one for this machine, or the one `--job` names (the
    server refuses it, saying why, unless it holds these very disks)."""
    if not settings.job:
        return client.create_job(inv)
    job = client.create_job({**inv, "job": settings.job})
    if job["id"] != settings.job:
        raise CaptureError(
            f"The server answered job {job['id']}, not job {settings.job}: it is older than this "
            "agent and cannot resume a job by name. Update p2v-server, or drop --job (p2v.job=).")
    return job


def capture_disk(client: Client, job: str, did: str, plan: ReadPlan, chunk_size: int,
                 settings: Settings, progress: Progress, sync: bool = False) -> DiskResult:
    """Sends one disk and seals it. `sync`: a final sync into a pre-copy job, whose chunks were
    read whole on the running system: each held chunk the plan reads is read whole, once, and
    kept when it matches (a difference in its free blocks only would not count), else sent as
    the plan reads it; a held chunk of known zeros is declared zero, never read."""
    result = DiskResult(did, plan.device, plan.size, chunk_size, planned=plan.read_bytes,
                        warnings=list(plan.warnings))
    held = client.held_chunks(job, did)
    # A final sync: the held chunks that hold nothing the source uses now are zero at the seal
    # whatever is read; the server punches them while the rest is read, not in the downtime.
    unused = unused_chunks(plan, chunk_size, held) if sync else []
    declaring = _Background(declare_unused, client, job, did, unused) if unused else None
    progress.start(did, plan.read_bytes, "capture",
                   f"final sync: reading {human(plan.read_bytes)}, sending what changed" if sync
                   else "")
    sender = _Sender(client, job, did, held, settings, progress, result, whole_match=sync)
    digests, zero, bad = sender.run(plan, plan.chunks(chunk_size))
    if declaring:
        declaring.result()

    # What the server holds now must be exactly what was sent; anything else is sent again.
    held = client.held_chunks(job, did)
    missing = sorted(i for i, d in digests.items() if held.get(i) != d)
    if missing:
        log.warning("%s: the server lacks %d chunks it acknowledged; sending them again", did,
                    len(missing))
        again = ((i, clip(plan.used, i * chunk_size, (i + 1) * chunk_size)) for i in missing)
        more, _, bad2 = _Sender(client, job, did, {}, settings, progress, result).run(
            plan, again, count_progress=False, zero_as_data=True)
        digests.update(more)
        bad = sorted(set(map(tuple, bad + bad2)))
        held = client.held_chunks(job, did)
    # Chunks held from an earlier run that this plan does not read (a file deleted since, or
    # another machine's bytes): sealed as zero, so the server forgets and punches them; as data
    # they would put bytes the source no longer uses onto the target.
    zero = sorted(set(zero) | (held.keys() - digests.keys()) | set(unused))
    result.bad_ranges = [list(r) for r in bad]
    result.data_chunks, result.zero_chunks = len(digests), len(zero)
    result.digest = protocol.image_digest(plan.size, chunk_size, digests, zero)
    progress.phase(did, "seal")
    client.complete(job, did, result.digest, [list(r) for r in protocol.runs(sorted(zero))],
                    result.bad_ranges)
    message = (f"sealed: {human(result.sent)} sent for {human(plan.read_bytes)} used of "
               f"{human(plan.size)}")
    if sync:
        message = (f"final sync sealed: {human(result.changed)} changed since the last pass "
                   f"({human(result.sent)} sent), {human(plan.read_bytes)} read")
    if result.bad_ranges:
        message += (f"; {len(result.bad_ranges)} unreadable ranges "
                    f"({human(sum(n for _, n in result.bad_ranges))}) were zero-filled: "
                    + ", ".join(f"{o}+{n}" for o, n in result.bad_ranges[:8]))
        log.warning("%s: unreadable ranges zero-filled: %s", did, result.bad_ranges)
    progress.phase(did, "done", message)
    log.info("%s: %s", did, message)
    return result


def unused_chunks(plan: ReadPlan, chunk_size: int, held: dict[int, str]) -> list[int]:
    """The held chunks the plan reads nothing of (a file deleted since the pass, the free space
    the pass read on the running system): zero at the seal, whatever is read."""
    used = {index for index, parts in plan.chunks(chunk_size) if parts}
    return sorted(i for i in held if i not in used)


def declare_unused(client: Client, job: str, did: str, unused: list[int]) -> None:
    """Tells the server the `unused` chunks of `did` ahead of the seal. An older server, or one
    that cannot, leaves them to the seal, which declares them zero too."""
    try:
        client.zero_chunks(job, did, [list(r) for r in protocol.runs(unused)])
    except ServerError as e:
        log.info("%s: the server punches the %d chunks no longer used at the seal (%s)", did,
                 len(unused), e)


class _Sender:
    """N streams over one chunk list: each reads its next chunk from the source into its own
    buffer, digests it, maybe compresses it, and PUTs it over its own connection. Memory is one
    chunk per stream, and the disk always has N reads in flight."""

    def __init__(self, client: Client, job: str, did: str, held: dict[int, str],
                 settings: Settings, progress: Progress, result: DiskResult,
                 whole_match: bool = False):
        self.client, self.job, self.did, self.held = client, job, did, held
        self.whole_match = whole_match
        self.streams = max(1, settings.streams)
        self.compression = Compression(settings.compress, self.streams)
        self.limit = RateLimit(settings.bwlimit)
        self.progress = progress
        self.result = result
        self.digests: dict[int, str] = {}
        self.zero: list[int] = []
        self.bad: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.failure: BaseException | None = None

    def run(self, plan: ReadPlan, chunks, count_progress: bool = True,
            zero_as_data: bool = False) -> tuple[dict[int, str], list[int], list[tuple]]:
        todo = iter(chunks)
        threads = [threading.Thread(target=self._stream, daemon=True, name=f"send-{self.did}-{n}",
                                    args=(plan, todo, count_progress, zero_as_data))
                   for n in range(self.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.failure:
            if isinstance(self.failure, (ServerError, OSError)):
                raise self.failure  # run() turns these into sentences
            raise CaptureError(f"Sending {self.did} failed: {self.failure}") from self.failure
        bad = [(s, e - s) for s, e in normalize(self.bad)]
        return self.digests, sorted(set(self.zero) - self.digests.keys()), bad

    def _stream(self, plan: ReadPlan, todo, count_progress: bool, zero_as_data: bool) -> None:
        buffer = chunk_buffer(self.result.chunk_size)
        try:
            with SourceDisk(plan.device) as src:
                try:
                    while not self.failure:
                        with self.lock:
                            item = next(todo, None)
                        if item is None:
                            return
                        index, parts = item
                        offset, length = protocol.chunk_span(plan.size, self.result.chunk_size, index)
                        done = total(parts) if count_progress else 0
                        held = self.held.get(index)
                        if self.whole_match and held is not None:
                            chunk = self._held_whole(src, index, offset, length, parts, held,
                                                     buffer)
                            if chunk is None:
                                self.progress.advance(self.did, done=done)
                                continue
                        else:
                            chunk = src.read_chunk(index, offset, length, parts, buffer)
                        if chunk.zero and not zero_as_data and (held is None
                                                                or held == _zero_digest(length)):
                            with self.lock:
                                self.zero.append(index)
                                if held is not None:  # sent as data before: keep the server's view
                                    self.digests[index] = held
                            self.progress.advance(self.did, done=done)
                            continue
                        self._send(chunk, done)
                finally:
                    with self.lock:
                        self.bad += [(s, s + n) for s, n in src.bad_ranges()]
        except BaseException as e:  # noqa: BLE001 - handed to run(), in the calling thread
            with self.lock:
                self.failure = self.failure or e

    def _held_whole(self, src: SourceDisk, index: int, offset: int, length: int, parts, held: str,
                    buffer):
        """A final sync's chunk the pre-copy pass sent: None when nothing is to be sent (the
        plan knows it as zeros alone: declared zero, never read; or it reads whole as the pass
        sent it, free blocks and all: the held chunk is kept), else the chunk as the plan reads it.
        One read of the whole chunk, where the plan's own reads would take several small ones
        and a second whole one to compare."""
        if not parts:
            with self.lock:
                self.zero.append(index)
            return None
        seen = len(src.bad)
        raw = src.read_chunk(index, offset, length, [(offset, offset + length)], buffer)
        if len(src.bad) > seen:  # unreadable: the plan's reads say which used bytes are lost
            del src.bad[seen:]
            return src.read_chunk(index, offset, length, parts, buffer)
        if protocol.chunk_digest(raw.data) == held:
            with self.lock:
                self.digests[index] = held
                self.result.skipped_chunks += 1
            return None
        return only_parts(raw, parts)

    def _send(self, chunk, done: int) -> None:
        digest = protocol.chunk_digest(chunk.data)
        wire = 0
        if self.held.get(chunk.index) == digest:
            with self.lock:
                self.result.skipped_chunks += 1
        else:
            body, compressed = self.compression.encode(chunk.data, chunk.read)
            self.limit.take(len(body))
            self.client.put_chunk(self.job, self.did, chunk.index, body, digest, compressed)
            self.compression.sent(len(body), len(chunk.data))
            wire = len(body)
        with self.lock:
            self.digests[chunk.index] = digest
            self.result.sent += wire
            self.result.changed += chunk.read if wire else 0
        self.progress.advance(self.did, done=done, sent=wire)


_ZERO_DIGESTS: dict[int, str] = {}


def _zero_digest(length: int) -> str:
    if length not in _ZERO_DIGESTS:
        _ZERO_DIGESTS[length] = protocol.chunk_digest(bytes(length))
    return _ZERO_DIGESTS[length]


class _ServerEvents:
    """Forwards progress to the server's event log, and the log lines written since, at most
    every few seconds (the dashboard tails the log as it grows), never blocking long."""

    def __init__(self, client: Client, job: str, buffer: "LogBuffer | None" = None,
                 interval: float = 5.0):
        self.client, self.job, self.buffer, self.interval = client, job, buffer, interval
        self.last = 0.0
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        now = time.monotonic()
        final = event.phase not in ("capture", "restore")
        with self.lock:
            if not final and now - self.last < self.interval:
                return
            self.last = now
        try:
            self.client.post_events(self.job, event.to_json(), retry_for=10.0)
        except ServerError as e:
            log.warning("progress not sent to the server: %s", e)
        if self.buffer is not None:
            _upload_log(self.client, self.job, self.buffer, retry_for=10.0)


class LogBuffer(logging.Handler):
    """Keeps the agent's log lines for upload to the server, as it goes and at the end
    (bounded); ``unsent`` and ``sent`` hand each line over once."""

    LIMIT = 4 * 1024 * 1024

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []
        self.size = 0
        self.uploaded = 0     # lines[:uploaded] are on the server

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if self.size + len(line) < self.LIMIT:
            self.lines.append(line)
            self.size += len(line) + 1

    def unsent(self) -> tuple[str, int]:
        """(the lines not uploaded yet as text, "" when none; the mark to pass to ``sent``)."""
        with self.lock:
            upto = len(self.lines)
            new = self.lines[self.uploaded:upto]
        return ("\n".join(new) + "\n" if new else ""), upto

    def sent(self, upto: int) -> None:
        with self.lock:
            self.uploaded = max(self.uploaded, upto)


def _tell_server(client: Client | None, job: str | None, buffer: LogBuffer,
                 why: str) -> CaptureError:
    """The CaptureError for `why`; once the job is open, the server gets the agent's log with
    that sentence last (tried for 10 s at most): an unattended run that powers off after
    failing used to leave the server with a job that just stopped."""
    if job and client:
        log.error("capture failed: %s", why)
        try:
            _upload_log(client, job, buffer, retry_for=10.0)
        except Exception as e:  # noqa: BLE001 - the failure being reported matters more
            log.warning("the failure was not reported to the server: %s", e)
    return CaptureError(why)


def _upload_log(client: Client, job: str, buffer: LogBuffer, retry_for: float | None = None) -> None:
    # One upload at a time: the progress thread and the end of the run may both get here.
    with _UPLOADING:
        text, upto = buffer.unsent()
        if not text:
            return
        try:
            client.post_log(job, text, retry_for=retry_for)
        except ServerError as e:
            log.warning("the agent log was not uploaded: %s", e)
            return
        buffer.sent(upto)


_UPLOADING = threading.Lock()
