"""Paths on a mounted Windows volume, looked up as Windows would: each part case-insensitively
(NTFS through ntfs-3g is case-sensitive, Windows is not). Used by the probe and by the repair."""

from __future__ import annotations

from pathlib import Path


def find(root: Path, relative: str) -> Path | None:
    """`relative` ("Windows/System32/config/SYSTEM", parts joined by "/") under `root`, each part
    matched case-insensitively, spelled as the volume spells it; None if a part is missing or a
    directory on the way cannot be listed."""
    current = root
    for part in relative.split("/"):
        try:
            names = {p.name.lower(): p for p in current.iterdir()}
        except OSError:
            return None
        current = names.get(part.lower())
        if current is None:
            return None
    return current
