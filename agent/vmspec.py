"""The VM a machine becomes, as the settings choose it: the defaults a probe gives (name, vCPUs,
memory), which disks p2v.disks means, and the warnings a choice deserves (a system or a volume
group on a disk left out, over XenServer's limits, Windows).

Pure: it takes the probe and the settings and returns data. The TUI's Disks, VM and Summary
screens show these warnings as the technician chooses; the unattended run says them before a
capture.
"""

from __future__ import annotations

from agent.probe import Disk, Machine
from agent.probe.report import human_size
from agent.settings import Settings

VHD_LIMIT = 2040 << 30      # VHD-based storage holds at most about 2 TiB per disk
XEN_VCPUS = 32              # what XenServer supports for most guests
# The TUI says "is not ticked" instead (agent.tui.common.FORM_WORDS).
NOT_CHOSEN = "is not chosen (--disks, p2v.disks=)"


def default_name(machine: Machine) -> str:
    for _, fs in machine.os_roots():
        if fs.os.hostname:
            return fs.os.hostname
    return (machine.product or "migrated").replace(" ", "-")[:40]


def default_vcpus(machine: Machine) -> int:
    return machine.cpu.threads if machine.cpu else 2


def default_memory(machine: Machine) -> int:
    """The machine's memory as a person would size a VM: the kernel's total (24105M, short of
    what is installed by what firmware keeps) rounded to whole GiB, or to 256M below 2G."""
    size = machine.memory or 2 << 30
    step = 1 << 30 if size >= 2 << 30 else 256 << 20
    return max(step, (size + step // 2) // step * step)


def memory_text(size: int) -> str:
    gib = size / (1 << 30)
    return f"{gib:.0f}G" if gib >= 1 and gib == int(gib) else f"{size >> 20}M"


def vcpus_text(count: int) -> str:
    return f"{count} vCPU" + ("" if count == 1 else "s")


def wanted_here(machine: Machine, wanted: list[str] | None) -> set[str]:
    """The paths of the disks p2v.disks names (by name or path) that this machine has; all of
    them when it names none."""
    if wanted is None:
        return {d.path for d in machine.disks}
    return {d.path for d in machine.disks if d.name in wanted or d.path in wanted}


def on_disk(machine: Machine, disk: Disk, where: str) -> bool:
    """Whether `where` (a partition, LV or array) lives on `disk`."""
    if where.startswith(disk.path):
        return True
    for vg in machine.volume_groups:
        if any(lv.path == where for lv in vg.lvs):
            return any(pv.startswith(disk.path) for pv in vg.pvs)
    for raid in machine.raids:
        if where == (raid.path or f"RAID {raid.name or raid.uuid}"):
            return any(m.startswith(disk.path) for m in raid.members)
    return False


def left_out(machine: Machine, chosen: set[str] | list[str]) -> list[str]:
    """Why the disks chosen (paths) may not be enough: a system, a /boot or a volume group on
    a disk that is not chosen. One sentence each."""
    out = []
    ticked = [d for d in machine.disks if d.path in chosen]
    others = [d for d in machine.disks if d.path not in chosen]
    for disk in others:
        oses = sorted({fs.os.name for where, fs in machine.os_roots() if on_disk(machine, disk, where)})
        if oses:
            out.append(f"{disk.name} holds {', '.join(oses)} but {NOT_CHOSEN}: the VM would "
                       "not have it. Add it to the disks chosen.")
        elif ticked and any(p.fs and p.fs.boot_files for p in disk.partitions):
            out.append(f"{disk.name} holds a /boot with kernels but {NOT_CHOSEN}: the "
                       "copied system may not start without it.")
    for vg in machine.volume_groups:
        on_ticked = {d.name for d in ticked if any(pv.startswith(d.path) for pv in vg.pvs)}
        on_others = {d.name for d in others if any(pv.startswith(d.path) for pv in vg.pvs)}
        if on_ticked and on_others:
            out.append(f"Volume group {vg.name} is also on {', '.join(sorted(on_others))}, which "
                       f"{NOT_CHOSEN}: its volumes would be incomplete.")
    for raid in machine.raids:
        on_ticked = {d.name for d in ticked if any(m.startswith(d.path) for m in raid.members)}
        on_others = {d.name for d in others if any(m.startswith(d.path) for m in raid.members)}
        if on_ticked and on_others:
            out.append(f"RAID {raid.name or raid.uuid} is also on {', '.join(sorted(on_others))}, "
                       f"which {NOT_CHOSEN}.")
    return out


def warnings(machine: Machine, settings: Settings, vcpus: int | None, memory: int | None) -> list[str]:
    """What the technician should know about this VM before the transfer, one sentence each."""
    chosen = wanted_here(machine, settings.disks)
    out = left_out(machine, chosen)
    if vcpus and vcpus > XEN_VCPUS:
        out.append(f"{vcpus_text(vcpus)}: XenServer supports at most {XEN_VCPUS} for most guests.")
    # The default rounds the kernel's total up to whole GiB: that is not more than it has.
    if memory and machine.memory and memory > max(machine.memory, default_memory(machine)):
        out.append(f"{human_size(memory)} is more memory than this machine has; check that the "
                   "pool's host has that much free.")
    for disk in machine.disks:
        if disk.path in chosen and disk.size > VHD_LIMIT:
            out.append(f"{disk.name} is {human_size(disk.size)}: over 2 TiB, it cannot go into a "
                       "VHD or a VHD-based storage repository; use raw or qcow2 storage.")
    if any(fs.os.family == "windows" for _, fs in machine.os_roots()):
        out.append("A Windows system was found: after the transfer, the repair makes it start "
                   "on the VM's disk controller (IDE or NVMe) and disables other hypervisors' "
                   "tools; XenServer's PV drivers are installed at first boot from the pool's "
                   "tools ISO when the server attaches it, or from the vendor's drivers put on "
                   "the stick (see Windows in the technician's manual).")
    return out
