"""What lies partly on a disk that is not being captured: an LV with a segment or an image on
another disk's PV, a btrfs with a device there, an md array with a member there, an XFS whose
external log is there. On the VM each would be incomplete, so the plan warns and names the other
device and its disk; captured together, nothing is said. An XFS's external log is found among
the attached devices by its UUID, so a clean one is mapped, and a missing one is said to be so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from agent.disk import fsstate
from agent.disk.plan import plan_disk
from sourcedisks import MiB
from support import run
from test_plan_lvm import build

sys.path.insert(0, str(Path(__file__).parents[1] / "machines"))
import md_superblock  # noqa: E402


def lies_partly(warning: str, what: str, device: str) -> bool:
    return (f"{what} lies partly on {device} (disk {Path(device).name}), not among the disks "
            f"being captured: on the VM it would be incomplete. Select that disk too (--disks)."
            in warning)


def test_an_lv_with_a_part_on_a_disk_not_captured_is_a_warning(loopdev):
    layout = build(loopdev)
    one, other = layout.disks
    alone = plan_disk(one)
    spanning = ("mir", "multi", "r1", "striped", "wc")   # an image, a segment or a cache there
    for name in spanning:
        assert any(lies_partly(w, f"LV {layout.vg}/{name}", other) for w in alone.warnings), \
            (name, alone.warnings)
    assert not any(f"LV {layout.vg}/{n} lies" in w for w in alone.warnings
                   for n in ("plain", "origin", "pool", "cached")), alone.warnings
    together = plan_disk(one, [other])
    assert not any("lies partly" in w for w in together.warnings), together.warnings


def test_a_btrfs_with_a_device_on_a_disk_not_captured_is_a_warning(loopdev):
    a, b = loopdev(300 * MiB, "btrfs-a"), loopdev(300 * MiB, "btrfs-b")
    run("mkfs.btrfs", "-q", "-f", "-d", "raid0", "-m", "raid1", a, b)
    try:
        fsid = run("blkid", "-p", "-o", "value", "-s", "UUID", a).stdout.strip()
        (warning,) = plan_disk(a).warnings
        assert lies_partly(warning, f"btrfs {fsid}", b), warning
        assert not plan_disk(a, [b]).warnings
        with open(b, "r+b") as f:   # its superblocks gone: as if that disk were not attached
            for at in (64 * 1024, 64 * MiB):
                f.seek(at)
                f.write(bytes(4096))
        (warning,) = plan_disk(a, [b]).warnings
        assert f"btrfs {fsid} lies partly 1 of its 2 devices not attached" in warning, warning
    finally:
        for dev in (a, b):
            subprocess.run(["btrfs", "device", "scan", "--forget", dev], capture_output=True)


def test_an_md_member_whose_twin_is_on_a_disk_not_captured_is_a_warning(loopdev):
    a, b = loopdev(64 * MiB, "md-a"), loopdev(64 * MiB, "md-b")
    md_superblock.write_raid1([a, b], "box:7")
    (warning,) = plan_disk(a).warnings
    assert lies_partly(warning, "RAID array box:7 (raid1)", b), warning
    assert not plan_disk(a, [b]).warnings


@contextlib.contextmanager
def mounted_with_log(data: str, log: str):
    with tempfile.TemporaryDirectory(prefix="p2v-mnt-") as mnt:
        run("mount", "-t", "xfs", "-o", f"logdev={log}", data, mnt)
        try:
            yield Path(mnt)
        finally:
            run("umount", mnt)


def xfs_with_external_log(loopdev) -> tuple[str, str]:
    data, log = loopdev(320 * MiB, "xfs-data"), loopdev(80 * MiB, "xfs-log")
    run("mkfs.xfs", "-q", "-f", "-l", f"logdev={log},size=64m", data)
    with mounted_with_log(data, log) as mnt:
        (mnt / "file").write_bytes(os.urandom(8 * MiB))
    return data, log


def test_a_clean_xfs_with_an_external_log_is_checked_and_its_log_disk_named(loopdev):
    data, log = xfs_with_external_log(loopdev)
    assert fsstate.unclean(data, "xfs") is None
    together = plan_disk(data, [log])
    # partclone.xfs aborts on an external log ("has an external log"): read whole, safely
    assert not together.warnings and "read whole" in together.notes[0], together.notes
    (warning,) = plan_disk(data).warnings
    assert lies_partly(warning, "xfs (its external log)", log), warning


def test_a_dirty_external_log_is_read_with_its_device(loopdev):
    data, log = xfs_with_external_log(loopdev)
    with mounted_with_log(data, log) as mnt:
        with open(mnt / "fsynced", "wb") as f:
            f.write(os.urandom(4 * MiB))
            os.fsync(f.fileno())
        run("xfs_io", "-x", "-c", "shutdown", str(mnt))   # the power cut
    assert fsstate.unclean(data, "xfs") == "was not cleanly unmounted (its log is dirty)"


def test_an_external_log_not_attached_is_said_to_be_so(loopdev):
    data, log = xfs_with_external_log(loopdev)
    # Another XFS's external log is attached; it is not taken for this one's.
    other_data, other_log = loopdev(320 * MiB, "other-data"), loopdev(80 * MiB, "other-log")
    run("mkfs.xfs", "-q", "-f", "-l", f"logdev={other_log},size=64m", other_data)
    with open(log, "r+b") as f:   # the log's records gone: as if its disk were not attached
        f.write(bytes(MiB))
    fs_uuid = run("blkid", "-p", "-o", "value", "-s", "UUID", data).stdout.strip()
    said = fsstate.unclean(data, "xfs")
    assert said == (f"could not be checked for a clean unmount (its log is on an external "
                    f"device, and no attached block device holds an XFS external log with its "
                    f"UUID {fs_uuid}: attach the disk that holds its log (mount option logdev= "
                    f"in the source's fstab names it) and select it for capture too)")
    (warning,) = plan_disk(data, [log, other_log]).warnings
    assert said in warning and "read whole" in warning
