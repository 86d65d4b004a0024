"""The machine around the disks: firmware, DMI identity, CPUs, memory, network cards.

Each function reads sysfs (or /proc) under a root that tests can point at a fixture tree.
"""

from __future__ import annotations

from pathlib import Path

import json
import subprocess

import psutil
import pyudev

from agent.probe.model import Cpu, Nic
from xenp2v.protocol import PLACEHOLDER_STRINGS

SYSFS = Path("/sys")
PROCFS = Path("/proc")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def firmware(sysfs: Path = SYSFS) -> str:
    return "uefi" if (sysfs / "firmware/efi").is_dir() else "bios"


SECURE_BOOT_VAR = "firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


def secure_boot(sysfs: Path = SYSFS) -> bool:
    """UEFI Secure Boot on: the global SecureBoot variable (4 bytes of attributes, then 1)."""
    try:
        data = (sysfs / SECURE_BOOT_VAR).read_bytes()
    except OSError:
        return False
    return len(data) >= 5 and data[4] == 1


def dmi(sysfs: Path = SYSFS) -> dict[str, str | None]:
    """vendor, product, serial and system_uuid from DMI; None where absent or a placeholder."""
    base = sysfs / "class/dmi/id"
    out = {}
    for key, attr in (("vendor", "sys_vendor"), ("product", "product_name"),
                      ("serial", "product_serial"), ("system_uuid", "product_uuid")):
        value = _read(base / attr)
        out[key] = None if value is None or value.lower() in PLACEHOLDER_STRINGS else value
    if out["system_uuid"]:
        out["system_uuid"] = out["system_uuid"].lower()
    return out


def cpu(procfs: Path = PROCFS, sysfs: Path = SYSFS) -> Cpu:
    """Model, sockets, physical cores and threads, from /proc/cpuinfo and the topology in sysfs."""
    info = _read(procfs / "cpuinfo") or ""
    model, flags = "unknown CPU", set()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu model", "Model") and model == "unknown CPU":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    packages, cores, threads = set(), set(), 0
    for topology in sorted((sysfs / "devices/system/cpu").glob("cpu[0-9]*/topology")):
        threads += 1
        package = _read(topology / "physical_package_id") or "0"
        packages.add(package)
        cores.add((package, _read(topology / "core_id") or str(threads)))
    if not threads:
        threads = psutil.cpu_count(logical=True) or 1
    return Cpu(model=model, sockets=len(packages) or 1, cores=len(cores) or threads,
               threads=threads, hypervisor="hypervisor" in flags)


def memory() -> int:
    return psutil.virtual_memory().total


UDEV_NAMES = {"path": "ID_NET_NAME_PATH", "slot": "ID_NET_NAME_SLOT", "mac": "ID_NET_NAME_MAC",
              "onboard": "ID_NET_NAME_ONBOARD"}


def altnames() -> dict[str, list[str]]:
    """Interface name → the kernel's alternative names for it, from `ip -j link` ({} without ip)."""
    try:
        proc = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, timeout=10)
        links = json.loads(proc.stdout) if proc.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}
    return {link["ifname"]: list(link.get("altnames") or []) for link in links if "ifname" in link}


def udev_names(properties) -> dict[str, str]:
    """udev's net_id names of a NIC ("path", "slot", "mac", "onboard"), from its properties."""
    return {key: properties[prop] for key, prop in UDEV_NAMES.items() if properties.get(prop)}


def nics() -> list[Nic]:
    """Physical network cards (those backed by a device), with MAC, driver, speed, link, addresses
    and every name: the kernel's alternative names and udev's path, slot, MAC and onboard names."""
    context = pyudev.Context()
    addrs = psutil.net_if_addrs()
    alternative = altnames()
    out = []
    for dev in context.list_devices(subsystem="net"):
        base = Path(dev.sys_path)
        if not (base / "device").exists():
            continue  # lo, bridges, bonds, tunnels: nothing a VM needs a card for
        speed = _read(base / "speed")
        out.append(Nic(
            name=dev.sys_name,
            mac=(_read(base / "address") or "").lower(),
            driver=(base / "device/driver").resolve().name if (base / "device/driver").exists()
            else None,
            speed=int(speed) if speed and speed.lstrip("-").isdigit() and int(speed) > 0 else None,
            link=_read(base / "carrier") == "1",
            addresses=[a.address for a in addrs.get(dev.sys_name, [])
                       if a.family.name in ("AF_INET", "AF_INET6")],
            altnames=alternative.get(dev.sys_name, []),
            udev_names=udev_names(dev.properties),
        ))
    return sorted(out, key=lambda n: n.name)
