"""Restore: put a sealed image from the server onto a local disk, verified and resumable.

The server's map says which chunks are data, zero or free. Data chunks are fetched over N
connections, checked against the digests the server sealed, and written at their offsets; zero
extents are zeroed (BLKZEROOUT on a block device, hole punching in a file, writes otherwise)
unless the target is known to read zeros; free extents are left alone.

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

from agent.client import Client, ServerError
from agent.progress import Progress, human
from agent.settings import Settings
from agent.source import DIRECT_ALIGN, chunk_buffer
from xenp2v import protocol

log = logging.getLogger(__name__)

_BLKZEROOUT = 0x127F            # _IO(0x12, 127)
_BLKRRPART = 0x125F             # _IO(0x12, 95)
_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
ZERO_STEP = 64 * 1024 * 1024    # zero in pieces, so progress moves and a cut loses little
SPARSE_BLOCK = 64 * 1024        # on a target that reads zeros, all-zero blocks this big are skipped
_ZERO_BLOCK = bytes(SPARSE_BLOCK)


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
    zeroed_bytes: int = 0
    received: int = 0           # bytes that crossed the network


# --- the target ----------------------------------------------------------------------------------

SWAP = "(swap)"


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
        if number in used:
            raise RestoreError(f"{target} is in use: /dev/{dev.name} is mounted on {used[number]}. "
                               "Unmount it (or pick another target) and start again.")
        holders = list((dev / "holders").iterdir()) if (dev / "holders").exists() else []
        if holders:
            raise RestoreError(f"{target} is in use: /dev/{dev.name} is held by "
                               f"{', '.join(h.name for h in holders)} (LVM, RAID or device-mapper). "
                               "Deactivate it (vgchange -an, mdadm --stop, dmsetup remove) and "
                               "start again.")


def open_target(target: str, size: int) -> tuple[int, bool]:
    """(fd, reads_zeros) of the target, checked to be large enough and not in use."""
    path = Path(target)
    if not path.exists():
        if not path.parent.is_dir():
            raise RestoreError(f"The target {target} does not exist; give a disk such as /dev/xvda.")
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, size)
        return fd, True  # a new sparse file reads zeros everywhere
    check_target_free(target)
    st = os.stat(target)
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if stat.S_ISBLK(st.st_mode) else 0)
    try:
        fd = os.open(target, flags)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise RestoreError(f"{target} is in use by the system (mounted or held); free it "
                               "and start again.") from None
        raise
    have = os.lseek(fd, 0, os.SEEK_END)
    if have < size:
        os.close(fd)
        raise RestoreError(f"The target {target} holds {human(have)} ({have} bytes) but the image "
                           f"is {human(size)} ({size} bytes); give a disk at least that large.")
    return fd, stat.S_ISREG(st.st_mode) and have == size and st.st_blocks == 0


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) read zeros, as cheaply as the target allows."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISBLK(mode):
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
        raise RestoreError(f"Job {job} has {len(ids)} disks ({', '.join(ids)}): choose one "
                           "with --disk.")
    return ids[0]


def run(settings: Settings, target: str, disk: str | None = None,
        progress: Progress | None = None, *, client: Client | None = None,
        target_zeroed: bool = False, retry_for: float = 600.0) -> RestoreResult:
    """Restore disk `disk` of job `settings.job` onto `target`; raises RestoreError."""
    progress = progress or Progress()
    if not settings.job:
        raise RestoreError("No job given: pass --job ID (p2v.job=); 'p2v-server jobs' lists them.")
    try:
        client = client or Client(settings.server, settings.token, settings.fingerprint,
                                  retry_for=retry_for)
        did = choose_disk(client, settings.job, disk)
        image = client.image_map(settings.job, did)
        digests = client.held_chunks(settings.job, did)
        size, chunk_size = int(image["size"]), int(image["chunk_size"])
        extents = [protocol.Extent.from_json(e) for e in image["extents"]]
        fd, reads_zeros = open_target(target, size)
        try:
            result = RestoreResult(settings.job, did, target, size)
            data = [e for e in extents if e.kind is protocol.ChunkKind.DATA]
            zero = [e for e in extents if e.kind is protocol.ChunkKind.ZERO]
            data_bytes = sum(_extent_bytes(e, size, chunk_size) for e in data)
            zero_bytes = 0 if reads_zeros or target_zeroed else sum(
                _extent_bytes(e, size, chunk_size) for e in zero)
            progress.start(did, data_bytes + zero_bytes, "restore")
            if zero_bytes:
                for e in zero:
                    _zero_extent(fd, e, size, chunk_size, did, progress)
                result.zeroed_bytes = zero_bytes
            _Fetcher(client, settings, did, fd, size, chunk_size, digests, progress, result,
                     verify_existing=not reads_zeros,
                     sparse=reads_zeros or target_zeroed).run(data)
            os.fsync(fd)
            reread_partitions(fd)
        finally:
            os.close(fd)
    except ServerError as e:
        raise RestoreError(str(e)) from None
    except OSError as e:
        raise RestoreError(f"Cannot write {e.filename or target}: {e.strerror}.") from None
    progress.phase(did, "done", f"restored onto {target}: {result.fetched_chunks} chunks fetched, "
                                f"{result.kept_chunks} already in place")
    return result


def _extent_bytes(e: protocol.Extent, size: int, chunk_size: int) -> int:
    return min(size, (e.start + e.count) * chunk_size) - e.start * chunk_size


def _zero_extent(fd: int, e: protocol.Extent, size: int, chunk_size: int, did: str,
                 progress: Progress) -> None:
    start = e.start * chunk_size
    end = min(size, (e.start + e.count) * chunk_size)
    for pos in range(start, end, ZERO_STEP):
        n = min(ZERO_STEP, end - pos)
        zero_range(fd, pos, n)
        progress.advance(did, done=n)


class _Fetcher:
    """N streams over the data chunks: each checks what the target holds at its next chunk,
    fetches the chunk into its own buffer if that is not it, verifies it, and writes it. The
    buffer is page-aligned, so reads and writes of whole chunks bypass the page cache."""

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
        try:
            while not self.failure:
                with self.lock:
                    index = next(todo, None)
                if index is None:
                    return
                self._one(index, buffer)
        except BaseException as e:  # noqa: BLE001 - handed to run(), in the calling thread
            with self.lock:
                self.failure = self.failure or e

    def _one(self, index: int, buffer: mmap.mmap) -> None:
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
        body = self._fetch(index, length, want, view)
        if self.sparse:
            for start in range(0, length, SPARSE_BLOCK):
                end = min(start + SPARSE_BLOCK, length)
                # All zeros (one memcmp): the target reads zeros there already, it stays a hole.
                if end - start < SPARSE_BLOCK or buffer.find(_ZERO_BLOCK, start, end) != start:
                    self.direct.write(body[start:end], offset + start)
        else:
            self.direct.write(body, offset)
        with self.lock:
            self.result.fetched_chunks += 1
            self.result.received += length
        self.progress.advance(self.did, done=length, sent=length)

    def _fetch(self, index: int, length: int, want: str, buffer: memoryview) -> memoryview:
        for attempt in (1, 2, 3):
            body = self.client.get_chunk(self.job, self.did, index, buffer)
            if len(body) == length and protocol.chunk_digest(body) == want:
                return body
            log.warning("chunk %d of %s arrived damaged (attempt %d); fetching it again",
                        index, self.did, attempt)
        raise RestoreError(f"Chunk {index} of {self.did} keeps arriving with the wrong content; "
                           "check the network, or run 'p2v-server verify' on the job.")


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
