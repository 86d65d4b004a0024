"""Resume: the unfinished job of the same machine with the same disks, never another machine's.

Boards with placeholder or duplicated SMBIOS identities are common, and machines imaged from one
master share partition tables: resume takes a job only when the machine and every disk (id,
size, serial, partition table) match, and a placeholder machine identity only with disk serials.
"""

from __future__ import annotations

import pytest

from server.inventory import parse_inventory
from server.store import Store
from wire import Wire
from xenp2v import protocol as p

GiB = 1 << 30
AMI = "03000200-0400-0500-0006-000700080009"
OEM = {"system_uuid": AMI, "vendor": "ASRock", "product": "H61M-DGS",
       "serial": "To be filled by O.E.M."}
DELL = {"system_uuid": "4c4c4544-0042-3510-8052-b4c04f4e4e31", "vendor": "Dell Inc.",
        "product": "OptiPlex 7010", "serial": "5R2JBX1"}
IMAGED = "6f1e3a52-93c4-4b1e-9d0c-2b8e5f7a9c11"   # the PTUUID every machine of one image has


def disk(serial=None, ptuuid=IMAGED, parts=((1 << 20, 512 << 20), (513 << 20, 400 << 20)),
         disk_id="sda", size=GiB, label="gpt") -> dict:
    return {"id": disk_id, "size": size, "used": 64 << 20, "used_chunks": 16, "serial": serial,
            "table": {"label": label, "id": ptuuid, "partitions": [list(x) for x in parts]}}


def create(store: Store, machine: dict, *disks: dict) -> tuple[dict, bool]:
    return store.create_job(parse_inventory({"name": "pc", "machine": machine,
                                             "disks": list(disks)}))


@pytest.mark.parametrize("uuid", [AMI, "00000000-0000-0000-0000-000000000000",
                                  "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", ""])
def test_two_machines_with_the_same_placeholder_identity_get_two_jobs(tmp_path, uuid):
    store = Store(tmp_path)
    machine = {**OEM, "system_uuid": uuid}
    first, _ = create(store, machine, disk())
    # Another board of the same batch, imaged from the same master: nothing tells them apart.
    second, resumed = create(store, machine, disk())
    assert not resumed and second["id"] != first["id"]
    # With disk serials, the placeholder machine is told apart by its disks...
    third, _ = create(store, machine, disk(serial="WD-WCC4N0123456"))
    fourth, resumed = create(store, machine, disk(serial="WD-WCC4N0999999"))
    assert not resumed and fourth["id"] != third["id"]
    assert "serial 'WD-WCC4N0123456', not serial 'WD-WCC4N0999999'" in fourth["records"]["not_resumed"]
    # ... and found again by them.
    again, resumed = create(store, machine, disk(serial="WD-WCC4N0123456"))
    assert resumed and again["id"] == third["id"]
    store.close()


def test_a_placeholder_disk_serial_does_not_identify_a_placeholder_machine(tmp_path):
    store = Store(tmp_path)
    first, _ = create(store, OEM, disk(serial="0123456789"))
    second, resumed = create(store, OEM, disk(serial="0123456789"))
    assert not resumed and second["id"] != first["id"]
    store.close()


def test_the_same_machine_run_again_resumes(tmp_path):
    store = Store(tmp_path)
    disks = [disk(serial="S3Z9NB0K123456A"), disk(serial=None, ptuuid="0x1c2d3e4f", label="dos",
                                                 disk_id="sdb", size=2 * GiB)]
    first, _ = create(store, DELL, *disks)
    again, resumed = create(store, DELL, *reversed(disks))
    assert resumed and again["id"] == first["id"] and "not_resumed" not in again["records"]
    store.close()


@pytest.mark.parametrize("change, why", [
    ({"serial": "S3Z9NB0K999999Z"},
     "its disk sda has serial 'S3Z9NB0K123456A', not serial 'S3Z9NB0K999999Z'"),
    ({"serial": None}, "its disk sda has serial 'S3Z9NB0K123456A', not no serial"),
    ({"ptuuid": "0B6D1C2E-7F00-4A3B-8E21-5D4C3B2A1F00"}, "its disk sda has another partition table: "
     f"identifier {IMAGED}, not 0b6d1c2e-7f00-4a3b-8e21-5d4c3b2a1f00"),
    ({"parts": ((1 << 20, 512 << 20), (513 << 20, 300 << 20))}, "another partition table: partitions "
     f"(start+size in bytes) [{1 << 20}+{512 << 20}, {513 << 20}+{400 << 20}], not "
     f"[{1 << 20}+{512 << 20}, {513 << 20}+{300 << 20}]"),
    ({"label": "dos", "ptuuid": "0x1c2d3e4f"}, "its disk sda has another partition table: gpt, not dos"),
    ({"size": 2 * GiB}, f"its disk sda has {GiB} bytes, not {2 * GiB}"),
    ({"disk_id": "nvme0n1"}, "it has no disk nvme0n1 (it has sda)"),
])
def test_same_machine_identity_with_other_disks_is_a_new_job(tmp_path, change, why):
    store = Store(tmp_path)
    first, _ = create(store, DELL, disk(serial="S3Z9NB0K123456A"))
    second, resumed = create(store, DELL, disk(**{"serial": "S3Z9NB0K123456A", **change}))
    assert not resumed and second["id"] != first["id"]
    note = second["records"]["not_resumed"]
    assert note.startswith(f"Job {first['id']} is of a machine with the same identity") and why in note
    # The first job is still there to resume, untouched.
    again, resumed = create(store, DELL, disk(serial="S3Z9NB0K123456A"))
    assert resumed and again["id"] == first["id"]
    store.close()


EXT4_A, EXT4_B = "0f5c1d9e-3b7a-4c2e-9a51-6d8e2f4b7c10", "7e2a9b41-5c3d-4f6e-8a1b-2c9d0e3f4a5b"


def whole_disk(uuid: str, fstype: str = "ext4") -> dict:
    """A disk with no serial and no partition table, a filesystem on the whole of it."""
    return {"id": "sda", "size": GiB, "used_chunks": 16, "serial": None, "table": None,
            "filesystem": {"fstype": fstype, "uuid": uuid, "label": None}}


def partitioned(uuid: str) -> dict:
    """The imaged partition table every machine of a batch has, its partition reformatted."""
    part = {"number": 1, "start": 1 << 20, "size": 512 << 20, "type": "83", "fstype": "ext4",
            "uuid": uuid, "label": "root"}
    return {**disk(), "table": {"label": "gpt", "id": IMAGED, "partitions": [part]}}


@pytest.mark.parametrize("first, second, why", [
    (whole_disk(EXT4_A), whole_disk(EXT4_B), f"its disk sda holds ext4 {EXT4_A}, not ext4 {EXT4_B}"),
    (whole_disk(EXT4_A), whole_disk(EXT4_A, "xfs"), f"holds ext4 {EXT4_A}, not xfs {EXT4_A}"),
    (whole_disk(EXT4_A), {**whole_disk(EXT4_A), "filesystem": None},
     f"holds ext4 {EXT4_A}, not nothing"),
    (partitioned(EXT4_A), partitioned(EXT4_B),
     f"another partition table: its partition 1 holds ext4 {EXT4_A}, not ext4 {EXT4_B}"),
])
def test_what_a_disk_holds_tells_two_machines_apart(tmp_path, first, second, why):
    """Disks with no serial, of one size, with no partition table or one imaged table: the
    filesystems on them are what tells one machine's disk from another's."""
    store = Store(tmp_path)
    a, _ = create(store, DELL, first)
    b, resumed = create(store, DELL, second)
    assert not resumed and b["id"] != a["id"] and why in b["records"]["not_resumed"]
    again, resumed = create(store, DELL, first)
    assert resumed and again["id"] == a["id"]
    store.close()


def test_a_resumed_job_takes_the_new_inventory_and_says_so(tmp_path):
    store = Store(tmp_path)
    old = {**whole_disk(EXT4_A), "plan": ["old note"], "warnings": []}
    first, _ = store.create_job(parse_inventory(
        {"name": "before", "machine": {**DELL, "memory": 1 << 30}, "disks": [old]}))
    new = {**whole_disk(EXT4_A), "plan": ["new note"], "warnings": ["new note"]}
    again, resumed = store.create_job(parse_inventory(
        {"name": "after", "machine": {**DELL, "memory": 2 << 30}, "disks": [new]}))
    assert resumed and again["id"] == first["id"]
    assert again["name"] == "after" and again["inventory"]["name"] == "after"
    assert again["inventory"]["machine"]["memory"] == 2 << 30
    assert again["inventory"]["disks"][0]["plan"] == ["new note"]
    (event,) = store.events(first["id"])
    assert event["phase"] == "resumed" and again["last_event"]["phase"] == "resumed"
    store.close()


def test_a_named_job_is_resumed_only_while_receiving_and_only_with_its_disks(tmp_path):
    store = Store(tmp_path)
    named, _ = create(store, OEM, disk())          # a placeholder: never resumed unasked
    body = {"name": "pc", "machine": DELL, "disks": [disk()], "job": named["id"]}
    again, resumed = store.create_job(parse_inventory(body))
    assert resumed and again["id"] == named["id"] and again["inventory"]["machine"] == DELL
    with pytest.raises(p.ProtocolError) as refused:
        store.create_job(parse_inventory({**body, "disks": [disk(serial="S3Z9NB0K123456A")]}))
    assert refused.value.status == 409 and refused.value.detail.startswith(
        f"Job {named['id']} holds other disks: its disk sda has no serial, not serial")
    with pytest.raises(p.ProtocolError) as refused:
        store.create_job(parse_inventory({**body, "job": "20990101-000000-none"}))
    assert refused.value.status == 404
    store.set_state(named["id"], p.JobState.SEALED)
    with pytest.raises(p.ProtocolError) as refused:
        store.create_job(parse_inventory(body))
    assert refused.value.status == 409 and "is sealed: it takes no more chunks" in refused.value.detail
    assert len(store.list_jobs()) == 1
    store.close()


def test_placeholders_are_told_from_identities():
    for value in (None, "", "  ", "To be filled by O.E.M.", "Default string", "System Serial Number",
                  "Not Specified", "0123456789", AMI, AMI.upper(), "00000000-0000-0000-0000-000000000000",
                  "ffffffff-ffff-ffff-ffff-ffffffffffff", "11111111-1111-1111-1111-111111111111"):
        assert p.placeholder(value), value
    for value in (DELL["system_uuid"], "5R2JBX1", "WD-WCC4N0123456"):
        assert not p.placeholder(value), value


def test_over_http_placeholder_machines_get_their_own_jobs_and_the_answer_says_why(p2v_server):
    wire = Wire(p2v_server)

    def create_over_http(machine: dict, *disks: dict):
        r = wire.call("POST", p.jobs_path(), json={"name": "pc", "machine": machine,
                                                   "disks": list(disks)})
        assert r.status_code in (200, 201), r.text
        return r.json()

    a = create_over_http(OEM, disk())
    b = create_over_http(OEM, disk())
    assert b["id"] != a["id"] and not b["resumed"]

    c = create_over_http(DELL, disk(serial="S3Z9NB0K123456A"))
    again = create_over_http(DELL, disk(serial="S3Z9NB0K123456A"))
    assert again["resumed"] and again["id"] == c["id"]
    other = create_over_http(DELL, disk(serial="S3Z9NB0K123456A", ptuuid="0b6d1c2e-7f00-4a3b-8e21-5d4c3b2a1f00"))
    assert not other["resumed"] and other["id"] != c["id"]
    assert "another partition table" in other["not_resumed"]
    assert other["not_resumed"] in p2v_server.log.read_text()
    r = wire.call("GET", p.job_path(other["id"]))
    assert r.json()["records"]["not_resumed"] == other["not_resumed"]


def test_a_malformed_disk_identity_is_refused(p2v_server):
    wire = Wire(p2v_server)
    for bad in ({"serial": 7}, {"serial": "x" * 300}, {"table": {"label": "gpt", "partitions": [[1]]}},
                {"table": "gpt"}, {"filesystem": "ext4"}, {"filesystem": {"uuid": 7}}):
        r = wire.create([{"id": "sda", "size": GiB, **bad}])
        assert r.status_code == 400 and r.json()["error"] == "bad_request", (bad, r.text)


def test_a_create_retried_after_a_lost_answer_makes_no_orphan_job(p2v_server_factory):
    """A placeholder identity without disk serials is never resumed; the create's request_id
    is what keeps a retry from making a second job that would hold free space for ever."""
    from agent.transfer.client import Client
    from cutproxy import CutProxy

    server = p2v_server_factory(plain=True)
    # The first connection's answer is cut after its first byte: the job was made, the agent
    # never heard of it, and retries.
    proxy = CutProxy(server.port, after=1, cuts=1, modes=("reset",))
    try:
        client = Client(proxy.url("http"), server.token, retry_for=30)
        job = client.create_job({"name": "pc", "machine": OEM, "disks": [disk()]})
    finally:
        proxy.close()
    assert proxy.cut["reset"] == 1
    jobs = Wire(server).call("GET", p.jobs_path()).json()
    assert [j["id"] for j in jobs] == [job["id"]]
    # Two separate captures of such a machine are still two jobs.
    other = Client(server.url, server.token).create_job({"name": "pc", "machine": OEM, "disks": [disk()]})
    assert other["id"] != job["id"]


def test_a_request_id_answers_only_a_retry_of_its_own_create(p2v_server):
    """request_id replays the job only for the same create: another name or other disks under it
    is refused (409), and a finished job's create, retried, mints no token for it."""
    wire = Wire(p2v_server)
    first = wire.create([disk()], name="pc", request_id="req-1")
    assert first.status_code == 201, first.text
    job = first.json()["id"]
    again = wire.create([disk()], name="pc", request_id="req-1")     # the same create, retried
    assert again.status_code == 201 and again.json()["id"] == job, again.text
    for name, disks in (("other", [disk()]), ("pc", [disk(size=2 * GiB)]),
                        ("pc", [disk(disk_id="sdb")]), ("pc", [disk(), disk(disk_id="sdb")])):
        r = wire.create(disks, name=name, request_id="req-1")
        assert r.status_code == 409 and r.json()["error"] == "conflict", (name, r.text)
        assert "request_id req-1 already made job" in r.json()["detail"]
        assert "token" not in r.json()
    store = Store(p2v_server.data_dir)
    try:
        store.cancel_job(job, "stopped by the test")
        r = wire.create([disk()], name="pc", request_id="req-1")
        assert r.status_code == 409 and r.json()["error"] == "job_cancelled", r.text
        done = wire.create([disk()], name="pc", request_id="req-2").json()["id"]
        store.set_state(done, p.JobState.DONE, "repaired")
        r = wire.create([disk()], name="pc", request_id="req-2")
        assert r.status_code == 409 and "is done" in r.json()["detail"] and "token" not in r.json(), r.text
    finally:
        store.close()
