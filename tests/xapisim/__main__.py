"""Run the simulator as a process (for the e2e harness): prints its URL, then serves until killed.

    python -m xapisim --root DIR [--version xcp-ng-8.3] [--iso FILE] [--tools-iso FILE] [--sr-type ext] [--tls]
                      [--password secret]

Run from tests/ (or with tests/ on PYTHONPATH). Each VM (re)boot appends a line to
DIR/boots.jsonl with what to boot: the VM's UUID, firmware, boot order, disk files, the CD file
the firmware boots and every CD file the guest sees (the pool's tools ISO among them).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from xapisim.sim import VERSIONS, XapiSim


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m xapisim")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--version", choices=sorted(VERSIONS),
                        help="the release to be (its brand, product and API version, fields and calls); "
                             "default: a plain XCP-ng 8.2.1")
    parser.add_argument("--iso", type=Path)
    parser.add_argument("--tools-iso", type=Path, help="the file behind the pool's tools ISO")
    parser.add_argument("--sr-type", default="ext")
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with XapiSim(args.root, user=args.user, password=args.password, iso_path=args.iso,
                 sr_type=args.sr_type, tls=args.tls, tools_iso=args.tools_iso,
                 version=args.version) as sim:
        print(f"URL: {sim.url}", flush=True)
        if sim.cert:
            print(f"Certificate: {sim.cert}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
