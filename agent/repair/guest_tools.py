"""The pool's guest agent (xe-guest-utilities) into a Linux guest, from a tools ISO or a directory.

The vendors' tools ISOs (XenServer's xs-tools.iso / guest-tools.iso, XCP-ng's guest-tools.iso)
hold the Linux agent under ``Linux/``: ``xe-guest-utilities_<version>_<arch>.deb`` (amd64, i386),
``xe-guest-utilities-<version>.<arch>.rpm`` with ``xe-guest-utilities-xenstore-<version>.<arch>.rpm``
(x86_64, i686), and ``xe-guest-utilities_<version>_<arch>.tgz`` for the rest. The package that fits
the guest (its package tool, its architecture) is copied into the guest and installed there with
the guest's own tool (dpkg, rpm, tar), and its service (xe-linux-distribution) enabled.

ISOs are read with xorriso: no iso9660 driver is needed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.repair.plan import Command, FileChange, StepPlan
from agent.repair.tree import GuestTree

SERVICE = "xe-linux-distribution"
STAGE = "/var/lib/xenp2v/guest-tools"       # where the package files go in the guest
RECORD = f"{STAGE}/installed"
# The guest's architecture (ELF e_machine of its /bin/sh) -> names the packages use.
ELF_ARCH = {0x3E: "x86_64", 0x03: "i386", 0xB7: "aarch64"}
DEB_ARCH = {"x86_64": ("amd64",), "i386": ("i386",), "aarch64": ("arm64",)}
RPM_ARCH = {"x86_64": ("x86_64",), "i386": ("i686", "i586", "i386"), "aarch64": ("aarch64",)}
TGZ_ARCH = {"x86_64": ("x86_64", "amd64"), "i386": ("i386", "i686"), "aarch64": ("aarch64", "arm64")}
DEB = re.compile(r"xe-guest-utilities_(?P<version>[^_]+)_(?P<arch>[^_.]+)\.deb")
RPM = re.compile(r"xe-guest-utilities-(?P<version>\d[^/]*)\.(?P<arch>[^.]+)\.rpm")
RPM_XENSTORE = re.compile(r"xe-guest-utilities-xenstore-(?P<version>\d[^/]*)\.(?P<arch>[^.]+)\.rpm")
TGZ = re.compile(r"xe-guest-utilities_(?P<version>[^_]+)_(?P<arch>[^_.]+)\.tgz")


class ToolsError(Exception):
    """The tools source cannot be read; the message says what to give instead."""


@dataclass(frozen=True)
class ToolsPackage:
    kind: str                     # "deb", "rpm" or "tgz"
    version: str
    arch: str                     # as the package names it (amd64, x86_64, all...)
    files: tuple[Path, ...]       # on this machine; installed in this order
    source: str                   # the ISO or directory given

    def describe(self) -> str:
        return f"xe-guest-utilities {self.version} ({self.kind}, {self.arch})"


def read_source(source: Path, into: Path) -> list[Path]:
    """The Linux agent's files of a tools ISO (extracted into `into`) or a directory (its Linux/
    folder, or itself). Raises ToolsError."""
    if source.is_dir():
        folder = source / "Linux" if (source / "Linux").is_dir() else source
        return sorted(p for p in folder.iterdir() if p.is_file())
    if not source.is_file():
        raise ToolsError(f"The guest tools {source} are neither an ISO file nor a directory: give "
                         "the pool's tools ISO (guest-tools.iso) or a folder holding its Linux/ files.")
    into.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(source), "-extract", "/Linux",
                           str(into)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ToolsError(f"Cannot read the Linux folder of the tools ISO {source} ({last}): give "
                         "the pool's tools ISO (guest-tools.iso), which has one.")
    return sorted(p for p in into.iterdir() if p.is_file())


def guest_arch(tree: GuestTree) -> str | None:
    """x86_64, i386 or aarch64: the machine of the guest's /bin/sh; None when unknown."""
    for path in ("/bin/sh", "/usr/bin/sh", "/bin/bash"):
        host = tree._file(path)
        if host is None:
            continue
        with open(host, "rb") as f:
            head = f.read(20)
        if head[:4] == b"\x7fELF":
            order = "little" if head[5] == 1 else "big"
            return ELF_ARCH.get(int.from_bytes(head[18:20], order))
    return None


def _matching(files: list[Path], pattern: re.Pattern, arches: tuple[str, ...]) -> list[tuple[Path, re.Match]]:
    found = [(f, m) for f in files if (m := pattern.fullmatch(f.name)) and m["arch"] in arches]
    return sorted(found, key=lambda fm: (arches.index(fm[1]["arch"]), fm[0].name))


def pick(files: list[Path], family: str | None, arch: str | None, source: str) -> ToolsPackage | None:
    """The package that fits the guest: its family's (deb for Debian, rpm for RHEL and SUSE), else
    the tarball; for its architecture (or "all"/"noarch"). None when none fits."""
    if arch is None:
        return None
    if family == "debian":
        found = _matching(files, DEB, DEB_ARCH[arch] + ("all",))
        if found:
            path, m = found[0]
            return ToolsPackage("deb", m["version"], m["arch"], (path,), source)
    if family in ("rhel", "suse"):
        found = [fm for fm in _matching(files, RPM, RPM_ARCH[arch] + ("noarch",))
                 if not RPM_XENSTORE.fullmatch(fm[0].name)]
        if found:
            path, m = found[0]
            extra = [p for p, x in _matching(files, RPM_XENSTORE, (m["arch"],))
                     if x["version"] == m["version"]]
            return ToolsPackage("rpm", m["version"], m["arch"], (path, *extra), source)
    found = _matching(files, TGZ, TGZ_ARCH[arch] + ("all",))
    if found:
        path, m = found[0]
        return ToolsPackage("tgz", m["version"], m["arch"], (path,), source)
    return None


def _systemd(tree: GuestTree) -> bool:
    return any(tree.exists(p) for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd"))


def plan(tree: GuestTree, package: ToolsPackage | None, family: str | None, wanted: str | None,
         why_not: str | None = None) -> StepPlan:
    """The guest tools step: install `package` with the guest's tool, enable its service, record
    it (a second run with the same package plans nothing). `wanted`: the source asked for, None
    when no tools were asked for; `why_not`: why no package was found there."""
    step = StepPlan("guest tools")
    if wanted is None:
        return step
    if package is None:
        step.warn(f"No guest agent installed: {why_not or f'{wanted} has no xe-guest-utilities package for this guest'}."
                  " The VM runs, but the pool shows no IP addresses or OS for it until the agent "
                  "is installed by hand from the pool's tools ISO.")
        return step
    record = f"{package.describe()}\n"
    if tree.read(RECORD) == record:
        step.notes.append(f"{package.describe()} is already installed from an earlier repair.")
        return step
    staged = [f"{STAGE}/{f.name}" for f in package.files]
    step.notes.append(f"{package.describe()} from {package.source}: "
                      f"{', '.join(f.name for f in package.files)}, copied to {STAGE} in the guest.")
    if package.kind == "deb":
        step.commands.append(Command(("dpkg", "-i", *staged), "install the pool's guest agent with dpkg"))
    elif package.kind == "rpm":
        step.commands.append(Command(("rpm", "-U", "--replacepkgs", *staged),
                                     "install the pool's guest agent with rpm"))
    else:
        step.commands.append(Command(("tar", "-xf", staged[0], "-C", "/"),
                                     "unpack the pool's guest agent (no package for this guest's tool)"))
    if _systemd(tree):
        step.commands.append(Command(("systemctl", "enable", f"{SERVICE}.service"),
                                     "start the guest agent at every boot"))
    elif family == "debian":
        step.commands.append(Command(("update-rc.d", SERVICE, "defaults"), "start the guest agent at every boot"))
    else:
        step.commands.append(Command(("chkconfig", "--add", SERVICE), "start the guest agent at every boot"))
    step.changes.append(FileChange(RECORD, tree.read(RECORD), record))
    return step


def stage(root: Path, package: ToolsPackage) -> None:
    """Copy the package files into the guest (the install commands read them there)."""
    target = root / STAGE.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    for f in package.files:
        shutil.copyfile(f, target / f.name)


def report(package: ToolsPackage | None) -> dict | None:
    """What the report says was installed."""
    if package is None:
        return None
    return {"package": "xe-guest-utilities", "version": package.version, "kind": package.kind,
            "arch": package.arch, "files": [f.name for f in package.files], "from": package.source,
            "service": SERVICE}
