"""`p2v-agent restore-and-repair`: the design's manual path in one go.

Every disk of the job goes onto this VM's disks (or the --target devices, in order) by the rule
the unattended run uses, then the copied system is repaired with the job's inventory and the
report goes to the server.
"""

from __future__ import annotations

import argparse
import sys

from xenp2v import protocol
from agent import settings as settings_mod
from agent import unattended
from agent.transfer.client import ServerError
from agent.transfer.progress import PlainLines, Progress, terminal_logging
from agent.repair.guest import RepairError
from agent.repair.luks import Passphrases, console_ask
from agent.transfer.restore import RestoreError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "restore-and-repair", help="restore a job onto this VM's disks, then repair the copy",
        description="Write every disk of the job onto this VM's disks (or the --target devices, in "
                    "the job's disk order), then make the copied system boot here and report to "
                    "the server. Run it again after an interruption: the restore resumes.")
    p.add_argument("--server", metavar="URL", help="https://HOST:PORT of the p2v-server")
    p.add_argument("--token", metavar="T", help="the token p2v-server printed")
    p.add_argument("--fingerprint", metavar="sha256:HEX", help="the server certificate's fingerprint")
    p.add_argument("--job", metavar="ID", help="the job to restore and repair")
    p.add_argument("--target", metavar="DEVICE", action="append", default=[],
                   help="a disk to write, once per disk of the job (default: the disks p2v.disks= "
                        "names, else this VM's free disks)")
    p.add_argument("--streams", metavar="N", help="parallel connections (default 4)")
    p.add_argument("--luks", metavar="FILE", help="passphrases of the guest's LUKS volumes, one a "
                   "line (or p2v.luks=; else: asked on this terminal)")
    p.add_argument("--guest-tools", metavar="ISO|DIR", help="the pool's tools ISO or a folder with its "
                   "Linux/ files: install the guest agent (or p2v.guest_tools=)")
    p.add_argument("--windows-drivers", metavar="DIR", help="a folder with the vendor's Windows PV "
                   "drivers: a Windows guest installs them at first boot (or p2v.windows_drivers=)")
    settings_mod.add_source_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    terminal_logging()
    try:
        settings = settings_mod.for_command(args, "restore-and-repair", needs=("server", "token", "job"))
    except settings_mod.SettingsError as e:
        print(e, file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(line, flush=True)

    targets = args.target or None
    try:
        client = unattended.client_for(settings, retry_for=60)
        restored = unattended.restore(settings, Progress([PlainLines()], interval=2.0), client,
                                      targets, how="--target")
        for r in restored:
            say(r.summary())
        inventory = protocol.job_inventory(client.job(settings.job))
        # The repair looks at the disks just written, not at whatever this machine has.
        report = unattended.apply_repair(None, inventory, say, client, settings.job,
                                         disks=[r.target for r in restored],
                                         passphrases=Passphrases(settings.luks, console_ask(), say),
                                         guest_tools=settings.guest_tools,
                                         windows_drivers=settings.windows_drivers)
    except RestoreError as e:
        print(f"Restore failed: {e}", file=sys.stderr)
        return 1
    except (RepairError, ServerError) as e:
        print(f"p2v-agent restore-and-repair: {e}", file=sys.stderr)
        return 1
    say(f"Repair {report['status']}: {report.get('os', 'the system')}.")
    return 0
