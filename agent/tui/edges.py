"""What the TUI does to the machine, behind one object that tests replace piece by piece.

`Edges()` is this machine; a test gives a recorded machine, loop devices and no-op power, and
the snapshot tests give fixed core actions so that every picture is the same.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Callable

from agent.probe import Machine, Nic, probe_machine
from agent.probe import system
from agent.settings import IpConfig
from agent import unattended
from agent.windows import winwarn


def configure_network(nic: str, ip: IpConfig) -> str:
    """Apply DHCP or a static address to one NIC (the live ISO runs systemd-networkd)."""
    if ip.autoconf == "static":
        steps = [["ip", "link", "set", nic, "up"],
                 ["ip", "addr", "replace", f"{ip.client}/{ip.prefix}", "dev", nic]]
        if ip.gateway:
            steps.append(["ip", "route", "replace", "default", "via", ip.gateway, "dev", nic])
        if ip.dns:
            steps.append(["resolvectl", "dns", nic, *ip.dns])
    else:
        steps = [["ip", "link", "set", nic, "up"], ["networkctl", "reconfigure", nic]]
    for argv in steps:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return (f"'{' '.join(argv)}' could not run ({e}); set the address by hand in the "
                    "shell (F9 or Ctrl+T).")
        if proc.returncode != 0:
            return (f"'{' '.join(argv)}' failed: {proc.stderr.strip() or proc.returncode}. "
                    "Check the values, or set the address by hand in the shell (F9 or Ctrl+T).")
    how = f"{ip.client}/{ip.prefix}" if ip.autoconf == "static" else "DHCP"
    return f"{nic} now uses {how}."


def shell() -> None:
    """The shell escape: a login shell on this terminal, until the person types exit."""
    subprocess.run([os.environ.get("SHELL", "/bin/bash"), "--login"])


@dataclass
class Edges:
    probe: Callable[[list[str] | None], Machine] = lambda devices: probe_machine(devices=devices)
    nics: Callable[[], list[Nic]] = system.nics
    # The Windows warnings before the transfer, {disk path: sentences}, looked at in the worker.
    windows_warnings: Callable[[Machine], dict[str, list[str]]] = winwarn.check
    configure_network: Callable[[str, IpConfig], str] = configure_network
    shell: Callable[[], None] = shell
    power: Callable[[list[str]], object] = subprocess.run
    # The core actions, the same the unattended run calls.
    capture: Callable = unattended.capture
    restore: Callable = unattended.restore
    plan_repair: Callable = unattended.plan_repair
    apply_repair: Callable = unattended.apply_repair
    # The disk repair works on: None means this VM's own disks.
    repair_disk: str | None = None
    # The disks a restore writes, in the job's order: None means this VM's free disks.
    restore_targets: list[str] | None = None
