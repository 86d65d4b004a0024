"""Windows version and computer name, read from registry hive files with regipy."""

from __future__ import annotations

from pathlib import Path

from construct import ConstructError
from regipy.exceptions import RegipyException
from regipy.registry import RegistryHive

_VERSION_KEY = r"\Microsoft\Windows NT\CurrentVersion"
_VERSION_VALUES = ("ProductName", "DisplayVersion", "CurrentVersion", "CurrentBuild", "EditionID")


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
    """ProductName, DisplayVersion, CurrentVersion, CurrentBuild, EditionID where present."""
    return _values(software_hive, _VERSION_KEY, _VERSION_VALUES)


def computer_name(system_hive: Path) -> str | None:
    for control_set in ("ControlSet001", "ControlSet002"):
        found = _values(system_hive, rf"\{control_set}\Control\ComputerName\ComputerName",
                        ("ComputerName",))
        if found:
            return found["ComputerName"]
    return None
