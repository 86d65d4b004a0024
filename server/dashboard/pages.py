"""The dashboard's pages and actions: aiohttp handlers that render server-side HTML.

Pages need a session (else they send the browser to the sign-in page); the parts the page's
script polls answer 401 instead. Every POST passes ``guard``: this server's origin, and for
actions the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
import urllib.parse
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import jinja2
from aiohttp import web

from server.api import read_body
from server.dashboard import model
from server.dashboard.downloads import send_export
from server.dashboard.metrics import COUNTERS
from server.dashboard.session import (
    Session, Sessions, clear_cookie, csrf_ok, same_origin, secret_ok, set_cookie,
)
from server.export import FORMATS
from server.verify import verify_job
from xenp2v.protocol import ErrorCode, ProtocolError, check_id

log = logging.getLogger("xenp2v.server")

# How long a refused sign-in waits before its answer: guessing a token stays slow.
REFUSAL_DELAY = 1.0
LOG_PIECE = 256 * 1024     # the most of the agent log one poll returns
LOG_KEPT = 1024 * 1024     # the most of the agent log a page shows (its end); the rest: download
FORM_LIMIT = 4096          # bytes of a dashboard form (sign-in, sign-out, an action's)
# Sign-ins are checked (scrypt, when a password is set) in their own threads, never the API's:
SIGNIN_THREADS = 2
SIGNIN_WAITING = 8         # sign-ins checked or waiting at once; more are refused (429)
# An address refused this many times within FAILURE_WINDOW s is refused (429) until it is over.
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0
TIMELINE = 300             # events shown on a job's page, newest last
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",   # "no-referrer" makes a form's Origin "null"
    "Cache-Control": "no-store",
}


class Dashboard:
    """The dashboard of one server: its store, secrets, sessions, templates and background work."""

    def __init__(self, store, token: str, pool, hooks: dict | None = None):
        self.store, self.token, self.pool = store, token, pool
        self.hooks = hooks or {}
        self.sessions = Sessions()
        self.rates, self.rates_lock = model.Rates(), threading.Lock()
        self.signin_pool = ThreadPoolExecutor(SIGNIN_THREADS, thread_name_prefix="p2v-signin")
        self.signins = 0                                   # checked or waiting now
        self.failures: dict[str, deque[float]] = {}        # address -> times of refusals
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("server.dashboard", "templates"),
            autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.ChainableUndefined)   # reports and inventories vary by agent version
        self.templates.filters.update(human=model.human, duration=model.duration)
        self.templates.globals.update(formats=FORMATS, action_text=model.ACTION_TEXT)

    # --- plumbing -------------------------------------------------------------------------

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, *args))

    def render(self, name: str, status: int = 200, **values) -> web.Response:
        html = self.templates.get_template(name).render(**values)
        return web.Response(text=html, status=status, content_type="text/html",
                            headers=SECURITY_HEADERS)

    def error_page(self, session: Session | None, err: ProtocolError) -> web.Response:
        return self.render("error.html", status=err.status, session=session, detail=err.detail)

    def run_later(self, fn, *args) -> None:
        """Runs slow work (verify, provision) in a worker thread, after the answer is on its way."""
        def call():
            try:
                fn(*args)
            except Exception:
                log.exception("The dashboard's %s of %s failed", getattr(fn, "__name__", fn), args)

        self.pool.submit(call)

    # --- sign-in ----------------------------------------------------------------------------

    async def signin_page(self, request: web.Request) -> web.Response:
        if self.sessions.of(request):
            raise web.HTTPSeeOther("/")
        return self.render("signin.html", session=None, refused=False)

    async def signin(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            return self.refuse_cross_site(request, None)
        address = request.remote or ""
        if self.throttled(address, time.monotonic()):
            return self.too_many(f"There were {MAX_FAILURES} refused sign-ins from your address "
                                 f"within {FAILURE_WINDOW:.0f} s: wait a minute, then sign in "
                                 "with the server's token or the admin password.")
        if self.signins >= SIGNIN_WAITING:
            return self.too_many("The server is checking many sign-ins at once: try again in a "
                                 "few seconds.")
        self.signins += 1
        try:
            form = await read_form(request)
            given = form.get("secret")
            ok = isinstance(given, str) and await asyncio.get_running_loop().run_in_executor(
                self.signin_pool, secret_ok, given, self.token, self.store.data_dir)
        except ProtocolError as err:
            return self.error_page(None, err)
        finally:
            self.signins -= 1
        if not ok:
            self.failures.setdefault(address, deque()).append(time.monotonic())
            request.app[COUNTERS].add("sign_in_failures")
            log.info("Refused a dashboard sign-in from %s: wrong token or password", request.remote)
            await asyncio.sleep(REFUSAL_DELAY)
            return self.render("signin.html", status=401, session=None, refused=True)
        session = self.sessions.new()
        log.info("Dashboard sign-in from %s", request.remote)
        response = see_other("/")
        set_cookie(response, request, session)
        return response

    def throttled(self, address: str, now: float) -> bool:
        """Whether ``address`` had MAX_FAILURES refusals within the last FAILURE_WINDOW s."""
        for key in [k for k, times in self.failures.items() if now - times[-1] > FAILURE_WINDOW]:
            del self.failures[key]      # forget the addresses that went quiet
        times = self.failures.get(address)
        while times and now - times[0] > FAILURE_WINDOW:
            times.popleft()
        return bool(times) and len(times) >= MAX_FAILURES

    def too_many(self, detail: str) -> web.Response:
        html = self.templates.get_template("error.html").render(session=None, detail=detail)
        return web.Response(text=html, status=429, content_type="text/html",
                            headers={**SECURITY_HEADERS, "Retry-After": "60"})

    async def signout(self, request: web.Request) -> web.StreamResponse:
        session = self.guard(request)
        if isinstance(session, web.Response):
            return session
        try:
            form = await read_form(request)
        except ProtocolError as err:
            return self.error_page(session, err)
        if not csrf_ok(session, form.get("csrf")):
            return self.error_page(session, ProtocolError(
                ErrorCode.FORBIDDEN, "This sign-out did not come from this server's page: use "
                                     "the Sign out button."))
        self.sessions.end(session)
        response = see_other("/signin")
        clear_cookie(response, request)
        return response

    def guard(self, request: web.Request) -> Session | web.Response:
        """The session of a POST from this server's own page, or the answer refusing it."""
        session = self.sessions.of(request)
        if not same_origin(request):
            return self.refuse_cross_site(request, session)
        if session is None:
            return self.render("signin.html", status=401, session=None, refused=False,
                               note="Your session has ended: sign in again, then repeat the action.")
        return session

    def refuse_cross_site(self, request: web.Request, session: Session | None) -> web.Response:
        log.info("Refused a cross-site %s %s from %s", request.method, request.path, request.remote)
        return self.error_page(session, ProtocolError(
            ErrorCode.FORBIDDEN, "This request came from another site's page, so it was "
                                    "refused: use the buttons on this server's own pages."))

    # --- pages ------------------------------------------------------------------------------

    async def jobs_page(self, request: web.Request) -> web.Response:
        session = self.signed_in(request)
        jobs = await self.call(self.job_views)
        return self.render("jobs.html", session=session, jobs=jobs)

    async def jobs_part(self, request: web.Request) -> web.Response:
        session = self.sessions.of(request)
        if session is None:
            return web.Response(status=401, text="Sign in again.", headers=SECURITY_HEADERS)
        jobs = await self.call(self.job_views)
        return self.render("jobs_part.html", session=session, jobs=jobs)

    def job_views(self) -> list[dict]:
        return [self.job_view(job) for job in reversed(self.store.list_jobs())]

    def job_view(self, job: dict) -> dict:
        with self.rates_lock:
            rates = self.rates.look(job, time.monotonic())
        return model.job_view_or_stub(job, self.store.latest_events(job["id"]), rates)

    async def job_page(self, request: web.Request) -> web.Response:
        session = self.signed_in(request)
        try:
            values = await self.call(self.job_values, request.match_info["job"])
        except ProtocolError as err:
            return self.error_page(session, err)
        return self.render("job.html", session=session, **values)

    async def job_part(self, request: web.Request) -> web.Response:
        session = self.sessions.of(request)
        if session is None:
            return web.Response(status=401, text="Sign in again.", headers=SECURITY_HEADERS)
        try:
            values = await self.call(self.job_values, request.match_info["job"])
        except ProtocolError as err:
            return web.Response(status=err.status, text=err.detail, headers=SECURITY_HEADERS)
        return self.render("job_part.html", session=session, **values)

    def job_values(self, job_id: str) -> dict:
        job = self.store.get_job(check_id(job_id, "job id"))
        events = self.store.events(job["id"])
        repair = model.repair_view(job.get("repair"))
        records = dict(job.get("records") or {})
        return {
            "job": job, "view": self.job_view(job),
            "inventory": model.inventory_view(job.get("inventory")),
            "events": [model.event_view(e) for e in events[-TIMELINE:]], "events_total": len(events),
            "repair": repair, "diff_lines": model.diff_lines,
            "xenserver": records.pop("xenserver", None),
            "verify": records.pop("verify", None),
            "records": records,
            "actions": model.actions(job, bool(self.hooks.get("on_job_sealed"))),
        }

    async def agent_log(self, request: web.Request) -> web.StreamResponse:
        """The agent log from byte ``from`` on (at most LOG_PIECE, whole UTF-8 characters);
        ``?tail=1``: from the start of a line within its last LOG_KEPT bytes instead;
        ``?download=1``: all of it, as a file. X-Log-Start: where the piece begins, X-Log-Next:
        where to go on, X-Log-Size: the log's size now. 404 for a job that is not there."""
        if self.sessions.of(request) is None:
            return web.Response(status=401, text="Sign in again.", headers=SECURITY_HEADERS)
        try:
            job = check_id(request.match_info["job"], "job id")
            start = max(0, int(request.query.get("from", "0")))
        except (ProtocolError, ValueError):
            return web.Response(status=400, text="Bad request: ?from= takes a byte offset.",
                                headers=SECURITY_HEADERS)
        try:
            await self.call(self.store.get_job, job)
        except ProtocolError as err:
            return web.Response(status=err.status, text=err.detail, headers=SECURITY_HEADERS)
        path = self.store.log_path(job)
        if request.query.get("download"):
            if not path.exists():
                return web.Response(status=404, text=f"Job {job} has no agent log yet.",
                                    headers=SECURITY_HEADERS)
            return web.FileResponse(path, headers={
                **SECURITY_HEADERS, "Content-Type": "text/plain; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{job}-agent.log"'})
        tail = LOG_KEPT if request.query.get("tail") else None
        start, data, size = await self.call(_read_from, path, start, LOG_PIECE, tail)
        return web.Response(body=data, content_type="text/plain", charset="utf-8",
                            headers={**SECURITY_HEADERS, "X-Log-Start": str(start),
                                     "X-Log-Next": str(start + len(data)),
                                     "X-Log-Size": str(size)})

    async def confirm_page(self, request: web.Request) -> web.Response:
        session = self.signed_in(request)
        action = request.match_info["action"]
        try:
            values = await self.call(self.job_values, request.match_info["job"])
        except ProtocolError as err:
            return self.error_page(session, err)
        if action not in values["actions"]:
            return self.error_page(session, self.not_now(values["job"], action))
        return self.render("confirm.html", session=session, action=action, **values)

    async def export(self, request: web.Request) -> web.StreamResponse:
        session = self.signed_in(request)
        try:
            job = check_id(request.match_info["job"], "job id")
            disk = request.query.get("disk") or None
            if disk is not None:
                check_id(disk, "disk id")
            return await send_export(request, self.store, job, request.match_info["format"], disk,
                                     self.pool)
        except ProtocolError as err:
            return self.error_page(session, err)

    def signed_in(self, request: web.Request) -> Session:
        session = self.sessions.of(request)
        if session is None:
            raise web.HTTPSeeOther("/signin")
        return session

    # --- actions ----------------------------------------------------------------------------

    async def act(self, request: web.Request) -> web.StreamResponse:
        session = self.guard(request)
        if isinstance(session, web.Response):
            return session
        try:
            form = await read_form(request)
        except ProtocolError as err:
            return self.error_page(session, err)
        if not csrf_ok(session, form.get("csrf")):
            log.info("Refused %s %s from %s: no valid CSRF token", request.method, request.path,
                     request.remote)
            return self.error_page(session, ProtocolError(
                ErrorCode.UNAUTHORIZED, "This form is out of date or did not come from this "
                                        "server: open the job's page again and repeat the action."))
        job_id, action = request.match_info["job"], request.match_info["action"]
        try:
            job = await self.call(self.store.get_job, check_id(job_id, "job id"))
            if action not in model.actions(job, bool(self.hooks.get("on_job_sealed"))):
                raise self.not_now(job, action)
            where = await self.call(self.do, job_id, action)
        except ProtocolError as err:
            return self.error_page(session, err)
        log.info("Dashboard: %s of job %s", action, job_id)
        return see_other(where)

    def do(self, job_id: str, action: str) -> str:
        """Carries out an action (slow ones in the background); the page to go to next."""
        if action == "cancel":
            self.store.cancel_job(job_id, "Cancelled from the dashboard at "
                                  + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()) + ".")
        elif action == "delete":
            self.store.delete_job(job_id)
            return "/"
        elif action == "verify":
            self.store.record(job_id, "verify", {"at": _now(), "running": True})
            self.run_later(self.verify, job_id)
        elif action == "provision":
            self.run_later(self.hooks["on_job_sealed"], job_id)
        return f"/jobs/{job_id}"

    def verify(self, job_id: str) -> None:
        try:
            reports = verify_job(self.store, job_id)
            problems = sum(len(r.problems) for r in reports)
            result = {"at": _now(), "ok": not problems, "lines": [r.line() for r in reports]}
        except (OSError, ProtocolError) as err:
            result = {"at": _now(), "ok": False, "lines": [f"The verification could not run: {err}"]}
        self.store.record(job_id, "verify", result)
        log.info("Dashboard: verified job %s: %s", job_id, "all good" if result["ok"] else "problems")

    @staticmethod
    def not_now(job: dict, action: str) -> ProtocolError:
        if action not in model.ACTION_TEXT:
            return ProtocolError(ErrorCode.NOT_FOUND, f"There is no action {action!r}.")
        if action == "provision":
            why = ("this server has no pool to make VMs on (start it with --xapi-url and the other "
                   "pool options), or the job is not sealed")
        else:
            why = f"the job is {job['state']}"
        return ProtocolError(ErrorCode.CONFLICT, f"Job {job['id']} cannot be given '{action}' now: "
                                                 f"{why}.")


async def read_form(request: web.Request) -> dict[str, str]:
    """The urlencoded form of a dashboard POST, first value of each field; at most FORM_LIMIT
    bytes are read (ProtocolError 413 beyond, before anything is kept), 400 when malformed."""
    body = await read_body(request, FORM_LIMIT, "form")
    try:
        fields = urllib.parse.parse_qs(body.decode("ascii"), max_num_fields=16,
                                       errors="surrogateescape")
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "The form is not a web form "
                            "(application/x-www-form-urlencoded): use the dashboard's own pages.") from None
    return {k: v[0] for k, v in fields.items()}


def see_other(where: str) -> web.Response:
    return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": where})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_from(path, start: int, limit: int, tail: int | None = None) -> tuple[int, bytes, int]:
    """(where the piece begins, at most ``limit`` bytes of whole UTF-8 characters from
    ``start`` on, the file's size); ``tail``: from the first line start within the last
    ``tail`` bytes instead (the start when the file is smaller)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if tail is not None and size > tail:
                f.seek(size - tail)
                head = f.read(min(tail, 64 * 1024))
                newline = head.find(b"\n")
                start = size - tail + (newline + 1 if newline >= 0 else 0)
            start = min(start, size)
            f.seek(start)
            data = f.read(limit + 3)
    except FileNotFoundError:
        return 0, b"", 0
    skip = 0
    while skip < 3 and skip < len(data) and _continuation(data[skip]):
        skip += 1                    # ``start`` fell inside a character: begin at the next
    start, data = start + skip, data[skip:skip + limit]
    return start, data[:_whole_characters(data, start + len(data) == size)], size


def _continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def _whole_characters(data: bytes, at_end: bool) -> int:
    """How many bytes of ``data`` hold whole UTF-8 characters: a character cut at its end is
    left for the next piece (kept when the file ends there: it will not be completed)."""
    if at_end:
        return len(data)
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if not _continuation(byte):
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 6 else 3 if byte >> 4 == 14 else 4 \
                if byte >> 3 == 30 else 1
            return len(data) if need <= back else len(data) - back
    return len(data)


STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = resources.files("server.dashboard").joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=STATIC[name],
                        headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"})
