"""Wire protocol v1, defined once: the agent and the server both import this module.

An image is a disk cut into fixed-size chunks (the last one may be short). Each chunk is one of:

- ``data``: sent, carries a BLAKE3 digest of its uncompressed bytes;
- ``zero``: in use by the source and must read as zeros on the target, never sent;
- ``free``: unused by the source, never sent; restore and import make it read zeros on the target.

The whole-image digest is the BLAKE3 of a canonical manifest (size, chunk size, then one line per
data or zero chunk), so both sides compute it from chunk digests alone, without re-reading a disk
that may be a terabyte of mostly nothing.

At the seal (``complete``), the zero runs the agent sends win over chunks the server holds: a
held chunk declared zero (sent by an earlier run, no longer used by the source) is forgotten and
reads zeros, so the sealed image holds no byte the source does not use.

Warm migration (see the inventory's ``pass``): a job made by a pre-copy pass is sealed like any
other, and each later pass into it (pre-copy again, or the final sync from the stick) writes a
new *version* of its images, so a sealed version never changes and a pass that fails or is
cancelled leaves the last sealed version as it was. Restore, export and import read the newest
sealed version. The pre-copy sender runs on old systems whose Python (3.6) has no BLAKE3: it
digests chunks with SHA-256 (``sha256:<hex>`` in ``X-P2V-Digest``; the server checks it, then
digests the chunk with BLAKE3 itself and keeps both), compares them with the ``sha256`` list of
``GET …/chunks``, and completes with ``precopy_image_digest``.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Iterable, Iterator

import blake3

VERSION = 1
API = "/api/v1"

# Headers.
DIGEST_HEADER = "X-P2V-Digest"
AUTH_HEADER = "Authorization"
ENCODING_HEADER = "Content-Encoding"
ZSTD = "zstd"

# Chunk sizes: powers of two, so chunks stay aligned to any sector and filesystem block size.
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
# Keeps a disk's chunk list (and the zero list at sealing) small enough to hold in memory.
TARGET_CHUNKS = 1 << 20

# Bounds on JSON bodies (inventories, events, logs, reports).
MAX_JSON_BODY = 4 * 1024 * 1024
MAX_LOG_BODY = 8 * 1024 * 1024
MAX_EVENTS_BODY = 1024 * 1024   # an agent posts one small event at a time
MAX_DISK_SIZE = 1 << 50  # 1 PiB: larger than any VDI a pool can hold
MAX_DISKS = 64

# Job and disk identifiers: also file names on the server, so nothing that can escape a directory.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DIGEST = re.compile(r"^blake3:([0-9a-f]{64})$")
PRECOPY_DIGEST = "sha256"  # what the pre-copy sender digests with (hashlib, any Python 3)
_PRECOPY = re.compile(r"^sha256:([0-9a-f]{64})$")


class ChunkKind(StrEnum):
    DATA = "data"
    ZERO = "zero"
    FREE = "free"


class DiskState(StrEnum):
    RECEIVING = "receiving"
    SEALED = "sealed"


class JobState(StrEnum):
    RECEIVING = "receiving"      # at least one disk still arriving
    SEALED = "sealed"            # every disk sealed: ready for restore, export, provisioning
    PROVISIONING = "provisioning"
    REPAIRING = "repairing"
    DONE = "done"
    FAILED = "failed"


FINISHED_JOB_STATES = frozenset({JobState.DONE, JobState.FAILED})


class ErrorCode(StrEnum):
    """The ``error`` field of every JSON error body; each pairs with one HTTP status."""

    BAD_REQUEST = "bad_request"              # 400 malformed JSON, field, header or id
    UNAUTHORIZED = "unauthorized"            # 401 missing or wrong token, or its job has ended
    FORBIDDEN = "forbidden"                  # 403 a job token used on another job, or to list/create
    NOT_FOUND = "not_found"                  # 404 no such job, disk, chunk or route
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    REQUEST_TIMEOUT = "request_timeout"      # 408 the request line and headers came too slowly
    CONFLICT = "conflict"                    # 409 disk sealed, or not sealed yet
    JOB_CANCELLED = "job_cancelled"          # 409 the job was cancelled on the server (its token too)
    TOO_LARGE = "too_large"                  # 413 body larger than allowed
    OUT_OF_RANGE = "out_of_range"            # 416 chunk index beyond the disk
    BAD_DIGEST = "bad_digest"                # 422 chunk or image digest does not match
    BAD_LENGTH = "bad_length"                # 422 chunk length is not the chunk's length
    BAD_FIELD = "bad_field"                  # 422 a field of an event, inventory or report has the wrong type
    INSUFFICIENT_STORAGE = "insufficient_storage"  # 507 images cannot fit the free space
    INTERNAL = "internal"                    # 500 a bug; the detail says where to look


ERROR_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.CONFLICT: 409,
    ErrorCode.JOB_CANCELLED: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.OUT_OF_RANGE: 416,
    ErrorCode.BAD_DIGEST: 422,
    ErrorCode.BAD_LENGTH: 422,
    ErrorCode.BAD_FIELD: 422,
    ErrorCode.INSUFFICIENT_STORAGE: 507,
    ErrorCode.INTERNAL: 500,
}


class ProtocolError(ValueError):
    """A request or answer that breaks the protocol; ``code`` says which rule."""

    def __init__(self, code: ErrorCode, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]

    def body(self) -> dict:
        return error_body(self.code, self.detail)


def error_body(code: ErrorCode, detail: str) -> dict:
    return {"error": str(code), "detail": detail}


# --- paths -------------------------------------------------------------------------------------

def health_path() -> str:
    return f"{API}/health"


def jobs_path() -> str:
    return f"{API}/jobs"


def job_path(job: str) -> str:
    return f"{API}/jobs/{job}"


def disk_path(job: str, disk: str) -> str:
    return f"{API}/jobs/{job}/disks/{disk}"


def chunks_path(job: str, disk: str) -> str:
    return f"{disk_path(job, disk)}/chunks"


def chunk_path(job: str, disk: str, index: int) -> str:
    return f"{disk_path(job, disk)}/chunks/{index}"


def map_path(job: str, disk: str) -> str:
    return f"{disk_path(job, disk)}/map"


def complete_path(job: str, disk: str) -> str:
    return f"{disk_path(job, disk)}/complete"


def zero_path(job: str, disk: str) -> str:
    return f"{disk_path(job, disk)}/zero"


def log_path(job: str) -> str:
    return f"{API}/jobs/{job}/log"


def events_path(job: str) -> str:
    return f"{API}/jobs/{job}/events"


def repair_path(job: str) -> str:
    return f"{API}/jobs/{job}/repair"


def machine_path(system_uuid: str) -> str:
    return f"{API}/machines/{system_uuid}"


# --- identifiers, digests, chunk geometry --------------------------------------------------------

def check_id(value: object, what: str) -> str:
    """A job or disk id, or ProtocolError saying what an id may hold."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"The {what} {value!r} is not valid: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
        )
    return value


def chunk_digest(data: bytes | memoryview) -> str:
    """The digest of a chunk's uncompressed bytes, as it travels in ``X-P2V-Digest``."""
    return "blake3:" + blake3.blake3(data, max_threads=1).hexdigest()


def parse_digest(value: str | None, precopy: bool = False) -> str:
    """Validate a ``blake3:<64 hex>`` string (with ``precopy``, a ``sha256:<64 hex>`` one too);
    returns it lower-cased."""
    text = (value or "").strip().lower()
    if not (_DIGEST.match(text) or (precopy and _PRECOPY.match(text))):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"The digest {value!r} is not of the form 'blake3:<64 hex digits>'.",
        )
    return text


def check_chunk_size(chunk_size: int) -> int:
    if (not isinstance(chunk_size, int) or chunk_size < MIN_CHUNK_SIZE or chunk_size > MAX_CHUNK_SIZE
            or chunk_size & (chunk_size - 1)):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"The chunk size {chunk_size!r} is not a power of two between "
            f"{MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes.",
        )
    return chunk_size


def chunk_size_for(size: int) -> int:
    """The chunk size a job uses for a disk of ``size`` bytes whose inventory names none:
    4 MiB, larger only for disks so big that 4 MiB would make over a million chunks."""
    chunk = DEFAULT_CHUNK_SIZE
    while chunk_count(size, chunk) > TARGET_CHUNKS and chunk < MAX_CHUNK_SIZE:
        chunk *= 2
    return chunk


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def chunk_span(size: int, chunk_size: int, index: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index`` in a disk of ``size`` bytes; the last may be short."""
    count = chunk_count(size, chunk_size)
    if not 0 <= index < count:
        raise ProtocolError(
            ErrorCode.OUT_OF_RANGE,
            f"Chunk {index} is outside this disk, which has chunks 0 to {count - 1}.",
        )
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


# --- the inventory: the body of POST /jobs ------------------------------------------------------
#
#   {"name": "web01", "resume": true,
#    "request_id": optional, 1 to 64 of [A-Za-z0-9._-]: a key the agent makes once per create call
#        and sends with every retry of it; a create with a key the server has seen answers the
#        job that key made (as its first answer did), so a retry after a lost answer never
#        leaves a second, orphan job holding free space,
#    "job": optional, a job id: resume that job and no other (the technician's --job); 409 unless
#        it is receiving and holds these very disks (disk_identity), 404 when there is none,
#    "machine": {"system_uuid", "vendor", "product", "serial": SMBIOS identity, null where absent;
#                "firmware", "cpus", "memory", "nics", "os": what the VM is sized from},
#    "disks": [{"id": "sda", "size": bytes,
#               "chunk_size": bytes, optional: else the server uses chunk_size_for(size),
#               "used": bytes the read plan reads,
#               "used_chunks": how many chunks of the job's chunk size hold any of those bytes:
#                   what the server will store at most, since it stores every chunk it is sent
#                   whole; without it the server reserves the disk's size,
#               "serial": the disk's serial number, null where the disk reports none,
#               "table": null, or the partition table as {"label": "gpt" | "dos",
#                   "id": GPT disk GUID or MBR disk identifier,
#                   "partitions": [{"number": 1, "start": bytes, "size": bytes,
#                                   "type": MBR code or GPT type GUID,
#                                   "fstype", "uuid", "label": what blkid found in it, null where
#                                   nothing}, ...] in table order (older agents sent [start, size]
#                   pairs); the repair maps the source's device names (/dev/sdb1, by-id …-part1)
#                   to the VM's filesystems by uuid, then label, then start and size},
#               "filesystem": null, or what blkid found on the whole disk where it has no
#                   partition table, as {"fstype", "uuid", "label"} (a whole-disk filesystem,
#                   an LVM PV),
#               "links": the disk's by-id and by-path names (/dev/disk/by-id/ata-…), [] without udev,
#               "device", "plan", "warnings": the agent's own notes, kept and shown}],
#    "pass": optional, "precopy" or "final" (warm migration). "precopy": a pass that is not the
#        last (the source keeps running): a new job is marked pre-copy (records.warm), and
#        sealing it makes no VM. Any create (either pass, or none) that finds no unfinished job
#        to resume but a sealed pre-copy job of the same machine with these very disks (the
#        resume rules), or that names one with "job", opens a new version of its images in it
#        instead of a new job: answered 200, "resumed": true, "pass" and "version"; the chunk
#        list is the last sealed version's, so only what changed is sent. A pass that is not
#        "precopy" is the final sync: once sealed the job is no longer pre-copy and its VM is
#        made as after any capture,
#    "live": optional, true when the pass reads the source's own running system (a
#        crash-consistent view the final sync corrects); kept on the job and its versions}
#
# GET …/chunks answers {"chunk_size", "chunks": {index: blake3 digest}, "sha256": {index: the
# pre-copy digest where the server has one}} of the version being received (or the last sealed
# when none is); with ?version=sealed, the newest sealed version's (what a restore reads). The
# map (GET …/map) also names its "version". A job's disks list "version" (received or last
# sealed) and "versions": the sealed ones kept, [{version, digest, sealed, pass, live}]; the
# server keeps the newest N (p2v-server serve --keep-versions, 2 by default).
#
# The answer (201 new, 200 resumed) is {"id", "resumed", "disks": [...], "token"} (and "pass",
# "version" when it opens a new version of a pre-copy job): "token" is a
# job token, made for this answer, that can touch only this job (its disks, chunks, map, log,
# events and repair report) and stops working once the job is done or failed (401; 409
# job_cancelled with why when the job was cancelled on the server). The agent uses it
# for everything after the create; the server's own token (the admin token) is needed to create
# or list jobs.
#
# A job is resumed only for the same machine with the same disks: ids, sizes, serials, partition
# tables and the filesystems on them all equal (disk_identity), and never on a placeholder
# identity alone. A resumed job takes the new inventory (name, machine, plan notes, tables).

# SMBIOS and disk identities that cheap boards and disks ship: they identify nothing.
PLACEHOLDER_UUIDS = frozenset({
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
    "12345678-1234-5678-90ab-cddeefaabbcc",
})
PLACEHOLDER_STRINGS = frozenset({
    "", "to be filled by o.e.m.", "default string", "system serial number", "not specified",
    "not applicable", "none", "0", "0123456789", "123456789", "system product name", "o.e.m.",
    "chassis serial number", "serial number", "default",
})


def machine_key(machine: dict) -> str | None:
    """The machine's SMBIOS identity, or None when what it reports is a placeholder."""
    uuid = machine.get("system_uuid")
    if not placeholder(uuid):
        return "uuid:" + uuid.strip().lower()
    parts = [machine.get(k) for k in ("vendor", "product", "serial")]
    if not any(placeholder(p) for p in parts):
        return "dmi:" + "/".join(p.strip() for p in parts)
    return None


def placeholder(value: object) -> bool:
    """Whether an SMBIOS or disk identity field says nothing: absent, empty, a vendor's filler,
    or a UUID of one repeated digit."""
    if not isinstance(value, str):
        return True
    text = value.strip().lower()
    if text in PLACEHOLDER_STRINGS or text in PLACEHOLDER_UUIDS:
        return True
    digits = text.replace("-", "")
    return len(set(digits)) == 1


def vm_firmware(inventory: dict) -> str:
    """"uefi" or "bios": the firmware the job's VM is made with (server/xenserver/spec.py) and
    the repair installs boot code for: the VM's as the server made it (``inventory["vm"]``, see
    job_inventory: a pool without UEFI guests gets a BIOS VM), else the source's, as the capture
    saw it; BIOS when unknown."""
    made = (inventory.get("vm") or {}).get("firmware")
    if made in ("bios", "uefi"):
        return made
    machine = inventory.get("machine") or {}
    firmware = machine.get("firmware") or inventory.get("firmware") or "bios"
    return "uefi" if str(firmware).lower() == "uefi" else "bios"


def vm_secure_boot(inventory: dict) -> bool:
    """Whether the job's VM boots with Secure Boot on (as the server made it)."""
    return vm_firmware(inventory) == "uefi" and (inventory.get("vm") or {}).get("secure_boot") is True


def job_inventory(job: dict) -> dict:
    """What the repair reads of a job: its inventory, with the VM the server made for it (firmware,
    Secure Boot, and its NICs as [{"device": VIF number, "mac", "source": the source NIC's name}],
    from the provisioning record) under "vm" when the automatic path made one."""
    inventory = dict(job.get("inventory") or {})
    made = ((job.get("records") or {}).get("xenserver") or {}).get("vm") or {}
    vm = {k: made[k] for k in ("firmware", "secure_boot", "nics") if k in made}
    if vm:
        inventory["vm"] = vm
    return inventory


def partition_span(part: object) -> tuple[int, int] | None:
    """(start, size) of an inventory's partition: a record, or an older agent's [start, size]."""
    if isinstance(part, dict):
        part = [part.get("start"), part.get("size")]
    if isinstance(part, list) and len(part) == 2 and \
            all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in part):
        return part[0], part[1]
    return None


def disk_identity(disk: dict) -> tuple:
    """What must be equal for two inventories' disks to be the same disk, from an inventory disk:
    (id, size, serial, table, filesystem). table: None or (label, id, partitions), each partition
    (start, size, fstype, uuid); filesystem: None or (fstype, uuid) of a whole-disk filesystem.
    What the disk holds counts: disks of one size with no serial and no table (or one imaged
    table) are told apart only by the filesystems on them."""
    table = disk.get("table")
    if isinstance(table, dict):
        parts = tuple((*span, *_content(p)) for p in table.get("partitions") or ()
                      if (span := partition_span(p)))
        table = (str(table.get("label")), str(table.get("id") or "").lower(), parts)
    else:
        table = None
    serial = disk.get("serial")
    serial = serial.strip() if isinstance(serial, str) and serial.strip() else None
    filesystem = disk.get("filesystem")
    filesystem = _content(filesystem) if isinstance(filesystem, dict) else None
    return (disk.get("id"), disk.get("size"), serial, table, filesystem)


def _content(record: object) -> tuple[str | None, str | None]:
    """(fstype, uuid) of a partition or filesystem record; (None, None) where it names none."""
    if not isinstance(record, dict):
        return None, None
    uuid = record.get("uuid")
    return record.get("fstype"), uuid.lower() if isinstance(uuid, str) else None


# --- extents and the image digest ---------------------------------------------------------------

@dataclass(frozen=True)
class Extent:
    """A run of whole chunks of one kind, in chunk indices: [start, start + count)."""

    kind: ChunkKind
    start: int
    count: int

    def to_json(self) -> dict:
        return {"kind": str(self.kind), "start": self.start, "count": self.count}

    @classmethod
    def from_json(cls, obj: dict) -> "Extent":
        return cls(ChunkKind(obj["kind"]), int(obj["start"]), int(obj["count"]))


def runs(indices: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Sorted, distinct indices as (start, count) runs."""
    start = prev = None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            yield start, prev - start + 1
            start = prev = i
    if start is not None:
        yield start, prev - start + 1


def image_map(count: int, data: Iterable[int], zero: Iterable[int]) -> list[Extent]:
    """Every chunk of a disk as data / zero / free extents, in order; free is what is left.

    Walks only the chunks that are data or zero, so a mostly empty 1 TiB disk costs nothing.
    """
    kinds = {i: ChunkKind.DATA for i in data}
    for i in zero:
        kinds.setdefault(i, ChunkKind.ZERO)
    out: list[Extent] = []

    def add(kind: ChunkKind, start: int, n: int) -> None:
        if out and out[-1].kind is kind and out[-1].start + out[-1].count == start:
            out[-1] = Extent(kind, out[-1].start, out[-1].count + n)
        else:
            out.append(Extent(kind, start, n))

    pos = 0
    for i in sorted(kinds):
        if i > pos:
            add(ChunkKind.FREE, pos, i - pos)
        add(kinds[i], i, 1)
        pos = i + 1
    if pos < count:
        add(ChunkKind.FREE, pos, count - pos)
    return out


def precopy_image_digest(size: int, chunk_size: int, sha256: dict[int, str], data: Iterable[int],
                         zero: Iterable[int]) -> str:
    """The whole-image digest a pre-copy sender seals with: image_digest's manifest with each
    data chunk's ``sha256:`` digest, hashed with SHA-256. A chunk of ``data`` missing from
    ``sha256`` makes the line ``<index> unknown``, so the digest cannot match the sender's."""
    h = hashlib.sha256()
    h.update(f"xenp2v-image v{VERSION} size={size} chunk={chunk_size}\n".encode())
    data = set(data)
    for index in sorted(data | set(zero)):
        line = (f"{index} {sha256.get(index, 'unknown')}\n" if index in data else f"{index} zero\n")
        h.update(line.encode())
    return f"{PRECOPY_DIGEST}:" + h.hexdigest()


def image_digest(size: int, chunk_size: int, data: dict[int, str], zero: Iterable[int]) -> str:
    """The whole-image digest both sides agree on before a disk is sealed.

    ``data`` maps chunk index to its ``blake3:`` digest; ``zero`` lists in-use all-zero chunks.
    A chunk in both counts as data. Free chunks are not part of the digest: their content is
    undefined by design.
    """
    h = blake3.blake3()
    h.update(f"xenp2v-image v{VERSION} size={size} chunk={chunk_size}\n".encode())
    zero_set = set(zero) - data.keys()
    for index in sorted(data.keys() | zero_set):
        line = f"{index} {data[index]}\n" if index in data else f"{index} zero\n"
        h.update(line.encode())
    return "blake3:" + h.hexdigest()


# --- shapes of what agents report --------------------------------------------------------------
#
# The fields of events, inventories and repair reports that the server reads or shows, with their
# kinds: a field may be absent or null, else it is of its kind. Other fields pass as they are
# (a newer agent may send more). Kinds: str, NUMBER (int or float, not bool, finite), bool, [kind]
# (a list of them), {field: kind} (an object with those fields).

NUMBER = "number"
STRINGS = [str]

EVENT_FIELDS: dict = {"disk": str, "phase": str, "message": str, "done": NUMBER, "total": NUMBER,
                      "sent": NUMBER, "rate": NUMBER, "eta": NUMBER}
NIC_FIELDS: dict = {"name": str, "mac": str, "driver": str, "speed": NUMBER, "link": bool,
                    "addresses": STRINGS, "altnames": STRINGS}
MACHINE_FIELDS: dict = {"system_uuid": str, "vendor": str, "product": str, "serial": str,
                        "firmware": str, "cpus": NUMBER, "memory": NUMBER, "nics": [NIC_FIELDS]}
INVENTORY_DISK_FIELDS: dict = {"device": str, "plan": STRINGS, "warnings": STRINGS}
INVENTORY_FIELDS: dict = {"vcpus": NUMBER, "memory": NUMBER, "machine": MACHINE_FIELDS,
                          "disks": [INVENTORY_DISK_FIELDS]}
STEP_FIELDS: dict = {"step": str, "status": str, "diff": str, "files": STRINGS,
                     "commands": STRINGS, "notes": STRINGS, "warnings": STRINGS,
                     "changes": STRINGS}
REPAIR_FIELDS: dict = {"status": str, "ok": bool, "os": str, "family": str, "root": str,
                       "disk": str, "error": str, "detail": str, "warnings": STRINGS,
                       "steps": [STEP_FIELDS]}


def _kind_name(kind) -> str:
    if kind is NUMBER:
        return "a number"
    if kind is str:
        return "a string"
    if kind is bool:
        return "true or false"
    if isinstance(kind, list):
        return "a list of " + ("objects" if isinstance(kind[0], dict) else _kind_name(kind[0])[2:] + "s")
    return "an object"


def fits(value: object, kind) -> bool:
    """Whether ``value`` (not null) is of ``kind``; an object's fields are not looked into."""
    if kind is NUMBER:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind is str or kind is bool:
        return isinstance(value, kind)
    if isinstance(kind, list):
        return isinstance(value, list)
    return isinstance(value, dict)


def shape_problems(obj: object, fields: dict, where: str) -> list[str]:
    """Sentences naming each field of ``obj`` (a JSON object) that is not of its kind; []
    when all fit. ``where`` names the object in them ("event 0", "disk sda")."""
    if not isinstance(obj, dict):
        return [f"The {where} must be a JSON object."]
    out = []
    for name, kind in fields.items():
        value = obj.get(name)
        if value is None:
            continue
        if not fits(value, kind):
            out.append(f"'{name}' of the {where} must be {_kind_name(kind)}, not {value!r:.40}.")
        elif isinstance(kind, list):
            for i, item in enumerate(value):
                if isinstance(kind[0], dict):
                    out += shape_problems(item, kind[0], f"{where}'s {name} {i}")
                elif item is None or not fits(item, kind[0]):
                    out.append(f"'{name}' of the {where} must be {_kind_name(kind)}; item {i} "
                               f"is {item!r:.40}.")
        elif isinstance(kind, dict):
            out += shape_problems(value, kind, f"{where}'s {name}")
    return out


def check_shape(obj: object, fields: dict, where: str) -> None:
    """ProtocolError 422 (bad_field) naming the first field of ``obj`` not of its kind."""
    problems = shape_problems(obj, fields, where)
    if problems:
        more = f" ({len(problems) - 1} more field(s) are wrong too.)" if len(problems) > 1 else ""
        raise ProtocolError(ErrorCode.BAD_FIELD, problems[0] + more)


def conform(obj: object, fields: dict) -> dict:
    """A copy of ``obj`` for showing: each field not of its kind replaced by "?" (a list's by
    ["?"], an object's by {}), items and nested objects likewise; not an object -> {}."""
    if not isinstance(obj, dict):
        return {}
    out = dict(obj)
    for name, kind in fields.items():
        value = obj.get(name)
        if value is None:
            continue
        if not fits(value, kind):
            out[name] = ["?"] if isinstance(kind, list) else {} if isinstance(kind, dict) else "?"
        elif isinstance(kind, list) and isinstance(kind[0], dict):
            out[name] = [conform(item, kind[0]) for item in value]
        elif isinstance(kind, list):
            out[name] = [item if item is not None and fits(item, kind[0]) else "?" for item in value]
        elif isinstance(kind, dict):
            out[name] = conform(value, kind)
    return out
