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

from boot import MAC, hardware  # noqa: E402
from support import P2VServer  # noqa: E402
from tests.iso.vm import BOOT_TIMEOUT, VM, edit_entry  # noqa: E402

AGENT_TIMEOUT = 3600      # capture or restore+repair of a 3 GiB disk under TCG on a loaded box
# A guest whose console has been silent this long, or whose agent said this many times that its
# transfer does not move (agent.transfer.progress.Watchdog: every 5 minutes), is stuck: given up early.
SILENT_LIMIT = 900
STALL_REPORTS = 3
STALLED = "No progress for "
GIVEN_UP = "Stopped: given up: "   # added to the console text of a machine given up as stuck
POLL = 10.0               # seconds between looks at a running machine
# What the unattended agent prints last (agent/unattended.py): its outcome, then p2v.post's sentence.
REPAIRED = re.compile(r"Repair (ok|failed): .*")
STOPPED = re.compile(r"Stopped: .*")
# The manual path's boot line an unattended capture prints last (unattended.manual_boot_line), the
# same the TUI's Done screen shows: all a blank VM needs to restore and repair.
BOOT_LINE = re.compile(r"^(p2v\.server=\S+ .*p2v\.mode=restore)\s*$", re.MULTILINE)
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
    boot_line: str = ""      # a capture's: the manual path's boot line it printed (BOOT_LINE)
    first_try: str = ""      # a second try's: how the first one, given up as stuck, ended

    @property
    def stuck(self) -> str:
        """Why the machine was given up as stuck ('' when it was not: done, or failed otherwise)."""
        return self.why[len(GIVEN_UP):] if self.why.startswith(GIVEN_UP) else ""

    def __str__(self) -> str:
        return f"{'done' if self.ok else 'failed'}: {self.why} ({self.seconds:.0f} s" + \
            (f": {self.steps})" if self.steps else ")") + \
            (f" (second try; the first was given up: {self.first_try})" if self.first_try else "")


class LiveMachine(VM):
    """An e2e machine (boot.hardware) with the ISO in its CD drive, booted from it; the serial
    console is tests/iso's: typed into, read back, logged."""

    def __init__(self, iso: Path, images: list[Path], controller: str, nic: str, firmware: str,
                 log: Path, *, snapshot: bool, mac: str = MAC):
        # VM's own __init__ builds the ISO tests' q35 machine; this is the e2e hardware instead.
        self.log = log
        self.output = bytearray()
        self.started = time.monotonic()
        self.arrivals: list[tuple[float, int]] = []   # (when, output length then)
        argv = [*hardware(images, controller, nic, firmware, log.parent, snapshot=snapshot,
                          memory_mb=2048, network="", mac=mac),
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
        """Wait for the machine to power itself off; False when it is still running at `timeout`
        or looks stuck (stuck() says why)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.proc.wait(timeout=min(POLL, max(0.1, deadline - time.monotonic())))
                return True
            except subprocess.TimeoutExpired:
                if self.stuck():
                    return False
        return False

    def stuck(self) -> str:
        """Why this machine looks stuck ('' if it does not): a silent console, or an agent that
        keeps saying its transfer does not move."""
        last = self.arrivals[-1][0] if self.arrivals else self.started
        if time.monotonic() - last > SILENT_LIMIT:
            return f"its console was silent for {SILENT_LIMIT // 60} minutes"
        reports = bytes(self.output).count(STALLED.encode())
        if reports >= STALL_REPORTS:
            return f"the agent said {reports} times that its transfer does not move"
        return ""


def server_flags(server: P2VServer) -> str:
    return (f"p2v.server=https://10.0.2.2:{server.port} p2v.token={server.token} "
            f"p2v.fingerprint={server.fingerprint} p2v.unattended p2v.post=poweroff")


def _agent_run(iso: Path, images: list[Path], controller: str, nic: str, firmware: str, log: Path,
               flags: str, snapshot: bool, mac: str = MAC) -> tuple[bool, str, float, str]:
    """Boot the ISO with `flags`, wait until it powers off; returns (powered off, console text,
    seconds, each step's seconds)."""
    started = time.monotonic()
    vm = LiveMachine(iso, images, controller, nic, firmware, log, snapshot=snapshot, mac=mac)
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
    text = vm.text()
    stuck = "" if off else vm.stuck()
    if stuck:
        text += f"\n{GIVEN_UP}{stuck}.\n"
    return off, text, time.monotonic() - started, vm.steps()


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
    line = BOOT_LINE.search(text)
    if job and all(d["state"] == "sealed" for d in job["disks"]) and len(job["disks"]) == len(sources):
        if not line:
            return Phase(False, f"job {job['id']} sealed, but the console shows no boot line for "
                         "the manual path", seconds, log, steps), None
        return Phase(True, f"job {job['id']} sealed ({len(job['disks'])} disk(s))", seconds, log,
                     steps, line[1]), job["id"]
    return Phase(False, _why(off, text, "no sealed job on the server"), seconds, log, steps), None


def restore_and_repair(iso: Path, targets: list[Path], controller: str, firmware: str,
                       server: P2VServer, job: str, log: Path, mac: str = MAC,
                       boot_line: str | None = None) -> Phase:
    """The VM (blank disks on `controller`, rtl8139 with `mac`: the source's unless the VM got a
    new one) boots the ISO with `boot_line` (the capture's, as the Done screen shows it) and
    nothing else but p2v.post=poweroff, else with p2v.mode=repair, the job and the server's own
    token: the agent restores the job onto the disks, repairs, reports."""
    flags = (f"{boot_line} p2v.post=poweroff" if boot_line else
             f"{server_flags(server)} p2v.mode=repair p2v.job={job}")
    off, text, seconds, steps = _agent_run(iso, targets, controller, "vm", firmware, log, flags,
                                           snapshot=False, mac=mac)
    m = REPAIRED.search(text)
    if off and m and m[1] == "ok":
        return Phase(True, m[0].strip(), seconds, log, steps)
    return Phase(False, _why(off, text, "no repair outcome on the console"), seconds, log, steps)


def _why(off: bool, text: str, otherwise: str) -> str:
    m = STOPPED.search(text) or REPAIRED.search(text)
    if m:
        return m[0].strip()[:300]
    return otherwise if off else f"the machine did not power off ({otherwise})"
