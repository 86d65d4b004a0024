"""Windows volumes whose used blocks cannot be known are read whole, each with its sentence:
BitLocker (what happens to the TPM and the recovery key), dynamic disks, Storage Spaces."""

from __future__ import annotations

from agent.disk import blockdev
from agent.disk.plan import plan_disk, subtract
from support import rescan, run

MIB = 1024 * 1024


def test_bitlocker_volume_is_read_whole_with_the_recovery_key_warning(loopdev):
    dev = loopdev(64 * MIB)
    run("sfdisk", "-q", dev, input="label: gpt\n,,EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n")
    (part,) = rescan(dev)
    run("mkntfs", "-Q", "-q", part)
    with open(part, "r+b") as f:   # what BitLocker writes over an NTFS boot sector's OEM id
        f.seek(3)
        f.write(b"-FVE-FS-")
    plan = plan_disk(dev)
    (p,) = blockdev.partition_table(dev).partitions
    assert subtract([(p.start, p.start + p.size)], plan.used) == []   # all of it is read
    (warning,) = plan.warnings
    assert warning.startswith(f"{part} is encrypted with BitLocker")
    assert "recovery key" in warning and "TPM" in warning


def test_dynamic_disk_partition_is_read_whole_with_a_warning(loopdev):
    dev = loopdev(64 * MIB)
    run("sfdisk", "-q", dev, input="label: dos\n,,42\n")
    (part,) = rescan(dev)
    run("mkntfs", "-Q", "-q", part)   # a simple volume at the start, as a converted disk holds
    plan = plan_disk(dev)
    assert plan.used == [(0, 64 * MIB)]
    (warning,) = plan.warnings
    assert warning.startswith(f"{part} is part of a Windows dynamic disk (LDM)")


def test_storage_spaces_partition_is_read_whole_with_a_warning(loopdev):
    dev = loopdev(64 * MIB)
    run("sfdisk", "-q", dev, input="label: gpt\n,,E75CAF8F-F680-4CEE-AFA3-B001E56EFC2D\n")
    (part,) = rescan(dev)
    plan = plan_disk(dev)
    assert plan.read_bytes == 64 * MIB
    (warning,) = plan.warnings
    assert "Storage Spaces pool" in warning


def test_a_hibernated_windows_is_said_to_be_refused_by_the_repair_a_dirty_one_is_not(loopdev):
    # Read whole either way; but the repair refuses a hibernated copy (ntfs-3g cannot write it,
    # and Windows' state is not on the disk): the technician must hear it before the transfer.
    import sys
    from pathlib import Path
    from agent.windows import winwarn
    sys.path.insert(0, str(Path(__file__).parent))
    from test_unclean import _mark_dirty
    dev = loopdev(64 * MIB)
    run("sfdisk", "-q", dev, input="label: dos\n,,7\n")
    (part,) = rescan(dev)
    run("mkntfs", "-Q", "-q", part)
    mnt = Path(run("mktemp", "-d").stdout.strip())
    run("mount", "-t", "ntfs-3g", part, str(mnt))
    try:
        (mnt / "hiberfil.sys").write_bytes(b"HIBR" + bytes(8188))
    finally:
        run("umount", str(mnt))
        mnt.rmdir()
    (warning,) = plan_disk(dev).warnings
    assert "hibernated Windows" in warning and "Repair refuses such a copy" in warning, warning
    assert "Repair refuses such a copy" in winwarn.lines(winwarn.check(probe(dev)))[0]
    # Not hibernated any more, but chkdsk pending: the repair goes on with such a copy.
    mnt = Path(run("mktemp", "-d").stdout.strip())
    run("mount", "-t", "ntfs-3g", "-o", "remove_hiberfile", part, str(mnt))
    try:
        (mnt / "hiberfil.sys").write_bytes(bytes(8192))
    finally:
        run("umount", str(mnt))
        mnt.rmdir()
    _mark_dirty(part)
    (warning,) = plan_disk(dev).warnings
    assert "marked dirty" in warning and "Repair refuses" not in warning, warning


def probe(dev):
    from agent.probe import probe_machine
    return probe_machine(devices=[dev])
