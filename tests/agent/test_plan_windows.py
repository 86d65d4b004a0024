"""Windows volumes whose used blocks cannot be known are read whole, each with its sentence:
BitLocker (what happens to the TPM and the recovery key), dynamic disks, Storage Spaces."""

from __future__ import annotations

from agent import blockdev
from agent.plan import plan_disk, subtract
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
