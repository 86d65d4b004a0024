"""The first boot of a Windows guest on the VM, staged by the repair on a real NTFS (mkntfs) whose
SYSTEM hive hivex wrote: the vendor's PV drivers for the guest's architecture are copied under
C:\\Windows\\xenp2v and installed by a script winlogon runs before logon (HKLM\\SYSTEM\\Setup CmdLine,
SetupType 2), which also puts the old adapter's static addresses on the VM's NIC with that MAC.
Values are read back with regipy, files with ntfscat; a second run changes nothing.

No Windows runs here: the script is checked as text, not executed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from regipy.registry import RegistryHive

from agent.repair.hive import Hive
from agent.repair.runner import Request, repair
from support import run
from windowsdisk import dword, multi, sz, windows_disk

CMDLINE = r"C:\Windows\System32\cmd.exe /c C:\Windows\xenp2v\firstboot.cmd"
STATIC = "{5A1E2F3B-0C4D-4E5F-8A9B-1C2D3E4F5A6B}"
DHCP = "{9F8E7D6C-5B4A-4392-8170-6F5E4D3C2B1A}"
NET = "{4D36E972-E325-11CE-BFC1-08002BE10318}"


def _with_nics(system: str, tmp_path: Path, setup: dict | None = None) -> None:
    """Add to C:'s SYSTEM hive (through hivex) a NIC with static addresses and one on DHCP, in
    both control sets, and `setup` values under Setup."""
    mnt = tmp_path / "edit"
    mnt.mkdir(exist_ok=True)
    run("mount", "-t", "ntfs-3g", system, str(mnt))
    try:
        with Hive(mnt / "Windows/System32/config/SYSTEM", write=True) as hive:
            for cs in ("ControlSet001", "ControlSet002"):
                base = rf"{cs}\Services\Tcpip\Parameters\Interfaces"
                for name, (kind, data) in {
                        "EnableDHCP": dword(0), "IPAddress": multi("10.1.2.3", "10.1.2.4"),
                        "SubnetMask": multi("255.255.255.0", "255.255.0.0"),
                        "DefaultGateway": multi("10.1.2.1"),
                        "NameServer": sz("10.1.2.53,10.1.2.54")}.items():
                    hive.set_value(rf"{base}\{STATIC}", name, kind, data)
                for name, (kind, data) in {"EnableDHCP": dword(1), "IPAddress": multi("0.0.0.0"),
                                           "DhcpIPAddress": sz("192.168.7.9")}.items():
                    hive.set_value(rf"{base}\{DHCP}", name, kind, data)
                kind, data = sz("Ethernet0")
                hive.set_value(rf"{cs}\Control\Network\{NET}\{STATIC}\Connection", "Name", kind, data)
            for name, (kind, data) in (setup or {}).items():
                hive.set_value("Setup", name, kind, data)
            hive.commit()
    finally:
        run("umount", str(mnt))


def _drivers(tmp_path: Path) -> Path:
    """A vendor's Windows PV driver package: per-architecture .inf folders and .msi installers."""
    root = tmp_path / "xen-drivers"
    for driver in ("xenbus", "xennet"):
        for arch in ("x64", "x86"):
            folder = root / driver / arch
            folder.mkdir(parents=True)
            (folder / f"{driver}.inf").write_text(f"; {driver} {arch}\r\n")
            (folder / f"{driver}.sys").write_bytes(f"MZ {driver} {arch}".encode())
            (folder / f"{driver}.cat").write_bytes(b"catalog")
    (root / "managementagentx64.msi").write_bytes(b"MSI x64")
    (root / "managementagentx86.msi").write_bytes(b"MSI x86")
    return root


def _cat(system: str, path: str) -> bytes | None:
    proc = subprocess.run(["ntfscat", system, path], capture_output=True)
    return proc.stdout if proc.returncode == 0 and proc.stdout else None


def _setup(system: str, tmp_path: Path) -> dict:
    out = tmp_path / f"SYSTEM-{len(list(tmp_path.glob('SYSTEM-*')))}"
    out.write_bytes(_cat(system, "/Windows/System32/config/SYSTEM"))
    key = RegistryHive(str(out)).get_key(r"\Setup")
    return {v.name: v.value for v in key.iter_values()}


def _inventory(*macs: str) -> dict:
    return {"machine": {"nics": [{"name": f"eth{i}", "mac": mac} for i, mac in enumerate(macs)]}}


def test_drivers_and_static_addresses_are_staged_for_the_first_boot(loopdev, tmp_path):
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    _with_nics(system, tmp_path)
    drivers = _drivers(tmp_path)
    said: list[str] = []
    request = Request(disk=dev, windows_drivers=str(drivers), inventory=_inventory("00:16:3e:aa:bb:cc"))
    report = repair(request, said.append)
    assert report["status"] == "ok"
    out = "\n".join(said)
    assert ("First boot sets the old adapter Ethernet0: 10.1.2.3/24, 10.1.2.4/16, gateway "
            "10.1.2.1, DNS 10.1.2.53, 10.1.2.54 on the VM's NIC 00:16:3e:aa:bb:cc.") in out
    assert r"HKEY_LOCAL_MACHINE\SYSTEM\Setup\SetupType: (absent) -> dword:2" in out
    assert r"write C:\Windows\xenp2v\drivers\xenbus\x64\xenbus.sys" in out
    assert "XenServer PV drivers are not staged" not in out

    setup = _setup(system, tmp_path)
    assert setup["CmdLine"] == CMDLINE and setup["SetupType"] == 2

    script = _cat(system, "/Windows/xenp2v/firstboot.cmd")
    assert script and script.endswith(b"\r\n") and b"\n" not in script.replace(b"\r\n", b"")
    text = script.decode("ascii")
    stage = r"C:\Windows\xenp2v\drivers"
    for inf in (r"xenbus\x64\xenbus.inf", r"xennet\x64\xennet.inf"):
        assert f'pnputil -i -a "{stage}\\{inf}"' in text
    assert f'msiexec /i "{stage}\\managementagentx64.msi" /qn /norestart' in text
    assert "x86" not in text   # the other architecture's drivers are neither run ...
    assert _cat(system, "/Windows/xenp2v/drivers/xenbus/x86/xenbus.sys") is None   # ... nor copied
    assert _cat(system, "/Windows/xenp2v/drivers/xenbus/x64/xenbus.sys") == b"MZ xenbus x64"
    assert _cat(system, "/Windows/xenp2v/drivers/xennet/x64/xennet.cat") == b"catalog"
    # The VM's NIC is the one with the MAC, however Windows names it; DHCP adapters are left be.
    assert 'if /i "%%~b"=="00-16-3E-AA-BB-CC"' in text
    assert 'netsh interface ip set address "%NIC%" static 10.1.2.3 255.255.255.0 10.1.2.1 1' in text
    assert 'netsh interface ip add address "%NIC%" 10.1.2.4 255.255.0.0' in text
    assert 'netsh interface ip set dns "%NIC%" static 10.1.2.53' in text
    assert 'netsh interface ip add dns "%NIC%" 10.1.2.54 index=2' in text
    assert "192.168.7.9" not in text
    # It turns itself off before the restart the drivers need.
    assert text.index("/v SetupType /t REG_DWORD /d 0") < text.index("shutdown -r")

    # A second run changes nothing.
    before = _cat(system, "/Windows/System32/config/SYSTEM")
    said.clear()
    again = repair(request, said.append)
    assert not again["changed"] and "already repaired" in "\n".join(said)
    assert _cat(system, "/Windows/System32/config/SYSTEM") == before
    assert _cat(system, "/Windows/xenp2v/firstboot.cmd") == script


def test_without_drivers_the_static_addresses_still_go_to_the_only_nic(loopdev, tmp_path):
    dev, system = windows_disk(loopdev, tmp_path, "7", "gpt")
    _with_nics(system, tmp_path)
    said: list[str] = []
    repair(Request(disk=dev), said.append)   # no job: the VM's NICs are not known
    out = "\n".join(said)
    assert "XenServer PV drivers are not staged: give the vendor's Windows driver package" in out
    assert "on the VM's first NIC" in out
    text = _cat(system, "/Windows/xenp2v/firstboot.cmd").decode("ascii")
    assert 'if not "%%~b"=="N/A"' in text and "pnputil" not in text and "shutdown" not in text
    assert _setup(system, tmp_path)["SetupType"] == 2


def test_a_setup_hook_in_use_is_left_alone(loopdev, tmp_path):
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    _with_nics(system, tmp_path, {"SetupType": dword(1), "CmdLine": sz(r"oobe\windeploy.exe")})
    said: list[str] = []
    report = repair(Request(disk=dev, windows_drivers=str(_drivers(tmp_path))), said.append)
    assert any("Windows' setup hook is in use" in w for w in report["warnings"])
    assert _setup(system, tmp_path) == {"SetupType": 1, "CmdLine": r"oobe\windeploy.exe"}
    assert _cat(system, "/Windows/xenp2v/firstboot.cmd") is None


def test_a_connection_name_cannot_break_the_script():
    from agent.repair.firstboot import FirstBoot, StaticAdapter, script
    adapter = StaticAdapter("{G}", "Подключение & Co > nul | x", (("10.0.0.2", "255.0.0.0"),))
    text = script(FirstBoot(nics=[(adapter, None)]))
    text.encode("ascii")   # cmd.exe reads the OEM code page: ASCII only
    said = [line.split(" >> %LOG%")[0] for line in text.splitlines()
            if line.startswith(("rem Po", "rem _", "echo setting", "echo no NIC"))]
    assert len(said) == 3 and not any(c in line for line in said for c in "&>|<^%!"[:5]), said


def test_a_driver_file_name_cannot_break_the_script(loopdev, tmp_path):
    # Names the vendor or the admin gave: cmd.exe reads the script in the OEM code page (ASCII
    # only is safe) and expands % even inside quotes; & ( ) are safe only inside quotes.
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    drivers = tmp_path / "pv"
    for folder in ("Xen Treiber für 2019/x64", "xenvif & co (x64)", "100% net/x64"):
        (drivers / folder).mkdir(parents=True)
        (drivers / folder / "driver.inf").write_text("; inf\r\n")
        (drivers / folder / "driver.sys").write_bytes(b"MZ")
    (drivers / "Management Agent (x64) & tools.msi").write_bytes(b"MSI")
    said: list[str] = []
    report = repair(Request(disk=dev, windows_drivers=str(drivers)), said.append)
    assert report["status"] == "ok"
    text = _cat(system, "/Windows/xenp2v/firstboot.cmd").decode("ascii")
    stage = r"C:\Windows\xenp2v\drivers"
    assert f'pnputil -i -a "{stage}\\xenvif & co (x64)\\driver.inf"' in text
    assert f'msiexec /i "{stage}\\Management Agent (x64) & tools.msi"' in text
    assert "100%" not in text and "Treiber" not in text
    for line in text.splitlines():
        if line.startswith("echo installing"):
            assert not any(c in line.split(" >> %LOG%")[0] for c in "&|<>^%\""), line
    left_out = [w for w in report["warnings"] if "cannot name safely" in w]
    assert len(left_out) == 1 and "Xen Treiber für 2019/x64/driver.inf" in left_out[0] \
        and "100% net/x64/driver.inf" in left_out[0], report["warnings"]
    assert _cat(system, "/Windows/xenp2v/drivers/xenvif & co (x64)/driver.sys") == b"MZ"


def test_the_job_turns_itself_off_before_it_installs_anything():
    # Winlogon runs the Setup hook before every logon until SetupType is 0 again: a pnputil
    # waiting on a dialog nobody sees, or a netsh that hangs, would bar every logon for good if
    # the hook were turned off only at the end. Turned off first, a forced restart reaches logon.
    from agent.repair.firstboot import DriverPackage, FirstBoot, StaticAdapter, script
    adapter = StaticAdapter("{G}", "Ethernet0", (("10.0.0.2", "255.0.0.0"),))
    job = FirstBoot(drivers=DriverPackage(Path("/nowhere"), ("xenbus/xenbus.inf",), ("agent.msi",), ()),
                    nics=[(adapter, "00:16:3e:00:00:01")])
    lines = script(job).splitlines()
    off = [i for i, line in enumerate(lines) if line.startswith("reg add HKLM\\SYSTEM\\Setup")]
    work = [i for i, line in enumerate(lines) if line.startswith(("pnputil", "msiexec", "netsh", "for /f"))]
    assert len(off) == 2 and work and max(off) < min(work), lines
    assert lines[-1].startswith("shutdown -r")


def test_a_failed_hive_write_puts_the_hive_and_the_files_back(loopdev, tmp_path, monkeypatch):
    from agent.repair import hive as hive_module
    from agent.repair.guest import RepairError
    dev, system = windows_disk(loopdev, tmp_path, "10", "dos")
    _with_nics(system, tmp_path)
    before = _cat(system, "/Windows/System32/config/SYSTEM")

    def half_written(self):   # what a write cut short leaves: a hive that is no hive
        self.path.write_bytes(b"regf" + bytes(100))
        raise hive_module.HiveError(f"Cannot write it back in the registry hive {self.path}: "
                                    "No space left on device.")
    monkeypatch.setattr(hive_module.Hive, "commit", half_written)
    try:
        repair(Request(disk=dev, windows_drivers=str(_drivers(tmp_path))), print)
    except RepairError as e:
        said = str(e)
    else:
        raise AssertionError("the repair went on")
    assert "No space left on device" in said and "nothing was changed" in said
    assert "put back from its backup C:\\Windows\\xenp2v\\backups\\" in said, said
    assert _cat(system, "/Windows/System32/config/SYSTEM") == before
    assert _cat(system, "/Windows/xenp2v/firstboot.cmd") is None
    assert _cat(system, "/Windows/xenp2v/drivers/xenbus/x64/xenbus.sys") is None
    backups = subprocess.run(["ntfsls", "-f", "-p", "/Windows/xenp2v/backups", system],
                             capture_output=True, text=True).stdout.split()
    backups = [name for name in backups if name not in (".", "..")]
    assert len(backups) == 1   # kept
    assert _cat(system, f"/Windows/xenp2v/backups/{backups[0]}/SYSTEM") == before


def test_xp_with_inf_drivers_only_copies_them_and_does_not_restart_for_nothing():
    from agent.repair.firstboot import DriverPackage, FirstBoot, script
    job = FirstBoot(drivers=DriverPackage(Path("/nowhere"), ("xenbus/xenbus.inf",), (), ()),
                    pnputil=False, system_root="C:\\WINDOWS")
    text = script(job)
    assert "pnputil" not in text and "shutdown" not in text, text
    job.drivers = DriverPackage(Path("/nowhere"), ("xenbus/xenbus.inf",), ("agent.msi",), ())
    assert script(job).splitlines()[-1].startswith("shutdown -r")   # the .msi is installed


def test_xp_plan_says_the_inf_drivers_are_only_copied(loopdev, tmp_path):
    dev, system = windows_disk(loopdev, tmp_path, "xp", "dos")
    drivers = tmp_path / "pv"
    (drivers / "xenbus" / "x86").mkdir(parents=True)
    (drivers / "xenbus" / "x86" / "xenbus.inf").write_text("; inf\r\n")
    said: list[str] = []
    report = repair(Request(disk=dev, windows_drivers=str(drivers)), said.append)
    out = "\n".join(said)
    assert any("have no pnputil" in w for w in report["warnings"])
    assert "First boot installs the PV drivers" not in out and "restarts once" not in out, out


def test_any_nic_means_a_line_with_a_physical_address():
    # With the VM's MACs unknown, the first adapter getmac lists is taken: a line without a third
    # field (a message while no NIC driver has loaded yet) must not be taken for one, or the
    # script stops waiting and sets the addresses on nothing.
    from agent.repair.firstboot import FirstBoot, StaticAdapter, script
    adapter = StaticAdapter("{G}", "Ethernet0", (("10.0.0.2", "255.0.0.0"),))
    text = script(FirstBoot(nics=[(adapter, None)]))
    (loop,) = [line for line in text.splitlines() if line.startswith("for /f")]
    assert 'if not "%%~b"=="" if not "%%~b"=="N/A" if not defined NIC set NIC=%%~a' in loop, loop
