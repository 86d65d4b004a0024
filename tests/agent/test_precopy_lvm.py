"""A pre-copy pass reads the active LVs of a disk from LVM snapshots: a consistent view while the
source runs. This kernel has no device-mapper, so `lvm lvcreate -s` and `lvm lvremove` are stood
in for (the snapshot is a file of the bytes the LV held when it was taken, at /dev/VG/SNAP as
LVM puts it, and LVM's metadata write is a scribble in the PV's metadata area); every report the
sender reads comes from the real `lvm` on a real volume group."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from agent.transfer import restore
from agent.warm import precopy
from lvmlayouts import NO_UDEV, lvm
from support import rescan, run
from test_capture_restore import settings_for

MiB = 1 << 20
LV = 32 * MiB


def stand_in(folder: Path, pv: str, vg: str, snapshot: Path, log: Path) -> None:
    """`lvm` for the sender: snapshots made and removed as described above, the rest real."""
    real = shutil.which("lvm")
    script = folder / "lvm"
    script.write_text(f"""#!/bin/bash
echo "$*" >> {log}
case "$1" in
lvcreate)
    while [ $# -gt 0 ]; do [ "$1" = -n ] && name=$2; shift; done
    ln -s {snapshot} /dev/{vg}/$name
    printf 'METADATA WITH THE SNAPSHOT' | dd of={pv} bs=1 seek=8192 conv=notrunc status=none ;;
lvremove)
    rm -f /dev/{vg}/*_p2vsnap ;;
*)
    exec {real} "$@" --devices {pv} --config '{NO_UDEV}' ;;
esac
""")
    script.chmod(0o755)


def test_a_pass_reads_each_active_lv_from_a_snapshot_and_removes_it(loopdev, p2v_server,
                                                                     tmp_path):
    dev = loopdev(160 * MiB, "lvmsrc")
    run("sfdisk", "-q", dev, input="label: gpt\n,,V\n")
    (pv,) = rescan(dev)
    vg = "p2vw" + uuid.uuid4().hex[:8]
    lvm("pvcreate", "-q", pv, devices=[pv])
    lvm("vgcreate", "-q", vg, pv, devices=[pv])
    lvm("lvcreate", "--driverloaded", "n", "-q", "-an", "-Zn", "-L", f"{LV // MiB}M", "-n",
        "root", vg, devices=[pv])
    pe_start = int(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", pv,
                       devices=[pv]))
    (seg,) = json.loads(lvm("lvs", "--segments", "--reportformat", "json", "--units", "b",
                            "--nosuffix", "-o", "seg_pe_ranges,vg_extent_size", vg,
                            devices=[pv]))["report"][0]["seg"]
    part_start = int(Path(f"/sys/class/block/{Path(pv).name}/start").read_text()) * 512
    lv_at = part_start + pe_start + int(seg["seg_pe_ranges"].split(":")[1].split("-")[0]) * \
        int(seg["vg_extent_size"])
    with open(dev, "r+b") as f:   # what the LV holds now, written after the snapshot was taken
        f.seek(lv_at)
        f.write(b"LIVE" * (LV // 4))
        f.seek(part_start)
        metadata = f.read(pe_start)
    snapshot = tmp_path / "snapshot.img"
    snapshot.write_bytes(b"SNAP" * (LV // 4))
    tools, log = tmp_path / "tools", tmp_path / "lvm.log"
    tools.mkdir()
    stand_in(tools, pv, vg, snapshot, log)
    os.makedirs(f"/dev/{vg}")
    os.symlink(pv, f"/dev/{vg}/root")   # an active LV has its node
    try:
        env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
        proc = subprocess.run(
            [sys.executable, "-I", "-S", precopy.__file__, "--server", p2v_server.url, "--token",
             p2v_server.token, "--fingerprint", p2v_server.fingerprint, "--disks", dev],
            capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"{vg}/root: read from the snapshot root_p2vsnap" in proc.stdout
        calls = log.read_text()
        assert f"lvcreate -q -s -n root_p2vsnap -L {64 * MiB}b {vg}/root" in calls
        assert f"lvremove -f {vg}/root_p2vsnap" in calls
        assert sorted(os.listdir(f"/dev/{vg}")) == ["root"]
    finally:
        shutil.rmtree(f"/dev/{vg}")
    job = proc.stdout.split("pass into job ")[1].split()[0]
    target = loopdev(160 * MiB, "target")
    restore.run(settings_for(p2v_server, job=job, streams=2), target)
    with open(target, "rb") as f:
        f.seek(lv_at)
        assert f.read(LV) == b"SNAP" * (LV // 4)   # the LV as the snapshot froze it
        f.seek(part_start)
        assert f.read(pe_start) == metadata         # LVM's metadata from before the snapshot
