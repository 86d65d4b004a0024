"""`p2v-agent probe`: print what the probe sees, save it as a recorded machine, or replay one."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agent.disk import blockdev
from agent.probe import ProbeError, Prober
from agent.probe.report import render


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe", help="show this machine's hardware, disks and operating systems",
        description="Probe this machine (or replay a recorded one) and print a report.")
    parser.add_argument("--save", metavar="FILE", type=Path,
                        help="also save the whole probe as JSON (a recorded machine)")
    parser.add_argument("--machine", metavar="FILE", type=Path,
                        help="replay this recorded machine instead of probing the hardware")
    parser.add_argument("--disks", metavar="LIST",
                        help="probe only these disks (comma-separated names or paths)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.machine and os.geteuid() != 0:
        print("The probe reads disks and mounts filesystems read-only: run it as root "
              "(or replay a recording with --machine FILE).", file=sys.stderr)
        return 1
    devices = [d.strip() for d in args.disks.split(",")] if args.disks else None
    live = {} if args.machine else {"devices": devices}
    try:
        machine = Prober(args.machine, **live).machine()
    except (ProbeError, blockdev.BlockDevError) as e:
        print(e, file=sys.stderr)
        return 1
    sys.stdout.write(machine.dumps() if args.json else render(machine))
    if args.save:
        try:
            args.save.write_text(machine.dumps())
        except OSError as e:
            print(f"Cannot save the probe to {args.save}: {e.strerror}.", file=sys.stderr)
            return 1
        print(f"Saved the probe to {args.save}.", file=sys.stderr)
    return 0
