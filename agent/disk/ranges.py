"""Range arithmetic on half-open byte ranges [start, end): what the read plan and the btrfs maps
are made of. A normalized list is sorted, merged and has no empty range."""

from __future__ import annotations

Range = tuple[int, int]


def normalize(ranges) -> list[Range]:
    """Sorted, merged, non-empty ranges."""
    out: list[Range] = []
    for s, e in sorted(r for r in ranges if r[1] > r[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def subtract(ranges: list[Range], holes: list[Range]) -> list[Range]:
    """`ranges` minus `holes` (both normalized)."""
    out: list[Range] = []
    holes = normalize(holes)
    for s, e in ranges:
        pos = s
        for hs, he in holes:
            if he <= pos or hs >= e:
                continue
            if hs > pos:
                out.append((pos, hs))
            pos = max(pos, he)
        if pos < e:
            out.append((pos, e))
    return out


def clip(ranges: list[Range], start: int, end: int) -> list[Range]:
    return [(max(s, start), min(e, end)) for s, e in ranges if e > start and s < end]


def shift(ranges: list[Range], by: int) -> list[Range]:
    return [(s + by, e + by) for s, e in ranges]


def total(ranges: list[Range]) -> int:
    return sum(e - s for s, e in ranges)
