"""Boots the built ISO under QEMU, BIOS and UEFI, through its own boot menus, and watches the serial
console: the agent starts by itself on the console the kernel line names."""

from __future__ import annotations

import os
import shutil
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


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_serial_entry_starts_the_agent_on_the_serial_console(iso, workdir, firmware):
    vm = start(iso, workdir, firmware)
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


def test_vga_console_shows_the_agent(vga_vm, workdir):
    # Give the agent on tty1 time to draw its first screen (Textual starts slowly under TCG).
    shell(vga_vm, "sleep 60")
    png = workdir / "vga.png"
    width, height, pixels = vga_vm.screendump(png)
    if picture := os.environ.get("XENP2V_VGA_PICTURE"):
        shutil.copy(png, picture)
    lit = sum(1 for i in range(0, len(pixels), 3) if pixels[i:i + 3] != b"\0\0\0")
    assert lit > width * height // 200, f"The VGA console is blank: nothing drawn on tty1 ({png})."


def test_console_font_has_the_glyphs_the_tui_draws(vga_vm):
    # The font loaded on tty1, read back from the kernel: its table maps the box-drawing and
    # block elements that Textual draws (╭ ─ ▁ ▔ ▎ ▊) to glyphs.
    table = shell(vga_vm, "setfont -C /dev/tty1 -O /tmp/tty1.psf && psfgettable /tmp/tty1.psf")
    for char in "╭─▁▔▎▊":
        assert f"U+{ord(char):04X}" in table.upper(), (
            f"The console font on tty1 has no glyph for {char}.")


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

