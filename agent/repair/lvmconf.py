"""LVM device filters that accept only the source machine's disks.

`filter` and `global_filter` (lvm.conf, lvmlocal.conf, lvm.conf.d) are lists of "a|regex|" and
"r|regex|" patterns; the first pattern that matches one of a device's names decides, and a device
no pattern matches is accepted. A filter written for the source (`a|/dev/disk/by-id/scsi-…|`,
`a|/dev/mapper/mpath.*|`, `a|/dev/sda.*|`, then `r|.*|`) rejects the VM's disk, and the rebuilt
initramfs carries it: the root VG is not found. Such a filter is commented out, with a note, so
LVM scans every disk (its default).
"""

from __future__ import annotations

import re

from agent.repair.facts import Facts, guest_disk_name
from agent.repair.plan import FileChange, StepPlan
from agent.repair.tree import GuestTree

FILES = ("/etc/lvm/lvm.conf", "/etc/lvm/lvmlocal.conf", "/etc/lvm/lvm.conf.d/*.conf")
NOTE = "# xenp2v repair: this filter accepted only the source machine's disks; LVM now scans every disk."
_SETTING = re.compile(r"^\s*(?:\w+\s*\{\s*)?(global_filter|filter)\s*=")  # also `devices { filter = … }`
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def accepts(patterns: list[str], names: list[str]) -> bool:
    """Whether LVM accepts a device with these names under a filter of these patterns."""
    for pattern in patterns:
        if len(pattern) < 3 or pattern[0] not in "ar" or pattern[-1] != pattern[1]:
            continue
        try:
            regex = re.compile(pattern[2:-1])
        except re.error:
            continue
        if any(regex.search(name) for name in names):
            return pattern[0] == "a"
    return True


def _settings(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last+1) line numbers of every active filter setting; a list may span lines."""
    out, i = [], 0
    while i < len(lines):
        if _SETTING.match(lines[i]) and not lines[i].lstrip().startswith("#"):
            j, text = i, lines[i]
            while "[" in _STRING.sub("", text.split("=", 1)[1]) and "]" not in _STRING.sub("", text) \
                    and j + 1 < len(lines):
                j += 1
                text += lines[j]
            out.append((i, j + 1))
            i = j + 1
        else:
            i += 1
    return out


def lvm_filters(tree: GuestTree, facts: Facts) -> StepPlan:
    step = StepPlan("LVM device filters")
    disk = guest_disk_name(facts)
    names = [disk, f"{disk}1", f"{disk}2"]
    for path in [p for pattern in FILES for p in (tree.glob(pattern) if "*" in pattern else [pattern])]:
        old = tree.read(path)
        if old is None:
            continue
        lines = old.splitlines(keepends=True)
        for first, end in reversed(_settings(lines)):
            text = "".join(lines[first:end])
            patterns = _STRING.findall(text.split("=", 1)[1])
            if accepts(patterns, names):
                continue
            indent = re.match(r"\s*", lines[first])[0]
            step.notes.append(f"{path}: {' '.join(text.split())} commented out")
            lines[first:end] = [indent + NOTE + "\n"] + [
                indent + "# " + line[len(indent):] if line.startswith(indent) else "# " + line
                for line in lines[first:end]]
        new = "".join(lines)
        if new != old:
            step.changes.append(FileChange(path, old, new))
    return step
