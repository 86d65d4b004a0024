"""Boots the built ISO under QEMU, BIOS and UEFI, as a CD and as a USB stick, through its own boot
menus, and watches the serial console: the agent starts by itself on the console the kernel line
names."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.iso.vm import BOOT_TIMEOUT, VM, edit_entry, start

# Each test may boot a machine under TCG: minutes each.
pytestmark = pytest.mark.timeout(3600)

# The agent's first screen: the TUI's title line on its first step (agent/tui/common.py).
AGENT_FIRST_SCREEN = r"xenp2v\s+\|\s+Start"
# Tools the agent calls; each must be on the live system's PATH.
TOOLS = ("p2v-agent partclone.ext4 partclone.xfs partclone.btrfs partclone.ntfs partclone.vfat "
         "lvm mdadm cryptsetup parted sgdisk sfdisk mkfs.ext4 mkfs.xfs mkfs.btrfs mkfs.vfat "
         "ntfs-3g grub-install efibootmgr ethtool blkid dmidecode zstd")


@pytest.fixture
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("iso-boot")


# The hybrid ISO boots as a CD and as a USB stick, with either firmware.
@pytest.mark.parametrize("medium", ["cd", "usb"])
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_serial_entry_starts_the_agent_on_the_serial_console(iso, workdir, firmware, medium):
    vm = start(iso, workdir, firmware, medium=medium)
    try:
        # isolinux selects with the hotkey and boots with Enter; grub boots on the hotkey alone.
        vm.type("s\r" if firmware == "bios" else "s")
        vm.wait_for(AGENT_FIRST_SCREEN, timeout=BOOT_TIMEOUT)
    finally:
        vm.close()


@pytest.fixture(scope="module")
def vga_vm(iso, tmp_path_factory):
    """The default entry, with the kernel's messages copied to the serial port: the agent runs on
    tty1 (the last console=), the serial console is a root shell the tests type into."""
    vm = start(iso, tmp_path_factory.mktemp("iso-vga"), "bios")
    try:
        edit_entry(vm, "m", "console=ttyS0,115200 console=tty0")
        vm.wait_for(r"The agent runs on tty1\.", timeout=BOOT_TIMEOUT)
        # The serial shell comes up before the font is loaded and the agent has drawn on tty1.
        shell(vm, "systemctl is-system-running --wait", timeout=BOOT_TIMEOUT)
        yield vm
    finally:
        vm.close()


def shell(vm: VM, command: str, timeout: float = 300) -> str:
    """Run `command` in the serial root shell and return what it printed."""
    start = len(vm.output)
    vm.type(f"{command}; echo '==''done'\r")
    return vm.wait_for(r"(?s)\n(.*)==done", timeout=timeout, start=start).group(1)


def tty1_screen(vm: VM) -> list[str]:
    """The text on tty1, a string per row, read back from the kernel (/dev/vcsu1: each cell as the
    first code point its glyph is mapped to, so a character the font lacks reads as the code point
    of the replacement glyph)."""
    rows, cols = map(int, shell(vm, "stty -F /dev/tty1 size").split())
    # Each row escaped to ASCII on the way through the serial console.
    out = shell(vm, "python3 -c \"d = open('/dev/vcsu1', 'rb').read().decode('utf-32-le'); "
                    f"[print('row', i, d[i * {cols}:(i + 1) * {cols}].encode('unicode_escape').decode(), "
                    f"'|end') for i in range({rows})]\"")
    screen = {int(m[1]): m[2] for m in re.finditer(r"row (\d+) (.*) \|end", out)}
    assert sorted(screen) == list(range(rows)), f"Could not read tty1's {rows} rows back:\n{out}"
    return [screen[i].encode("ascii").decode("unicode_escape") for i in range(rows)]


def first_screen_on_tty1(vm: VM, timeout: float = 600) -> list[str]:
    """Wait until tty1 shows the agent's first screen and it has settled (the probe fills it in
    after the title), and return its text."""
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        screen = tty1_screen(vm)
        if re.search(AGENT_FIRST_SCREEN, screen[0]) and screen == previous:
            return screen
        previous = screen
        time.sleep(10)
    raise AssertionError(f"tty1 did not settle on the agent's first screen within {timeout:.0f} s; "
                         "it shows:\n" + "\n".join(previous or []))


def font_glyphs(vm: VM) -> list[set[int]]:
    """The font loaded on tty1, read back from the kernel: the code points of each glyph."""
    table = shell(vm, "setfont -C /dev/tty1 -O /tmp/tty1.psf && psfgettable /tmp/tty1.psf")
    glyphs = [{int(u, 16) for u in re.findall(r"U\+([0-9a-fA-F]{4,6})", line)}
              for line in table.splitlines() if line.startswith("0x")]
    assert len(glyphs) >= 256, f"Could not read the font on tty1:\n{table}"
    return glyphs


def test_vga_console_shows_the_agent(vga_vm, workdir):
    first_screen_on_tty1(vga_vm)
    png = workdir / "vga.png"
    width, height, pixels = vga_vm.screendump(png)
    if picture := os.environ.get("XENP2V_VGA_PICTURE"):
        shutil.copy(png, picture)
    lit = sum(1 for i in range(0, len(pixels), 3) if pixels[i:i + 3] != b"\0\0\0")
    assert lit > width * height // 200, f"The VGA console is blank: nothing drawn on tty1 ({png})."


def test_vga_console_draws_every_character_with_its_own_glyph(vga_vm):
    # A character the font lacks is drawn as the replacement glyph (a diamond: Textual issue 5011).
    screen = first_screen_on_tty1(vga_vm)
    glyphs = font_glyphs(vga_vm)
    replacement = next(g for g in glyphs if 0xFFFD in g)
    shown = {ord(c) for row in screen for c in row}
    assert shown & set(range(0x2500, 0x2580)), "No box lines on tty1:\n" + "\n".join(screen)
    wrong = sorted(shown & replacement) + sorted(shown - set().union(*glyphs))
    assert not wrong, ("tty1 shows characters the console font has no glyph for (drawn as "
                       f"{chr(0xFFFD)}): {[f'U+{c:04X}' for c in wrong]}; the screen:\n" + "\n".join(screen))


def test_console_font_has_the_glyphs_the_tui_draws(vga_vm):
    # The box-drawing and block elements that Textual draws (╭ ─ ▁ ▔ ▎ ▊) have glyphs of their own.
    glyphs = font_glyphs(vga_vm)
    mapped = set().union(*glyphs)
    for char in "╭─▁▔▎▊":
        assert ord(char) in mapped, f"The console font on tty1 has no glyph for {char}."


def test_every_tool_the_agent_calls_is_there(vga_vm):
    out = shell(vga_vm, f"for t in {TOOLS}; do command -v $t >/dev/null || echo MISSING $t; done")
    assert "MISSING" not in out


def test_wired_nic_gets_an_address_by_dhcp(vga_vm):
    out = shell(vga_vm, "for i in $(seq 60); do ip -4 -o addr show scope global | grep -q . && "
                        "break; sleep 1; done; ip -4 -o addr show scope global", timeout=180)
    assert "10.0.2.15/24" in out


def test_boot_medium_is_mounted_where_the_agent_reads_p2v_cfg(vga_vm):
    out = shell(vga_vm, "findmnt -n -o SOURCE,FSTYPE /run/live/medium")
    assert "iso9660" in out

