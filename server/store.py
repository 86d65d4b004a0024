"""Jobs (SQLite) and their disk images (sparse raw files), kept durable across kill -9.

Data directory layout::

    xenp2v.db                      jobs, disks, the chunk journal, events (SQLite, WAL)
    token                          the bearer token agents present (mode 0600)
    tls/cert.pem, tls/key.pem      the self-signed certificate agents pin
    jobs/<job>/disks/<disk>.img    one sparse raw image per source disk (its version 1)
    jobs/<job>/disks/<disk>.vN.img version N of it: each pass into a sealed pre-copy job (warm
                                   migration) writes a new version, cloned from the last sealed
                                   one (a reflink where the filesystem has them, else a copy)
    jobs/<job>/disks/<disk>.vN.next that clone, made as soon as version N-1 of a pre-copy job is
                                   sealed, while the source still runs: the next pass (the final
                                   sync: downtime) renames it instead of copying the image then
    jobs/<job>/agent.log           what the agent uploaded of its log

A chunk counts as held only once it is in the journal (the ``chunks`` table), and it enters the
journal only after its bytes are fdatasync'ed into the image, in group commits (see ``Journal``).
Before a held chunk is overwritten with different bytes its journal entry is removed, so the
journal never names bytes that are not on disk.

A sealed version never changes: its chunk digests, zero runs and image digest are copied into
``versions``/``version_chunks`` at the seal, and restore, export and import read the newest sealed
version. A later pass (a pre-copy again, or the final sync from the stick) writes version N+1 in
its own file, so a pass that fails or is cancelled leaves version N as it was. Old versions are
pruned at each seal: the newest ``keep_versions`` stay.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import secrets
import shutil
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from server.inventory import Inventory, parse_inventory, request_differs
from xenp2v.protocol import (
    FINISHED_JOB_STATES, ChunkKind, DiskState, ErrorCode, Extent, JobState, ProtocolError, check_id, chunk_count,
    PRECOPY_DIGEST, chunk_digest, chunk_span, disk_identity, image_digest, image_map, placeholder,
    precopy_image_digest, runs,
)
from xenp2v.units import human_bytes

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, machine_key TEXT, state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL,
    inventory TEXT NOT NULL, target_uuid TEXT, records TEXT NOT NULL DEFAULT '{}',
    repair TEXT, last_event TEXT);
CREATE TABLE IF NOT EXISTS disks (
    job TEXT NOT NULL, id TEXT NOT NULL, position INTEGER NOT NULL, size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL, expected INTEGER NOT NULL, state TEXT NOT NULL,
    digest TEXT, zero TEXT NOT NULL DEFAULT '[]', bad_ranges TEXT NOT NULL DEFAULT '[]',
    sealed REAL, PRIMARY KEY (job, id));
CREATE TABLE IF NOT EXISTS chunks (
    job TEXT NOT NULL, disk TEXT NOT NULL, idx INTEGER NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (job, disk, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    job TEXT NOT NULL, at REAL NOT NULL, event TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events (job);
CREATE INDEX IF NOT EXISTS jobs_target ON jobs (target_uuid);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, job TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    job TEXT NOT NULL, disk TEXT NOT NULL, version INTEGER NOT NULL, digest TEXT NOT NULL,
    zero TEXT NOT NULL, bad_ranges TEXT NOT NULL, sealed REAL NOT NULL, pass TEXT NOT NULL,
    live INTEGER NOT NULL, PRIMARY KEY (job, disk, version));
CREATE TABLE IF NOT EXISTS version_chunks (
    job TEXT NOT NULL, disk TEXT NOT NULL, version INTEGER NOT NULL, idx INTEGER NOT NULL,
    digest TEXT NOT NULL, PRIMARY KEY (job, disk, version, idx)) WITHOUT ROWID;
"""
# Columns added after the first release: (table, column, definition), added where missing.
COLUMNS = [
    ("disks", "version", "INTEGER NOT NULL DEFAULT 1"),  # the version being received or sealed
    ("chunks", "sha256", "TEXT"),  # a pre-copy sender's digest of the chunk (PRECOPY_DIGEST)
]
log = logging.getLogger(__name__)

DEFAULT_KEEP_VERSIONS = 2
_FICLONE = 0x40049409  # ioctl: the destination shares the source's extents (btrfs, XFS reflink=1)

_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
DIRECT_ALIGN = 4096  # what O_DIRECT wants of offsets, lengths and memory, on any device


@dataclass(frozen=True)
class SealedImage:
    job: str
    disk: str
    path: Path
    size: int
    chunk_size: int
    extents: list[Extent]
    version: int = 1


@dataclass(frozen=True)
class _Version:
    """A sealed version of a disk's image: what restore, export and import read."""

    job: str
    disk: str
    version: int
    path: Path
    size: int
    chunk_size: int
    digest: str
    zero: tuple[Extent, ...]


@dataclass
class _Disk:
    """What the write path needs of a disk, cached so a chunk costs no query for it."""

    job: str
    id: str
    size: int
    chunk_size: int
    state: DiskState
    path: Path
    fd: int | None = None
    direct_fd: int | None = None       # O_DIRECT, for aligned writes; -1 where not supported
    writers: int = 0
    sealing: bool = False
    cancelled: bool = False           # its job was cancelled: no more chunks, never sealed

    def close(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd = self.direct_fd = None


PRIVATE_DIR = 0o700   # the data directory and everything under it: migrated disks, tokens
PRIVATE_FILE = 0o600


def lock_down(data_dir: Path) -> None:
    """Makes the data directory and everything in it readable by its owner only: directories
    0700, files 0600 (images made by older servers were 0644, their directory 0755, so any local
    user read every migrated disk). Runs at each start; costs a stat per file."""
    for root, dirs, files in os.walk(data_dir):
        os.chmod(root, PRIVATE_DIR)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path) and os.stat(path).st_mode & 0o077:
                os.chmod(path, PRIVATE_FILE)


def private_dirs(path: Path) -> None:
    """Makes ``path`` and every missing parent of it, each 0700 whatever the umask
    (``mkdir(parents=True, mode=...)`` gives the parents the umask's mode, often 0755)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not directory.is_dir():
                raise
        os.chmod(directory, PRIVATE_DIR)   # mkdir's mode is masked by the umask


def not_found(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.NOT_FOUND, detail)


def conflict(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.CONFLICT, detail)


def cancelled(job_id: str, detail: str = "") -> ProtocolError:
    return ProtocolError(ErrorCode.JOB_CANCELLED,
                         f"Job {job_id} was cancelled on the server{': ' + detail if detail else '.'}"
                         " It takes no more chunks. Start a new capture if the machine is still "
                         "to be migrated.")


def storage_error(err: BaseException, where: Path) -> ProtocolError:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ProtocolError(ErrorCode.INSUFFICIENT_STORAGE,
                             f"The server's data directory {where} is full ({err.strerror}); "
                             "free space there, then resend.")
    if isinstance(err, sqlite3.OperationalError) and "full" in str(err):
        return ProtocolError(ErrorCode.INSUFFICIENT_STORAGE,
                             f"The server's job store in {where} is full; free space there, then resend.")
    return ProtocolError(ErrorCode.INTERNAL,
                         f"The server could not write under {where}: {err}. See the server's log.")


def _now() -> float:
    return time.time()


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Store:
    """Every job and image under one data directory. Safe to use from many threads at once."""

    def __init__(self, data_dir: str | os.PathLike, keep_versions: int = DEFAULT_KEEP_VERSIONS):
        """``keep_versions``: how many sealed versions of each disk's image stay (at least 1);
        older ones are pruned at each seal."""
        if keep_versions < 1:
            raise ValueError("Keep at least one version of each image (--keep-versions 1 or more).")
        self.keep_versions = keep_versions
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        private_dirs(self.jobs_dir)
        self.db_path = self.data_dir / "xenp2v.db"
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._disks: dict[tuple[str, str], _Disk] = {}
        self._gate = threading.Condition(self._lock)
        self._chunk_locks: dict[tuple[str, str, int], list] = {}
        self._versions: dict[tuple[str, str, int], _Version] = {}
        self._creating = threading.Lock()  # a create's checks and its INSERT are one step
        self._next: dict[tuple[str, str], threading.Thread] = {}  # clones made ahead (next_path)
        self._journal: Journal | None = None
        self._db().conn.executescript(SCHEMA)
        self._upgrade()
        lock_down(self.data_dir)

    def _upgrade(self) -> None:
        """Adds the columns a data directory made by an older server lacks, and records each
        disk it sealed as that disk's version 1."""
        conn = self._db().conn
        for table, column, definition in COLUMNS:
            if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        rows = conn.execute("SELECT d.* FROM disks d WHERE d.state=? AND NOT EXISTS (SELECT 1 FROM"
                            " versions v WHERE v.job=d.job AND v.disk=d.id AND v.version=d.version)",
                            (DiskState.SEALED,)).fetchall()
        for row in rows:
            with self._db() as db:
                self._snapshot(db, row["job"], row["id"], row["version"], row["digest"],
                               row["zero"], row["bad_ranges"], row["sealed"] or _now(), {})

    # --- plumbing -------------------------------------------------------------------------

    def _db(self) -> "_Txn":
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False,
                                   isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return _Txn(conn)

    def close(self) -> None:
        with self._lock:
            making = list(self._next.values())
        for thread in making:  # clones made ahead: finished, not cut off half-way
            thread.join()
        if self._journal:
            self._journal.stop()
            self._journal = None
        with self._lock:
            for disk in self._disks.values():
                disk.close()
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    def image_path(self, job_id: str, disk_id: str, version: int = 1) -> Path:
        """The file of a version of a disk's image: version 1 is <disk>.img, as it always was."""
        name = check_id(disk_id, "disk id") + ("" if version == 1 else f".v{version}")
        return self.jobs_dir / check_id(job_id, "job id") / "disks" / f"{name}.img"

    def next_path(self, job_id: str, disk_id: str, version: int) -> Path:
        """Version `version` of a disk's image made ahead, while the source still runs."""
        return self.image_path(job_id, disk_id, version).with_suffix(".next")

    def _make_next(self, job_id: str, disk_id: str, version: int) -> None:
        """Clones sealed version `version` of a pre-copy job's disk into next_path(version + 1),
        in a thread: the copy (where the filesystem has no reflinks) costs the source no
        downtime then. Written under another name and renamed once complete and synced."""
        def clone() -> None:
            done = self.next_path(job_id, disk_id, version + 1)
            partial = done.with_suffix(".partial")
            try:
                clone_image(self.image_path(job_id, disk_id, version), partial)
                partial.rename(done)
            except OSError as err:  # the pass then copies, as without this
                partial.unlink(missing_ok=True)
                log.warning("The copy of job %s disk %s made ahead for its next pass failed (%s); "
                            "the next pass copies the image when it starts.", job_id, disk_id, err)

        thread = threading.Thread(target=clone, name=f"p2v-next-{job_id}-{disk_id}", daemon=True)
        with self._lock:
            self._next[(job_id, disk_id)] = thread
        thread.start()

    def _take_next(self, job_id: str, disk_id: str, version: int, dst: Path) -> bool:
        """Whether the clone made ahead became `dst` (version `version`), waiting for one still
        being made; False when there is none."""
        with self._lock:
            thread = self._next.pop((job_id, disk_id), None)
        if thread is not None:
            thread.join()
        ready = self.next_path(job_id, disk_id, version)
        try:
            ready.rename(dst)
        except FileNotFoundError:  # a clone cut off by a server killed half-way is only garbage
            ready.with_suffix(".partial").unlink(missing_ok=True)
            return False
        return True

    def working_path(self, job_id: str, disk_id: str) -> Path:
        """The file of the version being received, or of the last one sealed."""
        return self._disk(job_id, disk_id).path

    def log_path(self, job_id: str) -> Path:
        return self.jobs_dir / check_id(job_id, "job id") / "agent.log"

    def _disk(self, job_id: str, disk_id: str) -> _Disk:
        key = (check_id(job_id, "job id"), check_id(disk_id, "disk id"))
        with self._lock:
            disk = self._disks.get(key)
        if disk:
            return disk
        row = self._db().conn.execute(
            "SELECT d.size, d.chunk_size, d.state, d.version, j.state AS job_state FROM disks d"
            " JOIN jobs j ON j.id=d.job WHERE d.job=? AND d.id=?", key).fetchone()
        if row is None:
            self._job_row(job_id)
            raise not_found(f"Job {job_id} has no disk {disk_id}.")
        disk = _Disk(job_id, disk_id, row["size"], row["chunk_size"], DiskState(row["state"]),
                     self.image_path(job_id, disk_id, row["version"]))
        # Only a cancel leaves a disk receiving in a failed job.
        disk.cancelled = row["job_state"] == JobState.FAILED and disk.state is DiskState.RECEIVING
        with self._lock:
            return self._disks.setdefault(key, disk)

    def _job_row(self, job_id: str) -> sqlite3.Row:
        row = self._db().conn.execute("SELECT * FROM jobs WHERE id=?",
                                      (check_id(job_id, "job id"),)).fetchone()
        if row is None:
            raise not_found(f"There is no job {job_id} on this server; 'p2v-server jobs' lists them.")
        return row

    # --- jobs -----------------------------------------------------------------------------

    def create_job(self, inv: Inventory) -> tuple[dict, bool]:
        """A new job for this inventory, or the unfinished one of the same machine with the same
        disks: (job, resumed). A new job made although another looked alike says why in its
        records (``not_resumed``).

        One create at a time: the space check counts what unfinished jobs hold, so two creates
        that both passed it before either was recorded would promise the same space twice (and
        two creates of one machine would both find nothing to resume)."""
        with self._creating:
            return self._create_job(inv)

    def _create_job(self, inv: Inventory) -> tuple[dict, bool]:
        why_not = None
        if inv.request_id:  # a retry of a create whose answer was lost: the job it made
            row = self._db().conn.execute(
                "SELECT id FROM jobs WHERE json_extract(inventory, '$.request_id')=?",
                (inv.request_id,)).fetchone()
            if row is not None:
                return self._replayed(row["id"], inv), False
        if inv.job:
            job_id = self._named(inv)
            if self._job_row(job_id)["state"] == JobState.SEALED:
                self._start_pass(job_id, inv)
            else:
                self._resume(job_id, inv)
            return self.get_job(inv.job), True
        if inv.resume:
            found, why_not = self._resumable(inv)
            if found:
                self._resume(found, inv)
                return self.get_job(found), True
            found, _ = self._resumable(inv, precopied=True)
            if found:
                self._start_pass(found, inv)
                return self.get_job(found), True
        self._check_space(inv)
        job_id = _new_job_id(inv.name)
        now = _now()
        (self.jobs_dir / job_id).mkdir(mode=PRIVATE_DIR)   # new: never another job's
        private_dirs(self.jobs_dir / job_id / "disks")
        try:
            for disk in inv.disks:
                fd = os.open(self.image_path(job_id, disk.id),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
                try:
                    os.ftruncate(fd, disk.size)
                finally:
                    os.close(fd)
        except OSError as err:
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            if err.errno in (errno.EFBIG, errno.EINVAL):
                raise ProtocolError(
                    ErrorCode.INSUFFICIENT_STORAGE,
                    f"The filesystem of {self.jobs_dir} cannot hold an image of "
                    f"{max(d.size for d in inv.disks)} bytes; put the data directory on XFS "
                    "(or another filesystem with large files).") from None
            raise storage_error(err, self.jobs_dir) from None
        try:
            with self._db() as db:
                db.execute("INSERT INTO jobs (id, name, machine_key, state, created, updated, inventory)"
                           " VALUES (?,?,?,?,?,?,?)",
                           (job_id, inv.name, inv.machine_key, JobState.RECEIVING, now, now,
                            json.dumps(inv.raw)))
                db.executemany(
                    "INSERT INTO disks (job, id, position, size, chunk_size, expected, state)"
                    " VALUES (?,?,?,?,?,?,?)",
                    [(job_id, d.id, i, d.size, d.chunk_size, d.expected, DiskState.RECEIVING)
                     for i, d in enumerate(inv.disks)])
        except sqlite3.Error as err:
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            raise storage_error(err, self.data_dir) from None
        if why_not:
            self.record(job_id, "not_resumed", why_not)
        if inv.precopy:
            self.record(job_id, "warm", {"pass": "precopy", "live": inv.live, "version": 1})
        return self.get_job(job_id), False

    def _replayed(self, job_id: str, inv: Inventory) -> dict:
        """The job a create with this request_id made, when ``inv`` is a retry of that create
        (its answer was lost). ProtocolError 409 when the request_id came with another
        inventory, or when that job is finished (a finished job gets no new token)."""
        row = self._job_row(job_id)
        differs = request_differs(parse_inventory(json.loads(row["inventory"])), inv)
        if differs:
            raise conflict(f"The request_id {inv.request_id} already made job {job_id} with another "
                           f"inventory; this create has {differs}. A new capture must send a new "
                           "request_id (the agent makes one per create).")
        if row["state"] in FINISHED_JOB_STATES:
            why = json.loads(row["records"] or "{}").get("cancelled")
            if why is not None:
                raise cancelled(job_id, why)
            raise conflict(f"The request_id {inv.request_id} made job {job_id}, which is "
                           f"{row['state']}: it takes no more chunks. Start a new capture if the "
                           "machine is still to be migrated.")
        return self.get_job(job_id)

    def _start_pass(self, job_id: str, inv: Inventory) -> None:
        """Opens version N+1 of every disk of a sealed pre-copy job, for another pass: each image
        is cloned from version N (a reflink, else a copy of its data), which stays as it is; the
        chunk journal carries over, since the clone holds the same bytes, so the agent sends only
        what changed. The job receives again and takes the new inventory."""
        kind = "precopy" if inv.precopy else "final"
        disks = self._db().conn.execute("SELECT id, version FROM disks WHERE job=?",
                                        (job_id,)).fetchall()
        made, how = [], set()
        try:
            for d in disks:
                dst = self.image_path(job_id, d["id"], d["version"] + 1)
                if self._take_next(job_id, d["id"], d["version"] + 1, dst):
                    how.add("a clone made when it was sealed")
                else:
                    how.add(clone_image(self.image_path(job_id, d["id"], d["version"]), dst))
                made.append(dst)
        except OSError as err:
            for path in made:
                path.unlink(missing_ok=True)
            raise storage_error(err, self.jobs_dir) from None
        version = max(d["version"] for d in disks) + 1
        with self._gate:
            for key in [k for k in self._disks if k[0] == job_id]:
                self._disks.pop(key).close()
        now = _now()
        event = {"phase": "pass", "message": f"A {'pre-copy' if inv.precopy else 'final sync'} "
                 f"pass of {inv.name}{' on the running system' if inv.live else ''} writes "
                 f"version {version} of its images ({' and '.join(sorted(how))} of the last "
                 "sealed one, which stays as it is)."}
        try:
            with self._db() as db:
                records = json.loads(db.execute("SELECT records FROM jobs WHERE id=?",
                                                (job_id,)).fetchone()[0])
                records["warm"] = {"pass": kind, "live": inv.live, "version": version}
                db.execute("UPDATE disks SET version=version+1, state=?, digest=NULL, zero='[]',"
                           " bad_ranges='[]', sealed=NULL WHERE job=?",
                           (DiskState.RECEIVING, job_id))
                db.execute("UPDATE jobs SET state=?, detail='', name=?, inventory=?, records=?,"
                           " updated=?, last_event=? WHERE id=?",
                           (JobState.RECEIVING, inv.name, json.dumps(inv.raw), json.dumps(records),
                            now, json.dumps({**event, "at": _iso(now)}), job_id))
                db.execute("INSERT INTO events (job, at, event) VALUES (?,?,?)",
                           (job_id, now, json.dumps(event)))
        except sqlite3.Error as err:
            for path in made:
                path.unlink(missing_ok=True)
            raise storage_error(err, self.data_dir) from None

    def _resume(self, job_id: str, inv: Inventory) -> None:
        """The resumed job takes the new inventory (name, machine, plan notes, warnings, tables:
        what the capture sees now), and its events say so."""
        now = _now()
        event = {"phase": "resumed", "message": f"Resumed by a new capture of {inv.name}; the "
                 "inventory is the one it sent."}
        try:
            with self._db() as db:
                db.execute("UPDATE jobs SET name=?, inventory=?, updated=?, last_event=? WHERE id=?",
                           (inv.name, json.dumps(inv.raw), now,
                            json.dumps({**event, "at": _iso(now)}), job_id))
                db.execute("INSERT INTO events (job, at, event) VALUES (?,?,?)",
                           (job_id, now, json.dumps(event)))
        except sqlite3.Error as err:
            raise storage_error(err, self.data_dir) from None

    def issue_token(self, job_id: str) -> str:
        """A new job token for `job_id`: it can touch only that job, and only until the job is
        done or failed. Only its SHA-256 is kept."""
        self._job_row(job_id)
        token = secrets.token_urlsafe(24)
        with self._db() as db:
            db.execute("INSERT INTO tokens (hash, job, created) VALUES (?,?,?)",
                       (_token_hash(token), job_id, _now()))
        return token

    def token_job(self, token: bytes) -> tuple[str, JobState, str | None] | None:
        """(job id, its state, why it was cancelled when it was) of a job token, or None when
        it is no job's token."""
        row = self._db().conn.execute(
            "SELECT t.job, j.state, j.records FROM tokens t JOIN jobs j ON j.id=t.job WHERE t.hash=?",
            (hashlib.sha256(token).hexdigest(),)).fetchone()
        if row is None:
            return None
        why = json.loads(row["records"] or "{}").get("cancelled")
        return row["job"], JobState(row["state"]), why if isinstance(why, str) else None

    def _resumable(self, inv: Inventory, precopied: bool = False) -> tuple[str | None, str | None]:
        """(the unfinished job of this machine with these very disks, else None; why an alike
        job was not taken, else None). A placeholder machine identity (machine_key None) is
        taken only with a disk serial to back it. ``precopied``: the sealed pre-copy job of
        this machine with these very disks instead (warm migration: the next pass goes there)."""
        if inv.machine_key is None and not any(not placeholder(d.identity[2]) for d in inv.disks):
            return None, None
        rows = self._db().conn.execute(
            "SELECT id, inventory FROM jobs WHERE machine_key IS ? AND state=?"
            + (" AND json_extract(records, '$.warm.pass')='precopy'" if precopied else "")
            + " ORDER BY created DESC",
            (inv.machine_key, JobState.SEALED if precopied else JobState.RECEIVING)).fetchall()
        want = sorted(d.identity for d in inv.disks)
        for row in rows:
            have = sorted(disk_identity(d) for d in json.loads(row["inventory"]).get("disks", []))
            if have == want:
                return row["id"], None
        if not rows:
            return None, None
        latest = rows[0]["id"]
        have = sorted(disk_identity(d) for d in json.loads(rows[0]["inventory"]).get("disks", []))
        return None, (f"Job {latest} is of a machine with the same identity, but "
                      f"{_disk_difference(have, want)}: this is a new job, so that the disks of "
                      "two machines are never mixed.")

    def _named(self, inv: Inventory) -> str:
        """The job the inventory names (``job``), if it still receives and holds these very disks,
        whatever the machine's identity (a board replaced); 404 or 409 saying why not."""
        row = self._job_row(inv.job)
        precopied = (row["state"] == JobState.SEALED
                     and (json.loads(row["records"]).get("warm") or {}).get("pass") == "precopy")
        if row["state"] != JobState.RECEIVING and not precopied:
            raise conflict(f"Job {inv.job} is {row['state']}: it takes no more chunks. Drop --job "
                           "(p2v.job=) to start a new job.")
        have = sorted(disk_identity(d) for d in json.loads(row["inventory"]).get("disks", []))
        want = sorted(d.identity for d in inv.disks)
        if have != want:
            raise conflict(f"Job {inv.job} holds other disks: {_disk_difference(have, want)}. Drop "
                           "--job (p2v.job=) to start a new job, or choose the same disks (ids, "
                           "sizes, serials, partition tables and filesystems must all be the same).")
        return inv.job

    def _check_space(self, inv: Inventory) -> None:
        needed = sum(d.expected for d in inv.disks)
        free = shutil.disk_usage(self.jobs_dir).free
        held = self.outstanding_by_job()
        promised = sum(held.values())
        if needed + promised > free:
            others = ""
            if promised:
                names = ", ".join(f"{job} {human_bytes(n)}" for job, n in
                                  sorted(held.items(), key=lambda kv: -kv[1])[:5])
                more = f" and {len(held) - 5} more" if len(held) > 5 else ""
                others = (f", of which {human_bytes(promised)} ({promised} bytes) are held for unfinished "
                          f"jobs ({names}{more})")
            raise ProtocolError(
                ErrorCode.INSUFFICIENT_STORAGE,
                f"The images of this job need {human_bytes(needed)} ({needed} bytes: each chunk that "
                "holds used blocks is stored whole, and a disk whose chunks the agent did not "
                f"count is reserved whole) but {self.jobs_dir} has {human_bytes(free)} ({free} bytes) "
                f"free{others}. Free space there, finish or remove the unfinished jobs, or start "
                "the server with --data-dir on a larger disk.")

    def outstanding_by_job(self) -> dict[str, int]:
        """Job id -> bytes its receiving disks may still store: space promised to unfinished jobs."""
        rows = self._db().conn.execute(
            "SELECT d.job, d.expected, d.chunk_size, (SELECT COUNT(*) FROM chunks c WHERE c.job=d.job"
            " AND c.disk=d.id) AS held FROM disks d JOIN jobs j ON j.id=d.job"
            " WHERE d.state=? AND j.state=?", (DiskState.RECEIVING, JobState.RECEIVING)).fetchall()
        out: dict[str, int] = {}
        for r in rows:
            due = max(0, r["expected"] - r["held"] * r["chunk_size"])
            if due:
                out[r["job"]] = out.get(r["job"], 0) + due
        return out

    def get_job(self, job_id: str) -> dict:
        row = self._job_row(job_id)
        db = self._db().conn
        disks = db.execute("SELECT * FROM disks WHERE job=? ORDER BY position", (job_id,)).fetchall()
        held = {r["disk"]: (r["n"], r["last"]) for r in db.execute(
            "SELECT disk, COUNT(*) AS n, MAX(idx) AS last FROM chunks WHERE job=? GROUP BY disk",
            (job_id,))}
        versions: dict[str, list[dict]] = {}
        for v in db.execute("SELECT disk, version, digest, sealed, pass, live FROM versions"
                            " WHERE job=? ORDER BY version", (job_id,)):
            versions.setdefault(v["disk"], []).append(
                {"version": v["version"], "digest": v["digest"], "sealed": _iso(v["sealed"]),
                 "pass": v["pass"], "live": bool(v["live"])})
        return _job_json(row, [{**_disk_json(d, held.get(d["id"], (0, None))),
                                "version": d["version"], "versions": versions.get(d["id"], [])}
                               for d in disks])

    def list_jobs(self) -> list[dict]:
        ids = [r["id"] for r in self._db().conn.execute("SELECT id FROM jobs ORDER BY created, id")]
        return [self.get_job(i) for i in ids]

    def set_state(self, job_id: str, state: JobState, detail: str = "") -> None:
        state = JobState(state)
        self._job_row(job_id)
        with self._db() as db:
            db.execute("UPDATE jobs SET state=?, detail=?, updated=? WHERE id=?",
                       (state, detail, _now(), job_id))

    def set_target_uuid(self, job_id: str, system_uuid: str) -> None:
        self._job_row(job_id)
        with self._db() as db:
            db.execute("UPDATE jobs SET target_uuid=?, updated=? WHERE id=?",
                       (system_uuid.strip().lower(), _now(), job_id))

    def job_for_machine(self, system_uuid: str) -> dict:
        row = self._db().conn.execute(
            "SELECT id FROM jobs WHERE target_uuid=? ORDER BY updated DESC LIMIT 1",
            (system_uuid.strip().lower(),)).fetchone()
        if row is None:
            raise not_found(f"No job has a target VM with SMBIOS UUID {system_uuid}.")
        return self.get_job(row["id"])

    def record(self, job_id: str, key: str, value) -> None:
        with self._db() as db:
            row = db.execute("SELECT records FROM jobs WHERE id=?", (check_id(job_id, "job id"),)).fetchone()
            if row is None:
                raise not_found(f"There is no job {job_id} on this server.")
            records = json.loads(row["records"])
            records[key] = value
            db.execute("UPDATE jobs SET records=?, updated=? WHERE id=?",
                       (json.dumps(records), _now(), job_id))

    def add_events(self, job_id: str, events: list[dict]) -> None:
        self._job_row(job_id)
        now = _now()
        with self._db() as db:
            db.executemany("INSERT INTO events (job, at, event) VALUES (?,?,?)",
                           [(job_id, now, json.dumps(e)) for e in events])
            db.execute("UPDATE jobs SET last_event=?, updated=? WHERE id=?",
                       (json.dumps({**events[-1], "at": _iso(now)}), now, job_id))

    def latest_events(self, job_id: str) -> dict[str, dict]:
        """Disk id -> the last event the agent sent about that disk (progress, rate, ETA)."""
        self._job_row(job_id)
        rows = self._db().conn.execute(
            "SELECT at, event FROM events WHERE rowid IN (SELECT MAX(rowid) FROM events WHERE job=?"
            " GROUP BY json_extract(event, '$.disk'))", (job_id,))
        out = {}
        for r in rows:
            event = json.loads(r["event"])
            if isinstance(event.get("disk"), str):
                out[event["disk"]] = {**event, "at": _iso(r["at"])}
        return out

    def cancel_job(self, job_id: str, detail: str) -> None:
        """Stops a job still receiving: it fails with ``detail``, its disks refuse every further
        chunk and seal (409, which ends the agent's capture with that sentence). ProtocolError
        409 for a job in another state."""
        row = self._job_row(job_id)
        if row["state"] != JobState.RECEIVING:
            raise conflict(f"Job {job_id} is {row['state']}, not receiving: only a capture in "
                           "progress can be cancelled.")
        with self._gate:
            for (job, _), disk in self._disks.items():
                if job == job_id:
                    disk.cancelled = True
        self.set_state(job_id, JobState.FAILED, detail)
        self.record(job_id, "cancelled", detail)   # its token now answers job_cancelled

    def delete_job(self, job_id: str) -> None:
        """Removes a job, its images, agent log, events and tokens from the server. A job still
        receiving (cancel it first) or whose VM is being made or repaired is refused (409)."""
        row = self._job_row(job_id)
        if row["state"] in (JobState.RECEIVING, JobState.PROVISIONING, JobState.REPAIRING):
            raise conflict(f"Job {job_id} is {row['state']}: cancel it or let it finish before "
                           "deleting it.")
        with self._gate:
            for key in [k for k in self._disks if k[0] == job_id]:
                self._disks.pop(key).close()
        try:
            with self._db() as db:
                for table, column in (("chunks", "job"), ("disks", "job"), ("events", "job"),
                                      ("tokens", "job"), ("versions", "job"),
                                      ("version_chunks", "job"), ("jobs", "id")):
                    db.execute(f"DELETE FROM {table} WHERE {column}=?", (job_id,))
        except sqlite3.Error as err:
            raise storage_error(err, self.data_dir) from None
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)

    def events(self, job_id: str) -> list[dict]:
        self._job_row(job_id)
        return [{**json.loads(r["event"]), "at": _iso(r["at"])} for r in self._db().conn.execute(
            "SELECT at, event FROM events WHERE job=? ORDER BY rowid", (job_id,))]

    def append_log(self, job_id: str, text: bytes) -> None:
        self._job_row(job_id)
        path = self.log_path(job_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
            with os.fdopen(fd, "ab") as f:
                f.write(text if text.endswith(b"\n") or not text else text + b"\n")
        except OSError as err:
            raise storage_error(err, path.parent) from None

    def set_repair(self, job_id: str, report: dict) -> None:
        """Keeps the VM's repair report; its outcome (``ok``, else ``status``) finishes the job.
        A dry run's report (status "planned") is kept and shown but decides nothing.
        Raises 409 unless every disk of the job is sealed: a VM is repaired only from sealed disks."""
        self._job_row(job_id)
        unsealed = [r[0] for r in self._db().conn.execute(
            "SELECT id FROM disks WHERE job=? AND state!=? ORDER BY id", (job_id, DiskState.SEALED))]
        if unsealed:
            raise conflict(f"Job {job_id} has disks that are not sealed yet ({', '.join(unsealed)}): "
                           "a repair report is taken only once every disk is sealed; finish the "
                           "capture first.")
        with self._db() as db:
            db.execute("UPDATE jobs SET repair=?, updated=? WHERE id=?",
                       (json.dumps(report), _now(), job_id))
        if isinstance(report.get("ok"), bool):
            ok = report["ok"]
        elif isinstance(report.get("status"), str) and report["status"] != "planned":
            ok = report["status"] == "ok"
        else:
            return
        self.set_state(job_id, JobState.DONE if ok else JobState.FAILED,
                       str(report.get("detail", "")) or ("repaired" if ok else "the repair failed"))

    # --- chunks ---------------------------------------------------------------------------

    def held_chunks(self, job_id: str, disk_id: str) -> dict[int, str]:
        """Chunk index -> digest of every chunk durably held."""
        disk = self._disk(job_id, disk_id)
        return {r[0]: r[1] for r in self._db().conn.execute(
            "SELECT idx, digest FROM chunks WHERE job=? AND disk=?", (disk.job, disk.id))}

    def chunk_list(self, job_id: str, disk_id: str, sealed: bool = False) -> dict:
        """What GET …/chunks answers: the chunk size and every durably held chunk's digest, with
        the pre-copy digests (sha256) the server has of them; ``sealed``: the chunks of the newest
        sealed version instead (what a restore reads while a later pass is received)."""
        disk = self._disk(job_id, disk_id)
        if sealed:
            held = self.sealed_chunks(job_id, disk_id)
            return {"chunk_size": disk.chunk_size,
                    "chunks": {str(i): d for i, d in sorted(held.items())}}
        rows = self._db().conn.execute("SELECT idx, digest, sha256 FROM chunks WHERE job=? AND disk=?"
                                       " ORDER BY idx", (disk.job, disk.id)).fetchall()
        return {"chunk_size": disk.chunk_size,
                "chunks": {str(r[0]): r[1] for r in rows},
                "sha256": {str(r[0]): r[2] for r in rows if r[2]}}

    def chunk_geometry(self, job_id: str, disk_id: str, index: int) -> tuple[int, int]:
        """(offset, length) of a chunk of a disk still receiving; ProtocolError otherwise."""
        return self._receiving_span(self._disk(job_id, disk_id), index)

    def known_chunk_geometry(self, job_id: str, disk_id: str, index: int) -> tuple[int, int] | None:
        """chunk_geometry without touching SQLite: None when the disk is not in memory yet."""
        with self._lock:
            disk = self._disks.get((job_id, disk_id))
        return None if disk is None else self._receiving_span(disk, index)

    @staticmethod
    def _receiving_span(disk: _Disk, index: int) -> tuple[int, int]:
        if disk.state is DiskState.SEALED:
            raise conflict(f"Disk {disk.id} of job {disk.job} is sealed: it never changes again.")
        return chunk_span(disk.size, disk.chunk_size, index)

    def put_chunk(self, job_id: str, disk_id: str, index: int, data, digest: str) -> bool:
        """Writes a checked chunk and returns once it is durably held.

        True if it was written, False if the same chunk was already held (nothing done).
        """
        return self.write_chunk(job_id, disk_id, index, data, digest).result()

    def write_chunk(self, job_id: str, disk_id: str, index: int, data, digest: str,
                    aligned: bool = False, sha256: str | None = None) -> Future:
        """Writes a checked chunk into its image and hands it to the journal, without waiting.

        The returned future completes once the chunk is durably held (only then may it be
        acknowledged), with True if it was written and False if the same chunk was already held
        (nothing done); or fails with the reason. Until then, other writers of this chunk and
        the disk's seal wait. ``aligned``: data starts on a page boundary (see _write).
        ``sha256``: the pre-copy sender's digest of the chunk (hex), kept beside the BLAKE3.
        """
        disk = self._disk(job_id, disk_id)
        offset, length = chunk_span(disk.size, disk.chunk_size, index)
        if len(data) != length:
            raise ProtocolError(ErrorCode.BAD_LENGTH, f"Chunk {index} has {length} bytes, not {len(data)}.")
        self._enter_writer(disk)
        key = (disk.job, disk.id, index)
        held: Future = Future()

        def release(journaled: Future | None = None) -> None:
            self._unlock_chunk(key)
            with self._gate:
                disk.writers -= 1
                self._gate.notify_all()
            if journaled is None:
                return
            if journaled.exception() is not None:
                held.set_exception(journaled.exception())
            else:
                held.set_result(True)

        try:
            self._lock_chunk(key)
        except BaseException:
            with self._gate:
                disk.writers -= 1
                self._gate.notify_all()
            raise
        try:
            journaled = self._put_locked(disk, index, offset, data, digest, aligned, sha256)
        except BaseException:
            release()
            raise
        if journaled is None:  # already held: nothing to wait for
            release()
            held.set_result(False)
        else:
            journaled.add_done_callback(release)
        return held

    def _put_locked(self, disk: _Disk, index: int, offset: int, data, digest: str,
                    aligned: bool, sha256: str | None = None) -> Future | None:
        row = self._db().conn.execute("SELECT digest, sha256 FROM chunks WHERE job=? AND disk=?"
                                      " AND idx=?", (disk.job, disk.id, index)).fetchone()
        if row is not None:
            if row[0] == digest:
                if sha256 and row[1] != sha256:  # held already; the sender's digest is new
                    with self._db() as db:
                        db.execute("UPDATE chunks SET sha256=? WHERE job=? AND disk=? AND idx=?",
                                   (sha256, disk.job, disk.id, index))
                return None
            try:
                with self._db() as db:
                    db.execute("DELETE FROM chunks WHERE job=? AND disk=? AND idx=?",
                               (disk.job, disk.id, index))
            except sqlite3.Error as err:
                raise storage_error(err, self.data_dir) from None
        fd = self._write(disk, offset, data, aligned)
        return self._journal_for().add(fd, (disk.job, disk.id, index, digest, sha256))

    def _write(self, disk: _Disk, offset: int, data, aligned: bool) -> int:
        """Writes data at offset into the image; returns the descriptor to fdatasync.

        Page-aligned data (``aligned``) goes around the page cache with O_DIRECT: no copy into
        the cache and no writeback to do later, which the buffered path pays in CPU time. An
        unaligned tail (a disk's last chunk) goes through the page cache.
        """
        fd = self._fd(disk)
        with memoryview(data) as view:
            cut = len(view) // DIRECT_ALIGN * DIRECT_ALIGN if aligned and not offset % DIRECT_ALIGN else 0
            try:
                if cut and self._direct_fd(disk) >= 0:
                    try:
                        _pwrite_all(disk.direct_fd, view[:cut], offset)
                    except OSError as err:
                        if err.errno != errno.EINVAL:
                            raise
                        with self._lock:  # the filesystem wants another alignment: buffered
                            os.close(disk.direct_fd)
                            disk.direct_fd = -1
                        cut = 0
                else:
                    cut = 0
                _pwrite_all(fd, view[cut:], offset + cut)
            except OSError as err:
                raise storage_error(err, disk.path.parent) from None
        return fd

    def _enter_writer(self, disk: _Disk) -> None:
        with self._gate:
            if disk.state is DiskState.SEALED:
                raise conflict(f"Disk {disk.id} of job {disk.job} is sealed: it never changes again.")
            if disk.cancelled:
                raise cancelled(disk.job)
            if disk.sealing:
                raise conflict(f"Disk {disk.id} of job {disk.job} is being sealed; it takes no more chunks.")
            disk.writers += 1

    def _lock_chunk(self, key: tuple[str, str, int]) -> None:
        """Serialises writers of one chunk; the lock exists only while someone holds or wants it.
        Any thread may unlock it (the journal's does, once the chunk is held)."""
        with self._lock:
            entry = self._chunk_locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()

    def _unlock_chunk(self, key: tuple[str, str, int]) -> None:
        with self._lock:
            entry = self._chunk_locks[key]
            entry[0].release()
            entry[1] -= 1
            if not entry[1]:
                del self._chunk_locks[key]

    def _fd(self, disk: _Disk) -> int:
        with self._lock:
            if disk.fd is None:
                try:
                    disk.fd = os.open(disk.path, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise ProtocolError(ErrorCode.INTERNAL,
                                        f"The image {disk.path} is missing from the data directory.") from None
            return disk.fd

    def _direct_fd(self, disk: _Disk) -> int:
        with self._lock:
            if disk.direct_fd is None:
                try:
                    disk.direct_fd = os.open(disk.path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
                except OSError:
                    disk.direct_fd = -1
            return disk.direct_fd

    def _journal_for(self) -> "Journal":
        with self._lock:
            if self._journal is None:
                self._journal = Journal(self.db_path, self.data_dir)
            return self._journal

    def read_chunk(self, job_id: str, disk_id: str, index: int) -> tuple[bytes, str]:
        """(bytes, digest) of a data or zero chunk of the newest sealed version of a disk."""
        v = self._sealed_version(job_id, disk_id)
        offset, length = chunk_span(v.size, v.chunk_size, index)
        row = self._db().conn.execute(
            "SELECT digest FROM version_chunks WHERE job=? AND disk=? AND version=? AND idx=?",
            (v.job, v.disk, v.version, index)).fetchone()
        if row is not None:
            with open(v.path, "rb") as f:
                return os.pread(f.fileno(), length, offset), row[0]
        at = bisect.bisect_right([e.start for e in v.zero], index) - 1
        if at >= 0 and index < v.zero[at].start + v.zero[at].count:
            data = bytes(length)
            return data, chunk_digest(data)
        raise not_found(f"Chunk {index} of disk {disk_id} is free: the source did not use it.")

    # --- sealing --------------------------------------------------------------------------

    def zero_chunks(self, job_id: str, disk_id: str, zero: list[tuple[int, int]]) -> None:
        """Forgets and punches the held chunks in ``zero`` (chunk runs) of a disk being received,
        as the seal would: a final sync (warm migration) declares the chunks its source no
        longer uses before it reads the rest, so that punching them (seconds, for a pass that
        sent a lived-in disk's free space) is done while it reads, not in its downtime. The
        seal's zero runs stay the authority; punching a hole again costs nothing."""
        disk = self._disk(job_id, disk_id)
        self._check_zero(disk, zero)
        indices = [i for start, n in _merged(zero) for i in range(start, start + n)]
        self._enter_writer(disk)
        locked = []
        try:
            for i in indices:  # in order, one chunk at a time: as a PUT takes them, no deadlock
                self._lock_chunk((disk.job, disk.id, i))
                locked.append(i)
            held = self.held_chunks(job_id, disk_id)
            self._forget(disk, [i for i in indices if i in held])
            self._zero_fill(disk, indices)
        finally:
            for i in locked:
                self._unlock_chunk((disk.job, disk.id, i))
            with self._gate:
                disk.writers -= 1
                self._gate.notify_all()

    @staticmethod
    def _check_zero(disk: "_Disk", zero: list[tuple[int, int]]) -> None:
        count = chunk_count(disk.size, disk.chunk_size)
        for start, n in zero:
            if start < 0 or n < 1 or start + n > count:
                raise ProtocolError(ErrorCode.OUT_OF_RANGE,
                                    f"The zero range [{start}, {n}] is outside disk {disk.id}'s "
                                    f"chunks 0 to {count - 1}.")

    def seal(self, job_id: str, disk_id: str, digest: str, zero: list[tuple[int, int]],
             bad_ranges: list[tuple[int, int]]) -> tuple[dict, bool]:
        """Seals a disk if ``digest`` is the image digest of what is held: (job, job now sealed).

        ``zero`` (chunk runs) wins over held chunks: a held chunk in it is forgotten and punched,
        so the chunk list, the map and the image all say zero there."""
        disk = self._disk(job_id, disk_id)
        self._check_zero(disk, zero)
        for off, n in bad_ranges:
            if off < 0 or n < 1 or off + n > disk.size:
                raise ProtocolError(ErrorCode.OUT_OF_RANGE,
                                    f"The bad range [{off}, {n}] is outside disk {disk_id}'s "
                                    f"{disk.size} bytes.")
        with self._gate:
            if disk.state is DiskState.SEALED:
                return self._reseal(disk, digest)
            if disk.cancelled:
                raise cancelled(job_id)
            if disk.sealing:
                raise conflict(f"Disk {disk_id} of job {job_id} is already being sealed.")
            disk.sealing = True
            while disk.writers:
                self._gate.wait()
        try:
            held = self.held_chunks(job_id, disk_id)
            zero_idx = [i for start, n in _merged(zero) for i in range(start, start + n)]
            zero_idx_set = set(zero_idx)
            dropped = [i for i in zero_idx if i in held]
            data = {i: d for i, d in held.items() if i not in zero_idx_set} if dropped else held
            if digest.startswith(PRECOPY_DIGEST + ":"):
                # A pre-copy sender's seal: checked against the sha256 of what is held; the
                # disk is sealed with the BLAKE3 image digest, as every other.
                sha = {i: f"{PRECOPY_DIGEST}:{h}" for i, h in self._sha256s(disk).items()
                       if i in data}
                mine = precopy_image_digest(disk.size, disk.chunk_size, sha, data.keys(), zero_idx)
                checked, digest = digest, image_digest(disk.size, disk.chunk_size, data, zero_idx)
            else:
                mine, checked = image_digest(disk.size, disk.chunk_size, data, zero_idx), digest
            if mine != checked:
                raise ProtocolError(
                    ErrorCode.BAD_DIGEST,
                    f"The image digest sent for disk {disk_id} does not match the {len(data)} data "
                    f"and {len(zero_idx)} zero chunks the server holds ({mine}). Ask for the chunk "
                    "list, send what is missing or different, then complete again.")
            self._forget(disk, dropped)
            self._zero_fill(disk, zero_idx)
            job_sealed = self._mark_sealed(disk, digest, list(runs(zero_idx)), bad_ranges)
        finally:
            with self._gate:
                disk.sealing = False
        return self.get_job(job_id), job_sealed

    def _sha256s(self, disk: _Disk) -> dict[int, str]:
        return {r[0]: r[1] for r in self._db().conn.execute(
            "SELECT idx, sha256 FROM chunks WHERE job=? AND disk=? AND sha256 IS NOT NULL",
            (disk.job, disk.id))}

    def _reseal(self, disk: _Disk, digest: str) -> tuple[dict, bool]:
        row = self._db().conn.execute("SELECT digest, zero FROM disks WHERE job=? AND id=?",
                                      (disk.job, disk.id)).fetchone()
        if digest.startswith(PRECOPY_DIGEST + ":"):  # a pre-copy sender's retried complete
            zero = [i for s, n in json.loads(row["zero"]) for i in range(s, s + n)]
            held = self.held_chunks(disk.job, disk.id)
            sha = {i: f"{PRECOPY_DIGEST}:{h}" for i, h in self._sha256s(disk).items()}
            if precopy_image_digest(disk.size, disk.chunk_size, sha, held, zero) == digest:
                return self.get_job(disk.job), False
        if row["digest"] != digest:
            raise conflict(f"Disk {disk.id} of job {disk.job} is already sealed with digest "
                           f"{row['digest']}; it never changes again.")
        return self.get_job(disk.job), False

    def _forget(self, disk: _Disk, indices: list[int]) -> None:
        """Drops held chunks the seal declares zero (an earlier run sent them; the source no longer
        uses them) from the journal, before _zero_fill punches their bytes: the journal never
        names bytes that are not on disk."""
        if not indices:
            return
        try:
            with self._db() as db:
                db.executemany("DELETE FROM chunks WHERE job=? AND disk=? AND idx=?",
                               [(disk.job, disk.id, i) for i in indices])
        except sqlite3.Error as err:
            raise storage_error(err, self.data_dir) from None

    def _zero_fill(self, disk: _Disk, zero_idx: list[int]) -> None:
        """Makes zero chunks read zeros even where an earlier, unjournaled write left bytes."""
        fd = self._fd(disk)
        try:
            for start, n in runs(zero_idx):
                offset = start * disk.chunk_size
                length = min(n * disk.chunk_size, disk.size - offset)
                _punch_hole(fd, offset, length)
            os.fdatasync(fd)
        except OSError as err:
            raise storage_error(err, disk.path.parent) from None

    def _mark_sealed(self, disk: _Disk, digest: str, zero_runs, bad_ranges) -> bool:
        """Seals the version being received, and keeps it as a sealed version (its chunk list
        copied) that no later pass changes; prunes the versions beyond keep_versions."""
        now = _now()
        try:
            with self._db() as db:
                zero_json, bad_json = json.dumps(zero_runs), json.dumps([list(r) for r in bad_ranges])
                db.execute("UPDATE disks SET state=?, digest=?, zero=?, bad_ranges=?, sealed=?"
                           " WHERE job=? AND id=?",
                           (DiskState.SEALED, digest, zero_json, bad_json, now, disk.job, disk.id))
                version = db.execute("SELECT version FROM disks WHERE job=? AND id=?",
                                     (disk.job, disk.id)).fetchone()[0]
                warm = json.loads(db.execute("SELECT records FROM jobs WHERE id=?",
                                             (disk.job,)).fetchone()[0]).get("warm") or {}
                self._snapshot(db, disk.job, disk.id, version, digest, zero_json, bad_json, now, warm)
                pruned = [r[0] for r in db.execute(
                    "SELECT version FROM versions WHERE job=? AND disk=? AND version<=?",
                    (disk.job, disk.id, version - self.keep_versions))]
                db.execute("DELETE FROM versions WHERE job=? AND disk=? AND version<=?",
                           (disk.job, disk.id, version - self.keep_versions))
                db.execute("DELETE FROM version_chunks WHERE job=? AND disk=? AND version<=?",
                           (disk.job, disk.id, version - self.keep_versions))
                left = db.execute("SELECT COUNT(*) FROM disks WHERE job=? AND state!=?",
                                  (disk.job, DiskState.SEALED)).fetchone()[0]
                if not left:
                    db.execute("UPDATE jobs SET state=?, updated=? WHERE id=? AND state=?",
                               (JobState.SEALED, now, disk.job, JobState.RECEIVING))
                else:
                    db.execute("UPDATE jobs SET updated=? WHERE id=?", (now, disk.job))
        except sqlite3.Error as err:
            raise storage_error(err, self.data_dir) from None
        with self._gate:
            disk.state = DiskState.SEALED
            disk.close()
        for old in pruned:  # rows first: a file no row names is only garbage
            self.image_path(disk.job, disk.id, old).unlink(missing_ok=True)
        if warm.get("pass") == "precopy":
            self._make_next(disk.job, disk.id, version)
        return not left

    @staticmethod
    def _snapshot(db: sqlite3.Connection, job: str, disk: str, version: int, digest: str,
                  zero_json: str, bad_json: str, sealed: float, warm: dict) -> None:
        """Keeps a sealed version: its record and a copy of its chunk list."""
        db.execute("INSERT OR REPLACE INTO versions (job, disk, version, digest, zero, bad_ranges,"
                   " sealed, pass, live) VALUES (?,?,?,?,?,?,?,?,?)",
                   (job, disk, version, digest, zero_json, bad_json, sealed,
                    warm.get("pass") or "capture", int(bool(warm.get("live")))))
        db.execute("DELETE FROM version_chunks WHERE job=? AND disk=? AND version=?",
                   (job, disk, version))
        db.execute("INSERT INTO version_chunks (job, disk, version, idx, digest) SELECT job, disk,"
                   " ?, idx, digest FROM chunks WHERE job=? AND disk=?", (version, job, disk))

    # --- the restore side: the newest sealed version ------------------------------------------

    def _sealed_version(self, job_id: str, disk_id: str) -> _Version:
        """The newest sealed version of a disk (a pass writing the next one leaves it as it is);
        409 while none is sealed."""
        disk = self._disk(job_id, disk_id)
        row = self._db().conn.execute(
            "SELECT version, digest, zero FROM versions WHERE job=? AND disk=?"
            " ORDER BY version DESC LIMIT 1", (disk.job, disk.id)).fetchone()
        if row is None:
            raise conflict(f"Disk {disk_id} of job {job_id} is not sealed yet: it cannot be served "
                           "for restore, export or import until the agent completes it.")
        key = (disk.job, disk.id, row["version"])
        with self._lock:
            found = self._versions.get(key)
        if found is None:
            zero = tuple(Extent(ChunkKind.ZERO, s, n) for s, n in json.loads(row["zero"]))
            found = _Version(disk.job, disk.id, row["version"],
                             self.image_path(disk.job, disk.id, row["version"]), disk.size,
                             disk.chunk_size, row["digest"], zero)
            with self._lock:
                if len(self._versions) > 1024:
                    self._versions.clear()
                self._versions[key] = found
        return found

    def sealed_chunks(self, job_id: str, disk_id: str) -> dict[int, str]:
        """Chunk index -> digest of every data chunk of the newest sealed version."""
        v = self._sealed_version(job_id, disk_id)
        return {r[0]: r[1] for r in self._db().conn.execute(
            "SELECT idx, digest FROM version_chunks WHERE job=? AND disk=? AND version=?",
            (v.job, v.disk, v.version))}

    def sealed_image(self, job_id: str, disk_id: str) -> SealedImage:
        v = self._sealed_version(job_id, disk_id)
        zero = [i for e in v.zero for i in range(e.start, e.start + e.count)]
        extents = image_map(chunk_count(v.size, v.chunk_size), self.sealed_chunks(job_id, disk_id),
                            zero)
        return SealedImage(v.job, v.disk, v.path, v.size, v.chunk_size, extents, v.version)

    def disk_map(self, job_id: str, disk_id: str) -> dict:
        image = self.sealed_image(job_id, disk_id)
        return {"size": image.size, "chunk_size": image.chunk_size, "version": image.version,
                "extents": [e.to_json() for e in image.extents]}

    def sealed_digest(self, job_id: str, disk_id: str) -> str:
        return self._sealed_version(job_id, disk_id).digest


class _Txn:
    """``with store._db() as db:`` runs one IMMEDIATE transaction; ``.conn`` reads outside one."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, tb) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


class Journal:
    """Group commit of held chunks: one fdatasync per image and one SQLite commit per batch.

    Writers add (fd, row) and wait on the returned future; while one batch is being made durable
    the next one gathers, so many parallel streams share each fdatasync.
    """

    def __init__(self, db_path: Path, data_dir: Path):
        self.data_dir = data_dir
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._conn = sqlite3.connect(db_path, timeout=30, check_same_thread=False,
                                     isolation_level=None)
        self._conn.execute("PRAGMA synchronous=FULL")
        self._thread = threading.Thread(target=self._run, name="p2v-journal", daemon=True)
        self._thread.start()

    def add(self, fd: int, row: tuple) -> Future:
        future: Future = Future()
        self._queue.put((fd, row, future))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._commit(batch)
                    return
                batch.append(more)
            self._commit(batch)

    def _commit(self, batch: list) -> None:
        try:
            for fd in {fd for fd, _, _ in batch}:
                os.fdatasync(fd)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO chunks (job, disk, idx, digest,"
                                       " sha256) VALUES (?,?,?,?,?)", [row for _, row, _ in batch])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except Exception as err:  # every waiter must hear of it, whatever it is
            failure = storage_error(err, self.data_dir)
            for _, _, future in batch:
                future.set_exception(failure)
            return
        for _, _, future in batch:
            future.set_result(None)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, count) ranges sorted and merged, so overlapping ones cost nothing extra."""
    out: list[list[int]] = []
    for start, n in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], start + n - out[-1][0])
        else:
            out.append([start, n])
    return [(s, n) for s, n in out]


def _written_ranges(fd: int, offset: int, end: int):
    """(start, end) of the parts of [offset, end) that hold data; holes already read zeros."""
    pos = offset
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # nothing but a hole from here on
                return
            yield pos, end  # no SEEK_DATA here: assume the whole range holds data
            return
        if start >= end:
            return
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        yield start, stop
        pos = stop


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Makes a range read zeros: deallocates what was written there, or overwrites it with zeros."""
    for start, end in list(_written_ranges(fd, offset, offset + length)):
        if _fallocate is not None:
            if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                          ctypes.c_int64(start), ctypes.c_int64(end - start)) == 0:
                continue
            if ctypes.get_errno() not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        zeros = bytes(1 << 20)
        while start < end:
            start += os.pwrite(fd, zeros[:min(len(zeros), end - start)], start)


def clone_image(src: Path, dst: Path) -> str:
    """Makes ``dst`` (a new private file) hold what ``src`` holds: "reflink" where the filesystem
    shares extents (FICLONE: btrfs, XFS with reflink=1; costs no space until either changes),
    else "copy" (only the ranges that hold data, so holes stay holes). OSError as it comes."""
    dst.unlink(missing_ok=True)
    with open(src, "rb") as source:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            try:
                fcntl.ioctl(fd, _FICLONE, source.fileno())
                how = "reflink"
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV,
                                     errno.ENOSYS):
                    raise
                how = "copy"
                size = os.fstat(source.fileno()).st_size
                os.ftruncate(fd, size)
                for start, end in list(_written_ranges(source.fileno(), 0, size)):
                    _copy_range(source.fileno(), fd, start, end)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            dst.unlink(missing_ok=True)
            raise
        os.close(fd)
    return how


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    pos = start
    while pos < end:
        try:
            n = os.copy_file_range(src, dst, min(end - pos, 1 << 30), pos, pos)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = 0
        if n == 0:  # no copy_file_range here: through memory
            data = os.pread(src, min(end - pos, 8 << 20), pos)
            if not data:
                return
            n = os.pwrite(dst, data, pos)
        pos += n


def _load_fallocate():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_job_id(name: str) -> str:
    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in name).strip("-")[:24].strip("-")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return "-".join(p for p in (stamp, slug, secrets.token_hex(3)) if p)


def _disk_difference(have: list[tuple], want: list[tuple]) -> str:
    """How two jobs' disks (sorted protocol.disk_identity tuples) differ, in one clause."""
    theirs = {d[0]: d for d in have}
    for disk_id, size, serial, table, filesystem in want:
        other = theirs.get(disk_id)
        if other is None:
            return f"it has no disk {disk_id} (it has {', '.join(str(d[0]) for d in have)})"
        if other[1] != size:
            return f"its disk {disk_id} has {other[1]} bytes, not {size}"
        if other[2] != serial:
            return (f"its disk {disk_id} has {_serial_text(other[2])}, "
                    f"not {_serial_text(serial)}")
        if other[3] != table:
            return f"its disk {disk_id} has another partition table: {_table_difference(other[3], table)}"
        if other[4] != filesystem:
            return (f"its disk {disk_id} holds {_filesystem_text(other[4])}, "
                    f"not {_filesystem_text(filesystem)}")
    return f"it has more disks ({', '.join(str(d[0]) for d in have)})"


def _filesystem_text(filesystem: tuple | None) -> str:
    """(fstype, uuid) of protocol.disk_identity as words: "ext4 <uuid>", "nothing"."""
    return " ".join(filter(None, filesystem or ())) or "nothing"


def _serial_text(serial: str | None) -> str:
    return "no serial" if serial is None else f"serial {serial!r}"


def _table_difference(theirs: tuple | None, ours: tuple | None) -> str:
    """What differs between two partition tables (protocol.disk_identity's), theirs first."""
    if theirs is None or ours is None:
        return f"{theirs[0] if theirs else 'none'}, not {ours[0] if ours else 'none'}"
    if theirs[0] != ours[0]:
        return f"{theirs[0]}, not {ours[0]}"
    if theirs[1] != ours[1]:
        return f"identifier {theirs[1] or 'none'}, not {ours[1] or 'none'}"

    def spans(parts: tuple) -> str:
        shown = ", ".join(f"{start}+{size}" for start, size, *_ in parts[:4])
        return f"[{shown}{', …' if len(parts) > 4 else ''}]"
    if [p[:2] for p in theirs[2]] != [p[:2] for p in ours[2]]:
        return f"partitions (start+size in bytes) {spans(theirs[2])}, not {spans(ours[2])}"
    number, theirs_part, ours_part = next(
        (n, a, b) for n, (a, b) in enumerate(zip(theirs[2], ours[2]), 1) if a != b)
    return (f"its partition {number} holds {_filesystem_text(theirs_part[2:])}, "
            f"not {_filesystem_text(ours_part[2:])}")


def _job_json(row: sqlite3.Row, disks: list[dict]) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "state": row["state"],
        "detail": row["detail"],
        "created": _iso(row["created"]),
        "updated": _iso(row["updated"]),
        "target_uuid": row["target_uuid"],
        "disks": disks,
        "last_event": json.loads(row["last_event"]) if row["last_event"] else None,
        "repair": json.loads(row["repair"]) if row["repair"] else None,
        "records": json.loads(row["records"]),
        "inventory": json.loads(row["inventory"]),
    }


def _disk_json(d: sqlite3.Row, held: tuple[int, int | None]) -> dict:
    n, last = held
    size, chunk = d["size"], d["chunk_size"]
    held_bytes = n * chunk
    if last is not None and last == chunk_count(size, chunk) - 1:
        held_bytes -= chunk - (size - last * chunk)
    return {
        "id": d["id"],
        "size": size,
        "chunk_size": chunk,
        "chunks": chunk_count(size, chunk),
        "state": d["state"],
        "expected_bytes": d["expected"],
        "held_chunks": n,
        "held_bytes": held_bytes,
        "digest": d["digest"],
        "zero": json.loads(d["zero"]),
        "bad_ranges": json.loads(d["bad_ranges"]),
        "sealed": _iso(d["sealed"]),
    }
