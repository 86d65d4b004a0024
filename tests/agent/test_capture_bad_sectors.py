"""Read errors: retried in smaller reads, zero-filled, reported; the rest of the disk arrives."""

from __future__ import annotations

import os
import random
import uuid

from agent.transfer import capture, restore
from agent.disk.plan import plan_disk
from agent.transfer.progress import Progress
from support import rescan, run
from faultydisk import FaultyDisk
from sourcedisks import MiB, mounted
from test_capture_restore import settings_for


def test_unreadable_sectors_are_zero_filled_and_reported(loopdev, p2v_server, tmp_path):
    dev = loopdev(128 * MiB, "flaky")
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    (part,) = rescan(dev)
    run("mkfs.ext4", "-q", part)
    rng = random.Random(7)
    with mounted(part, "ext4") as mnt:
        for i in range(4):
            (mnt / f"f{i}").write_bytes(rng.randbytes(4 * MiB))
    os.sync()
    plan = plan_disk(dev)
    start, _ = next((s, e) for s, e in plan.used if e - s >= 2 * MiB and s > 8 * MiB)
    first = (start + 64 * 1024) // 4096 * 4096   # the agent's smallest read is a 4 KiB block
    bad = (first, first + 20 * 4096)              # 80 KiB in the middle of a file
    backing = run("losetup", "-nO", "BACK-FILE", dev).stdout.strip()

    events = []
    with FaultyDisk(backing, [bad], tmp_path / "fuse") as flaky:
        with open(flaky, "rb") as f:   # the device really fails there, and only there
            f.seek(bad[0])
            try:
                f.read(4096)
                raise AssertionError("the faulty range read without error")
            except OSError:
                pass
        result = capture.run(settings_for(p2v_server, disks=[flaky], streams=2),
                             Progress([events.append], interval=0.0),
                             identity={"system_uuid": str(uuid.uuid4())})
    (disk,) = result.disks
    assert disk.bad_ranges == [[bad[0], bad[1] - bad[0]]]
    assert events[-1].phase == "done" and "1 unreadable ranges" in events[-1].message
    job = p2v_server.data_dir / "jobs" / result.job / "agent.log"
    assert "unreadable ranges zero-filled" in job.read_text()

    target = tmp_path / "restored.img"
    restore.run(settings_for(p2v_server, job=result.job), str(target))
    with open(backing, "rb") as src, open(target, "rb") as out:
        for s, e in plan.used:
            src.seek(s)
            out.seek(s)
            want, got = bytearray(src.read(e - s)), out.read(e - s)
            lo, hi = max(s, bad[0]), min(e, bad[1])
            if lo < hi:
                want[lo - s:hi - s] = bytes(hi - lo)
            assert got == want, f"range {s}-{e} differs"


def test_a_disk_whose_size_is_not_a_multiple_of_4k_keeps_its_last_sector(p2v_server, tmp_path):
    # The last chunk holds an unreadable sector, so it is read again in small pieces; the disk
    # ends 512 bytes into a 4 KiB block, which a 4 KiB read at that offset runs past.
    size = 12 * MiB - 4096 + 512                       # N * 4096 + 512 bytes
    backing = tmp_path / "odd.img"
    backing.write_bytes(random.Random(11).randbytes(size))
    bad = (9 * MiB, 9 * MiB + 4096)

    with FaultyDisk(str(backing), [bad], tmp_path / "fuse") as flaky:
        assert int(run("blockdev", "--getsize64", flaky).stdout) == size
        result = capture.run(settings_for(p2v_server, disks=[flaky], streams=2),
                             identity={"system_uuid": str(uuid.uuid4())})
    (disk,) = result.disks
    assert disk.bad_ranges == [[bad[0], bad[1] - bad[0]]]

    target = tmp_path / "restored.img"
    restore.run(settings_for(p2v_server, job=result.job), str(target))
    want, got = bytearray(backing.read_bytes()), target.read_bytes()
    want[bad[0]:bad[1]] = bytes(bad[1] - bad[0])
    assert len(got) == size and got[-512:] == want[-512:]
    assert got == want
