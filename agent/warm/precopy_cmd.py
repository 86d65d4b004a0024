"""`p2v-agent precopy`: a pre-copy pass of warm migration on this running system
(agent/warm/precopy.py, the same single-file sender p2v-server offers for machines without this
agent)."""

from __future__ import annotations

import argparse
import sys

from agent.warm import precopy


def register(subparsers) -> None:
    p = subparsers.add_parser("precopy", help="copy the disks of this running system (warm "
                              "migration: the final sync from the stick sends what changed)",
                              description="A pre-copy pass on the running system; run it as "
                              "often as you like, then boot the stick for the final sync.")
    precopy.add_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        precopy.run(args)
    except precopy.PrecopyError as err:
        print(f"Pre-copy failed: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"Pre-copy failed: cannot read {err.filename or 'a disk'}: {err.strerror}. Run it "
              "as root.", file=sys.stderr)
        return 1
    return 0
