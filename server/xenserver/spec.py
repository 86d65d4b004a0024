"""The VM a job asks for, read from the agent's inventory: pure data, no pool involved.

Both the XAPI provisioning and the XVA export start from a VmSpec, so the VM created online and
the one imported offline have the same CPUs, memory, firmware, MACs and disks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from xenp2v.protocol import vm_firmware

MIB = 1024 * 1024
# XAPI refuses dynamic memory below its static minimum; the templates' own floor is far above it.
MIN_MEMORY = 256 * MIB
DEFAULT_MEMORY = 2048 * MIB
CD_USERDEVICE = "3"          # where XenCenter puts the DVD drive
# The devices an HVM guest sees on its emulated IDE buses (hda-hdd): a CD drive elsewhere is
# invisible to it (xenopsd gives qemu no IDE device past 3; blkfront takes no CD-ROM in HVM).
EMULATED_IDE = ("0", "1", "2", "3")


def cd_userdevices(disk_count: int, tools: bool) -> tuple[str, str | None]:
    """The slots of the DVD drive (the xenp2v ISO) and of a second CD drive for the tools ISO
    (None when not wanted, or with three disks or more: no emulated slot left). With both, the
    two last free emulated slots, the xenp2v ISO first: a BIOS that boots only the first CD-ROM
    (ROMBIOS takes the first ATAPI device) must find the ISO there, not the tools ISO."""
    free = [slot for slot in EMULATED_IDE if slot not in disk_userdevices(disk_count)]
    if not tools or len(free) < 2:
        return CD_USERDEVICE, None
    return free[-2], free[-1]


def disk_userdevices(count: int) -> list[str]:
    """Disk slots 0, 1, 2, 4, 5...: slot 3 is the CD drive's."""
    slots = [str(i) for i in range(count + 1) if str(i) != CD_USERDEVICE]
    return slots[:count]


@dataclass(frozen=True)
class DiskSpec:
    id: str
    size: int          # bytes; the VDI's virtual size


@dataclass(frozen=True)
class NicSpec:
    name: str
    mac: str           # lower-case aa:bb:cc:dd:ee:ff, or "" to let the pool choose


@dataclass(frozen=True)
class VmSpec:
    name: str
    vcpus: int
    memory: int                     # bytes
    firmware: str                   # "bios" or "uefi"
    windows: bool
    disks: tuple[DiskSpec, ...]
    nics: tuple[NicSpec, ...]
    system_uuid: str = ""           # the source's SMBIOS UUID (informational; the VM gets its own)
    adjustments: tuple[str, ...] = field(default=())  # what was changed to fit, said in sentences
    secure_boot: bool = False       # the source booted UEFI with Secure Boot on


def _os_text(machine: dict) -> str:
    value = machine.get("os")
    if isinstance(value, dict):
        return " ".join(str(v) for v in value.values() if isinstance(v, (str, int)))
    return str(value or "")


def _mac(value: object) -> str:
    text = str(value or "").strip().lower().replace("-", ":")
    parts = text.split(":")
    if len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        return text
    return ""


NEW_MACS_WARNING = ("The VM gets new MACs: DHCP reservations, firewall rules and licences tied to the "
                    "source's MACs do not follow it (what new MACs buy: the source may come back on the same LAN).")


def vm_spec(job: dict, keep_macs: bool = True) -> VmSpec:
    """The VM for a job: name from the job, vCPUs, memory, firmware, NICs and disks from its inventory.

    The source's MACs are kept (DHCP reservations, firewall rules and licences follow them) unless
    ``keep_macs`` is False (the server's --new-macs); a NIC's own ``keep_mac`` (the choice made on
    the source, in the TUI) wins over either.

    The agent's own overrides (``vcpus`` and ``memory`` at the top of the inventory, from
    ``p2v.vcpus`` / ``p2v.memory``) win over what the source machine had.
    """
    inventory = job.get("inventory") or {}
    machine = inventory.get("machine") or {}
    name = str(job.get("name") or inventory.get("name") or job.get("id") or "p2v")
    vcpus = int(inventory.get("vcpus") or machine.get("cpus") or 1)
    memory = int(inventory.get("memory") or machine.get("memory") or DEFAULT_MEMORY)
    # The agent's capture puts firmware and NICs in "machine"; its unattended mode at the top,
    # where each NIC may carry its own "keep_mac" (the TUI's choice on the source).
    firmware = vm_firmware(inventory)
    nics = tuple(
        NicSpec(str(nic.get("name") or f"nic{i}"),
                _mac(nic.get("mac")) if nic.get("keep_mac", keep_macs) is not False else "")
        for i, nic in enumerate(machine.get("nics") or inventory.get("nics") or [])
    )
    disks = tuple(DiskSpec(str(d["id"]), int(d["size"])) for d in inventory.get("disks") or [])
    adjustments = []
    if memory < MIN_MEMORY:
        adjustments.append(f"Memory raised from {memory // MIB} MiB to {MIN_MEMORY // MIB} MiB, "
                           "the least a VM gets.")
        memory = MIN_MEMORY
    # XAPI wants memory in whole MiB-aligned amounts for HVM guests' static limits.
    memory = (memory + MIB - 1) // MIB * MIB
    return VmSpec(
        name=name,
        vcpus=max(1, vcpus),
        memory=memory,
        firmware=firmware,
        windows="windows" in _os_text(machine).lower(),
        disks=disks,
        nics=nics,
        system_uuid=str(machine.get("system_uuid") or ""),
        adjustments=tuple(adjustments),
        secure_boot=firmware == "uefi" and machine.get("secure_boot") is True,
    )


def fit_to_host(spec: VmSpec, host_cpus: int, host_free_memory: int) -> VmSpec:
    """The spec bounded by what the host has, with each change said in ``adjustments``."""
    notes = list(spec.adjustments)
    vcpus, memory = spec.vcpus, spec.memory
    if host_cpus and vcpus > host_cpus:
        notes.append(f"vCPUs lowered from {vcpus} to {host_cpus}, the host's CPU count.")
        vcpus = host_cpus
    limit = host_free_memory // MIB * MIB
    if limit and memory > limit:
        notes.append(f"Memory lowered from {memory // MIB} MiB to {limit // MIB} MiB, "
                     "what the host has free.")
        memory = max(MIN_MEMORY, limit)
    return replace(spec, vcpus=vcpus, memory=memory, adjustments=tuple(notes))
