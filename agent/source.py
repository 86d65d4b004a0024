"""Reading a source disk chunk by chunk: only the plan's used bytes, the rest zero-filled.

Blocks a filesystem does not use are never read, so deleted data is never sent. A read error is
retried in smaller reads; what stays unreadable is zero-filled and reported as a bad range.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass, field

from agent.plan import Range, normalize

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

    def read_chunk(self, index: int, offset: int, length: int, parts: list[Range]) -> Chunk:
        """The chunk at `offset`: the `parts` (disk byte ranges) read, everything else zero."""
        buf = bytearray(length)
        view = memoryview(buf)
        if len(parts) > MAX_PIECES:
            span = (parts[0][0], parts[-1][1])
            self._read(view, offset, span)
            pos = span[0]
            for s, e in parts:  # zero what lies between the used pieces
                view[pos - offset:s - offset] = bytes(s - pos)
                pos = e
        else:
            for part in parts:
                self._read(view, offset, part)
        return Chunk(index, offset, buf, buf == _zeros(length), sum(e - s for s, e in parts))

    def _read(self, view: memoryview, base: int, part: Range) -> None:
        s, e = part
        try:
            _pread_exact(self.fd, view[s - base:e - base], s)
        except OSError as err:
            log.warning("Read error at byte %d of %s (%s): retrying in smaller reads",
                        s, self.path, err.strerror)
            self._read_carefully(view, base, s, e, 0)

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
        if self.direct_fd is None:
            try:
                self.direct_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError:
                self.direct_fd = -1
        if self.direct_fd < 0:
            _pread_exact(self.fd, view, offset)
            return
        start = offset // DIRECT_ALIGN * DIRECT_ALIGN
        end = -(-(offset + len(view)) // DIRECT_ALIGN) * DIRECT_ALIGN
        buf = mmap.mmap(-1, end - start)  # page-aligned, as O_DIRECT wants
        window = memoryview(buf)
        try:
            _pread_exact(self.direct_fd, window, start)
            view[:] = window[offset - start:offset - start + len(view)]
        finally:
            window.release()
            buf.close()

    def _add_bad(self, start: int, end: int) -> None:
        self.bad = normalize(self.bad + [(start, end)])

    def bad_ranges(self) -> list[list[int]]:
        """Bad ranges as the complete call wants them: [byte offset, length]."""
        return [[s, e - s] for s, e in self.bad]


def _pread_exact(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(5, "unexpected end of device")
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
