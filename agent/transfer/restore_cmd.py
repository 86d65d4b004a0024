"""`p2v-agent restore`: write a sealed image from a p2v-server onto a local disk."""

from __future__ import annotations

import argparse
import sys

from agent import settings as settings_mod
from agent.transfer.progress import PlainLines, Progress, terminal_logging
from agent.transfer.restore import SAMPLE_BLOCKS, RestoreError, run


def register(subparsers) -> None:
    p = subparsers.add_parser("restore", help="write a sealed image onto a disk here",
                              description="Restore one disk of a sealed job onto DEVICE; run it "
                              "again after any interruption to finish.")
    p.add_argument("--server", metavar="URL", help="https://HOST:PORT of the p2v-server")
    p.add_argument("--token", metavar="T", help="the token p2v-server printed")
    p.add_argument("--fingerprint", metavar="sha256:HEX", help="the server certificate's fingerprint")
    p.add_argument("--job", metavar="ID", help="the job to restore from")
    p.add_argument("--disk", dest="image_disk", metavar="ID",
                   help="which disk of the job (needed when it has several)")
    p.add_argument("--target", required=True, metavar="DEVICE",
                   help="the disk to write, e.g. /dev/xvda ('lsblk' lists them); under /dev only "
                   "an existing disk is taken. A path outside /dev that does not exist is made as a new "
                   "image file of the disk's size")
    p.add_argument("--target-zeroed", action="store_true",
                   help="every byte of the target already reads as zero (a new thin LUN or VDI, "
                   "a disk zeroed with 'blkdiscard -z'): the areas the image has no data for "
                   "are left as they are instead of zeroed. Checked first on "
                   f"{SAMPLE_BLOCKS} spread 4 KiB blocks of those areas; one non-zero byte "
                   "refuses the restore")
    p.add_argument("--streams", metavar="N", help="parallel connections (default 8)")
    p.add_argument("--compress", metavar="auto|zstd|off",
                   help="ask the server for zstd chunks: auto (default) does when that restores "
                   "the disk's bytes faster (slow links), zstd always, off never")
    settings_mod.add_source_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    terminal_logging()
    try:
        settings = settings_mod.for_command(args, "restore")
    except settings_mod.SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        result = run(settings, args.target, args.image_disk, Progress([PlainLines()], interval=2.0),
                     target_zeroed=args.target_zeroed)
    except RestoreError as e:
        print(f"Restore failed: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
