"""Used-block maps of filesystems, from `partclone.<fs> --domain`.

partclone writes a ddrescue-style domain log: one line per run of bytes, `+` where the filesystem
uses them and `?` where it does not. Bytes past the log's end (a filesystem smaller than its
partition) are not described, so the caller reads them whole.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

# blkid TYPE -> partclone tool suffix (bookworm's partclone 0.3.x).
TOOLS: dict[str, str] = {
    "ext2": "extfs",
    "ext3": "extfs",
    "ext4": "extfs",
    "xfs": "xfs",
    "btrfs": "btrfs",
    "ntfs": "ntfs",
    "vfat": "fat",
    "exfat": "exfat",
    "f2fs": "f2fs",
    "hfsplus": "hfsp",
    "minix": "minix",
}


class PartcloneError(Exception):
    """partclone could not map a filesystem; the message says why."""


def knows(fstype: str | None) -> bool:
    return fstype in TOOLS


def parse_domain(text: str) -> tuple[list[tuple[int, int]], int]:
    """(used [start, end) byte ranges, end of what the log describes) from a domain log."""
    used: list[tuple[int, int]] = []
    end = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) != 3:
            continue  # comments, and the "current_pos status" line
        start, size, status = int(fields[0], 16), int(fields[1], 16), fields[2]
        end = max(end, start + size)
        if status == "+" and size:
            if used and used[-1][1] == start:
                used[-1] = (used[-1][0], start + size)
            else:
                used.append((start, start + size))
    return used, end


def used_blocks(device: str, fstype: str) -> tuple[list[tuple[int, int]], int]:
    """Map the filesystem on `device`: (used byte ranges relative to it, end of the map)."""
    tool = f"partclone.{TOOLS[fstype]}"
    with tempfile.TemporaryDirectory(prefix="p2v-domain-") as tmp:
        out = os.path.join(tmp, "domain.log")
        try:
            proc = subprocess.run([tool, "--domain", "-q", "-s", device, "-O", out],
                                  capture_output=True, text=True, timeout=3600)
        except FileNotFoundError:
            raise PartcloneError(f"{tool} is not installed") from None
        except subprocess.TimeoutExpired:
            raise PartcloneError(f"{tool} did not finish mapping {device} within an hour") from None
        if proc.returncode != 0 or not os.path.exists(out):
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            raise PartcloneError(f"{tool} could not map {device}: {reason}")
        with open(out) as f:
            used, end = parse_domain(f.read())
    if end == 0:
        raise PartcloneError(f"{tool} wrote an empty map for {device}")
    return used, end
