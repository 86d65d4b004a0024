"""What the server tells a VM it made, through XenStore: the job's own token.

The automatic path (server/xenserver/provision.py) writes ``vm-data/xenp2v/token`` into the VM's
xenstore-data: a token that can touch only the VM's job and ends with it. The agent in that VM
uses it instead of the boot line's (the server's own token, which opens every job).
"""

from __future__ import annotations

import subprocess

TOKEN_KEY = "vm-data/xenp2v/token"


def vm_token() -> str | None:
    """The job token the server left for this VM, or None (not a VM the server made, not on
    Xen, or no xenstore-read)."""
    try:
        out = subprocess.run(["xenstore-read", TOKEN_KEY], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    token = out.stdout.strip()
    return token if out.returncode == 0 and token and " " not in token else None
