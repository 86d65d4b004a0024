"""HTTP client for the receiving server: one connection per thread, certificate pinned, retries.

Every call is retried with exponential backoff while the server cannot be reached or answers
502/503/504, for at most `retry_for` seconds per call; then it fails with a sentence. Chunk uploads
are idempotent on the server, so a retry after a cut connection is always safe.

Every call goes over a plain http.client connection per thread: chunk bodies are sent from, and
read into, the caller's buffer (requests cost three times the CPU, reassembling a response from
10 KiB pieces), and the agent starts without importing requests (a fifth of a second of a final
sync's downtime, warm migration).
"""

from __future__ import annotations

import hashlib
import http.client
from json import dumps as _dumps, loads as _loads
import logging
import os
import random
import socket
import ssl
import threading
import time
import uuid
from urllib.parse import urlsplit

import zstandard

from xenp2v import protocol

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({502, 503, 504})
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 15.0


class ServerError(Exception):
    """The server refused a call or could not be reached; the message says what to do."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


def _fingerprint_hex(fingerprint: str) -> str:
    text = fingerprint.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ServerError(f"The fingerprint {fingerprint!r} is not of the form sha256:<64 hex "
                          "digits>: copy it from what p2v-server printed when it started.")
    return text


def server_fingerprint(url: str) -> str:
    """The SHA-256 fingerprint of the certificate the server at `url` presents."""
    parts = urlsplit(url)
    pem = ssl.get_server_certificate((parts.hostname, parts.port or 443), timeout=10)
    return "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


class Client:
    def __init__(self, url: str, token: str, fingerprint: str | None = None,
                 retry_for: float = 600.0, timeout: float | tuple[float, float] = (15.0, 60.0),
                 backoff: tuple[float, float] = (BACKOFF_FIRST, BACKOFF_MAX)):
        """`backoff` (s): the first wait between attempts and the longest, doubling between;
        tests shorten it (make chaos). `retry_for` (s) is how long one call keeps trying."""
        if not url or urlsplit(url).scheme not in ("http", "https"):
            raise ServerError(f"The server address {url!r} is not a URL: give it as "
                              "https://HOST:PORT, as p2v-server printed it.")
        if fingerprint and urlsplit(url).scheme != "https":
            raise ServerError(f"The server address {url} is plain HTTP but a fingerprint is "
                              "given: it can only be checked over TLS, and the token would go "
                              "in clear. Give the https:// address p2v-server printed.")
        if not token:
            raise ServerError("No token given: pass the token p2v-server printed (--token or "
                              "p2v.token=).")
        self.url = url.rstrip("/")
        self.token = token
        self.fingerprint = _fingerprint_hex(fingerprint) if fingerprint else None
        self.retry_for = retry_for
        self.timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.backoff = backoff
        self._local = threading.local()

    # --- plumbing ---------------------------------------------------------------------------

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201),
                what: str = "talk to the server", retry_for: float | None = None,
                json=None, data: bytes | None = None, headers: dict | None = None) -> "Answer":
        """One call with a JSON body (`json`) or raw `data`; its answer, once its status is in
        `ok`. The token is read at each call: it becomes the job's own after create_job."""
        headers = dict(headers or {})
        if json is not None:
            data = _dumps(json).encode()
            headers["Content-Type"] = "application/json"
        status, content, seen = self._call(method, path, what, ok, body=data, headers=headers,
                                           retry_for=retry_for)
        return Answer(status, content, seen)

    def _retrying(self, attempt, what: str, retry_for: float | None):
        """attempt() until it returns, raises ServerError, or keeps raising _Retry too long."""
        retry_for = self.retry_for if retry_for is None else retry_for
        deadline = time.monotonic() + retry_for
        delay, longest = self.backoff
        while True:
            try:
                return attempt()
            except _Retry as e:
                problem = str(e)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"Could not {what}: {problem}, and it kept failing for "
                                  f"{retry_for:.0f} s. Check the network and that p2v-server "
                                  "runs, then start again: the transfer resumes where it stopped.")
            wait = min(delay * random.uniform(0.8, 1.2), left)
            log.warning("%s; retrying in %.1f s", problem, wait)
            time.sleep(wait)
            delay = min(delay * 2, longest)

    def _refusal(self, status: int, body: bytes, what: str) -> ServerError:
        try:
            parsed = _loads(body)
            code, detail = parsed.get("error"), parsed.get("detail", "")
        except (ValueError, AttributeError):
            code, detail = None, body[:200].decode(errors="replace")
        if code == protocol.ErrorCode.JOB_CANCELLED:
            return ServerError(f"The job was cancelled on the server (by the admin): {detail}",
                               status, code)
        if status == 401:
            return ServerError("The server refused the token: check --token (p2v.token=) against "
                               "what p2v-server printed.", 401, code)
        return ServerError(f"Could not {what}: the server answered {status}: {detail}",
                           status, code)

    def _call(self, method: str, path: str, what: str, ok: tuple[int, ...], body=None,
              headers: dict | None = None, into: memoryview | None = None,
              retry_for: float | None = None) -> tuple[int, bytes | int, dict[str, str]]:
        """One call on this thread's connection: (its status, its body, or the bytes read into
        `into` where given, its headers with names in lower case)."""
        headers = {protocol.AUTH_HEADER: f"Bearer {self.token}", **(headers or {})}

        def attempt() -> int:
            conn = self._link()
            reused = conn.sock is not None
            try:
                try:
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                except ConnectionError:  # RemoteDisconnected and BrokenPipeError are ones
                    if not reused:
                        raise
                    # The server closed the idle connection we kept: a fresh one, at once.
                    self._drop_link()
                    conn = self._link()
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                if resp.status in ok and into is not None:
                    got = _read_into(resp, into)
                else:
                    data = got = resp.read()
            except _Unpinned as e:
                self._drop_link()
                raise ServerError(self._tls_message(e)) from None
            except ssl.SSLError as e:
                self._drop_link()
                if _is_trust_failure(e):
                    raise ServerError(self._tls_message(e)) from None
                self._check_scheme()
                raise _Retry(f"the secure connection to {self.url} broke ({_short(e)})") from None
            except (OSError, http.client.HTTPException) as e:
                self._drop_link()
                if isinstance(e, (ConnectionResetError, http.client.BadStatusLine)):
                    self._check_scheme()   # RemoteDisconnected is a BadStatusLine
                raise _Retry(f"cannot reach {self.url} ({_short(e)})") from None
            if resp.will_close:
                self._drop_link()
            log.debug("%s %s: %s", method, path, resp.status)   # p2v.debug
            if resp.status in ok:
                return resp.status, got, {k.lower(): v for k, v in resp.getheaders()}
            if resp.status not in RETRY_STATUS:
                raise self._refusal(resp.status, data, what)
            raise _Retry(f"the server answered {resp.status}")

        return self._retrying(attempt, what, retry_for)

    def _link(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "link", None)
        if conn is None:
            parts = urlsplit(self.url)
            if parts.scheme == "https":
                conn = _PinnedHTTPSConnection(parts.hostname, parts.port or 443, self.timeout,
                                              self._ssl_context(), self.fingerprint)
            else:
                conn = _TimedHTTPConnection(parts.hostname, parts.port or 80, self.timeout)
            self._local.link = conn
        return conn

    def _drop_link(self) -> None:
        conn = getattr(self._local, "link", None)
        if conn is not None:
            conn.close()
            self._local.link = None

    def _check_scheme(self) -> None:
        """Raises a ServerError when the server speaks the other scheme: what a TLS server does
        to a plain request (closes the connection), or a plain one to a TLS handshake (answers
        HTTP, which TLS reads as a wrong version), is also what a restarting server or a cut
        link can do. So the scheme is blamed only when a handshake of our own fails the way a
        plain server makes it fail and a plain request is answered (https://), or a handshake
        goes through (http://); anything else is retried as before. A TLS front end that
        answers plain HTTP with a 400 (nginx, Go) is thus not mistaken for a plain server."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        other = f"{'http' if parts.scheme == 'https' else 'https'}://{host}:{port}"
        then = (" with the fingerprint it printed (--fingerprint, p2v.fingerprint=)"
                if parts.scheme == "http" else
                " and no fingerprint (it was started with --plain-http)")
        handshake = self._handshake(parts.hostname, port)
        if handshake == "tls":
            if parts.scheme == "http":
                raise ServerError(f"The server at {self.url} speaks HTTPS (TLS): give {other}, "
                                  f"as p2v-server printed it,{then}.")
            return   # it speaks TLS: the broken connection was a fault of the moment
        if parts.scheme == "http" or handshake != "not tls":
            return
        answer = self._plain_answer(parts.hostname, port)
        if not answer.startswith(b"HTTP/"):
            return
        if not _is_p2v_health(answer):
            raise ServerError(f"The server at {self.url} answers plain HTTP but is not a "
                              "p2v-server: check the address and port (--server, p2v.server=) "
                              "against what p2v-server printed.")
        raise ServerError(f"The server at {self.url} speaks plain HTTP, not TLS: give {other}, "
                          f"as p2v-server printed it,{then}.")

    def _handshake(self, hostname: str, port: int) -> str | None:
        """How a TLS handshake (any certificate) with hostname:port went: "tls" (through),
        "not tls" (the server answered with something that is not TLS), None (the connection
        failed: a reset, a hang-up, a timeout, nothing there)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        try:
            with socket.create_connection((hostname, port), self.timeout[0]) as sock:
                sock.settimeout(self.timeout[0])
                ctx.wrap_socket(sock).close()
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):   # hung up mid-handshake
            return None
        except ssl.SSLError:   # e.g. WRONG_VERSION_NUMBER: an HTTP answer read as TLS
            return "not tls"
        except OSError:
            return None
        return "tls"

    def _plain_answer(self, hostname: str, port: int) -> bytes:
        """What a plain GET of the health path gets from hostname:port (its first 64 KiB, read
        until the server closes), or b"" when nothing answers."""
        got = b""
        try:
            with socket.create_connection((hostname, port), self.timeout[0]) as sock:
                sock.settimeout(self.timeout[0])
                sock.sendall(f"GET {protocol.health_path()} HTTP/1.0\r\nHost: {hostname}\r\n"
                             "Connection: close\r\n\r\n".encode())
                while len(got) < 65536:
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    got += piece
        except OSError:
            pass
        return got

    def _ssl_context(self) -> ssl.SSLContext:
        if self.fingerprint:  # the pin is checked once the handshake is done
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        # The system's CAs (a site CA installed on the ISO; SSL_CERT_FILE and SSL_CERT_DIR as
        # OpenSSL reads them), and what requests trusted (the agent used it once): the bundle
        # the environment names, else certifi's (the agent's extra brings it).
        ctx = ssl.create_default_context()
        named = [v for v in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if os.environ.get(v)]
        if not named:
            import certifi
            ctx.load_verify_locations(cafile=certifi.where())
            return ctx
        bundle = os.environ[named[0]]
        try:
            if os.path.isdir(bundle):
                ctx.load_verify_locations(capath=bundle)
            else:
                ctx.load_verify_locations(cafile=bundle)
        except OSError as e:   # ssl.SSLError is one: a file that holds no certificate
            reason = e.strerror or _short(e)
            raise ServerError(f"The CA bundle {named[0]}={bundle} cannot be read ({reason}): "
                              f"correct the path or unset {named[0]}, or pass the fingerprint "
                              "p2v-server printed: --fingerprint sha256:HEX "
                              "(p2v.fingerprint=).") from None
        return ctx

    def _tls_message(self, err: Exception) -> str:
        if self.fingerprint:
            try:
                seen = server_fingerprint(self.url)
            except OSError:
                seen = "unknown"
            return (f"The server's certificate does not match the fingerprint given "
                    f"(sha256:{self.fingerprint}); it presents {seen}. Check that --server "
                    "points at your p2v-server and copy its fingerprint again.")
        return (f"The server's certificate cannot be verified ({_short(err)}). Pass the "
                "fingerprint p2v-server printed: --fingerprint sha256:HEX (p2v.fingerprint=).")

    # --- calls ------------------------------------------------------------------------------

    def health(self) -> dict:
        return self.request("GET", protocol.health_path(), what="check the server").json()

    def create_job(self, inventory: dict) -> dict:
        """The job for this inventory. A request_id made here goes with every retry of the
        call, so a create whose answer was lost gives back the job it made, not a second one."""
        body = {**inventory, "request_id": uuid.uuid4().hex}
        answer = self.request("POST", protocol.jobs_path(), json=body, what="create the job").json()
        if answer.get("token"):
            # From here on this client speaks for this job only, with a token that can touch
            # nothing else and ends with the job (an older server sends none: keep ours).
            self.token = answer["token"]
        return answer

    def job(self, job: str) -> dict:
        return self.request("GET", protocol.job_path(job), what=f"read job {job}").json()

    def held_chunks(self, job: str, disk: str, sealed: bool = False) -> dict[int, str]:
        """Chunk index -> digest of what the server already holds of `disk`; `sealed`: of its
        newest sealed version (what a restore reads while a later pass is received)."""
        path = protocol.chunks_path(job, disk) + ("?version=sealed" if sealed else "")
        body = self.request("GET", path,
                            what=f"ask which chunks of {disk} the server holds").json()
        return {int(i): d for i, d in body.get("chunks", {}).items()}

    def put_chunk(self, job: str, disk: str, index: int, body, digest: str,
                  compressed: bool) -> None:
        """Sends one chunk; `body` (any bytes-like object) goes out as it is, not copied."""
        headers = {protocol.DIGEST_HEADER: digest, "Content-Type": "application/octet-stream"}
        if compressed:
            headers[protocol.ENCODING_HEADER] = protocol.ZSTD
        self._call("PUT", protocol.chunk_path(job, disk, index), f"send chunk {index} of {disk}",
                   (200, 201, 204), body=body, headers=headers)

    def get_chunk(self, job: str, disk: str, index: int, into: memoryview,
                  packed: memoryview | None = None) -> tuple[memoryview, int]:
        """Fetches one chunk into `into`: (the part of it that the chunk filled, bytes that
        crossed the wire).

        With `packed` (a scratch buffer as long as `into`) the server may send the chunk
        zstd-compressed (it does when that shrinks it); it lands in `packed` and is decompressed
        into `into`. A body that is not valid zstd, or holds more than `into`, comes back as
        the bytes that did fit: the caller's digest check tells it is not the chunk.
        """
        accept = protocol.ZSTD if packed is not None else "identity"
        _, n, seen = self._call("GET", protocol.chunk_path(job, disk, index),
                                f"fetch chunk {index} of {disk}", (200,),
                                headers={"Accept-Encoding": accept},
                                into=packed if packed is not None else into)
        if packed is None or seen.get(protocol.ENCODING_HEADER.lower()) != protocol.ZSTD:
            if packed is not None:
                into[:n] = packed[:n]   # the server found it did not shrink: sent as it is
            return into[:n], n
        return into[:_unzstd_into(packed[:n], into)], n

    def image_map(self, job: str, disk: str) -> dict:
        return self.request("GET", protocol.map_path(job, disk),
                            what=f"fetch the map of {disk}").json()

    def complete(self, job: str, disk: str, digest: str, zero: list[list[int]],
                 bad_ranges: list[list[int]]) -> dict:
        body = {"digest": digest, "zero": zero, "bad_ranges": bad_ranges}
        return self.request("POST", protocol.complete_path(job, disk), json=body,
                            what=f"seal {disk}").json()

    def zero_chunks(self, job: str, disk: str, zero: list[list[int]]) -> None:
        """Declares held chunks zero before the seal (runs of chunk indices); the server forgets
        and punches them at once."""
        self.request("POST", protocol.zero_path(job, disk), json={"zero": zero}, ok=(200, 204),
                     what=f"declare chunks of {disk} unused")

    def post_events(self, job: str, event: dict, retry_for: float | None = None) -> None:
        self.request("POST", protocol.events_path(job), json=event, ok=(200, 201, 204),
                     what="send progress", retry_for=retry_for)

    def post_log(self, job: str, text: str, retry_for: float | None = None) -> None:
        self.request("POST", protocol.log_path(job), data=text.encode(),
                     headers={"Content-Type": "text/plain; charset=utf-8"}, ok=(200, 201, 204),
                     what="upload the agent log", retry_for=retry_for)


class Answer:
    """The answer to a call: ``status_code``, ``content`` (bytes), ``headers`` (lower case)."""

    def __init__(self, status_code: int, content: bytes, headers: dict[str, str]):
        self.status_code, self.content, self.headers = status_code, content, headers

    def json(self):
        return _loads(self.content)


class _Retry(Exception):
    """A failure worth another attempt; the message says what went wrong."""


class _Unpinned(ssl.SSLError):
    """The server's certificate is not the pinned one."""


class _TimedHTTPConnection(http.client.HTTPConnection):
    """Connects within the connect timeout, then waits up to the read timeout for data."""

    def __init__(self, host: str, port: int, timeout: tuple[float, float]):
        super().__init__(host, port, timeout=timeout[0])
        self.read_timeout = timeout[1]

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self.read_timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS that accepts the pinned certificate only (or, unpinned, what the context trusts)."""

    def __init__(self, host: str, port: int, timeout: tuple[float, float],
                 context: ssl.SSLContext, fingerprint: str | None):
        super().__init__(host, port, timeout=timeout[0], context=context)
        self.read_timeout = timeout[1]
        self.fingerprint = fingerprint

    def connect(self) -> None:
        super().connect()
        if self.fingerprint:
            der = self.sock.getpeercert(binary_form=True) or b""
            if hashlib.sha256(der).hexdigest() != self.fingerprint:
                self.close()
                raise _Unpinned("Fingerprints did not match")
        self.sock.settimeout(self.read_timeout)


def _read_into(resp: http.client.HTTPResponse, into: memoryview) -> int:
    """Reads the whole response body into `into`: the bytes read.

    A body longer than `into` is an error; so is one that stops before the length the server
    announced (a connection cut mid-body, a server that crashed): http.client.IncompleteRead,
    which callers retry as the network error it is, never a damaged chunk.
    """
    n = 0
    while n < len(into):
        got = resp.readinto(into[n:])
        if not got:
            break
        n += got
    else:
        if resp.read(1):
            raise http.client.HTTPException(f"the answer is longer than the {len(into)} bytes expected")
    if resp.length:  # http.client counts down what Content-Length announced
        raise http.client.IncompleteRead(bytes(0), resp.length)
    return n


def _unzstd_into(body: memoryview, into: memoryview) -> int:
    """Decompresses the zstd `body` into `into`: the bytes written (never more than fit)."""
    filled = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as reader:
            while filled < len(into):
                got = reader.readinto(into[filled:])
                if not got:
                    break
                filled += got
    except zstandard.ZstdError as e:
        log.warning("a zstd chunk body did not decompress (%s)", e)
    return filled


def _is_p2v_health(answer: bytes) -> bool:
    """Whether a raw HTTP answer is a p2v-server's health: JSON with "ok" and "protocol"."""
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        parsed = _loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and "protocol" in parsed and "ok" in parsed


def _is_trust_failure(err: Exception) -> bool:
    """A certificate that is not the pinned or a trusted one, as opposed to a handshake that a
    cut connection or a restarting server broke off (which is worth retrying)."""
    text = str(err)
    return "Fingerprints did not match" in text or "CERTIFICATE_VERIFY_FAILED" in text


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) < 160 else text[:157] + "…"
