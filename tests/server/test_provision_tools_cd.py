"""The automatic path puts the pool's tools ISO in a second CD drive the guest sees, on each pool
version the simulator knows, and ejects it with the xenp2v ISO after the repair.

The simulator's tools SR is xapi's: an ISO SR named "<brand> Tools", tagged xenserver_tools_sr in
other_config, is_tools_sr from XenServer 7.0 (dundee); its ISO (xs-tools.iso up to 7.x,
guest-tools.iso after) has sm_config xs-tools=true and, from 7.0, is_tools_iso. A guest without PV
drivers sees CD drives only on the emulated IDE slots 0-3.
"""

from __future__ import annotations

import json

import pytest

from server.xenserver.provision import Provisioner
from test_pool_versions import ALL, made, store_for
from test_xenserver import config
from handmade import make_image
from xapisim import XapiSim
from xapisim.sim import VERSIONS

MiB = 1024 * 1024


@pytest.fixture
def isos(tmp_path):
    iso, tools = tmp_path / "xenp2v.iso", tmp_path / "tools.iso"
    iso.write_bytes(b"\x01" * 4096)
    tools.write_bytes(b"\x02" * 4096)
    return iso, tools


def disks(tmp_path, count: int):
    return [make_image(tmp_path, f"sd{chr(97 + i)}", 4 * MiB, MiB, seed=i) for i in range(count)]


def cd_drives(sim: XapiSim, vm: dict) -> dict[str, str]:
    """userdevice -> the name of the ISO in that CD drive ("" when empty)."""
    vbds = [sim.db["VBD"][v] for v in vm["VBDs"]]
    return {v["userdevice"]: "" if v["empty"] else sim.db["VDI"][v["VDI"]]["name_label"]
            for v in vbds if v["type"] == "CD"}


@pytest.mark.parametrize("version", ALL)
def test_tools_iso_in_a_second_drive_the_guest_sees(tmp_path, isos, version):
    iso, tools = isos
    images = disks(tmp_path, 2)
    with XapiSim(tmp_path / "sim", iso_path=iso, version=version, tools_iso=tools) as sim:
        tools_vdi = sim.db["VDI"][sim.db["SR"][sim.tools_sr]["VDIs"][0]]
        # XenServer 6.5 has neither field: the tags alone say which SR and ISO are the tools'.
        assert ("is_tools_iso" in tools_vdi) == (version != "xenserver-6.5")
        store = store_for(images)
        prov = Provisioner(store, config(sim))
        assert prov.provision("job1"), store.states[-1]
        (vm,) = made(sim)
        name = VERSIONS[version].tools_iso
        assert name == ("xs-tools.iso" if version in ("xenserver-6.5", "xenserver-7.1") else "guest-tools.iso")
        # Disks on 0 and 1; the two CD drives on the emulated slots left, the xenp2v ISO first.
        assert cd_drives(sim, vm) == {"2": "xenp2v.iso", "3": name}
        rec = store.records["job1"]["xenserver"]
        assert rec["tools_cd"]["iso"] == name and rec["tools_cd"]["userdevice"] == "3"
        assert any(o["what"] == f"the CD drive with the pool's tools ISO {name}" for o in rec["created"])
        # The VM boots the xenp2v ISO (the first CD drive: a BIOS may try no other), and its guest
        # sees both discs.
        assert sim.boots[0]["order"] == "dc"
        first = json.loads((tmp_path / "sim/boots.jsonl").read_text().splitlines()[0])
        assert first["cd"] == str(iso) and first["cds"] == [str(iso), str(tools)]

        assert prov.after_repair("job1", {"ok": True})
        assert cd_drives(sim, vm) == {"2": "", "3": ""}
        steps = [s["step"] for s in store.records["job1"]["xenserver"]["steps"]]
        assert "Ejected the tools ISO" in steps


def test_the_marked_tools_iso_wins_over_a_namesake_in_the_iso_library(tmp_path, isos):
    iso, tools = isos
    decoy = tmp_path / "guest-tools.iso"
    decoy.write_bytes(b"\x03" * 4096)
    with XapiSim(tmp_path / "sim", iso_path=iso, version="xcp-ng-8.3", tools_iso=tools) as sim:
        sim.add_iso(decoy)
        store = store_for(disks(tmp_path, 1))
        assert Provisioner(store, config(sim)).provision("job1"), store.states[-1]
        (vm,) = made(sim)
        (tools_cd,) = [sim.db["VBD"][v] for v in vm["VBDs"] if sim.db["VBD"][v]["userdevice"] == "3"]
        assert sim.db["VDI"][tools_cd["VDI"]]["SR"] == sim.tools_sr


def test_a_renamed_tools_iso_without_marks_is_found_by_its_name(tmp_path, isos):
    """An ISO library holding the vendor's guest-tools.iso, on a pool whose tools SR is empty."""
    iso, _ = isos
    copy = tmp_path / "guest-tools.iso"
    copy.write_bytes(b"\x03" * 4096)
    with XapiSim(tmp_path / "sim", iso_path=iso, version="xenserver-8") as sim:
        sim.add_iso(copy)
        store = store_for(disks(tmp_path, 1))
        assert Provisioner(store, config(sim)).provision("job1"), store.states[-1]
        (vm,) = made(sim)
        assert cd_drives(sim, vm) == {"2": "xenp2v.iso", "3": "guest-tools.iso"}


def test_no_slot_or_no_iso_is_said_and_the_vm_still_made(tmp_path, isos):
    iso, tools = isos
    with XapiSim(tmp_path / "sim", iso_path=iso, version="xcp-ng-8.2", tools_iso=tools) as sim:
        store = store_for(disks(tmp_path, 3))
        assert Provisioner(store, config(sim)).provision("job1"), store.states[-1]
        (vm,) = made(sim)
        assert cd_drives(sim, vm) == {"3": "xenp2v.iso"}
        steps = [s["step"] for s in store.records["job1"]["xenserver"]["steps"]]
        assert ("The tools ISO guest-tools.iso is not attached: the VM's 3 disks and its DVD drive take "
                "the four emulated IDE slots a guest without PV drivers sees; insert it in the DVD drive "
                "once the VM runs to install the guest agent by hand.") in steps
    with XapiSim(tmp_path / "sim2", iso_path=iso, version="xcp-ng-8.2") as sim:
        store = store_for(disks(tmp_path / "sim2", 1))
        assert Provisioner(store, config(sim)).provision("job1"), store.states[-1]
        steps = [s["step"] for s in store.records["job1"]["xenserver"]["steps"]]
        assert ("No tools ISO to attach (no tools SR holds one): the repair installs no guest agent; "
                "install it by hand once the VM runs.") in steps


def test_a_cd_drive_past_the_emulated_slots_is_not_seen_by_an_hvm_guest(tmp_path, isos):
    """The simulator's model of xenopsd: no IDE device past userdevice 3 for an HVM guest."""
    iso, tools = isos
    with XapiSim(tmp_path / "sim", iso_path=iso, version="xcp-ng-8.2", tools_iso=tools) as sim:
        store = store_for(disks(tmp_path, 1))
        assert Provisioner(store, config(sim)).provision("job1"), store.states[-1]
        (ref, vm), = [(r, v) for r, v in sim.db["VM"].items() if not v["is_a_template"]]
        boots = (tmp_path / "sim/boots.jsonl")
        assert json.loads(boots.read_text().splitlines()[-1])["cds"] == [str(iso), str(tools)]
        sim._halt(ref)
        tools_vbd = next(v for v in vm["VBDs"] if sim.db["VBD"][v]["userdevice"] == "3")
        sim.db["VBD"][tools_vbd]["userdevice"] = "4"
        sim._VM_start(ref)
        assert json.loads(boots.read_text().splitlines()[-1])["cds"] == [str(iso)]


@pytest.mark.parametrize("where", ["tools SR", "ISO library"])
def test_a_tools_iso_on_an_unplugged_sr_is_left_out_and_the_vm_still_starts(tmp_path, isos, where):
    """XAPI starts no VM with a disc on an SR its host has not plugged (VM_REQUIRES_SR): the tools
    ISO, which the VM can do without, is then not inserted, and the step says how to plug it."""
    iso, tools = isos
    copy = tmp_path / "guest-tools.iso"
    copy.write_bytes(b"\x03" * 4096)
    with XapiSim(tmp_path / "sim", iso_path=iso, version="xcp-ng-8.3",
                 tools_iso=tools if where == "tools SR" else None) as sim:
        library = sim.db["SR"][sim.iso_sr]
        if where == "ISO library":
            # The tools ISO copied into a second ISO library, one not plugged on the host.
            other = sim._add("SR", {**{k: v for k, v in library.items() if k not in ("uuid", "PBDs")},
                                    "name_label": "NFS ISOs", "VDIs": [], "PBDs": []})
            sim.add_iso(copy, sr=other)
            sim.unplug(other)
            sr_name = "NFS ISOs"
        else:
            sim.unplug(sim.tools_sr)
            sr_name = "XCP-ng Tools"
        store = store_for(disks(tmp_path, 1))
        prov = Provisioner(store, config(sim))
        assert prov.provision("job1"), store.states[-1]
        (vm,) = made(sim)
        assert cd_drives(sim, vm) == {"3": "xenp2v.iso"} and vm["power_state"] == "Running"
        steps = [s["step"] for s in store.records["job1"]["xenserver"]["steps"]]
        assert any(s.startswith(f"The tools ISO guest-tools.iso is not attached: its SR {sr_name!r} is not "
                                "plugged on host sim-host") for s in steps), steps
        assert "tools_cd" not in store.records["job1"]["xenserver"]


@pytest.mark.parametrize("version", ALL)
def test_the_simulator_run_as_a_process_is_the_version_asked_for(tmp_path, isos, version):
    """python -m xapisim --version V, as the e2e harness and an admin trying the automatic path run
    it: the pool is that release (product, API, its tools ISO's name), not a plain 8.2."""
    import subprocess
    import sys
    from pathlib import Path

    from server.xenserver.pool import XapiConfig
    iso, tools = isos
    tests = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "xapisim", "--root", str(tmp_path / "sim"), "--version", version,
                             "--iso", str(iso), "--tools-iso", str(tools)],
                            cwd=tests, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split("URL: ", 1)[1].strip()
        store = store_for(disks(tmp_path, 1))
        prov = Provisioner(store, XapiConfig(url=url, user="root", password="secret", iso="xenp2v.iso"))
        assert prov.provision("job1"), store.states[-1]
        rec = store.records["job1"]["xenserver"]
        want = VERSIONS[version]
        assert rec["product"]["version"] == want.product_version and rec["product"]["brand"] == want.brand
        assert rec["tools_cd"]["iso"] == want.tools_iso
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_an_old_tools_iso_gone_from_the_tools_sr_is_not_taken(tmp_path, isos):
    """After an update the tools SR's scan keeps the old ISO's record, renamed "Old version of ...",
    missing, with xs-tools taken out of its sm_config; its is_tools_iso, which only xapi's own scan
    sets, may still say true. The ISO that is there is the one inserted."""
    iso, tools = isos
    old = tmp_path / "guest-tools-8.2.iso"
    old.write_bytes(b"\x04" * 4096)
    with XapiSim(tmp_path / "sim", iso_path=iso, version="xcp-ng-8.3", tools_iso=tools) as sim:
        gone = sim.add_iso(old, sr=sim.tools_sr, name="Old version of guest-tools.iso")
        sim.db["VDI"][gone].update(missing=True, sm_config={"xs-tools-version": "8.2.0"})
        sim.db["SR"][sim.tools_sr]["VDIs"].sort(key=lambda v: v != gone)   # listed first
        store = store_for(disks(tmp_path, 1))
        assert Provisioner(store, config(sim)).provision("job1"), store.states[-1]
        (vm,) = made(sim)
        assert cd_drives(sim, vm) == {"2": "xenp2v.iso", "3": "guest-tools.iso"}


def test_the_xenp2v_iso_on_an_unplugged_sr_is_refused_before_anything_is_made(tmp_path, isos):
    iso, tools = isos
    with XapiSim(tmp_path / "sim", iso_path=iso, version="xenserver-8", tools_iso=tools) as sim:
        sim.unplug(sim.iso_sr)
        store = store_for(disks(tmp_path, 1))
        assert not Provisioner(store, config(sim)).provision("job1")
        assert store.states[-1][1] == (
            "Provisioning stopped: The ISO 'xenp2v.iso' is on SR 'ISO library', which is not plugged on host "
            "sim-host, and XAPI starts no VM with a disc there: plug it (xe pbd-plug, or Repair in XenCenter / "
            "Xen Orchestra), then provision again.")
        assert not made(sim) and "VM.clone" not in [name for name, _ in sim.calls]
