"""A sealed job's exports as downloads, in every format `p2v-server export` writes.

raw goes out as it is read: data chunks from the image, everything else as zeros, in order (the
same bytes as the CLI's sparse file). VHD, qcow2, VMDK and XVA are made by the CLI's own code into
a private temporary file under the data directory (qemu-img and the XVA writer need a file they
can seek in), streamed, then removed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from aiohttp import web

from server.export import FORMATS, ExportError, export_job, sealed_disk_ids
from xenp2v.protocol import ChunkKind, ErrorCode, ProtocolError

PIECE = 4 * 1024 * 1024
_ZEROS = bytes(PIECE)
SUFFIX = {"raw": "img", "vhd": "vhd", "qcow2": "qcow2", "vmdk": "vmdk", "xva": "xva"}


def file_name(job_id: str, disk_id: str | None, fmt: str) -> str:
    return f"{job_id}{'-' + disk_id if disk_id else ''}.{SUFFIX[fmt]}"


def raw_pieces(image):
    """(kind, offset, length) pieces of at most PIECE bytes covering the image in order."""
    for extent in image.extents:
        offset = extent.start * image.chunk_size
        end = min((extent.start + extent.count) * image.chunk_size, image.size)
        while offset < end:
            length = min(PIECE, end - offset)
            yield extent.kind, offset, length
            offset += length


def _attachment(name: str, length: int | None) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store"})
    if length is not None:
        response.content_length = length
    return response


async def send_export(request: web.Request, store, job_id: str, fmt: str, disk_id: str | None,
                      pool) -> web.StreamResponse:
    """Streams one export; ProtocolError (409) when the job cannot be exported as asked."""
    loop = asyncio.get_running_loop()
    if fmt not in FORMATS:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"There is no export format {fmt!r}: choose one of "
                                                 f"{', '.join(FORMATS)}.")
    job = await loop.run_in_executor(pool, store.get_job, job_id)
    try:
        ids = sealed_disk_ids(job, disk_id)
    except ExportError as err:
        raise ProtocolError(ErrorCode.CONFLICT, str(err)) from None
    if fmt != "xva" and len(ids) != 1:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"Job {job_id} has several disks: choose one "
                                                   f"({', '.join(ids)}) for a {fmt} export.")
    if request.method == "HEAD":   # what the download would be, without making it
        name = file_name(job_id, disk_id if fmt == "xva" else ids[0], fmt)
        size = next((d["size"] for d in job["disks"] if d["id"] == ids[0]), None) \
            if fmt == "raw" else None
        response = _attachment(name, size)
        await response.prepare(request)
        return response
    if fmt == "raw":
        return await _send_raw(request, store, job_id, ids[0], pool)
    return await _send_made(request, store, job_id, fmt, disk_id if fmt == "xva" else ids[0], pool)


async def _send_raw(request, store, job_id: str, disk_id: str, pool) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    image = await loop.run_in_executor(pool, store.sealed_image, job_id, disk_id)
    response = _attachment(file_name(job_id, disk_id, "raw"), image.size)
    await response.prepare(request)
    with open(image.path, "rb") as source:
        for kind, offset, length in raw_pieces(image):
            if kind is ChunkKind.DATA:
                data = await loop.run_in_executor(pool, _read_at, source, offset, length)
            else:
                data = memoryview(_ZEROS)[:length]
            await response.write(data)
    await response.write_eof()
    return response


def _read_at(source, offset: int, length: int) -> bytes:
    source.seek(offset)
    data = source.read(length)
    return data.ljust(length, b"\0")   # an image is never short, but a short read is zeros


async def _send_made(request, store, job_id: str, fmt: str, disk_id: str | None,
                     pool) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    work = Path(tempfile.mkdtemp(prefix="export-", dir=store.data_dir))
    try:
        out = work / file_name(job_id, disk_id, fmt)
        try:
            (written,) = await loop.run_in_executor(pool, export_job, store, job_id, fmt, out, disk_id)
        except ExportError as err:
            raise ProtocolError(ErrorCode.CONFLICT, str(err)) from None
        response = _attachment(out.name, written.stat().st_size)
        await response.prepare(request)
        with open(written, "rb") as source:
            while data := await loop.run_in_executor(pool, source.read, PIECE):
                await response.write(data)
        await response.write_eof()
        return response
    finally:
        shutil.rmtree(work, ignore_errors=True)
