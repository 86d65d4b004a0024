"""Who may use the dashboard: sign-in with the server's token or the admin password, a session
cookie, and the checks every action passes.

- The cookie holds only a random session id (HttpOnly, SameSite=Strict, Secure on TLS); the
  sessions live in the server's memory, so a restart signs everyone out.
- Every POST must come from this server's own pages: its Origin (or, without one, its
  Sec-Fetch-Site) must be this server, and an action must carry the session's CSRF token.
- The token or password is only ever in a POST body, compared in constant time, never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "p2v_session"
IDLE_LIMIT = 12 * 3600       # seconds a session lasts without use
PASSWORD_FILE = "admin-password"
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


@dataclass
class Session:
    id: str
    csrf: str
    last_used: float = field(default_factory=time.monotonic)


class Sessions:
    def __init__(self):
        self._by_id: dict[str, Session] = {}

    def new(self) -> Session:
        self._expire()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        self._by_id[session.id] = session
        return session

    def of(self, request: web.Request) -> Session | None:
        """The request's live session, or None."""
        session = self._by_id.get(request.cookies.get(COOKIE, ""))
        if session is None or time.monotonic() - session.last_used > IDLE_LIMIT:
            return None
        session.last_used = time.monotonic()
        return session

    def end(self, session: Session) -> None:
        self._by_id.pop(session.id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s.id for s in self._by_id.values() if now - s.last_used > IDLE_LIMIT]:
            del self._by_id[sid]


def set_cookie(response: web.StreamResponse, request: web.Request, session: Session) -> None:
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", path="/",
                        secure=request.secure)


def clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(COOKIE, path="/", secure=request.secure, httponly=True, samesite="Strict")


def same_origin(request: web.Request) -> bool:
    """Whether a state-changing request comes from this server's own pages."""
    origin = request.headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        return parts.scheme == request.scheme and parts.netloc.lower() == request.host.lower()
    # No Origin (older browsers on some forms): the browser's own word, when it gives one.
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def csrf_ok(session: Session, given: object) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), session.csrf.encode())


# --- the admin password --------------------------------------------------------------------------

def hash_password(password: str) -> str:
    """'scrypt$<salt>$<hash>' (base64), what the password file holds."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def password_matches(stored: str, password: str) -> bool:
    try:
        kind, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        mine = hashlib.scrypt(password.encode("utf-8", "surrogateescape"),
                              salt=base64.b64decode(salt), dklen=32, **_SCRYPT)
        return hmac.compare_digest(mine, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


def write_password(data_dir: Path, password: str) -> Path:
    path = data_dir / PASSWORD_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(hash_password(password) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def secret_ok(given: str, token: str, data_dir: Path) -> bool:
    """Whether ``given`` is the server's token or the admin password (read at each sign-in,
    so `p2v-server password` applies without a restart)."""
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    if hmac.compare_digest(given_bytes, token.encode()):
        return True
    try:
        stored = (data_dir / PASSWORD_FILE).read_text()
    except OSError:
        return False
    return bool(given) and password_matches(stored, given)
