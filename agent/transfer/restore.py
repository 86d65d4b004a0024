"""Restore: put a sealed image from the server onto a local disk, verified and resumable.

The server's map says which chunks are data, zero or free. Data chunks are fetched over N
connections, checked against the digests the server sealed, and written whole at their offsets
(the unused blocks inside them, zero-filled by the capture, are written as zeros). Everything else
of the target, whatever the map says or leaves out (zero and free chunks, the target past the
image's end), is made to read zeros, so nothing of the target's old bytes is left: no previous
owner's data in the guest's free space, no stale RAID, LVM or filesystem signature for blkid to
find. That is skipped only where the target is known to read zeros: a new sparse file, or with
--target-zeroed, which is checked on a sample first.

Zeroing: BLKZEROOUT in big runs on a block device that offloads it (write-zeroes, WRITE SAME,
a loop device's fallocate); on one that does not, the runs are read and only the pieces that
are not zero already are written (a new thin VDI or LUN stays thin); hole punching in a file.

Resume needs no state file: before fetching a data chunk, the target's bytes at that place are
hashed, and a chunk that already holds the sealed digest is not fetched again. A restore stopped
anywhere, even by a power cut, restarts safely and moves only what is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.disk import inuse
from agent.transfer.client import Client, ServerError
from agent.transfer.link import Compression
from agent.transfer.progress import Progress, human
from agent.settings import Settings
from agent.transfer.source import DIRECT_ALIGN, chunk_buffer
from xenp2v import protocol
from xenp2v.units import counted

log = logging.getLogger(__name__)

_BLKZEROOUT = 0x127F            # _IO(0x12, 127)
_BLKRRPART = 0x125F             # _IO(0x12, 95)
_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
# Offloaded zeroing per call, each counted as done when it returns: a starved CI guest stayed at
# "restore 0 B" for an hour, likely inside one 1 GiB call; in these a slow zeroing still moves.
# The calls cost no more (a loop device: 3.9 GiB in 0.2 to 0.3 s with 1 GiB or 128 MiB steps).
ZERO_STEP = 128 * 1024 * 1024
SCAN_STEP = 4 * 1024 * 1024     # without offload: read this much, write it only if not zero
SPARSE_BLOCK = 64 * 1024        # on a target that reads zeros, all-zero blocks this big are skipped
_ZERO_BLOCK = bytes(SPARSE_BLOCK)
_SCAN_ZEROS = bytes(SCAN_STEP)
SAMPLE_BLOCKS = 512             # --target-zeroed: 4 KiB blocks read to check the claim
SAMPLE_BLOCK = 4096
SAMPLE_EDGE = 128 * 1024        # ... every one in the first and last this many bytes
DAMAGE_ATTEMPTS = 3             # a chunk that arrives whole but wrong, fetched this many times


class RestoreError(Exception):
    """Restore cannot go on; the message says what to do."""


@dataclass
class RestoreResult:
    job: str
    disk: str
    target: str
    size: int
    fetched_chunks: int = 0
    kept_chunks: int = 0        # already right on the target (resume)
    zeroed_bytes: int = 0       # bytes without data in the image made to read zeros
    no_data_bytes: int = 0      # bytes of the target the image holds no data for
    no_data_said: str = ""      # what was done where the image has no data, in words

    def summary(self) -> str:
        """One line for the console: what was fetched, kept and zeroed (or left as it was)."""
        return (f"{self.disk} of job {self.job} restored onto {self.target}: "
                f"{counted(self.fetched_chunks, 'chunk')} fetched ({human(self.fetched_bytes)}, "
                f"{human(self.received)} on the wire), "
                f"{self.kept_chunks} already in place, {self.no_data_said}")
    fetched_bytes: int = 0      # disk bytes of the fetched chunks
    received: int = 0           # chunk bytes that crossed the network (compressed or not)


# --- the target ----------------------------------------------------------------------------------

SWAP = "(swap)"
# Where the live ISO (live-boot) mounts what it runs from; "/" anywhere else.
LIVE_MOUNTS = ("/run/live/", "/lib/live/")


def mounted_devices() -> dict[str, str]:
    """'major:minor' -> where it is mounted (or SWAP), for everything in use right now."""
    out = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        out.setdefault(fields[2], fields[4])
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        dev = line.split()[0]
        try:
            st = os.stat(dev)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            out[f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"] = SWAP
    return out


def check_target_free(target: str) -> None:
    """Refuse a block device that is mounted, swapped on, or held by LVM, md or dm."""
    st = os.stat(target)
    if not stat.S_ISBLK(st.st_mode):
        return
    sys_dir = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}").resolve()
    devices = [sys_dir] + [p for p in sys_dir.iterdir() if (p / "partition").exists()]
    used = mounted_devices()
    for dev in devices:
        number = (dev / "dev").read_text().strip()
        if used.get(number) == SWAP:
            raise RestoreError(f"{target} is in use: /dev/{dev.name} is in use as swap. "
                               f"Run 'swapoff /dev/{dev.name}' (or pick another target) and start "
                               "again.")
        if number in used and (used[number] == "/" or used[number].startswith(LIVE_MOUNTS)):
            raise RestoreError(f"{target} holds the live system this agent runs from (/dev/{dev.name} "
                               f"is mounted on {used[number]}): it cannot be written. Choose "
                               "another disk ('lsblk' lists them) and start again.")
        if number in used:
            raise RestoreError(f"{target} is in use: /dev/{dev.name} is mounted on {used[number]}. "
                               "Unmount it (or pick another target) and start again.")
        holders = list((dev / "holders").iterdir()) if (dev / "holders").exists() else []
        if holders:
            raise RestoreError(f"{target} is in use: /dev/{dev.name} is held by "
                               f"{', '.join(h.name for h in holders)} (LVM, RAID or device-mapper). "
                               "Deactivate it (vgchange -an, mdadm --stop, dmsetup remove) and "
                               "start again.")


def check_no_other_name(target: str, itself: bool = True) -> None:
    """Refuse a target that is in use under another name: a block device that inuse finds used
    (a writable loop device over it, btrfs), the backing file of a loop device that is in use,
    or a loop device whose backing file another loop device in use also maps. Writing through
    one name while a filesystem is mounted through another overwrites it."""
    st = os.stat(target)
    if stat.S_ISBLK(st.st_mode) and itself:   # False: only its other names (the repair's check)
        found = [u.sentence() for u in inuse.uses(target)]
        if found:
            raise RestoreError(f"{target} is in use: {' '.join(found)} Then start again.")
    mine = loop_maps(st.st_rdev) if stat.S_ISBLK(st.st_mode) else None
    if stat.S_ISREG(st.st_mode):
        mine = ("file", st.st_dev, st.st_ino)
    if mine is None:
        return
    for loop in sorted(Path("/sys/block").glob("loop*")):
        number = _device_number(loop)
        if number is None or (stat.S_ISBLK(st.st_mode) and number == st.st_rdev) \
                or loop_maps(number) != mine:
            continue
        found = [u.sentence() for u in inuse.uses(f"/dev/{loop.name}")]
        if found:
            raise RestoreError(
                f"{target} is in use under another name: /dev/{loop.name} maps the same "
                f"{'file' if stat.S_ISREG(st.st_mode) else 'backing file'}, and "
                f"{' '.join(found)} Then start again.")


def _device_number(sys_dir: Path) -> int | None:
    try:
        major, minor = (sys_dir / "dev").read_text().strip().split(":")
    except (OSError, ValueError):
        return None
    return os.makedev(int(major), int(minor))


def loop_maps(rdev: int) -> tuple | None:
    """What the loop device with device number `rdev` maps: ("file", st_dev, st_ino) of its
    backing file, or ("block", st_rdev) of a backing block device; None for a device that is no
    loop device or maps nothing. A backing file whose name leads nowhere now (deleted, another
    name still held) is asked of the loop device itself."""
    sys_dir = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}").resolve()
    try:
        path = (sys_dir / "loop" / "backing_file").read_text().strip()
    except OSError:
        return None
    try:
        if not path.endswith(" (deleted)"):
            st = os.stat(path)
            return ("block", st.st_rdev) if stat.S_ISBLK(st.st_mode) else ("file", st.st_dev, st.st_ino)
    except OSError:
        pass
    info = inuse.loop_info(f"/dev/{sys_dir.name}")
    if info is None:
        return None
    device, inode, backing_rdev = info
    return ("block", backing_rdev) if backing_rdev else ("file", device, inode)


def check_whole_and_writable(target: str) -> None:
    """Refuse a block device that is a partition or read-only. A job's disk is a whole disk,
    partition table and all: written into a partition it boots nowhere, and the checks of the
    disk around it (the live system's, a mounted neighbour) never ran. A read-only device fails
    its first write, after the disks before it were written."""
    st = os.stat(target)
    if not stat.S_ISBLK(st.st_mode):
        return
    sys_dir = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}").resolve()
    maps = loop_maps(st.st_rdev)
    if maps and maps[0] == "block":
        under = Path(f"/sys/dev/block/{os.major(maps[1])}:{os.minor(maps[1])}").resolve().name
        raise RestoreError(f"{target} is a loop device over the block device /dev/{under}; what "
                           f"uses /dev/{under} cannot be seen through it. Name /dev/{under} itself "
                           "(or the disk it is on) and start again.")
    if (sys_dir / "partition").exists():
        raise RestoreError(f"{target} is a partition (/dev/{sys_dir.name}) of the disk "
                           f"/dev/{sys_dir.parent.name}; a restore writes whole disks. Name the disk "
                           "itself ('lsblk' shows each disk and its partitions) and start again.")
    try:
        read_only = (sys_dir / "ro").read_text().strip() == "1"
    except OSError:
        read_only = False
    if read_only:
        raise RestoreError(f"{target} is read-only (/dev/{sys_dir.name}); make it writable "
                           f"('blockdev --setrw {target}', or the VM's disk settings) or choose "
                           "another disk, and start again.")


def check_target_kind(target: str) -> None:
    """Refuse a target a restore must not write: under /dev (by its name or where it leads) only
    an existing block device; elsewhere an existing block device or regular file, or a file to
    be made in an existing directory. A typo under /dev would otherwise become a file in /dev
    (RAM on the live system) and the restore would say it succeeded. Raises RestoreError."""
    real = os.path.realpath(target)
    under_dev = any(p == "/dev" or p.startswith("/dev/") for p in (os.path.abspath(target), real))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if under_dev:
            raise RestoreError(f"The target {target} does not exist. Run 'lsblk' to see the disks of "
                               "this machine and give one of them, e.g. /dev/xvda (a new image file "
                               "is made only outside /dev).") from None
        if not Path(target).parent.is_dir():
            raise RestoreError(f"The target {target} does not exist, nor its directory; give a disk "
                               "such as /dev/xvda ('lsblk' lists them) or a file in an existing "
                               "directory.") from None
        return
    if stat.S_ISBLK(st.st_mode):
        return
    if under_dev or not stat.S_ISREG(st.st_mode):
        raise RestoreError(f"The target {target} is not a disk (a block device). Run 'lsblk' to see "
                           "the disks of this machine and give one of them, e.g. /dev/xvda.")


def open_target(target: str, size: int) -> tuple[int, int, bool]:
    """(fd, its size in bytes, reads_zeros) of the target, checked to be large enough and not
    in use. reads_zeros: known to read zeros everywhere (a new or wholly sparse file)."""
    check_target_kind(target)
    path = Path(target)
    if not path.exists():
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, size)
        return fd, size, True  # a new sparse file reads zeros everywhere
    check_whole_and_writable(target)
    check_target_free(target)
    check_no_other_name(target)
    st = os.stat(target)
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if stat.S_ISBLK(st.st_mode) else 0)
    try:
        fd = os.open(target, flags)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise RestoreError(f"{target} is in use by the system (mounted or held); free it "
                               "and start again.") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RestoreError(f"{target} cannot be opened for writing ({e.strerror}); make it "
                               "writable or choose another target, and start again.") from None
        raise
    have = os.lseek(fd, 0, os.SEEK_END)
    if have < size:
        os.close(fd)
        raise RestoreError(f"The target {target} holds {human(have)} ({have} bytes) but the image "
                           f"is {human(size)} ({size} bytes); give a disk at least that large.")
    return fd, have, stat.S_ISREG(st.st_mode) and have == size and st.st_blocks == 0


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) read zeros, as cheaply as the target allows.

    BLKZEROOUT guarantees zeros (the kernel writes them where the device has no offload);
    a discard would not, so none is used. Raises OSError if the bytes cannot be written.
    """
    mode = os.fstat(fd).st_mode
    if stat.S_ISBLK(mode) and offset % 512 == 0 and length % 512 == 0:
        try:
            fcntl.ioctl(fd, _BLKZEROOUT, struct.pack("QQ", offset, length))
            return
        except OSError:
            pass
    elif stat.S_ISREG(mode) and _punch_hole(fd, offset, length):
        return
    zeros = bytes(min(length, 4 * 1024 * 1024))
    pos = offset
    while pos < offset + length:
        n = min(len(zeros), offset + length - pos)
        pos += os.pwrite(fd, memoryview(zeros)[:n], pos)


def zeroing_offloaded(fd: int) -> bool:
    """True if zeroing costs the target no writes of ours: a block device whose queue takes
    write-zeroes (its sysfs write_zeroes_max_bytes is not 0), or a regular file (holes)."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return True
    if not stat.S_ISBLK(st.st_mode):
        return False
    sys_dir = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}").resolve()
    for queue in (sys_dir / "queue", sys_dir.parent / "queue"):   # a partition: its disk's
        try:
            return int((queue / "write_zeroes_max_bytes").read_text()) > 0
        except (OSError, ValueError):
            continue
    return False


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0


def reread_partitions(fd: int) -> None:
    """Ask the kernel to read the restored partition table (best effort: nodes may be busy)."""
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        try:
            fcntl.ioctl(fd, _BLKRRPART)
        except OSError as e:
            log.info("the kernel did not re-read the partition table (%s)", e.strerror)


# --- the run -------------------------------------------------------------------------------------

def choose_disk(client: Client, job: str, disk: str | None) -> str:
    info = client.job(job)
    ids = [d["id"] for d in info.get("disks", [])]
    if disk:
        if disk not in ids:
            raise RestoreError(f"Job {job} has no disk {disk}; its disks are {', '.join(ids)}.")
        return disk
    if len(ids) != 1:
        raise RestoreError(f"Job {job} has {counted(len(ids), 'disk')} ({', '.join(ids)}): choose one "
                           "with --disk.")
    return ids[0]


def run(settings: Settings, target: str, disk: str | None = None,
        progress: Progress | None = None, *, client: Client | None = None,
        target_zeroed: bool = False, retry_for: float = 600.0) -> RestoreResult:
    """Restore disk `disk` of job `settings.job` onto `target`; raises RestoreError."""
    progress = progress or Progress()
    if not settings.job:
        raise RestoreError("No job given: pass --job ID (p2v.job=); 'p2v-server jobs' lists them.")
    check_target_kind(target)   # before asking the server anything
    try:
        client = client or Client(settings.server, settings.token, settings.fingerprint,
                                  retry_for=retry_for)
        did = choose_disk(client, settings.job, disk)
        image = client.image_map(settings.job, did)
        digests = client.held_chunks(settings.job, did, sealed=True)
        size, chunk_size = int(image["size"]), int(image["chunk_size"])
        extents = [protocol.Extent.from_json(e) for e in image["extents"]]
        data = [e for e in extents if e.kind is protocol.ChunkKind.DATA]
        fd, end, reads_zeros = open_target(target, size)
        try:
            result = RestoreResult(settings.job, did, target, size)
            runs = no_data_runs(data, size, chunk_size, end)
            result.no_data_bytes = sum(n for _, n in runs)
            if target_zeroed and not reads_zeros:
                check_zeroed(fd, target, runs)
            zeroing = not (reads_zeros or target_zeroed)
            data_bytes = sum(_extent_bytes(e, size, chunk_size) for e in data)
            progress.start(did, data_bytes + (result.no_data_bytes if zeroing else 0), "restore")
            if zeroing:
                result.zeroed_bytes = _zero_runs(fd, runs, did, progress)
            _Fetcher(client, settings, did, fd, size, chunk_size, digests, progress, result,
                     verify_existing=not reads_zeros, sparse=reads_zeros).run(data)
            os.fsync(fd)
            reread_partitions(fd)
        finally:
            os.close(fd)
    except ServerError as e:
        raise RestoreError(str(e)) from None
    except OSError as e:
        raise RestoreError(f"Cannot write {e.filename or target}: {e.strerror}.") from None
    if zeroing:
        zeros = (f"zeroed {human(result.zeroed_bytes)} where the image has no data"
                 + ("" if result.zeroed_bytes == result.no_data_bytes else
                    f" (the other {human(result.no_data_bytes - result.zeroed_bytes)} of it "
                    "read zeros already)"))
    else:
        zeros = (f"left {human(result.no_data_bytes)} where the image has no data as it was ("
                 + ("a new sparse file" if reads_zeros else "--target-zeroed, checked on a sample")
                 + ")")
    result.no_data_said = zeros
    log.info("%s restored onto %s: %s fetched, %d already in place; %s", did, target,
             counted(result.fetched_chunks, "chunk"), result.kept_chunks, zeros)
    progress.phase(did, "done", f"restored onto {target}: {counted(result.fetched_chunks, 'chunk')} fetched, "
                                f"{result.kept_chunks} already in place, {zeros}")
    return result


def _extent_bytes(e: protocol.Extent, size: int, chunk_size: int) -> int:
    return min(size, (e.start + e.count) * chunk_size) - e.start * chunk_size


def no_data_runs(data: list[protocol.Extent], size: int, chunk_size: int,
                 end: int) -> list[tuple[int, int]]:
    """(offset, length) byte runs of [0, end) that no data chunk covers, in order, merged.

    `data`: the map's data extents; `size`: the image's bytes; `end`: the target's bytes (at
    least `size`). Zero and free extents, anything the map leaves out, and the target past the
    image's end are all in these runs.
    """
    out: list[tuple[int, int]] = []
    pos = 0
    for e in sorted(data, key=lambda e: e.start):
        start, stop = e.start * chunk_size, min(size, (e.start + e.count) * chunk_size)
        if start > pos:
            out.append((pos, start - pos))
        pos = max(pos, stop)
    if end > pos:
        out.append((pos, end - pos))
    return out


def sample_blocks(runs: list[tuple[int, int]], count: int = SAMPLE_BLOCKS,
                  block: int = SAMPLE_BLOCK) -> list[tuple[int, int]]:
    """About `count` (offset, length) blocks over `runs`, sorted, where old signatures sit:
    every block of the first and last SAMPLE_EDGE bytes (the disk's end holds md 0.90 and 1.0
    superblocks and the backup GPT), the first two and last two blocks of runs (md 1.1 and 1.2
    at a partition's start, 1.0 at its end), the rest evenly over all their bytes. Blocks are
    `block` bytes, shorter only at a run's unaligned end."""
    total = sum(n for _, n in runs)
    if not total:
        return []
    picks: set[tuple[int, int]] = set()

    def pick(run_offset: int, run_length: int, at: int) -> None:
        start = min(at - at % block, max(0, run_length - block))
        picks.add((run_offset + start, min(block, run_length - start)))

    for at in range(0, min(SAMPLE_EDGE, runs[0][1]), block):
        pick(*runs[0], at)
    for at in range(0, min(SAMPLE_EDGE, runs[-1][1]), block):
        pick(*runs[-1], runs[-1][1] - 1 - at)
    quarter = max(1, count // 16)
    for offset, length in runs[::-(-len(runs) // quarter)]:
        for at in (0, block, length - 1 - block, length - 1):
            pick(offset, length, max(0, min(at, length - 1)))
    spread = max(1, count - len(picks))
    i, passed = 0, 0
    for k in range(spread):
        at = total * k // spread
        while at >= passed + runs[i][1]:
            passed += runs[i][1]
            i += 1
        pick(runs[i][0], runs[i][1], at - passed)
    return sorted(picks)


def check_zeroed(fd: int, target: str, runs: list[tuple[int, int]]) -> None:
    """--target-zeroed: read the sample of what would be left as it is; RestoreError if any
    byte is not zero. Nothing has been written yet when this refuses."""
    sample = sample_blocks(runs)
    for offset, length in sample:
        got = os.pread(fd, length, offset)
        if got.count(0) != len(got):
            raise RestoreError(
                f"The target {target} is not zeroed: it holds non-zero bytes at offset {offset} "
                f"({human(offset)}), where the image has no data and --target-zeroed would leave "
                "them. Drop --target-zeroed and start again; the restore then zeroes those "
                "areas itself.")
    log.info("--target-zeroed: %d blocks of %s sampled, all zero", len(sample), target)


def _zero_runs(fd: int, runs: list[tuple[int, int]], did: str, progress: Progress) -> int:
    """Make every run read zeros; returns the bytes written as zeros (or zeroed by offload)."""
    offloaded = zeroing_offloaded(fd)
    step = ZERO_STEP if offloaded else SCAN_STEP
    zeroed = 0
    scan = None if offloaded else chunk_buffer(SCAN_STEP)
    direct = None if offloaded else _DirectTarget(fd)
    try:
        for start, length in runs:
            end = start + length
            for pos in range(start, end, step):
                n = min(step, end - pos)
                if not offloaded:
                    # Read first: zeros already there are not written again (thin stays thin).
                    view = memoryview(scan)[:n]
                    zeros = _SCAN_ZEROS if n == SCAN_STEP else bytes(n)
                    if direct.read(view, pos) == n and scan.find(zeros, 0, n) == 0:
                        progress.advance(did, done=n)
                        continue
                zero_range(fd, pos, n)
                zeroed += n
                progress.advance(did, done=n)
    finally:
        if direct:
            direct.close()
    return zeroed


class _Fetcher:
    """N streams over the data chunks: each checks what the target holds at its next chunk,
    fetches the chunk into its own buffer if that is not it, verifies it, and writes it. The
    buffer is page-aligned, so reads and writes of whole chunks bypass the page cache.

    Under `--compress auto` (the default) the streams ask for zstd bodies or plain ones as
    agent.transfer.link.Compression finds faster, by disk bytes restored per second (fetched,
    decompressed, verified and written): on a slow link zstd carries about three times the disk
    bytes, where decompressing is the slow part (a slow guest) plain ones do. A stream that may
    ask for zstd has a second, scratch buffer.
    """

    def __init__(self, client: Client, settings: Settings, did: str, fd: int, size: int,
                 chunk_size: int, digests: dict[int, str], progress: Progress,
                 result: RestoreResult, verify_existing: bool, sparse: bool):
        self.client, self.job, self.did, self.fd = client, settings.job, did, fd
        self.size, self.chunk_size, self.digests = size, chunk_size, digests
        self.streams = max(1, settings.streams)
        self.progress, self.result = progress, result
        self.verify_existing = verify_existing
        self.sparse = sparse
        self.direct = _DirectTarget(fd)
        self.compression = Compression(settings.compress, self.streams)
        self.lock = threading.Lock()
        self.failure: BaseException | None = None

    def run(self, data: list[protocol.Extent]) -> None:
        # Indices are produced lazily, so a huge image costs no big list.
        todo = (i for e in data for i in range(e.start, e.start + e.count))
        threads = [threading.Thread(target=self._stream, args=(todo,), daemon=True)
                   for _ in range(self.streams)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            self.direct.close()
        if self.failure:
            if isinstance(self.failure, (ServerError, RestoreError, OSError)):
                raise self.failure
            raise RestoreError(f"Restoring {self.did} failed: {self.failure}") from self.failure

    def _stream(self, todo) -> None:
        buffer = chunk_buffer(self.chunk_size)
        packed = chunk_buffer(self.chunk_size) if self.compression.mode != "off" else None
        try:
            while not self.failure:
                with self.lock:
                    index = next(todo, None)
                if index is None:
                    return
                self._one(index, buffer, packed)
        except BaseException as e:  # noqa: BLE001 - handed to run(), in the calling thread
            with self.lock:
                self.failure = self.failure or e

    def _one(self, index: int, buffer: mmap.mmap, packed: mmap.mmap | None) -> None:
        offset, length = protocol.chunk_span(self.size, self.chunk_size, index)
        view = memoryview(buffer)[:length]
        want = self.digests.get(index)
        if want is None:
            raise RestoreError(f"The server's map names chunk {index} of {self.did} as data but "
                               "lists no digest for it; run 'p2v-server verify' on the job.")
        if self.verify_existing:
            have = self.direct.read(view, offset)
            if have == length and protocol.chunk_digest(view) == want:
                with self.lock:
                    self.result.kept_chunks += 1
                self.progress.advance(self.did, done=length)
                return
        body, wire = self._fetch(index, length, want, view,
                                 memoryview(packed)[:length] if packed is not None else None)
        if self.sparse:
            for start in range(0, length, SPARSE_BLOCK):
                end = min(start + SPARSE_BLOCK, length)
                # All zeros (one memcmp): the target reads zeros there already, it stays a hole.
                if end - start < SPARSE_BLOCK or buffer.find(_ZERO_BLOCK, start, end) != start:
                    self.direct.write(body[start:end], offset + start)
        else:
            self.direct.write(body, offset)
        self.compression.sent(wire, length)   # auto's count: the chunk is on the disk
        with self.lock:
            self.result.fetched_chunks += 1
            self.result.fetched_bytes += length
            self.result.received += wire
        self.progress.advance(self.did, done=length, sent=wire)

    def _fetch(self, index: int, length: int, want: str, buffer: memoryview,
               packed: memoryview | None) -> tuple[memoryview, int]:
        """(The chunk, whole and with its sealed digest, in `buffer`; bytes on the wire).

        A body cut short (a cut link, a server that crashed or restarted) never gets here: the
        client retries it for its retry_for (10 minutes by default) like any network error. Only
        a body that arrived whole but is not what was sealed counts as damage; that is fetched
        DAMAGE_ATTEMPTS times (a faulty NIC or memory may flip bits once), then RestoreError.
        """
        for attempt in range(1, DAMAGE_ATTEMPTS + 1):
            zstd = packed is not None and self.compression.ask()
            body, wire = self.client.get_chunk(self.job, self.did, index, buffer,
                                               packed if zstd else None)
            if len(body) == length and protocol.chunk_digest(body) == want:
                return body, wire
            log.warning("chunk %d of %s arrived whole but not as sealed (%d of %d bytes, attempt "
                        "%d); fetching it again", index, self.did, len(body), length, attempt)
        raise RestoreError(
            f"Chunk {index} of {self.did} arrived whole {DAMAGE_ATTEMPTS} times, and never with "
            f"the digest it was sealed with: the server's image of job {self.job} looks damaged "
            f"there. Run 'p2v-server verify {self.job}' on the server; if it finds the damage, "
            "capture the machine again. Nothing was written at that chunk.")


class _DirectTarget:
    """Reads and writes of the target, around the page cache where they are aligned (whole
    chunks, from page-aligned buffers), through it otherwise or where O_DIRECT is refused."""

    def __init__(self, fd: int):
        self.fd = fd
        self.direct_fd: int | None = None
        self.lock = threading.Lock()

    def _direct(self, view: memoryview, offset: int) -> int:
        """The O_DIRECT descriptor if this transfer can use it, else the buffered one."""
        if offset % DIRECT_ALIGN or len(view) % DIRECT_ALIGN:
            return self.fd
        with self.lock:
            if self.direct_fd is None:
                try:
                    self.direct_fd = os.open(f"/proc/self/fd/{self.fd}",
                                             os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
                except OSError:
                    self.direct_fd = -1
            return self.direct_fd if self.direct_fd >= 0 else self.fd

    def _refused(self, fd: int, err: OSError) -> bool:
        """True if O_DIRECT was refused (EINVAL): it is not used again."""
        if fd == self.fd or err.errno != errno.EINVAL:
            return False
        with self.lock:
            if self.direct_fd is not None and self.direct_fd >= 0:
                os.close(self.direct_fd)
            self.direct_fd = -1
        return True

    def read(self, view: memoryview, offset: int) -> int:
        fd = self._direct(view, offset)
        try:
            return _transfer(os.preadv, fd, view, offset)
        except OSError as err:
            if not self._refused(fd, err):
                raise
        return _transfer(os.preadv, self.fd, view, offset)

    def write(self, view: memoryview, offset: int) -> None:
        fd = self._direct(view, offset)
        try:
            _transfer(os.pwritev, fd, view, offset)
            return
        except OSError as err:
            if not self._refused(fd, err):
                raise
        _transfer(os.pwritev, self.fd, view, offset)

    def close(self) -> None:
        if self.direct_fd is not None and self.direct_fd >= 0:
            os.close(self.direct_fd)
        self.direct_fd = None


def _transfer(call, fd: int, view: memoryview, offset: int) -> int:
    """preadv or pwritev until the whole view is done (or, reading, the end is reached)."""
    done = 0
    while done < len(view):
        n = call(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done
