"""The automatic path end to end: a real `p2v-server serve --xapi-url …` and the XAPI simulator.

Upload and seal a job over the wire; the server makes the VM, imports the disk, boots it on the ISO;
the agent in the VM finds its job by SMBIOS UUID and reports its repair; the server ejects the ISO
and boots the VM from its disk. Then `p2v-server export` writes the same job as an XVA.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from test_export import read_xva
from test_server_upload import disk_content, image_digest
from wire import CHUNK, Wire, upload
from xapisim import XapiSim
from xenp2v import protocol as p


def wait_state(wire: Wire, job: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = wire.call("GET", p.job_path(job)).json()
        if body["state"] in states:
            return body
        assert time.monotonic() < deadline, f"job stuck in {body['state']}: {body['detail']}"
        time.sleep(0.1)


def test_sealed_job_becomes_a_vm_that_boots_from_disk_after_repair(tmp_path, p2v_server_factory):
    iso = tmp_path / "xenp2v.iso"
    iso.write_bytes(b"\x02" * 8192)
    password = tmp_path / "xapi-password"
    password.write_text("secret\n")
    size = 24 * CHUNK + 4096
    count = p.chunk_count(size, CHUNK)
    data, zero = disk_content(count, size, seed=5)
    expected = bytearray(size)
    for i, body in data.items():
        expected[i * CHUNK: i * CHUNK + len(body)] = body

    with XapiSim(tmp_path / "sim", iso_path=iso, sr_type="rawhba") as sim:
        server = p2v_server_factory(plain=True, args=(
            "--xapi-url", sim.url, "--xapi-password-file", str(password), "--iso", "xenp2v.iso"))
        assert "XenServer automation: " + sim.url in server.log.read_text()
        wire = Wire(server)
        r = wire.create([{"id": "sda", "size": size, "chunk_size": CHUNK}], name="db01",
                        machine={"system_uuid": "11111111-2222-3333-4444-555555555555",
                                 "cpus": 2, "memory": 1 << 30, "firmware": "bios",
                                 "nics": [{"name": "enp1s0", "mac": "52:54:00:00:00:07"}]})
        assert r.status_code == 201, r.text
        job = r.json()["id"]
        upload(server, job, "sda", data)
        r = wire.complete(job, "sda", image_digest(size, data, zero),
                          zero=list(p.runs(sorted(zero))))
        assert r.status_code == 200, r.text

        body = wait_state(wire, job, {"repairing", "failed"})
        assert body["state"] == "repairing", body["detail"]
        (vm_ref, vm), = [(r, v) for r, v in sim.db["VM"].items() if not v["is_a_template"]]
        assert vm["name_label"] == "db01" and vm["VCPUs_at_startup"] == 2
        assert vm["memory_static_max"] == 1 << 30
        assert [sim.db["VIF"][v]["MAC"] for v in vm["VIFs"]] == ["52:54:00:00:00:07"]
        disk = next(sim.db["VBD"][v]["VDI"] for v in vm["VBDs"]
                    if sim.db["VBD"][v]["type"] == "Disk")
        got = sim.vdi_path(disk).read_bytes()
        for i in range(count):
            offset, length = p.chunk_span(size, CHUNK, i)
            if i in data or i in zero:  # free chunks may hold anything on a raw LUN
                assert got[offset:offset + length] == expected[offset:offset + length], i
        assert body["records"]["xenserver"]["vm"]["uuid"] == vm["uuid"]

        # The agent in the VM: its SMBIOS UUID is the VM's UUID, and it speaks with the job
        # token the VM was given in XenStore, which opens this job only and ends with it.
        vm_token = vm["xenstore_data"]["vm-data/xenp2v/token"]
        assert vm_token != server.token and vm_token not in json.dumps(body)
        in_vm = Wire(server, token=vm_token)
        found = in_vm.call("GET", p.machine_path(vm["uuid"]))
        assert found.status_code == 200 and found.json()["id"] == job
        other = wire.create([{"id": "sda", "size": CHUNK, "chunk_size": CHUNK}], name="other",
                            uuid="99999999-2222-3333-4444-555555555555").json()["id"]
        assert in_vm.call("GET", p.job_path(other)).status_code == 403
        assert in_vm.call("GET", p.jobs_path()).status_code == 403
        r = in_vm.call("POST", p.repair_path(job), json={"ok": True, "detail": "repaired"})
        assert r.status_code == 204, r.text
        deadline = time.monotonic() + 60
        while sim.db["VM"][vm_ref]["HVM_boot_params"]["order"] != "cd" or len(sim.boots) < 2:
            assert time.monotonic() < deadline, sim.calls[-5:]
            time.sleep(0.1)
        body = wait_state(wire, job, {"done", "failed"})
        assert body["state"] == "done", body["detail"]
        cd = [sim.db["VBD"][v] for v in vm["VBDs"] if sim.db["VBD"][v]["type"] == "CD"]
        assert cd[0]["empty"] is True
        assert sim.boots[-1]["order"] == "cd"
        time.sleep(2.5)  # what the server keeps of a token's job state
        assert in_vm.call("GET", p.job_path(job)).status_code == 401   # ended with the job

    out = tmp_path / "db01.xva"
    proc = subprocess.run([sys.executable, "-m", "server.cli", "export", job, "--format", "xva",
                           "--out", str(out), "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    head, disks = read_xva(out, tmp_path)
    (raw,) = disks.values()
    got = raw.read_bytes()
    for i in list(data) + zero:
        offset, length = p.chunk_span(size, CHUNK, i)
        assert got[offset:offset + length] == expected[offset:offset + length], i
    proc = subprocess.run([sys.executable, "-m", "server.cli", "export", "nope", "--format", "raw",
                           "--out", str(tmp_path / "x.raw"), "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.strip()
