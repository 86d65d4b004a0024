"""`p2v-agent capture`: stream this machine's disks to a p2v-server, with no prompt."""

from __future__ import annotations

import argparse
import sys

from agent import settings as settings_mod
from agent.transfer.capture import CaptureError, run
from agent.transfer.progress import PlainLines, Progress, human, terminal_logging


def register(subparsers) -> None:
    p = subparsers.add_parser("capture", help="send disks to the server (no TUI)",
                              description="Capture disks into a job on a p2v-server; a job "
                              "stopped halfway resumes where it stopped.")
    p.add_argument("--server", metavar="URL", help="https://HOST:PORT of the p2v-server")
    p.add_argument("--token", metavar="T", help="the token p2v-server printed")
    p.add_argument("--fingerprint", metavar="sha256:HEX", help="the server certificate's fingerprint")
    p.add_argument("--disks", metavar="LIST", help="sda,/dev/loop3 or all (default: all)")
    p.add_argument("--name", help="the job's name (default: the host name)")
    p.add_argument("--streams", metavar="N", help="parallel connections (default 8)")
    p.add_argument("--compress", metavar="auto|zstd|off", help="zstd compression (default auto)")
    p.add_argument("--bwlimit", metavar="RATE", help="bandwidth limit, e.g. 50M (bytes/s)")
    p.add_argument("--job", metavar="ID", help="resume this unfinished job (refused unless its "
                   "disks are these: ids, sizes, serials, partition tables, filesystems)")
    p.add_argument("--keep-pagefile", action="store_true", default=None,
                   help="send Windows' pagefile.sys, swapfile.sys and hiberfil.sys too (by default "
                   "their extents are free: the VM does not need their content)")
    settings_mod.add_source_arguments(p)
    p.add_argument("--allow-hibernated", action="store_true", default=None,
                   help="copy a Windows volume left hibernated (hibernation, Fast Startup) or "
                   "with its log to replay anyway, whole: its data is kept, but repair refuses "
                   "such a copy (the capture stops on one otherwise)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    terminal_logging()
    try:
        settings = settings_mod.for_command(args, "capture")
    except settings_mod.SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        result = run(settings, Progress([PlainLines()], interval=2.0))
    except CaptureError as e:
        print(f"Capture failed: {e}", file=sys.stderr)
        return 1
    for d in result.disks:
        if result.sync:
            print(f"{d.id}: final sync sealed version {result.sync} of job {result.job}: "
                  f"{human(d.changed)} changed since the last pass, {human(d.sent)} sent, "
                  f"{human(d.planned)} read of {human(d.size)}")
            continue
        print(f"{d.id}: sealed in job {result.job}: {human(d.sent)} sent for {human(d.planned)} "
              f"read of {human(d.size)}; {d.data_chunks} data, {d.zero_chunks} zero chunks"
              + (f"; {len(d.bad_ranges)} unreadable ranges zero-filled" if d.bad_ranges else ""))
    return 0
