"""Exports read back: qemu-img compare for VHD, qcow2, VMDK; our XVA reader rebuilds the raw disk."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
import xmlrpc.client
from pathlib import Path

import pytest

from handmade import HandStore, job_for, make_image, same_bytes
from server import export, xva

MiB = 1024 * 1024


def read_xva(path: Path, out_dir: Path) -> tuple[dict, dict[str, Path]]:
    """Parse an XVA as XAPI's importer does: ova.xml first, then per VDI its blocks in order,
    each followed by its checksum, gaps read as zeros. Returns the header and a raw file per VDI."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert members[0].name == "ova.xml", "ova.xml must be the first member"
        (head,), _ = xmlrpc.client.loads(
            "<methodResponse><params><param>"
            + tar.extractfile(members[0]).read().decode()
            + "</param></params></methodResponse>")
        sizes = {o["id"]: int(o["snapshot"]["virtual_size"])
                 for o in head["objects"] if o["class"] == "VDI"}
        disks: dict[str, Path] = {}
        last: dict[str, int] = {}
        previous_block = None
        order = []
        for member in members[1:]:
            ref, name = member.name.split("/")
            body = tar.extractfile(member).read()
            if name.endswith(".checksum"):
                assert previous_block is not None and name == previous_block[0] + ".checksum"
                assert body.decode() == hashlib.sha1(previous_block[1]).hexdigest()
                previous_block = None
                continue
            assert previous_block is None, "every block is followed by its checksum file"
            assert len(name) == 8 and name.isdigit()
            index = int(name)
            assert index > last.get(ref, -1), "blocks come in increasing order"
            if ref not in disks:
                order.append(ref)
                disks[ref] = out_dir / f"{ref.replace(':', '_')}.raw"
                with open(disks[ref], "wb") as f:
                    f.truncate(sizes[ref])
                assert index == 0, "the first block is always there"
            with open(disks[ref], "r+b") as f:
                f.seek(index * xva.BLOCK)
                f.write(body)
            last[ref] = index
            previous_block = (name, body)
        assert order == sorted(order), "VDIs come in the lexicographic order of their refs"
        for ref, size in sizes.items():
            assert last[ref] == (size - 1) // xva.BLOCK, "the last block is always there"
    return head, disks


@pytest.fixture
def sealed(tmp_path):
    images = [
        make_image(tmp_path, "sda", 24 * MiB + 512 * 1024, 256 * 1024, seed=1),
        make_image(tmp_path, "sdb", 40 * MiB, 4 * MiB, seed=2),
    ]
    store = HandStore()
    store.add(job_for(images, cpus=3, memory=3 << 30, nics=(("eth0", "52:54:00:12:34:56"),
                                                          ("eth1", "52-54-00-AB-CD-EF"))), images)
    return store, images


def test_raw_export_is_the_sealed_image_and_stays_sparse(tmp_path, sealed):
    store, images = sealed
    files = export.export_job(store, "job1", "raw", tmp_path / "out.raw")
    assert [f.name for f in files] == ["out-sda.raw", "out-sdb.raw"]
    for image, f in zip(images, files):
        assert f.stat().st_size == image.size
        assert same_bytes(image.path, f)
        data = sum(e.count for e in image.extents if e.kind == "data") * image.chunk_size
        assert f.stat().st_blocks * 512 <= data + MiB, "zero and free chunks stay holes"


@pytest.mark.parametrize("fmt,qemu_name", [("vhd", "vpc"), ("qcow2", "qcow2"), ("vmdk", "vmdk")])
def test_qemu_img_exports_read_back_equal(tmp_path, sealed, fmt, qemu_name):
    store, images = sealed
    files = export.export_job(store, "job1", fmt, tmp_path / f"out.{fmt}", disk_id="sda")
    assert files == [tmp_path / f"out.{fmt}"]
    info = subprocess.run(["qemu-img", "info", "--output=json", str(files[0])],
                          capture_output=True, text=True, check=True).stdout
    assert f'"format": "{qemu_name}"' in info
    if fmt == "vhd":
        # dynamic, and exactly the disk's size (no CHS rounding)
        assert '"virtual-size": %d' % images[0].size in info
        with open(files[0], "rb") as f:
            f.seek(-512, 2)
            footer = f.read(512)
        assert footer[:8] == b"conectix" and int.from_bytes(footer[60:64], "big") == 3
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", qemu_name,
                              str(images[0].path), str(files[0])], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def test_xva_rebuilds_each_disk_and_carries_the_vm(tmp_path, sealed):
    store, images = sealed
    out = tmp_path / "web01.xva"
    export.export_job(store, "job1", "xva", out)
    head, disks = read_xva(out, tmp_path)
    objects = {o["id"]: o for o in head["objects"]}
    vm = next(o["snapshot"] for o in head["objects"] if o["class"] == "VM")
    assert vm["name_label"] == "web01"
    assert vm["VCPUs_max"] == vm["VCPUs_at_startup"] == "3"
    assert vm["memory_static_max"] == vm["memory_dynamic_min"] == str(3 << 30)
    assert vm["HVM_boot_policy"] == "BIOS order" and vm["HVM_boot_params"]["order"] == "dc"
    assert vm["platform"]["viridian"] == "false"
    assert head["version"]["export_vsn"] == 2 and head["version"]["xapi_major"] == 1
    macs = [objects[r]["snapshot"]["MAC"] for r in vm["VIFs"]]
    assert macs == ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"]
    vbds = [objects[r]["snapshot"] for r in vm["VBDs"]]
    disk_vdis = [v["VDI"] for v in vbds if v["type"] == "Disk"]
    assert [v["type"] for v in vbds] == ["Disk", "Disk", "CD"]
    for image, ref in zip(images, disk_vdis):
        assert int(objects[ref]["snapshot"]["virtual_size"]) == image.size
        assert same_bytes(image.path, disks[ref])


def test_xva_leaves_out_zero_blocks_but_keeps_first_and_last(tmp_path, sealed):
    store, images = sealed
    out = tmp_path / "web01.xva"
    export.export_job(store, "job1", "xva", out, disk_id="sdb")
    with tarfile.open(out) as tar:
        names = [m.name for m in tar.getmembers() if not m.name.endswith(".checksum")][1:]
    image = images[1]
    blocks = image.size // MiB
    written = [int(n.split("/")[1]) for n in names]
    assert written[0] == 0 and written[-1] == blocks - 1
    with open(image.path, "rb") as f:
        nonzero = [i for i in range(blocks) if f.read(MiB).count(0) != MiB]
    assert set(written) == set(nonzero) | {0, blocks - 1}
    assert len(written) < blocks


def test_windows_uefi_vm_gets_viridian_and_uefi(tmp_path):
    images = [make_image(tmp_path, "disk0", 8 * MiB, MiB)]
    store = HandStore()
    store.add(job_for(images, firmware="uefi", os_name="Microsoft Windows Server 2019"), images)
    out = tmp_path / "win.xva"
    export.export_job(store, "job1", "xva", out, keep_macs=False)
    head, _ = read_xva(out, tmp_path)
    vm = next(o["snapshot"] for o in head["objects"] if o["class"] == "VM")
    assert vm["platform"]["viridian"] == "true"
    assert vm["HVM_boot_params"]["firmware"] == "uefi"
    vif = next(o["snapshot"] for o in head["objects"] if o["class"] == "VIF")
    assert vif["MAC"] == "" and vif["MAC_autogenerated"] is True


def test_unsealed_disk_and_unknown_format_are_refused(tmp_path, sealed):
    store, _ = sealed
    store.jobs["job1"]["disks"][1]["state"] = "receiving"
    with pytest.raises(export.ExportError, match="not sealed yet"):
        export.export_job(store, "job1", "qcow2", tmp_path / "x.qcow2")
    with pytest.raises(export.ExportError, match="no disk 'sdz'"):
        export.export_job(store, "job1", "raw", tmp_path / "x.raw", disk_id="sdz")
    with pytest.raises(export.ExportError, match="Unknown format"):
        export.export_job(store, "job1", "ova", tmp_path / "x.ova")
    assert not list(tmp_path.glob("x.*"))


def test_xva_streams_disks_in_the_importers_order(tmp_path):
    # Refs Ref:3 … Ref:23: "Ref:11" sorts before "Ref:3", and XAPI reads VDIs in that order.
    images = [make_image(tmp_path, f"d{i}", 2 * MiB + 4096 * i, 64 * 1024, seed=i)
              for i in range(11)]
    store = HandStore()
    store.add(job_for(images), images)
    out = tmp_path / "many.xva"
    export.export_job(store, "job1", "xva", out)
    head, disks = read_xva(out, tmp_path)
    objects = {o["id"]: o["snapshot"] for o in head["objects"]}
    vm = next(o["snapshot"] for o in head["objects"] if o["class"] == "VM")
    refs = [objects[v]["VDI"] for v in vm["VBDs"] if objects[v]["type"] == "Disk"]
    assert sorted(refs) != refs
    slots = [objects[v]["userdevice"] for v in vm["VBDs"]]
    assert len(set(slots)) == len(slots) == 12 and slots[-1] == "3"
    for image, ref in zip(images, refs):
        assert same_bytes(image.path, disks[ref])
