"""Where the guest's package tools will install the boot loader next time.

The first boot works whatever these say; the next grub package upgrade reads them and fails on
the source's disk (`/dev/disk/by-id/ata-…`, gone in the VM). Debian keeps the answer in debconf's
database (grub-pc/install_devices: disks; grub-efi/install_devices: the ESP), SUSE in
/etc/default/grub_installdevice.
"""

from __future__ import annotations

from agent.repair.facts import Facts, guest_disk_name, partition_ref
from agent.repair.plan import FileChange, StepPlan
from agent.repair.tree import GuestTree

DEBCONF = "/var/cache/debconf/config.dat"
SUSE_INSTALLDEVICE = "/etc/default/grub_installdevice"


def _esp_partition(facts: Facts) -> int | None:
    return next((fs.partition for fs in facts.filesystems if fs.fstype == "vfat" and fs.partition), None)


def set_debconf(text: str, values: dict[str, str], notes: list[str]) -> str:
    """debconf's config.dat with the Value of each question in `values` set, where it had one
    naming something else (an empty answer stays: the package asks)."""
    out, name = [], None
    for line in text.splitlines(keepends=True):
        if not line.strip():
            name = None
        elif line.startswith("Name:"):
            name = line[5:].strip()
        elif line.startswith("Value:") and name in values:
            current = line[6:].strip()
            if current and current != values[name]:
                notes.append(f"{name}: {current} -> {values[name]}")
                line = f"Value: {values[name]}\n"
        out.append(line)
    return "".join(out)


def install_devices(tree: GuestTree, facts: Facts) -> StepPlan:
    step = StepPlan("where the boot loader is installed next time")
    disk = guest_disk_name(facts)
    old = tree.read(DEBCONF)
    if old is not None:
        values = {"grub-pc/install_devices": disk}
        esp = _esp_partition(facts)
        if esp:
            values["grub-efi/install_devices"] = f"{disk}{esp}"
        new = set_debconf(old, values, step.notes)
        if new != old:
            step.changes.append(FileChange(DEBCONF, old, new))
    old = tree.read(SUSE_INSTALLDEVICE)
    if old is not None:
        lines = []
        for line in old.splitlines(keepends=True):
            device = line.strip()
            if device.startswith("/dev/"):
                ref = partition_ref(device)
                wanted = f"{disk}{ref[1]}" if ref else disk
                if device != wanted:
                    step.notes.append(f"{SUSE_INSTALLDEVICE}: {device} -> {wanted}")
                    line = wanted + "\n"
            lines.append(line)
        new = "".join(lines)
        if new != old:
            step.changes.append(FileChange(SUSE_INSTALLDEVICE, old, new))
    return step
