"""What the HTTP layer refuses before a handler runs, answered and logged as the handlers do.

aiohttp's own parser refuses bad request lines, headers and URLs with a text/plain 400 that quotes
the offending line, and logs it with a traceback, so a header carrying the token put the token in
the server's log. ``Runner`` (use it instead of ``web.AppRunner``) makes those answers JSON
``{"error", "detail"}`` like every other error, and logs one line per refusal, naming the kind of
fault but never the bytes. ``Redact`` keeps any token that still reaches a log record out of it.
"""

from __future__ import annotations

import json
import logging
import re
import time

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from xenp2v.protocol import ErrorCode, error_body

log = logging.getLogger("xenp2v.server")

_CODES = {400: ErrorCode.BAD_REQUEST, 401: ErrorCode.UNAUTHORIZED, 404: ErrorCode.NOT_FOUND,
          405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.TOO_LARGE, 431: ErrorCode.TOO_LARGE}
# Where the parser's message starts quoting what it was sent.
_QUOTE = re.compile(r"[:'\"\n\\]|\bb'")


def fault_kind(exc: BaseException | None) -> str:
    """What was wrong with a refused request, without any of its bytes: the parser's message
    up to where it would quote them (e.g. 'Invalid header value char')."""
    if exc is None:
        return "a malformed request"
    text = str(getattr(exc, "message", "") or "")
    head = _QUOTE.split(text.strip(), 1)[0].strip()[:80]
    return head or type(exc).__name__


HEADER_DEADLINE = 15.0   # seconds from a request's first byte to the end of its headers
IDLE_TIMEOUT = 60.0      # seconds a connection may stay open with no request in progress
                         # (the default of p2v-server serve --idle-timeout; aiohttp's is 3630)
MAX_PER_ADDRESS = 64     # connections open at once from one address (the agent uses 8 or so)
ACCEPT_LOG_EVERY = 5.0   # seconds between two log lines about refused accepts


class _JsonErrors(RequestHandler):
    """A connection: the parser's refusals as JSON, a deadline for each request's line and
    headers, and a cap on the connections of one address (counted in ``_Server.open``)."""

    _header_timer = None
    _peer = None

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        server = self._manager
        open_ = getattr(server, "open", None)
        if address is not None and open_ is not None:
            if open_.get(address, 0) >= MAX_PER_ADDRESS:
                server.refused_over_cap(address)
                transport.abort()
                return
            open_[address] = open_.get(address, 0) + 1
            self._peer = address
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        open_ = getattr(self._manager, "open", None)
        if self._peer is not None and open_ is not None:
            left = open_.get(self._peer, 1) - 1
            if left > 0:
                open_[self._peer] = left
            else:
                open_.pop(self._peer, None)
            self._peer = None
        if self.transport is not None or self._task_handler is not None:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self._waiter is not None and not self._waiter.done() and not self._messages
        if waiting and self._header_timer is None and data:
            self._header_timer = self._loop.call_later(HEADER_DEADLINE, self._headers_too_slow)
        super().data_received(data)
        if self._messages or self._payload_parser is not None or self._force_close:
            self._stop_header_timer()

    def _process_keepalive(self) -> None:
        if self._header_timer is None:   # a request under way has its own deadline
            super()._process_keepalive()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport is None or self._messages or self._force_close:
            return
        log.info("Closed a connection from %s: its request line and headers took longer than "
                 "%g s", self._peer or "an unknown address", HEADER_DEADLINE)
        body = json.dumps(error_body(ErrorCode.REQUEST_TIMEOUT,
                                     f"The request line and headers did not arrive within "
                                     f"{HEADER_DEADLINE:g} s; send each request whole.")).encode()
        transport = self.transport
        transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json"
                             b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
                             + body)
        self.force_close()
        transport.close()   # after what was written: the 408 goes out first

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        kind = fault_kind(exc)
        if status >= 500:
            log.error("A request from %s failed in the HTTP layer (%s: %s)", request.remote,
                      type(exc).__name__ if exc else "no exception", kind)
            code, detail = ErrorCode.INTERNAL, "The server failed on this request; its log has the details."
        else:
            log.info("Refused a malformed request from %s: %s", request.remote, kind)
            code = _CODES.get(status, ErrorCode.BAD_REQUEST)
            detail = (f"The request is not valid HTTP/1.1 ({kind}); the agent speaks it right, "
                      "so check what else sends requests to this port.")
        if request.writer.output_size > 0:     # the answer had started: only closing is left
            raise ConnectionError("the answer had started when the request failed")
        response = web.json_response(error_body(code, detail), status=status)
        response.force_close()
        return response


class _Server(web.Server):
    open: dict[str, int]
    _cap_logged: float

    def __call__(self) -> RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)

    def refused_over_cap(self, address: str) -> None:
        """Logs, at most once per ACCEPT_LOG_EVERY, that an address is over its cap."""
        now = time.monotonic()
        if now - self._cap_logged >= ACCEPT_LOG_EVERY:
            self._cap_logged = now
            log.warning("Refused a connection from %s: it already has %d open (the most one "
                        "address may have)", address, MAX_PER_ADDRESS)


class Runner(web.AppRunner):
    """web.AppRunner whose connections answer the parser's refusals as JSON, logged in one line."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        server.open, server._cap_logged = {}, float("-inf")
        server._kwargs.setdefault("keepalive_timeout", IDLE_TIMEOUT)
        return server


class AcceptErrors:
    """The event loop's exception handler: a refused accept (no descriptor or memory left) is
    one log line per ``every`` seconds with how many there were, not a traceback each (asyncio
    tries up to its backlog of accepts each time, and logged 17,381 tracebacks, 9.5 MB, in 7 s).
    Everything else goes to the loop's default handler. Install with
    ``loop.set_exception_handler(AcceptErrors())``."""

    def __init__(self, every: float = ACCEPT_LOG_EVERY):
        self.every = every
        self.last = float("-inf")
        self.unlogged = 0

    def __call__(self, loop, context: dict) -> None:
        if not str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        self.unlogged += 1
        now = time.monotonic()
        if now - self.last < self.every:
            return
        exc = context.get("exception")
        log.warning("Cannot accept connections: %s (%d refused accepts since the last such line); "
                    "raise the open-file limit (LimitNOFILE) or look at who holds connections",
                    getattr(exc, "strerror", None) or exc, self.unlogged)
        self.last, self.unlogged = now, 0


class Redact(logging.Filter):
    """Replaces the given secrets, and whatever follows 'Bearer ', in every record it sees."""

    _BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"\\]+")

    def __init__(self, secrets: list[str] | None = None):
        super().__init__()
        self.secrets = [s for s in (secrets or []) if s]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = self._clean(text)
        if clean != text:
            record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<token>")
        return self._BEARER.sub(r"\1<token>", text)
