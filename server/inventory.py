"""A job's inventory as the agent sends it, checked into the disks the server will receive."""

from __future__ import annotations

from dataclasses import dataclass

from xenp2v.protocol import (
    DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_DISK_SIZE, MAX_DISKS, ErrorCode, ProtocolError,
    check_chunk_size, check_id, chunk_count,
)

# Keeps a disk's chunk list (and the zero list at sealing) small enough to hold in memory.
TARGET_CHUNKS = 1 << 20
MAX_CHUNKS = 1 << 24
MAX_NAME = 128

# Placeholder SMBIOS UUIDs that cheap boards ship: they identify no machine.
_BOGUS_UUIDS = {
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
}


@dataclass(frozen=True)
class DiskPlan:
    id: str
    size: int
    chunk_size: int
    expected: int  # bytes the agent expects to send (its "used" estimate, else the size)

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


def bad(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, detail)


def _int(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(f"The {what} {value!r} is not a whole number between {low} and {high}.")
    return value


def chunk_size_for(size: int) -> int:
    """4 MiB chunks, larger only for disks so big that 4 MiB would make over a million chunks."""
    chunk = DEFAULT_CHUNK_SIZE
    while chunk_count(size, chunk) > TARGET_CHUNKS and chunk < MAX_CHUNK_SIZE:
        chunk *= 2
    return chunk


def machine_key(machine: dict) -> str | None:
    uuid = machine.get("system_uuid")
    if isinstance(uuid, str) and uuid.strip() and uuid.strip().lower() not in _BOGUS_UUIDS:
        return "uuid:" + uuid.strip().lower()
    parts = [machine.get(k) for k in ("vendor", "product", "serial")]
    if all(isinstance(p, str) and p.strip() for p in parts):
        return "dmi:" + "/".join(p.strip() for p in parts)
    return None


def _disk(obj: object, position: int) -> DiskPlan:
    if not isinstance(obj, dict):
        raise bad(f"Disk {position} of the inventory is not a JSON object.")
    disk_id = check_id(obj.get("id"), "disk id")
    size = _int(obj.get("size"), f"size of disk {disk_id}", 1, MAX_DISK_SIZE)
    used = obj.get("used")
    expected = size if used is None else _int(used, f"used bytes of disk {disk_id}", 0, size)
    if obj.get("chunk_size") is None:
        chunk = chunk_size_for(size)
    else:
        chunk = check_chunk_size(obj["chunk_size"])
        if chunk_count(size, chunk) > MAX_CHUNKS:
            raise bad(f"Disk {disk_id} would have more than {MAX_CHUNKS} chunks of {chunk} bytes; "
                      "use a larger chunk size or leave it to the server.")
    return DiskPlan(disk_id, size, chunk, expected)


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
    ids = [d.id for d in plans]
    if len(set(ids)) != len(ids):
        raise bad(f"The disk ids {ids} are not all different.")
    resume = body.get("resume", True)
    if not isinstance(resume, bool):
        raise bad("'resume' must be true or false.")
    return Inventory(name.strip(), machine_key(machine), plans, resume, body)
