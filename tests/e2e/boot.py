"""Boot a disk image under QEMU and read the serial line for the guest's marker or its failure.

`hardware()` is the one description of the machines the e2e tests use (the source's own, and the
VM's): `boot()` uses it for the disks alone, `iso.py` for the same machines with the live ISO.
"""

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
NEW_MAC = "52:54:00:e2:e2:01"  # a VM's MAC when the server gave it new ones (--new-macs)
MARKER = re.compile(r"XENP2V-BOOT-OK root=(\S+) net=(\S+)")
# What a boot that cannot find its root prints (initramfs-tools), or a kernel that gives up.
FAILURES = ("Gave up waiting for root", "ALERT!", "Kernel panic", "emergency mode")


def _ahci(drives: list[str]) -> list[str]:
    # The source's disks carry serials, so that their by-id names are stable (sources.BY_ID).
    args = ["-device", "ahci,id=ahci"]
    for i, drive in enumerate(drives):
        args += ["-drive", f"{drive},if=none,id=d{i}",
                 "-device", f"ide-hd,drive=d{i},bus=ahci.{i},serial=SRC{i + 1:04d}"]
    return args


# Disk controllers: the source's own (AHCI), XenServer's emulated IDE (BIOS profile) and NVMe
# (XCP-ng's UEFI profile), virtio.
CONTROLLERS = {
    "ahci": _ahci,
    "ide": lambda drives: [a for i, d in enumerate(drives) for a in ("-drive", f"{d},if=ide,index={i}")],
    "nvme": lambda drives: [a for i, d in enumerate(drives) for a in
                            ("-drive", f"{d},if=none,id=n{i}", "-device", f"nvme,drive=n{i},serial=VM{i + 1:04d}")],
    "virtio": lambda drives: [a for d in drives for a in ("-drive", f"{d},if=virtio")],
}
# NICs: the source's e1000 in slot 3 (ens3); the VM's emulated rtl8139 in slot 4 (ens4), or the
# e1000 of XCP-ng's UEFI profile in the same slot.
NICS = {
    "source": ["-device", f"e1000,netdev=n0,mac={MAC},addr=03"],
    "vm": ["-device", f"rtl8139,netdev=n0,mac={MAC},addr=04"],
    "vm-e1000": ["-device", f"e1000,netdev=n0,mac={MAC},addr=04"],
}


def hardware(images: list[Path], controller: str, nic: str, firmware: str, tmp: Path, *,
             snapshot: bool = True, memory_mb: int = 1024, network: str = "restrict=on",
             mac: str = MAC) -> list[str]:
    """QEMU's arguments for one of the e2e machines: `images` on `controller`, the `nic` (with
    `mac`), and the firmware (bios: SeaBIOS, uefi: OVMF with its own copy of the variables, kept
    in `tmp`)."""
    drives = [f"file={image},format=raw" + (",snapshot=on" if snapshot else "") for image in images]
    argv = ["qemu-system-x86_64", "-machine", f"pc,accel={ACCEL}", "-m", str(memory_mb), "-smp", "1",
            "-nodefaults", "-display", "none", "-monitor", "none",
            "-netdev", f"user,id=n0{',' + network if network else ''}",
            *CONTROLLERS[controller](drives), *(a.replace(MAC, mac) for a in NICS[nic])]
    if firmware == "uefi":
        vars_copy = tmp / "vars.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={vars_copy}"]
    return argv


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


def boot(images: Path | list[Path], controller: str, nic: str, firmware: str, log: Path,
         timeout: int = 600, mac: str = MAC, also: str | None = None) -> Boot:
    """Boot the disk(s) (never written: snapshot) until the marker, a known failure, or `timeout`.
    `also`: a line the guest prints too, maybe after the marker: waited for up to 120 s more."""
    images = [images] if isinstance(images, Path) else list(images)
    with tempfile.TemporaryDirectory(prefix="xenp2v-e2e-") as tmp:
        argv = [*hardware(images, controller, nic, firmware, Path(tmp), mac=mac),
                "-no-reboot", "-serial", f"file:{log}"]
        log.unlink(missing_ok=True)
        started = time.monotonic()
        marked = 0.0
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while True:
                elapsed = time.monotonic() - started
                text = log.read_text(errors="replace") if log.exists() else ""
                m = MARKER.search(text)
                if m and (also is None or also in text or elapsed > marked + 120):
                    return Boot(True, m[1], m[2], elapsed, "marker seen", log)
                marked = marked if m else elapsed
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
