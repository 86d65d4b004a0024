"""Read-only view of a guest's files under a root directory (a mounted guest or a test fixture).

Every guest path resolves inside the guest's root, as a chroot would resolve it: a symlink's
absolute target (`/boot -> /mnt/boot`, `os-release -> /usr/lib/os-release`) starts again at the
guest's root, and `..` stops there. Nothing outside the root is read through a guest's link.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

MAX_LINKS = 40   # as the kernel's ELOOP limit
# Where a guest link may point at the running system's pseudo-filesystems: not files to change.
SPECIAL_DIRS = ("/dev", "/proc", "/sys", "/run")


class LinkLoop(OSError):
    """A guest path whose links go round in circles."""


def resolve_guest(root: Path, path: str) -> str:
    """The guest path `path` names once every link on the way is followed inside the guest:
    absolute, normalised, never above `/`. Raises LinkLoop after MAX_LINKS links."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        host = root.joinpath(*done, part)
        if host.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise LinkLoop(f"{path} in the guest: too many levels of symbolic links")
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            todo[:0] = [p for p in target.split("/") if p not in ("", ".")]
        else:
            done.append(part)
    return "/" + "/".join(done)


def host_of(root: Path, path: str) -> Path:
    """Where the guest path `path` is on this machine, links followed inside the guest."""
    return root / resolve_guest(root, path).lstrip("/")


def is_special(guest_path: str) -> bool:
    """A resolved guest path in /dev, /proc, /sys or /run (e.g. a rule file linked to /dev/null)."""
    return any(guest_path == d or guest_path.startswith(d + "/") for d in SPECIAL_DIRS)


class GuestTree:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _file(self, path: str) -> Path | None:
        """The host path of a regular file at guest path `path`, else None: missing, a dangling
        link, a directory, or a link into /dev (a rule disabled by `-> /dev/null` is no file to
        change)."""
        try:
            resolved = resolve_guest(self.root, path)
        except LinkLoop:
            return None
        if is_special(resolved):
            return None
        host = self.root / resolved.lstrip("/")
        try:
            return host if stat.S_ISREG(os.stat(host, follow_symlinks=False).st_mode) else None
        except OSError:
            return None

    def read(self, path: str) -> str | None:
        """The file's text, or None when there is no regular file there (see `_file`)."""
        host = self._file(path)
        return None if host is None else host.read_text(encoding="utf-8", errors="surrogateescape")

    def exists(self, path: str) -> bool:
        try:
            resolved = resolve_guest(self.root, path)
        except LinkLoop:
            return False
        return not is_special(resolved) and os.path.lexists(self.root / resolved.lstrip("/"))

    def glob(self, pattern: str) -> list[str]:
        """Guest paths of the regular files matching `pattern` (absolute, shell-style; `*` and `?`
        within one component), sorted. The paths are as matched, not resolved."""
        found = [""]
        for part in [p for p in pattern.split("/") if p]:
            nxt = []
            for base in found:
                if not any(c in part for c in "*?["):
                    nxt.append(f"{base}/{part}")
                    continue
                try:
                    directory = host_of(self.root, base or "/")
                    names = sorted(os.listdir(directory))
                except OSError:
                    continue
                nxt += [f"{base}/{n}" for n in names if fnmatch.fnmatchcase(n, part)]
            found = nxt
        return sorted(p for p in found if self._file(p) is not None)
