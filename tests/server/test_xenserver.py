"""The automatic path against the XAPI simulator: VM record, VDI bytes, CD and boot order, errors."""

from __future__ import annotations

import http.client
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

import pytest
import XenAPI

from handmade import HandStore, job_for, make_image, same_bytes
from server.xenserver import vdi_import
from server.xenserver.pool import Pool, XapiConfig
from server.xenserver.provision import Provisioner
from xapisim import XapiSim
from xenp2v.protocol import ChunkKind

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.fixture
def iso(tmp_path):
    path = tmp_path / "xenp2v.iso"
    path.write_bytes(b"\x01" * 4096)
    return path


@pytest.fixture
def images(tmp_path):
    return [make_image(tmp_path, "sda", 20 * MiB + 512 * 1024, 256 * 1024, seed=3),
            make_image(tmp_path, "sdb", 12 * MiB, 4 * MiB, seed=4)]


def make_store(images, **job) -> HandStore:
    store = HandStore()
    store.add(job_for(images, **job), images)
    return store


def config(sim: XapiSim, **kw) -> XapiConfig:
    base = dict(url=sim.url, user="root", password="secret", iso="xenp2v.iso")
    base.update(kw)
    return XapiConfig(**base)


def start_sim(tmp_path, iso, **kw) -> XapiSim:
    return XapiSim(tmp_path / "sim", iso_path=iso, **kw).start()


@pytest.fixture
def sim(tmp_path, iso):
    s = start_sim(tmp_path, iso)
    yield s
    s.stop()


def our_vm(sim: XapiSim) -> tuple[str, dict]:
    (found,) = [(r, v) for r, v in sim.db["VM"].items() if not v["is_a_template"]]
    return found


def call_names(sim: XapiSim) -> list[str]:
    return [name for name, _ in sim.calls]


def test_whole_automatic_path(sim, images):
    store = make_store(images, cpus=3, memory=3 * GiB,
                       nics=(("eth0", "52:54:00:12:34:56"), ("eth1", "52:54:00:ab:cd:ef")))
    prov = Provisioner(store, config(sim))
    assert prov.provision("job1"), store.jobs["job1"]
    ref, vm = our_vm(sim)
    assert vm["name_label"] == "web01" and vm["power_state"] == "Running"
    assert vm["VCPUs_max"] == vm["VCPUs_at_startup"] == 3
    assert vm["memory_static_max"] == vm["memory_dynamic_max"] == vm["memory_dynamic_min"] == 3 * GiB
    assert vm["HVM_boot_policy"] == "BIOS order"
    assert vm["HVM_boot_params"] == {"order": "dc"}
    assert vm["platform"]["viridian"] == "false"
    assert [sim.db["VIF"][v]["MAC"] for v in vm["VIFs"]] == ["52:54:00:12:34:56",
                                                            "52:54:00:ab:cd:ef"]
    vbds = [sim.db["VBD"][v] for v in vm["VBDs"]]
    disks = [v for v in vbds if v["type"] == "Disk"]
    (cd,) = [v for v in vbds if v["type"] == "CD"]
    assert [d["userdevice"] for d in disks] == ["0", "1"] and cd["userdevice"] == "3"
    assert sim.db["VDI"][cd["VDI"]]["name_label"] == "xenp2v.iso"
    # no blank disk from the template's recipe: only ours
    assert len([v for v in sim.db["VDI"].values() if v["SR"] == sim.sr]) == 2
    for image, vbd in zip(images, disks):
        assert sim.db["VDI"][vbd["VDI"]]["virtual_size"] == image.size
        assert same_bytes(image.path, sim.vdi_path(vbd["VDI"]))
    # first boot: CD first, ISO inserted
    assert sim.boots[0]["order"] == "dc" and sim.boots[0]["firmware"] == "bios"
    assert {"type": "CD", "userdevice": "3", "media": "xenp2v.iso"} in sim.boots[0]["devices"]
    assert store.targets["job1"] == vm["uuid"]
    assert store.jobs["job1"]["state"] == "repairing"
    rec = store.records["job1"]["xenserver"]
    assert rec["vm"]["uuid"] == vm["uuid"] and rec["product"]["brand"] == "XCP-ng"
    assert [o["class"] for o in rec["created"]] == ["VM", "VDI", "VBD", "VDI", "VBD", "VIF", "VIF",
                                                    "VBD"]
    assert all(o["uuid"] for o in rec["created"])

    assert not prov.provision("job1"), "a job with a running VM gets no second one"
    assert len([v for v in sim.db["VM"].values() if not v["is_a_template"]]) == 1

    assert prov.after_repair("job1", {"ok": True, "detail": "repaired"})
    names = call_names(sim)
    start = names.index("VM.start")
    assert names.index("VBD.create") < names.index("import_raw_vdi") < start
    eject = names.index("VBD.eject")
    assert start < eject < names.index("VM.set_HVM_boot_params", eject) < names.index(
        "VM.hard_reboot")
    assert sim.db["VM"][ref]["HVM_boot_params"]["order"] == "cd"
    assert sim.boots[-1]["order"] == "cd"
    assert {"type": "CD", "userdevice": "3", "media": ""} in sim.boots[-1]["devices"]
    assert store.jobs["job1"]["state"] == "done"


def test_vm_bounded_by_the_host(tmp_path, iso, images):
    with XapiSim(tmp_path / "sim", iso_path=iso, host_cpus=2, host_memory=4 * GiB) as sim:
        store = make_store(images, cpus=16, memory=64 * GiB)
        assert Provisioner(store, config(sim)).provision("job1")
        _, vm = our_vm(sim)
        assert vm["VCPUs_max"] == 2 and vm["memory_static_max"] == 2 * GiB
        notes = store.records["job1"]["xenserver"]["adjustments"]
        assert any("vCPUs lowered from 16 to 2" in n for n in notes)
        assert any("Memory lowered from 65536 MiB to 2048 MiB" in n for n in notes)


def test_the_vms_macs_go_into_the_record_the_repair_reads(sim, images):
    from xenp2v.protocol import job_inventory

    store = make_store(images, nics=(("eth0", "52:54:00:12:34:56"), ("eth1", "52:54:00:ab:cd:ef")))
    assert Provisioner(store, config(sim, keep_macs=False)).provision("job1")
    _, vm = our_vm(sim)
    pool = [sim.db["VIF"][v]["MAC"] for v in vm["VIFs"]]
    assert all(sim.db["VIF"][v]["MAC_autogenerated"] for v in vm["VIFs"])
    assert job_inventory(store.get_job("job1"))["vm"]["nics"] == [
        {"device": 0, "mac": pool[0], "source": "eth0"}, {"device": 1, "mac": pool[1], "source": "eth1"}]


def test_windows_uefi_source(sim, images):
    store = make_store(images, firmware="uefi", os_name="Microsoft Windows 10 Pro")
    assert Provisioner(store, config(sim, keep_macs=False)).provision("job1")
    _, vm = our_vm(sim)
    assert vm["platform"]["viridian"] == "true"
    assert vm["HVM_boot_params"] == {"order": "dc", "firmware": "uefi"}
    assert sim.boots[0]["firmware"] == "uefi"
    assert sim.db["VIF"][vm["VIFs"][0]]["MAC_autogenerated"] is True


def test_uefi_source_on_a_pool_without_uefi_guests(tmp_path, iso, images):
    with XapiSim(tmp_path / "sim", iso_path=iso, brand="XenServer", product_version="7.1.0",
                 api=(2, 6)) as sim:
        store = make_store(images, firmware="uefi")
        assert Provisioner(store, config(sim)).provision("job1")
        _, vm = our_vm(sim)
        assert "firmware" not in vm["HVM_boot_params"]
        assert any("no UEFI guests" in n for n in store.records["job1"]["xenserver"]["adjustments"])


def test_zeros_sent_wherever_the_image_has_no_data_only_where_the_sr_is_not_zeroed(
        tmp_path, iso, images):
    """A raw LUN's new VDI holds old bytes: zero AND free extents must arrive as zeros there;
    an SR whose new VDIs read zeros gets data only."""
    sent = {}
    for sr_type in ("ext", "rawhba"):
        with XapiSim(tmp_path / sr_type, iso_path=iso, sr_type=sr_type) as sim:
            store = make_store(images)
            assert Provisioner(store, config(sim)).provision("job1")
            _, vm = our_vm(sim)
            disk = next(sim.db["VBD"][v]["VDI"] for v in vm["VBDs"]
                        if sim.db["VBD"][v]["userdevice"] == "0")
            image = images[0]
            with open(image.path, "rb") as src, open(sim.vdi_path(disk), "rb") as dst:
                for extent in image.extents:
                    offset = extent.start * image.chunk_size
                    length = min(extent.count * image.chunk_size, image.size - offset)
                    src.seek(offset)
                    dst.seek(offset)
                    want = src.read(length)
                    assert dst.read(length) == want, (sr_type, extent)
                    assert extent.kind is ChunkKind.DATA or want == bytes(length)
            sent[sr_type] = store.records["job1"]["xenserver"]["imports"][0]
    no_data = sum(min(e.count * images[0].chunk_size, images[0].size - e.start *
                      images[0].chunk_size) for e in images[0].extents
                  if e.kind is not ChunkKind.DATA)
    assert any(e.kind is ChunkKind.FREE for e in images[0].extents)
    assert sent["ext"]["zero_bytes_sent"] == 0
    assert sent["rawhba"]["zero_bytes_sent"] == no_data
    assert sent["rawhba"]["bytes_sent"] - sent["ext"]["bytes_sent"] >= no_data


def test_import_pieces_cover_what_the_map_leaves_out(images):
    image = images[0]
    gappy = type(image)(image.job, image.disk, image.path, image.size, image.chunk_size,
                        [e for e in image.extents if e.kind is ChunkKind.DATA])
    covered = 0
    for offset, length, kind in vdi_import.pieces(gappy, send_zero=True):
        assert offset == covered and length <= vdi_import.PIECE
        covered += length
    assert covered == image.size
    assert all(kind is ChunkKind.DATA for *_, kind in vdi_import.pieces(gappy, send_zero=False))


def test_out_of_space_is_said_and_cleaned_up(tmp_path, iso, images):
    with XapiSim(tmp_path / "sim", iso_path=iso, sr_size=25 * MiB) as sim:
        store = make_store(images)
        assert not Provisioner(store, config(sim)).provision("job1")
        state, detail = store.states[-1]
        assert state == "failed"
        assert "not enough free space" in detail and "--sr" in detail
        assert "What was created is removed." in detail
        assert not [v for v in sim.db["VM"].values() if not v["is_a_template"]]
        assert not [v for v in sim.db["VDI"].values() if v["SR"] == sim.sr]
        assert not list((tmp_path / "sim" / "vdis").iterdir())
        rec = store.records["job1"]["xenserver"]
        assert [o["class"] for o in rec["cleaned_up"]] == ["VBD", "VDI", "VM"]
        assert rec["left_after_failure"] == []


def test_failed_provisioning_kept_when_asked(tmp_path, iso, images):
    with XapiSim(tmp_path / "sim", iso_path=iso, sr_size=25 * MiB) as sim:
        store = make_store(images)
        assert not Provisioner(store, config(sim, keep_on_failure=True)).provision("job1")
        assert "What was created is kept" in store.states[-1][1]
        ref, vm = our_vm(sim)
        rec = store.records["job1"]["xenserver"]
        assert {o["ref"] for o in rec["created"]} == {ref, *vm["VBDs"],
                                                      sim.db["VBD"][vm["VBDs"][0]]["VDI"]}


def test_bad_credentials_reach_the_job(sim, images):
    store = make_store(images)
    assert not Provisioner(store, config(sim, password="wrong")).provision("job1")
    state, detail = store.states[-1]
    assert state == "failed" and "refused the login of user 'root'" in detail
    assert "password file" in detail


def test_missing_template_and_iso_reach_the_job(sim, images):
    store = make_store(images)
    assert not Provisioner(store, config(sim, template="Debian Bookworm 12")).provision("job1")
    assert "no template named 'Debian Bookworm 12'" in store.states[-1][1]
    assert not Provisioner(store, config(sim, iso="other.iso")).provision("job1")
    assert "No ISO SR holds an ISO named 'other.iso'" in store.states[-1][1]
    assert not [v for v in sim.db["VM"].values() if not v["is_a_template"]]


def test_import_task_error_text_is_surfaced(sim, images):
    session = XenAPI.Session(sim.url)
    session.xenapi.login_with_password("root", "secret", "2.0", "test")
    x = session.xenapi
    vdi = x.VDI.create({"name_label": "small", "SR": sim.sr, "virtual_size": str(8 * MiB),
                        "type": "user", "sharable": False, "read_only": False,
                        "other_config": {}})
    with pytest.raises(vdi_import.VdiImportError, match="beyond the end of the VDI"):
        vdi_import.import_image(x, sim.url, session.handle, vdi, images[0], send_zero=False)
    assert not sim.db["task"], "the import task is destroyed after use"


def test_failed_repair_leaves_the_vm_as_it_is(sim, images):
    store = make_store(images)
    prov = Provisioner(store, config(sim))
    assert prov.provision("job1")
    assert not prov.after_repair("job1", {"ok": False, "detail": "no Linux root found"})
    _, vm = our_vm(sim)
    assert vm["power_state"] == "Running" and vm["HVM_boot_params"]["order"] == "dc"
    assert "VBD.eject" not in call_names(sim)
    state, detail = store.states[-1]
    assert state == "failed" and "no Linux root found" in detail and "left as it is" in detail


def test_pv_switch_where_the_pool_has_pv(tmp_path, iso, images):
    with XapiSim(tmp_path / "sim", iso_path=iso, brand="XenServer", product_version="7.1.0",
                 api=(2, 6)) as sim:
        store = make_store(images)
        prov = Provisioner(store, config(sim, pv=True))
        assert prov.provision("job1")
        assert prov.after_repair("job1", {"ok": True})
        _, vm = our_vm(sim)
        assert vm["HVM_boot_policy"] == "" and vm["PV_bootloader"] == "pygrub"
        assert vm["power_state"] == "Running"
        assert sim.boots[-1]["policy"] == ""


def test_pv_switch_refused_on_a_pool_without_pv(sim, images):
    store = make_store(images)
    assert not Provisioner(store, config(sim, pv=True)).provision("job1")
    assert "does not run PV guests" in store.states[-1][1]
    assert not [v for v in sim.db["VM"].values() if not v["is_a_template"]]


def test_https_certificate_checking(tmp_path, iso, images):
    with XapiSim(tmp_path / "sim", iso_path=iso, tls=True) as sim:
        store = make_store(images)
        assert not Provisioner(store, config(sim)).provision("job1")
        assert "cannot be verified" in store.states[-1][1]
        assert Provisioner(store, config(sim, ca_file=str(sim.cert))).provision("job1")
        vm_ref, vm = our_vm(sim)
        disk = sim.db["VBD"][vm["VBDs"][0]]["VDI"]
        assert same_bytes(images[0].path, sim.vdi_path(disk))
        pool = Pool(config(sim, verify_tls=False))
        assert pool.product.api == (2, 16)
        pool.logout()


def test_simulator_envelope_and_power_state_errors(sim):
    proxy = xmlrpc.client.ServerProxy(sim.url)
    bad = proxy.session.login_with_password("root", "nope")
    assert bad == {"Status": "Failure",
                   "ErrorDescription": ["SESSION_AUTHENTICATION_FAILED", "root",
                                        "Authentication failure"]}
    session = proxy.session.login_with_password("root", "secret")["Value"]
    assert proxy.VM.get_all("OpaqueRef:nope")["ErrorDescription"][0] == "SESSION_INVALID"
    (template,) = proxy.VM.get_by_name_label(session, "Other install media")["Value"]
    vm = proxy.VM.clone(session, template, "t")["Value"]
    proxy.VM.provision(session, vm)
    assert proxy.VM.get_memory_static_max(session, vm) == {"Status": "Success",
                                                           "Value": str(256 * MiB)}
    assert proxy.VM.start(session, vm, False, False)["Status"] == "Success"
    answer = proxy.VM.set_VCPUs_at_startup(session, vm, "2")
    assert answer["ErrorDescription"] == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert proxy.VM.set_power_state(session, vm, "Halted")["ErrorDescription"] == [
        "MESSAGE_METHOD_UNKNOWN", "VM.set_power_state"]
    assert proxy.VM.get_record(session, "OpaqueRef:x")["ErrorDescription"] == [
        "HANDLE_INVALID", "VM", "OpaqueRef:x"]


def test_provision_command_says_what_is_missing(tmp_path):
    root = Path(__file__).resolve().parents[2]
    base = [sys.executable, "-m", "server.cli", "provision", "job1", "--data-dir",
            str(tmp_path / "data"), "--xapi-url", "https://pool"]
    proc = subprocess.run(base, capture_output=True, text=True, cwd=root, timeout=60)
    assert proc.returncode == 2 and "--xapi-password-file" in proc.stderr
    password = tmp_path / "pw"
    password.write_text("")
    proc = subprocess.run(base + ["--xapi-password-file", str(password), "--iso", "x.iso"],
                          capture_output=True, text=True, cwd=root, timeout=60)
    assert proc.returncode == 2 and "is empty" in proc.stderr
    password.write_text("secret\n")
    proc = subprocess.run(base + ["--xapi-password-file", str(password), "--iso", "x.iso"],
                          capture_output=True, text=True, cwd=root, timeout=60)
    assert proc.returncode == 1 and "There is no xenp2v server data in" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_simulator_import_handler_refuses_what_xapi_refuses(sim):
    session = XenAPI.Session(sim.url)
    session.xenapi.login_with_password("root", "secret", "2.0", "test")
    vdi = session.xenapi.VDI.create({"name_label": "d", "SR": sim.sr, "virtual_size": str(MiB),
                                     "type": "user", "sharable": False, "read_only": False,
                                     "other_config": {}})
    port = int(sim.url.rsplit(":", 1)[1])

    def put(query: str, body, headers=None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("PUT", f"/import_raw_vdi?{query}", body=body, headers=headers or {})
        status = conn.getresponse().status
        conn.close()
        return status

    assert put(f"session_id=OpaqueRef:bad&vdi={vdi}&format=raw", b"x") == 403
    # HTTP chunking is not XAPI's "chunked": the handler refuses it.
    assert put(f"session_id={session.handle}&vdi={vdi}&format=raw&chunked",
               iter([b"abc"]), {"Transfer-Encoding": "chunked"}) == 403
    # Plain raw body, no framing: written from offset 0; the 200 comes first, the task tells the end.
    task = session.xenapi.task.create("import", "")
    assert put(f"session_id={session.handle}&vdi={vdi}&format=raw&task_id={task}",
               b"\x07" * 4096) == 200
    vdi_import.wait_task(session.xenapi, task, timeout=30)
    assert sim.vdi_path(vdi).read_bytes()[:4097] == b"\x07" * 4096 + b"\0"
