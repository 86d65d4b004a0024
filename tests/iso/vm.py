"""A small QEMU runner for the live ISO's boot tests: serial console captured and typed into,
monitor commands (screendump) over a unix socket."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

ANSI = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78cM])")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# A TCG boot on a busy machine takes minutes.
BOOT_TIMEOUT = 1500


class VM:
    """One QEMU machine booting `iso`, with `disks` attached as virtio disks.

    firmware is "bios" (SeaBIOS) or "uefi" (OVMF); medium is "cd" (the ISO as its CD) or "usb"
    (the ISO written to a USB stick: the same bytes as a USB disk); the serial console is this
    object's `wait_for` and `type`; everything it printed is also in `log`.
    """

    def __init__(self, iso: Path, workdir: Path, *, firmware: str = "bios", medium: str = "cd",
                 disks=(), memory_mb: int = 2048):
        self.log = workdir / f"serial-{firmware}-{medium}.log"
        self.monitor_path = workdir / f"monitor-{firmware}-{medium}.sock"
        self.output = bytearray()
        args = [
            "qemu-system-x86_64", "-machine", "q35",
            "-accel", os.environ.get("XENP2V_ACCEL", "tcg"),
            # One CPU: under TCG, two leave the kernel stuck at its timer check (MP-BIOS bug).
            "-m", str(memory_mb), "-smp", "1",
            "-display", "none", "-vga", "std",
            "-serial", "stdio",
            "-monitor", f"unix:{self.monitor_path},server=on,wait=off",
            "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
        ]
        if medium == "cd":
            args += ["-drive", f"file={iso},media=cdrom,readonly=on", "-boot", "order=d"]
        elif medium == "usb":
            args += ["-drive", f"file={iso},format=raw,if=none,id=stick,readonly=on",
                     "-device", "qemu-xhci", "-device", "usb-storage,drive=stick,bootindex=0"]
        else:
            raise ValueError(f"medium must be 'cd' or 'usb', not {medium!r}")
        if firmware == "uefi":
            vars_copy = workdir / "OVMF_VARS.fd"
            vars_copy.write_bytes(OVMF_VARS.read_bytes())
            args += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,file={vars_copy}"]
        for disk in disks:
            args += ["-drive", f"file={disk},format=raw,if=virtio"]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "wb") as log:
            while chunk := self.proc.stdout.read1(4096):
                self.output += chunk
                log.write(chunk)
                log.flush()

    def text(self, start: int = 0) -> str:
        """The serial output from byte `start` on, without terminal escapes."""
        return ANSI.sub(b"", bytes(self.output[start:])).decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """Wait until the serial output (from byte `start`) matches `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := regex.search(self.text(start)):
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        tail = self.text()[-3000:]
        raise AssertionError(f"{pattern!r} did not appear on the serial console within "
                             f"{timeout:.0f} s; the full log is {self.log}. Its end:\n{tail}")

    def type(self, keys: str) -> None:
        """Type on the serial console, a key at a time (the boot loaders read slowly)."""
        for key in keys:
            self.proc.stdin.write(key.encode())
            self.proc.stdin.flush()
            time.sleep(0.05)

    def monitor(self, command: str) -> str:
        """Run a QEMU monitor command and return what the monitor answered."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.monitor_path))
            sock.settimeout(60)
            answer = b""
            sock.sendall(command.encode() + b"\n")
            while not answer.rstrip().endswith(b"(qemu)") or answer.count(b"(qemu)") < 2:
                answer += sock.recv(4096)
            return answer.decode("utf-8", "replace")

    def screendump(self, png: Path) -> tuple[int, int, bytes]:
        """The VGA screen as a PNG file; returns its width, height and RGB bytes."""
        ppm = png.with_suffix(".ppm")
        self.monitor(f"screendump {ppm}")
        width, height, pixels = read_ppm(ppm)
        png.write_bytes(png_bytes(width, height, pixels))
        return width, height, pixels

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=10)


def start(iso: Path, workdir: Path, firmware: str, disks=(), medium: str = "cd") -> VM:
    """A machine booting the ISO, stopped at the boot menu."""
    vm = VM(iso, workdir, firmware=firmware, medium=medium, disks=disks)
    vm.wait_for(r"Migrate this machine", timeout=600)
    return vm


def edit_entry(vm: VM, hotkey: str, extra: str) -> None:
    """isolinux: select the entry by its hotkey, append to its kernel line (Tab), boot it."""
    vm.type(hotkey)
    vm.type("\t")
    vm.type(f" {extra}\r")


def read_ppm(path: Path) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes of a binary PPM (what QEMU's screendump writes)."""
    data = path.read_bytes()
    header = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", data)
    assert header, f"{path} is not an 8-bit binary PPM."
    return int(header[1]), int(header[2]), data[header.end():]


def png_bytes(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG of the pixels (QEMU 7.2's screendump writes only PPM)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    stride = width * 3
    rows = b"".join(b"\0" + rgb[y * stride:(y + 1) * stride] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
