"""Reading a source disk chunk by chunk: only the plan's used bytes, the rest zero-filled.

Blocks a filesystem does not use are never read, so deleted data is never sent. A read error is
retried in smaller reads; what stays unreadable is zero-filled and reported as a bad range.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from dataclasses import dataclass, field

from agent.disk.plan import Range, normalize

log = logging.getLogger(__name__)

# Retry sizes after a failed read: the last is the smallest unit buffered reads can fail in.
RETRY_SIZES = (256 * 1024, 4096)
DIRECT_ALIGN = 4096
# With more used pieces than this in one chunk, one read of their span is cheaper than many.
MAX_PIECES = 8


@dataclass
class Chunk:
    index: int
    offset: int
    data: bytearray
    zero: bool
    read: int       # bytes read from the disk; the rest of the chunk was zero-filled


@dataclass
class SourceDisk:
    """An open source disk; `bad` collects unreadable ranges (byte offset, length)."""

    path: str
    fd: int = -1
    direct_fd: int | None = None
    bad: list[Range] = field(default_factory=list)

    def __enter__(self) -> "SourceDisk":
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
        if self.direct_fd is not None and self.direct_fd >= 0:
            os.close(self.direct_fd)

    def read_chunk(self, index: int, offset: int, length: int, parts: list[Range],
                   buffer: mmap.mmap | None = None) -> Chunk:
        """The chunk at `offset`: the `parts` (disk byte ranges) read, everything else zero.

        With a `buffer` from chunk_buffer() the chunk is read into it (its earlier content is
        overwritten) and bypasses the page cache where it is aligned; its data is then a view of
        the buffer, valid until the next read into it.
        """
        if buffer is None:
            buffer = bytearray(length)
            data, fresh = buffer, True
        else:
            data, fresh = memoryview(buffer)[:length], False
        view = memoryview(buffer)
        zeros = memoryview(_zeros(length))
        pieces = [(parts[0][0], parts[-1][1])] if len(parts) > MAX_PIECES else parts
        pos = offset
        for s, e in pieces:
            if not fresh and s > pos:
                view[pos - offset:s - offset] = zeros[:s - pos]
            self._read(view, offset, (s, e), direct=not fresh)
            pos = e
        if not fresh and pos < offset + length:
            view[pos - offset:length] = zeros[:offset + length - pos]
        if len(parts) > MAX_PIECES:  # zero what lies between the used pieces
            pos = parts[0][0]
            for s, e in parts:
                view[pos - offset:s - offset] = zeros[:s - pos]
                pos = e
        view.release()
        zeros.release()
        zero = buffer.find(_zeros(length), 0, length) == 0  # one memcmp, also on an mmap
        return Chunk(index, offset, data, zero, sum(e - s for s, e in parts))

    def _read(self, view: memoryview, base: int, part: Range, direct: bool = False) -> None:
        s, e = part
        try:
            if direct and self._direct():
                # The aligned middle bypasses the page cache (no copy, no cache to fill); the
                # unaligned ends, if any, go through it.
                a = -(-s // DIRECT_ALIGN) * DIRECT_ALIGN
                b = e // DIRECT_ALIGN * DIRECT_ALIGN
                if a < b:
                    if s < a:
                        _pread_exact(self.fd, view[s - base:a - base], s)
                    try:
                        _pread_exact(self.direct_fd, view[a - base:b - base], a)
                    except OSError as err:
                        if err.errno != errno.EINVAL:
                            raise
                        os.close(self.direct_fd)  # the device wants another alignment:
                        self.direct_fd = -1         # no direct I/O on it
                        _pread_exact(self.fd, view[a - base:b - base], a)
                    if b < e:
                        _pread_exact(self.fd, view[b - base:e - base], b)
                    return
            _pread_exact(self.fd, view[s - base:e - base], s)
        except OSError as err:
            log.warning("Read error at byte %d of %s (%s): retrying in smaller reads",
                        s, self.path, err.strerror)
            self._read_carefully(view, base, s, e, 0)

    def _direct(self) -> bool:
        """Whether the O_DIRECT descriptor is open (opening it on first use)."""
        if self.direct_fd is None:
            try:
                self.direct_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError:
                self.direct_fd = -1
        return self.direct_fd >= 0

    def _read_carefully(self, view: memoryview, base: int, s: int, e: int, level: int) -> None:
        step = RETRY_SIZES[level]
        pos = s
        while pos < e:
            end = min(e, (pos // step + 1) * step)
            try:
                self._read_direct(view[pos - base:end - base], pos)
            except OSError:
                if level + 1 < len(RETRY_SIZES):
                    self._read_carefully(view, base, pos, end, level + 1)
                else:
                    view[pos - base:end - base] = bytes(end - pos)
                    self._add_bad(pos, end)
            pos = end

    def _read_direct(self, view: memoryview, offset: int) -> None:
        """Read bypassing the page cache: its readahead would fail good sectors with bad ones."""
        if not self._direct():
            _pread_exact(self.fd, view, offset)
            return
        start = offset // DIRECT_ALIGN * DIRECT_ALIGN
        end = -(-(offset + len(view)) // DIRECT_ALIGN) * DIRECT_ALIGN
        buf = mmap.mmap(-1, end - start)  # page-aligned, as O_DIRECT wants
        window = memoryview(buf)
        try:
            # The window may run past the end of a disk whose size is not a multiple of it:
            # only the bytes asked for must arrive.
            _pread_exact(self.direct_fd, window, start, need=offset + len(view) - start)
            view[:] = window[offset - start:offset - start + len(view)]
        finally:
            window.release()
            buf.close()

    def _add_bad(self, start: int, end: int) -> None:
        self.bad = normalize(self.bad + [(start, end)])

    def bad_ranges(self) -> list[list[int]]:
        """Bad ranges as the complete call wants them: [byte offset, length]."""
        return [[s, e - s] for s, e in self.bad]


def only_parts(whole: Chunk, parts: list[Range]) -> Chunk:
    """The chunk `whole` (read whole into a chunk_buffer) as read_chunk reads `parts` of it:
    everything else zeroed in place. No second read of the disk, no second buffer."""
    length = len(whole.data)
    view = whole.data
    zeros = memoryview(_zeros(length))
    pos = whole.offset
    for s, e in parts:
        view[pos - whole.offset:s - whole.offset] = zeros[:s - pos]
        pos = e
    view[pos - whole.offset:length] = zeros[:whole.offset + length - pos]
    zeros.release()
    zero = view.obj.find(_zeros(length), 0, length) == 0
    return Chunk(whole.index, whole.offset, view, zero, sum(e - s for s, e in parts))


def chunk_buffer(size: int) -> mmap.mmap:
    """A reusable buffer for read_chunk: page-aligned, so reads into it can bypass the page cache."""
    return mmap.mmap(-1, size)


def _pread_exact(fd: int, view: memoryview, offset: int, need: int | None = None) -> None:
    """Fill `view` from `offset`; with `need`, stop at the device's end once `need` bytes came.

    OSError (EIO) when the device ends before them.
    """
    need = len(view) if need is None else need
    done = 0
    while done < need:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, "unexpected end of device")
        done += n


_ZEROS: dict[int, bytes] = {}


def _zeros(length: int) -> bytes:
    """A cached all-zero bytes object, compared against with one memcmp."""
    z = _ZEROS.get(length)
    if z is None:
        if len(_ZEROS) > 4:
            _ZEROS.clear()
        z = _ZEROS[length] = bytes(length)
    return z
