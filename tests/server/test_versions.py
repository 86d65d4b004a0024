"""Warm migration in the store: each pass into a sealed pre-copy job writes a new version of its
images; a sealed version never changes, a failed pass leaves the last one served, old ones go."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from server.inventory import parse_inventory
from server.store import Store, clone_image
from xenp2v import protocol as p

CHUNK = p.MIN_CHUNK_SIZE
SIZE = 8 * CHUNK
UUID = "5a4b3c2d-0000-1111-2222-333344445555"


def create(store: Store, **extra) -> tuple[dict, bool]:
    return store.create_job(parse_inventory({
        "name": "db01", "machine": {"system_uuid": UUID},
        "disks": [{"id": "sda", "size": SIZE, "chunk_size": CHUNK}], **extra}))


def send(store: Store, job: str, chunks: dict[int, bytes], zero=()) -> dict:
    """Sends what is not held with these bytes and seals: chunks held but not named are zero."""
    held = store.held_chunks(job, "sda")
    digests = {i: p.chunk_digest(b) for i, b in chunks.items()}
    for i, b in chunks.items():
        if held.get(i) != digests[i]:
            store.put_chunk(job, "sda", i, b, digests[i])
    zero = sorted(set(zero) | (held.keys() - digests.keys()))
    got, _ = store.seal(job, "sda", p.image_digest(SIZE, CHUNK, digests, zero),
                        [tuple(r) for r in p.runs(zero)], [])
    return got


def served(store: Store, job: str) -> bytes:
    """The disk as a restore writes it: the newest sealed version's data, zeros elsewhere."""
    out = bytearray(SIZE)
    for e in store.sealed_image(job, "sda").extents:
        if e.kind is p.ChunkKind.DATA:
            for i in range(e.start, e.start + e.count):
                data, digest = store.read_chunk(job, "sda", i)
                assert p.chunk_digest(data) == digest
                out[i * CHUNK:(i + 1) * CHUNK] = data
    return bytes(out)


def disk_of(chunks: dict[int, bytes]) -> bytes:
    out = bytearray(SIZE)
    for i, b in chunks.items():
        out[i * CHUNK:(i + 1) * CHUNK] = b
    return bytes(out)


def test_each_pass_is_a_version_and_a_failed_pass_leaves_the_last_one(tmp_path):
    store = Store(tmp_path, keep_versions=2)
    first = {0: os.urandom(CHUNK), 2: os.urandom(CHUNK), 5: os.urandom(CHUNK)}
    job, resumed = create(store, **{"pass": "precopy", "live": True})
    assert not resumed and job["records"]["warm"] == {"pass": "precopy", "live": True, "version": 1}
    job = job["id"]
    assert send(store, job, first)["state"] == "sealed"

    # A second pre-copy pass: the same job, version 2, the chunk list carried over.
    second = {**first, 2: os.urandom(CHUNK), 6: os.urandom(CHUNK)}
    del second[5]
    again, resumed = create(store, **{"pass": "precopy", "live": True})
    assert resumed and again["id"] == job and again["state"] == "receiving"
    assert again["disks"][0]["version"] == 2 and store.held_chunks(job, "sda").keys() == first.keys()
    assert served(store, job) == disk_of(first)  # version 1 is served while 2 is received
    send(store, job, second)
    assert served(store, job) == disk_of(second)
    assert store.image_path(job, "sda", 1).read_bytes() == disk_of(first)  # never changed

    # The final sync (no "pass"): version 3, cancelled half-way; version 2 stays whole.
    final, resumed = create(store)
    assert resumed and final["id"] == job and final["records"]["warm"]["pass"] == "final"
    store.put_chunk(job, "sda", 0, b"\x01" * CHUNK, p.chunk_digest(b"\x01" * CHUNK))
    store.cancel_job(job, "the technician stopped the final sync")
    assert served(store, job) == disk_of(second)
    assert store.sealed_image(job, "sda").version == 2
    assert store.chunk_list(job, "sda", sealed=True)["chunks"] == {
        str(i): p.chunk_digest(b) for i, b in sorted(second.items())}
    versions = store.get_job(job)["disks"][0]["versions"]
    assert [(v["version"], v["pass"], v["live"]) for v in versions] == [
        (1, "precopy", True), (2, "precopy", True)]
    store.close()


def test_sealing_a_new_version_prunes_beyond_keep_versions(tmp_path):
    store = Store(tmp_path, keep_versions=1)
    job = create(store, **{"pass": "precopy"})[0]["id"]
    send(store, job, {1: os.urandom(CHUNK)})
    create(store, **{"pass": "precopy"})
    third = {1: os.urandom(CHUNK), 3: os.urandom(CHUNK)}
    send(store, job, third)
    assert not store.image_path(job, "sda", 1).exists()
    assert [v["version"] for v in store.get_job(job)["disks"][0]["versions"]] == [2]
    assert served(store, job) == disk_of(third)
    store.close()
    with pytest.raises(ValueError):
        Store(tmp_path, keep_versions=0)


def test_a_precopy_sender_digests_with_sha256_and_the_server_keeps_blake3(tmp_path):
    store = Store(tmp_path)
    job = create(store, **{"pass": "precopy", "live": True})[0]["id"]
    body = os.urandom(CHUNK)
    sha = hashlib.sha256(body).hexdigest()
    store.put_chunk(job, "sda", 4, body, p.chunk_digest(body))
    # The sender has no BLAKE3: it names the chunk by SHA-256, the server keeps both.
    store.write_chunk(job, "sda", 4, body, p.chunk_digest(body), sha256=sha).result()
    listed = store.chunk_list(job, "sda")
    assert listed["chunks"] == {"4": p.chunk_digest(body)} and listed["sha256"] == {"4": sha}
    wrong = p.precopy_image_digest(SIZE, CHUNK, {}, [4], [0])
    with pytest.raises(p.ProtocolError):
        store.seal(job, "sda", wrong, [(0, 1)], [])
    right = p.precopy_image_digest(SIZE, CHUNK, {4: f"sha256:{sha}"}, [4], [0])
    got, _ = store.seal(job, "sda", right, [(0, 1)], [])
    assert got["disks"][0]["digest"] == p.image_digest(SIZE, CHUNK, {4: p.chunk_digest(body)}, [0])
    store.close()


def test_clone_image_copies_only_data_and_keeps_holes(tmp_path):
    src, dst = tmp_path / "a.img", tmp_path / "b.img"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(40 << 20)
        f.write(b"x" * 4096)
    how = clone_image(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert how == "reflink" or os.stat(dst).st_blocks * 512 <= 1 << 20
    assert os.stat(dst).st_mode & 0o777 == 0o600


def test_clone_image_is_a_reflink_on_btrfs(tmp_path, loopdev):
    dev = loopdev(256 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-f", dev], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", dev, str(mnt)], check=True)
    try:
        src = mnt / "a.img"
        src.write_bytes(os.urandom(8 << 20))
        assert clone_image(src, mnt / "b.img") == "reflink"
        assert (mnt / "b.img").read_bytes() == src.read_bytes()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_the_next_pass_clone_is_made_at_the_seal_not_in_the_downtime(tmp_path, monkeypatch):
    """Without reflinks a new version is a copy of the image: made once a pre-copy pass is
    sealed (the source still runs), so the final sync's create only renames it."""
    store = Store(tmp_path)
    first = {0: os.urandom(CHUNK), 3: os.urandom(CHUNK)}
    job = create(store, **{"pass": "precopy", "live": True})[0]["id"]
    send(store, job, first)
    made = store.next_path(job, "sda", 2)
    deadline = time.monotonic() + 60
    while not made.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert made.read_bytes() == disk_of(first)

    def no_copy(src, dst):
        raise AssertionError(f"{dst} was cloned when the final sync started")

    monkeypatch.setattr("server.store.clone_image", no_copy)
    final, resumed = create(store)
    assert resumed and final["disks"][0]["version"] == 2 and not made.exists()
    assert "made when it was sealed" in final["last_event"]["message"]
    assert store.image_path(job, "sda", 2).read_bytes() == disk_of(first)
    send(store, job, {**first, 3: os.urandom(CHUNK)})
    store.close()
    assert not store.next_path(job, "sda", 3).exists()  # the final sync made the last version


def test_a_clone_cut_off_by_a_killed_server_is_removed_by_the_next_pass(tmp_path):
    store = Store(tmp_path)
    first = {1: os.urandom(CHUNK)}
    job = create(store, **{"pass": "precopy"})[0]["id"]
    send(store, job, first)
    store.close()   # waits for the clone made ahead; then the server "was killed" while making it
    store.next_path(job, "sda", 2).rename(store.next_path(job, "sda", 2).with_suffix(".partial"))
    store = Store(tmp_path)
    final, resumed = create(store)
    assert resumed and final["disks"][0]["version"] == 2
    assert sorted(p.name for p in store.image_path(job, "sda").parent.iterdir()) == \
        ["sda.img", "sda.v2.img"]
    assert store.image_path(job, "sda", 2).read_bytes() == disk_of(first)
    store.close()


def test_chunks_declared_unused_before_the_seal_are_punched_then_and_the_pass_stays(tmp_path):
    """A final sync declares the held chunks its source no longer uses before it reads the rest:
    forgotten and punched at once (not in the downtime), in the new version only."""
    store = Store(tmp_path)
    first = {0: os.urandom(CHUNK), 2: os.urandom(CHUNK), 5: os.urandom(CHUNK)}
    job = create(store, **{"pass": "precopy", "live": True})[0]["id"]
    send(store, job, first)
    create(store)  # the final sync: version 2, cloned from the pass
    image = store.image_path(job, "sda", 2)

    with pytest.raises(p.ProtocolError) as outside:
        store.zero_chunks(job, "sda", [(7, 2)])
    assert outside.value.code is p.ErrorCode.OUT_OF_RANGE
    store.zero_chunks(job, "sda", [(2, 1), (5, 2)])
    assert store.held_chunks(job, "sda").keys() == {0}
    assert image.read_bytes() == disk_of({0: first[0]})
    assert os.stat(image).st_blocks * 512 <= 2 * CHUNK  # punched, not written with zeros
    assert store.image_path(job, "sda", 1).read_bytes() == disk_of(first)
    assert served(store, job) == disk_of(first)  # the pass is served until the sync is sealed

    final = {0: first[0], 3: os.urandom(CHUNK)}
    send(store, job, final, zero=[2, 5, 6])
    assert served(store, job) == disk_of(final)
    with pytest.raises(p.ProtocolError) as sealed:
        store.zero_chunks(job, "sda", [(0, 1)])
    assert sealed.value.status == 409
