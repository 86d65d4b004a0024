"""ext2/3/4 inode-table tails that are never worth reading.

A filesystem's block bitmap counts every inode table as used (about 16 GiB on a 1 TiB ext4), yet
with group descriptor checksums (uninit_bg or metadata_csum) each group records how many inodes at
the end of its table were never used (``itable_unused``). Such a tail is either zeroed already
(the group says ITABLE_ZEROED: it must read as zeros, so it is a zero range) or not yet (the
kernel zeroes it before use, as ext4_init_inode_table does, so its content does not matter: it is
free).
"""

from __future__ import annotations

import re
import subprocess

_GROUP = re.compile(r"^Group (\d+): .*\[(.*)\]")
_ITABLE = re.compile(r"^\s+Inode table at (\d+)-(\d+)")
_UNUSED = re.compile(r"(\d+) unused inodes")


Range = tuple[int, int]


def unused_inode_tables(device: str) -> tuple[list[Range], list[Range]]:
    """(zero, free) byte ranges, relative to `device`, of never-used inode-table tails;
    nothing when the filesystem cannot vouch for them."""
    try:
        proc = subprocess.run(["dumpe2fs", device], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return [], []
    if proc.returncode != 0:
        return [], []
    return parse_dumpe2fs(proc.stdout)


def parse_dumpe2fs(text: str) -> tuple[list[Range], list[Range]]:
    header: dict[str, str] = {}
    zero: list[Range] = []
    free: list[Range] = []
    zeroed = False
    table: tuple[int, int] | None = None
    for line in text.splitlines():
        if not line.startswith((" ", "Group")) and ":" in line:
            key, _, value = line.partition(":")
            header.setdefault(key.strip(), value.strip())
            continue
        if m := _GROUP.match(line):
            zeroed, table = "ITABLE_ZEROED" in m.group(2), None
            continue
        if m := _ITABLE.match(line):
            table = (int(m.group(1)), int(m.group(2)))
            continue
        if (m := _UNUSED.search(line)) and table:
            features = header.get("Filesystem features", "").split()
            if not {"metadata_csum", "uninit_bg"} & set(features):
                return [], []
            block = int(header["Block size"])
            per_group = int(header["Inodes per group"])
            inode_size = int(header.get("Inode size", "256"))
            in_use = per_group - int(m.group(1))
            first_unused = table[0] + -(-in_use * inode_size // block)
            if first_unused <= table[1]:
                (zero if zeroed else free).append((first_unused * block, (table[1] + 1) * block))
            table = None
    return zero, free
