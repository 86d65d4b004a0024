"""The automatic path against each pool version the simulator knows: each rule, each refusal's sentence.

XenServer 6.5 and 7.1 (PV, no UEFI), XCP-ng 8.2 (UEFI, no Secure Boot certificates by default),
XCP-ng 8.3 (Secure Boot ready, QCOW2 VDIs) and XenServer 8 (Secure Boot ready, VHD only).
"""

from __future__ import annotations

import pytest

from handmade import HandImage, HandStore, job_for, make_image, same_bytes
from server.xenserver.provision import Provisioner
from test_xenserver import config, our_vm
from xapisim import XapiSim
from xapisim.sim import VERSIONS
from xenp2v.protocol import ChunkKind, image_map, job_inventory, vm_firmware, vm_secure_boot

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
ALL = sorted(VERSIONS)
PV_POOLS = {"xenserver-6.5", "xenserver-7.1"}
UEFI_POOLS = set(ALL) - PV_POOLS
SECURE_BOOT_POOLS = {"xcp-ng-8.3", "xenserver-8"}
QCOW2_POOLS = {"xcp-ng-8.3"}


@pytest.fixture
def iso(tmp_path):
    path = tmp_path / "xenp2v.iso"
    path.write_bytes(b"\x01" * 4096)
    return path


@pytest.fixture
def images(tmp_path):
    return [make_image(tmp_path, "sda", 20 * MiB + 512 * 1024, 256 * 1024, seed=3),
            make_image(tmp_path, "sdb", 12 * MiB, 4 * MiB, seed=4)]


def store_for(images, secure_boot: bool = False, **job) -> HandStore:
    store = HandStore()
    body = job_for(images, **job)
    body["inventory"]["machine"]["secure_boot"] = secure_boot
    store.add(body, images)
    return store


def made(sim: XapiSim) -> list[dict]:
    return [v for v in sim.db["VM"].values() if not v["is_a_template"]]


@pytest.mark.parametrize("version", ALL)
def test_product_read_through_xapi(tmp_path, iso, images, version):
    with XapiSim(tmp_path / "sim", iso_path=iso, version=version) as sim:
        store = store_for(images)
        assert Provisioner(store, config(sim)).provision("job1"), store.states[-1]
        product = store.records["job1"]["xenserver"]["product"]
        want = VERSIONS[version]
        assert product == {"brand": want.brand, "version": want.product_version,
                           "platform": want.platform_version, "api": f"{want.api[0]}.{want.api[1]}"}


@pytest.mark.parametrize("version", ALL)
def test_pv_only_up_to_7(tmp_path, iso, images, version):
    with XapiSim(tmp_path / "sim", iso_path=iso, version=version) as sim:
        store = store_for(images)
        prov = Provisioner(store, config(sim, pv=True))
        if version in PV_POOLS:
            assert prov.provision("job1") and prov.after_repair("job1", {"ok": True})
            (vm,) = made(sim)
            assert vm["PV_bootloader"] == "pygrub" and vm["HVM_boot_policy"] == ""
            return
        assert not prov.provision("job1")
        state, detail = store.states[-1]
        want = VERSIONS[version]
        assert state == "failed"
        assert (f"{want.brand} {want.product_version} does not run PV guests (PV ended with 7.x): "
                "provision without --pv") in detail
        assert not made(sim) and "VM.clone" not in [name for name, _ in sim.calls]


@pytest.mark.parametrize("version", ALL)
def test_firmware_and_secure_boot_follow_source_and_pool(tmp_path, iso, images, version):
    with XapiSim(tmp_path / "sim", iso_path=iso, version=version) as sim:
        store = store_for(images, firmware="uefi", secure_boot=True)
        assert Provisioner(store, config(sim)).provision("job1"), store.states[-1]
        (vm,) = made(sim)
        rec = store.records["job1"]["xenserver"]
        notes = " ".join(rec["adjustments"])
        # What the repair is told: the VM's firmware, read from the job as the agent gets it.
        inventory = job_inventory(store.get_job("job1"))
        if version in PV_POOLS:
            assert "firmware" not in vm["HVM_boot_params"] and sim.boots[0]["firmware"] == "bios"
            assert "has no UEFI guests" in notes and "BIOS boot loader" in notes
            assert vm_firmware(inventory) == "bios" and not vm_secure_boot(inventory)
            return
        assert vm["HVM_boot_params"]["firmware"] == "uefi" and sim.boots[0]["firmware"] == "uefi"
        assert vm_firmware(inventory) == "uefi"
        if version in SECURE_BOOT_POOLS:
            assert vm["platform"]["secureboot"] == "true" and vm_secure_boot(inventory)
            assert "Secure Boot" not in notes
        else:
            assert vm["platform"]["secureboot"] == "false" and not vm_secure_boot(inventory)
            assert ("has no Secure Boot certificates ready for guests: the VM boots UEFI without "
                    "Secure Boot") in notes


@pytest.mark.parametrize("version", sorted(UEFI_POOLS))
def test_uefi_source_without_secure_boot_gets_none(tmp_path, iso, images, version):
    with XapiSim(tmp_path / "sim", iso_path=iso, version=version) as sim:
        store = store_for(images, firmware="uefi", secure_boot=False)
        assert Provisioner(store, config(sim)).provision("job1")
        (vm,) = made(sim)
        assert vm["platform"]["secureboot"] == "false"
        assert not store.records["job1"]["xenserver"]["adjustments"]


def big_image(directory, size: int) -> HandImage:
    """A sparse image of `size` bytes: data in its first and last 64 MiB chunk, the rest free."""
    chunk = 64 * MiB
    count = -(-size // chunk)
    path = directory / "big.img"
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"\x5a" * MiB)
        f.seek(size - MiB)
        f.write(b"\xa7" * MiB)
    return HandImage("job1", "sdb", path, size, chunk, image_map(count, [0, count - 1], []))


@pytest.mark.parametrize("version", ALL)
def test_disk_past_the_vhd_limit(tmp_path, iso, images, version):
    big = big_image(tmp_path, 3 * TiB)
    with XapiSim(tmp_path / "sim", iso_path=iso, version=version, sr_size=8 * TiB) as sim:
        store = store_for([images[0], big])
        prov = Provisioner(store, config(sim))
        if version in QCOW2_POOLS:
            assert prov.provision("job1"), store.states[-1]
            (vm,) = made(sim)
            vdis = {sim.db["VBD"][v]["userdevice"]: sim.db["VBD"][v]["VDI"] for v in vm["VBDs"]}
            assert sim.db["VDI"][vdis["0"]]["sm_config"] == {}
            assert sim.db["VDI"][vdis["1"]]["sm_config"] == {"image-format": "qcow2"}
            assert sim.db["VDI"][vdis["1"]]["virtual_size"] == 3 * TiB
            with open(sim.vdi_path(vdis["1"]), "rb") as vdi:
                assert vdi.read(MiB) == b"\x5a" * MiB
                vdi.seek(3 * TiB - MiB)
                assert vdi.read(MiB) == b"\xa7" * MiB
            notes = " ".join(store.records["job1"]["xenserver"]["adjustments"])
            assert "Disk sdb is 3.00 TiB (3298534883328 bytes), past the 2040 GiB" in notes
            return
        assert not prov.provision("job1")
        state, detail = store.states[-1]
        want = VERSIONS[version]
        assert state == "failed"
        assert ("On SR 'Local storage' (ext) disks are VHD files, which stop at 2040 GiB "
                f"(2190433320960 bytes), and {want.brand} {want.product_version} offers no QCOW2 "
                "VDIs there; disk sdb is 3.00 TiB (3298534883328 bytes).") in detail
        assert "--sr" in detail and detail.endswith("Nothing was created.")
        assert not made(sim) and "VDI.create" not in [name for name, _ in sim.calls]


@pytest.mark.parametrize("sr_type", ["zfs", "xfs", "largeblock", "linstor"])
def test_xcp_ng_vhd_srs_have_the_vhd_limit_too(tmp_path, iso, images, sr_type):
    """XCP-ng's own storage managers keep VHDs too (ZFS and XFS: VHD files, as FileSR; largeblock:
    VHD on LVM; LINSTOR: VHD on DRBD): a disk past 2040 GiB is refused before anything is made,
    not by the SR once the VM exists."""
    big = big_image(tmp_path, 3 * TiB)
    with XapiSim(tmp_path / "sim", iso_path=iso, version="xcp-ng-8.2", sr_type=sr_type, sr_size=8 * TiB) as sim:
        store = store_for([images[0], big])
        assert not Provisioner(store, config(sim)).provision("job1")
        detail = store.states[-1][1]
        assert (f"On SR 'Local storage' ({sr_type}) disks are VHD files, which stop at 2040 GiB") in detail
        assert detail.endswith("Nothing was created.") and "VM.clone" not in [name for name, _ in sim.calls]


@pytest.mark.parametrize("version", ALL)
def test_uefi_vm_nics_past_two(tmp_path, iso, images, version):
    nics = tuple((f"eth{i}", f"52:54:00:00:00:0{i}") for i in range(4))
    with XapiSim(tmp_path / "sim", iso_path=iso, version=version) as sim:
        store = store_for(images, firmware="uefi", nics=nics)
        assert Provisioner(store, config(sim)).provision("job1")
        (vm,) = made(sim)
        assert [sim.db["VIF"][v]["MAC"] for v in vm["VIFs"]] == [m for _, m in nics]
        notes = " ".join(store.records["job1"]["xenserver"]["adjustments"])
        if version in PV_POOLS:   # BIOS VM there: every NIC is emulated
            assert "emulated NICs" not in notes
        else:
            assert ("A UEFI VM shows at most 2 emulated NICs before PV drivers run: the VM gets "
                    "all 4 NICs, but eth2, eth3 (VIF 2 on) appear only once the guest's PV "
                    "network driver loads") in notes


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize("sr_type", ["ext", "lvm", "rawhba"])
def test_zeros_only_where_new_vdis_hold_old_bytes(tmp_path, iso, images, version, sr_type):
    """Today's rule on every version: file and VHD-on-LVM SRs give zeroed VDIs (data only is
    sent); a raw LUN's new VDI holds old bytes, so every byte without data goes as zeros."""
    with XapiSim(tmp_path / "sim", iso_path=iso, version=version, sr_type=sr_type) as sim:
        store = store_for(images)
        assert Provisioner(store, config(sim)).provision("job1")
        (vm,) = made(sim)
        disks = sorted((sim.db["VBD"][v]["userdevice"], sim.db["VBD"][v]["VDI"])
                       for v in vm["VBDs"] if sim.db["VBD"][v]["type"] == "Disk")
        for image, (_, vdi) in zip(images, disks):
            assert same_bytes(image.path, sim.vdi_path(vdi)), (version, sr_type, image.disk)
        imports = store.records["job1"]["xenserver"]["imports"]
        no_data = sum(min(e.count * images[0].chunk_size,
                          images[0].size - e.start * images[0].chunk_size)
                      for e in images[0].extents if e.kind is not ChunkKind.DATA)
        assert imports[0]["zero_bytes_sent"] == (no_data if sr_type == "rawhba" else 0)


@pytest.mark.parametrize("sr_type", ["xfs", "zfs", "largeblock", "linstor"])
def test_no_zeros_to_xcp_ng_vhd_srs(tmp_path, iso, images, sr_type):
    """XCP-ng's own storage managers keep VHDs, whose new VDIs read as zeros: data only is sent.
    Zeros written there would allocate every block of a thin VHD (on ZFS, XFS...) for nothing."""
    with XapiSim(tmp_path / "sim", iso_path=iso, version="xcp-ng-8.3", sr_type=sr_type) as sim:
        store = store_for(images)
        assert Provisioner(store, config(sim)).provision("job1"), store.states[-1]
        (vm,) = made(sim)
        disks = sorted((sim.db["VBD"][v]["userdevice"], sim.db["VBD"][v]["VDI"])
                       for v in vm["VBDs"] if sim.db["VBD"][v]["type"] == "Disk")
        for image, (_, vdi) in zip(images, disks):
            assert same_bytes(image.path, sim.vdi_path(vdi)), (sr_type, image.disk)
        assert [i["zero_bytes_sent"] for i in store.records["job1"]["xenserver"]["imports"]] == [0, 0]


@pytest.mark.parametrize("version", ALL)
def test_serve_with_pv_on_a_pool_without_pv_stops_at_start(tmp_path, iso, version):
    """serve --pv on a pool that dropped PV: said when serve starts, not once per job after each
    capture's transfer."""
    import argparse

    from server.xenserver.cli import add_xapi_arguments, automatic_path
    password = tmp_path / "password"
    password.write_text("secret\n")
    parser = argparse.ArgumentParser()
    add_xapi_arguments(parser)
    with XapiSim(tmp_path / "sim", iso_path=iso, version=version) as sim:
        args = parser.parse_args(["--xapi-url", sim.url, "--xapi-password-file", str(password),
                                  "--iso", "xenp2v.iso", "--pv"])
        want = VERSIONS[version]
        if version in PV_POOLS:
            assert set(automatic_path(args, HandStore())) == {"on_job_sealed", "on_repair_report"}
            return
        with pytest.raises(ValueError) as err:
            automatic_path(args, HandStore())
        assert str(err.value).startswith(f"XenServer automation: {want.brand} {want.product_version} does not "
                                         "run PV guests (PV ended with 7.x): provision without --pv")
