"""The live ISO's own configuration files, read by the tools that will read them on the stick."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ETC = REPO / "live-build/config/includes.chroot_after_packages/etc"


def test_lvm_on_the_stick_activates_no_volume_group_by_itself(tmp_path):
    # Booted from the ISO, an LVM source's volume group came up by udev's event activation,
    # and the capture then refused its disk as held by the active LV (found by make e2e's
    # lvm-filter scenario through the ISO). LVM reads lvmlocal.conf beside lvm.conf.
    shutil.copy("/etc/lvm/lvm.conf", tmp_path / "lvm.conf")
    shutil.copy(ETC / "lvm/lvmlocal.conf", tmp_path / "lvmlocal.conf")
    env = {**os.environ, "LVM_SYSTEM_DIR": str(tmp_path), "LVM_SUPPRESS_FD_WARNINGS": "1"}
    check = subprocess.run(["lvmconfig", "--validate"], env=env, capture_output=True, text=True)
    assert "LVM configuration valid" in check.stdout, check.stdout + check.stderr
    value = subprocess.run(["lvmconfig", "activation/auto_activation_volume_list"], env=env,
                           capture_output=True, text=True)
    assert value.stdout.strip() == "auto_activation_volume_list=[]", value.stdout + value.stderr


def test_mdadm_on_the_stick_assembles_no_array_by_itself():
    lines = (ETC / "mdadm/mdadm.conf").read_text().splitlines()
    assert "AUTO -all" in [line.strip() for line in lines if not line.startswith("#")]
