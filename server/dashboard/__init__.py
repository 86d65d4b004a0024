"""The dashboard and /metrics, on the API's own port: ``install(app, ...)`` adds them to the
application ``server.api.make_app`` made. Templates and static files are package data: nothing
is fetched from anywhere at run time."""

from __future__ import annotations

import hmac

from aiohttp import web

from server.api import POOL, STORE, error_response
from server.dashboard import metrics
from server.dashboard.pages import Dashboard, static
from xenp2v.protocol import AUTH_HEADER, ErrorCode

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def install(app: web.Application, token: str, metrics_token: str | None = None,
            hooks: dict | None = None) -> Dashboard:
    """Adds the dashboard's routes and /metrics to ``app`` (before it starts). /metrics takes
    ``Authorization: Bearer`` with the server's token or ``metrics_token``; ``hooks`` are the
    automatic path's (``on_job_sealed`` provisions a job)."""
    app[metrics.COUNTERS] = metrics.Counters()
    app.middlewares.insert(0, metrics.count)
    board = Dashboard(app[STORE], token, app[POOL], hooks)
    scrape_tokens = [t.encode() for t in (token, metrics_token) if t]

    async def serve_metrics(request: web.Request) -> web.Response:
        scheme, _, given = request.headers.get(AUTH_HEADER, "").partition(" ")
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
        # Every token is compared, so the time taken does not say which one came close.
        matches = [hmac.compare_digest(given_bytes, t) for t in scrape_tokens]
        if scheme.lower() != "bearer" or not any(matches):
            refused = error_response(ErrorCode.UNAUTHORIZED,
                                     "A valid 'Authorization: Bearer <token>' header is needed: "
                                     "the server's token or its metrics token.")
            refused.headers["WWW-Authenticate"] = "Bearer"
            return refused
        text = await board.call(metrics.exposition, app[metrics.COUNTERS], app[STORE])
        return web.Response(text=text, headers={"Content-Type": METRICS_TYPE})

    app.add_routes([
        web.get("/", board.jobs_page),
        web.get("/signin", board.signin_page),
        web.post("/signin", board.signin),
        web.post("/signout", board.signout),
        web.get("/parts/jobs", board.jobs_part),
        web.get("/parts/jobs/{job}", board.job_part),
        web.get("/jobs/{job}", board.job_page),
        web.get("/jobs/{job}/log", board.agent_log),
        web.get("/jobs/{job}/export/{format}", board.export),
        web.get("/jobs/{job}/confirm/{action}", board.confirm_page),
        web.post("/jobs/{job}/{action}", board.act),
        web.get("/static/{name}", static),
        web.get("/metrics", serve_metrics),
    ])
    return board

