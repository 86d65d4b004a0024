"""A job's inventory as the agent sends it, checked into the disks the server will receive."""

from __future__ import annotations

from dataclasses import dataclass

from xenp2v.protocol import (
    INVENTORY_FIELDS, MAX_DISK_SIZE, MAX_DISKS, ErrorCode, ProtocolError, check_chunk_size,
    check_id, check_shape, chunk_count, chunk_size_for, disk_identity, machine_key,
    partition_span,
)

MAX_CHUNKS = 1 << 24
MAX_NAME = 128
MAX_SERIAL = 256


@dataclass(frozen=True)
class DiskPlan:
    id: str
    size: int
    chunk_size: int
    expected: int  # bytes reserved: the whole chunks the plan touches, else the disk's size
    identity: tuple = ()  # protocol.disk_identity: what resume compares

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk_size)


@dataclass(frozen=True)
class Inventory:
    name: str
    machine_key: str | None  # what makes two captures "the same machine"; None when unknown
    disks: tuple[DiskPlan, ...]
    resume: bool
    raw: dict
    request_id: str | None = None  # the agent's key for this create call, same on every retry
    job: str | None = None  # the job to resume, named by the technician (--job); no other
    precopy: bool = False  # a pre-copy pass of warm migration (protocol: "pass": "precopy")
    live: bool = False  # read from the source's own running system


def bad(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, detail)


def _int(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(f"The {what} {value!r} is not a whole number between {low} and {high}.")
    return value


def reservation(size: int, chunk_size: int, used: int | None, used_chunks: int | None) -> int:
    """Bytes to set aside for a disk: the whole chunks its plan touches (each is stored whole),
    never fewer than its used bytes can fill; the disk's size when the count is not given."""
    if used_chunks is None:
        return size
    least = chunk_count(used or 0, chunk_size) * chunk_size
    return min(size, max(used_chunks * chunk_size, least))


def _table(value: object, disk_id: str) -> None:
    if value is None:
        return
    parts = value.get("partitions") if isinstance(value, dict) else None
    if (not isinstance(parts, list) or len(parts) > 256
            or not all(partition_span(p) and (isinstance(p, list) or _record(p)) for p in parts)):
        raise bad(f"The partition table of disk {disk_id} must be null or an object with "
                  "'label', 'id' and 'partitions' (each {number, start, size, type, fstype, uuid, "
                  "label}, or [start, size], in bytes, at most 256).")


def _record(part: dict) -> bool:
    """A partition record's other fields: a number, and short strings or null."""
    number = part.get("number")
    return isinstance(number, int) and not isinstance(number, bool) and 0 < number < 1 << 16 and \
        _strings(part, ("type", "fstype", "uuid", "label"))


def _strings(obj: dict, keys: tuple[str, ...]) -> bool:
    return all(obj.get(k) is None or (isinstance(obj[k], str) and len(obj[k]) <= MAX_SERIAL)
               for k in keys)


def _filesystem(value: object, disk_id: str) -> None:
    if value is not None and not (isinstance(value, dict)
                                  and _strings(value, ("fstype", "uuid", "label"))):
        raise bad(f"The filesystem of disk {disk_id} must be null or an object with 'fstype', "
                  f"'uuid' and 'label' (each null or a string of at most {MAX_SERIAL} characters).")


def _disk(obj: object, position: int) -> DiskPlan:
    if not isinstance(obj, dict):
        raise bad(f"Disk {position} of the inventory is not a JSON object.")
    disk_id = check_id(obj.get("id"), "disk id")
    size = _int(obj.get("size"), f"size of disk {disk_id}", 1, MAX_DISK_SIZE)
    used = obj.get("used")
    if used is not None:
        _int(used, f"used bytes of disk {disk_id}", 0, size)
    if obj.get("chunk_size") is None:
        chunk = chunk_size_for(size)
    else:
        chunk = check_chunk_size(obj["chunk_size"])
        if chunk_count(size, chunk) > MAX_CHUNKS:
            raise bad(f"Disk {disk_id} would have more than {MAX_CHUNKS} chunks of {chunk} bytes; "
                      "use a larger chunk size or leave it to the server.")
    used_chunks = obj.get("used_chunks")
    if used_chunks is not None:
        _int(used_chunks, f"used chunks of disk {disk_id}", 0, chunk_count(size, chunk))
    serial = obj.get("serial")
    if serial is not None and (not isinstance(serial, str) or len(serial) > MAX_SERIAL):
        raise bad(f"The serial of disk {disk_id} must be null or a string of at most "
                  f"{MAX_SERIAL} characters.")
    _table(obj.get("table"), disk_id)
    _filesystem(obj.get("filesystem"), disk_id)
    return DiskPlan(disk_id, size, chunk, reservation(size, chunk, used, used_chunks),
                    disk_identity(obj))


def parse_inventory(body: object) -> Inventory:
    """The job-create body, checked; ProtocolError (400) says what is wrong and where."""
    if not isinstance(body, dict):
        raise bad("The job must be a JSON object with 'name', 'machine' and 'disks'.")
    name = body.get("name", "machine")
    if (not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME
            or not name.isprintable()):
        raise bad(f"The job name {name!r} must be 1 to {MAX_NAME} printable characters.")
    machine = body.get("machine", {})
    if not isinstance(machine, dict):
        raise bad("'machine' must be a JSON object (system_uuid, vendor, product, serial, …).")
    disks = body.get("disks")
    if not isinstance(disks, list) or not 1 <= len(disks) <= MAX_DISKS:
        raise bad(f"'disks' must be a list of 1 to {MAX_DISKS} disks, each with 'id' and 'size'.")
    plans = tuple(_disk(d, i) for i, d in enumerate(disks))
    check_shape(body, INVENTORY_FIELDS, "inventory")   # what the dashboard shows of it
    ids = [d.id for d in plans]
    if len(set(ids)) != len(ids):
        raise bad(f"The disk ids {ids} are not all different.")
    resume = body.get("resume", True)
    if not isinstance(resume, bool):
        raise bad("'resume' must be true or false.")
    request_id = body.get("request_id")
    if request_id is not None:
        request_id = check_id(request_id, "request_id")
    job = body.get("job")
    if job is not None:
        job = check_id(job, "job id")
    kind = body.get("pass")
    if kind not in (None, "precopy", "final"):
        raise bad(f"'pass' must be \"precopy\" or \"final\", not {kind!r}.")
    live = body.get("live", False)
    if not isinstance(live, bool):
        raise bad("'live' must be true or false.")
    return Inventory(name.strip(), machine_key(machine), plans, resume, body, request_id, job,
                     kind == "precopy", live)


def request_differs(made: Inventory, retry: Inventory) -> str | None:
    """What differs between the create that made a job and a later create with its request_id
    (name, machine, disks' ids, sizes and chunk sizes), as a phrase; None when it is a retry of
    the same create."""
    if made.name != retry.name:
        return f"the name {retry.name!r}, not {made.name!r}"
    if made.machine_key != retry.machine_key:
        return "another machine"
    def disks(inv: Inventory) -> list[tuple[str, int, int]]:
        return [(d.id, d.size, d.chunk_size) for d in inv.disks]
    if disks(made) != disks(retry):
        return (f"the disks {disks(retry)} (id, size, chunk size), not {disks(made)}")
    return None
