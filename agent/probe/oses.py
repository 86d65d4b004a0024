"""Which operating system a filesystem holds, read from its files after a read-only mount.

`mounted()` is the edge (mount, umount); `find_os()` reads a directory tree and nothing else, so
tests point it at fixture trees as well as at real mounts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from agent.windows import winpath
from agent.probe.model import OperatingSystem

# Read-only and without replaying journals: the source must stay byte-for-byte as it was.
_MOUNT_OPTIONS = {
    "ext2": "ro", "ext3": "ro,noload", "ext4": "ro,noload",
    "xfs": "ro,norecovery,nouuid",
    "btrfs": "ro,rescue=nologreplay",
    "ntfs": "ro",
}
_MOUNT_TYPES = {"ntfs": "ntfs-3g"}
MOUNTABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs", "ntfs", "vfat", "exfat", "f2fs", "jfs",
             "reiserfs")


class MountError(Exception):
    pass


@contextlib.contextmanager
def mounted(dev: str, fstype: str) -> Iterator[Path]:
    """`dev` mounted read-only on a fresh directory for the time of the block."""
    where = Path(tempfile.mkdtemp(prefix="p2v-probe-"))
    options = _MOUNT_OPTIONS.get(fstype, "ro")
    args = ["mount", "-t", _MOUNT_TYPES.get(fstype, fstype), "-o", options, dev, str(where)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        where.rmdir()
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise MountError(f"Cannot mount {dev} ({fstype}) read-only: {reason}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True, timeout=120)
        with contextlib.suppress(OSError):
            where.rmdir()


def used_bytes(path: Path) -> tuple[int, int]:
    """(size, used) of the filesystem mounted at `path`."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize


def resolve(root: Path, relative: str) -> Path | None:
    """`relative` inside the tree at `root`, following symlinks as if `root` were `/`.

    Absolute links in a guest (/etc/os-release -> /usr/lib/os-release) must not escape to the
    live system's own files. Returns None when the path does not exist.
    """
    parts = list(PurePosixPath(relative.lstrip("/")).parts)
    current = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        real = root / str(candidate).lstrip("/")
        if real.is_symlink():
            hops += 1
            if hops > 16:
                return None
            target = PurePosixPath(os.readlink(real))
            parts = list(target.parts) + parts
            if target.is_absolute():
                current = PurePosixPath("/")
                parts = parts[1:]
            continue
        current = candidate
    path = root / str(current).lstrip("/")
    return path if path.exists() else None


def _parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key.strip()):
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value.strip("\"'")]
            out[key.strip()] = " ".join(words)
    return out


def _read(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def kernel_versions(root: Path) -> list[str]:
    """Installed kernels: /boot/vmlinuz-* and /lib/modules/*, as version strings."""
    versions = set()
    boot = resolve(root, "boot")
    if boot and boot.is_dir():
        versions |= {p.name.split("-", 1)[1] for p in boot.glob("vmlinuz-*")
                     if "rescue" not in p.name}
    modules = resolve(root, "lib/modules")
    if modules and modules.is_dir():
        versions |= {p.name for p in modules.iterdir() if (p / "modules.dep").exists()
                     or (p / "kernel").is_dir()}
    return sorted(versions)


def boot_files(root: Path) -> list[str]:
    """Kernels at the top of a filesystem: it is a separate /boot."""
    return sorted(p.name for p in root.glob("vmlinuz-*"))


def linux_os(root: Path, subdir: str = "/") -> OperatingSystem | None:
    text = _read(resolve(root, "etc/os-release")) or _read(resolve(root, "usr/lib/os-release"))
    if text is None:
        return None
    info = _parse_os_release(text)
    hostname = (_read(resolve(root, "etc/hostname")) or "").strip() or None
    if hostname is None:
        network = _parse_os_release(_read(resolve(root, "etc/sysconfig/network")) or "")
        hostname = network.get("HOSTNAME")
    return OperatingSystem(
        family="linux",
        name=info.get("PRETTY_NAME") or info.get("NAME") or "Linux",
        id=info.get("ID"),
        id_like=info.get("ID_LIKE", "").split(),
        version=info.get("VERSION_ID"),
        hostname=hostname,
        kernels=kernel_versions(root),
        root=subdir,
    )


def windows_os(root: Path) -> OperatingSystem | None:
    """Windows from its registry (SOFTWARE and SYSTEM hives); None when this is no Windows."""
    if winpath.find(root, "Windows/System32/ntoskrnl.exe") is None:
        return None
    from agent.probe import registry

    software = winpath.find(root, "Windows/System32/config/SOFTWARE")
    system = winpath.find(root, "Windows/System32/config/SYSTEM")
    version = registry.windows_version(software) if software else {}
    facts = registry.system_facts(system) if system else {}
    name = version.get("ProductName") or "Windows (version unknown)"
    build = version.get("CurrentBuild") or version.get("CurrentBuildNumber", "")
    if name.startswith("Windows 10") and build.isdigit() and int(build) >= 22000:
        name = "Windows 11" + name.removeprefix("Windows 10")  # 11 kept 10's ProductName
    return OperatingSystem(
        family="windows",
        name=name,
        id="windows",
        version=version.get("DisplayVersion") or version.get("CurrentVersion"),
        build=build or None,
        edition=version.get("EditionID"),
        arch=facts.get("Architecture"),
        control_set=facts.get("ControlSet"),
        hostname=facts.get("ComputerName"),
    )


# btrfs installers put the root in a subvolume; these are the names they use.
_BTRFS_ROOTS = ("@", "@rootfs", "root", "@/.snapshots/1/snapshot")


def find_os(root: Path, fstype: str | None = None) -> OperatingSystem | None:
    """The OS whose root is this tree (or a well-known btrfs subvolume of it), if any."""
    found = linux_os(root) or windows_os(root)
    if found or fstype != "btrfs":
        return found
    for sub in _BTRFS_ROOTS:
        if (root / sub).is_dir():
            found = linux_os(root / sub, subdir="/" + sub)
            if found:
                return found
    return None
