"""HTTP client for the receiving server: one connection per thread, certificate pinned, retries.

Every call is retried with exponential backoff while the server cannot be reached or answers
502/503/504, for at most `retry_for` seconds per call; then it fails with a sentence. Chunk uploads
are idempotent on the server, so a retry after a cut connection is always safe.
"""

from __future__ import annotations

import hashlib
import logging
import random
import ssl
import threading
import time
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

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


class _PinnedAdapter(HTTPAdapter):
    """Accepts exactly the certificate whose SHA-256 fingerprint the technician was given."""

    def __init__(self, fingerprint: str, **kw):
        self._fingerprint = fingerprint
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kw)


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
                 retry_for: float = 600.0, timeout: tuple[float, float] = (15.0, 60.0)):
        if not url or urlsplit(url).scheme not in ("http", "https"):
            raise ServerError(f"The server address {url!r} is not a URL: give it as "
                              "https://HOST:PORT, as p2v-server printed it.")
        if not token:
            raise ServerError("No token given: pass the token p2v-server printed (--token or "
                              "p2v.token=).")
        self.url = url.rstrip("/")
        self.token = token
        self.fingerprint = _fingerprint_hex(fingerprint) if fingerprint else None
        self.retry_for = retry_for
        self.timeout = timeout
        self._local = threading.local()

    # --- plumbing ---------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers[protocol.AUTH_HEADER] = f"Bearer {self.token}"
            if self.fingerprint:
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
                s.mount("https://", _PinnedAdapter(self.fingerprint))
            self._local.session = s
        return s

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201),
                what: str = "talk to the server", retry_for: float | None = None,
                **kw) -> requests.Response:
        retry_for = self.retry_for if retry_for is None else retry_for
        deadline = time.monotonic() + retry_for
        delay = BACKOFF_FIRST
        while True:
            try:
                # verify is passed per call: a REQUESTS_CA_BUNDLE in the environment would
                # otherwise override the session's and defeat the pin.
                resp = self._session().request(method, self.url + path, timeout=self.timeout,
                                               verify=not self.fingerprint, **kw)
            except requests.exceptions.SSLError as e:
                if _is_trust_failure(e):
                    raise ServerError(self._tls_message(e)) from None
                problem = f"the secure connection to {self.url} broke ({_short(e)})"
            except (requests.ConnectionError, requests.Timeout) as e:
                problem = f"cannot reach {self.url} ({_short(e)})"
            else:
                if resp.status_code in ok:
                    return resp
                if resp.status_code not in RETRY_STATUS:
                    raise self._refusal(resp, what)
                problem = f"the server answered {resp.status_code}"
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"Could not {what}: {problem}, and it kept failing for "
                                  f"{retry_for:.0f} s. Check the network and that p2v-server "
                                  "runs, then start again: the transfer resumes where it stopped.")
            wait = min(delay * random.uniform(0.8, 1.2), left)
            log.warning("%s; retrying in %.1f s", problem, wait)
            time.sleep(wait)
            delay = min(delay * 2, BACKOFF_MAX)

    def _refusal(self, resp: requests.Response, what: str) -> ServerError:
        try:
            body = resp.json()
            code, detail = body.get("error"), body.get("detail", "")
        except ValueError:
            code, detail = None, resp.text[:200]
        if resp.status_code == 401:
            return ServerError("The server refused the token: check --token (p2v.token=) against "
                               "what p2v-server printed.", 401, code)
        return ServerError(f"Could not {what}: the server answered {resp.status_code}: {detail}",
                           resp.status_code, code)

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
        return self.request("POST", protocol.jobs_path(), json=inventory,
                            what="create the job").json()

    def job(self, job: str) -> dict:
        return self.request("GET", protocol.job_path(job), what=f"read job {job}").json()

    def held_chunks(self, job: str, disk: str) -> dict[int, str]:
        """Chunk index -> digest of what the server already holds of `disk`."""
        body = self.request("GET", protocol.chunks_path(job, disk),
                            what=f"ask which chunks of {disk} the server holds").json()
        return {int(i): d for i, d in body.get("chunks", {}).items()}

    def put_chunk(self, job: str, disk: str, index: int, body, digest: str,
                  compressed: bool) -> None:
        headers = {protocol.DIGEST_HEADER: digest, "Content-Type": "application/octet-stream"}
        if compressed:
            headers[protocol.ENCODING_HEADER] = protocol.ZSTD
        # A bytes-like body goes out as it is, with its Content-Length (no copy).
        self.request("PUT", protocol.chunk_path(job, disk, index), data=body, headers=headers,
                     ok=(200, 201, 204), what=f"send chunk {index} of {disk}")

    def get_chunk(self, job: str, disk: str, index: int) -> bytes:
        resp = self.request("GET", protocol.chunk_path(job, disk, index),
                            what=f"fetch chunk {index} of {disk}")
        return resp.content

    def image_map(self, job: str, disk: str) -> dict:
        return self.request("GET", protocol.map_path(job, disk),
                            what=f"fetch the map of {disk}").json()

    def complete(self, job: str, disk: str, digest: str, zero: list[list[int]],
                 bad_ranges: list[list[int]]) -> dict:
        body = {"digest": digest, "zero": zero, "bad_ranges": bad_ranges}
        return self.request("POST", protocol.complete_path(job, disk), json=body,
                            what=f"seal {disk}").json()

    def post_events(self, job: str, event: dict, retry_for: float | None = None) -> None:
        self.request("POST", protocol.events_path(job), json=event, ok=(200, 201, 204),
                     what="send progress", retry_for=retry_for)

    def post_log(self, job: str, text: str) -> None:
        self.request("POST", protocol.log_path(job), data=text.encode(),
                     headers={"Content-Type": "text/plain; charset=utf-8"}, ok=(200, 201, 204),
                     what="upload the agent log")


def _is_trust_failure(err: Exception) -> bool:
    """A certificate that is not the pinned or a trusted one, as opposed to a handshake that a
    cut connection or a restarting server broke off (which is worth retrying)."""
    text = str(err)
    return "Fingerprints did not match" in text or "CERTIFICATE_VERIFY_FAILED" in text


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) < 160 else text[:157] + "…"
