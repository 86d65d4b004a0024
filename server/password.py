"""`p2v-server password`: set the admin password the dashboard takes besides the token."""

from __future__ import annotations

import argparse
import getpass
import sys

from server.dashboard.session import write_password
from server.datadir import CommandError, add_data_dir, data_dir

MIN_LENGTH = 12


def register(sub) -> None:
    p = sub.add_parser("password", help="set the dashboard's admin password",
                       description="Set the admin password the dashboard's sign-in takes besides "
                                   "the server's token (kept as a scrypt hash in the data "
                                   "directory; a running server takes it at the next sign-in). "
                                   "Asked twice on a terminal, else read from the first line of "
                                   "standard input.")
    add_data_dir(p)
    p.set_defaults(func=run)


def read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("New admin password: ")
    if getpass.getpass("The same again: ") != first:
        raise CommandError("The two passwords differ; nothing was changed. Run it again.")
    return first


def run(args: argparse.Namespace) -> int:
    directory = data_dir(args)
    if not directory.is_dir():
        raise CommandError(f"There is no data directory {directory}: start the server once with "
                           "--data-dir DIR, or give the directory it runs with.")
    password = read_password()
    if len(password) < MIN_LENGTH:
        raise CommandError(f"The password has {len(password)} characters; use at least "
                           f"{MIN_LENGTH}. Nothing was changed.")
    path = write_password(directory, password)
    print(f"The dashboard now takes this password (or the server's token) at sign-in; its hash "
          f"is in {path}.")
    return 0
