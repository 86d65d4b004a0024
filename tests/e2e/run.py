"""`make e2e`: real boots of source machines before and after their migration.

Per scenario: the source boots on its own hardware (AHCI, e1000 as ens3) and fails on the VM's
controllers (IDE as XenServer emulates it, and virtio). Then, by `--path`:

- `iso` (the product's manual path, through the built ISO): the source machine boots the ISO and
  captures its disks unattended to a p2v-server on this host; for IDE and for virtio in turn, a VM
  with blank disks of the source's sizes boots the ISO with `p2v.mode=repair p2v.job=…`, which
  restores the job onto them, repairs and reports; the VM's disks then boot alone.
- `host` (a fast check of the repair alone): a copy of the source disks, attached here as loop
  devices, is repaired with `p2v-agent repair --disk`, repaired again (which must change nothing).

After the repair the disks must boot on IDE and on virtio up to the guest's marker, with the
network up on the VM's NIC (rtl8139, ens4). A table of outcomes and phase times ends the run.

Usage: run.py [--path iso|host] [--iso FILE] [SCENARIO ...]   (default: all; see sources.LAYOUTS)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import live  # noqa: E402
from boot import ACCEL, boot  # noqa: E402
from sources import ADDRESS, CACHE, LAYOUTS, SOURCE_NIC, source_images  # noqa: E402
from support import P2VServer  # noqa: E402

REPO = HERE.parents[1]
AGENT = REPO / ".venv/bin/p2v-agent"
VM_NIC = "ens4"
BOOT_TIMEOUT = 900
CONTROLLERS = ("ide", "virtio")
# The table's columns: (row key, heading), in the order the phases run.
COLUMNS = {
    "iso": (("own-ahci", "boots on own hw"), ("before-ide", "fails on IDE"),
            ("before-virtio", "fails on virtio"), ("capture", "capture (ISO)"),
            ("repair-ide", "restore+repair IDE"), ("after-ide", "boots after (IDE)"),
            ("repair-virtio", "restore+repair virtio"), ("after-virtio", "boots after (virtio)")),
    "host": (("own-ahci", "boots on own hw"), ("before-ide", "fails on IDE"),
             ("before-virtio", "fails on virtio"), ("repair", "repair (host)"),
             ("after-ide", "boots after (IDE)"), ("after-virtio", "boots after (virtio)")),
}


def say(text: str) -> None:
    print(text, flush=True)


def host_repair(images: list[Path], log: Path, vm_nic: str = VM_NIC) -> tuple[bool, str]:
    """Attach the images as loop devices, repair twice (the source's NIC to be `vm_nic`); the
    second run must change nothing."""
    loops = [subprocess.run(["losetup", "--show", "-f", "-P", str(image)], capture_output=True,
                            text=True, check=True).stdout.strip() for image in images]
    try:
        outputs = []
        for attempt in (1, 2):
            proc = subprocess.run([str(AGENT), "repair", "--disk", loops[0], "--nic", f"{SOURCE_NIC}={vm_nic}"],
                                  capture_output=True, text=True, timeout=1800)
            outputs.append(f"--- run {attempt} (exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
            if proc.returncode != 0:
                log.write_text("\n".join(outputs))
                return False, f"repair run {attempt} failed: {proc.stderr.strip()[-300:]}"
        log.write_text("\n".join(outputs))
        if "Nothing to change" not in outputs[1]:
            return False, "the second repair changed something"
        return True, "repaired; second run changed nothing"
    finally:
        for loop in loops:
            subprocess.run(["partx", "-d", loop], capture_output=True)
            subprocess.run(["losetup", "-d", loop], capture_output=True)


class Scenario:
    """One scenario's run: each phase's outcome and time goes into `row`, keyed as COLUMNS."""

    def __init__(self, name: str, work: Path):
        self.name, self.work = name, work
        self.firmware = LAYOUTS[name].firmware
        self.row: dict = {"scenario": name}

    def record(self, key: str, ok: bool, seconds: float, what: str) -> bool:
        self.row[key] = (ok, seconds)
        say(f"  {self.name} {key}: {'PASS' if ok else 'FAIL'} — {what}")
        return ok

    def check(self, key: str, images: list[Path], controller: str, nic: str, want_up: bool,
              vm_name: str = VM_NIC) -> bool:
        """Boot and compare with what is wanted: up or not, and up with the source's address on
        the NIC (`vm_name`: the name the repair gave the VM's NIC, on the VM)."""
        result = boot(images, controller, nic, self.firmware, self.work / f"{self.name}-{key}.serial",
                      timeout=BOOT_TIMEOUT)
        want_net = f"{SOURCE_NIC if nic == 'source' else vm_name}:{ADDRESS}"
        good = result.ok == want_up and (not want_up or result.net == want_net)
        return self.record(key, good, result.seconds, str(result))

    def sources(self) -> list[Path]:
        t = time.monotonic()
        images = source_images(self.name, say)
        self.row["build"] = time.monotonic() - t
        self.check("own-ahci", images, "ahci", "source", True)
        self.check("before-ide", images, "ide", "vm", False)
        self.check("before-virtio", images, "virtio", "vm", False)
        return images

    def blank_disks(self, label: str) -> list[Path]:
        disks = []
        for i, size in enumerate(LAYOUTS[self.name].sizes()):
            disk = self.work / f"{self.name}-{label}-{i + 1}.img"
            disk.unlink(missing_ok=True)
            with open(disk, "wb") as f:
                f.truncate(size)
            disks.append(disk)
        return disks

    def host_path(self, sources: list[Path]) -> None:
        vm = self.blank_disks("vm")
        try:
            t = time.monotonic()
            for source, disk in zip(sources, vm):
                shutil.copyfile(source, disk)
            ok, why = host_repair(vm, self.work / f"{self.name}-repair.log")
            if self.record("repair", ok, time.monotonic() - t, why):
                for controller in CONTROLLERS:
                    self.check(f"after-{controller}", vm, controller, "vm", True)
        finally:
            for disk in vm:
                disk.unlink(missing_ok=True)

    def iso_path(self, sources: list[Path], iso: Path, server: P2VServer) -> None:
        phase, job = live.capture(iso, sources, self.firmware, server, f"e2e-{self.name}",
                                  self.work / f"{self.name}-capture.serial")
        if not self.record("capture", phase.ok, phase.seconds, str(phase)):
            return
        for controller in CONTROLLERS:
            vm = self.blank_disks(controller)
            try:
                phase = live.restore_and_repair(iso, vm, controller, self.firmware, server, job,
                                                self.work / f"{self.name}-repair-{controller}.serial")
                log = self.work / f"{self.name}-repair-{controller}.serial"
                if self.record(f"repair-{controller}", phase.ok, phase.seconds, str(phase)):
                    self.check(f"after-{controller}", vm, controller, "vm", True, planned_name(log))
            finally:
                for disk in vm:
                    disk.unlink(missing_ok=True)


def planned_name(serial_log: Path) -> str:
    """The name the repair's plan says the guest will use for the source's NIC on the VM (the VM
    keeps the source's MAC, so the repair may pin the old name rather than take the slot name)."""
    text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    found = re.search(rf"^\s*{re.escape(SOURCE_NIC)}\b.*?-> VM .*?, named (\S+) by the guest", text,
                      re.MULTILINE)
    return found.group(1) if found else VM_NIC


def table(rows: list[dict], path: str) -> str:
    columns = COLUMNS[path]
    head = ["scenario", "build", *(title for _, title in columns), "total"]
    lines = []
    for row in rows:
        cells = [row["scenario"], f"{row.get('build', 0):.0f}s"]
        for key, _ in columns:
            value = row.get(key)
            cells.append("-" if value is None else f"{'PASS' if value[0] else 'FAIL'} {value[1]:.0f}s")
        cells.append(f"{row['total']:.0f}s")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def passed(row: dict, path: str) -> bool:
    return all(row.get(key, (False,))[0] for key, _ in COLUMNS[path])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", choices=("iso", "host"), default="iso",
                        help="migrate through the built ISO (default), or repair on this host only")
    parser.add_argument("--iso", type=Path, default=REPO / "out/xenp2v.iso", help="the live ISO")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"default: all ({', '.join(LAYOUTS)})")
    args = parser.parse_args(argv)
    # A CI timeout's SIGTERM unwinds like Ctrl-C: QEMU and the server are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = args.scenarios or list(LAYOUTS)
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        say(f"Unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}.")
        return 2
    if args.path == "iso" and not args.iso.is_file():
        say(f"No ISO at {args.iso}: build it with 'make iso', or run the host-side check with "
            "'make e2e E2E_PATH=host'.")
        return 2
    work = CACHE / "runs" / time.strftime("%Y%m%dT%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    say(f"xenp2v e2e: path {args.path}, QEMU accel {ACCEL}, load {os.getloadavg()[0]:.1f}, "
        f"scenarios {' '.join(names)}" + (f", ISO {args.iso}" if args.path == "iso" else ""))
    server = None
    if args.path == "iso":
        server = P2VServer(work / "p2v-data").start()
    rows = []
    try:
        for name in names:
            say(f"== {name}")
            started = time.monotonic()
            run = Scenario(name, work)
            try:
                sources = run.sources()
                if args.path == "iso":
                    run.iso_path(sources, args.iso, server)
                else:
                    run.host_path(sources)
            finally:
                run.row["total"] = time.monotonic() - started
                rows.append(run.row)
    finally:
        if server:
            server.stop()
            # The images are the sources' size; the logs stay.
            for image in (work / "p2v-data" / "jobs").glob("*/disks/*.img"):
                image.unlink()
    say(f"\nxenp2v e2e ({args.path} path, {ACCEL}): load {os.getloadavg()[0]:.1f} at the end")
    say(table(rows, args.path))
    say(f"serial logs and agent output: {work}")
    return 0 if all(passed(row, args.path) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
