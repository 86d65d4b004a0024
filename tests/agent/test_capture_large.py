"""A 1 TiB sparse disk with a little data: the work follows the data, not the disk's size."""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid

from agent.transfer import capture, restore
from agent.disk.plan import plan_disk
from support import rescan, run
from sourcedisks import MiB, loop_at, mounted
from test_capture_restore import settings_for

TiB = 1 << 40
GiB = 1 << 30


def test_a_terabyte_disk_costs_what_it_holds(loopdev, p2v_server, tmp_path):
    dev = loopdev(TiB, "huge")
    run("sfdisk", "-q", dev, input="label: gpt\n,,L\n")
    (part,) = rescan(dev)
    run("mkfs.ext4", "-q", "-J", "size=64", "-E", "lazy_itable_init=1,lazy_journal_init=1", part)
    rng = random.Random(5)
    sums = {}
    with mounted(part, "ext4") as mnt:
        for i in range(6):
            body = rng.randbytes(16 * MiB)
            sums[f"d{i % 3}/f{i}"] = hashlib.sha256(body).hexdigest()
            (mnt / f"d{i % 3}").mkdir(exist_ok=True)
            (mnt / f"d{i % 3}/f{i}").write_bytes(body)
    os.sync()

    plan = plan_disk(dev)
    assert plan.read_bytes < 1 * GiB   # 96 MiB of files, metadata, the journal
    result = capture.run(settings_for(p2v_server, disks=[dev]),
                         identity={"system_uuid": str(uuid.uuid4())})
    (disk,) = result.disks
    assert disk.size == TiB and disk.planned == plan.read_bytes
    assert 96 * MiB <= disk.sent <= plan.read_bytes
    # Only the chunks holding used blocks or known zeros were touched: a few thousand of 262144.
    assert disk.data_chunks + disk.zero_chunks < 5000

    target = tmp_path / "restored.img"
    got = restore.run(settings_for(p2v_server, job=result.job), str(target))
    assert got.fetched_chunks == disk.data_chunks and got.zeroed_bytes == 0
    assert os.stat(target).st_blocks * 512 < plan.read_bytes   # holes where the image is zeros
    (entry,) = json.loads(run("sfdisk", "--json", dev).stdout)["partitiontable"]["partitions"]
    with loop_at(str(target), entry["start"] * 512, entry["size"] * 512, readonly=True) as node:
        with mounted(node, "ext4", readonly=True) as mnt:
            for name, digest in sums.items():
                assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest
