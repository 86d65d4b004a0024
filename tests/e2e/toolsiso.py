"""A test tools ISO laid out as the vendors lay theirs out, with a small but real guest agent.

``Linux/`` holds ``xe-guest-utilities_<version>_amd64.deb`` (made by dpkg-deb) and the
``_all.tgz`` of the same files, as XenServer's and XCP-ng's guest-tools.iso do. The package
installs what the vendor's does, under the vendor's names: ``/usr/sbin/xe-linux-distribution``
(writes what the guest is to /var/cache/xe-linux-distribution), ``/usr/sbin/xe-daemon`` (the agent:
here it says on the console that it runs and in which state systemd has its unit, then stays up,
refreshing /run/xe-daemon/state every minute) and the unit ``xe-linux-distribution.service`` that
runs both. The e2e boot reads the console for ``LINE``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

VERSION = "8.4.0-1"
SERVICE = "xe-linux-distribution.service"
DESCRIPTION = "Linux Guest Agent"           # the unit's, as the vendor's says
LINE = "xe-daemon: guest agent running"   # what the agent prints on the console, then its unit's state

DISTRIBUTION = """#!/bin/sh
# What the guest is, for the agent to publish: the vendor's script writes the same keys.
out=${1:-/var/cache/xe-linux-distribution}
. /etc/os-release 2>/dev/null
{
    echo "os_distro=\\"${ID:-unknown}\\""
    echo "os_majorver=\\"${VERSION_ID%%.*}\\""
    echo "os_name=\\"${PRETTY_NAME:-Linux}\\""
    echo "os_uname=\\"$(uname -r)\\""
} > "$out"
"""
DAEMON = """#!/bin/sh
# The guest agent (test build): publishes the guest's facts and addresses every minute. Without
# XenStore here it writes them to /run/xe-daemon/state, and says once on the console that it runs.
mkdir -p /run/xe-daemon
publish() {
    { cat /var/cache/xe-linux-distribution 2>/dev/null; ip -o -4 addr show scope global 2>/dev/null; } \\
        > /run/xe-daemon/state
}
publish
sleep 2
echo "LINE (pid $$); $(systemctl is-active SERVICE) as SERVICE" > /dev/kmsg
while :; do sleep 60; publish; done
""".replace("LINE", LINE).replace("SERVICE", SERVICE)
UNIT = """[Unit]
Description=DESCRIPTION

[Service]
ExecStartPre=/usr/sbin/xe-linux-distribution /var/cache/xe-linux-distribution
ExecStart=/usr/sbin/xe-daemon

[Install]
WantedBy=multi-user.target
""".replace("DESCRIPTION", DESCRIPTION)


def _payload(root: Path) -> None:
    for path, text, mode in (("usr/sbin/xe-linux-distribution", DISTRIBUTION, 0o755),
                             ("usr/sbin/xe-daemon", DAEMON, 0o755),
                             (f"lib/systemd/system/{SERVICE}", UNIT, 0o644)):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)


def build(work: Path, windows: dict[str, bytes] | None = None) -> Path:
    """Make ``work/guest-tools.iso``; returns its path. `windows`: more files at the ISO's root
    (relative path -> bytes), as the Windows tools sit beside Linux/ on the vendor's ISO."""
    tree = work / "iso"
    linux = tree / "Linux"
    linux.mkdir(parents=True, exist_ok=True)
    deb = work / "deb"
    _payload(deb)
    (deb / "DEBIAN").mkdir(exist_ok=True)
    (deb / "DEBIAN/control").write_text(
        f"Package: xe-guest-utilities\nVersion: {VERSION}\nArchitecture: amd64\n"
        "Maintainer: xenp2v tests <tests@example.org>\nDepends: iproute2\n"
        "Description: Linux guest agent (test build of the vendor's package)\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(deb),
                    str(linux / f"xe-guest-utilities_{VERSION}_amd64.deb")], check=True, capture_output=True)
    tgz = work / "tgz"
    _payload(tgz)
    subprocess.run(["tar", "-czf", str(linux / f"xe-guest-utilities_{VERSION}_all.tgz"), "-C", str(tgz), "."],
                   check=True)
    for rel, data in (windows or {}).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    iso = work / "guest-tools.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-R", "-J", "-V", "XenServer Tools", "-o", str(iso), str(tree)],
                   check=True, capture_output=True)
    return iso
