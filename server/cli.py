"""`p2v-server`: one argparse front for every subcommand; `serve` when none is given.

Each subcommand lives in its own module, which exposes ``register(subparsers)``: it adds its parser
(with ``--data-dir``) and sets ``func`` to a callable taking the parsed arguments and returning the
exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from server.datadir import CommandError
from xenp2v.protocol import ProtocolError

# Modules that provide subcommands, in the order `--help` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = ("server.serve", "server.jobs", "server.verify",
                                         "server.export", "server.xenserver.cli", "server.password")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2v-server",
        description="Receive disk images from xenp2v agents, verify and serve them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]
    try:
        parser = build_parser()
    except ModuleNotFoundError as err:   # an install with the agent's extra only
        print(f"p2v-server needs the server's libraries, and {err.name} is not installed: install "
              "them with pip install 'xenp2v[server]' (or run make venv in a checkout).",
              file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except CommandError as err:
        print(err, file=sys.stderr)
        return 1
    except ProtocolError as err:      # a job or disk the store does not know, in its own words
        print(err.detail, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
