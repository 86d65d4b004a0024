"""A sealed image into a VDI through XAPI's ``/import_raw_vdi`` handler.

``format=raw&chunked``: the body is vhd-tool's framing, not HTTP chunking (which XAPI refuses):
per piece a 12-byte little-endian header ``{offset: u64, length: u32}`` then the bytes, and an
all-zero header at the end. Data extents are sent. On an SR whose new VDIs may hold old bytes (a
raw LUN), every other byte of the image is sent as zeros too: zero and free extents, and anything
the map leaves out, so no old byte of the LUN is left (a stale RAID or filesystem signature, a
previous owner's data in the guest's free space). On an SR whose new VDIs read as zeros, nothing
but data is sent. The import runs as a task we create and pass as ``task_id``; its end status and
error text are what tell whether the VDI holds the image.
"""

from __future__ import annotations

import http.client
import struct
import time
from typing import Iterator
from urllib.parse import urlencode, urlsplit

from xenp2v.protocol import ChunkKind

HEADER = struct.Struct("<QI")
END = HEADER.pack(0, 0)
PIECE = 4 * 1024 * 1024
# Storage managers whose new VDIs read as zeros: file-backed VHD (ext, nfs, smb) and VHD on LVM.
# XCP-ng's own keep VHDs too (rules.VHD_SR_TYPES): zeros there would allocate a thin VHD's blocks.
ZEROED_SR_TYPES = frozenset({"ext", "nfs", "smb", "file", "lvm", "lvmoiscsi", "lvmohba", "lvmofcoe", "xfs",
                             "zfs", "glusterfs", "cephfs", "moosefs", "largeblock", "linstor"})


class VdiImportError(Exception):
    """The import failed; the message says why and what to do."""


def zeroed(sr_type: str) -> bool:
    return sr_type in ZEROED_SR_TYPES


def pieces(image, send_zero: bool) -> Iterator[tuple[int, int, ChunkKind]]:
    """(offset, length, kind) of every piece to send, at most PIECE bytes each, in disk order.

    Data extents always; with `send_zero`, every other byte of the image too, as ZERO pieces.
    """
    pos = 0
    for extent in sorted(image.extents, key=lambda e: e.start):
        if extent.kind is not ChunkKind.DATA:
            continue
        offset = extent.start * image.chunk_size
        end = min((extent.start + extent.count) * image.chunk_size, image.size)
        if send_zero and offset > pos:
            yield from _split(pos, offset, ChunkKind.ZERO)
        yield from _split(offset, end, ChunkKind.DATA)
        pos = max(pos, end)
    if send_zero and pos < image.size:
        yield from _split(pos, image.size, ChunkKind.ZERO)


def _split(offset: int, end: int, kind: ChunkKind) -> Iterator[tuple[int, int, ChunkKind]]:
    while offset < end:
        length = min(PIECE, end - offset)
        yield offset, length, kind
        offset += length


def body_length(image, send_zero: bool) -> int:
    return sum(HEADER.size + length for _, length, _ in pieces(image, send_zero)) + HEADER.size


def framed(image, send_zero: bool) -> Iterator[bytes]:
    """The request body, piece by piece."""
    zeros = bytes(PIECE)
    with open(image.path, "rb") as source:
        for offset, length, kind in pieces(image, send_zero):
            yield HEADER.pack(offset, length)
            if kind is ChunkKind.ZERO:
                yield zeros[:length]
            else:
                source.seek(offset)
                data = source.read(length)
                if len(data) != length:
                    raise VdiImportError(f"The image {image.path} is shorter than its map says; "
                                       "run p2v-server verify on the job.")
                yield data
    yield END


def upload(url: str, session: str, vdi: str, task: str, image, send_zero: bool,
           context=None, timeout: float = 300) -> int:
    """PUT the image; returns the bytes sent. The task, not this answer, says whether it worked."""
    parts = urlsplit(url)
    query = urlencode({"session_id": session, "vdi": vdi, "format": "raw", "chunked": "true",
                       "task_id": task})
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                           context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    sent = 0
    try:
        conn.putrequest("PUT", f"/import_raw_vdi?{query}", skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(body_length(image, send_zero)))
        conn.putheader("Connection", "close")
        conn.endheaders()
        try:
            for block in framed(image, send_zero):
                conn.send(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass  # XAPI closed early: the task says why
        response = conn.getresponse()
        response.read()
        if response.status in (301, 302, 307):
            raise VdiImportError(
                f"The pool redirected the disk import to {response.getheader('Location')}: "
                "the SR is local to another host; connect to that host or use a shared SR.")
        if response.status in (401, 403):
            raise VdiImportError("The pool refused the disk import (HTTP "
                               f"{response.status}): the session has no right to import.")
        if response.status != 200:
            raise VdiImportError(f"The pool answered the disk import with HTTP {response.status} "
                               f"{response.reason}.")
    except (OSError, http.client.HTTPException) as err:
        if isinstance(err, VdiImportError):
            raise
        raise VdiImportError(f"The disk import connection to {parts.hostname} failed ({err}).") \
            from None
    finally:
        conn.close()
    return sent


def wait_task(x, task: str, timeout: float = 3600, poll: float = 0.2) -> None:
    """Wait for the task's end; a failed or cancelled task raises its error text."""
    deadline = time.monotonic() + timeout
    while True:
        status = x.task.get_status(task)
        if status == "success":
            return
        if status in ("failure", "cancelled", "cancelling"):
            info = [str(i) for i in x.task.get_error_info(task)]
            raise VdiImportError(f"XAPI's import task ended in {status}: "
                               f"{' '.join(info) or 'no error text'}.")
        if time.monotonic() > deadline:
            raise VdiImportError(f"XAPI's import task is still {status} after {timeout:.0f} s.")
        time.sleep(poll)


def import_image(x, url: str, session: str, vdi: str, image, send_zero: bool, context=None,
                 label: str = "xenp2v import") -> dict:
    """Import one image into one VDI, tracking XAPI's task to its end; returns figures."""
    task = x.task.create(label, f"{image.job}/{image.disk}")
    started = time.monotonic()
    try:
        try:
            sent = upload(url, session, vdi, task, image, send_zero, context=context)
        except VdiImportError as err:
            # A connection cut by XAPI: its task holds the reason, which says more than ours.
            try:
                wait_task(x, task, timeout=10)
            except VdiImportError as task_err:
                if x.task.get_status(task) != "pending":
                    raise task_err from None
            raise err
        wait_task(x, task)
    finally:
        try:
            x.task.destroy(task)
        except Exception:  # noqa: BLE001 - a task left behind is harmless; the import's fate is not
            pass
    seconds = time.monotonic() - started
    zeros = sum(length for _, length, kind in pieces(image, send_zero) if kind is ChunkKind.ZERO)
    return {"bytes_sent": sent, "seconds": round(seconds, 3), "zeros_sent": send_zero,
            "zero_bytes_sent": zeros}
