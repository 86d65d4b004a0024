"""A Windows guest's first boot on the VM: the vendor's PV drivers installed and the old NIC's
static addresses put on the VM's NIC, before anyone logs on.

What runs: one batch file, C:\\Windows\\xenp2v\\firstboot.cmd, with the driver package copied
beside it (C:\\Windows\\xenp2v\\drivers). It installs each .inf with pnputil and each .msi with
msiexec, waits for the VM's NIC (found by its MAC with getmac) and sets its addresses with netsh,
logs to C:\\Windows\\xenp2v\\firstboot.log and, when it installed drivers, restarts Windows once
so they take over. It turns itself off before anything else: winlogon runs it before every logon
until then, so a step that hung (a driver's dialog nobody sees) would otherwise bar every logon.

How it is started: winlogon's Setup hook, HKLM\\SYSTEM\\Setup: CmdLine (the program) with
SetupType=2 (run CmdLine, then show the logon screen). Winlogon runs it as SYSTEM and waits for it
before anyone can log on, on every Windows from XP to 11 (Microsoft KB 939857 describes the hook
Windows Setup uses; SetupType 0/1/2 from the TechNet answer "SetupType and CmdLine at
HKEY_LOCAL_MACHINE\\System\\Setup"). RunOnce needs a logon; a service whose ImagePath is cmd.exe
is killed by the service manager 30 s after it fails to report running, too soon for a driver
install. virt-v2v (libguestfs-common mlcustomize/firstboot.ml, convert/convert_windows.ml) is the
model for the rest: its batch script logs next to itself and turns itself off when done, its
static addresses are matched to the new NIC by MAC after waiting for the NIC's driver; it starts
its script through a service wrapper (rhsrvany.exe or pvvxsvc.exe), a Windows program this
project does not ship, hence the Setup hook.

Registry values are read with hivex (agent.repair.hive): the booted ControlSet's
Services\\Tcpip\\Parameters\\Interfaces\\{GUID} (EnableDHCP, IPAddress, SubnetMask, DefaultGateway,
NameServer) and Control\\Network's connection names.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from agent.repair.hive import REG_DWORD, REG_MULTI_SZ, REG_SZ, Hive

STAGE = "Windows/xenp2v"                     # under the Windows volume's root
SCRIPT = f"{STAGE}/firstboot.cmd"
DRIVERS = f"{STAGE}/drivers"
NET_CLASS = "{4D36E972-E325-11CE-BFC1-08002BE10318}"
SETUP = "Setup"
RUN_CMDLINE_THEN_LOGON = 2                   # SetupType
WAIT_TRIES = 60                              # the VM's NIC is waited for 60 × 5 s
# Folder and file name words that say a driver or installer is for one architecture only.
ARCH_WORDS = {"x64": ("x64", "amd64", "win64", "64"), "x86": ("x86", "i386", "win32", "32")}


@dataclass(frozen=True)
class StaticAdapter:
    """An old adapter's static IPv4 settings, from the SYSTEM hive."""

    guid: str                                # {…}: its Tcpip\Parameters\Interfaces key
    name: str                                # its connection name ("Ethernet0"), or the GUID
    addresses: tuple[tuple[str, str], ...]   # (address, mask)
    gateways: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()

    def describe(self) -> str:
        cidrs = ", ".join(f"{a}/{ipaddress.IPv4Network(f'0.0.0.0/{m}').prefixlen}"
                          for a, m in self.addresses)
        gw = f", gateway {', '.join(self.gateways)}" if self.gateways else ""
        dns = f", DNS {', '.join(self.dns)}" if self.dns else ""
        return f"{self.name}: {cidrs}{gw}{dns}"


@dataclass(frozen=True)
class DriverPackage:
    root: Path                               # the folder they are copied from
    infs: tuple[str, ...]                    # paths relative to root, "/"-separated
    msis: tuple[str, ...]
    others: tuple[str, ...]                  # every other file the .infs' folders hold
    left_out: tuple[str, ...] = ()           # .inf/.msi paths the script cannot name safely

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(sorted({*self.infs, *self.msis, *self.others}))


@dataclass
class FirstBoot:
    """What the first-boot job does; empty when there is nothing to do."""

    drivers: DriverPackage | None = None
    nics: list[tuple[StaticAdapter, str | None]] = field(default_factory=list)  # (old, VM MAC)
    pnputil: bool = True                     # Windows Vista and later have it
    system_root: str = "C:\\Windows"

    @property
    def empty(self) -> bool:
        return self.drivers is None and not self.nics

    @property
    def installs(self) -> tuple[str, ...]:
        """The driver package's files the script installs (.infs need pnputil; .msis)."""
        if self.drivers is None:
            return ()
        return (self.drivers.infs if self.pnputil else ()) + self.drivers.msis


# --- reading the registry -------------------------------------------------------------------------

def _multi(value: tuple[int, bytes] | None) -> list[str]:
    if value is None:
        return []
    kind, data = value
    text = data.decode("utf-16-le", "replace")
    parts = text.split("\0") if kind == REG_MULTI_SZ else re.split(r"[\s,;]+", text.rstrip("\0"))
    return [p.strip() for p in parts if p.strip()]


def _dword(value: tuple[int, bytes] | None) -> int | None:
    if value is None or value[0] != REG_DWORD or len(value[1]) != 4:
        return None
    return struct.unpack("<I", value[1])[0]


def booted_control_set(hive: Hive) -> str | None:
    """ControlSet00N from Select\\Current; None when the hive has no Select."""
    current = _dword(hive.value("Select", "Current"))
    return f"ControlSet{current:03d}" if current else None


def static_adapters(hive: Hive, cs: str) -> list[StaticAdapter]:
    """Every adapter of ControlSet `cs` with static IPv4 addresses (EnableDHCP 0 and an address
    other than 0.0.0.0), in the order of their keys."""
    base = f"{cs}\\Services\\Tcpip\\Parameters\\Interfaces"
    out = []
    for guid in hive.subkeys(base):
        key = f"{base}\\{guid}"
        if _dword(hive.value(key, "EnableDHCP")) != 0:
            continue
        pairs = [(a, m) for a, m in zip(_multi(hive.value(key, "IPAddress")),
                                        _multi(hive.value(key, "SubnetMask")))
                 if _ipv4(a) and _ipv4(m) and a != "0.0.0.0"]
        if not pairs:
            continue
        gateways = tuple(g for g in _multi(hive.value(key, "DefaultGateway")) if _ipv4(g))
        dns = tuple(d for d in _multi(hive.value(key, "NameServer")) if _ipv4(d))
        name_value = hive.value(f"{cs}\\Control\\Network\\{NET_CLASS}\\{guid}\\Connection", "Name")
        name = name_value[1].decode("utf-16-le", "replace").rstrip("\0") if name_value else guid
        out.append(StaticAdapter(guid, name, tuple(pairs), gateways, dns))
    return out


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# --- the driver package ---------------------------------------------------------------------------

def driver_package(source: Path, arch: str) -> DriverPackage | None:
    """The .inf drivers and .msi installers under `source` (a folder) for Windows of `arch`
    ("x64" or "x86"): files in a folder, or named, for the other architecture are left out.
    The .infs' folders go whole (their .sys, .cat files). None when none is there."""
    other = ARCH_WORDS["x86" if arch == "x64" else "x64"]
    mine = ARCH_WORDS[arch]
    infs: list[str] = []
    msis: list[str] = []
    left_out: list[str] = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = path.relative_to(source)
        folders = [w for part in rel.parts[:-1] for w in re.split(r"[^a-z0-9]+", part.lower())]
        named = re.findall(r"x64|x86|amd64|i386|win64|win32", rel.name.lower())
        if any(w in other for w in folders + named) and not any(w in mine for w in named):
            continue
        kind = {".inf": infs, ".msi": msis}.get(path.suffix.lower())
        if kind is None:
            continue
        (kind if nameable(rel.as_posix()) else left_out).append(rel.as_posix())
    if not infs and not msis and not left_out:
        return None
    folders = {str(Path(i).parent) for i in infs}
    others = [p.relative_to(source).as_posix() for p in source.rglob("*")
              if p.is_file() and str(p.relative_to(source).parent) in folders]
    return DriverPackage(source, tuple(infs), tuple(msis), tuple(sorted(others)), tuple(left_out))


def nameable(path: str) -> bool:
    """Can the script name `path` inside double quotes? cmd.exe reads it in the OEM code page
    (only ASCII is the same in all) and expands % even there; a quote would end the quoting."""
    return all(32 <= ord(c) < 127 for c in path) and not any(c in path for c in '%"')


# --- the script -----------------------------------------------------------------------------------

def script(job: FirstBoot) -> str:
    """The batch file, with CRLF line ends as cmd.exe expects; ASCII only (connection names,
    which may not be, are found at run time by MAC)."""
    stage = f"{job.system_root}\\xenp2v"
    lines = [
        "@echo off",
        "rem xenp2v: first boot on the VM, run once by winlogon before the logon screen",
        "rem (HKLM\\SYSTEM\\Setup CmdLine, SetupType 2). It turns itself off first: winlogon",
        "rem runs it before every logon until then, and a step that hangs must not bar them all.",
        f'set LOG="{stage}\\firstboot.log"',
        "echo --- xenp2v first boot %DATE% %TIME% >> %LOG%",
        "reg add HKLM\\SYSTEM\\Setup /v SetupType /t REG_DWORD /d 0 /f >> %LOG% 2>&1",
        'reg add HKLM\\SYSTEM\\Setup /v CmdLine /t REG_SZ /d "" /f >> %LOG% 2>&1',
    ]
    if job.drivers:
        for inf in job.drivers.infs if job.pnputil else ():
            path = f"{stage}\\drivers\\{inf.replace('/', chr(92))}"
            lines += [f'echo installing {_said(path)} >> %LOG%',
                      f'pnputil -i -a "{path}" >> %LOG% 2>&1']
        for msi in job.drivers.msis:
            path = f"{stage}\\drivers\\{msi.replace('/', chr(92))}"
            lines += [f'echo installing {_said(path)} >> %LOG%',
                      f'msiexec /i "{path}" /qn /norestart /l*v "{path}.log"',
                      "echo msiexec: %ERRORLEVEL% >> %LOG%"]
    for n, (adapter, mac) in enumerate(job.nics):
        lines += _nic_lines(n, adapter, mac)
    lines.append("echo done >> %LOG%")
    if job.installs:
        lines.append('shutdown -r -t 30 -c "xenp2v: restarting once for the new drivers"')
    return "\r\n".join(lines) + "\r\n"


def _said(text: str) -> str:
    """`text` safe in a batch file's echo and rem lines: ASCII, none of cmd's special characters."""
    return re.sub(r"[^A-Za-z0-9 ._,:/{}\\\-]", "_", text)


def _nic_lines(n: int, adapter: StaticAdapter, mac: str | None) -> list[str]:
    """Wait for the VM's NIC with `mac` (any NIC when None), then set `adapter`'s addresses on it."""
    want = mac.upper().replace(":", "-") if mac else None
    match = f'if /i "%%~b"=="{want}" ' if want else 'if not "%%~b"=="" if not "%%~b"=="N/A" '
    label = f"nic{n}"
    (first, first_mask), *more = adapter.addresses
    gw = f" {adapter.gateways[0]} 1" if adapter.gateways else ""
    about = _said(adapter.describe())
    out = [f"rem {about} (was {_said(adapter.guid)})",
           f"set /a TRIES=0",
           f":{label}",
           "set NIC=",
           f"for /f \"tokens=1,3 delims=,\" %%a in ('getmac /v /fo csv /nh') do "
           f"{match}if not defined NIC set NIC=%%~a",
           f"if defined NIC goto {label}set",
           "set /a TRIES+=1",
           f"if %TRIES% GEQ {WAIT_TRIES} goto {label}none",
           "ping -n 6 127.0.0.1 > nul",
           f"goto {label}",
           f":{label}none",
           f"echo no NIC {want or ''} appeared: {_said(adapter.name)} not set >> %LOG%",
           f"goto {label}end",
           f":{label}set",
           f'echo setting "%NIC%": {about} >> %LOG%',
           f'netsh interface ip set address "%NIC%" static {first} {first_mask}{gw} >> %LOG% 2>&1']
    out += [f'netsh interface ip add address "%NIC%" {a} {m} >> %LOG% 2>&1' for a, m in more]
    out += [f'netsh interface ip add address "%NIC%" gateway={g} gwmetric=1 >> %LOG% 2>&1'
            for g in adapter.gateways[1:]]
    if adapter.dns:
        out.append(f'netsh interface ip set dns "%NIC%" static {adapter.dns[0]} >> %LOG% 2>&1')
        out += [f'netsh interface ip add dns "%NIC%" {d} index={i} >> %LOG% 2>&1'
                for i, d in enumerate(adapter.dns[1:], start=2)]
    out.append(f":{label}end")
    return out


def cmdline(system_root: str) -> str:
    """What winlogon runs: cmd.exe on the script, by full path (winlogon runs it as given)."""
    return f'{system_root}\\System32\\cmd.exe /c {system_root}\\xenp2v\\firstboot.cmd'
