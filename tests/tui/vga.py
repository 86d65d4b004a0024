"""The screen as the Linux VGA console draws it: 16 colours, and no bright backgrounds.

Textual hands the terminal RGB colours; with TERM=linux Rich lowers each to the nearest of the
16 standard colours (Color.downgrade(STANDARD)), and the VGA text mode shows colours 8-15 as a
background in their dark form (its attribute bit 7 is blink, not bright). `cells(app)` is the
screen after both, as (glyph, foreground RGB, background RGB) per cell.
"""

from __future__ import annotations

from rich.color import Color, ColorSystem
from rich.style import Style
from textual.strip import Strip

# The Linux console's default palette (drivers/tty/vt/vt.c default_red/green/blu).
PALETTE = [(0x00, 0x00, 0x00), (0xaa, 0x00, 0x00), (0x00, 0xaa, 0x00), (0xaa, 0x55, 0x00),
           (0x00, 0x00, 0xaa), (0xaa, 0x00, 0xaa), (0x00, 0xaa, 0xaa), (0xaa, 0xaa, 0xaa),
           (0x55, 0x55, 0x55), (0xff, 0x55, 0x55), (0x55, 0xff, 0x55), (0xff, 0xff, 0x55),
           (0x55, 0x55, 0xff), (0xff, 0x55, 0xff), (0x55, 0xff, 0xff), (0xff, 0xff, 0xff)]
DEFAULT_FG, DEFAULT_BG = 7, 0

Cell = tuple[str, tuple[int, int, int], tuple[int, int, int]]


def number(color: Color | None, default: int) -> int:
    if color is None or color.is_default:
        return default
    return color.downgrade(ColorSystem.STANDARD).number


def cell_colours(style: Style | None) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    style = style or Style()
    fg, bg = number(style.color, DEFAULT_FG), number(style.bgcolor, DEFAULT_BG)
    if style.reverse:
        fg, bg = bg, fg
    return PALETTE[fg], PALETTE[bg & 7]


def cells(app) -> list[list[Cell]]:
    """Every cell of the screen as the console shows it (the top screen over those below)."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    rows = []
    for line in update.strips:
        row: list[Cell] = []
        for strip in ([line] if isinstance(line, Strip) else line):
            for segment in strip:
                fg, bg = cell_colours(segment.style)
                row += [(ch, fg, bg) for ch in segment.text]
        rows.append(row)
    return rows


def ink(cell: Cell) -> bool:
    """A glyph the eye sees: not blank, and not drawn in its own background's colour."""
    glyph, fg, bg = cell
    return not glyph.isspace() and fg != bg


def invisible(app) -> list[str]:
    """What on the current screen the console does not show: each focusable widget must stand
    out from what is around it (its frame, its own background, or at least some text), and each
    progress bar's whole track must be drawn."""
    from textual.widgets import ProgressBar
    from textual.widgets._progress_bar import Bar

    grid = cells(app)
    height, width = len(grid), len(grid[0]) if grid else 0

    def at(x: int, y: int) -> Cell | None:
        return grid[y][x] if 0 <= y < height and 0 <= x < width else None

    problems = []
    for widget in app.screen.query("*"):
        region = widget.region
        if widget.parent is not None and widget.parent is not app.screen:
            region = region.intersection(widget.parent.region)     # what its parent clips
        if not region.area or not widget.display or not widget.visible:
            continue
        inside = [at(x, y) for y in range(region.y, region.bottom) for x in range(region.x, region.right)]
        inside = [c for c in inside if c]
        name = f"{type(widget).__name__}#{widget.id}"
        if isinstance(widget, Bar):
            if not all(ink(c) for c in inside):
                problems.append(f"{name}: the track is not drawn ({sorted({c[1:] for c in inside})})")
            continue
        if not widget.focusable or isinstance(widget, ProgressBar):
            continue
        outside = at(region.x - 1, region.y + region.height // 2) or at(region.right, region.y)
        if widget.styles.border_left[0] not in ("", "none", "hidden"):
            edge = [at(region.x, y) for y in range(region.y, region.bottom)]
            if not any(c and (ink(c) or (outside and c[2] != outside[2])) for c in edge):
                problems.append(f"{name}: its frame is {edge[0][1]} on {edge[0][2]}, "
                                f"the same as around it")
        elif not any(ink(c) or (outside and c[2] != outside[2]) for c in inside):
            problems.append(f"{name}: nothing of it shows")
    return problems
