"""One chunk's body: decompressed within bounds and checked against its digest."""

from __future__ import annotations

import zstandard

from xenp2v.protocol import ZSTD, ErrorCode, ProtocolError, chunk_digest


def body_limit(length: int, encoding: str | None) -> int:
    """The largest body accepted for a chunk of ``length`` bytes."""
    if encoding == ZSTD:
        # zstd's worst case on incompressible data stays well under this.
        return length + length // 64 + 65536
    return length


def decode(body: bytes | bytearray, encoding: str | None, length: int) -> bytes | bytearray:
    """The chunk's uncompressed bytes, exactly ``length`` of them, or ProtocolError."""
    if encoding in (None, "", "identity"):
        data = body
    elif encoding == ZSTD:
        data = _unzstd(body, length)
    else:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"The Content-Encoding {encoding!r} is not supported: send 'zstd' or none.")
    if len(data) != length:
        raise ProtocolError(ErrorCode.BAD_LENGTH,
                            f"The chunk holds {len(data)} bytes once decoded; this chunk has {length}.")
    return data


def _unzstd(body: bytes | bytearray, length: int) -> bytearray:
    # A stream reader into a buffer of the chunk's size: a frame that claims or expands to more
    # can never make the server allocate more than one chunk.
    out = bytearray(length + 1)
    view = memoryview(out)
    filled = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as reader:
            while filled < len(out):
                n = reader.readinto(view[filled:])
                if not n:
                    break
                filled += n
    except zstandard.ZstdError as err:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"The chunk is not valid zstd data: {err}.") from None
    finally:
        view.release()
    if filled > length:
        raise ProtocolError(ErrorCode.BAD_LENGTH,
                            f"The chunk decompresses to more than its {length} bytes.")
    del out[filled:]
    return out


def check(data: bytes | bytearray, digest: str) -> None:
    actual = chunk_digest(data)
    if actual != digest:
        raise ProtocolError(ErrorCode.BAD_DIGEST,
                            f"The chunk's bytes hash to {actual}, not to the {digest} sent with it; "
                            "it was not stored. Read it again and resend it.")
