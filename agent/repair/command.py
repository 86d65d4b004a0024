"""`p2v-agent repair`: the subcommand front of the in-place repair."""

from __future__ import annotations

import argparse
import sys

from xenp2v import protocol
from agent.transfer.client import Client, ServerError
from agent.repair import luks
from agent.repair.guest import RepairError
from agent.repair.runner import Request, repair


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "repair", help="make a copied system boot on this VM's hardware",
        description="Find the copied Linux system, fix device names, network names, initramfs and "
                    "bootloader for the VM's hardware. Without --disk: this VM's own disks.")
    p.add_argument("--dry-run", action="store_true", help="print every step and a diff of every file; change nothing")
    p.add_argument("--disk", metavar="DEVICE", action="append", default=[],
                   help="repair only this disk (e.g. a disk attached to this machine); repeat it for each "
                        "of the VM's disks, the one it boots from first: names of the source's other "
                        "disks are looked for on them")
    p.add_argument("--server", metavar="URL", help="receiving server, to read the job and send the report")
    p.add_argument("--token", metavar="T")
    p.add_argument("--fingerprint", metavar="sha256:HEX")
    p.add_argument("--job", metavar="ID", help="the capture job: its inventory maps old disk and NIC names")
    p.add_argument("--nic", metavar="OLD=NEW", action="append", default=[],
                   help="rename network interface OLD to NEW in the guest (repeatable)")
    p.add_argument("--luks", metavar="FILE",
                   help="passphrases of the guest's LUKS volumes, one a line (else: asked on this terminal)")
    p.add_argument("--guest-tools", metavar="ISO|DIR",
                   help="the pool's tools ISO or a folder with its Linux/ files: install the guest agent")
    p.add_argument("--windows-drivers", metavar="DIR",
                   help="a folder with the vendor's Windows PV drivers (.inf folders, .msi): a Windows "
                        "guest installs them at first boot, before logon")
    p.set_defaults(func=main)


def _nics(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            raise RepairError(f"--nic {value!r} is not of the form OLD=NEW (e.g. --nic ens3=ens4).")
        out[old] = new
    return out


def main(args: argparse.Namespace) -> int:
    client = None
    try:
        # One disk: that disk, its names of other disks looked for on this machine's free disks;
        # several: the VM's disks in order, as a restore lays them out.
        request = Request(disk=args.disk[0] if args.disk else None, disks=args.disk if len(args.disk) > 1 else [],
                          dry_run=args.dry_run, nics=_nics(args.nic), guest_tools=args.guest_tools,
                          windows_drivers=args.windows_drivers,
                          passphrases=luks.Passphrases(args.luks, luks.console_ask()))
        if args.job or args.server:
            if not (args.job and args.server and args.token):
                raise RepairError("--server, --token and --job go together: give all three, or none.")
            try:
                protocol.check_id(args.job, "job id")
                client = Client(args.server, args.token, args.fingerprint, retry_for=60)
                request.inventory = protocol.job_inventory(client.job(args.job))
            except (ServerError, protocol.ProtocolError) as e:
                raise RepairError(str(e)) from None
        try:
            report = repair(request)
        except RepairError as e:
            if client and not args.dry_run:
                _send(client, args.job, {"status": "failed", "error": str(e)})
            raise
        if client and not args.dry_run:
            _send(client, args.job, report)
    except RepairError as e:
        print(f"p2v-agent repair: {e}", file=sys.stderr)
        return 1
    return 0


def _send(client: Client, job: str, report: dict) -> None:
    try:
        client.request("POST", protocol.repair_path(job), json=report, ok=(200, 201, 204),
                       what="send the repair report")
    except ServerError as e:
        print(f"p2v-agent repair: the repair is done but the report did not reach the server: {e}",
              file=sys.stderr)
