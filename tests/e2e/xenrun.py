"""`make e2e-xen`: the e2e scenarios' disks booted on a real Xen hypervisor, before and after repair.

One Xen host (xenhost.py: Xen 4.17 and a Debian dom0 under QEMU TCG) is booted once; inside it
`xl create` boots, for each scenario, the unrepaired source and its repaired copy (the repair alone,
on loop devices here, as `make e2e E2E_PATH=host` does, with the source's NIC named as the guest
names a Xen vif: enX0) in XenServer's device profiles:

- `hvm`: HVM, SeaBIOS, qemu-xen, the disk on emulated IDE, an rtl8139, Xen's platform PCI device on
  (XenServer's and XCP-ng's BIOS profile). The guest's kernel unplugs the emulated disk and NIC and
  must go on on xen-blkfront (xvda) and xen-netfront (the vif);
- `pv`: PV through pygrub (the seed's optional PV mode, XenServer 7 and before): only xvd disks
  and vifs.

The source must fail on each for the reason a P2V'd system fails there (its console shows it), the
repaired copy must boot to the marker with its root on xvda and the network up on the vif. Each
guest gets its own copy-on-write disk. A table of outcomes and times ends the run.

Usage: xenrun.py [--profiles hvm,pv,uefi-qemu] [SCENARIO ...]   (default: bios-mbr gpt-lvm uefi-esp)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import xenhost  # noqa: E402
from boot import boot  # noqa: E402
from run import host_repair  # noqa: E402
from sources import ADDRESS, CACHE, LAYOUTS, source_images  # noqa: E402

SCENARIOS = ("bios-mbr", "gpt-lvm", "uefi-esp")
PROFILES = ("hvm", "pv", "uefi-qemu")
# The profiles a source can boot in, by its firmware.
FIRMWARE_PROFILES = {"bios": ("hvm", "pv"), "uefi": ("uefi-qemu",)}
STANDIN_NIC = "ens4"      # the e1000 in slot 4 under plain QEMU
VIF_NAME = "enX0"           # systemd (v250 and later) names the first Xen vif enX0
MAC = "52:54:00:12:34:56"   # the source's MAC, kept by the VM
GUEST_MEM_MB = 768
GUEST_TIMEOUT = 3600
PV_QUIET = 240
# What the guest's kernel says when the platform device lets it unplug the emulated devices.
UNPLUG = "unplug emulated disks"


def say(text: str) -> None:
    print(text, flush=True)


def config(profile: str, name: str, device: str) -> str:
    """xl's configuration of guest `name` on dom0's `device`, in XenServer's `profile`."""
    common = [f'name = "{name}"', f"memory = {GUEST_MEM_MB}", "vcpus = 1",
              'on_reboot = "destroy"', 'on_crash = "destroy"', 'on_poweroff = "destroy"']
    if profile == "hvm":
        return "\n".join(common + [
            'type = "hvm"', 'device_model_version = "qemu-xen"', "xen_platform_pci = 1",
            f"disk = ['format=raw,vdev=hda,access=rw,target={device}']",
            f"vif = ['model=rtl8139,bridge=xenbr0,mac={MAC}']",
            "vnc = 0", "sdl = 0",
            f"serial = 'file:{xenhost.CONSOLE_DIR}/{name}.serial'"])
    return "\n".join(common + [
        'type = "pv"', 'bootloader = "pygrub"',
        f"disk = ['format=raw,vdev=xvda,access=rw,target={device}']",
        f"vif = ['bridge=xenbr0,mac={MAC}']"])


@dataclass
class Guest:
    scenario: str
    profile: str
    repaired: bool
    disk: int          # its index in the Xen host's disks

    @property
    def name(self) -> str:
        return f"{self.scenario}-{self.profile}-{'after' if self.repaired else 'before'}"

    @property
    def key(self) -> str:
        return f"{self.profile}-{'after' if self.repaired else 'before'}"


def judge(guest: Guest, run: xenhost.GuestRun) -> tuple[bool, str]:
    """Whether the boot went as it must: the source fails for the right reason, the repaired copy
    comes up on the PV disk and the vif."""
    console = run.console
    unplugged = UNPLUG in console
    if not guest.repaired:
        if run.ok:
            return False, f"the unrepaired source booted ({run})"
        if run.vbd_state == "4":
            return False, f"the unrepaired source failed, but its PV disk was connected: {run}"
        if guest.profile == "pv":
            # Its initramfs's words go to ttyS0, which a PV guest lacks: the kernel's say it.
            if " xvda" in console or run.why != f"its console silent for {PV_QUIET} s":
                return False, f"the unrepaired source failed, but not for want of xen-blkfront: {run}"
            return True, (f"fails as it must: no xen-blkfront in its initramfs, its PV disk never connected "
                          f"(frontend state {run.vbd_state}), no xvda, boot stopped in the initramfs ({run})")
        if run.why not in ("Gave up waiting for root", "ALERT!"):
            return False, f"the unrepaired source failed, but not for want of its root disk: {run}"
        if not unplugged:
            return False, f"failed, but the kernel did not say it unplugged the emulated disk: {run}"
        return True, (f"fails as it must: emulated IDE unplugged, no xen-blkfront in its initramfs, PV disk "
                      f"frontend state {run.vbd_state} ({run})")
    if not run.ok:
        return False, str(run)
    on_xvda = run.root.startswith("/dev/xvd") or (run.root.startswith("/dev/mapper/") and " xvda: xvda" in console)
    if not on_xvda:
        return False, f"up, but root is not on the PV disk: {run}"
    if run.net != f"{VIF_NAME}:{ADDRESS}":
        return False, f"up, but the network is not up on the vif as {VIF_NAME}: {run}"
    if guest.profile == "hvm" and (not unplugged or "[sda]" in console):
        return False, f"up, but the emulated IDE disk was not unplugged: {run}"
    return True, str(run)


COLUMNS = (("repair", "repair (host)"), ("hvm-before", "HVM fails"), ("hvm-after", "HVM boots after"),
           ("pv-before", "PV fails"), ("pv-after", "PV boots after"),
           ("uefi-qemu-before", "UEFI NVMe fails (QEMU)"), ("uefi-qemu-after", "UEFI NVMe boots after (QEMU)"))


def table(rows: list[dict], dom0_seconds: float) -> str:
    columns = [(key, title) for key, title in COLUMNS if any(key in row for row in rows)]
    head = ["scenario", *(title for _, title in columns)]
    lines = []
    for row in rows:
        cells = [row["scenario"]]
        for key, _ in columns:
            value = row.get(key)
            cells.append("-" if value is None else f"{'PASS' if value[0] else 'FAIL'} {value[1]:.0f}s")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    booted = f"Xen + dom0 boot: {dom0_seconds:.0f} s" if dom0_seconds else "Xen not booted (no guest for it)"
    return "\n".join([booted, fmt(head), fmt(["-" * w for w in widths]),
                      *map(fmt, lines)])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", default=",".join(PROFILES), help="hvm, pv or both (default)")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"default: {' '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = args.scenarios or list(SCENARIOS)
    profiles = [p for p in args.profiles.split(",") if p]
    bad = [n for n in names if n not in SCENARIOS]
    if bad or any(p not in PROFILES for p in profiles):
        say(f"Choose scenarios from {', '.join(SCENARIOS)} and profiles from {', '.join(PROFILES)}.")
        return 2
    work = CACHE / "runs" / ("xen-" + time.strftime("%Y%m%dT%H%M%S"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"xenp2v e2e-xen: load {os.getloadavg()[0]:.1f}, scenarios {' '.join(names)}, profiles {' '.join(profiles)}")
    rows, disks, guests, repaired, seconds = {}, [], [], [], 0.0
    try:
        for name in names:
            rows[name] = {"scenario": name}
            source = source_images(name, say)[0]
            copy = work / f"{name}-repaired.img"
            repaired.append(copy)
            t = time.monotonic()
            shutil.copyfile(source, copy)
            standin = LAYOUTS[name].firmware == "uefi"
            ok, why = host_repair([copy], work / f"{name}-repair.log", vm_nic=STANDIN_NIC if standin else VIF_NAME)
            rows[name]["repair"] = (ok, time.monotonic() - t)
            say(f"  {name} repair: {'PASS' if ok else 'FAIL'} — {why}")
            if standin:
                if "uefi-qemu" in profiles:
                    uefi_standin(name, source, copy if ok else None, work, rows[name])
                continue
            for profile in (p for p in profiles if p in FIRMWARE_PROFILES[LAYOUTS[name].firmware]):
                for image, after in ((source, False), (copy, True)):
                    if after and not ok:
                        continue
                    guests.append(Guest(name, profile, after, len(disks)))
                    disks.append(image)
        if guests:
            seconds = xen_boots(guests, disks, work, rows)
    finally:
        for copy in repaired:
            copy.unlink(missing_ok=True)
    say(f"\nxenp2v e2e-xen (Xen {xenhost.XEN_VERSION} under QEMU {xenhost.ACCEL}, {xenhost.XEN_CPUS} CPUs): load {os.getloadavg()[0]:.1f} at the end")
    say(table(list(rows.values()), seconds))
    say(f"serial logs and guest consoles: {work}")
    wanted = {n: ["repair"] + [g.key for g in guests if g.scenario == n] for n in names}
    for n in names:
        if LAYOUTS[n].firmware == "uefi" and "uefi-qemu" in profiles:
            wanted[n] += ["uefi-qemu-before", "uefi-qemu-after"]
    return 0 if all(rows[n].get(k, (False,))[0] for n in names for k in wanted[n]) else 1


def xen_boots(guests: list[Guest], disks: list[Path], work: Path, rows: dict) -> float:
    """Boot the Xen host once with `disks`, run every guest in turn; returns Xen's and dom0's boot time."""
    payload = {f"{g.name}.cfg": config(g.profile, g.name, xenhost.XenHost.device(g.disk)) + "\n" for g in guests}
    with xenhost.XenHost(xenhost.dom0(say), disks, work / "xen-host.serial", payload) as host:
        seconds = host.start()
        say(f"  Xen and dom0 up in {seconds:.0f} s")
        host.check("ip link add xenbr0 type bridge && ip link set xenbr0 up")
        for guest in guests:
            # A PV guest's initramfs writes to a console it does not have (console=ttyS0): the
            # source's boot, stopped there, falls silent rather than saying so. A repaired guest is
            # waited for up to its marker.
            quiet = PV_QUIET if guest.profile == "pv" and not guest.repaired else 0
            nudges = host.nudges
            run = host.guest(guest.name, timeout=GUEST_TIMEOUT, quiet=quiet)
            (work / f"{guest.name}.console").write_text(run.console)
            ok, why = judge(guest, run)
            rows[guest.scenario][guest.key] = (ok, run.seconds)
            say(f"  {guest.name}: {'PASS' if ok else 'FAIL'} — {why}")
            say(f"    where its time went (from xl create): {run.timeline()}"
                + (f"; Xen fell silent and was given an interrupt {host.nudges - nudges} times" if host.nudges > nudges else ""))
            if host.stalled:
                say("  the guests after it were not run")
                break
    return seconds


def uefi_standin(name: str, source: Path, repaired: Path | None, work: Path, row: dict) -> None:
    """XCP-ng's UEFI profile (OVMF, the disk on emulated NVMe, an e1000) under plain QEMU, standing
    in for Xen: there, the same profile under nested TCG costs more than the run can give it."""
    before = boot([source], "nvme", "vm-e1000", "uefi", work / f"{name}-uefi-qemu-before.serial", timeout=1800)
    ok = not before.ok and before.why in ("Gave up waiting for root", "ALERT!")
    row["uefi-qemu-before"] = (ok, before.seconds)
    say(f"  {name}-uefi-qemu-before: {'PASS' if ok else 'FAIL'} — "
        + (f"fails as it must: no nvme driver in its initramfs ({before})" if ok else str(before)))
    if repaired is None:
        return
    after = boot([repaired], "nvme", "vm-e1000", "uefi", work / f"{name}-uefi-qemu-after.serial", timeout=1800)
    ok = after.ok and (after.root or "").startswith("/dev/nvme0n1") and after.net == f"{STANDIN_NIC}:{ADDRESS}"
    row["uefi-qemu-after"] = (ok, after.seconds)
    say(f"  {name}-uefi-qemu-after: {'PASS' if ok else 'FAIL'} — {after}")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
