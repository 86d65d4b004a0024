"""Resume from the agent's side: a capture picks up the unfinished job of the same machine with
the same disks (sizes, serials, partition tables), never another machine's that looks alike."""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.transfer import capture, restore
from agent.transfer.client import Client, ServerError
from agent.probe import probe_machine
from support import rescan, run
from sourcedisks import MiB, mounted
from test_capture_restore import settings_for

OEM = {"system_uuid": "03000200-0400-0500-0006-000700080009", "vendor": "ASRock",
       "product": "H61M-DGS", "serial": "To be filled by O.E.M."}
DELL = {"system_uuid": "4c4c4544-0042-3510-8052-b4c04f4e4e31", "vendor": "Dell Inc.",
        "product": "OptiPlex 7010", "serial": "5R2JBX1"}
REPO = Path(__file__).resolve().parents[2]
PTUUID = "6F1E3A52-93C4-4B1E-9D0C-2B8E5F7A9C11"


class CutAfterJob(Client):
    """A client whose first chunk upload fails: the job is made, and left unfinished."""

    def put_chunk(self, job, *args, **kw):
        self.job_id = job
        raise ServerError("the network went down (test)")


def source(loopdev) -> str:
    dev = loopdev(64 * MiB, "ident")
    run("sfdisk", "-q", dev, input=f"label: gpt\nlabel-id: {PTUUID}\n,,L\n")
    (part,) = rescan(dev)
    run("mkfs.ext4", "-q", part)
    with mounted(part, "ext4") as mnt:
        (mnt / "data").write_bytes(random.Random(5).randbytes(8 * MiB))
    os.sync()
    return dev


def unfinished(settings, identity: dict, probed=None) -> str:
    """The id of the job a capture made and left unfinished."""
    client = CutAfterJob(settings.server, settings.token, settings.fingerprint, retry_for=1)
    with pytest.raises(capture.CaptureError):
        capture.run(settings, client=client, identity=identity, probed=probed)
    return client.job_id


def agent_log(server, job: str) -> str:
    return (server.data_dir / "jobs" / job / "agent.log").read_text()


def with_serial(dev: str, serial: str):
    """This machine as the probe sees it, but the disk reports `serial` (loop devices have none)."""
    probed = probe_machine(devices=[dev])
    (disk,) = [d for d in probed.disks if d.path == dev]
    disk.serial = serial
    return probed


def test_two_machines_with_the_same_placeholder_identity_get_two_jobs(loopdev, p2v_server):
    dev = source(loopdev)
    settings = settings_for(p2v_server, disks=[dev])
    first = unfinished(settings, OEM)
    # A second board of the same batch, its disk imaged from the same master, no disk serial.
    second = capture.run(settings, identity=OEM)
    assert not second.resumed and second.job != first
    # With a disk serial, the placeholder board is found again by its disk, and only by it.
    third = unfinished(settings, OEM, with_serial(dev, "WD-WCC4N0123456"))
    other = capture.run(settings, identity=OEM, probed=with_serial(dev, "WD-WCC4N0999999"))
    assert not other.resumed and other.job != third
    assert "serial 'WD-WCC4N0123456', not serial 'WD-WCC4N0999999'" in \
        agent_log(p2v_server, other.job)
    again = capture.run(settings, identity=OEM, probed=with_serial(dev, "WD-WCC4N0123456"))
    assert again.resumed and again.job == third


def test_the_same_machine_resumes_and_other_disks_do_not(loopdev, p2v_server):
    dev = source(loopdev)
    settings = settings_for(p2v_server, disks=[dev])
    first = unfinished(settings, DELL)

    # Same SMBIOS identity, but the disk has another serial: another machine's disk.
    other_serial = capture.run(settings, identity=DELL, probed=with_serial(dev, "S3Z9NB0K999999Z"))
    assert not other_serial.resumed and other_serial.job != first
    assert f"Job {first} is of a machine with the same identity, but its disk" in \
        agent_log(p2v_server, other_serial.job)

    # Same identity, another partition table: another disk identifier, then a partition's size.
    table = run("sfdisk", "--dump", dev).stdout
    set_table(dev, table.replace(PTUUID, "0B6D1C2E-7F00-4A3B-8E21-5D4C3B2A1F00"))
    other_id = capture.run(settings, identity=DELL)
    assert not other_id.resumed and other_id.job != first
    assert "another partition table: identifier" in agent_log(p2v_server, other_id.job)
    # Asked for by name, the first job is refused too: its disk is not this one.
    with pytest.raises(capture.CaptureError, match="partition tables and filesystems must all be"):
        capture.run(settings_for(p2v_server, disks=[dev], job=first), identity=DELL)
    size = re.search(r"size= *(\d+)", table)
    set_table(dev, table.replace(size[0], f"size={int(size[1]) - 2048}"))
    other_part = capture.run(settings, identity=DELL)
    assert not other_part.resumed and other_part.job != first
    assert "another partition table: partitions" in agent_log(p2v_server, other_part.job)

    # The same machine with the same disk again resumes its job.
    set_table(dev, table)
    again = capture.run(settings, identity=DELL)
    assert again.resumed and again.job == first


def set_table(dev: str, dump: str) -> None:
    run("sfdisk", "-q", "--no-reread", dev, input=dump)
    rescan(dev)


# --- disks with no serial and no partition table: a whole-disk filesystem -------------------------

SECRET_A = b"MACHINE-A-SECRET" * 4096   # 64 KiB of one machine's data, repeated into its files


class CutBeforeSeal(Client):
    """A client whose seal fails: every chunk is held, and the job is left unfinished."""

    def complete(self, job, *args, **kw):
        self.job_id = job
        raise ServerError("the network went down (test)")


def unsealed(settings, identity: dict) -> str:
    """The id of the job a capture filled and left unsealed."""
    client = CutBeforeSeal(settings.server, settings.token, settings.fingerprint, retry_for=1)
    with pytest.raises(capture.CaptureError):
        capture.run(settings, client=client, identity=identity)
    return client.job_id


def bare_ext4(dev: str, files: dict[str, bytes], force: bool = False) -> str:
    """ext4 on the whole of `dev` (no partition table) holding `files`; its UUID."""
    run("mkfs.ext4", "-q", *(["-F"] if force else []), dev)
    with mounted(dev, "ext4") as mnt:
        for name, data in files.items():
            (mnt / name).write_bytes(data)
    os.sync()
    return run("blkid", "-p", "-o", "value", "-s", "UUID", dev).stdout.strip()


def restored(p2v_server, loopdev, job: str) -> bytes:
    """The bytes a restore of `job`'s disk writes onto a disk that held nothing."""
    target = loopdev(64 * MiB, "target")
    restore.run(settings_for(p2v_server, job=job), target)
    with open(target, "rb") as f:
        return f.read()


def test_another_machines_filesystem_on_a_bare_disk_is_another_disk(loopdev, p2v_server):
    """Two machines with one SMBIOS identity, disks of one size with no serial and no partition
    table: only the filesystem on the disk tells them apart, and it must."""
    dev = loopdev(64 * MiB, "bare")
    uuid_a = bare_ext4(dev, {f"a{i}": SECRET_A * 64 for i in range(3)})
    first = unsealed(settings_for(p2v_server, disks=[dev], name="machine-a"), DELL)

    uuid_b = bare_ext4(dev, {f"b{i}": random.Random(i).randbytes(MiB) for i in range(3)}, force=True)
    second = capture.run(settings_for(p2v_server, disks=[dev], name="machine-b"), identity=DELL)
    assert not second.resumed and second.job != first
    assert f"holds ext4 {uuid_a}, not ext4 {uuid_b}" in agent_log(p2v_server, second.job)
    assert SECRET_A[:64] not in restored(p2v_server, loopdev, second.job)


def test_a_resumed_capture_leaves_nothing_the_source_no_longer_uses(loopdev, p2v_server):
    """The same machine resumes its job after a file was deleted: the chunks that held it, sent
    by the first run, are no data of the sealed image, on the server or on the target."""
    dev = loopdev(64 * MiB, "bare")
    keep = random.Random(7).randbytes(4 * MiB)
    bare_ext4(dev, {"secret": SECRET_A * 256, "keep": keep})
    settings = settings_for(p2v_server, disks=[dev])
    first = unsealed(settings, DELL)
    client = Client(settings.server, settings.token, settings.fingerprint)
    disk = capture.disk_id(dev)
    held_before = client.held_chunks(first, disk)
    with mounted(dev, "ext4") as mnt:
        (mnt / "secret").unlink()
    os.sync()

    again = capture.run(settings, identity=DELL)
    assert again.resumed and again.job == first
    held = client.held_chunks(first, disk)
    dropped = held_before.keys() - held.keys()
    assert dropped                      # chunks wholly the deleted file's are no longer held
    extents = client.image_map(first, disk)["extents"]
    kinds = {i: e["kind"] for e in extents for i in range(e["start"], e["start"] + e["count"])}
    assert {i for i, k in kinds.items() if k == "data"} == held.keys()   # chunk list and map agree
    assert all(kinds[i] != "data" for i in dropped)
    image = p2v_server.data_dir / "jobs" / first / "disks" / f"{disk}.img"
    assert SECRET_A[:64] not in image.read_bytes()
    target = restored(p2v_server, loopdev, first)
    assert SECRET_A[:64] not in target and keep in target


def agent_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, "--cmdline", ""],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_capture_job_flag_resumes_the_named_job_and_only_with_its_disks(loopdev, p2v_server):
    """`p2v-agent capture --job ID`: into that job although the machine's identity differs (a
    board replaced), never into a job of other disks."""
    assert "--job ID" in agent_cli("capture", "--help").stdout
    dev = source(loopdev)
    settings = settings_for(p2v_server, disks=[dev])
    named = unfinished(settings, DELL)      # not this box's identity: nothing resumes it unasked
    common = ["--server", p2v_server.url, "--token", p2v_server.token,
              "--fingerprint", p2v_server.fingerprint, "--disks", dev]
    out = agent_cli("capture", *common, "--job", named)
    assert out.returncode == 0, out.stderr
    assert f"sealed in job {named}:" in out.stdout
    job = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint).job(named)
    assert job["inventory"]["machine"]["system_uuid"] != DELL["system_uuid"]   # this box's now
    with sqlite3.connect(p2v_server.data_dir / "xenp2v.db") as db:
        events = [json.loads(e) for (e,) in db.execute("SELECT event FROM events WHERE job=?",
                                                       (named,))]
    assert [e["phase"] for e in events].count("resumed") == 1

    other = loopdev(64 * MiB, "other")
    bare_ext4(other, {"f": b"x"})
    elsewhere = unfinished(settings_for(p2v_server, disks=[other]), DELL)
    out = agent_cli("capture", *common, "--job", elsewhere)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"Job {elsewhere} holds other disks: it has no disk {Path(dev).name}" in out.stderr
    assert "Drop --job" in out.stderr
