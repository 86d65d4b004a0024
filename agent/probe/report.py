"""A Machine as a report a technician reads on the console or in a bug report."""

from __future__ import annotations

from agent.probe.model import Disk, Filesystem, Machine


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fs(fs: Filesystem | None) -> str:
    if fs is None:
        return "no filesystem"
    bits = [fs.type or "?"]
    if fs.label:
        bits.append(f'"{fs.label}"')
    if fs.uuid:
        bits.append(f"UUID {fs.uuid}")
    if fs.used is not None:
        bits.append(f"used {human_size(fs.used)} of {human_size(fs.size)}")
    if fs.os:
        bits.append(f"— {_os(fs)}")
    elif fs.boot_files:
        bits.append(f"— /boot with {', '.join(fs.boot_files)}")
    return "  ".join(bits)


def _os(fs: Filesystem) -> str:
    o = fs.os
    text = o.name + (f" build {o.build}" if o.build else "")
    text += "".join(f", {label} {v}" for label, v in (("edition", o.edition), ("arch", o.arch),
                                                      ("boots", o.control_set)) if v)
    if o.hostname:
        text += f", host {o.hostname}"
    if o.kernels:
        text += f", kernels {' '.join(o.kernels)}"
    if o.root != "/":
        text += f", in subvolume {o.root}"
    return text


def _disk_line(disk: Disk, read: bool = True) -> str:
    kind = "HDD" if disk.rotational else "SSD/flash"
    bits = [f"{disk.name:<10} {human_size(disk.size):>10}"]
    if disk.model or disk.serial:
        bits.append(" ".join(filter(None, [disk.model, f"({disk.serial})" if disk.serial else None])))
    details = [disk.transport or "unknown bus", kind,
               f"{disk.logical_sector}/{disk.physical_sector} sectors"]
    if disk.removable:
        details.append("removable")
    if disk.wwn:
        details.append(f"WWN {disk.wwn}")
    if read:
        details.append({"gpt": "GPT", "dos": "MBR"}.get(disk.table or "", "no partition table"))
    bits.append(", ".join(details))
    return "  ".join(bits)


def render(machine: Machine) -> str:
    lines = []
    ident = " ".join(filter(None, [machine.vendor, machine.product])) or "unknown machine"
    extra = []
    if machine.serial:
        extra.append(f"serial {machine.serial}")
    if machine.system_uuid:
        extra.append(f"SMBIOS UUID {machine.system_uuid}")
    lines.append(f"Machine:  {ident}" + (f" ({', '.join(extra)})" if extra else ""))
    lines.append(f"Firmware: {machine.firmware.upper()}    "
                 f"Virtual machine: {'yes' if machine.is_virtual else 'no'}")
    if machine.cpu:
        c = machine.cpu
        lines.append(f"CPU:      {c.model}: {c.sockets} socket(s), {c.cores} core(s), "
                     f"{c.threads} thread(s)")
    lines.append(f"Memory:   {human_size(machine.memory)}")
    lines.append("Network:" if machine.nics else "Network:  no network card found")
    for nic in machine.nics:
        speed = f"{nic.speed} Mbit/s" if nic.speed else "speed unknown"
        lines.append(f"  {nic.name:<10} {nic.mac}  {nic.driver or '?'}  {speed}  "
                     f"link {'up' if nic.link else 'down'}  {' '.join(nic.addresses)}".rstrip())
        others = [n for n in dict.fromkeys([*nic.altnames, *nic.udev_names.values()]) if n != nic.name]
        if others:
            lines.append(f"  {'':<10} also named {', '.join(others)}")
    lines.append("Disks:" if machine.disks else "Disks:    none found to migrate")
    for disk in machine.disks:
        lines.append("  " + _disk_line(disk))
        if disk.fs:
            lines.append(f"    (whole disk)  {_fs(disk.fs)}")
        for p in disk.partitions:
            name = p.path.removeprefix("/dev/")
            lines.append(f"    {name:<12} {human_size(p.size):>10}  {_fs(p.fs)}")
        lines += [f"    in use: {sentence}" for sentence in disk.in_use]
    for vg in machine.volume_groups:
        lines.append(f"LVM volume group {vg.name}: {human_size(vg.size)} on {', '.join(vg.pvs)}")
        for lv in vg.lvs:
            lines.append(f"    {lv.path:<20} {human_size(lv.size):>10}  {_fs(lv.fs)}")
    for raid in machine.raids:
        state = raid.path or "not assembled"
        lines.append(f"RAID {raid.level} {raid.name or raid.uuid} ({state}): "
                     f"{', '.join(raid.members)} of {raid.raid_devices}")
        lines.append(f"    {_fs(raid.fs)}")
    for luks in machine.luks:
        lines.append(f"Encrypted (LUKS{luks.version or ''}): {luks.device}  UUID {luks.uuid}")
    for mp in machine.multipaths:
        lines.append(f"Multipath {mp.name} (WWID {mp.wwid}): {', '.join(mp.paths)}")
    if machine.boot_medium:
        lines.append("Boot medium (not offered): " + _disk_line(machine.boot_medium, read=False))
    roots = machine.os_roots()
    lines.append("Operating systems:" if roots else "Operating systems: none found")
    for where, fs in roots:
        lines.append(f"  {where}: {_os(fs)}")
    if machine.problems:
        lines.append("Problems:")
        lines += [f"  - {p}" for p in machine.problems]
    if machine.note:
        lines.append(f"Note: {machine.note}")
    return "\n".join(lines) + "\n"
