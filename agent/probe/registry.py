"""Windows version and computer name, read from registry hive files with regipy."""

from __future__ import annotations

from pathlib import Path

from construct import ConstructError
from regipy.exceptions import RegipyException
from regipy.registry import RegistryHive

_VERSION_KEY = r"\Microsoft\Windows NT\CurrentVersion"
_VERSION_VALUES = ("ProductName", "DisplayVersion", "CurrentVersion", "CurrentBuild",
                   "CurrentBuildNumber", "EditionID")


def _values(hive: Path, key: str, names: tuple[str, ...]) -> dict[str, str]:
    try:
        node = RegistryHive(str(hive)).get_key(key)
    except (RegipyException, ConstructError, OSError, ValueError, KeyError):
        # A damaged or foreign hive: Windows is still there, its version just unknown.
        return {}
    out = {}
    for name in names:
        value = node.get_value(name, case_sensitive=False)
        if value is not None:
            out[name] = str(value).rstrip("\0")
    return out


def windows_version(software_hive: Path) -> dict[str, str]:
    """ProductName, DisplayVersion, CurrentVersion, CurrentBuild, CurrentBuildNumber, EditionID
    where present."""
    return _values(software_hive, _VERSION_KEY, _VERSION_VALUES)


def current_control_set(system_hive: Path) -> str | None:
    """The ControlSet Windows boots, from Select\\Current: "ControlSet001"; None when unknown."""
    current = _values(system_hive, r"\Select", ("Current",)).get("Current", "")
    return f"ControlSet{int(current):03d}" if current.isdigit() else None


def system_facts(system_hive: Path) -> dict[str, str]:
    """ControlSet (the current one), ComputerName and PROCESSOR_ARCHITECTURE where present,
    read in the current ControlSet (else ControlSet001, then 002)."""
    current = current_control_set(system_hive)
    out = {"ControlSet": current} if current else {}
    for control_set in dict.fromkeys(filter(None, (current, "ControlSet001", "ControlSet002"))):
        base = rf"\{control_set}\Control"
        out.setdefault("ComputerName", _values(
            system_hive, rf"{base}\ComputerName\ComputerName", ("ComputerName",)).get("ComputerName"))
        out.setdefault("Architecture", _values(
            system_hive, rf"{base}\Session Manager\Environment",
            ("PROCESSOR_ARCHITECTURE",)).get("PROCESSOR_ARCHITECTURE"))
        out = {k: v for k, v in out.items() if v}
    return out


def computer_name(system_hive: Path) -> str | None:
    return system_facts(system_hive).get("ComputerName")
