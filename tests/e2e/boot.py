"""Boot a disk image under QEMU and read the serial line for the guest's marker or its failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ACCEL = os.environ.get("XENP2V_ACCEL", "tcg")
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
MAC = "52:54:00:12:34:56"   # the VM keeps the source's MAC, as XenServer's VIFs do
MARKER = re.compile(r"XENP2V-BOOT-OK root=(\S+) net=(\S+)")
# What a boot that cannot find its root prints (initramfs-tools), or a kernel that gives up.
FAILURES = ("Gave up waiting for root", "ALERT!", "Kernel panic", "emergency mode")

# Disk controllers: the source's own (AHCI), XenServer's emulated IDE, virtio.
CONTROLLERS = {
    "ahci": lambda img: ["-drive", f"file={img},format=raw,if=none,id=d0",
                         "-device", "ahci,id=ahci", "-device", "ide-hd,drive=d0,bus=ahci.0,serial=SRC0001"],
    "ide": lambda img: ["-drive", f"file={img},format=raw,if=ide"],
    "virtio": lambda img: ["-drive", f"file={img},format=raw,if=virtio"],
}
# NICs: the source's e1000 in slot 3 (ens3); the VM's emulated rtl8139 in slot 4 (ens4).
NICS = {
    "source": ["-device", f"e1000,netdev=n0,mac={MAC},addr=03"],
    "vm": ["-device", f"rtl8139,netdev=n0,mac={MAC},addr=04"],
}


@dataclass
class Boot:
    ok: bool
    root: str | None
    net: str | None
    seconds: float
    why: str
    log: Path

    def __str__(self) -> str:
        return (f"up root={self.root} net={self.net}" if self.ok else f"failed: {self.why}") + \
            f" ({self.seconds:.0f} s)"


def boot(image: Path, controller: str, nic: str, firmware: str, log: Path, timeout: int = 600) -> Boot:
    """Boot `image` (never written: -snapshot) until the marker, a known failure, or `timeout`."""
    with tempfile.TemporaryDirectory(prefix="xenp2v-e2e-") as tmp:
        argv = ["qemu-system-x86_64", "-machine", f"pc,accel={ACCEL}", "-m", "1024", "-smp", "1",
                "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot", "-snapshot",
                "-serial", f"file:{log}", "-netdev", "user,id=n0,restrict=on",
                *CONTROLLERS[controller](image), *NICS[nic]]
        if firmware == "uefi":
            vars_copy = Path(tmp) / "vars.fd"
            shutil.copy(OVMF_VARS, vars_copy)
            argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,file={vars_copy}"]
        log.unlink(missing_ok=True)
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while True:
                elapsed = time.monotonic() - started
                text = log.read_text(errors="replace") if log.exists() else ""
                m = MARKER.search(text)
                if m:
                    return Boot(True, m[1], m[2], elapsed, "marker seen", log)
                failure = next((f for f in FAILURES if f in text), None)
                if failure:
                    return Boot(False, None, None, elapsed, failure, log)
                if proc.poll() is not None:
                    return Boot(False, None, None, elapsed,
                                f"QEMU exited ({proc.returncode}): {proc.stderr.read().strip()[-300:]}", log)
                if elapsed > timeout:
                    return Boot(False, None, None, elapsed, f"no marker within {timeout} s", log)
                time.sleep(2)
        finally:
            proc.kill()
            proc.wait()
