"""`make e2e`: real boots of source machines before and after their migration.

Per scenario: the source boots on its own hardware (AHCI, e1000 as ens3) and fails on the VM's
controllers (IDE as XenServer emulates it, and virtio). Then, by `--path`:

- `iso` (the product's manual path, through the built ISO): the source machine boots the ISO and
  captures its disks unattended to a p2v-server on this host; for IDE and for virtio in turn, a VM
  with blank disks of the source's sizes boots the ISO, which restores the job onto them, repairs
  and reports; the VM's disks then boot alone. The first VM gets nothing but the boot line the
  capture printed (the Done screen's: the job's own token, the fingerprint); that token ends with
  its repair, so the second gets `p2v.mode=repair p2v.job=…` and the server's token.
- `host` (a fast check of the repair alone): a copy of the source disks, attached here as loop
  devices, is repaired with `p2v-agent repair --disk`, repaired again (which must change nothing).

After the repair the disks must boot on IDE and on virtio up to the guest's marker, with the
network up on the VM's NIC (rtl8139, ens4). A table of outcomes and phase times ends the run.

The network scenarios (sources.NET_VARIANTS: a static address by MAC, DHCP by MAC, a config by an
alternative name) run on the host path only, their VM with a MAC other than the source's
(boot.NEW_MAC), as the server's --new-macs makes it: the repair, run from outside the VM, is told
the job as `repair --job` is (repairjob.py): the source's NIC as the source showed it on its own
hardware (name, MAC, alternative names, from `ip link`), and the VM's NIC as the server's record
holds it (VIF 0 with the new MAC). Plain QEMU is no Xen: the VM's NIC is the emulated rtl8139,
ens4, not the vif enX0, so the repair is told that name by hand (--nic), except where the guest
names the NIC itself by its MAC. They boot on IDE only (the disks are bios-mbr's), and the NIC must
come up on the first boot with the variant's address, static or leased as the variant says.

Usage: run.py [--path iso|host] [--iso FILE] [SCENARIO ...]   (default: all; see sources.LAYOUTS)
"""

from __future__ import annotations

import argparse
import json
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
from boot import ACCEL, NEW_MAC, boot  # noqa: E402
from sources import (ADDRESS, CACHE, LAYOUTS, MOUNT, NET_VARIANTS, SCENARIOS, SOURCE_NIC, marker_name,  # noqa: E402
                     source_images, variant)
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


def host_repair(images: list[Path], log: Path, vm_nic: str = VM_NIC,
                command: list[str] | None = None) -> tuple[bool, str]:
    """Attach the images as loop devices, repair twice (the source's NIC to be `vm_nic`, every
    disk named, the boot disk first; or run `command`, "{disk}" in it the first loop device);
    the second run must change nothing."""
    loops = [subprocess.run(["losetup", "--show", "-f", "-P", str(image)], capture_output=True,
                            text=True, check=True).stdout.strip() for image in images]
    try:
        outputs = []
        for attempt in (1, 2):
            argv = [a.replace("{disk}", loops[0]) for a in command] if command else \
                [str(AGENT), "repair", *(a for loop in loops for a in ("--disk", loop)),
                 "--nic", f"{SOURCE_NIC}={vm_nic}"]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
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
        self.firmware = variant(name).firmware
        self.net = NET_VARIANTS.get(name)
        self.row: dict = {"scenario": name}

    def record(self, key: str, ok: bool, seconds: float, what: str, log: Path | None = None) -> bool:
        """Note a phase's outcome; a failed one's console tail is printed too (a CI run's output
        is all that is left of its machines)."""
        self.row[key] = (ok, seconds)
        say(f"  {self.name} {key}: {'PASS' if ok else 'FAIL'} — {what}")
        if not ok and log is not None and log.exists():
            say(f"  the last lines of {log.name}:")
            for line in console_tail(log):
                say(f"    | {line}")
        return ok

    def check(self, key: str, images: list[Path], controller: str, nic: str, want_up: bool,
              vm_name: str = VM_NIC) -> bool:
        """Boot and compare with what is wanted: up or not, and up with the source's address on
        the NIC (`vm_name`: the name the repair gave the VM's NIC, on the VM)."""
        result = boot(images, controller, nic, self.firmware, self.work / f"{self.name}-{key}.serial",
                      timeout=BOOT_TIMEOUT)
        want_net = f"{SOURCE_NIC if nic == 'source' else vm_name}:{ADDRESS}"
        good = result.ok == want_up and (not want_up or result.net == want_net)
        what = str(result)
        points = LAYOUTS[self.name].mounted if self.name in LAYOUTS else ()
        if result.ok and points:
            right, said = mounts_right(result.log, points)
            good, what = good and right, f"{what}; {said}"
        return self.record(key, good, result.seconds, what)

    def sources(self) -> list[Path]:
        t = time.monotonic()
        images = source_images(self.name, say)
        self.row["build"] = time.monotonic() - t
        if self.net:
            return self.net_sources(images)
        self.check("own-ahci", images, "ahci", "source", True)
        self.check("before-ide", images, "ide", "vm", False)
        self.check("before-virtio", images, "virtio", "vm", False)
        return images

    # --- the network scenarios ----------------------------------------------------------------

    def net_sources(self, images: list[Path]) -> list[Path]:
        """The source on its own hardware, up with its address; what it shows of its NIC is kept
        for the job (the probe reads the same `ip link`). The disks are bios-mbr's: not booted on
        the VM's controllers before the repair."""
        for key in ("before-ide", "before-virtio", "after-virtio"):
            self.row[key] = "skip"
        result = boot(images, "ahci", "source", self.firmware, self.work / f"{self.name}-own-ahci.serial",
                      timeout=BOOT_TIMEOUT)
        self.source_nic = shown_nic(result.log)
        good = result.ok and result.net == f"{self.net.source_nic}:{self.net.address}" and \
            self.source_nic is not None and lease(result.log, self.net.address) is self.net.dhcp
        self.record("own-ahci", good, result.seconds, f"{result}; NIC {self.source_nic}")
        return images

    def net_iso_path(self, sources: list[Path], iso: Path, server: P2VServer) -> None:
        """As the product does it: the source captures itself from the ISO (the probe records its
        NIC), the VM, with its new MAC, restores and repairs from the ISO (the repair sees the
        VM's NIC), then boots on IDE: up with the variant's address on the first boot."""
        for key in ("repair-virtio", "after-virtio"):
            self.row[key] = "skip"
        phase, job = live.capture(iso, sources, self.firmware, server, f"e2e-{self.name}",
                                  self.work / f"{self.name}-capture.serial")
        if not self.record("capture", phase.ok, phase.seconds, str(phase)):
            return
        vm = self.blank_disks("ide")
        try:
            log = self.work / f"{self.name}-repair-ide.serial"
            phase = self.restore_and_repair(iso, vm, "ide", server, job, log, mac=NEW_MAC,
                                            boot_line=phase.boot_line)
            if self.record("repair-ide", phase.ok, phase.seconds, str(phase), log):
                # The live ISO calls the source's NIC by its own udev's name.
                named = re.search(r"^\s*(\S+) .*?-> VM .*?, named (\S+) by the guest", log.read_text(errors="replace"),
                                  re.MULTILINE)
                self.net_after(vm, named[2] if named else VM_NIC)
        finally:
            for disk in vm:
                disk.unlink(missing_ok=True)

    def net_after(self, vm: list[Path], name: str) -> None:
        result = boot(vm, "ide", "vm", self.firmware, self.work / f"{self.name}-after-ide.serial",
                      timeout=BOOT_TIMEOUT, mac=NEW_MAC)
        leased = lease(result.log, self.net.address)
        good = result.ok and result.net == f"{name}:{self.net.address}" and leased is self.net.dhcp
        how = {True: "leased", False: "static", None: "not up"}[leased]
        self.record("after-ide", good, result.seconds, f"{result}; MAC {NEW_MAC}, planned name {name}, address {how}")

    def net_host_path(self, sources: list[Path]) -> None:
        """Repair a copy from outside the VM with the job (repairjob.py), boot it on IDE with the
        VM's new MAC: the network must come up with the variant's address on the first boot."""
        if not self.row["own-ahci"][0]:
            return
        vm = self.blank_disks("vm")
        try:
            t = time.monotonic()
            # Sparse: the disk's holes stay holes (a full copy is 3 GiB of a shared disk).
            subprocess.run(["cp", "--sparse=always", str(sources[0]), str(vm[0])], check=True)
            job = self.work / f"{self.name}-job.json"
            job.write_text(json.dumps({
                "inventory": {"machine": {"nics": [self.source_nic]}},
                "records": {"xenserver": {"vm": {"firmware": self.firmware, "nics": [
                    {"device": 0, "mac": NEW_MAC, "source": self.source_nic["name"]}]}}}}))
            by_hand = [] if self.net.names_itself else [f"{self.source_nic['name']}={VM_NIC}"]
            log = self.work / f"{self.name}-repair.log"
            ok, why = host_repair(vm, log, command=[sys.executable, str(HERE / "repairjob.py"), str(job),
                                                     "{disk}", *by_hand])
            if not self.record("repair", ok, time.monotonic() - t, why):
                return
            self.net_after(vm, planned_name(log, self.source_nic["name"]))
        finally:
            for disk in vm:
                disk.unlink(missing_ok=True)

    def restore_and_repair(self, iso: Path, vm: list[Path], controller: str, server: P2VServer,
                           job: str, log: Path, **how) -> live.Phase:
        """live.restore_and_repair onto `vm` (blank_disks(controller)). A try given up as stuck (a
        starved guest: once CI's restore over virtio hung for an hour, never since) runs once
        more on new blank disks; its console is kept as *.stuck.serial and its reason goes into
        the phase's line. Any other failure is the phase's outcome."""
        first = live.restore_and_repair(iso, vm, controller, self.firmware, server, job, log, **how)
        if not first.stuck:
            return first
        kept = log.with_name(log.name.removesuffix(".serial") + ".stuck.serial")
        log.replace(kept)
        say(f"  {self.name} repair-{controller}: given up ({first.stuck.rstrip('.')}, "
            f"{first.seconds:.0f} s); once more on new blank disks, the first console kept as {kept.name}")
        if how.get("boot_line") and live.REPAIRED.search(kept.read_text(errors="replace")):
            how["boot_line"] = None   # its report ended the job token on that line: the admin's
        vm[:] = self.blank_disks(controller)
        phase = live.restore_and_repair(iso, vm, controller, self.firmware, server, job, log, **how)
        phase.first_try = f"{first.stuck.rstrip('.')} ({first.seconds:.0f} s; its console: {kept.name})"
        return phase

    def blank_disks(self, label: str) -> list[Path]:
        disks = []
        for i, size in enumerate(variant(self.name).sizes()):
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
        captured, job = live.capture(iso, sources, self.firmware, server, f"e2e-{self.name}",
                                     self.work / f"{self.name}-capture.serial")
        if not self.record("capture", captured.ok, captured.seconds, str(captured), captured.log):
            return
        for controller in CONTROLLERS:
            vm = self.blank_disks(controller)
            # The first VM gets the very line the capture printed (the Done screen's) and nothing
            # else; its job token ends with that repair's report, so the next gets the admin's.
            line = captured.boot_line if controller == CONTROLLERS[0] else None
            try:
                log = self.work / f"{self.name}-repair-{controller}.serial"
                phase = self.restore_and_repair(iso, vm, controller, server, job, log,
                                                boot_line=line)
                if self.record(f"repair-{controller}", phase.ok, phase.seconds, str(phase), log):
                    self.check(f"after-{controller}", vm, controller, "vm", True, planned_name(log))
            finally:
                for disk in vm:
                    disk.unlink(missing_ok=True)


def console_tail(log: Path, lines: int = 40) -> list[str]:
    """The last `lines` lines of a serial log, without terminal escapes and carriage returns."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "",
                  log.read_bytes().decode("utf-8", "replace"))
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


def mounts_right(serial_log: Path, points: tuple[str, ...]) -> tuple[bool, str]:
    """Whether the guest reported (XENP2V-MOUNT lines) each mount point with its own filesystem
    (the marker file on it names it) and no two of them from one device; and what it reported."""
    text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    seen = {m[1]: (m[2], m[3], m[4]) for m in MOUNT.finditer(text)}
    said = ", ".join(f"{point} {seen[point][0]} {seen[point][1]} ({seen[point][2]})" if point in seen
                     else f"{point} not reported" for point in points)
    sources = [seen[point][0] for point in points if point in seen]
    right = all(point in seen and seen[point][2] == marker_name(point) for point in points) and \
        len(set(sources)) == len(sources)
    return right, "mounts " + said


def planned_name(serial_log: Path, source_nic: str = SOURCE_NIC) -> str:
    """The name the repair's plan says the guest will use for the source's NIC on the VM (the VM
    keeps the source's MAC, so the repair may pin the old name rather than take the slot name)."""
    text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    found = re.search(rf"^\s*{re.escape(source_nic)}\b.*?-> VM .*?, named (\S+) by the guest", text,
                      re.MULTILINE)
    return found.group(1) if found else VM_NIC


def shown_nic(serial_log: Path) -> dict | None:
    """The source's NIC as its own boot showed it (sources.NET_REPORT_SCRIPT: `ip -o link`), in
    the inventory's shape: {"name", "mac", "altnames"}; None when it showed none."""
    text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    m = re.search(r"XENP2V-LINK \d+: ([^:@\s]+): .*?link/ether (\S+)([^\n]*)", text)
    if not m:
        return None
    return {"name": m[1], "mac": m[2].lower(), "altnames": re.findall(r"altname (\S+)", m[3])}


def lease(serial_log: Path, address: str) -> bool | None:
    """Whether `address` came up leased (True: `ip` says dynamic), static (False), or not at all."""
    text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    lines = [line for line in text.splitlines() if "XENP2V-NET" in line and f"inet {address} " in line]
    return None if not lines else any(" dynamic" in line for line in lines)


def table(rows: list[dict], path: str) -> str:
    columns = COLUMNS[path]
    head = ["scenario", "build", *(title for _, title in columns), "total"]
    lines = []
    for row in rows:
        cells = [row["scenario"], f"{row.get('build', 0):.0f}s"]
        for key, _ in columns:
            value = row.get(key)
            cells.append(value if value == "skip" else "-" if value is None else
                         f"{'PASS' if value[0] else 'FAIL'} {value[1]:.0f}s")
        cells.append(f"{row['total']:.0f}s")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def passed(row: dict, path: str) -> bool:
    return all(row.get(key) == "skip" or row.get(key, (False,))[0] for key, _ in COLUMNS[path])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", choices=("iso", "host"), default="iso",
                        help="migrate through the built ISO (default), or repair on this host only")
    parser.add_argument("--iso", type=Path, default=REPO / "out/xenp2v.iso", help="the live ISO")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"default: all ({', '.join(SCENARIOS)})")
    args = parser.parse_args(argv)
    # A CI timeout's SIGTERM unwinds like Ctrl-C: QEMU and the server are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        say(f"Unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}.")
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
                if run.net and args.path == "iso":
                    run.net_iso_path(sources, args.iso, server)
                elif run.net:
                    run.net_host_path(sources)
                elif args.path == "iso":
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
