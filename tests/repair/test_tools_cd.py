"""The pool's tools ISO in the VM's second CD drive: the agent finds it with no flag, never takes a
CD drive for a disk to repair, and the Windows repair stages the Windows tools from it.

CD drives are told apart from disks through sysfs (a fake tree here: emulated srN, a PV guest's
removable xvd); their media are real ISO images made by xorriso (toolsiso.py), read through a file
and through a block device. The Windows guest is a real NTFS with a SYSTEM hive hivex wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.repair import guest_tools
from agent.repair.runner import Request, Tools, repair, vm_disks
from support import run
from windowsdisk import windows_disk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import toolsiso  # noqa: E402
from test_windows_firstboot import _cat  # noqa: E402


def fake_sysfs(root: Path, devices: dict[str, str]) -> Path:
    """/sys/block with `devices` (name -> removable flag), each backed by a device."""
    for name, removable in devices.items():
        (root / "block" / name / "device").mkdir(parents=True)
        (root / "block" / name / "removable").write_text(f"{removable}\n")
    return root


def plain_iso(work: Path) -> Path:
    """An ISO without Linux/ (the xenp2v ISO in the first drive stands for it)."""
    (work / "live").mkdir(parents=True)
    (work / "live/filesystem.squashfs").write_bytes(b"squashfs")
    iso = work / "xenp2v.iso"
    run("xorriso", "-as", "mkisofs", "-R", "-V", "XENP2V", "-o", str(iso), str(work / "live"))
    return iso


def test_the_tools_cd_is_found_among_the_cd_drives_and_none_is_a_disk(tmp_path, monkeypatch):
    sysfs = fake_sysfs(tmp_path / "sys", {"sr0": 1, "sr1": 1, "xvda": 0, "xvdb": 0, "xvdd": 1})
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "sr0").write_bytes(plain_iso(tmp_path / "live").read_bytes())
    (dev / "sr1").write_bytes(toolsiso.build(tmp_path / "tools").read_bytes())
    (dev / "xvdd").write_bytes(b"")                      # an empty PV CD drive
    drives = guest_tools.cd_drives(sysfs, dev)
    assert drives == [str(dev / "sr0"), str(dev / "sr1"), str(dev / "xvdd")]
    assert guest_tools.tools_cd(drives) == str(dev / "sr1")
    assert guest_tools.agent_files_on(str(dev / "sr1")) == [
        f"xe-guest-utilities_{toolsiso.VERSION}_all.tgz", f"xe-guest-utilities_{toolsiso.VERSION}_amd64.deb"]
    assert guest_tools.tools_cd([str(dev / "sr0"), str(dev / "xvdd")]) is None
    # Without xorriso the drives cannot be read: said, with what to do.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(guest_tools.ToolsError, match="this system has no xorriso. Install it, or give the ISO"):
        guest_tools.tools_cd(drives)
    assert guest_tools.tools_cd([]) is None
    # Neither CD drive is a disk to restore onto or repair: the ISO's, the tools ISO's, a PV one.
    assert vm_disks(sysfs) == ["/dev/xvda", "/dev/xvdb"]


def test_windows_tools_on_the_tools_cd_are_staged_with_no_flag(loopdev, tmp_path):
    """The vendor's ISO has the Windows management agent's installers beside Linux/; the tools CD
    (a block device, as in the VM) found by the agent gives them to the Windows repair."""
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    iso = toolsiso.build(tmp_path / "tools", windows={"managementagentx64.msi": b"MSI x64",
                                                      "managementagentx86.msi": b"MSI x86",
                                                      "xenbus/x64/xenbus.inf": b"; xenbus x64\r\n",
                                                      "xenbus/x64/xenbus.sys": b"MZ xenbus x64",
                                                      "xenbus/x86/xenbus.inf": b"; xenbus x86\r\n"})
    cd = loopdev(iso.stat().st_size, "tools-cd")
    subprocess.run(["dd", f"if={iso}", f"of={cd}", "bs=1M", "status=none", "conv=fsync"], check=True)
    said: list[str] = []
    report = repair(Request(disks=[dev]), said.append, Tools(tools_cd=lambda: cd))
    out = "\n".join(said)
    assert report["status"] == "ok", out
    assert f"The pool's tools ISO is in the CD drive {cd}: the guest agent comes from there." in out
    assert "XenServer PV drivers are not staged" not in out
    script = _cat(system, "/Windows/xenp2v/firstboot.cmd").decode("ascii")
    stage = r"C:\Windows\xenp2v\drivers"
    assert f'msiexec /i "{stage}\\managementagentx64.msi" /qn /norestart' in script
    assert f'pnputil -i -a "{stage}\\xenbus\\x64\\xenbus.inf"' in script
    assert "x86" not in script
    assert _cat(system, "/Windows/xenp2v/drivers/managementagentx64.msi") == b"MSI x64"
    assert _cat(system, "/Windows/xenp2v/drivers/xenbus/x64/xenbus.sys") == b"MZ xenbus x64"
    assert _cat(system, "/Windows/xenp2v/drivers/managementagentx86.msi") is None
    # The Linux agent's packages are not Windows drivers: nothing of Linux/ is staged.
    assert _cat(system, f"/Windows/xenp2v/drivers/Linux/xe-guest-utilities_{toolsiso.VERSION}_amd64.deb") is None
