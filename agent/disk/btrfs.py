"""Which bytes of one btrfs member device hold the filesystem: every copy of every extent on it.

btrfs allocates its devices in chunks. The chunk tree says, for every chunk, its profile and where
each of its stripes sits (device id, byte offset); the kernel reads, scrubs and rebuilds through
exactly this map, so it is the authority for what a device holds: every mirror, DUP copy, raid0/10
stripe and raid5/6 parity. Inside a chunk, the extent tree says which logical bytes are in use;
they are mapped onto this device through the chunk's stripes:
- single, DUP, raid1, raid1c3, raid1c4: each stripe is a whole copy, at the same offset;
- raid0, raid10, raid5, raid6: a chunk is cut into rows, one `stripe_len` (64 KiB) on each of its
  devices; every row an extent touches is read on every device, whole. Rows, not the exact
  stripe, so that parity (which covers a row's unused blocks too: a scrub or a degraded read
  recomputes it from them) stays consistent, and one rule serves every striped profile.
Measured on a 4 GiB filesystem with 2.4 GiB written and a third of it deleted: 3.4 GiB of
allocated chunks, 1.7 GiB in use; deleted files' bytes stay behind too.

Both trees are read with `btrfs inspect-internal dump-tree` (checksums checked, any mirror or
parity used), and checked against the superblock, as `btrfs check` does: the stripes found for
this device must add up to its `dev_item.bytes_used` (else: BtrfsError, the caller reads the
device whole), the extents to the filesystem's `bytes_used` (else: the chunks are read whole). So
a leaf the tools skipped (dump-tree exits 0 even when it cannot read a tree) cannot go unnoticed.

A log tree (log_root in the superblock: an fsync before a crash, replayed at the first mount)
names blocks and data extents the extent tree does not hold yet, so then the chunks are read
whole. That is enough: those extents lie inside chunks the committed chunk tree already lists,
because an fsync in a transaction that allocated a chunk falls back to a full commit.

Other member devices: the chunk tree lives in SYSTEM chunks, usually DUP or raid1, so this device
alone usually holds a copy of it. The tools are first given this device only (`--noscan`), which
no other disk with the same filesystem id (a clone, an old copy) can confuse; only when that fails
(the chunk tree cannot be read, or the extent tree does not add up: with raid0/10/5/6 metadata its
blocks may all lie on other devices' stripes) do they scan for the others, which btrfs-progs does
through libblkid's own walk of /sys/block, with no udev and nothing registered in the kernel.

Ranges are half-open byte ranges [start, end): logical, or relative to the device.
"""

from __future__ import annotations

import bisect
import re
import subprocess
from dataclasses import dataclass, field

from agent.disk.ranges import Range, normalize

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3
# The superblock and its mirrors (btrfs_sb_offset); a mirror exists when it fits on the device.
SUPERBLOCKS = (64 * KiB, 64 * MiB, 256 * GiB)
SUPERBLOCK_SIZE = 4 * KiB
# btrfs never allocates the first MiB: boot loaders live there (and the primary superblock).
RESERVED = 1 * MiB
PROFILES = ("DUP", "RAID0", "RAID1", "RAID10", "RAID1C3", "RAID1C4", "RAID5", "RAID6")
STRIPED = ("raid0", "raid10", "raid5", "raid6")
TIMEOUT = 600  # seconds a dump may take

_ITEM = re.compile(r"^\s*item \d+ key \((\S+) (\S+) (\d+)\)")
_CHUNK = re.compile(r"^\s*length (\d+) owner \d+ stripe_len (\d+) type (\S+)")
_STRIPES = re.compile(r"^\s*num_stripes (\d+) sub_stripes (\d+)")
_STRIPE = re.compile(r"^\s*stripe \d+ devid (\d+) offset (\d+)")


class BtrfsError(Exception):
    """The chunk map of a btrfs device could not be read or does not add up; says why."""


@dataclass
class Superblock:
    """What this device's superblock says (dump-super's fields)."""

    devid: int
    allocated: int       # dev_item.bytes_used: bytes of chunks on this device
    num_devices: int
    log_root: int
    used: int = 0        # bytes_used: logical bytes of extents in use, in the whole filesystem
    nodesize: int = 16 * KiB


@dataclass
class Chunk:
    """One chunk: `length` logical bytes from `logical`, `flags` like {"DATA", "RAID1"}, and its
    stripes as (devid, byte offset on that device)."""

    logical: int
    length: int
    flags: frozenset[str]
    sub_stripes: int
    stripes: list[tuple[int, int]] = field(default_factory=list)
    stripe_len: int = 64 * KiB

    @property
    def profile(self) -> str:
        """"single", "dup", "raid0", ... "raid6"."""
        found = self.flags & set(PROFILES)
        return next(iter(found)).lower() if found else "single"

    @property
    def kind(self) -> str:
        """"data", "metadata", "system", or "mixed" (data and metadata in one chunk)."""
        kinds = self.flags & {"DATA", "METADATA", "SYSTEM"}
        return "mixed" if len(kinds) > 1 else next(iter(kinds), "unknown").lower()

    @property
    def data_stripes(self) -> int:
        """How many stripes of a row hold distinct data (1 for the mirrored profiles)."""
        n = len(self.stripes)
        return {"raid0": n, "raid10": n // max(self.sub_stripes, 1),
                "raid5": n - 1, "raid6": n - 2}.get(self.profile, 1)

    @property
    def stripe_size(self) -> int:
        """Bytes of the device each stripe takes: the chunk's length over its data stripes."""
        rows = self.data_stripes * (self.stripe_len if self.profile in STRIPED else 1)
        if self.data_stripes < 1 or self.length % rows:
            raise BtrfsError(f"the chunk at {self.logical} ({self.profile}, {len(self.stripes)} "
                             f"stripes) does not divide into its stripes")
        return self.length // self.data_stripes

    def on_device(self, used: list[Range]) -> list[Range]:
        """Where logical ranges `used` (relative to the chunk) lie on each of its stripes,
        relative to the stripe's start: exactly for mirrors, whole rows for striped profiles."""
        if self.profile not in STRIPED:
            return used
        row = self.data_stripes * self.stripe_len
        rows = normalize([(s // row, (e - 1) // row + 1) for s, e in used])
        return [(a * self.stripe_len, b * self.stripe_len) for a, b in rows]


@dataclass
class DeviceMap:
    """What one member device holds: `ranges` to read, and what the filesystem is, for notes."""

    devid: int
    ranges: list[Range]        # sorted, merged
    profiles: dict[str, str]   # chunk kind -> profile, e.g. {"data": "raid1", ...}
    num_devices: int
    whole_chunks: str = ""     # why the chunks are read whole, if they are
    unclean: bool = False      # a log tree waits to be replayed (then the chunks are whole)
    mapped: int | None = None  # bytes the extent tree alone would have put here, when known

    def describe(self) -> str:
        """E.g. "raid1 data, raid1 metadata, 2 devices"."""
        kinds = [k for k in ("data", "metadata", "mixed") if k in self.profiles]
        if self.profiles.get("system") not in (None, self.profiles.get("metadata")):
            kinds.append("system")
        parts = [f"{self.profiles[k]} {k}" for k in kinds]
        parts.append(f"{self.num_devices} device{'s' if self.num_devices != 1 else ''}")
        return ", ".join(parts)


def parse_superblock(text: str) -> Superblock:
    """A Superblock from `btrfs inspect-internal dump-super` output; BtrfsError when the
    superblock's checksum or magic do not match."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        if key and value:
            fields.setdefault(key.strip(), value.strip())
    for key in ("csum", "magic"):
        if not fields.get(key, "").endswith("[match]"):
            raise BtrfsError(f"its superblock's {key} does not match")
    try:
        return Superblock(devid=int(fields["dev_item.devid"]),
                          allocated=int(fields["dev_item.bytes_used"]),
                          num_devices=int(fields["num_devices"]),
                          log_root=int(fields["log_root"]),
                          used=int(fields["bytes_used"]),
                          nodesize=int(fields["nodesize"]))
    except (KeyError, ValueError) as e:
        raise BtrfsError(f"its superblock has no readable {e}") from None


def parse_chunk_tree(text: str) -> list[Chunk]:
    """Every CHUNK_ITEM of `btrfs inspect-internal dump-tree -t chunk` output, in order."""
    chunks: list[Chunk] = []
    chunk: Chunk | None = None
    for line in text.splitlines():
        if m := _ITEM.match(line):
            chunk = None
            if m.group(2) == "CHUNK_ITEM":
                chunk = Chunk(int(m.group(3)), 0, frozenset(), 1)
                chunks.append(chunk)
        elif chunk is None:
            continue
        elif m := _CHUNK.match(line):
            chunk.length, chunk.stripe_len = int(m.group(1)), int(m.group(2))
            chunk.flags = frozenset(m.group(3).split("|"))
        elif m := _STRIPES.match(line):
            chunk.sub_stripes = int(m.group(2))
        elif m := _STRIPE.match(line):
            chunk.stripes.append((int(m.group(1)), int(m.group(2))))
    return chunks


def parse_extent_tree(text: str, nodesize: int) -> tuple[list[Range], int]:
    """(merged logical ranges in use, bytes the extents add up to) from `dump-tree -t extent`:
    EXTENT_ITEM keys carry their length, METADATA_ITEM keys (skinny tree blocks) a level."""
    extents = []
    for line in text.splitlines():
        if (m := _ITEM.match(line)) and m.group(2) in ("EXTENT_ITEM", "METADATA_ITEM"):
            start = int(m.group(1))
            length = int(m.group(3)) if m.group(2) == "EXTENT_ITEM" else nodesize
            extents.append((start, start + length))
    return normalize(extents), sum(e - s for s, e in extents)


def device_map(sb: Superblock, chunks: list[Chunk], length: int,
               used: list[Range] | None = None) -> DeviceMap:
    """The ranges of a `length`-byte device with superblock `sb` that hold anything: the
    reserved first MiB, every superblock mirror that fits, and on every stripe of every chunk
    here what `used` (merged logical ranges; None: everything) puts there.
    BtrfsError when the stripes do not add up to what the superblock says is allocated."""
    if sb.devid == 0:
        # A `btrfs replace` target: mounting resumes the copy onto it, trusting what it holds.
        raise BtrfsError("it is the target of an unfinished 'btrfs replace'")
    ranges = [(0, min(RESERVED, length))]
    ranges += [(at, at + SUPERBLOCK_SIZE) for at in SUPERBLOCKS if at + SUPERBLOCK_SIZE <= length]
    allocated = 0
    profiles: dict[str, str] = {}
    starts = [s for s, _ in used or []]
    for chunk in chunks:
        if not chunk.length or not chunk.stripes:
            raise BtrfsError(f"the chunk at {chunk.logical} has no length or no stripes")
        profiles.setdefault(chunk.kind, chunk.profile)
        mine = [offset for devid, offset in chunk.stripes if devid == sb.devid]
        if not mine:
            continue
        size = chunk.stripe_size
        allocated += size * len(mine)
        if used is None:
            inside = [(0, size)]
        else:
            first = max(bisect.bisect_right(starts, chunk.logical) - 1, 0)
            end = chunk.logical + chunk.length
            inside = chunk.on_device([(max(s, chunk.logical) - chunk.logical,
                                       min(e, end) - chunk.logical)
                                      for s, e in used[first:bisect.bisect_left(starts, end)]
                                      if e > chunk.logical])
        ranges += [(offset + s, offset + min(e, size)) for offset in mine for s, e in inside]
    if allocated != sb.allocated:
        raise BtrfsError(f"its chunk tree places {allocated} bytes on device {sb.devid} but its "
                         f"superblock says {sb.allocated}")
    if any(e > length for _, e in ranges):
        raise BtrfsError(f"its chunk tree places stripes past the device's end ({length} bytes)")
    return DeviceMap(sb.devid, normalize(ranges), profiles, sb.num_devices)


def map_device(node: str, length: int) -> DeviceMap:
    """Read the superblock, chunk tree and extent tree of btrfs member `node` (`length` bytes)
    and map it. BtrfsError, saying why, when the chunks cannot be mapped; when only the extents
    cannot, the chunks are read whole and `whole_chunks` says why."""
    text, _ = _run(["btrfs", "inspect-internal", "dump-super", node], "read its superblock")
    sb = parse_superblock(text)
    try:
        options = ["--noscan"]
        found, chunks = _chunk_map(sb, node, length, options)
    except BtrfsError as alone:
        if sb.num_devices < 2:
            raise
        try:
            options = []
            found, chunks = _chunk_map(sb, node, length, options)
        except BtrfsError as scanned:
            raise BtrfsError(f"{scanned}; from this device alone: {alone}; are all "
                             f"{sb.num_devices} member devices attached?") from None
    used, adds_up, complaint = _extent_tree(node, sb, options)
    if adds_up != sb.used and options and sb.num_devices > 1:
        # This device's chunk tree copy was enough, its extent tree's blocks may not be: on
        # raid0/10/5/6 metadata a leaf or the root lies on the other devices' stripes.
        alone = complaint
        used, adds_up, complaint = _extent_tree(node, sb, [])
        if adds_up != sb.used:
            complaint = "; ".join(filter(None, (complaint, f"from this device alone: {alone}"
                                                if alone else "")))
    if sb.log_root:
        found.whole_chunks, found.unclean = "a log tree waits to be replayed", True
        if adds_up == sb.used:  # what it costs, against the committed extents
            found.mapped = sum(e - s for s, e in device_map(sb, chunks, length, used).ranges)
        return found
    if adds_up != sb.used:
        found.whole_chunks = (f"its extent tree adds up to {adds_up} bytes, its superblock "
                              f"says {sb.used}{f' ({complaint})' if complaint else ''}")
        return found
    return device_map(sb, chunks, length, used)


def _extent_tree(node: str, sb: Superblock,
                 options: list[str]) -> tuple[list[Range], int, str]:
    """(merged logical ranges in use, bytes they add up to, dump-tree's last complaint)."""
    text, complaint = _run(["btrfs", "inspect-internal", "dump-tree", "-t", "extent", *options,
                            node], "read its extent tree")
    return (*parse_extent_tree(text, sb.nodesize), complaint)


def _chunk_map(sb: Superblock, node: str, length: int,
               options: list[str]) -> tuple[DeviceMap, list[Chunk]]:
    # dump-tree exits 0 even when it cannot read the chunk root: what it printed is judged.
    text, complaint = _run(["btrfs", "inspect-internal", "dump-tree", "-t", "chunk", *options,
                            node], "read its chunk tree")
    chunks = parse_chunk_tree(text)
    if not chunks:
        raise BtrfsError(f"could not read its chunk tree: {complaint or 'no chunk in it'}")
    try:
        return device_map(sb, chunks, length), chunks
    except BtrfsError as e:
        raise BtrfsError(f"{e} ({complaint})" if complaint else str(e)) from None


def _run(cmd: list[str], what: str) -> tuple[str, str]:
    """(stdout, the last line of stderr) of a btrfs-progs command that exited 0."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise BtrfsError("btrfs-progs is not installed") from None
    except subprocess.TimeoutExpired:
        raise BtrfsError(f"could not {what} within {TIMEOUT} seconds") from None
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if proc.returncode != 0:
        raise BtrfsError(f"could not {what}: {last or f'exit status {proc.returncode}'}")
    return proc.stdout, last
