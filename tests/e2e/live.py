"""The live ISO on the e2e machines: the unattended capture on the source's own hardware, and the
manual path's restore and repair on the VM's, both against a p2v-server on this host (10.0.2.2
from inside QEMU's user network).

The ISO is booted from its CD through its own boot menu (isolinux under BIOS, grub under UEFI):
the serial console entry, with the p2v.* flags appended to its kernel line, and p2v.post=poweroff,
so QEMU exits when the agent is done; what the agent printed is in the serial log.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(HERE.parent)]

from boot import hardware  # noqa: E402
from support import P2VServer  # noqa: E402
from tests.iso.vm import BOOT_TIMEOUT, VM, edit_entry  # noqa: E402

AGENT_TIMEOUT = 3600      # capture or restore+repair of a 3 GiB disk under TCG on a loaded box
# What the unattended agent prints last (agent/unattended.py): its outcome, then p2v.post's sentence.
REPAIRED = re.compile(r"Repair (ok|failed): .*")
STOPPED = re.compile(r"Stopped: .*")
AGENT_STARTED = r"Looking at this machine's hardware"
TUI_STARTED = r"xenp2v\s+\|\s+Start"      # the TUI's first screen (tests/iso/test_boot.py)
# Where the agent's console says one step ended and the next began: (the step that ends, pattern).
STEPS = (("boot", AGENT_STARTED.encode()),
         ("probe", rb"\n\S+: (capture|restore) \d"),
         ("transfer", rb"\nJob \S+:|\nFound .* family"),
         ("repair", rb"\nRepair (ok|failed):"))


@dataclass
class Phase:
    ok: bool
    why: str
    seconds: float
    log: Path
    steps: str = ""          # how long each step took, as the console showed them

    def __str__(self) -> str:
        return f"{'done' if self.ok else 'failed'}: {self.why} ({self.seconds:.0f} s" + \
            (f": {self.steps})" if self.steps else ")")


class LiveMachine(VM):
    """An e2e machine (boot.hardware) with the ISO in its CD drive, booted from it; the serial
    console is tests/iso's: typed into, read back, logged."""

    def __init__(self, iso: Path, images: list[Path], controller: str, nic: str, firmware: str,
                 log: Path, *, snapshot: bool):
        # VM's own __init__ builds the ISO tests' q35 machine; this is the e2e hardware instead.
        self.log = log
        self.output = bytearray()
        self.started = time.monotonic()
        self.arrivals: list[tuple[float, int]] = []   # (when, output length then)
        argv = [*hardware(images, controller, nic, firmware, log.parent, snapshot=snapshot,
                          memory_mb=2048, network=""),
                "-drive", f"file={iso},media=cdrom,readonly=on", "-boot", "order=d",
                "-serial", "stdio"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "wb") as log:
            while chunk := self.proc.stdout.read1(4096):
                self.output += chunk
                self.arrivals.append((time.monotonic(), len(self.output)))
                log.write(chunk)
                log.flush()

    def steps(self) -> str:
        """Each step's seconds (STEPS), from the power-on to the power-off."""
        text, out, last = bytes(self.output), [], 0.0
        for name, pattern in STEPS:
            m = re.search(pattern, text)
            if m:
                at = next(t for t, end in self.arrivals if end >= m.end()) - self.started
                out.append(f"{name} {at - last:.0f} s")
                last = at
        end = (self.arrivals[-1][0] - self.started) if self.arrivals else last
        return ", ".join(out + [f"power off {max(0.0, end - last):.0f} s"])

    def boot_serial_entry(self, firmware: str, flags: str) -> None:
        """At the ISO's boot menu: the serial console entry with `flags` added to its kernel line."""
        self.wait_for(r"Migrate this machine", timeout=600)
        if firmware == "bios":
            edit_entry(self, "s", flags)
        else:
            # grub: v moves down to the serial entry, e edits it; the editor shows a setparams
            # line and a blank one above the linux line: Ctrl-N twice, Ctrl-E to its end, Ctrl-X.
            self.type("v")
            self.type("e")
            time.sleep(2)
            self.type("\x0e\x0e\x05")
            self.type(f" {flags}")
            self.type("\x18")

    def wait_off(self, timeout: float) -> bool:
        """Wait for the machine to power itself off; False when it is still running at `timeout`."""
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


def server_flags(server: P2VServer) -> str:
    return (f"p2v.server=https://10.0.2.2:{server.port} p2v.token={server.token} "
            f"p2v.fingerprint={server.fingerprint} p2v.unattended p2v.post=poweroff")


def _agent_run(iso: Path, images: list[Path], controller: str, nic: str, firmware: str, log: Path,
               flags: str, snapshot: bool) -> tuple[bool, str, float, str]:
    """Boot the ISO with `flags`, wait until it powers off; returns (powered off, console text,
    seconds, each step's seconds)."""
    started = time.monotonic()
    vm = LiveMachine(iso, images, controller, nic, firmware, log, snapshot=snapshot)
    try:
        vm.boot_serial_entry(firmware, flags)
        if vm.wait_for(f"{AGENT_STARTED}|{TUI_STARTED}", timeout=BOOT_TIMEOUT)[0].startswith("xenp2v"):
            return False, ("the agent started its TUI, not the unattended run: the flags did not "
                           "reach the kernel line"), time.monotonic() - started, ""
        off = vm.wait_off(AGENT_TIMEOUT)
    except AssertionError as e:
        return False, str(e).splitlines()[0], time.monotonic() - started, ""
    finally:
        vm.close()
    return off, vm.text(), time.monotonic() - started, vm.steps()


def jobs(server: P2VServer) -> list[dict]:
    return json.loads(subprocess.run(
        [sys.executable, "-m", "server.cli", "jobs", "--json", "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, check=True, cwd=REPO).stdout)


def capture(iso: Path, sources: list[Path], firmware: str, server: P2VServer, name: str,
            log: Path) -> tuple[Phase, str | None]:
    """The source machine (its disks on AHCI, never written; its e1000) boots the ISO and captures
    every disk to the server. Returns the phase and the sealed job's id."""
    disks = ",".join(f"sd{chr(ord('a') + i)}" for i in range(len(sources)))
    flags = f"{server_flags(server)} p2v.mode=capture p2v.disks={disks} p2v.name={name}"
    off, text, seconds, steps = _agent_run(iso, sources, "ahci", "source", firmware, log, flags,
                                           snapshot=True)
    job = next((j for j in jobs(server) if j["name"] == name), None)
    if job and all(d["state"] == "sealed" for d in job["disks"]) and len(job["disks"]) == len(sources):
        return Phase(True, f"job {job['id']} sealed ({len(job['disks'])} disk(s))", seconds, log,
                     steps), job["id"]
    return Phase(False, _why(off, text, "no sealed job on the server"), seconds, log, steps), None


def restore_and_repair(iso: Path, targets: list[Path], controller: str, firmware: str,
                       server: P2VServer, job: str, log: Path) -> Phase:
    """The VM (blank disks on `controller`, rtl8139 with the source's MAC) boots the ISO with
    p2v.mode=repair and the job: the agent restores the job onto the disks, repairs, reports."""
    flags = f"{server_flags(server)} p2v.mode=repair p2v.job={job}"
    off, text, seconds, steps = _agent_run(iso, targets, controller, "vm", firmware, log, flags,
                                           snapshot=False)
    m = REPAIRED.search(text)
    if off and m and m[1] == "ok":
        return Phase(True, m[0].strip(), seconds, log, steps)
    return Phase(False, _why(off, text, "no repair outcome on the console"), seconds, log, steps)


def _why(off: bool, text: str, otherwise: str) -> str:
    m = STOPPED.search(text) or REPAIRED.search(text)
    if m:
        return m[0].strip()[:300]
    return otherwise if off else f"the machine did not power off ({otherwise})"
