"""One repair run: find the guest on a disk, plan every step, show or apply it, report."""

from __future__ import annotations

import os
import re
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent import inuse
from xenp2v.protocol import vm_firmware as protocol_vm_firmware
from agent.repair import guest, guest_tools, luks, raid, windows
from agent.repair.apply import LOG, append_log, apply_plan
from agent.repair.firmware import boot_problem, firmware_of_vm
from agent.repair.facts import (Facts, Filesystem, Reference, blkid_cache, claimed_uuids, is_hardware_name,
                                names_from_disk, names_from_inventory, names_on_other_disks)
from agent.repair.network import VmNic, source_nics
from agent.repair.guest import RepairError
from agent.repair.plan import Plan
from agent.repair.steps import (CMDLINE_DEVICE, LEGACY_GRUB_MENUS, RELEASE_FILES, cmdline_files, family,
                                plan_repair)
from agent.repair.tree import GuestTree


@dataclass
class Request:
    disk: str | None = None            # None: `disks`, or else this VM's own disks
    disks: list[str] = field(default_factory=list)       # look at these, in order (restore targets)
    dry_run: bool = False
    nics: dict[str, str] = field(default_factory=dict)   # old name → new, given by hand
    inventory: dict | None = None      # the job's capture inventory
    passphrases: luks.Passphrases = field(default_factory=luks.Passphrases)  # for LUKS volumes
    guest_tools: str | None = None     # the pool's tools ISO or a directory: install its agent
    windows_drivers: str | None = None  # a folder with the vendor's Windows PV drivers


@dataclass
class Tools:
    """The edges that need kernel features this machine may lack (device-mapper, md)."""

    cryptsetup: luks.Cryptsetup = field(default_factory=luks.Cryptsetup)
    mdadm: raid.Mdadm = field(default_factory=raid.Mdadm)


def guest_references(tree: GuestTree) -> list[Reference]:
    """Every device name the guest's configuration uses, with what it is mounted as."""
    refs = [Reference(spec, point, fstype) for spec, point, fstype, _ in
            guest.fstab_entries(tree.read("/etc/fstab") or "")]
    for line in (tree.read("/etc/crypttab") or "").splitlines():
        fields = line.split()
        if len(fields) > 1 and not fields[0].startswith("#"):
            refs.append(Reference(fields[1], None, "crypto_LUKS"))
    for path in ("/etc/default/grub", "/etc/initramfs-tools/conf.d/resume", *cmdline_files(tree),
                 *LEGACY_GRUB_MENUS, "/etc/sysconfig/bootloader"):
        for m in CMDLINE_DEVICE.finditer(tree.read(path) or ""):
            kind = m[1].lower()
            refs.append(Reference(m[2], "/" if kind == "root" else None,
                                  "swap" if kind == "resume" else None))
    return refs


def local_nics(sysfs: Path = Path("/sys")) -> list[VmNic]:
    """This machine's NICs backed by a device: MAC, Xen vif number (its device is vif-N), name."""
    out = []
    for entry in sorted((sysfs / "class/net").iterdir()):
        device = entry / "device"
        if not device.exists():
            continue
        m = re.fullmatch(r"vif-(\d+)", device.resolve().name)
        out.append(VmNic((entry / "address").read_text().strip().lower(), int(m[1]) if m else None, entry.name))
    return out


def is_vm() -> bool:
    proc = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True, text=True)
    return proc.returncode == 0


def vm_disks() -> list[str]:
    """This VM's disks, without the boot medium (a disk holding a mounted filesystem)."""
    mounted = {line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()}
    out = []
    for entry in sorted(Path("/sys/block").iterdir()):
        if not (entry / "device").exists() or entry.name.startswith(("sr", "fd")):
            continue
        parts = [f"/dev/{p.name}" for p in entry.iterdir() if p.name.startswith(entry.name)]
        if not ({f"/dev/{entry.name}", *parts} & mounted):
            out.append(f"/dev/{entry.name}")
    return out


def check_disk_free(disk: str) -> None:
    """Refuse a disk this machine runs from or uses: repairing it would pull the floor away."""
    name = Path(disk).resolve().name
    mounted = [line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()]
    if any(re.fullmatch(rf"/dev/{re.escape(name)}(p?\d+)?", m) for m in mounted):
        raise RepairError(f"{disk} has filesystems mounted on this machine; unmount them (or "
                          "repair from the live ISO) and try again.")


def repair(request: Request, say: Callable[[str], None] = print, tools: Tools | None = None) -> dict:
    """Run the repair; returns the report. Raises RepairError with what to do next."""
    tools = tools or Tools()
    if request.disk or request.disks:
        disks = [request.disk] if request.disk else list(request.disks)
    else:
        if not is_vm():
            raise RepairError("This machine is not a VM: repair writes only to a VM's disks. To "
                              "repair a disk attached here, name it with --disk.")
        disks = vm_disks()
        if not disks:
            raise RepairError("This VM shows no disk to repair apart from the boot medium: "
                              "attach the disk that holds the copied system, or name the disk "
                              "to repair (--disk).")
    for disk in disks:
        if not Path(disk).exists():
            raise RepairError(f"{disk} does not exist; name the VM's disk (e.g. /dev/xvda).")
        check_disk_free(disk)
    errors = []
    for disk in disks:
        stack = guest.Mounts()
        with stack:
            work = guest.workdir(stack)
            layout = guest.read_layout(disk, stack, disks, request.dry_run, tools.mdadm)
            roots = guest.find_roots(layout, work)
            opened: dict[str, str] = {}
            locked = []
            if not roots and layout.locked:
                # Only a system on an encrypted volume needs a passphrase.
                locked = _unlock(layout, request, tools.cryptsetup, stack, opened)
                roots = guest.find_roots(layout, work)
            if roots:
                report = _repair_root(request, disk, layout, roots, work, stack, say, tools.cryptsetup,
                                      opened, disks)
            else:
                report = _repair_windows(request, disk, layout, work, stack, say)
            if report is None:
                errors.append(f"{disk} holds no system that repair can fix (no Linux root "
                              "filesystem with /etc/fstab and an os-release, and no Windows)" +
                              "".join(f"; {why}" for why in locked))
                continue
        # The stack synced and unmounted the guest: only now may the server restart the VM.
        if stack.not_unmounted:
            report["unmount"] = stack.not_unmounted
            report["detail"] = " ".join(stack.not_unmounted)
            for problem in stack.not_unmounted:
                say(problem)
        return report
    raise RepairError("; ".join(errors) + ". Check that the image was restored onto this disk.")


def vm_firmware(request: Request, layout: guest.DiskLayout) -> str:
    """"bios" or "uefi": the job's (the server makes the VM with the source's firmware), else
    what the disk boots with (an EFI system partition and no BIOS boot area: UEFI)."""
    inventory = request.inventory or {}
    if (inventory.get("vm") or {}).get("firmware") or (inventory.get("machine") or {}).get("firmware"):
        return protocol_vm_firmware(inventory)
    return "uefi" if layout.uefi and not layout.bios else "bios"


def _repair_windows(request: Request, disk: str, layout: guest.DiskLayout, work: Path,
                    stack: ExitStack, say: Callable[[str], None]) -> dict | None:
    """The Windows on `disk`, repaired (windows.py); None when there is none."""
    for fs in layout.filesystems:
        if fs.fstype != "ntfs":
            continue
        with guest.Mounts() as look:
            try:
                guest.mount(fs.device, work / "probe", look, "ntfs-3g", "ro")
            except RepairError:
                continue
            found = windows.is_windows(work / "probe")
        if not found:
            continue
        root = work / "windows"
        guest.mount(fs.device, root, stack, "ntfs-3g", "ro" if request.dry_run else None)
        firmware = vm_firmware(request, layout)
        say(f"Found Windows on {fs.device}; the VM boots with {firmware.upper()}.")
        try:
            report = windows.repair_mounted(root, firmware, request.dry_run, say,
                                            windows_drivers(request, work, say), vm_macs(request))
        except windows.WindowsRepairError as e:
            raise RepairError(str(e)) from None
        report.update(disk=disk, root=fs.device, os="Windows")
        return report
    return None


def windows_drivers(request: Request, work: Path, say: Callable[[str], None]) -> Path | None:
    """The folder of the vendor's Windows PV drivers: --windows-drivers, else the tools ISO or
    folder of --guest-tools when it holds .inf or .msi files (its Linux/ folder aside)."""
    if request.windows_drivers:
        return Path(request.windows_drivers)
    if not request.guest_tools:
        return None
    source = Path(request.guest_tools)
    if source.is_file():
        into = work / "windows-tools"
        into.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(source), "-extract", "/",
                               str(into)], capture_output=True, text=True)
        if proc.returncode != 0:
            say(f"The tools ISO {source} could not be read for Windows drivers: "
                f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
            return None
        source = into
    found = any(p.suffix.lower() in (".inf", ".msi") for p in source.rglob("*")
                if p.is_file() and p.relative_to(source).parts[0].lower() != "linux")
    return source if found else None


def vm_macs(request: Request) -> list[str] | None:
    """The VM's NICs' MACs, in order: this machine's when the repair runs in the VM, else the
    source's (the VM keeps them unless the server was told otherwise); None when unknown."""
    if is_vm() and not (request.disk or request.disks):
        return [nic.mac for nic in local_nics()]
    if request.inventory:
        return [nic.mac for nic in source_nics(request.inventory)]
    return None


def _unlock(layout: guest.DiskLayout, request: Request, crypt: luks.Cryptsetup, stack: ExitStack,
            opened: dict[str, str]) -> list[str]:
    """Open every locked LUKS volume a passphrase fits; `opened` gets UUID → mapping name.
    Returns why the others stay locked."""
    why_not = []
    for fs in layout.locked:
        path, name = luks.unlock(fs.device, fs.uuid, crypt, request.passphrases, request.dry_run)
        if path is None:
            why_not.append(name)
            continue
        key = fs.uuid or fs.device
        opened[key] = name
        stack.callback(lambda k=key: crypt.close(opened[k]))   # under the name it has by then
        guest.add_inside(layout, path, stack)
    return why_not


def attached_disks(disk: str) -> list[str]:
    """This machine's other disks that nothing here uses: where `repair --disk` looks for the
    filesystems of the source's other disks."""
    return [d for d in vm_disks() if os.path.realpath(d) != os.path.realpath(disk) and not inuse.uses(d)]


def place_names(refs: list[Reference], filesystems: list[Filesystem], disk: str, disks: list[str],
                request: Request, cache: dict[str, dict[str, str]]
                ) -> tuple[dict[str, Filesystem], list[str], dict[str, str], list[str]]:
    """Old device names → filesystems on the VM's disks: (names, notes, names left unplaced → why,
    warnings). By the job's inventory first (UUID, label, start+size of each source partition);
    then the repaired disk's own names by partition number and type; then a name of another
    source disk is looked for on the VM's other disks (`disks`, or with --disk this machine's
    other disks)."""
    names, notes = names_from_disk(refs, filesystems)
    on_disks = [filesystems if d == disk else guest.partition_filesystems(d) for d in disks] \
        if len(disks) > 1 else [filesystems]
    unplaced: dict[str, str] = {}
    if request.inventory:
        found, unplaced = names_from_inventory(refs, request.inventory, on_disks)
        for name in unplaced:
            names.pop(name, None)      # never the guess by partition number
        names.update(found)
    if len(disks) > 1:
        others = [fs for d, there in zip(disks, on_disks) if d != disk for fs in there]
    else:
        others = [fs for d in (attached_disks(disk) if request.disk else []) for fs in guest.partition_filesystems(d)]
    left = [r for r in refs if is_hardware_name(r.name) and r.name not in names and r.name not in unplaced
            and r.mountpoint != "/"]
    found, more, warnings = names_on_other_disks(left, others, claimed_uuids(refs), cache)
    names.update(found)
    unplaced.update(more)
    done = set(found) | set(unplaced)
    notes = [n for n in notes if n.split(" ", 1)[0] not in done]
    notes += [f"{name} is {fs.device} (UUID {fs.uuid}) on the VM's disks." for name, fs in names.items()
              if fs not in filesystems or name in found]
    return names, notes, unplaced, warnings


def _repair_root(request: Request, disk: str, layout: guest.DiskLayout, roots: list,
                 work: Path, stack: ExitStack, say: Callable[[str], None],
                 crypt: luks.Cryptsetup, opened: dict[str, str], disks: list[str]) -> dict:
    root_fs, subvolume = roots[0]
    for other, _ in roots[1:]:
        say(f"Another system is on {other.device}; repairing only the one on {root_fs.device}.")
    with guest.Mounts() as probe:
        probe_root = work / "root"
        guest.mount(root_fs.device, probe_root, probe, root_fs.fstype,
                    f"ro,subvol={subvolume}" if subvolume else "ro")
        probe_tree = GuestTree(probe_root)
        fam = family(probe_tree)
        refs = guest_references(probe_tree)
        luks_texts = {path: probe_tree.read(path) for path in luks.GUEST_FILES}
        cache = blkid_cache(probe_tree.read("/etc/blkid.tab") or probe_tree.read("/etc/blkid/blkid.tab") or "")
    if fam is None:
        raise RepairError(f"The system on {root_fs.device} is not of a family repair knows "
                          "(Debian/Ubuntu, RHEL, SUSE, Arch); nothing was changed.")
    names, notes, unplaced, warnings = place_names(refs, layout.filesystems, disk, disks, request, cache)
    wanted = luks.guest_names(luks_texts.get, layout.filesystems, {**layout.aliases, **names})
    for key, current in list(opened.items()):
        if wanted.get(key, current) != current:
            path = crypt.rename(current, wanted[key])
            opened[key] = wanted[key]
            root_fs = guest.rename_device(layout, f"/dev/mapper/{current}", path).get(root_fs, root_fs)
            notes.append(f"LUKS volume {key} unlocked as {wanted[key]}, the name the guest gives it.")
    root_name = next((name for name, fs in layout.aliases.items() if fs == root_fs), root_fs.device)
    if root_fs.device in layout.read_only and not request.dry_run:
        raise RepairError(f"The system on {root_name} is on md RAID, and this machine has no md "
                          "driver to change it without splitting the mirror; repair from the live "
                          "ISO booted in the VM (--dry-run shows the plan here). Nothing was changed.")
    sources, vms = [], []
    if request.inventory:
        sources = source_nics(request.inventory)
        # This machine's NICs are the VM's only when the repair runs in the VM; from another
        # machine, the VM is taken to have the source's MACs, one vif each, as provisioning makes it.
        vms = local_nics() if is_vm() and not request.disk else \
            [VmNic(s.mac, i) for i, s in enumerate(sources)]
    root, mount_notes = guest.mount_guest(root_fs, subvolume, layout.filesystems,
                                          {**layout.aliases, **names}, work, stack,
                                          readonly=request.dry_run)
    tree = GuestTree(root)
    # The VM boots from its first disk: BIOS boot code goes there, wherever the root is.
    boot_disk = disks[0] if len(disks) > 1 else disk
    bios, uefi = (layout.bios, layout.uefi) if boot_disk == disk else guest.disk_boot_places(boot_disk)
    in_the_vm = not (request.disk or request.disks)
    problem = boot_problem(firmware_of_vm(request.inventory, in_the_vm), boot_disk, bios, uefi or layout.uefi)
    if problem:
        raise RepairError(problem)
    package, tools_problem = None, None
    if request.guest_tools:
        try:
            files = guest_tools.read_source(Path(request.guest_tools), work / "guest-tools")
            package = guest_tools.pick(files, fam, guest_tools.guest_arch(tree), request.guest_tools)
        except guest_tools.ToolsError as e:
            tools_problem = str(e).rstrip(".")
    facts = Facts(filesystems=layout.filesystems, names=names, nics=dict(request.nics), disk=boot_disk,
                  root_disk=disk if boot_disk != disk else None,
                  source_nics=sources, vm_nics=vms,
                  bios=bios, uefi=layout.uefi, arrays=layout.arrays, unplaced=unplaced,
                  nvram=in_the_vm and Path("/sys/firmware/efi/efivars").exists(),
                  guest_tools=package, guest_tools_source=request.guest_tools,
                  guest_tools_problem=tools_problem)
    steps = plan_repair(tree, facts)
    if steps:
        steps[0].notes[:0] = layout.notes + notes + mount_notes
        steps[0].warnings[:0] = warnings
    os_name = _pretty_name(tree)
    report = {"disk": disk, "root": root_name, "os": os_name, "family": fam,
              "dry_run": request.dry_run, "changed": any(not s.empty for s in steps)}
    say(f"Found {os_name} ({fam} family) on {root_name}.")
    report["warnings"] = Plan(steps).warnings
    installs_tools = any(s.name == "guest tools" and s.commands for s in steps)
    if installs_tools:
        report["guest_tools"] = guest_tools.report(package)
    if request.dry_run:
        say(Plan(steps).render())
        report["steps"] = [{"step": s.name, "files": [c.path for c in s.changes],
                            "commands": [str(c) for c in s.commands], "notes": s.notes,
                            "warnings": s.warnings, "diff": s.report_diff()} for s in steps]
        report["status"] = "planned"
        return report
    if not report["changed"]:
        for warning in report["warnings"]:
            say(f"WARNING: {warning}")
        say("Nothing to change: this system is already repaired.")
        report.update(status="ok", steps=[])
        return report
    guest.enter(root, layout.filesystems, layout.volume_groups, stack, layout.aliases)
    lines = [f"--- xenp2v repair, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, disk {disk}"]

    def log(line: str) -> None:
        lines.append(line)
        say(line)

    def run_command(cmd) -> tuple[int, str]:
        proc = guest.chroot(root, cmd.argv)
        return proc.returncode, (proc.stdout or "") + (proc.stderr or "")

    # A failed apply has put every file back: the guest keeps no log of it either (the error and
    # the output went to `say`).
    if installs_tools:
        guest_tools.stage(root, package)
    report["steps"] = apply_plan(root, steps, run_command, log)
    report["status"] = "ok"
    append_log(root, lines)
    say(f"Repair done; the log is in the guest's {LOG}.")
    return report


def _pretty_name(tree: GuestTree) -> str:
    for line in (tree.read("/etc/os-release") or tree.read("/usr/lib/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip("\"'")
    for path in RELEASE_FILES:
        first = (tree.read(path) or "").strip().splitlines()[:1]
        if first and path != "/etc/debian_version":
            return first[0]
        if first:
            return f"Debian GNU/Linux {first[0]}"
    return "Linux"
