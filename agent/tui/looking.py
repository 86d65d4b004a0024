"""The look at this machine the Start and Disks screens make in their workers: the probe (again,
after the shell), the situation, the Windows warnings, as one Probed message."""

from __future__ import annotations

from pathlib import Path

from agent.disk.blockdev import BlockDevError
from agent.transfer.client import ServerError
from agent.probe import ProbeError
from agent.tui.messages import Probed
from agent.unattended import client_for, situation


def named_disks(wanted: list[str] | None) -> tuple[list[str] | None, list[str]]:
    """(what to probe, names of p2v.disks that are not here): one missing name must not hide
    the others, and when none of the names is here every disk is looked at."""
    if not wanted:
        return None, []
    here = [name for name in wanted
            if Path(name if name.startswith("/") else f"/dev/{name}").exists()]
    return (here or None), [name for name in wanted if name not in here]


def look(app) -> Probed:
    """Probe the machine (again, after the shell), and work out the situation: in a worker."""
    settings = app.session.settings
    devices, missing = named_disks(settings.disks)
    try:
        machine = app.edges.probe(devices)
    except (ProbeError, BlockDevError, OSError) as e:
        return Probed(None, None, f"The probe failed: {e}")
    if missing:
        machine.problems.insert(0, f"p2v.disks names {', '.join(missing)}, which this machine "
                                   "does not have; the other disks are shown.")
    client = None
    if settings.server and settings.token:
        try:
            client = client_for(settings, retry_for=10)
        except ServerError:
            client = None
    try:
        found = situation(machine, settings, client)
    except ServerError:
        found = situation(machine, settings, None)
    return Probed(machine, found, None, app.edges.windows_warnings(machine))
