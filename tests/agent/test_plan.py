"""The read plan: range arithmetic, partclone domain logs, and plans of real loop-device disks."""

from __future__ import annotations

import os
import time

import pytest

from agent.disk import partclone
from agent.disk.plan import ReadPlan, clip, normalize, plan_disk, shift, subtract, total
from agent.transfer.source import SourceDisk, chunk_buffer
from support import rescan, run
from sourcedisks import MiB, SECRET, build

DOMAIN_LOG = """# Domain logfile created by unset_name v0.3.23
# Source: /dev/loop0p3
# Offset: 0x00100000
# current_pos  current_status
0x0C900000     ?
#      pos        size  status
0x00100000  0x00006000  +
0x00106000  0x0000A000  ?
0x00110000  0x00008000  +
0x00118000  0x00001000  +
0x00119000  0x0C7E7000  ?
"""


def test_range_arithmetic():
    assert normalize([(10, 20), (0, 5), (5, 8), (15, 30), (40, 40)]) == [(0, 8), (10, 30)]
    assert subtract([(0, 100)], [(10, 20), (90, 120)]) == [(0, 10), (20, 90)]
    assert subtract([(0, 10), (20, 30)], [(5, 25)]) == [(0, 5), (25, 30)]
    assert clip([(0, 10), (20, 30)], 5, 25) == [(5, 10), (20, 25)]
    assert shift([(1, 2)], 10) == [(11, 12)] and total([(0, 5), (10, 12)]) == 7


def test_domain_log_parsing():
    used, end = partclone.parse_domain(DOMAIN_LOG)
    assert used == [(0x100000, 0x106000), (0x110000, 0x119000)]
    assert end == 0xC900000


def fake_partclone(tmp_path, monkeypatch, log: str, then: str) -> None:
    """partclone.extfs on PATH: writes `log` to its -O file, then runs `then` (shell)."""
    (tmp_path / "domain.log").write_text(log)
    tool = tmp_path / "partclone.extfs"
    tool.write_text(f'#!/bin/sh\nwhile [ "$1" != -O ]; do shift; done\n'
                    f'cat {tmp_path}/domain.log > "$2"\n{then}\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")


def test_a_complete_domain_log_is_used_without_waiting_for_partclone_to_exit(tmp_path, monkeypatch):
    # partclone sleeps out a progress tick after the map is written; the map is what counts.
    fake_partclone(tmp_path, monkeypatch, DOMAIN_LOG, "sleep 30")
    start = time.monotonic()
    assert partclone.used_blocks("/dev/null", "ext4") == partclone.parse_domain(DOMAIN_LOG)
    assert time.monotonic() - start < 10


def test_an_incomplete_domain_log_is_an_error_when_partclone_fails(tmp_path, monkeypatch):
    cut = DOMAIN_LOG.rsplit("0x00119000", 1)[0]  # the last run is missing
    fake_partclone(tmp_path, monkeypatch, cut, "echo 'bitmap read error' >&2; exit 1")
    with pytest.raises(partclone.PartcloneError, match="could not map /dev/null: bitmap read error"):
        partclone.used_blocks("/dev/null", "ext4")


def test_chunks_of_a_plan_hold_only_used_ranges():
    plan = ReadPlan("/dev/null", 10 * MiB + 5, [(0, 512), (3 * MiB, 5 * MiB), (10 * MiB, 10 * MiB + 5)])
    assert list(plan.chunks(4 * MiB)) == [
        (0, [(0, 512), (3 * MiB, 4 * MiB)]),
        (1, [(4 * MiB, 5 * MiB)]),
        (2, [(10 * MiB, 10 * MiB + 5)]),
    ]
    assert plan.read_bytes == 512 + 2 * MiB + 5


def test_plan_of_every_filesystem(loopdev):
    src = build(loopdev, files_per_fs=2, file_size=MiB)
    plan = plan_disk(src.dev)
    text = "\n".join(plan.notes)
    for expected in ("p1: no filesystem found: read whole", "p2: vfat: used blocks only",
                     "p3: ext4: used blocks only", "p4: swap: header only",
                     "p5: xfs: used blocks only",
                     "p6: btrfs (single data, dup metadata, 1 device): every copy on this device",
                     "p7: ntfs: used blocks only", "LV " + src.vg + "/root: ext4: used blocks only",
                     "LV " + src.vg + "/swap: swap: header only", "RAID1 box:0: ext4: used blocks only"):
        assert expected in text, text
    # Used bytes, not the disk: 1280 MiB of partitions, about 100 MiB used (XFS's log is 64 MiB).
    assert plan.read_bytes < 200 * MiB, text
    # What the plan reads holds the files but never a deleted file's bytes; read again into one
    # reused buffer (as capture streams do, around the page cache), chunk after chunk, it is the
    # same: nothing of the chunk before shows through.
    buffer = chunk_buffer(4 * MiB)
    with SourceDisk(src.dev) as disk:
        found = 0
        for index, parts in plan.chunks(4 * MiB):
            span = (index * 4 * MiB, min(4 * MiB, plan.size - index * 4 * MiB))
            chunk = disk.read_chunk(index, *span, parts)
            assert SECRET[:64] not in chunk.data
            found += not chunk.zero
            again = disk.read_chunk(index, *span, parts, buffer)
            assert again.data == chunk.data and again.zero == chunk.zero, f"chunk {index}"
    assert found > 10


def test_disk_without_partition_table_and_unknown_content(loopdev):
    dev = loopdev(64 * MiB)
    run("mkfs.ext4", "-q", dev)
    plan = plan_disk(dev)
    assert plan.notes[0].startswith(f"{dev}: ext4: used blocks only") and plan.read_bytes < 16 * MiB
    raw = loopdev(16 * MiB, "raw")
    with open(raw, "r+b") as f:
        f.write(b"\1" * MiB)
    plan = plan_disk(raw)
    assert plan.used == [(0, 16 * MiB)] and "read whole" in plan.notes[0]


def test_mbr_with_logical_partitions_reads_the_ebrs(loopdev):
    dev = loopdev(64 * MiB)
    run("sfdisk", "-q", dev, input="label: dos\n,20M,83\n,,5\n,10M,83\n,,83\n")
    nodes = rescan(dev)
    for node in nodes:
        if run("blkid", "-p", "-o", "value", "-s", "PTTYPE", node, check=False).stdout.strip() != "dos":
            run("mkfs.ext4", "-q", node)
    plan = plan_disk(dev)
    ext_start = int(run("sfdisk", "--json", dev).stdout.split('"start":')[2].split(",")[0]) * 512
    # The first EBR sits at the start of the extended partition: it is read.
    assert any(s <= ext_start < e for s, e in plan.used)
    assert plan.read_bytes < 20 * MiB
