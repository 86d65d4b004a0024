"""One repair run: find the guest on a disk, plan every step, show or apply it, report."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.disk import fsstate, inuse
from agent.windows import windisk
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
    # Named by hand (the repair may run outside the VM); None: `disks`, or else this VM's own disks.
    disk: str | None = None
    # Look at these, in order (restore targets; with `disk`, the VM's disks named by hand, it first).
    disks: list[str] = field(default_factory=list)
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
    # The CD drive holding the pool's tools ISO (the server puts it in a second drive), or None.
    tools_cd: Callable[[], str | None] = guest_tools.tools_cd


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
    """This machine's NICs backed by a device: MAC, Xen vif number (its device is vif-N), name.
    An emulated NIC with a vif's MAC is that vif's twin before the unplug, not a NIC of its own."""
    out = []
    for entry in sorted((sysfs / "class/net").iterdir()):
        device = entry / "device"
        if not device.exists():
            continue
        m = re.fullmatch(r"vif-(\d+)", device.resolve().name)
        out.append(VmNic((entry / "address").read_text().strip().lower(), int(m[1]) if m else None, entry.name))
    vifs = {nic.mac for nic in out if nic.vif is not None}
    return [nic for nic in out if nic.vif is not None or nic.mac not in vifs]


def is_vm() -> bool:
    proc = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True, text=True)
    return proc.returncode == 0


def vm_disks(sysfs: Path = Path("/sys")) -> list[str]:
    """This VM's disks, without the boot medium (a disk holding a mounted filesystem) and its CD
    drives (the ISO's, the tools ISO's: emulated srN, or a PV guest's removable xvd)."""
    mounted = {line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()}
    cds = {Path(d).name for d in guest_tools.cd_drives(sysfs)}
    out = []
    for entry in sorted((sysfs / "block").iterdir()):
        if not (entry / "device").exists() or entry.name.startswith("fd") or entry.name in cds:
            continue
        parts = [f"/dev/{p.name}" for p in entry.iterdir() if p.name.startswith(entry.name)]
        if not ({f"/dev/{entry.name}", *parts} & mounted):
            out.append(f"/dev/{entry.name}")
    return out


def check_disk_free(disk: str) -> None:
    """Refuse a disk this machine runs from or uses, under its own name or another (a loop device
    over the same file): repairing it would pull the floor away, or mount a filesystem twice."""
    name = Path(disk).resolve().name
    mounted = [line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()]
    if any(re.fullmatch(rf"/dev/{re.escape(name)}(p?\d+)?", m) for m in mounted):
        raise RepairError(f"{disk} has filesystems mounted on this machine; unmount them (or "
                          "repair from the live ISO) and try again.")
    # The same disk under another name: a loop device over the image file (or over the file
    # behind this loop device) with its filesystem mounted. The repair's own loop device would
    # mount that filesystem a second time, read-write, and corrupt it.
    from agent.transfer.restore import RestoreError, check_no_other_name
    try:
        check_no_other_name(disk, itself=False)   # its own name: the mounts above
    except RestoreError as e:
        raise RepairError(str(e)) from None


def repair(request: Request, say: Callable[[str], None] = print, tools: Tools | None = None) -> dict:
    """Run the repair; returns the report. Raises RepairError with what to do next."""
    tools = tools or Tools()
    if request.guest_tools is None and not request.disk:
        # This VM's own disks: the pool's tools ISO may be in one of its CD drives.
        try:
            found = tools.tools_cd()
        except guest_tools.ToolsError as e:
            found = None
            say(str(e))
        if found:
            say(f"The pool's tools ISO is in the CD drive {found}: the guest agent comes from there.")
            request = dataclasses.replace(request, guest_tools=found)
    if request.disk or request.disks:
        disks = list(request.disks) if request.disks else [request.disk]
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
    with ExitStack() as images:
        # An image file is repaired through a loop device of its own, detached at the end.
        loops = {guest.attach_image(disk, images): disk for disk in disks}
        report = _repair_disks(request, loops, say, tools)
    if report.get("disk") in loops:
        report["disk"] = loops[report["disk"]]
    return report


def _repair_disks(request: Request, names: dict[str, str], say: Callable[[str], None], tools: Tools) -> dict:
    """repair() on `names`' devices (device → the name it was given as)."""
    disks = list(names)
    errors: list[str] = []
    encrypted: list[str] = []   # BitLocker volumes where the system would be
    unreadable: list[str] = []  # NTFS volumes that could not be mounted to look for Windows
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
                report = _repair_windows(request, disk, layout, work, stack, say, unreadable)
            if report is None and (why := bitlocked(layout)):
                encrypted.append(why)
                continue
            if report is None:
                errors.append(f"{names[disk]} holds no system that repair can fix (no Linux root "
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
    if encrypted or unreadable:
        raise RepairError(". ".join(encrypted + unreadable + errors) + ".")
    raise RepairError("; ".join(errors) + ". Check that the image was restored onto this disk.")


def vm_firmware(request: Request, layout: guest.DiskLayout) -> str:
    """"bios" or "uefi": the job's (the server makes the VM with the source's firmware), else
    what the disk boots with (an EFI system partition and no BIOS boot area: UEFI)."""
    inventory = request.inventory or {}
    if (inventory.get("vm") or {}).get("firmware") or (inventory.get("machine") or {}).get("firmware"):
        return protocol_vm_firmware(inventory)
    return "uefi" if layout.uefi and not layout.bios else "bios"


NTFS_MOUNT_TRIES = 5   # ntfs-3g opens its device exclusively: another program may hold it a while


def _mount_ntfs(device: str, target: Path, stack: ExitStack, options: str | None) -> None:
    """Mount the NTFS on `device` with ntfs-3g; while the device is busy, tried again up to
    NTFS_MOUNT_TRIES times, 1, 2, 3, 4 s apart. Raises the last RepairError."""
    for attempt in range(NTFS_MOUNT_TRIES):
        try:
            guest.mount(device, target, stack, "ntfs-3g", options)
            return
        except RepairError as e:
            if attempt + 1 == NTFS_MOUNT_TRIES or "busy" not in str(e).lower():
                raise
            time.sleep(attempt + 1.0)


def _repair_windows(request: Request, disk: str, layout: guest.DiskLayout, work: Path,
                    stack: ExitStack, say: Callable[[str], None],
                    unreadable: list[str] | None = None) -> dict | None:
    """The Windows on `disk`, repaired (windows.py); None when there is none. `unreadable`
    gets a sentence for each NTFS that could not be mounted to look in."""
    for fs in layout.filesystems:
        if fs.fstype != "ntfs":
            continue
        with guest.Mounts() as look:
            try:
                _mount_ntfs(fs.device, work / "probe", look, "ro")
            except RepairError as e:
                if unreadable is not None:
                    unreadable.append(f"{fs.device} (NTFS) could not be looked at for a Windows: "
                                      f"{e}; free it (or install what is missing) and run repair "
                                      "again")
                continue
            found = windows.is_windows(work / "probe")
            if not found and unreadable is not None and windows.has_system32(work / "probe"):
                unreadable.append(f"{fs.device} holds a Windows folder but no registry hive "
                                  "Windows\\System32\\config\\SYSTEM, which repair changes: "
                                  "check that it is there on the source (Windows does not start "
                                  "without it), then capture again")
        if not found:
            continue
        if why := windows.unwritable(fs.device):
            raise RepairError(windows.refusal(fs.device, why))
        root = work / "windows"
        _mount_ntfs(fs.device, root, stack, "ro" if request.dry_run else None)
        if not request.dry_run and os.statvfs(root).f_flag & os.ST_RDONLY:
            raise RepairError(f"ntfs-3g mounted the NTFS on {fs.device} read-only (Windows left "
                              f"it in use): on the source, {fsstate.WINDOWS_SHUTDOWN}; capture "
                              "again and repair. Nothing was changed.")
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


def bitlocked(layout: guest.DiskLayout) -> str | None:
    """Why repair cannot reach the Windows of a disk whose NTFS is encrypted with BitLocker, as a
    sentence; None when no volume of `layout` is."""
    for fs in layout.filesystems:
        if fs.fstype == "BitLocker" or (fs.fstype in ("ntfs", "") and windisk.bitlocker(fs.device)):
            return (f"{fs.device} is encrypted with BitLocker: repair cannot read or change the "
                    "Windows on it, so the VM's disk controller is not set up for it to start. "
                    "On the source, turn BitLocker off ('manage-bde -off C:'), wait until "
                    "'manage-bde -status' says it is fully decrypted, then capture again and "
                    "repair. (Left encrypted, it also asks for its 48-digit recovery key at the "
                    "VM's first boot: the TPM does not move.) Nothing was changed")
    return None


def windows_drivers(request: Request, work: Path, say: Callable[[str], None]) -> Path | None:
    """The folder of the vendor's Windows PV drivers: --windows-drivers, else the tools ISO or
    folder of --guest-tools when it holds .inf or .msi files (its Linux/ folder aside)."""
    if request.windows_drivers:
        return Path(request.windows_drivers)
    if not request.guest_tools:
        return None
    source = Path(request.guest_tools)
    if source.is_file() or source.is_block_device():
        into = work / "windows-tools"
        into.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([*guest_tools.xorriso_in(source), "-extract", "/", str(into)],
                              capture_output=True, text=True)
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
    ones vm_nics gives; None when unknown."""
    if is_vm() and not (request.disk or request.disks):
        return [nic.mac for nic in local_nics()]
    if request.inventory:
        return [nic.mac for nic in vm_nics(request.inventory)]
    return None


def vm_nics(inventory: dict) -> list[VmNic]:
    """The VM's NICs, for a repair run from outside the VM: as the server made them (the job's
    "vm" → "nics", with the pool's MACs under --new-macs), else the source's MACs, one vif each,
    as provisioning makes them by default."""
    made = [VmNic(str(nic["mac"]).lower(), int(nic["device"])) for nic in
            (inventory.get("vm") or {}).get("nics") or []
            if isinstance(nic, dict) and nic.get("mac") and str(nic.get("device", "")).isdigit()]
    return made or [VmNic(s.mac, i) for i, s in enumerate(source_nics(inventory))]


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
        # machine, the VM's are the ones the server made (vm_nics).
        vms = local_nics() if is_vm() and not request.disk else vm_nics(request.inventory)
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
    try:
        unstage = guest_tools.stage(root, package) if installs_tools else None
    except guest_tools.ToolsError as e:
        raise RepairError(str(e)) from None
    try:
        report["steps"] = apply_plan(root, steps, run_command, log)
    except RepairError:
        if unstage:
            unstage()       # the package files go too: the guest is as it was
        raise
    report["status"] = "ok"
    unlogged = append_log(root, lines)
    if unlogged:
        report["warnings"] = [*report.get("warnings", []), unlogged]
        say(f"WARNING: {unlogged}")
    else:
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
