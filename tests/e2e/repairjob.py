"""Repair a disk from outside its VM, told about the job as `p2v-agent repair --job` is told.

The job is a JSON file: what the server holds for it (the capture's inventory, and the
provisioning record of the VM it made, with each VIF's MAC); the repair reads it through
protocol.job_inventory, as `repair --job` reads the server's answer. Used by run.py's network
scenarios, whose VM gets a MAC other than the source's, as the server's --new-macs gives it.

Usage: repairjob.py JOB.json DISK [OLD=NEW ...]   (OLD=NEW: as repair's --nic)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2])]

from agent.repair.command import _nics  # noqa: E402
from agent.repair.guest import RepairError  # noqa: E402
from agent.repair.runner import Request, repair  # noqa: E402
from xenp2v.protocol import job_inventory  # noqa: E402


def main(argv: list[str]) -> int:
    job, disk, *nics = argv
    try:
        repair(Request(disk=disk, nics=_nics(nics), inventory=job_inventory(json.loads(Path(job).read_text()))))
    except RepairError as e:
        print(f"repairjob: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
