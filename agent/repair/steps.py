"""The repair steps, in order. Each reads guest files and facts and plans its change; none writes.

A step returns a StepPlan: the new contents of the files it changes and the chroot commands it
needs. Running the steps twice on a repaired guest plans nothing, which is what makes a second
`repair` a no-op.
"""

from __future__ import annotations

import re
from typing import Callable

from agent.repair import guest_tools
from agent.repair.facts import Facts, partition_ref
from agent.repair.installdevice import install_devices
from agent.repair.lvmconf import lvm_filters
from agent.repair.network import network as network_step
from agent.repair.plan import Command, FileChange, StepPlan
from agent.repair.tree import GuestTree

# Drivers for the disk and network controllers a XenServer VM may show (PV, emulated IDE), and the
# ones other hypervisors and the source commonly use (virtio, AHCI).
# The VM's disk controllers: Xen's PV devices, XenServer's emulated IDE (BIOS profile) and NVMe
# (UEFI profile, where Xen cannot unplug the disk), virtio, AHCI.
VM_DRIVERS = ("xen-blkfront", "xen-netfront", "xen-platform-pci", "ata_piix", "ata_generic",
              "nvme", "nvme-core", "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "ahci", "sd_mod")
STAMP = "/var/lib/xenp2v/repaired"
MARK = "# Added by xenp2v repair: drivers for the VM's disk and network controllers."
ESP_DIRS = ("/boot/efi", "/efi")
SUSE_KERNEL_CONF = "/etc/sysconfig/kernel"


# Systems older than os-release (RHEL 5 and 6, SLES 11, Debian 6) name themselves here.
RELEASE_FILES = {"/etc/redhat-release": "rhel", "/etc/SuSE-release": "suse", "/etc/debian_version": "debian"}


def family(tree: GuestTree) -> str | None:
    """debian, rhel, suse or arch, from /etc/os-release (or an older release file); None for
    anything else."""
    text = tree.read("/etc/os-release") or tree.read("/usr/lib/os-release")
    if text is None:
        return next((fam for path, fam in RELEASE_FILES.items() if tree.exists(path)), None)
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip("\"'")
    ids = [fields.get("ID", "")] + fields.get("ID_LIKE", "").split()
    for ident in ids:
        for fam, members in (("debian", {"debian", "ubuntu"}),
                             ("rhel", {"rhel", "fedora", "centos", "rocky", "almalinux", "ol"}),
                             ("suse", {"suse", "opensuse", "sles", "opensuse-leap", "opensuse-tumbleweed"}),
                             ("arch", {"arch", "archlinux", "manjaro"})):
            if ident in members:
                return fam
    return None


def _change(tree: GuestTree, path: str, new: str | None) -> list[FileChange]:
    old = tree.read(path)
    return [] if old == new else [FileChange(path, old, new)]


# --- device names --------------------------------------------------------------------------------

def _rewrite_first_field(text: str, facts: Facts, column: int, notes: list[str]) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        fields = line.split()
        if len(fields) > column and not line.lstrip().startswith("#"):
            new = facts.uuid_ref(fields[column])
            if new:
                # Keep the line's own spacing: replace the field where it stands.
                m = list(re.finditer(r"\S+", line))[column]
                line = line[:m.start()] + new + line[m.end():]
                notes.append(f"{fields[column]} -> {new}")
        out.append(line)
    return "".join(out)


def _nofail(text: str, facts: Facts, step: StepPlan) -> str:
    """Lines naming a filesystem no VM disk was found to hold get `nofail`: the VM boots without
    it rather than stopping in emergency mode. Each says so as a warning, every run."""
    out = []
    for line in text.splitlines(keepends=True):
        fields = line.split()
        if len(fields) > 2 and not line.lstrip().startswith("#") and fields[0] in facts.unplaced \
                and fields[1] != "/":
            options = fields[3].split(",") if len(fields) > 3 else []
            if "nofail" not in options:
                if len(fields) > 3:
                    m = list(re.finditer(r"\S+", line))[3]
                    line = line[:m.start()] + fields[3] + ",nofail" + line[m.end():]
                else:
                    body = line.rstrip("\n")
                    line = body + " defaults,nofail" + line[len(body):]
            step.warn(f"{facts.unplaced[fields[0]]}: {fields[1]} is marked nofail in /etc/fstab, so the "
                      "VM boots without it. Attach the disk that holds it to the VM and put "
                      f"its UUID in place of {fields[0]} in the guest's /etc/fstab.")
        out.append(line)
    return "".join(out)


def fstab(tree: GuestTree, facts: Facts) -> StepPlan:
    step = StepPlan("device names in fstab")
    text = tree.read("/etc/fstab")
    if text is not None:
        new = _nofail(_rewrite_first_field(text, facts, 0, step.notes), facts, step)
        step.changes = _change(tree, "/etc/fstab", new)
    return step


def crypttab(tree: GuestTree, facts: Facts) -> StepPlan:
    step = StepPlan("device names in crypttab")
    text = tree.read("/etc/crypttab")
    if text is not None:
        step.changes = _change(tree, "/etc/crypttab", _rewrite_first_field(text, facts, 1, step.notes))
    return step


# A value ends at a blank, a quote or a colon (cryptdevice=/dev/sda2:name), except in the by-id and
# by-path names that hold colons themselves (pci-0000:00:1f.2-ata-1-part2).
CMDLINE_DEVICE = re.compile(r"(?<![\w.-])(root|resume|cryptdevice|RESUME)="
                            r"(/dev/disk/by-(?:id|path)/[^\s\"']*?-part\d+(?=[\s\"':]|$)|[^\s\"':]+)")


def rewrite_cmdline(text: str, facts: Facts) -> str:
    """root=, resume= and cryptdevice= naming old devices → UUID=…, wherever they appear."""
    def sub(m: re.Match) -> str:
        return f"{m[1]}={facts.uuid_ref(m[2]) or m[2]}"
    return CMDLINE_DEVICE.sub(sub, text)


def resume(tree: GuestTree, facts: Facts) -> StepPlan:
    step = StepPlan("resume device")
    for path in ["/etc/initramfs-tools/conf.d/resume", *tree.glob("/etc/dracut.conf.d/*.conf")]:
        text = tree.read(path)
        if text is not None:
            step.changes += _change(tree, path, rewrite_cmdline(text, facts))
    return step


def grub_defaults(tree: GuestTree, facts: Facts) -> StepPlan:
    """Kernel arguments in /etc/default/grub; and UUIDs back on, since the old names are gone."""
    step = StepPlan("kernel command line in grub defaults")
    text = tree.read("/etc/default/grub")
    if text is None:
        return step
    lines = []
    for line in rewrite_cmdline(text, facts).splitlines(keepends=True):
        if re.match(r"\s*GRUB_DISABLE_LINUX_UUID\s*=\s*[\"']?true", line):
            step.notes.append("GRUB_DISABLE_LINUX_UUID=true removed: grub.cfg must name root by UUID.")
            continue
        lines.append(line)
    step.changes = _change(tree, "/etc/default/grub", "".join(lines))
    return step


# extlinux and syslinux menus, where a guest boots with them.
SYSLINUX_MENUS = ("/boot/extlinux/extlinux.conf", "/boot/extlinux.conf", "/extlinux.conf",
                  "/boot/syslinux/syslinux.cfg", "/boot/syslinux/extlinux.conf", "/boot/syslinux.cfg",
                  "/syslinux.cfg")
GRUBENV_BYTES = 1024


def esp_menus(tree: GuestTree) -> list[str]:
    """The GRUB menus on the ESP that the firmware's GRUB reads (EFI/<vendor>/grub.cfg: RHEL and
    CentOS up to 8, /etc/grub2-efi.cfg points there), without the stubs that only hand over to
    /boot/grub2/grub.cfg (RHEL 9, Fedora 34+: `configfile`)."""
    esp = _esp(tree)
    if esp is None:
        return []
    return [p for p in tree.glob(f"{esp}/EFI/*/grub.cfg")
            if "/EFI/BOOT/" not in p.upper() and "configfile" not in (tree.read(p) or "")]


def grubenvs(tree: GuestTree) -> list[str]:
    """GRUB's environment blocks: RHEL 8 keeps the BLS entries' $kernelopts there."""
    esp = _esp(tree)
    return ["/boot/grub2/grubenv", "/boot/grub/grubenv", *(tree.glob(f"{esp}/EFI/*/grubenv") if esp else [])]


def cmdline_files(tree: GuestTree) -> list[str]:
    """Every file of the guest, beside /etc/default/grub, that holds kernel arguments."""
    return [*tree.glob("/boot/loader/entries/*.conf"), "/etc/kernel/cmdline", *esp_menus(tree),
            *grubenvs(tree), *SYSLINUX_MENUS]


def rewrite_grubenv(text: str, facts: Facts) -> str:
    """The environment block with its kernel arguments rewritten, still GRUBENV_BYTES long: GRUB
    reads exactly one block, the rest padded with '#'. Unchanged when the result would not fit."""
    body = text.rstrip("#")
    new = rewrite_cmdline(body, facts)
    if len(text) != GRUBENV_BYTES or len(new.encode()) > GRUBENV_BYTES:
        return text
    return new + "#" * (GRUBENV_BYTES - len(new.encode()))


def boot_entries(tree: GuestTree, facts: Facts) -> StepPlan:
    """BLS entries and /etc/kernel/cmdline (RHEL family, systemd-boot), the ESP's own GRUB menu,
    GRUB's environment block and extlinux menus carry the kernel arguments."""
    step = StepPlan("kernel command line in boot entries")
    for path in cmdline_files(tree):
        text = tree.read(path)
        if text is not None:
            new = rewrite_grubenv(text, facts) if path.endswith("/grubenv") else rewrite_cmdline(text, facts)
            step.changes += _change(tree, path, new)
    return step


LEGACY_GRUB_MENUS = ("/boot/grub/menu.lst", "/boot/grub/grub.conf")


def legacy_grub_entries(tree: GuestTree, facts: Facts) -> StepPlan:
    """GRUB 0.97's menu (menu.lst on SUSE and Debian, grub.conf on RHEL) holds the kernel
    arguments itself; SUSE's /etc/sysconfig/bootloader makes the next menu from its own copy."""
    step = StepPlan("kernel command line in legacy GRUB")
    for path in (*LEGACY_GRUB_MENUS, "/etc/sysconfig/bootloader"):
        text = tree.read(path)
        if text is not None:
            step.changes += _change(tree, path, rewrite_cmdline(text, facts))
    return step


# --- hardware bindings ---------------------------------------------------------------------------

# 70-persistent-net.rules is the network step's: it moves its MACs to the VM's NICs.
BINDINGS = ("/etc/udev/rules.d/70-persistent-cd.rules",
            "/etc/lvm/devices/system.devices", "/etc/blkid.tab", "/etc/blkid/blkid.tab",
            "/boot/grub/device.map", "/boot/grub2/device.map",
            # Multipath's names and known WWIDs of the source's SAN disks: none of them is in the VM.
            "/etc/multipath/bindings", "/etc/multipath/wwids")


def hardware_bindings(tree: GuestTree, facts: Facts) -> StepPlan:
    """Files that pin the old disks and NICs: removed, the guest recreates what it needs."""
    step = StepPlan("hardware bindings")
    for path in BINDINGS:
        step.changes += _change(tree, path, None)
    return step


MDADM_CONFS = ("/etc/mdadm/mdadm.conf", "/etc/mdadm.conf")   # Debian's; everyone else's


def _logical_lines(text: str) -> list[str]:
    """mdadm.conf's lines with their continuations (lines that start with blanks) attached."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if out and line[:1] in (" ", "\t") and line.strip() and not out[-1].lstrip().startswith("#"):
            out[-1] += line
        else:
            out.append(line)
    return out


def _array_line(line: str, facts: Facts, notes: list[str]) -> tuple[str, str | None]:
    """(the ARRAY line as it should be, the UUID it names): identified by UUID, no member names."""
    words = line.split()
    keys = {w.split("=", 1)[0].lower(): w.split("=", 1)[1] for w in words[1:] if "=" in w}
    uuid = keys.get("uuid")
    kept = [w for w in words if not w.lower().startswith("devices=")]
    if uuid is None:
        # Found by name or by its members' old names: give it its UUID, which the copy kept.
        by_name = [a for a in facts.arrays if a.name and keys.get("name") == a.name]
        numbers = {ref[1] for d in keys.get("devices", "").split(",") if (ref := partition_ref(d))}
        by_member = [a for a in facts.arrays if numbers & set(a.partitions)]
        if not (by_name or by_member):
            return line, None
        uuid = (by_name or by_member)[0].uuid
        kept.append(f"UUID={uuid}")
    elif "devices" not in keys:
        return line, uuid
    notes.append(f"{words[1]}: identified by UUID {uuid}" +
                 (", member names dropped" if "devices" in keys else ""))
    return " ".join(kept) + "\n", uuid


def mdadm_conf(tree: GuestTree, facts: Facts) -> StepPlan:
    """mdadm.conf finds arrays by UUID (the copy kept them), not by the old disks' names; the
    initramfs rebuild takes it into the image."""
    step = StepPlan("RAID arrays in mdadm.conf")
    path = next((p for p in MDADM_CONFS if tree.exists(p)), None)
    if path is None:
        if facts.arrays:
            step.notes.append("No mdadm.conf: the guest's initramfs finds its arrays by scanning.")
        return step
    out, named = [], set()
    for line in _logical_lines(tree.read(path) or ""):
        words = line.split()
        if words[:1] == ["DEVICE"] and any(w.startswith("/dev/") for w in words[1:]):
            step.notes.append(f"{' '.join(words)} -> DEVICE partitions containers")
            line = "DEVICE partitions containers\n"
        elif words[:1] == ["ARRAY"] and len(words) > 1:
            line, uuid = _array_line(line, facts, step.notes)
            named.add((uuid or "").lower())
        out.append(line)
    text = "".join(out)
    for array in facts.arrays:
        if array.uuid.lower() not in named and array.name:
            sep = "" if not text or text.endswith("\n") else "\n"
            text += (f"{sep}ARRAY /dev/md/{array.name.split(':')[-1]} metadata={array.metadata} "
                     f"UUID={array.uuid} name={array.name}\n")
            step.notes.append(f"{array.name} ({array.level}) added, as mdadm --examine --scan gives it")
    step.changes = _change(tree, path, text)
    return step


# --- network -------------------------------------------------------------------------------------

def network(tree: GuestTree, facts: Facts) -> StepPlan:
    """Old NICs onto the VM's, under the names the guest will give them: see agent/repair/network.py."""
    return network_step(tree, facts.source_nics, facts.vm_nics, facts.nics, family(tree))


# --- initramfs -----------------------------------------------------------------------------------

def _module_name(entry: str) -> str:
    return re.sub(r"\.ko(\.\w+)?$", "", entry.rsplit("/", 1)[-1]).replace("-", "_")


def kernels(tree: GuestTree) -> list[str]:
    """Installed kernel versions: those with modules under /lib/modules or /usr/lib/modules."""
    found = {p.split("/")[-2] for pattern in ("/lib/modules/*/modules.dep", "/usr/lib/modules/*/modules.dep")
             for p in tree.glob(pattern)}
    return sorted(found)


def needed_drivers(tree: GuestTree, only_if_present: tuple[str, ...] = ()) -> list[str]:
    """The VM drivers that some installed kernel has as a loadable module.

    A driver built into every kernel needs nothing, and one no kernel has cannot be added (dracut
    would fail on it). With no module index to read, every driver is asked for, except those in
    `only_if_present` (names only some kernels use).
    """
    modular, builtin = set(), set()
    for version in kernels(tree):
        for base in ("/lib/modules", "/usr/lib/modules"):
            dep = tree.read(f"{base}/{version}/modules.dep")
            if dep is not None:
                modular |= {_module_name(line.split(":", 1)[0]) for line in dep.splitlines() if ":" in line}
                builtin |= {_module_name(line) for line in (tree.read(f"{base}/{version}/modules.builtin") or "").split()}
                break
    if not modular:
        return list(VM_DRIVERS)
    return [d for d in VM_DRIVERS + only_if_present if d.replace("-", "_") in modular]


def initramfs_tool(tree: GuestTree) -> str | None:
    for tool, marker in (("initramfs-tools", "/etc/initramfs-tools/initramfs.conf"),
                         ("mkinitcpio", "/etc/mkinitcpio.conf"),
                         ("dracut", "/etc/dracut.conf")):
        if tree.exists(marker):
            return tool
    if tree.glob("/etc/dracut.conf.d/*") or any(tree.exists(f"{d}/dracut") for d in ("/usr/bin", "/usr/sbin", "/sbin")):
        return "dracut"
    if family(tree) == "suse" and (tree.exists("/sbin/mkinitrd") or tree.exists("/usr/sbin/mkinitrd")):
        return "mkinitrd"
    if family(tree) == "rhel" and tree.exists("/sbin/mkinitrd"):
        return "mkinitrd-rhel"
    return None


# RHEL 5's disk drivers for the VM: the PV-on-HVM kmod's, kernel-xen's, the mainline PV driver,
# the emulated IDE's; sd_mod for the disks behind them.
RHEL5_DISK_DRIVERS = ("xen-vbd", "xenblk", "xen-blkfront", "ata_piix", "sd_mod")


def kernel_modules(tree: GuestTree, version: str) -> set[str]:
    """The loadable modules of one installed kernel, by name (underscores)."""
    dep = tree.read(f"/lib/modules/{version}/modules.dep") or ""
    return {_module_name(line.split(":", 1)[0]) for line in dep.splitlines() if ":" in line}


def initramfs_drivers(tree: GuestTree, facts: Facts) -> StepPlan:
    """Ask the guest's initramfs generator for the VM's drivers, and not to build host-only."""
    step = StepPlan("initramfs drivers")
    drivers = needed_drivers(tree)
    tool = initramfs_tool(tree)
    if tool is None:
        step.notes.append("No initramfs generator found (initramfs-tools, dracut, mkinitcpio, "
                          "SUSE's or RHEL 5's mkinitrd).")
    elif tool == "mkinitrd-rhel":
        step.notes.append("RHEL 5's mkinitrd takes the VM's disk drivers on its command line "
                          "(--with) when the initrd is rebuilt; a kernel installed later builds its "
                          "initrd without them unless /etc/modprobe.conf names them "
                          "(alias scsi_hostadapter1 xen-vbd).")
    elif tool == "mkinitrd":
        # SUSE before dracut (SLES 11): the initrd holds INITRD_MODULES from /etc/sysconfig/kernel.
        # Its Xen PV drivers for HVM guests come from xen-kmp as xen-vbd and xen-vnif.
        drivers = needed_drivers(tree, ("xen-vbd", "xen-vnif"))
        conf = tree.read(SUSE_KERNEL_CONF) or ""
        m = re.search(r'(?m)^INITRD_MODULES="([^"]*)"', conf)
        present = m[1].split() if m else []
        missing = [d for d in drivers if d not in present and d.replace("-", "_") not in present]
        if missing:
            line = 'INITRD_MODULES="' + " ".join(present + missing) + '"'
            sep = "" if not conf or conf.endswith("\n") else "\n"
            conf = conf[:m.start()] + line + conf[m.end():] if m else conf + sep + line + "\n"
            step.changes += _change(tree, SUSE_KERNEL_CONF, conf)
    elif tool == "initramfs-tools":
        conf = tree.read("/etc/initramfs-tools/initramfs.conf") or ""
        # MODULES=dep keeps only the drivers of the machine the initramfs is built on.
        step.changes += _change(tree, "/etc/initramfs-tools/initramfs.conf",
                                re.sub(r"(?m)^MODULES=dep\b", "MODULES=most", conf))
        text = tree.read("/etc/initramfs-tools/modules") or ""
        listed = {line.split()[0].replace("-", "_") for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")}
        missing = [d for d in drivers if d.replace("-", "_") not in listed]
        if missing:
            sep = "" if not text or text.endswith("\n") else "\n"
            step.changes += _change(tree, "/etc/initramfs-tools/modules",
                                    text + sep + MARK + "\n" + "".join(f"{d}\n" for d in missing))
    elif tool == "dracut":
        # Not host-only, dracut leaves mdadm.conf out unless told: the arrays would then come up
        # under other names than the guest's.
        md = ("# The guest's mdadm.conf names its arrays.\nmdadmconf=\"yes\"\n"
              if any(tree.exists(p) for p in MDADM_CONFS) else "")
        step.changes += _change(tree, "/etc/dracut.conf.d/90-xenp2v.conf",
                                f"{MARK}\nadd_drivers+=\" {' '.join(drivers)} \"\n"
                                "# Built in a chroot, a host-only image would hold the wrong machine's drivers.\n"
                                "hostonly=\"no\"\n" + md)
    else:
        conf = tree.read("/etc/mkinitcpio.conf") or ""
        m = re.search(r"(?m)^MODULES=\((.*?)\)", conf)
        present = m[1].split() if m else []
        missing = [d for d in drivers if d not in present and d.replace("-", "_") not in present]
        if missing:
            line = "MODULES=(" + " ".join(present + missing) + ")"
            conf = conf[:m.start()] + line + conf[m.end():] if m else conf + line + "\n"
            step.changes += _change(tree, "/etc/mkinitcpio.conf", conf)
    return step


# --- other fixes ---------------------------------------------------------------------------------

def selinux(tree: GuestTree, facts: Facts) -> StepPlan:
    """Files written from outside carry no SELinux labels: relabel at the next boot."""
    step = StepPlan("SELinux relabel")
    config = tree.read("/etc/selinux/config") or ""
    if re.search(r"(?m)^SELINUX=(enforcing|permissive)", config) and not tree.exists("/.autorelabel"):
        step.changes.append(FileChange("/.autorelabel", None, ""))
    return step


_TOOLS = {  # a file that shows the tool is installed → its package
    "/usr/bin/vmtoolsd": "open-vm-tools",
    "/usr/sbin/VBoxService": "virtualbox-guest-utils",
    "/usr/bin/VBoxService": "virtualbox-guest-utils",
}


def hypervisor_tools(tree: GuestTree, facts: Facts) -> StepPlan:
    """Other hypervisors' guest tools: they fail, or fight Xen's, in the VM."""
    step = StepPlan("other hypervisors' tools")
    packages = sorted({pkg for path, pkg in _TOOLS.items() if tree.exists(path)})
    if packages:
        remove = {"debian": ("dpkg", "--purge"), "rhel": ("rpm", "-e"), "suse": ("rpm", "-e"),
                  "arch": ("pacman", "-Rns", "--noconfirm")}.get(family(tree) or "")
        if remove:
            step.commands.append(Command((*remove, *packages), "remove guest tools of another hypervisor"))
    return step


def _needs_tools(tree: GuestTree, plan_so_far: list[StepPlan]) -> bool:
    """Initramfs and bootloader are rebuilt when the files changed or no repair finished here."""
    return any(s.changes for s in plan_so_far) or not tree.exists(STAMP)


def initramfs_rebuild(tree: GuestTree, facts: Facts, done: list[StepPlan]) -> StepPlan:
    step = StepPlan("initramfs rebuild")
    if not _needs_tools(tree, done):
        return step
    tool = initramfs_tool(tree)
    cmd = {"initramfs-tools": ("update-initramfs", "-u", "-k", "all"),
           "dracut": ("dracut", "-f", "--regenerate-all"),
           "mkinitcpio": ("mkinitcpio", "-P"),
           "mkinitrd": ("mkinitrd",)}.get(tool or "")   # SUSE's: every kernel in /boot
    if tool == "mkinitrd-rhel":
        # RHEL 5: one initrd per kernel, as RHEL names them, with the VM's disk drivers that kernel has.
        for v in kernels(tree):
            have = kernel_modules(tree, v)
            withs = [f"--with={d}" for d in RHEL5_DISK_DRIVERS if d.replace("-", "_") in have]
            step.commands.append(Command(("mkinitrd", "-f", *withs, f"/boot/initrd-{v}.img", v),
                                         f"rebuild the initrd of {v} with the VM's disk drivers"))
    elif tool == "dracut" and family(tree) == "rhel" and not tree.exists("/etc/os-release"):
        # RHEL 6's dracut (004) has no --regenerate-all: one image per kernel, as RHEL names them.
        step.commands += [Command(("dracut", "-f", f"/boot/initramfs-{v}.img", v), f"rebuild the initramfs of {v}")
                          for v in kernels(tree)]
    elif cmd:
        step.commands.append(Command(cmd, f"rebuild the initramfs of kernels {', '.join(kernels(tree)) or '(none found)'}"))
    return step


# GRUB's BIOS modules: Debian, Arch and RHEL; some RHEL builds; SUSE.
BIOS_MODULE_DIRS = ("/usr/lib/grub", "/usr/lib/grub2", "/usr/share/grub2")


def _grub(tree: GuestTree) -> tuple[str, str] | None:
    """(command prefix, grub.cfg path): grub2's tools are `grub2-*` on RHEL and SUSE."""
    for prefix, cfg in (("grub", "/boot/grub/grub.cfg"), ("grub2", "/boot/grub2/grub.cfg")):
        if any(tree.exists(f"{d}/{prefix}-mkconfig") for d in ("/usr/sbin", "/usr/bin", "/sbin")):
            return prefix, cfg
    return None


def _esp(tree: GuestTree) -> str | None:
    fstab_text = tree.read("/etc/fstab") or ""
    for line in fstab_text.splitlines():
        fields = line.split()
        if len(fields) > 1 and not line.startswith("#") and fields[1] in ESP_DIRS:
            return fields[1]
    return None


def bootloader(tree: GuestTree, facts: Facts, done: list[StepPlan]) -> StepPlan:
    step = StepPlan("bootloader")
    if not _needs_tools(tree, done):
        return step
    grub = _grub(tree)
    if grub is None and _legacy_grub(tree):
        return _legacy_grub_install(tree, facts, step)
    if grub is None:
        step.notes.append("No GRUB 2 or GRUB 0.97 in the guest: its bootloader is left as it is.")
        return step
    prefix, cfg = grub
    if facts.bios and facts.disk:
        if any(tree.glob(f"{d}/i386-pc/{f}") for d in BIOS_MODULE_DIRS for f in ("core*", "*.mod")):
            step.commands.append(Command((f"{prefix}-install", "--target=i386-pc", facts.disk),
                                         "put GRUB in the VM disk's boot area"))
        else:
            step.notes.append("GRUB's BIOS modules are not installed in the guest: BIOS boot code left as it is.")
    esp = _esp(tree)
    if facts.uefi and esp:
        shims = tree.glob(f"{esp}/EFI/*/shimx64.efi")
        shims = [s for s in shims if "/EFI/BOOT/" not in s.upper()]
        if shims:
            vendor = shims[0].rsplit("/", 1)[0]
            step.commands += [
                Command(("mkdir", "-p", f"{esp}/EFI/BOOT"), "the firmware's fallback path"),
                Command(("cp", shims[0], f"{esp}/EFI/BOOT/BOOTX64.EFI"), "boot shim without an NVRAM entry"),
                Command(("cp", f"{vendor}/grubx64.efi", f"{esp}/EFI/BOOT/grubx64.efi"), "GRUB next to the shim"),
            ]
        else:
            step.commands.append(Command((f"{prefix}-install", "--target=x86_64-efi", f"--efi-directory={esp}",
                                          "--removable", "--no-nvram"),
                                         "GRUB at the firmware's fallback path, found without an NVRAM entry"))
            if facts.nvram:
                step.commands.append(Command((f"{prefix}-install", "--target=x86_64-efi",
                                              f"--efi-directory={esp}"), "a UEFI boot entry for the VM"))
    step.commands.append(Command((f"{prefix}-mkconfig", "-o", cfg), "regenerate the boot menu with UUIDs"))
    if facts.uefi:
        step.commands += [Command((f"{prefix}-mkconfig", "-o", menu), "regenerate the menu the firmware's GRUB reads")
                          for menu in esp_menus(tree)]
    return step


# The shell's exit status says nothing: its errors are in what it prints ("Error 15: …").
LEGACY_SETUP = ('out=$(printf "$1" | grub --batch --no-floppy --device-map=/dev/null 2>&1); '
                'echo "$out"; case "$out" in *"Error "*) exit 1;; esac')


def _legacy_grub(tree: GuestTree) -> bool:
    """GRUB 0.97: its shell and a menu it boots from."""
    return any(tree.exists(f"{d}/grub") for d in ("/sbin", "/usr/sbin")) and \
        any(tree.exists(menu) for menu in LEGACY_GRUB_MENUS)


def _boot_partition(tree: GuestTree, facts: Facts) -> int | None:
    """The partition number, on the VM's disk, of the filesystem that holds /boot/grub."""
    entries = {fields[1]: fields[0] for fields in (line.split() for line in (tree.read("/etc/fstab") or "").splitlines())
               if len(fields) > 1 and not fields[0].startswith("#")}
    spec = entries.get("/boot") or entries.get("/")
    if spec is None:
        return None
    if spec.startswith("UUID="):
        fs = next((f for f in facts.filesystems if f.uuid == spec[5:]), None)
    else:
        fs = facts.names.get(spec) or next((f for f in facts.filesystems if f.device == spec), None)
    return fs.partition if fs else None


def _legacy_grub_install(tree: GuestTree, facts: Facts, step: StepPlan) -> StepPlan:
    """GRUB 0.97 into the VM disk's boot area, through its own shell.

    grub-install 0.97 maps the disk to a BIOS drive through device.map and knows only the kernel
    names of its day (a repair from the host sees a loop device); the shell, told which file is
    (hd0), needs neither. The menu was fixed by the legacy GRUB step; there is nothing to generate.
    """
    if not (facts.bios and facts.disk):
        step.notes.append("GRUB 0.97 boots BIOS machines only: its boot code is left as it is.")
        return step
    number = _boot_partition(tree, facts)
    if number is None:
        step.notes.append("The partition holding /boot/grub is not on this disk: GRUB 0.97 left as it is.")
        return step
    # /boot/grub on the VM's second disk: (hd1) to GRUB, while the boot code goes to (hd0).
    home = "(hd1" if facts.root_disk else "(hd0"
    second = rf"device (hd1) {facts.root_disk}\n" if facts.root_disk else ""
    script = rf"device (hd0) {facts.disk}\n{second}root {home},{number - 1})\nsetup (hd0)\nquit\n"
    step.commands.append(Command(("sh", "-c", LEGACY_SETUP, "grub", script),
                                 "put GRUB 0.97 in the VM disk's boot area"))
    return step


def guest_tools_step(tree: GuestTree, facts: Facts, done: list[StepPlan]) -> StepPlan:
    """The pool's guest agent, when asked for (--guest-tools, p2v.guest_tools=)."""
    return guest_tools.plan(tree, facts.guest_tools, family(tree), facts.guest_tools_source,
                            facts.guest_tools_problem)


def stamp(tree: GuestTree, facts: Facts, done: list[StepPlan]) -> StepPlan:
    step = StepPlan("repair record")
    if _needs_tools(tree, done):
        step.changes = _change(tree, STAMP, "repaired by xenp2v\n")
    return step


FILE_STEPS: tuple[Callable[[GuestTree, Facts], StepPlan], ...] = (
    fstab, crypttab, resume, grub_defaults, boot_entries, legacy_grub_entries, hardware_bindings,
    lvm_filters, install_devices, mdadm_conf, network,
    initramfs_drivers, selinux, hypervisor_tools,
)
TOOL_STEPS = (initramfs_rebuild, bootloader, guest_tools_step, stamp)


def plan_repair(tree: GuestTree, facts: Facts) -> list[StepPlan]:
    """Every step's plan, in order; the tool steps see what the file steps will change."""
    done = [step(tree, facts) for step in FILE_STEPS]
    return done + [step(tree, facts, done) for step in TOOL_STEPS]
