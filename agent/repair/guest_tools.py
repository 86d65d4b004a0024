"""The pool's guest agent (xe-guest-utilities) into a Linux guest, from a tools ISO or a directory.

The vendors' tools ISOs (XenServer's xs-tools.iso / guest-tools.iso, XCP-ng's guest-tools.iso)
hold the Linux agent under ``Linux/``: ``xe-guest-utilities_<version>_<arch>.deb`` (amd64, i386),
``xe-guest-utilities-<version>.<arch>.rpm`` with ``xe-guest-utilities-xenstore-<version>.<arch>.rpm``
(x86_64, i686), and ``xe-guest-utilities_<version>_<arch>.tgz`` for the rest. The package that fits
the guest (its package tool, its architecture) is copied into the guest and installed there with
the guest's own tool (dpkg, rpm, tar), and its service (xe-linux-distribution) enabled.

ISOs are read with xorriso: no iso9660 driver is needed. In a VM the server made, the pool's
tools ISO is in a second CD drive: `tools_cd` finds it among the VM's CD drives (the one whose
Linux/ folder holds the agent), so the repair needs no flag there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent.repair.plan import Command, FileChange, StepPlan
from agent.repair.tree import GuestTree, host_of

SERVICE = "xe-linux-distribution"
STAGE = "/var/lib/xenp2v/guest-tools"       # where the package files go in the guest
RECORD = f"{STAGE}/installed"
AGENT = "/usr/sbin/xe-daemon"                # every version of the agent, vendor's or distribution's
# The guest's architecture (ELF e_machine of its /bin/sh) -> names the packages use.
ELF_ARCH = {0x3E: "x86_64", 0x03: "i386", 0xB7: "aarch64"}
DEB_ARCH = {"x86_64": ("amd64",), "i386": ("i386",), "aarch64": ("arm64",)}
RPM_ARCH = {"x86_64": ("x86_64",), "i386": ("i686", "i586", "i386"), "aarch64": ("aarch64",)}
TGZ_ARCH = {"x86_64": ("x86_64", "amd64"), "i386": ("i386", "i686"), "aarch64": ("aarch64", "arm64")}
DEB = re.compile(r"xe-guest-utilities_(?P<version>[^_]+)_(?P<arch>[^_.]+)\.deb")
RPM = re.compile(r"xe-guest-utilities-(?P<version>\d[^/]*)\.(?P<arch>[^.]+)\.rpm")
RPM_XENSTORE = re.compile(r"xe-guest-utilities-xenstore-(?P<version>\d[^/]*)\.(?P<arch>[^.]+)\.rpm")
# The vendor's tarball is named for uname -m: x86_64 (its Makefile turns Go's amd64 into it).
TGZ = re.compile(r"xe-guest-utilities_(?P<version>[^_]+)_(?P<arch>[^.]+)\.tgz")


# GNU tar replaces a link with the archive's directory of that name (a merged /usr's /lib -> usr/lib
# would become a directory holding only the agent's files) unless told to keep it; busybox's tar
# keeps it and knows no such option. --no-overwrite-dir: the archive's ./ leaves / as it is.
UNPACK = ('if tar --help 2>&1 | grep -q -e --keep-directory-symlink; then '
          'exec tar -xf "$1" -C / --keep-directory-symlink --no-overwrite-dir; fi; exec tar -xf "$1" -C /')
# Run in the guest after the install, so it sees what the package brought: its systemd unit where
# the guest runs systemd ($2 = yes), else its SysV init script with the guest's own tool. A package
# that brings neither (or a guest with no such tool) is said, not failed: the agent is optional,
# and a failed step would undo the whole repair.
ENABLE = r'''s=$1
if [ "$2" = yes ]; then
  for d in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
    [ -e "$d/$s.service" ] && exec systemctl enable "$s.service"
  done
fi
if [ ! -e "/etc/init.d/$s" ]; then
  echo "The guest agent has no /etc/init.d/$s and no systemd unit this guest can run: not started at boot; run /usr/sbin/xe-daemon from the guest's boot scripts."
  exit 0
fi
for tool in "update-rc.d $s defaults" "chkconfig --add $s" "rc-update add $s default"; do
  command -v "${tool%% *}" >/dev/null 2>&1 && exec $tool
done
echo "The guest has no update-rc.d, chkconfig or rc-update to enable /etc/init.d/$s: not started at boot; link it into the boot runlevel by hand."
'''


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


def cd_drives(sysfs: Path = Path("/sys"), dev: Path = Path("/dev")) -> list[str]:
    """This machine's CD drives, in their kernel order: emulated ones (srN) and Xen PV ones (a
    removable xvd, as blkfront shows a CD-ROM in a PV guest)."""
    out = []
    for entry in sorted((sysfs / "block").iterdir(), key=lambda e: (len(e.name), e.name)):
        removable = (entry / "removable").read_text().strip() == "1" if (entry / "removable").exists() else False
        if entry.name.startswith("sr") or (entry.name.startswith("xvd") and removable):
            out.append(str(dev / entry.name))
    return out


def xorriso_in(medium: str | Path) -> list[str]:
    """xorriso's arguments to read `medium` (an image file, or a drive) without changing it: a
    block device as plain data ("stdio:"), which a PV or loop drive needs and a CD-ROM allows."""
    path = Path(medium)
    address = f"stdio:{path}" if path.is_block_device() else str(path)
    return ["xorriso", "-drive_access", "shared:readonly", "-osirrox", "on", "-indev", address]


def agent_files_on(medium: str) -> list[str]:
    """The names of the Linux agent's packages on an ISO medium (a CD drive or an image file);
    empty when there is no disc, no Linux/ folder, or no package in it."""
    proc = subprocess.run([*xorriso_in(medium), "-ls", "/Linux"], capture_output=True, text=True)
    names = [line.strip().strip("'") for line in proc.stdout.splitlines()] if proc.returncode == 0 else []
    return [n for n in names if DEB.fullmatch(n) or RPM.fullmatch(n) or TGZ.fullmatch(n)]


def tools_cd(drives: list[str] | None = None) -> str | None:
    """The first of `drives` (default: this machine's CD drives) holding a tools ISO; None.
    Raises ToolsError when there are drives but no xorriso to read them."""
    drives = cd_drives() if drives is None else drives
    if drives and shutil.which("xorriso") is None:
        raise ToolsError(f"The CD drives {', '.join(drives)} are not searched for the pool's tools ISO: "
                         "this system has no xorriso. Install it, or give the ISO with --guest-tools.")
    for drive in drives:
        if agent_files_on(drive):
            return drive
    return None


def read_source(source: Path, into: Path) -> list[Path]:
    """The Linux agent's files of a tools ISO (extracted into `into`) or a directory (its Linux/
    folder, or itself). Raises ToolsError."""
    if source.is_dir():
        folder = source / "Linux" if (source / "Linux").is_dir() else source
        return sorted(p for p in folder.iterdir() if p.is_file())
    if not (source.is_file() or source.is_block_device()):
        raise ToolsError(f"The guest tools {source} are neither an ISO file nor a directory: give "
                         "the pool's tools ISO (guest-tools.iso) or a folder holding its Linux/ files.")
    into.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*xorriso_in(source), "-extract", "/Linux", str(into)], capture_output=True, text=True)
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
    if tree.read(RECORD) is None and tree.exists(AGENT):
        # Installing over it may fail (rpm refuses an older version, or another package's files),
        # and a failed step undoes the whole repair.
        step.warn(f"The guest already has a guest agent ({AGENT}) that xenp2v did not install: it is left "
                  f"as it is, and {package.describe()} from {package.source} is not installed over it (it "
                  "may be newer, or another package's). To have the pool's, remove the guest's and repair again.")
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
        step.commands.append(Command(("sh", "-c", UNPACK, "unpack", staged[0]),
                                     "unpack the pool's guest agent (no package for this guest's tool)"))
    step.commands.append(Command(("sh", "-c", ENABLE, "enable", SERVICE, "yes" if _systemd(tree) else "no"),
                                 "start the guest agent at every boot, with what the guest has"))
    step.changes.append(FileChange(RECORD, tree.read(RECORD), record))
    return step


def stage(root: Path, package: ToolsPackage) -> Callable[[], None]:
    """Copy the package files into the guest (the install commands read them there), at STAGE as
    the guest resolves it: a guest `/var -> /data/var` link leads into the guest, never onto this
    machine. Returns the undo, which removes the copies and the directories made for them (a
    repair that fails leaves the guest as it was). Raises ToolsError when a copy fails (a full
    filesystem), after undoing the copies made so far."""
    target = host_of(root, STAGE)
    made: list[Path] = []
    missing = []
    d = target
    while not d.exists():
        missing.append(d)
        d = d.parent
    copied: list[Path] = []

    def undo() -> None:
        for f in reversed(copied):
            f.unlink(missing_ok=True)
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass
    try:
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
        for f in package.files:
            if not (target / f.name).exists():     # one from an earlier run is overwritten, kept
                copied.append(target / f.name)
            shutil.copyfile(f, target / f.name)
    except OSError as e:
        undo()
        raise ToolsError(f"The guest agent's package could not be copied to {STAGE} in the guest "
                          f"({e.strerror or e}); make room there and run repair again.") from None
    return undo


def report(package: ToolsPackage | None) -> dict | None:
    """What the report says was installed."""
    if package is None:
        return None
    return {"package": "xe-guest-utilities", "version": package.version, "kind": package.kind,
            "arch": package.arch, "files": [f.name for f in package.files], "from": package.source,
            "service": SERVICE}
