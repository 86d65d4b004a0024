"""The store in-process: the journal's crash rules, sealing, the API other server parts use."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import pytest

from server.inventory import parse_inventory
from server.store import Journal, SealedImage, Store
from xenp2v import protocol as p

CHUNK = p.MIN_CHUNK_SIZE


def new_job(store: Store, size: int = 8 * CHUNK, uuid="5a4b3c2d-0000-1111-2222-333344445555",
            disks=("sda",)) -> str:
    inv = parse_inventory({"name": "db01", "machine": {"system_uuid": uuid, "cpus": 2},
                           "disks": [{"id": d, "size": size, "chunk_size": CHUNK} for d in disks]})
    job, resumed = store.create_job(inv)
    assert not resumed
    return job["id"]


class Crash(BaseException):
    """Stands for the process dying at this point."""


def test_resent_chunk_with_other_bytes_never_leaves_a_stale_journal_entry(tmp_path, monkeypatch):
    store = Store(tmp_path)
    job = new_job(store)
    old, new = os.urandom(CHUNK), os.urandom(CHUNK)
    assert store.put_chunk(job, "sda", 2, old, p.chunk_digest(old)) is True
    assert store.put_chunk(job, "sda", 2, old, p.chunk_digest(old)) is False  # same again: nothing done

    # The new bytes reach the image, then the process dies before they are journaled.
    def die(self, fd, row):
        raise Crash()

    monkeypatch.setattr(Journal, "add", die)
    with pytest.raises(Crash):
        store.put_chunk(job, "sda", 2, new, p.chunk_digest(new))
    monkeypatch.undo()
    store.close()

    after = Store(tmp_path)
    image = store.image_path(job, "sda").read_bytes()
    assert image[2 * CHUNK:3 * CHUNK] == new
    assert after.held_chunks(job, "sda") == {}  # not the old digest over the new bytes
    assert after.put_chunk(job, "sda", 2, new, p.chunk_digest(new)) is True
    assert after.held_chunks(job, "sda") == {2: p.chunk_digest(new)}
    after.close()


def test_racing_writers_of_one_chunk_leave_journal_and_image_agreeing(tmp_path):
    store = Store(tmp_path)
    job = new_job(store)
    bodies = [os.urandom(CHUNK) for _ in range(8)]
    threads = [threading.Thread(target=store.put_chunk, args=(job, "sda", 0, b, p.chunk_digest(b)))
               for b in bodies * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = store.held_chunks(job, "sda")
    image = store.image_path(job, "sda").read_bytes()
    assert held == {0: p.chunk_digest(image[:CHUNK])}
    store.close()


def test_seal_zeroes_zero_chunks_and_serves_the_sealed_image(tmp_path):
    store = Store(tmp_path)
    job = new_job(store, disks=("sda", "sdb"))
    data = {0: os.urandom(CHUNK), 5: os.urandom(CHUNK)}
    for i, b in data.items():
        store.put_chunk(job, "sda", i, b, p.chunk_digest(b))
    # Bytes left by a write that never reached the journal (a crash), where the agent now says zero.
    with open(store.image_path(job, "sda"), "r+b") as f:
        f.seek(3 * CHUNK)
        f.write(b"\xff" * CHUNK)
    with pytest.raises(p.ProtocolError) as err:
        store.sealed_image(job, "sda")
    assert err.value.status == 409 and "not sealed" in err.value.detail

    digests = {i: p.chunk_digest(b) for i, b in data.items()}
    with pytest.raises(p.ProtocolError) as err:
        store.seal(job, "sda", p.image_digest(8 * CHUNK, CHUNK, digests, [3]), [], [])
    assert err.value.code is p.ErrorCode.BAD_DIGEST
    got, job_sealed = store.seal(job, "sda", p.image_digest(8 * CHUNK, CHUNK, digests, [3, 4]),
                                 [(3, 2)], [(100, 50)])
    assert not job_sealed and got["state"] == "receiving"
    assert got["disks"][0]["state"] == "sealed" and got["disks"][0]["bad_ranges"] == [[100, 50]]
    image = store.image_path(job, "sda").read_bytes()
    assert image[3 * CHUNK:5 * CHUNK] == bytes(2 * CHUNK)
    assert image[5 * CHUNK:6 * CHUNK] == data[5]

    sealed = store.sealed_image(job, "sda")
    assert isinstance(sealed, SealedImage)
    assert (sealed.path, sealed.size, sealed.chunk_size) == (store.image_path(job, "sda"), 8 * CHUNK, CHUNK)
    assert [(e.kind.value, e.start, e.count) for e in sealed.extents] == [
        ("data", 0, 1), ("free", 1, 2), ("zero", 3, 2), ("data", 5, 1), ("free", 6, 2)]
    with pytest.raises(p.ProtocolError) as err:
        store.put_chunk(job, "sda", 1, data[0], p.chunk_digest(data[0]))
    assert err.value.status == 409

    _, job_sealed = store.seal(job, "sdb", p.image_digest(8 * CHUNK, CHUNK, {}, []), [], [])
    assert job_sealed and store.get_job(job)["state"] == "sealed"
    store.close()


def test_held_chunks_sealed_as_zero_are_forgotten_and_read_zeros(tmp_path):
    """An earlier run sent chunks 2 and 3; the source no longer uses them, and the seal says zero:
    the journal, the chunk list, the map, the image and a chunk read all agree they are zero."""
    store = Store(tmp_path)
    job = new_job(store)
    data = {i: os.urandom(CHUNK) for i in (0, 2, 3)}
    for i, b in data.items():
        store.put_chunk(job, "sda", i, b, p.chunk_digest(b))
    digests = {0: p.chunk_digest(data[0])}
    store.seal(job, "sda", p.image_digest(8 * CHUNK, CHUNK, digests, [2, 3]), [(2, 2)], [])
    assert store.held_chunks(job, "sda") == digests
    assert store.chunk_list(job, "sda")["chunks"] == {"0": digests[0]}
    assert store.disk_map(job, "sda")["extents"] == [
        {"kind": "data", "start": 0, "count": 1}, {"kind": "free", "start": 1, "count": 1},
        {"kind": "zero", "start": 2, "count": 2}, {"kind": "free", "start": 4, "count": 4}]
    assert store.get_job(job)["disks"][0]["held_chunks"] == 1
    assert store.read_chunk(job, "sda", 2) == (bytes(CHUNK), p.chunk_digest(bytes(CHUNK)))
    image = store.image_path(job, "sda").read_bytes()
    assert image[2 * CHUNK:4 * CHUNK] == bytes(2 * CHUNK) and image[:CHUNK] == data[0]
    store.close()


def test_the_api_other_server_parts_use(tmp_path):
    store = Store(tmp_path)
    job = new_job(store)
    assert store.get_job(job)["inventory"]["machine"]["cpus"] == 2
    store.set_state(job, p.JobState.PROVISIONING, "creating the VM")
    store.record(job, "vm", {"uuid": "vm-1"})
    store.record(job, "vdis", ["vdi-1"])
    store.set_target_uuid(job, "ABCDEF01-0000-1111-2222-333344445555")
    got = store.job_for_machine("abcdef01-0000-1111-2222-333344445555")
    assert got["id"] == job and got["state"] == "provisioning" and got["detail"] == "creating the VM"
    assert got["records"] == {"vm": {"uuid": "vm-1"}, "vdis": ["vdi-1"]}
    assert [j["id"] for j in store.list_jobs()] == [job]
    with pytest.raises(p.ProtocolError) as err:
        store.get_job("nope")
    assert err.value.status == 404
    with pytest.raises(ValueError):
        store.set_state(job, "sideways")
    store.close()


def test_verify_finds_changed_data_and_dirty_zero_chunks(tmp_path):
    store = Store(tmp_path)
    job = new_job(store)
    rng = random.Random(1)
    data = {i: rng.randbytes(CHUNK) for i in (0, 1, 6)}
    for i, b in data.items():
        store.put_chunk(job, "sda", i, b, p.chunk_digest(b))
    digests = {i: p.chunk_digest(b) for i, b in data.items()}
    store.seal(job, "sda", p.image_digest(8 * CHUNK, CHUNK, digests, [2, 3]), [(2, 2)], [])
    path = store.image_path(job, "sda")
    store.close()

    def verify():
        return subprocess.run([sys.executable, "-m", "server.cli", "verify", job, "--data-dir",
                               str(tmp_path)], capture_output=True, text=True)

    out = verify()
    assert out.returncode == 0, out.stderr
    assert "disk sda (sealed): 3 data chunks, 2 zero chunks: all good" in out.stdout
    with open(path, "r+b") as f:
        f.seek(6 * CHUNK + 17)
        f.write(b"\x00\x01")
        f.seek(3 * CHUNK + 9)
        f.write(b"\x07")
    out = verify()
    assert out.returncode == 1
    assert "chunk 6: journal says" in out.stdout
    assert f"zero chunk 3: byte {3 * CHUNK + 9} is not zero" in out.stdout
    assert "capture this disk again" in out.stderr
    out = subprocess.run([sys.executable, "-m", "server.cli", "verify", "nosuchjob", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1 and "no job nosuchjob" in out.stderr and "Traceback" not in out.stderr


def test_a_terabyte_disk_mostly_zero_and_free_seals_and_verifies_quickly(tmp_path):
    store = Store(tmp_path)
    size, chunk = 1 << 40, p.DEFAULT_CHUNK_SIZE
    inv = parse_inventory({"name": "big", "machine": {},
                           "disks": [{"id": "sda", "size": size, "used": 64 << 20,
                                      "used_chunks": 16}]})
    job = store.create_job(inv)[0]["id"]
    assert store.get_job(job)["disks"][0]["chunk_size"] == chunk
    data = os.urandom(chunk)
    for i in (0, 70000, 262143):
        store.put_chunk(job, "sda", i, data, p.chunk_digest(data))
    zero = [(1, 69999), (100000, 100000)]
    digests = {i: p.chunk_digest(data) for i in (0, 70000, 262143)}
    zero_idx = [i for s, n in zero for i in range(s, s + n)]
    store.seal(job, "sda", p.image_digest(size, chunk, digests, zero_idx), zero, [])
    kinds = [(e.kind.value, e.start, e.count) for e in store.sealed_image(job, "sda").extents]
    assert kinds == [("data", 0, 1), ("zero", 1, 69999), ("data", 70000, 1), ("free", 70001, 29999),
                     ("zero", 100000, 100000), ("free", 200000, 62143), ("data", 262143, 1)]
    assert os.stat(store.image_path(job, "sda")).st_blocks * 512 < 64 << 20
    store.close()
    out = subprocess.run([sys.executable, "-m", "server.cli", "verify", job, "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "3 data chunks, 169999 zero chunks: all good" in out.stdout


def test_overlapping_zero_ranges_cost_no_more_than_the_disk(tmp_path):
    store = Store(tmp_path)
    inv = parse_inventory({"name": "big", "machine": {},
                           "disks": [{"id": "sda", "size": 1 << 40, "used": 0, "used_chunks": 0}]})
    job = store.create_job(inv)[0]["id"]
    count = (1 << 40) // p.DEFAULT_CHUNK_SIZE
    ranges = [(0, count)] * 200000 + [(5, 10), (count - 1, 1)]
    digest = p.image_digest(1 << 40, p.DEFAULT_CHUNK_SIZE, {}, range(count))
    started = time.monotonic()
    _, sealed = store.seal(job, "sda", digest, ranges, [])
    assert sealed and time.monotonic() - started < 20
    assert store.get_job(job)["disks"][0]["zero"] == [[0, count]]
    store.close()


def test_the_reservation_is_the_whole_chunks_the_plan_touches(tmp_path):
    size, chunk = 1 << 30, p.DEFAULT_CHUNK_SIZE

    def reserved(**disk) -> int:
        inv = parse_inventory({"machine": {}, "disks": [{"id": "sda", "size": size, **disk}]})
        return inv.disks[0].expected

    assert p.chunk_size_for(size) == chunk
    assert reserved() == size
    assert reserved(used=21 << 20) == size  # used bytes alone may lie in every chunk
    assert reserved(used=21 << 20, used_chunks=200) == 200 * chunk
    # Never less than the used bytes fill, whatever the count says.
    assert reserved(used=21 << 20, used_chunks=1) == 6 * chunk
    assert reserved(used=0, used_chunks=0) == 0
    assert reserved(used_chunks=256) == size
    with pytest.raises(p.ProtocolError, match="used chunks of disk sda"):
        reserved(used_chunks=257)

    store = Store(tmp_path)
    job = store.create_job(parse_inventory({"machine": {}, "disks": [
        {"id": "sda", "size": size, "used": 21 << 20, "used_chunks": 200}]}))[0]
    assert job["disks"][0]["expected_bytes"] == 200 * chunk
    assert store.outstanding_by_job() == {job["id"]: 200 * chunk}
    data = os.urandom(chunk)
    store.put_chunk(job["id"], "sda", 7, data, p.chunk_digest(data))
    assert store.outstanding_by_job() == {job["id"]: 199 * chunk}
    store.close()


def test_data_directory_and_images_are_private_and_old_ones_fixed(tmp_path):
    old = os.umask(0o022)
    try:
        data = tmp_path / "data"
        store = Store(data)
        job = new_job(store)
        store.append_log(job, b"agent says hi")
        image = store.image_path(job, "sda")
        store.close()
        # What an older server left: everything readable by any local user.
        for path in [data, *data.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        Store(data).close()
    finally:
        os.umask(old)
    assert os.stat(data).st_mode & 0o777 == 0o700
    for path in data.rglob("*"):
        assert os.stat(path).st_mode & 0o077 == 0, path
    assert os.stat(image).st_mode & 0o777 == 0o600
    store = Store(data)                               # a new job's files are private at birth
    second = new_job(store, uuid="5a4b3c2d-0000-1111-2222-999944445555")
    store.append_log(second, b"x")
    assert os.stat(store.image_path(second, "sda")).st_mode & 0o777 == 0o600
    assert os.stat(store.log_path(second)).st_mode & 0o777 == 0o600
    store.close()


def test_every_directory_the_store_makes_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        data = tmp_path / "new" / "place" / "data"       # none of it there yet
        store = Store(data)
        job = new_job(store)
        store.close()
    finally:
        os.umask(old)
    made = [tmp_path / "new", tmp_path / "new" / "place", data, data / "jobs", data / "jobs" / job,
            data / "jobs" / job / "disks"]
    assert {str(d): oct(os.stat(d).st_mode & 0o777) for d in made} == {str(d): "0o700" for d in made}


def test_a_cancelled_job_takes_no_chunk_and_no_seal_even_after_a_restart(tmp_path):
    store = Store(tmp_path)
    job = new_job(store)
    data = os.urandom(CHUNK)
    store.put_chunk(job, "sda", 0, data, p.chunk_digest(data))
    store.cancel_job(job, "Cancelled for the test.")
    for attempt in range(2):
        with pytest.raises(p.ProtocolError, match="cancelled on the server") as err:
            store.put_chunk(job, "sda", 1, data, p.chunk_digest(data))
        assert err.value.code is p.ErrorCode.JOB_CANCELLED and err.value.status == 409
        with pytest.raises(p.ProtocolError, match="cancelled on the server"):
            store.seal(job, "sda", p.image_digest(8 * CHUNK, CHUNK, {0: p.chunk_digest(data)}, []),
                       [], [])
        assert store.get_job(job)["state"] == "failed"
        store.close()
        store = Store(tmp_path)       # a restarted server knows it from the job's state
    with pytest.raises(p.ProtocolError, match="not receiving"):
        store.cancel_job(job, "again")
    store.delete_job(job)
    assert not (tmp_path / "jobs" / job).exists()
    with pytest.raises(p.ProtocolError, match="no job"):
        store.get_job(job)
    store.close()
