"""`p2v-server serve`: start the receiving server and print what an agent needs to reach it."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import logging
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from server import tls
from server.guard import IDLE_TIMEOUT, AcceptErrors, Redact, Runner
from server.api import RUNNER_OPTIONS, make_app
from server import dashboard
from server.datadir import add_data_dir, data_dir, load_or_make_token
from server.store import DEFAULT_KEEP_VERSIONS, Store, private_dirs
from server.xenserver.cli import add_xapi_arguments, automatic_path

DEFAULT_LISTEN = "0.0.0.0:8443"
_ANY = ("", "0.0.0.0", "::")


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the receiving server (the default)",
                       description="Run the receiving server; prints URL, token, fingerprint and "
                                   "the kernel command line for the ISO.")
    add_data_dir(p)
    add_xapi_arguments(p)
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address and port to listen on (default: {DEFAULT_LISTEN})")
    p.add_argument("--token", default=None,
                   help="the token agents must present (default: made once, kept in the data dir)")
    p.add_argument("--metrics-token", default=None, metavar="TOKEN",
                   help="a second token that may read /metrics only (for a Prometheus scrape "
                        "job); the server's token reads it too")
    p.add_argument("--plain-http", action="store_true",
                   help="serve plain HTTP instead of TLS (a lab without eavesdroppers only)")
    p.add_argument("--keep-versions", type=int, default=DEFAULT_KEEP_VERSIONS, metavar="N",
                   help="sealed versions of each image kept for warm migration (each pre-copy "
                        f"pass and the final sync writes one; default: {DEFAULT_KEEP_VERSIONS})")
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT, metavar="SECONDS",
                   help="close a connection with no request in progress after this long, also "
                        f"one that never sends a request (default: {IDLE_TIMEOUT:g})")
    p.set_defaults(func=run)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r} is not HOST:PORT (for example 0.0.0.0:8443 or [::]:8443).")
    return host.strip("[]"), int(port)


def local_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback, for the URL to print."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show", "up"], capture_output=True,
                             text=True, timeout=5, check=True).stdout
        found = [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
                 if a.get("scope") == "global"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        found = []
    return found or ["127.0.0.1"]


def urls(host: str, port: int, scheme: str) -> list[str]:
    hosts = local_addresses() if host in _ANY else [host]
    return [f"{scheme}://[{h}]:{port}" if ":" in h else f"{scheme}://{h}:{port}" for h in hosts]


def banner(urls_: list[str], token: str, fingerprint: str | None, directory: Path) -> str:
    lines = ["xenp2v receiving server"]
    lines += [f"  URL:          {u}" for u in urls_]
    lines.append(f"  Token:        {token}")
    lines.append(f"  Fingerprint:  {fingerprint or '(none: plain HTTP)'}")
    lines.append(f"  Dashboard:    {urls_[0]}/ (sign in with the token, or the password "
                 "set with p2v-server password); metrics at /metrics")
    lines.append(f"  Data:         {directory}")
    lines.append("Kernel command line to add in the ISO's boot menu (Tab or e to edit):")
    for u in urls_:
        flags = [f"p2v.server={u}", f"p2v.token={token}"]
        if fingerprint:
            flags.append(f"p2v.fingerprint={fingerprint}")
        flags.append("p2v.mode=auto")
        lines.append("  " + " ".join(flags))
    return "\n".join(lines)


def keep_freed_memory() -> None:
    """Tell glibc to reuse freed chunk buffers instead of returning them to the kernel.

    Every chunk passes through several buffers of megabytes; by default glibc maps and unmaps
    each one, and the page faults cost more system time than the upload itself (measured: three
    quarters of the server's CPU). Keeping freed memory makes them cheap.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold, m_arena_max = -1, -2, -3, -8
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 512 << 20)
    libc.mallopt(m_top_pad, 64 << 20)
    # One arena: a buffer freed by the event loop is reused by whichever worker asks next. With
    # an arena per thread, each kept its own freed chunks (measured: 200 MB during a restore).
    libc.mallopt(m_arena_max, 1)


def run(args: argparse.Namespace) -> int:
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    directory = data_dir(args)
    try:
        private_dirs(directory)
        token = args.token or load_or_make_token(directory)
        ssl_context, fingerprint = None, None
        if not args.plain_http:
            cert, key = tls.ensure_certificate(directory / "tls")
            ssl_context, fingerprint = tls.server_context(cert, key), tls.fingerprint(cert)
        store = Store(directory, keep_versions=args.keep_versions)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as err:
        print(f"Cannot use the data directory {directory}: {err}. Choose another with --data-dir.",
              file=sys.stderr)
        return 1
    for handler in logging.getLogger().handlers:  # no token in the log, whoever logs it
        handler.addFilter(Redact([token, args.metrics_token]))
    scheme = "http" if args.plain_http else "https"
    try:
        hooks = automatic_path(args, store)
    except ValueError as err:
        store.close()
        print(err, file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(store, token, host, port, ssl_context,
                                  banner(urls(host, port, scheme), token, fingerprint, directory),
                                  hooks, args.metrics_token, args.idle_timeout))
    finally:
        store.close()


async def _serve(store: Store, token: str, host: str, port: int, ssl_context, text: str,
                 hooks: dict, metrics_token: str | None = None,
                 idle_timeout: float = IDLE_TIMEOUT) -> int:
    app = make_app(store, token, **hooks)
    dashboard.install(app, token, metrics_token, hooks)
    runner = Runner(app, handle_signals=False, keepalive_timeout=idle_timeout, **RUNNER_OPTIONS)
    # Handlers first: whoever reads the banner (systemd, a script, a test) may stop the server
    # at once, and a SIGTERM before them killed it with status -15 instead of a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host or None, port, ssl_context=ssl_context, backlog=512)
        try:
            await site.start()
        except OSError as err:
            print(f"Cannot listen on {host}:{port}: {err.strerror}. Choose another with --listen.",
                  file=sys.stderr)
            return 1
        loop.set_exception_handler(AcceptErrors())
        print(text, flush=True)
        await stop.wait()
        logging.getLogger("xenp2v.server").info("Stopping")
        return 0
    finally:
        await runner.cleanup()
