"""Drawing with ASCII alone, for a serial or SOL console that is not UTF-8.

A VT100/VT220 (what a serial getty announces) or a BMC's Serial-over-LAN shows box-drawing
and block glyphs as garbage, so the whole screen goes out as ASCII: `to_ascii` maps each glyph
Textual draws (borders, scrollbars, blocks, arrows) to one ASCII character of the same width,
at the one place the screen leaves the app (`ascii_driver`). What carries meaning gets its
own ASCII look rather than a mapping: a bar is `#` done and `-` to go (AsciiBar), a checkbox
`[X]`, a radio button `(*)` (agent.tui.common).
"""

from __future__ import annotations

import unicodedata
from typing import Mapping

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text
from textual.driver import Driver
from textual.renderables.bar import Bar as BarRenderable

# Terminal types whose character set is ASCII (DEC's and their emulations, as agetty sets
# them on a serial line), and what a terminal with no known type is.
ASCII_TERMS = ("vt52", "vt100", "vt102", "vt220", "vt320", "ansi", "dumb")


def wants_ascii(setting: bool | None, environ: Mapping[str, str]) -> bool:
    """Whether to draw with ASCII alone: p2v.ascii when given (p2v.ascii=0 forces Unicode on
    a serial terminal that has it), else a non-UTF-8 locale or a VT-style TERM."""
    if setting is not None:
        return setting
    charset = next((environ[k] for k in ("LC_ALL", "LC_CTYPE", "LANG") if environ.get(k)), "")
    utf8 = "utf-8" in charset.lower() or "utf8" in charset.lower()
    term = environ.get("TERM", "").lower()
    return not utf8 or term.split("-")[0] in ASCII_TERMS


_NAMED = {"…": ".", "•": "*", "·": ".", "→": ">", "←": "<", "↑": "^", "↓": "v", "▶": ">",
          "►": ">", "◀": "<", "◄": "<", "▲": "^", "▼": "v", "✓": "v", "✔": "v", "✗": "x",
          "✘": "x", "▔": "-", "▁": "_", "\u00a0": " "}


def _ascii_for(char: str) -> str:
    """One ASCII character standing for a box-drawing, block or other glyph."""
    if char in _NAMED:
        return _NAMED[char]
    name = unicodedata.name(char, "")
    if name.startswith("BOX DRAWINGS"):
        across = "HORIZONTAL" in name or "LEFT" in name or "RIGHT" in name
        down = "VERTICAL" in name or " UP" in name or "DOWN" in name
        return "+" if across and down else "-" if across else "|" if down else "+"
    halves = name.startswith(("LOWER", "UPPER")) and "HALF" in name
    if name.endswith(("SHADE", "FULL BLOCK")) or halves:
        return "#"
    if name.startswith(("LEFT", "RIGHT")) and "BLOCK" in name:
        return "|"
    if name.startswith("LOWER") and "BLOCK" in name:
        return "_"
    if name.startswith("UPPER") and "BLOCK" in name:
        return "-"
    if name.startswith("QUADRANT"):
        return "#"
    decomposed = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
    if len(decomposed) == 1:
        return decomposed                          # é -> e
    return "?" * (2 if unicodedata.east_asian_width(char) in "WF" else 1)


class _Glyphs(dict):
    """str.translate's table: ASCII stays, anything else is looked up once and kept."""

    def __missing__(self, code: int) -> int | str:
        value = code if code < 128 else _ascii_for(chr(code))
        self[code] = value
        return value


_TABLE = _Glyphs()


def to_ascii(text: str) -> str:
    """`text` with every character outside ASCII replaced, cell for cell (escape sequences
    are ASCII and go through untouched)."""
    return text if text.isascii() else text.translate(_TABLE)


def ascii_driver(driver: type[Driver]) -> type[Driver]:
    """`driver`, writing ASCII only to the terminal."""
    class AsciiDriver(driver):  # type: ignore[valid-type, misc]
        def write(self, data: str) -> None:
            super().write(to_ascii(data))

    return AsciiDriver


class AsciiBar(BarRenderable):
    """A progress bar in ASCII: `#` for what is done, `-` for the track (without colour the
    two would be the same glyph)."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = self.width or options.max_width
        start, end = (max(0, min(width, int(x + 0.5))) for x in self.highlight_range)
        end = max(start, end)
        background = console.get_style(self.background_style)
        yield Text.assemble(("-" * start, background),
                            ("#" * (end - start), console.get_style(self.highlight_style)),
                            ("-" * (width - end), background), end="")
