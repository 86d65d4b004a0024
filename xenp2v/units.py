"""Byte counts and counts of things as people read them, the same on the agent's screens and the
server's pages."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """`n` bytes in binary units: "512 B", "1.5 KiB", ... up to TiB ("2048.0 TiB" beyond)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def counted(n: int, noun: str) -> str:
    """`n` and `noun`, plural unless `n` is 1: "1 disk", "2 disks", "0 disks"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
