"""Whether a filesystem's used-block map can be trusted: was it cleanly unmounted?

A filesystem that lost power, crashed or was hard-reset keeps blocks of committed files in its
journal or log only; its on-disk bitmaps (what partclone maps) do not count them yet. On the VM the
first mount replays the journal and those files read whatever the target held there. So a map is
trusted only when nothing is left to replay or repair:

- ext2/3/4: not `needs_recovery` (the journal holds committed transactions), state `clean` (an
  ext2, or ext4 without a journal, that was not unmounted is not), no errors recorded;
- XFS: a clean log (head and tail meet, as the kernel decides before replaying it), which
  `xfs_logprint -t` reports as `state: <CLEAN>` once it has found the log's head and tail; an
  external log is looked for among the attached devices by its UUID and read with `-l`;
- NTFS: no dirty flag (chkdsk pending), a clean or empty `$LogFile` restart area (Windows replays
  it otherwise), and no hibernated Windows in `hiberfil.sys` (Fast Startup leaves its filesystems
  mounted in the hibernated session).

Everything is read through the tools' read-only paths; nothing is replayed or written. btrfs is
mapped from its own trees elsewhere; FAT has no separate allocation map to disagree with its
chains; the other filesystems partclone knows are taken as they are.
"""

from __future__ import annotations

import struct
import subprocess
import uuid

from agent import blockdev

TIMEOUT = 600.0   # seconds any one look may take

EXT = ("ext2", "ext3", "ext4")


class CannotTell(Exception):
    pass


def unclean(node: str, fstype: str | None) -> str | None:
    """None when the map of the `fstype` filesystem on `node` can be trusted; otherwise why not,
    as words that follow the filesystem's name: "was not cleanly unmounted (its journal needs
    recovery)". A filesystem whose state cannot be read is not trusted either."""
    check = _CHECKS.get(fstype or "")
    if check is None:
        return None
    try:
        return check(node)
    except CannotTell as e:
        return f"could not be checked for a clean unmount ({e})"


# --- ext2/3/4 -------------------------------------------------------------------------------------

def _ext(node: str) -> str | None:
    proc = _run(["dumpe2fs", "-h", node], "dumpe2fs")
    header = {}
    for line in proc.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            header.setdefault(key.strip(), value.strip())
    return ext_verdict(header)


def ext_verdict(header: dict[str, str]) -> str | None:
    """The verdict from `dumpe2fs -h`'s fields (Filesystem features, Filesystem state)."""
    if "Filesystem state" not in header:
        raise CannotTell("dumpe2fs shows no filesystem state")
    features = header.get("Filesystem features", "").split()
    state = header["Filesystem state"]
    if "needs_recovery" in features:
        return "was not cleanly unmounted (its journal needs recovery)"
    if "with errors" in state:
        return "has errors recorded that fsck has not repaired"
    if state != "clean":
        return f"was not cleanly unmounted (its state is '{state}')"
    return None


# --- XFS ------------------------------------------------------------------------------------------

def _xfs(node: str) -> str | None:
    logs = xfs_log_devices(node)
    verdicts = [_xfs_log(node, log) for log in logs or [None]]
    return next((v for v in verdicts if v), None)


def _xfs_log(node: str, log: str | None) -> str | None:
    # -t prints "log tail: T head: H state: <CLEAN|DIRTY>" first, then every transaction of a
    # dirty log (up to 2 GiB of it): stop reading at the verdict.
    cmd = ["xfs_logprint", "-t", *(["-l", log] if log else []), node]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
    except FileNotFoundError:
        raise CannotTell("xfs_logprint is not installed") from None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if "mismatched uuid" in line:
                # it goes on to judge the other filesystem's log
                raise CannotTell(f"the external log device {log} belongs to another XFS")
            if "state:" in line:
                return xfs_verdict(line)
            if len(lines) > 50:
                break
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    said = next((ln for ln in reversed(lines) if ln.rstrip(":")), "no output")
    raise CannotTell(f"xfs_logprint could not read its log{f' on {log}' if log else ''}: {said}")


XFS_MAGIC = b"XFSB"


def xfs_log_devices(node: str) -> list[str]:
    """The attached block devices that hold the external log of the XFS on `node`: [] when its
    log is internal. An external log (the superblock's sb_logstart is 0) is known by its log
    records' filesystem UUID, which the kernel checks against the superblock's at mount and
    blkid reports as the LOGUUID of a TYPE=xfs_external_log device. Several (a cloned disk
    attached too) are all returned; none found is CannotTell, saying so."""
    try:
        with open(node, "rb") as f:
            sb = f.read(56)
    except OSError as e:
        raise CannotTell(f"its superblock could not be read: {e.strerror}") from None
    if len(sb) < 56 or sb[:4] != XFS_MAGIC:
        raise CannotTell("no XFS superblock is there")
    if struct.unpack_from(">Q", sb, 48)[0] != 0:
        return []
    fs_uuid = str(uuid.UUID(bytes=sb[32:48]))
    found = []
    try:
        logs = blockdev.devices_matching("TYPE=xfs_external_log")
    except blockdev.BlockDevError as e:
        raise CannotTell(str(e).rstrip(".")) from None
    for device in logs:
        if device.get("LOGUUID") == fs_uuid:
            found.append(device["DEVNAME"])
    if not found:
        raise CannotTell(
            f"its log is on an external device, and no attached block device holds an XFS "
            f"external log with its UUID {fs_uuid}: attach the disk that holds its log (mount "
            f"option logdev= in the source's fstab names it) and select it for capture too")
    return found


def xfs_verdict(line: str) -> str | None:
    """The verdict from xfs_logprint's "log tail: 2 head: 13 state: <DIRTY>" line."""
    if "<CLEAN>" in line:
        return None
    if "<DIRTY>" in line:
        return "was not cleanly unmounted (its log is dirty)"
    raise CannotTell(f"xfs_logprint said '{line.strip()}'")


# --- NTFS -----------------------------------------------------------------------------------------

VOLUME_IS_DIRTY = 0x0001
LOGFILE_NO_CLIENT = 0xFFFF
RESTART_VOLUME_IS_CLEAN = 0x0002


def _ntfs(node: str) -> str | None:
    info = _run(["ntfsinfo", "-f", "-m", node], "ntfsinfo")  # -f: it refuses a dirty one
    flags = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                  if ln.strip().startswith("Volume Flags:")), None)
    if flags is None:
        raise CannotTell("ntfsinfo shows no volume flags")
    if int(flags.split()[0], 16) & VOLUME_IS_DIRTY:  # "0x0001 DIRTY"
        return "is marked dirty (Windows would run chkdsk on it)"
    if _hibernated(_head(node, "/hiberfil.sys", 4)):
        return "holds a hibernated Windows (hibernation or Fast Startup left it mounted)"
    if not logfile_clean(_head(node, "$LogFile", 2 * 65536)):
        return "was not cleanly unmounted (its $LogFile needs replaying)"
    return None


def _head(node: str, path: str, size: int) -> bytes:
    """The first `size` bytes of file `path` on the NTFS `node`; b"" when there is no such file."""
    try:
        proc = subprocess.Popen(["ntfscat", node, path], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise CannotTell("ntfscat is not installed") from None
    try:
        data = proc.stdout.read(size)
    finally:
        proc.kill()
        _, err = proc.communicate()
    if not data and b"not found" not in err.lower() and b"no such" not in err.lower():
        raise CannotTell(f"ntfscat could not read {path}: "
                          f"{err.decode(errors='replace').strip() or 'no output'}")
    return data


def _hibernated(head: bytes) -> bool:
    return head[:4].lower() == b"hibr"


def logfile_clean(data: bytes) -> bool:
    """Is the $LogFile that begins with `data` clean, as ntfs-3g decides before a read-write mount?

    Its two restart pages ("RSTR", the second at the first's system page size) say so; the one
    with the higher current LSN counts. Untouched or emptied (all 0xff, as mkntfs and ntfs-3g
    leave it), nothing is to be replayed. Anything else unreadable is not clean.
    """
    if not data or data.count(0xFF) == len(data):
        return True
    pages = []
    offset = 0
    while offset + 0x40 <= len(data) and len(pages) < 2:
        if data[offset:offset + 4] == b"RSTR":
            page_size, = struct.unpack_from("<I", data, offset + 0x10)
            ra = offset + struct.unpack_from("<H", data, offset + 0x18)[0]
            if ra + 0x10 <= len(data):
                lsn, _, _, in_use, flags = struct.unpack_from("<QHHHH", data, ra)
                pages.append((lsn, in_use, flags))
            offset += page_size if page_size >= 512 else 4096
        elif offset == 0:
            offset = 4096  # a damaged first page: the second sits at the usual 4 KiB
        else:
            break
    if not pages:
        return False
    _, in_use, flags = max(pages)
    return in_use == LOGFILE_NO_CLIENT or bool(flags & RESTART_VOLUME_IS_CLEAN)


# --- helpers --------------------------------------------------------------------------------------

def _run(cmd: list[str], tool: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT)
    except FileNotFoundError:
        raise CannotTell(f"{tool} is not installed") from None
    except subprocess.TimeoutExpired:
        raise CannotTell(f"{tool} did not answer within {TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        said = proc.stderr.strip().splitlines()
        raise CannotTell(f"{tool}: {said[-1] if said else f'exit status {proc.returncode}'}")
    return proc.stdout


_CHECKS = {"ext2": _ext, "ext3": _ext, "ext4": _ext, "xfs": _xfs, "ntfs": _ntfs}
