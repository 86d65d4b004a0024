"""Where the server keeps its state, and the token it is born with."""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server.store import Store


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/xenp2v")
    return Path.home() / ".local" / "share" / "xenp2v"


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help=f"the server's data directory (default: {default_data_dir()})")


def data_dir(args: argparse.Namespace) -> Path:
    return (args.data_dir or default_data_dir()).expanduser().resolve()


def no_store_here(directory: Path) -> str | None:
    """A sentence saying why ``directory`` holds no server data, or None when it does."""
    if (directory / "xenp2v.db").is_file():
        return None
    return (f"There is no xenp2v server data in {directory}: give the directory the server runs "
            "with, as --data-dir DIR.")


class CommandError(Exception):
    """A sentence for the person at the command line; `p2v-server` prints it and exits 1."""


@contextmanager
def existing_store(args: argparse.Namespace) -> Iterator[Store]:
    """The store of the server's data directory (--data-dir), closed afterwards.

    For the commands that read what a running or past server kept: they never make a new one.
    """
    directory = data_dir(args)
    if problem := no_store_here(directory):
        raise CommandError(problem)
    store = Store(directory)
    try:
        yield store
    finally:
        store.close()


def new_token() -> str:
    """32 URL-safe characters; never one starting with '-', which a command line would take for
    an option (`p2v-agent capture --token -x…`)."""
    while (token := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return token


def load_or_make_token(directory: Path) -> str:
    """The token kept in ``directory/token``; made (readable by the owner only) on first start."""
    path = directory / "token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = new_token()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return token
