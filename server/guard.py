"""What the HTTP layer refuses before a handler runs, answered and logged as the handlers do.

aiohttp's own parser refuses bad request lines, headers and URLs with a text/plain 400 that quotes
the offending line, and logs it with a traceback, so a header carrying the token put the token in
the server's log. ``Runner`` (use it instead of ``web.AppRunner``) makes those answers JSON
``{"error", "detail"}`` like every other error, and logs one line per refusal, naming the kind of
fault but never the bytes. ``Redact`` keeps any token that still reaches a log record out of it.
"""

from __future__ import annotations

import logging
import re

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


class _JsonErrors(RequestHandler):
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
    def __call__(self) -> RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """web.AppRunner whose connections answer the parser's refusals as JSON, logged in one line."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        return server


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
