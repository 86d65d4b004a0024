"""The HTTP API (wire protocol v1) over a Store: aiohttp handlers and their guards.

Handlers read bodies on the event loop and hand decoding, hashing, writing and SQLite to a thread
pool, so receiving and storing run on different cores. Every error is JSON from ``protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import html
import json
import logging
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import aiohttp
import aiohttp.http_exceptions
import zstandard
from aiohttp import web

from server import chunk
from server.inventory import parse_inventory
from server.store import Store, storage_error
from xenp2v import __version__
from xenp2v.protocol import (
    API, AUTH_HEADER, DIGEST_HEADER, ENCODING_HEADER, MAX_CHUNK_SIZE, MAX_EVENTS_BODY,
    MAX_JSON_BODY, MAX_LOG_BODY,
    FINISHED_JOB_STATES, PRECOPY_DIGEST, VERSION, ZSTD, ErrorCode, JobState, ProtocolError,
    EVENT_FIELDS, REPAIR_FIELDS, check_id, check_shape, chunk_digest, health_path, parse_digest,
)

log = logging.getLogger("xenp2v.server")

# A client that stops sending mid-body is dropped after this long, so it holds nothing for ever.
BODY_IDLE_TIMEOUT = 120.0
# ... and one that trickles: a body must arrive within BODY_GRACE s plus its length at
# MIN_BODY_RATE (a 4 MiB chunk in 4 min 31 s; a byte every 5 s never makes it).
BODY_GRACE = 15.0
MIN_BODY_RATE = 16 * 1024  # bytes per second
# Chunk bodies in memory at once (each at most one chunk, twice when compressed).
MAX_CHUNKS_IN_FLIGHT = 16
# Of them, what one client address may hold: slow or hostile clients leave the rest to others.
MAX_CHUNKS_PER_CLIENT = 8
WRITE_PIECE = 256 * 1024  # a chunk going out is handed to the socket this much at a time
THREADS = 24

# How the app must be run (guard.Runner(app, **RUNNER_OPTIONS)): chunk bodies reach the handler
# still compressed, so decompression stays bounded and off the event loop; no line per chunk.
RUNNER_OPTIONS = {"auto_decompress": False, "access_log": None, "read_bufsize": 1 << 20}

_INDEX = re.compile(r"[0-9]{1,12}")

STORE = web.AppKey("store", Store)
TOKEN = web.AppKey("token", str)
POOL = web.AppKey("pool", ThreadPoolExecutor)
HOOK_POOL = web.AppKey("hook_pool", ThreadPoolExecutor)
HOOKS = web.AppKey("hooks", dict)
SLOTS = web.AppKey("slots", "Slots")
BUFFERS = web.AppKey("buffers", chunk.Buffers)
JOB_TOKENS = web.AppKey("job_tokens", object)
SCOPE = web.RequestKey("scope", object)  # None for the admin token, else a job token's job id
BODY_READ = web.RequestKey("body_read", int)  # bytes of a chunk body a handler read (metrics)

_STATUS_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
                 413: ErrorCode.TOO_LARGE, 401: ErrorCode.UNAUTHORIZED}


def error_response(code: ErrorCode, detail: str) -> web.Response:
    err = ProtocolError(code, detail)
    return web.json_response(err.body(), status=err.status)


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ProtocolError as err:
        if err.code is ErrorCode.INTERNAL:
            log.error("%s %s: %s", request.method, request.path, err.detail)
        return error_response(err.code, err.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if _for_a_browser(request):
            return browser_error(exc.status, _BROWSER_SENTENCES.get(
                exc.status, f"{exc.reason}: {request.method} {request.path}."))
        code = _STATUS_CODES.get(exc.status, ErrorCode.BAD_REQUEST)
        return error_response(code, f"{exc.reason}: {request.method} {request.path}.")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if _client_gone(request, exc):
            # Not a server failure: a cut link, an agent killed or restarted. One line; the
            # answer is for the record (there is no one left to read it).
            log.info("%s %s: the client went away (%s)", request.method, request.path,
                     type(exc).__name__)
            return error_response(ErrorCode.BAD_REQUEST,
                                  "The connection was cut before the request was done.")
        full = _storage_full(request, exc)
        if full is not None:
            return error_response(full.code, full.detail)
        log.exception("%s %s failed", request.method, request.path)
        if _for_a_browser(request):
            return browser_error(500, "The server failed on this page; its log has the details.")
        return error_response(ErrorCode.INTERNAL,
                              "The server failed on this request; its log has the details.")


_BROWSER_SENTENCES = {
    404: "There is no such page on this server: go back to the jobs list.",
    405: "This page cannot be used that way: go back to the jobs list and use its buttons.",
}


def _for_a_browser(request: web.Request) -> bool:
    """A dashboard path (not the API's, not /metrics): its errors are pages, not JSON."""
    return not request.path.startswith(API + "/") and request.path != "/metrics"


def browser_error(status: int, sentence: str) -> web.Response:
    """A small HTML page saying what went wrong, for a browser on a dashboard path."""
    text = html.escape(sentence)
    return web.Response(status=status, content_type="text/html", text=(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>xenp2v: {status}</title></head><body><main><h1>That did not work</h1>"
        f'<p role="alert">{text}</p><p><a href="/">Back to the jobs</a></p></main></body></html>'),
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                 "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"})


def _client_gone(request: web.Request, exc: Exception) -> bool:
    """Whether `exc` is the client disconnecting (mid-body or before its answer was written)."""
    if isinstance(exc, (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.ContentLengthError)):
        return True
    transport = request.transport
    return transport is None or transport.is_closing()


def _storage_full(request: web.Request, exc: Exception) -> ProtocolError | None:
    """507 for any write the data directory's full disk refused, whichever handler made it."""
    if not isinstance(exc, (OSError, sqlite3.Error)):
        return None
    mapped = storage_error(exc, request.app[STORE].data_dir)
    return mapped if mapped.code is ErrorCode.INSUFFICIENT_STORAGE else None


@web.middleware
async def auth(request: web.Request, handler):
    """The admin token (the one the server printed) may do everything; a job token (made on
    create, see protocol) only what touches its own job, and only while the job is not done
    or failed. ``request[SCOPE]`` is None for the admin, else the job id. The dashboard and
    /metrics (server/dashboard) guard their own paths: a session, a token."""
    if request.path == health_path() or not request.path.startswith(API + "/"):
        return await handler(request)
    given = request.headers.get(AUTH_HEADER, "")
    scheme, _, token = given.partition(" ")
    # surrogateescape: aiohttp hands over bytes that are not UTF-8 as surrogates; they must
    # compare as what they are (not equal), not fail to encode.
    given_bytes = token.strip().encode("utf-8", "surrogateescape")
    refused = ProtocolError(ErrorCode.UNAUTHORIZED,
                            "A valid 'Authorization: Bearer <token>' header is needed: use the token "
                            "the server printed when it started.")
    if scheme.lower() != "bearer" or not given_bytes:
        raise refused
    if hmac.compare_digest(given_bytes, request.app[TOKEN].encode()):
        request[SCOPE] = None
        return await handler(request)
    if len(given_bytes) > 128:
        raise refused
    found = await request.app[JOB_TOKENS].lookup(request, given_bytes)
    if found is None:
        raise refused
    job, state, cancelled = found
    if state in FINISHED_JOB_STATES and cancelled is not None:
        raise ProtocolError(ErrorCode.JOB_CANCELLED,
                            f"Job {job}: {cancelled} Start a new "
                            "capture if the machine is still to be migrated.")
    if state in FINISHED_JOB_STATES:
        raise ProtocolError(ErrorCode.UNAUTHORIZED,
                            f"This token was job {job}'s, which is {state}: it no longer works. "
                            "Use the token the server printed.")
    if request.match_info.http_exception is None:      # a route of ours (else: its 404/405)
        asked = request.match_info.get("job")
        if asked is None and "uuid" not in request.match_info:
            raise ProtocolError(ErrorCode.FORBIDDEN,
                                f"This is job {job}'s own token: it cannot list or create jobs. "
                                "Use the token the server printed.")
        if asked is not None and asked != job:
            raise ProtocolError(ErrorCode.FORBIDDEN,
                                f"This is job {job}'s own token: it cannot touch job {asked}.")
    request[SCOPE] = job
    return await handler(request)


class JobTokens:
    """Job token -> (job, state, why it was cancelled or None), asked of the store in the pool and kept a few seconds, so a
    stream of chunks costs no query each (a job that ends stops its tokens within STATE_TTL)."""

    STATE_TTL = 2.0

    def __init__(self):
        self.known: dict[bytes, tuple[str, JobState, str | None, float]] = {}

    async def lookup(self, request: web.Request,
                     token: bytes) -> tuple[str, JobState, str | None] | None:
        now = asyncio.get_running_loop().time()
        hit = self.known.get(token)
        if hit and now - hit[3] < self.STATE_TTL:
            return hit[:3]
        found = await in_pool(request, request.app[STORE].token_job, token)
        if found is None:
            self.known.pop(token, None)
            return None
        if len(self.known) > 10000:
            self.known.clear()
        self.known[token] = (*found, now)
        return found


async def in_pool(request: web.Request, fn: Callable, *args):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[POOL], functools.partial(fn, *args))


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The whole body, refusing more than ``limit`` bytes as soon as it is known."""
    too_large = ProtocolError(ErrorCode.TOO_LARGE, f"The {what} is larger than the {limit} bytes allowed.")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    pieces: list[bytes] = []
    total = 0
    clock = _BodyClock(request, limit, what)
    try:
        async with asyncio.timeout(clock.next()) as deadline:
            while piece := await request.content.readany():
                total += len(piece)
                if total > limit:
                    raise too_large
                pieces.append(piece)
                deadline.reschedule(clock.next())
    except TimeoutError:
        raise clock.late() from None
    # One copy at the end: growing a buffer piece by piece would copy each chunk many times.
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def read_body_into(request: web.Request, buffer, length: int, what: str) -> memoryview:
    """The body, copied into ``buffer`` as it arrives: a view of its first bytes, at most
    ``length`` of them (more is refused as soon as it is known)."""
    too_large = ProtocolError(ErrorCode.TOO_LARGE, f"The {what} is larger than the {length} bytes allowed.")
    if request.content_length is not None and request.content_length > length:
        raise too_large
    view = memoryview(buffer)
    filled = 0
    clock = _BodyClock(request, length, what)
    try:
        async with asyncio.timeout(clock.next()) as deadline:
            while piece := await request.content.readany():
                if filled + len(piece) > length:
                    raise too_large
                view[filled:filled + len(piece)] = piece
                filled += len(piece)
                deadline.reschedule(clock.next())
    except TimeoutError:
        view.release()
        raise clock.late() from None
    except BaseException:
        view.release()
        raise
    finally:
        request[BODY_READ] = filled
    data = view[:filled]
    view.release()
    return data


class _BodyClock:
    """When a body being read must have moved on: BODY_IDLE_TIMEOUT after its last piece, and
    all of it by BODY_GRACE plus its length (Content-Length, else the limit) at MIN_BODY_RATE."""

    def __init__(self, request: web.Request, limit: int, what: str):
        self.loop = asyncio.get_running_loop()
        expected = min(request.content_length or limit, limit)
        self.allowed = BODY_GRACE + expected / MIN_BODY_RATE
        self.end = self.loop.time() + self.allowed
        self.what = what

    def next(self) -> float:
        return min(self.loop.time() + BODY_IDLE_TIMEOUT, self.end)

    def late(self) -> ProtocolError:
        if self.loop.time() >= self.end - 0.01:
            return ProtocolError(ErrorCode.BAD_REQUEST,
                                 f"The {self.what} arrived too slowly: it must be all here within "
                                 f"{self.allowed:.0f} s ({MIN_BODY_RATE // 1024} KiB/s after "
                                 f"{BODY_GRACE:.0f} s). Check the link, or lower p2v.streams.")
        return ProtocolError(ErrorCode.BAD_REQUEST,
                             f"The {self.what} stopped arriving for {BODY_IDLE_TIMEOUT:.0f} s.")


class Slots:
    """Chunk slots: ``total`` at once, at most ``per_client`` of them per client address; a
    request beyond either waits (holding no buffer) until one is given back."""

    def __init__(self, total: int, per_client: int):
        self.all = asyncio.Semaphore(total)
        self.per_client = per_client
        self.clients: dict[str, list] = {}   # address -> [its semaphore, requests using it]

    @contextlib.asynccontextmanager
    async def hold(self, client: str | None):
        entry = self.clients.setdefault(client or "", [asyncio.Semaphore(self.per_client), 0])
        entry[1] += 1
        try:
            async with entry[0], self.all:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                self.clients.pop(client or "", None)


async def read_json(request: web.Request, limit: int = MAX_JSON_BODY, what: str = "JSON body"):
    body = await read_body(request, limit, what)
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"The {what} is not valid JSON: {err}.") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"The {what} is nested too deeply.") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def ids(request: web.Request, *names: str) -> list[str]:
    what = {"job": "job id", "disk": "disk id"}
    return [check_id(request.match_info[n], what[n]) for n in names]


def index_of(request: web.Request) -> int:
    text = request.match_info["index"]
    if not _INDEX.fullmatch(text):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"The chunk index {text!r} is not a whole number.")
    return int(text)


def fire(request: web.Request, hook: str, *args) -> None:
    """Runs a hook in its own pool, so a slow one neither delays the answer nor takes request threads."""
    fn = request.app[HOOKS].get(hook)
    if fn is None:
        return

    def call():
        try:
            fn(*args)
        except Exception:
            log.exception("The %s hook failed for %s", hook, args[0])

    request.app[HOOK_POOL].submit(call)


# --- handlers ---------------------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "version": __version__, "protocol": VERSION})


async def create_job(request: web.Request) -> web.Response:
    inv = parse_inventory(await read_json(request, what="inventory"))
    job, resumed = await in_pool(request, request.app[STORE].create_job, inv)
    log.info("%s job %s for %s (%d disks)", "Resumed" if resumed else "Created", job["id"],
             inv.name, len(inv.disks))
    note = job["records"].get("not_resumed") if not resumed else None
    if note:
        log.info("Job %s: %s", job["id"], note)
    job_token = await in_pool(request, request.app[STORE].issue_token, job["id"])
    answer = {"id": job["id"], "resumed": resumed, "token": job_token,
              "disks": [{k: d[k] for k in ("id", "size", "chunk_size", "chunks", "state", "held_chunks")}
                        for d in job["disks"]]}
    if note:
        answer["not_resumed"] = note
    warm = job["records"].get("warm")
    if resumed and warm:
        answer["pass"], answer["version"] = warm["pass"], warm["version"]
    return web.json_response(answer, status=200 if resumed else 201)


async def list_jobs(request: web.Request) -> web.Response:
    return web.json_response(await in_pool(request, request.app[STORE].list_jobs))


async def get_job(request: web.Request) -> web.Response:
    (job,) = ids(request, "job")
    return web.json_response(await in_pool(request, request.app[STORE].get_job, job))


async def held_chunks(request: web.Request) -> web.Response:
    job, disk = ids(request, "job", "disk")
    sealed = request.query.get("version") == "sealed"
    return web.json_response(await in_pool(request, request.app[STORE].chunk_list, job, disk,
                                           sealed))


async def put_chunk(request: web.Request) -> web.Response:
    job, disk = ids(request, "job", "disk")
    index = index_of(request)
    digest = parse_digest(request.headers.get(DIGEST_HEADER), precopy=True)
    encoding = request.headers.get(ENCODING_HEADER, "").strip().lower() or None
    store = request.app[STORE]
    span = store.known_chunk_geometry(job, disk, index)  # no thread hop once the disk is known
    _, length = span or await in_pool(request, store.chunk_geometry, job, disk, index)
    what = f"body of chunk {index}"
    buffers = request.app[BUFFERS]
    async with request.app[SLOTS].hold(request.remote):
        # The body goes straight into the chunk's buffer; a compressed one into a second buffer,
        # from which a worker decompresses it into the first.
        taken = [buffers.take(length)]
        stored = None
        try:
            if encoding in (None, "identity"):
                body = await read_body_into(request, taken[0], length, what)
            else:
                limit = chunk.body_limit(length, encoding)
                taken.append(buffers.take(limit))
                body = await read_body_into(request, taken[1], limit, what)
            stored = asyncio.ensure_future(in_pool(request, _store_chunk, store, job, disk, index,
                                                   body, encoding, taken[0], length, digest))
            del body
            held = await asyncio.shield(stored)
        finally:
            give = functools.partial(_give_back, buffers, taken)
            if stored is None or stored.done():
                give()
            else:  # cancelled while a worker still uses the buffers: they are given back after
                stored.add_done_callback(lambda _: give())
    # Acknowledged only once held: the journal's thread wakes this handler, no pool thread waits.
    written = await asyncio.wrap_future(held)
    return web.json_response({"index": index, "digest": digest, "written": written},
                             status=201 if written else 200)


def _give_back(buffers: chunk.Buffers, taken: list) -> None:
    for buffer in taken:
        buffers.give(buffer)


def _store_chunk(store: Store, job, disk, index, body, encoding, buffer, length, digest):
    """Decodes (into ``buffer``), checks and writes one chunk: a future of its being held."""
    data = chunk.decode(body, encoding, length, buffer)
    chunk.check(data, digest)
    sha256 = None
    if digest.startswith(PRECOPY_DIGEST + ":"):  # a pre-copy sender's: the server digests too
        sha256, digest = digest.partition(":")[2], chunk_digest(data)
    return store.write_chunk(job, disk, index, data, digest, aligned=True, sha256=sha256)


async def get_chunk(request: web.Request) -> web.StreamResponse:
    job, disk = ids(request, "job", "disk")
    index = index_of(request)
    # A slot covers the chunk until it is on the wire, written in pieces as the socket drains:
    # memory stays at about one chunk per slot however many agents restore at once.
    async with request.app[SLOTS].hold(request.remote):
        data, digest = await in_pool(request, request.app[STORE].read_chunk, job, disk, index)
        headers = {DIGEST_HEADER: digest, "Content-Type": "application/octet-stream"}
        if ZSTD in request.headers.get("Accept-Encoding", ""):
            packed = await in_pool(request, zstandard.ZstdCompressor(level=1).compress, data)
            if len(packed) < len(data):
                data, headers[ENCODING_HEADER] = packed, ZSTD
        response = web.StreamResponse(headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        view = memoryview(data)
        try:  # a reader as slow as a trickling writer gives its slot back as soon
            async with asyncio.timeout(BODY_GRACE + len(data) / MIN_BODY_RATE):
                for start in range(0, len(view), WRITE_PIECE):
                    await response.write(view[start:start + WRITE_PIECE])
                await response.write_eof()
        except TimeoutError:
            log.info("GET %s: the client read too slowly; dropped", request.path)
            if request.transport is not None:
                request.transport.abort()
        return response


async def disk_map(request: web.Request) -> web.Response:
    job, disk = ids(request, "job", "disk")
    return web.json_response(await in_pool(request, request.app[STORE].disk_map, job, disk))


async def complete(request: web.Request) -> web.Response:
    job, disk = ids(request, "job", "disk")
    body = await read_json(request, what="completion")
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "The completion must be a JSON object with 'digest'.")
    if not isinstance(body.get("digest"), str):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            "The completion needs 'digest': the image digest as 'blake3:<64 hex digits>'.")
    digest = parse_digest(body["digest"], precopy=True)
    zero = _pairs(body.get("zero", []), "zero")
    bad_ranges = _pairs(body.get("bad_ranges", []), "bad_ranges")
    job_json, job_sealed = await in_pool(request, request.app[STORE].seal, job, disk, digest,
                                         zero, bad_ranges)
    log.info("Sealed disk %s of job %s (%s)", disk, job, digest)
    if job_sealed:
        log.info("Every disk of job %s is sealed", job)
        # A pre-copy pass is not the last one: the VM is made after the final sync.
        if (job_json["records"].get("warm") or {}).get("pass") != "precopy":
            fire(request, "on_job_sealed", job)
    sealed = next(d for d in job_json["disks"] if d["id"] == disk)
    return web.json_response({"job": job, "disk": sealed, "job_state": job_json["state"]})


async def zero_chunks(request: web.Request) -> web.Response:
    """A final sync's chunks that its source no longer uses, declared before it reads the rest:
    forgotten and punched now (see Store.zero_chunks)."""
    job, disk = ids(request, "job", "disk")
    body = await read_json(request, what="zero chunks")
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "The zero chunks must be a JSON object with 'zero'.")
    await in_pool(request, request.app[STORE].zero_chunks, job, disk,
                  _pairs(body.get("zero", []), "zero"))
    return web.Response(status=204)


def _pairs(value: object, what: str) -> list[tuple[int, int]]:
    def whole(x):
        return isinstance(x, int) and not isinstance(x, bool)

    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and whole(p[0]) and whole(p[1]) for p in value):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"'{what}' must be a list of [start, count] pairs of whole numbers.")
    return [(p[0], p[1]) for p in value]


async def upload_log(request: web.Request) -> web.Response:
    (job,) = ids(request, "job")
    text = await read_body(request, MAX_LOG_BODY, "log upload")
    await in_pool(request, request.app[STORE].append_log, job, text)
    return web.Response(status=204)


async def post_events(request: web.Request) -> web.Response:
    (job,) = ids(request, "job")
    body = await read_json(request, MAX_EVENTS_BODY, what="events")
    events = body if isinstance(body, list) else [body]
    if not events or not all(isinstance(e, dict) for e in events):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            "Events must be a JSON object (with 'phase') or a non-empty list of them.")
    for i, event in enumerate(events):
        check_shape(event, EVENT_FIELDS, f"event {i}" if len(events) > 1 else "event")
    await in_pool(request, request.app[STORE].add_events, job, events)
    return web.Response(status=204)


async def machine(request: web.Request) -> web.Response:
    uuid = check_id(request.match_info["uuid"], "system UUID")
    job = await in_pool(request, request.app[STORE].job_for_machine, uuid)
    if request.get(SCOPE) not in (None, job["id"]):   # a job token learns of no other job
        raise ProtocolError(ErrorCode.NOT_FOUND, f"No job has a target VM with SMBIOS UUID {uuid}.")
    return web.json_response(job)


PRECOPY_SENDER = Path(__file__).resolve().parent.parent / "agent" / "warm" / "precopy.py"


async def precopy_sender(request: web.Request) -> web.Response:
    """The pre-copy sender (agent/warm/precopy.py, Python 3.6's library only), for the source's own
    running system: curl -H 'Authorization: Bearer T' https://server/api/v1/precopy.py."""
    return web.Response(body=PRECOPY_SENDER.read_bytes(), content_type="text/x-python")


async def repair_report(request: web.Request) -> web.Response:
    (job,) = ids(request, "job")
    report = await read_json(request, what="repair report")
    if not isinstance(report, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "The repair report must be a JSON object.")
    check_shape(report, REPAIR_FIELDS, "repair report")
    await in_pool(request, request.app[STORE].set_repair, job, report)
    fire(request, "on_repair_report", job, report)
    return web.Response(status=204)


def make_app(store: Store, token: str, on_job_sealed: Callable[[str], None] | None = None,
             on_repair_report: Callable[[str, dict], None] | None = None) -> web.Application:
    """The server's aiohttp application; run it with ``guard.Runner(app, **RUNNER_OPTIONS)``.

    ``on_job_sealed(job_id)`` runs once every disk of a job is sealed, and
    ``on_repair_report(job_id, report)`` when a VM reports its repair; both in a worker thread,
    after the answer is on its way.
    """
    app = web.Application(middlewares=[errors, auth], client_max_size=MAX_CHUNK_SIZE * 2)
    app[STORE] = store
    app[TOKEN] = token
    app[JOB_TOKENS] = JobTokens()
    app[HOOKS] = {"on_job_sealed": on_job_sealed, "on_repair_report": on_repair_report}
    app[POOL] = ThreadPoolExecutor(THREADS, thread_name_prefix="p2v")
    app[BUFFERS] = chunk.Buffers(2 * MAX_CHUNKS_IN_FLIGHT)
    app[HOOK_POOL] = ThreadPoolExecutor(4, thread_name_prefix="p2v-hook")

    async def startup(app: web.Application) -> None:
        app[SLOTS] = Slots(MAX_CHUNKS_IN_FLIGHT, MAX_CHUNKS_PER_CLIENT)

    async def cleanup(app: web.Application) -> None:
        app[POOL].shutdown(wait=True)
        app[HOOK_POOL].shutdown(wait=True)

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    disk = API + "/jobs/{job}/disks/{disk}"
    app.add_routes([
        web.get(health_path(), health),
        web.post(API + "/jobs", create_job),
        web.get(API + "/jobs", list_jobs),
        web.get(API + "/jobs/{job}", get_job),
        web.get(disk + "/chunks", held_chunks),
        web.put(disk + "/chunks/{index}", put_chunk),
        web.get(disk + "/chunks/{index}", get_chunk),
        web.get(disk + "/map", disk_map),
        web.post(disk + "/complete", complete),
        web.post(disk + "/zero", zero_chunks),
        web.post(API + "/jobs/{job}/log", upload_log),
        web.post(API + "/jobs/{job}/events", post_events),
        web.get(API + "/machines/{uuid}", machine),
        web.post(API + "/jobs/{job}/repair", repair_report),
        web.get(API + "/precopy.py", precopy_sender),
    ])
    return app
