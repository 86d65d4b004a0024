"""The one settings object the agent runs on.

Filled, in order, from: defaults, `p2v.cfg` on the boot medium, the kernel command line, CLI flags,
and the TUI. Unattended mode and the TUI both hand a Settings to the same core functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Settings:
    server: str | None = None            # p2v.server: https://host:port of the receiving server
    token: str | None = None             # p2v.token (secret: never printed)
    fingerprint: str | None = None       # p2v.fingerprint: sha256:HEX of the server's certificate
    mode: str | None = None              # p2v.mode: auto|capture|restore|repair|shell
    disks: list[str] | None = None       # p2v.disks: names or paths; None means all
    name: str | None = None              # p2v.name: the job's (and the VM's) name
    vcpus: int | None = None             # p2v.vcpus
    memory: int | None = None            # p2v.memory, in bytes
    job: str | None = None               # p2v.job
    streams: int = 4                     # p2v.streams: parallel connections
    compress: str = "auto"               # p2v.compress: auto|zstd|off
    bwlimit: int | None = None           # p2v.bwlimit, in bytes per second
    post: str = "wait"                   # p2v.post: poweroff|reboot|shell|wait
    unattended: bool = False             # p2v.unattended
    debug: bool = False                  # p2v.debug
    ip: list[str] = field(default_factory=list)  # standard ip= values, as given
