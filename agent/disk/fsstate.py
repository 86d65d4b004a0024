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

- f2fs: its current checkpoint (the valid pack with the newest version) was written at unmount
  (CP_UMOUNT_FLAG), with no error or fsck flag and checkpointing not disabled. Any other
  checkpoint means a mount that did not end: the first mount then rolls forward every fsync'ed
  node written after that checkpoint, blocks its bitmaps count free;
- exFAT: the boot sector's VolumeDirty flag clear (set at mount, cleared at a clean unmount);
- HFS+: the volume header says unmounted cleanly (kHFSVolumeUnmountedBit) and not inconsistent
  (kHFSBootVolumeInconsistentBit), and a journaled volume's journal is empty (start == end).

Everything is read through the tools' read-only paths, or straight from the device's first
blocks; nothing is replayed or written. btrfs is mapped from its own trees elsewhere; FAT has no
separate allocation map to disagree with its chains; minix is taken as it is.
"""

from __future__ import annotations

import struct
import subprocess
import uuid
import zlib

from agent.disk import blockdev

TIMEOUT = 600.0   # seconds any one look may take

EXT = ("ext2", "ext3", "ext4")


class CannotTell(Exception):
    pass


# What makes Windows leave its volumes clean. With Fast Startup on (the default since Windows 8),
# Shut down hibernates the kernel session and its mounted volumes; only a full shutdown or
# hibernation turned off unmounts them.
WINDOWS_SHUTDOWN = ("boot Windows and shut it down fully: hold Shift while clicking Shut down "
                    "(a plain Shut down with Fast Startup on hibernates, leaving its volumes "
                    "mounted), or run 'powercfg /h off' as administrator (hibernation and Fast "
                    "Startup off) and then shut down")


# Why an NTFS is unclean, as unclean() says it: a Windows in these states is not on the disk yet
# (its session or its log holds the rest), and the repair refuses a copy of it.
NTFS_HIBERNATED = "holds a hibernated Windows (hibernation or Fast Startup left it mounted)"
NTFS_LOG_TO_REPLAY = "was not cleanly unmounted (its $LogFile needs replaying)"


def remedy(fstype: str | None, why: str | None = None) -> str:
    """What to do so the `fstype` filesystem is clean next time, as a sentence; `why` is what
    unclean() said of it."""
    if fstype == "ntfs" and why in (NTFS_HIBERNATED, NTFS_LOG_TO_REPLAY):
        return ("Repair refuses such a copy: Windows' last changes are not on the disk yet, and "
                f"its registry cannot be set for the VM. {WINDOWS_SHUTDOWN[0].upper()}"
                f"{WINDOWS_SHUTDOWN[1:]}; then capture again.")
    if fstype == "ntfs":
        return f"To send only used blocks, {WINDOWS_SHUTDOWN}; then capture again."
    return "To send only used blocks, boot the source's own system once and shut it down cleanly."


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
    if _hibernated(head(node, "/hiberfil.sys", 4)):
        return NTFS_HIBERNATED
    if not logfile_clean(head(node, "$LogFile", 2 * 65536)):
        return NTFS_LOG_TO_REPLAY
    return None


def head(node: str, path: str, size: int) -> bytes:
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


# --- f2fs ---------------------------------------------------------------------------------------

F2FS_MAGIC = 0xF2F52010
F2FS_SUPER_OFFSET = 1024
CP_UMOUNT_FLAG = 0x0001
CP_ERROR_FLAG = 0x0008
CP_FSCK_FLAG = 0x0010
CP_DISABLED_FLAG = 0x1000


def _f2fs(node: str) -> str | None:
    sb = _read(node, F2FS_SUPER_OFFSET, 1024)
    magic, = struct.unpack_from("<I", sb, 0)
    if magic != F2FS_MAGIC:
        raise CannotTell("no f2fs superblock is there")
    log_blocksize, log_blocks_per_seg = struct.unpack_from("<II", sb, 16)
    cp_blkaddr, = struct.unpack_from("<I", sb, 76)
    block = 1 << log_blocksize
    packs = [_f2fs_checkpoint(node, (cp_blkaddr + (i << log_blocks_per_seg)) * block, block)
             for i in range(2)]
    valid = [p for p in packs if p is not None]
    if not valid:
        raise CannotTell("neither of its two checkpoint packs is valid")
    return f2fs_verdict(max(valid)[1])


def _f2fs_checkpoint(node: str, at: int, block: int) -> tuple[int, int] | None:
    """(version, flags) of the checkpoint pack at byte `at`, as the kernel validates it (its
    first and last blocks' CRCs, and the same version in both); None when it is not valid."""
    first = _f2fs_cp_block(_read(node, at, block))
    if first is None:
        return None
    version, flags, total = first
    last = _f2fs_cp_block(_read(node, at + (total - 1) * block, block)) if total else None
    if last is None or last[0] != version:
        return None
    return version, flags


def _f2fs_cp_block(cp: bytes) -> tuple[int, int, int] | None:
    """(checkpoint_ver, ckpt_flags, cp_pack_total_block_count) of a checkpoint block whose CRC
    (f2fs's CRC32, seeded with the magic, at checksum_offset) is right; else None."""
    if len(cp) < 4096:
        return None
    version, = struct.unpack_from("<Q", cp, 0)
    flags, total = struct.unpack_from("<II", cp, 132)
    at, = struct.unpack_from("<I", cp, 164)
    if not 168 <= at <= len(cp) - 4:
        return None
    if struct.unpack_from("<I", cp, at)[0] != f2fs_crc32(cp[:at]):
        return None
    return version, flags, total


def f2fs_crc32(data: bytes) -> int:
    """f2fs's checksum: CRC-32 (reflected, 0xEDB88320) from the seed F2FS_MAGIC, with neither
    zlib's initial nor its final inversion."""
    return zlib.crc32(data, F2FS_MAGIC ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def f2fs_verdict(flags: int) -> str | None:
    """The verdict from the current checkpoint's ckpt_flags."""
    if flags & (CP_ERROR_FLAG | CP_FSCK_FLAG):
        return "has errors recorded that fsck.f2fs has not repaired"
    if flags & CP_DISABLED_FLAG:
        return "was mounted with checkpoints disabled (what it wrote since is not checkpointed)"
    if not flags & CP_UMOUNT_FLAG:
        return ("was not cleanly unmounted (its last checkpoint is not an unmount's: the first "
                "mount recovers what was fsync'ed after it)")
    return None


# --- exFAT ----------------------------------------------------------------------------------------

EXFAT_VOLUME_DIRTY = 0x0002


def _exfat(node: str) -> str | None:
    boot = _read(node, 0, 512)
    if boot[3:11] != b"EXFAT   ":
        raise CannotTell("no exFAT boot sector is there")
    flags, = struct.unpack_from("<H", boot, 106)
    if flags & EXFAT_VOLUME_DIRTY:
        return "was not cleanly unmounted (its boot sector's VolumeDirty flag is set)"
    return None


# --- HFS+ -----------------------------------------------------------------------------------------

HFS_UNMOUNTED = 1 << 8
HFS_INCONSISTENT = 1 << 11
HFS_JOURNALED = 1 << 13
JOURNAL_IN_FS = 0x1
JOURNAL_MAGIC = 0x4A4E4C78        # "JNLx"
JOURNAL_ENDIAN = 0x12345678


def _hfsplus(node: str) -> str | None:
    header = _read(node, 1024, 512)
    if header[:2] not in (b"H+", b"HX"):
        raise CannotTell("no HFS+ volume header is there")
    attributes, _, journal_info = struct.unpack_from(">III", header, 4)
    block_size, = struct.unpack_from(">I", header, 40)
    if attributes & HFS_INCONSISTENT:
        return "was not cleanly unmounted (its volume header says it is inconsistent)"
    if not attributes & HFS_UNMOUNTED:
        return "was not cleanly unmounted (its volume header says it is still mounted)"
    if attributes & HFS_JOURNALED and not _hfs_journal_empty(node, journal_info * block_size):
        return "was not cleanly unmounted (its journal holds transactions to replay)"
    return None


def _hfs_journal_empty(node: str, info_at: int) -> bool:
    """Is the journal the journal info block at byte `info_at` describes empty? Its header is
    written in the writer's byte order, which its endian field tells."""
    info = _read(node, info_at, 52)
    flags, = struct.unpack_from(">I", info, 0)
    if not flags & JOURNAL_IN_FS:
        raise CannotTell("its journal is on another device")
    offset, = struct.unpack_from(">Q", info, 36)
    header = _read(node, offset, 32)
    for order in (">", "<"):
        magic, endian, start, end = struct.unpack_from(f"{order}IIQQ", header, 0)
        if magic == JOURNAL_MAGIC and endian == JOURNAL_ENDIAN:
            return start == end
    raise CannotTell("its journal header is not readable")


# --- helpers --------------------------------------------------------------------------------------

def _read(node: str, offset: int, size: int) -> bytes:
    try:
        with open(node, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as e:
        raise CannotTell(f"{node} could not be read at byte {offset}: {e.strerror}") from None
    if len(data) < size:
        raise CannotTell(f"{node} ends before byte {offset + size}")
    return data


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


_CHECKS = {"ext2": _ext, "ext3": _ext, "ext4": _ext, "xfs": _xfs, "ntfs": _ntfs, "f2fs": _f2fs,
           "exfat": _exfat, "hfsplus": _hfsplus}
