"""One chunk's body: decompressed within bounds and checked against its digest, in reused buffers."""

from __future__ import annotations

import hashlib
import mmap
import threading

import zstandard

from xenp2v.protocol import PRECOPY_DIGEST, ZSTD, ErrorCode, ProtocolError, chunk_digest


def body_limit(length: int, encoding: str | None) -> int:
    """The largest body accepted for a chunk of ``length`` bytes."""
    if encoding == ZSTD:
        # zstd's worst case on incompressible data stays well under this.
        return length + length // 64 + 65536
    return length


PAGE = mmap.PAGESIZE


class Buffers:
    """Page-aligned buffers for chunk bodies, reused from one request to the next.

    A chunk is received straight into one (no list of pieces to join), and page alignment lets
    the store write it around the page cache. At most ``keep`` free buffers are kept.
    """

    def __init__(self, keep: int):
        self.keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self, length: int) -> mmap.mmap:
        size = -(-max(length, 1) // PAGE) * PAGE
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) == size:
                    return self._free.pop(i)
        return mmap.mmap(-1, size)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)
                return
        try:
            buf.close()
        except BufferError:  # still viewed somewhere: the last view frees it
            pass


def decode(body: bytes | bytearray, encoding: str | None, length: int,
           out: mmap.mmap | bytearray | None = None) -> memoryview | bytes | bytearray:
    """The chunk's uncompressed bytes, exactly ``length`` of them, or ProtocolError.

    A zstd body is decompressed into ``out`` (a buffer of at least ``length`` bytes) when given.
    """
    if encoding in (None, "", "identity"):
        data = body
    elif encoding == ZSTD:
        data = _unzstd(body, length, out if out is not None else bytearray(length))
    else:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"The Content-Encoding {encoding!r} is not supported: send 'zstd' or none.")
    if len(data) != length:
        raise ProtocolError(ErrorCode.BAD_LENGTH,
                            f"The chunk holds {len(data)} bytes once decoded; this chunk has {length}.")
    return data


def _unzstd(body: bytes | bytearray, length: int, out) -> memoryview:
    # A stream reader into a buffer of the chunk's size: a frame that claims or expands to more
    # can never make the server allocate more than one chunk.
    view = memoryview(out)[:length]
    filled = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as reader:
            while filled < length:
                n = reader.readinto(view[filled:])
                if not n:
                    break
                filled += n
            more = reader.read(1) if filled == length else b""
    except zstandard.ZstdError as err:
        view.release()
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"The chunk is not valid zstd data: {err}.") from None
    if more:
        view.release()
        raise ProtocolError(ErrorCode.BAD_LENGTH,
                            f"The chunk decompresses to more than its {length} bytes.")
    data = view[:filled]
    view.release()
    return data


def check(data: bytes | bytearray, digest: str) -> None:
    """ProtocolError 422 unless ``data`` hashes to ``digest`` (``blake3:`` or a pre-copy
    sender's ``sha256:``)."""
    if digest.startswith(PRECOPY_DIGEST + ":"):
        actual = f"{PRECOPY_DIGEST}:" + hashlib.sha256(data).hexdigest()
    else:
        actual = chunk_digest(data)
    if actual != digest:
        raise ProtocolError(ErrorCode.BAD_DIGEST,
                            f"The chunk's bytes hash to {actual}, not to the {digest} sent with it; "
                            "it was not stored. Read it again and resend it.")
