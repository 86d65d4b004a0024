"""Used-block maps of filesystems, from `partclone.<fs> --domain`.

partclone writes a ddrescue-style domain log: one line per run of bytes, `+` where the filesystem
uses them and `?` where it does not. Bytes past the log's end (a filesystem smaller than its
partition) are not described, so the caller reads them whole. The log is taken as soon as it
reaches the end its header announces: partclone then only sleeps out a progress tick (two
seconds per filesystem) before it exits.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time

# blkid TYPE -> partclone tool suffix (bookworm's partclone 0.3.x). Not btrfs: partclone maps its
# logical space, not each device's copies and stripes (agent/disk/btrfs.py does).
TOOLS: dict[str, str] = {
    "ext2": "extfs",
    "ext3": "extfs",
    "ext4": "extfs",
    "xfs": "xfs",
    "ntfs": "ntfs",
    "vfat": "fat",
    "exfat": "exfat",
    "f2fs": "f2fs",
    "hfsplus": "hfsp",
    "minix": "minix",
}


TIMEOUT = 3600.0   # seconds a map may take
POLL = 0.02        # seconds between looks at the map being written


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
        with open(os.path.join(tmp, "output"), "w+") as output:
            try:
                proc = subprocess.Popen([tool, "--domain", "-q", "-s", device, "-O", out],
                                        stdout=output, stderr=output)
            except FileNotFoundError:
                raise PartcloneError(f"{tool} is not installed") from None
            try:
                complete = _wait_for_map(proc, out, time.monotonic() + TIMEOUT)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                proc.wait()
            if complete is None:
                raise PartcloneError(f"{tool} did not finish mapping {device} within an hour")
            if not complete and (proc.returncode != 0 or not os.path.exists(out)):
                output.seek(0)
                lines = [ln for ln in output.read().splitlines() if ln.strip()]
                reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
                raise PartcloneError(f"{tool} could not map {device}: {reason}")
        with open(out) as f:
            used, end = parse_domain(f.read())
    if end == 0:
        raise PartcloneError(f"{tool} wrote an empty map for {device}")
    return used, end


def _wait_for_map(proc: subprocess.Popen, path: str, deadline: float) -> bool | None:
    """True once the domain log describes everything up to its `current_pos` line, False when
    partclone exited first, None at the deadline.

    partclone writes its map as it goes, then lets a progress thread sleep out its last two
    seconds before it exits; a complete map need not wait for that.
    """
    log = _DomainProgress()
    with contextlib.ExitStack() as stack:
        f = None
        while True:
            exited = proc.poll() is not None
            if f is None and os.path.exists(path):
                f = stack.enter_context(open(path))
            if f is not None and log.feed(f.read()):
                return True
            if exited:
                return False
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL)


class _DomainProgress:
    """Follows a domain log as it is written: is it complete yet?"""

    def __init__(self):
        self.partial = ""
        self.current_pos: int | None = None
        self.end = 0

    def feed(self, text: str) -> bool:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                if len(fields) == 2 and self.current_pos is None:
                    self.current_pos = int(fields[0], 16)
                elif len(fields) == 3:
                    self.end = max(self.end, int(fields[0], 16) + int(fields[1], 16))
            except ValueError:
                continue
        return bool(self.current_pos) and self.end >= self.current_pos
