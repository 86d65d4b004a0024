"""Unclean filesystems: a journal or log that needs recovery is never trusted for a used-block map.

The source is a power cut for real: filesystems mounted, files written and fsync'ed, the
filesystems shut down and the disk copied as it then is, with the journal or log holding
committed transactions the on-disk bitmaps do not count yet (partclone's map misses the files).
Captured into a real p2v-server and restored onto a disk of random bytes, every file must come
back once the restored filesystem is mounted (its journal replayed), and fsck must be clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import tempfile
import uuid
import warnings
from pathlib import Path

from agent.disk import fsstate, partclone
from agent.transfer import capture, restore
from agent.disk.plan import plan_disk, total
from agent.settings import Settings
from sourcedisks import MiB, Volume, checksums, loop_at, mounted
from support import rescan, run

LAYOUT = """label: gpt
size=160MiB, name=root
size=96MiB, name=old
size=300MiB, name=srv
"""
DISK_SIZE = 560 * MiB
FILESYSTEMS = [("root", "ext4", 60 * MiB), ("old", "ext3", 30 * MiB), ("srv", "xfs", 60 * MiB)]
MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "ext3": ["mkfs.ext3", "-q", "-F"],
        "xfs": ["mkfs.xfs", "-q", "-f"]}


def settings_for(server, **kw) -> Settings:
    return Settings(server=server.url, token=server.token, fingerprint=server.fingerprint, **kw)


def _files(seed: int, big: int) -> dict[str, bytes]:
    """What is written after the mount: a big random file, small ones, a directory."""
    rng = random.Random(seed)
    files = {"big.bin": rng.randbytes(big), "etc/blob": rng.randbytes(3 * MiB + 123)}
    files.update((f"etc/conf{i}", f"setting {i}\n".encode() * 100) for i in range(5))
    return files


def _write_synced(mnt: Path, files: dict[str, bytes]) -> None:
    for path, body in files.items():
        (mnt / path).parent.mkdir(exist_ok=True)
        with open(mnt / path, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
    for d in (mnt / "etc", mnt):
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def crashed_source(loopdev, source: str) -> tuple[list[Volume], dict[str, dict[str, str]],
                                                  dict[str, int]]:
    """Make `source` a disk whose every filesystem needs recovery: (its volumes, each volume's
    files' sha256 by path, each volume's mapped bytes when fresh plus its big file's)."""
    live = loopdev(DISK_SIZE, "live")
    run("sfdisk", "-q", live, input=LAYOUT)
    nodes = rescan(live)
    table = json.loads(run("sfdisk", "--json", live).stdout)["partitiontable"]["partitions"]
    volumes, sums, unmapped, files = [], {}, {}, {}
    for seed, (node, part, (name, fstype, big)) in enumerate(zip(nodes, table, FILESYSTEMS)):
        run(*MKFS[fstype], "-L", name, node)
        volumes.append(Volume(name, fstype, int(part["start"]) * 512, int(part["size"]) * 512))
        unmapped[name] = total(partclone.used_blocks(node, fstype)[0]) + big
        files[name] = _files(seed, big)
        sums[name] = {path: hashlib.sha256(body).hexdigest() for path, body in files[name].items()}
    # From the first write to the copy, as little time as can be: a `sync` anywhere on the
    # machine meanwhile writes ext4's bitmaps home (see map_misses_files).
    with tempfile.TemporaryDirectory(prefix="p2v-live-") as tmp:
        mnts = []
        try:
            for node, volume in zip(nodes, volumes):
                mnt = Path(tmp) / volume.name
                mnt.mkdir()
                run("mount", "-t", volume.fstype, node, str(mnt))
                mnts.append(mnt)
            for mnt, volume in zip(mnts, volumes):
                _write_synced(mnt, files[volume.name])
            # The power cut: the filesystems stop, and the disk is copied as it is at once.
            for mnt in mnts:
                run("xfs_io", "-x", "-c", "shutdown", str(mnt))
            run("cp", "--sparse=always", _backing(live), _backing(source))
        finally:
            for mnt in mnts:
                subprocess.run(["umount", str(mnt)], capture_output=True)
    run("blockdev", "--flushbufs", source)
    rescan(source)
    return volumes, sums, unmapped


def _backing(dev: str) -> str:
    return run("losetup", "-nO", "BACK-FILE", dev).stdout.strip()


def map_misses_files(dev: str, volume: Volume, at_least: int) -> bool:
    """Does partclone's map of `volume` (what the plan trusted before) count less than
    `at_least` bytes, so that it misses the big file? Not when a `sync` elsewhere on the machine
    wrote ext4's bitmaps home before the cut: then partclone refuses the map (its free counts
    disagree) and the old plan read the filesystem whole by chance."""
    with loop_at(dev, volume.offset, volume.size, readonly=True) as node:
        try:
            used, _ = partclone.used_blocks(node, volume.fstype)
        except partclone.PartcloneError:
            return False
    return total(used) < at_least


def needs_recovery(dev: str, volume: Volume) -> bool:
    """What the filesystem's own tools say, independently of the agent."""
    with loop_at(dev, volume.offset, volume.size, readonly=True) as node:
        if volume.fstype == "xfs":
            return "state: <DIRTY>" in run("xfs_logprint", "-t", node).stdout
        return "needs_recovery" in run("dumpe2fs", "-h", node).stdout


def replayed_checksums(dev: str, volume: Volume) -> dict[str, str]:
    """Mount read-write (the journal or log replayed, as on the VM's first boot), then hash."""
    with loop_at(dev, volume.offset, volume.size) as node:
        with mounted(node, volume.fstype):
            pass
    return {k: v for k, v in checksums(dev, volume).items() if not k.startswith("lost+found")}


def fsck_clean(dev: str, volume: Volume) -> None:
    with loop_at(dev, volume.offset, volume.size, readonly=True) as node:
        cmd = ["xfs_repair", "-n", node] if volume.fstype == "xfs" else ["e2fsck", "-f", "-n", node]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{volume.name}: {' '.join(cmd)}: {proc.stdout}{proc.stderr}"


def test_unclean_filesystems_come_back_whole(loopdev, p2v_server):
    source = loopdev(DISK_SIZE, "source")
    for _ in range(3):
        volumes, sums, unmapped = crashed_source(loopdev, source)
        for volume in volumes:
            assert needs_recovery(source, volume), f"{volume.name}: the cut left nothing to replay"
        missed = {v.name for v in volumes if map_misses_files(source, v, unmapped[v.name])}
        if len(missed) == len(volumes):
            break
    assert "srv" in missed, "XFS's map counts the files its log alone holds: no fault to test"
    if len(missed) < len(volumes):
        warnings.warn(f"{sorted({v.name for v in volumes} - missed)}: a sync elsewhere on this "
                      "machine wrote the bitmaps home before each cut; partclone refuses such a "
                      "map, so the old plan too would have read them whole")

    plan = plan_disk(source)
    assert len(plan.warnings) == len(volumes), plan.notes
    for volume, warning in zip(volumes, plan.warnings):
        assert warning.startswith(f"{volume.fstype} on {source}p") and "read whole" in warning
        assert ("its log is dirty" if volume.fstype == "xfs" else "its journal needs recovery") \
            in warning
        assert "shut it down cleanly" in warning
    for volume in volumes:  # each filesystem is read whole
        assert any(s <= volume.offset and volume.offset + volume.size <= e for s, e in plan.used)

    result = capture.run(settings_for(p2v_server, disks=[source], name="unclean", streams=4),
                         identity={"system_uuid": str(uuid.uuid4())})
    (disk,) = result.disks
    assert disk.warnings == plan.warnings
    agent_log = (p2v_server.data_dir / "jobs" / result.job / "agent.log").read_text()
    assert "(its journal needs recovery): read whole" in agent_log

    target = loopdev(DISK_SIZE, "target")
    rng = random.Random(7)
    with open(target, "r+b") as f:  # a used disk: what the restore does not write stays random
        for _ in range(DISK_SIZE // (4 * MiB)):
            f.write(rng.randbytes(4 * MiB))
    restore.run(settings_for(p2v_server, job=result.job, streams=4), target)
    rescan(target)
    for volume in volumes:
        assert replayed_checksums(target, volume) == sums[volume.name], volume.name
        fsck_clean(target, volume)


# --- NTFS: Windows' $LogFile, dirty flag and hibernation --------------------------------------------

def _restart_page(clean: bool, lsn: int) -> bytes:
    """A $LogFile restart page as Windows leaves it: "RSTR", 4 KiB pages, a restart area at 0x30
    whose client is in use (a mounted volume) unless `clean`."""
    page = bytearray(4096)
    struct.pack_into("<4sHHQIIHhh", page, 0, b"RSTR", 0x1E, 9, 0, 4096, 4096, 0x30, 1, 1)
    struct.pack_into("<QHHHH", page, 0x30, lsn, 1, 0xFFFF, 0xFFFF if clean else 0, 0)
    return bytes(page)


def _logfile_offset(node: str) -> int:
    runs = run("ntfsinfo", "-i", "2", "-v", node).stdout.split("Runlist:")[1].splitlines()[1]
    _, lcn, _ = runs.split()
    return int(lcn, 16) * 4096


def _mark_dirty(node: str) -> None:
    """Set VOLUME_IS_DIRTY in $Volume's volume information (MFT record 3, and its mirror), as
    Windows does when it wants chkdsk to run."""
    info = run("ntfsinfo", "-m", node).stdout
    cluster = int(info.split("Cluster Size:")[1].split()[0])
    for key in ("LCN of Data Attribute for FILE_MFT:", "LCN of Data Attribute for File_MFTMirr:"):
        record = int(info.split(key)[1].split()[0]) * cluster + 3 * 1024
        with open(node, "r+b") as f:
            f.seek(record)
            mft = bytearray(f.read(1024))
            at = struct.unpack_from("<H", mft, 0x14)[0]
            while struct.unpack_from("<I", mft, at)[0] != 0x70:  # $VOLUME_INFORMATION
                at += struct.unpack_from("<I", mft, at + 4)[0]
            flags = at + struct.unpack_from("<H", mft, at + 0x14)[0] + 10
            assert flags % 512 < 510  # clear of the update sequence
            mft[flags] |= 1
            f.seek(record)
            f.write(mft)


def test_ntfs_windows_did_not_shut_down_cleanly(loopdev):
    disk = loopdev(130 * MiB, "win")
    run("sfdisk", "-q", disk, input="label: gpt\nsize=128MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n")
    (dev,) = rescan(disk)
    run("mkfs.ntfs", "-Q", "-q", "-F", "-c", "4096", dev)
    with mounted(dev, "ntfs") as mnt:
        (mnt / "data.bin").write_bytes(os.urandom(8 * MiB))
    assert fsstate.unclean(dev, "ntfs") is None  # ntfs-3g leaves an empty $LogFile: clean
    assert "ntfs: used blocks only" in plan_disk(disk).notes[1]

    offset = _logfile_offset(dev)
    with open(dev, "r+b") as f:  # Windows lost power with the volume mounted
        f.seek(offset)
        f.write(_restart_page(clean=False, lsn=20) + _restart_page(clean=True, lsn=10))
    plan = plan_disk(disk)
    start = int(run("sfdisk", "--json", disk).stdout.split('"start":')[1].split(",")[0]) * 512
    assert any(s <= start and start + 128 * MiB <= e for s, e in plan.used), plan.notes
    assert plan.warnings == [plan.notes[1]] and "$LogFile needs replaying" in plan.warnings[0]

    with open(dev, "r+b") as f:  # ... and shut down cleanly since
        f.seek(offset)
        f.write(_restart_page(clean=False, lsn=20) + _restart_page(clean=True, lsn=30))
    assert fsstate.unclean(dev, "ntfs") is None

    with mounted(dev, "ntfs") as mnt:  # Fast Startup: hibernated, its volumes still mounted
        (mnt / "hiberfil.sys").write_bytes(b"HIBR" + bytes(4092))
    assert "hibernated Windows" in fsstate.unclean(dev, "ntfs")

    _mark_dirty(dev)  # chkdsk pending
    assert "marked dirty" in fsstate.unclean(dev, "ntfs")


def test_logfile_verdicts():
    assert fsstate.logfile_clean(b"") and fsstate.logfile_clean(b"\xff" * 8192)
    assert not fsstate.logfile_clean(b"garbage" * 100)
    assert not fsstate.logfile_clean(_restart_page(False, 5))
    assert fsstate.logfile_clean(_restart_page(True, 5))


def test_ext_and_xfs_verdicts():
    assert fsstate.ext_verdict({"Filesystem state": "clean",
                                "Filesystem features": "has_journal extent"}) is None
    assert "journal needs recovery" in fsstate.ext_verdict(
        {"Filesystem state": "clean", "Filesystem features": "has_journal needs_recovery"})
    assert "not cleanly unmounted" in fsstate.ext_verdict({"Filesystem state": "not clean"})
    assert "errors" in fsstate.ext_verdict({"Filesystem state": "clean with errors"})
    assert fsstate.xfs_verdict("    log tail: 14 head: 14 state: <CLEAN>") is None
    assert "log is dirty" in fsstate.xfs_verdict("log tail: 2 head: 13 state: <DIRTY>")
    assert "could not be checked" in fsstate.unclean("/dev/null", "xfs")


def test_ext2_that_was_not_unmounted(loopdev):
    dev = loopdev(64 * MiB, "ext2")
    run("mkfs.ext2", "-q", "-F", dev)
    assert fsstate.unclean(dev, "ext2") is None
    with mounted(dev, "ext2") as mnt:  # without a journal, the mount marks it "not clean" on disk
        (mnt / "file").write_bytes(os.urandom(MiB))
        os.sync()
        assert "its state is 'not clean'" in fsstate.unclean(dev, "ext2")
    assert fsstate.unclean(dev, "ext2") is None
