"""Restore onto real loop devices: zero and free extents zeroed, refusals, resume, CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import agent.transfer.client
from agent.transfer import capture, restore
from agent.transfer.restore import RestoreError
from cutproxy import CutProxy
from support import rescan, run
from sourcedisks import MiB, mounted
from test_capture_restore import settings_for

REPO = Path(__file__).resolve().parents[2]
CHUNK = 4 * MiB


def small_source(loopdev) -> str:
    """MBR: a 40 MiB ext4 with files, then 16 MiB with no filesystem and only zeros (in use)."""
    dev = loopdev(64 * MiB, "small")
    run("sfdisk", "-q", dev, input="label: dos\nstart=2048, size=40M, type=83\nsize=16M, type=da\n")
    part, raw = rescan(dev)
    run("mkfs.ext4", "-q", "-b", "4096", part)
    with mounted(part, "ext4") as mnt:
        for i in range(3):
            (mnt / f"f{i}").write_bytes(random.Random(i).randbytes(2 * MiB))
    os.sync()
    return dev


def fill(dev: str, byte: int) -> None:
    with open(dev, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        for _ in range(size // MiB):
            f.write(bytes([byte]) * MiB)


def read(dev: str, offset: int, length: int) -> bytes:
    with open(dev, "rb") as f:
        f.seek(offset)
        return f.read(length)


def test_zero_and_free_extents_are_zeroed(loopdev, p2v_server):
    src = small_source(loopdev)
    job = capture.run(settings_for(p2v_server, disks=[src]),
                      identity={"system_uuid": str(uuid.uuid4())}).job
    image = p2v_server.data_dir / "jobs" / job / "disks" / f"{Path(src).name}.img"
    extents = {(e["kind"], e["start"], e["count"]) for e in
               settings_client(p2v_server).image_map(job, Path(src).name)["extents"]}
    zero = [(s, n) for kind, s, n in extents if kind == "zero"]
    free = [(s, n) for kind, s, n in extents if kind == "free"]
    assert zero and free, extents

    target = loopdev(80 * MiB, "dirty")
    fill(target, 0xFF)
    result = restore.run(settings_for(p2v_server, job=job), target)
    # Zero and free extents, and the 16 MiB of the target past the image's end.
    assert result.zeroed_bytes == sum(n for _, n in zero + free) * CHUNK + 16 * MiB
    for s, n in zero + free + [(16, 4)]:
        assert read(target, s * CHUNK, n * CHUNK) == bytes(n * CHUNK)
    for s, n in [(s, n) for kind, s, n in extents if kind == "data"]:
        assert read(target, s * CHUNK, n * CHUNK) == read(str(image), s * CHUNK, n * CHUNK)
    run("e2fsck", "-f", "-n", rescan(target)[0])

    # Resume: only a damaged chunk is fetched again.
    data_start = next(s for kind, s, n in extents if kind == "data")
    with open(target, "r+b") as f:
        f.seek(data_start * CHUNK + 4096)
        f.write(b"damage")
    again = restore.run(settings_for(p2v_server, job=job), target)
    assert again.fetched_chunks == 1 and again.kept_chunks == result.fetched_chunks - 1


def settings_client(server):
    from agent.transfer.client import Client
    return Client(server.url, server.token, server.fingerprint)


def test_refuses_small_mounted_or_held_targets(loopdev, p2v_server):
    src = small_source(loopdev)
    job = capture.run(settings_for(p2v_server, disks=[src]),
                      identity={"system_uuid": str(uuid.uuid4())}).job
    small = loopdev(32 * MiB, "small-target")
    with pytest.raises(RestoreError, match=r"holds 32.0 MiB .* but the image is 64.0 MiB .* at least"):
        restore.run(settings_for(p2v_server, job=job), small)

    target = loopdev(64 * MiB, "target")
    restore.run(settings_for(p2v_server, job=job), target)
    part = rescan(target)[0]
    with mounted(part, "ext4") as mnt:
        with pytest.raises(RestoreError, match=f"{target} is in use: .*{Path(part).name} is mounted on {mnt}"):
            restore.run(settings_for(p2v_server, job=job), target)
    run("mkswap", part)
    run("swapon", part)
    try:
        with pytest.raises(RestoreError, match=f"{Path(part).name} is in use as swap.*swapoff"):
            restore.run(settings_for(p2v_server, job=job), target)
    finally:
        run("swapoff", part)
    claim = os.open(target, os.O_RDONLY | os.O_EXCL)   # what a mount, md or dm holds
    try:
        with pytest.raises(RestoreError, match=f"{target} is in use: {Path(target).name} is "
                                               "claimed by the kernel"):
            restore.run(settings_for(p2v_server, job=job), target)
    finally:
        os.close(claim)
    with pytest.raises(RestoreError, match="has no disk sdz; its disks are"):
        restore.run(settings_for(p2v_server, job=job), target, disk="sdz")


def agent_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, "--cmdline", ""],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_command_lines(loopdev, p2v_server):
    src = small_source(loopdev)
    common = ["--server", p2v_server.url, "--token", p2v_server.token,
              "--fingerprint", p2v_server.fingerprint]
    out = agent_cli("capture", *common, "--disks", src, "--name", "cli-box", "--streams", "2",
                    "--compress", "zstd", "--bwlimit", "200M")
    assert out.returncode == 0, out.stderr
    assert f"{Path(src).name}: sealed in job " in out.stdout
    assert "capture" in out.stderr and "done" in out.stderr   # plain progress lines
    job = out.stdout.split("sealed in job ")[1].split(":")[0]

    target = loopdev(64 * MiB, "cli-target")
    out = agent_cli("restore", *common, "--job", job, "--target", target)
    assert out.returncode == 0, out.stderr
    assert f"restored onto {target}" in out.stdout
    assert read(target, 0, 64 * MiB) != bytes(64 * MiB)

    out = agent_cli("restore", *common, "--job", job, "--target", loopdev(8 * MiB, "tiny"))
    assert out.returncode == 1 and out.stderr.startswith("Restore failed: The target")
    assert "Traceback" not in out.stderr
    out = agent_cli("capture", *common, "--disks", "/dev/nonexistent")
    assert out.returncode == 1 and "Traceback" not in out.stderr and "nonexistent" in out.stderr
    out = agent_cli("capture", "--disks", src)
    assert out.returncode == 2 and "needs --server URL and --token T" in out.stderr
    out = agent_cli("capture", *common, "--compress", "fast")
    assert out.returncode == 2 and "compress" in out.stderr


def test_a_target_under_dev_must_be_an_existing_disk(p2v_server, tmp_path):
    """A typo under /dev is refused (it would become a file in RAM on the live system, and the
    restore would say it succeeded); a new file elsewhere is still made, as --help says."""
    from agent.transfer.client import Client
    from xenp2v import protocol as p
    client = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint)
    job = client.create_job({"name": "box", "machine": {"system_uuid": str(uuid.uuid4())},
                             "disks": [{"id": "sda", "size": 2 * CHUNK, "chunk_size": CHUNK}]})["id"]
    client.complete(job, "sda", p.image_digest(2 * CHUNK, CHUNK, {}, [0, 1]), [[0, 2]], [])
    typo = f"/dev/xenp2v-typo-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(RestoreError, match=f"The target {typo} does not exist. Run 'lsblk'"):
            restore.run(settings_for(p2v_server, job=job), typo)
        assert not os.path.lexists(typo)
        open(typo, "wb").close()                # a regular file under /dev is no disk either
        with pytest.raises(RestoreError, match=f"The target {typo} is not a disk .*lsblk"):
            restore.run(settings_for(p2v_server, job=job), typo)
        assert os.path.getsize(typo) == 0
    finally:
        if os.path.lexists(typo):
            os.unlink(typo)
    with pytest.raises(RestoreError, match="is not a disk"):
        restore.run(settings_for(p2v_server, job=job), "/dev/null")
    image = tmp_path / "new.img"                # outside /dev: made, as --help says
    restore.run(settings_for(p2v_server, job=job), str(image))
    assert image.stat().st_size == 2 * CHUNK
    out = agent_cli("restore", "--help")
    assert "outside /dev" in " ".join(out.stdout.split())


def test_restore_fetches_zstd_chunks_when_asked_and_plain_ones_when_not(loopdev, p2v_server):
    # Text compresses: over zstd the wire carries a fraction of the disk bytes, and the target
    # gets every byte all the same. Restore used to ask for plain bodies always, so a restore
    # over a slow link took about three times a capture's wire bytes.
    dev = loopdev(48 * MiB, "text")
    run("sfdisk", "-q", dev, input="label: dos\nstart=2048, size=40M, type=83\n")
    part = rescan(dev)[0]
    run("mkfs.ext4", "-q", "-b", "4096", part)
    text = b"".join(b"line %d of a log that compresses well\n" % i for i in range(200_000))
    with mounted(part, "ext4") as mnt:
        (mnt / "log").write_bytes(text)
    os.sync()
    job = capture.run(settings_for(p2v_server, disks=[dev], compress="off"),
                      identity={"system_uuid": str(uuid.uuid4())}).job
    for mode in ("zstd", "off"):
        target = loopdev(48 * MiB, f"to-{mode}")
        fill(target, 0xFF)
        result = restore.run(settings_for(p2v_server, job=job, compress=mode), target)
        assert result.fetched_chunks > 0 and result.fetched_bytes > 0, result
        if mode == "zstd":
            assert result.received < result.fetched_bytes / 3, result
        else:
            assert result.received == result.fetched_bytes, result
        assert read(target, 0, 48 * MiB) == read(dev, 0, 48 * MiB)
        with mounted(rescan(target)[0], "ext4") as mnt:
            assert (mnt / "log").read_bytes() == text


def text_disk(loopdev, size: int) -> str:
    """A disk with no partition table (read whole), every byte of it words: zstd -1 makes
    about a third of it, as of a system disk's data."""
    dev = loopdev(size, "words")
    pick = random.Random(7)
    words = [bytes(pick.choices(b"abcdefghijklmnopqrstuvwxyz", k=pick.randint(2, 9)))
             for _ in range(1000)]
    blocks = [b" ".join(pick.choices(words, k=MiB // 5))[:MiB] for _ in range(16)]
    with open(dev, "r+b") as f:
        for _ in range(size // MiB):    # zstd -1 looks back less than 1 MiB: no block repeats
            f.write(pick.choice(blocks))
    return dev


def test_restore_auto_asks_for_zstd_over_a_slow_link(loopdev, p2v_server):
    # A 16 MiB/s link between the server and the restore: zstd chunks restore the disk about
    # three times faster. Restore's auto used to fetch plain chunks always, and took longer
    # than the capture over the same link.
    dev = text_disk(loopdev, 256 * MiB)
    job = capture.run(settings_for(p2v_server, disks=[dev], compress="off"),
                      identity={"system_uuid": str(uuid.uuid4())}).job
    link = CutProxy(p2v_server.port, rate=16 * MiB)
    try:
        target = loopdev(256 * MiB, "to")
        settings = settings_for(p2v_server, job=job, streams=2)
        settings.server = link.url()
        result = restore.run(settings, target)
    finally:
        link.close()
    assert result.fetched_bytes == 256 * MiB
    assert result.received < result.fetched_bytes * 0.6, result   # plain in its trial alone
    assert read(target, 0, 256 * MiB) == read(dev, 0, 256 * MiB)


def test_restore_auto_fetches_plain_chunks_where_decompressing_is_slow(loopdev, p2v_server,
                                                                        monkeypatch):
    # A fast link, and a restore whose decompressing is its slow part (a guest emulated by
    # TCG, 0.3 s a chunk here): plain chunks restore faster, and auto keeps to them after its
    # trials of zstd.
    dev = text_disk(loopdev, 256 * MiB)
    job = capture.run(settings_for(p2v_server, disks=[dev], compress="off"),
                      identity={"system_uuid": str(uuid.uuid4())}).job
    unzstd = agent.transfer.client._unzstd_into

    def slow(body, into):
        time.sleep(0.3)
        return unzstd(body, into)

    monkeypatch.setattr(agent.transfer.client, "_unzstd_into", slow)
    target = loopdev(256 * MiB, "to")
    result = restore.run(settings_for(p2v_server, job=job, streams=2), target)
    assert result.fetched_bytes == 256 * MiB
    assert result.received > result.fetched_bytes * 0.7, result   # zstd in its trials alone
    assert read(target, 0, 256 * MiB) == read(dev, 0, 256 * MiB)
