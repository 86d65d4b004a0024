"""LVM layouts this kernel cannot build (no device-mapper), written as LVM writes them.

`lvcreate` makes linear and striped LVs without activation, but snapshots, thin pools, caches,
writecaches, raid and mirrors all need device-mapper to be created. Their metadata is plain text,
though: this writes a volume group with `vgcreate`, then replaces its logical volumes with the
layout given, through `vgcfgrestore` (which only writes metadata). The LVs' bytes are wherever the
layout puts their extents, so a test can put a filesystem there through a loop device.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from pathlib import Path

from support import run

EXTENT = 4 * 1024 * 1024
NO_UDEV = "devices { obtain_device_list_from_udev=0 use_devicesfile=0 } activation { udev_sync=0 }"


def lvm(*args: str, devices: list[str]) -> str:
    return run("lvm", *args, "--devices", ",".join(devices), "--config", NO_UDEV).stdout


def _value(v) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def linear(pv: int, first: int, count: int, start: int = 0) -> dict:
    """A linear segment of `count` extents at extent `first` of PV number `pv` (pv0, pv1, …)."""
    return {"start_extent": start, "extent_count": count, "type": "striped", "stripe_count": 1,
            "stripes": [f"pv{pv}", first]}


def lv(name: str, *segments: dict, visible: bool = True, status=("READ", "WRITE")) -> str:
    flags = [*status, "VISIBLE"] if visible else list(status)
    out = [f"{name} {{", f'id = "{_lvm_id()}"', f"status = {_value(flags)}", "flags = []",
           f"segment_count = {len(segments)}"]
    for i, seg in enumerate(segments, 1):
        out.append(f"segment{i} {{")
        out += [f"{k} = {_value(v)}" for k, v in seg.items()]
        out.append("}")
    out.append("}")
    return "\n".join(out)


def _lvm_id() -> str:
    raw = uuid.uuid4().hex
    return "-".join([raw[:6], raw[6:10], raw[10:14], raw[14:18], raw[18:22], raw[22:26], raw[26:32]])


def make_vg(pvs: list[str], *lvs: str) -> str:
    """A volume group over `pvs` (pv0, pv1, … in this order) holding the LVs given (lv() texts);
    returns its name. Extents are 4 MiB; pv_start() says where extent 0 of a PV lies."""
    vg = "lay" + uuid.uuid4().hex[:8]
    lvm("pvcreate", "-q", *pvs, devices=pvs)
    lvm("vgcreate", "-q", "-s", "4m", vg, *pvs, devices=pvs)
    with tempfile.TemporaryDirectory() as tmp:
        backup = Path(tmp) / "vg"   # lvm writes it anew (a rename): go by path, not by handle
        lvm("vgcfgbackup", "-q", "-f", str(backup), vg, devices=pvs)
        body = "logical_volumes {\n" + "\n".join(lvs) + "\n}\n"
        # the empty VG has no logical_volumes section: it goes after physical_volumes
        text, n = re.subn(r"(\n\tphysical_volumes \{.*?\n\t\}\n)", lambda m: m.group(1) + body,
                          backup.read_text(), count=1, flags=re.S)
        assert n == 1, "no physical_volumes section in LVM's metadata backup"
        backup.write_text(text)
        lvm("vgcfgrestore", "-q", "--force", "-f", str(backup), vg, devices=pvs)
    return vg


def pv_start(pv: str) -> int:
    """Bytes from the start of `pv` to its first extent."""
    return int(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", pv,
                   devices=[pv]).strip())
