import pytest

from xenp2v import protocol as p


def test_chunk_span_covers_disk_with_short_last_chunk():
    size = 10 * 1024 * 1024 + 512
    cs = p.DEFAULT_CHUNK_SIZE
    assert p.chunk_count(size, cs) == 3
    assert p.chunk_span(size, cs, 0) == (0, cs)
    assert p.chunk_span(size, cs, 2) == (2 * cs, size - 2 * cs)
    with pytest.raises(p.ProtocolError) as err:
        p.chunk_span(size, cs, 3)
    assert err.value.status == 416


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 65, None, 3, "a b", "é", "sda\n"])
def test_ids_that_could_escape_or_confuse_are_refused(bad):
    with pytest.raises(p.ProtocolError) as err:
        p.check_id(bad, "disk id")
    assert err.value.status == 400


def test_digest_round_trip_and_rejects_other_forms():
    d = p.chunk_digest(b"\0" * 4096)
    assert p.parse_digest(d.upper().replace("BLAKE3", "blake3")) == d
    for bad in ["sha256:" + "0" * 64, "blake3:xyz", "", None, "blake3:" + "0" * 63]:
        with pytest.raises(p.ProtocolError):
            p.parse_digest(bad)


@pytest.mark.parametrize("size", [p.MIN_CHUNK_SIZE, p.DEFAULT_CHUNK_SIZE, p.MAX_CHUNK_SIZE])
def test_chunk_sizes_accepted(size):
    assert p.check_chunk_size(size) == size


@pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024, p.MAX_CHUNK_SIZE * 2, "4M"])
def test_chunk_sizes_refused(size):
    with pytest.raises(p.ProtocolError):
        p.check_chunk_size(size)


def test_image_map_merges_runs_and_fills_free():
    m = p.image_map(10, data=[1, 2, 5], zero=[3, 5, 9])
    assert [(e.kind.value, e.start, e.count) for e in m] == [
        ("free", 0, 1), ("data", 1, 2), ("zero", 3, 1), ("free", 4, 1), ("data", 5, 1),
        ("free", 6, 3), ("zero", 9, 1)]
    huge = p.image_map(1 << 40, data=[7], zero=[])
    assert [(e.kind.value, e.start, e.count) for e in huge] == [
        ("free", 0, 7), ("data", 7, 1), ("free", 8, (1 << 40) - 8)]
    assert p.Extent.from_json(m[1].to_json()) == m[1]


def test_image_digest_depends_on_every_data_and_zero_chunk_but_not_free():
    d = {0: p.chunk_digest(b"a"), 4: p.chunk_digest(b"b")}
    base = p.image_digest(100, 65536, d, [2])
    assert base == p.image_digest(100, 65536, dict(d), [2, 4])  # data wins over zero
    assert base != p.image_digest(100, 65536, d, [])
    assert base != p.image_digest(100, 65536, {0: d[0], 4: p.chunk_digest(b"c")}, [2])
    assert base != p.image_digest(101, 65536, d, [2])
    assert base.startswith("blake3:") and len(base) == 7 + 64


def test_error_codes_all_have_a_status():
    assert set(p.ERROR_STATUS) == set(p.ErrorCode)
    assert p.ProtocolError(p.ErrorCode.TOO_LARGE, "x").body() == {"error": "too_large", "detail": "x"}
