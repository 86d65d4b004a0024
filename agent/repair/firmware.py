"""Whether the VM's firmware will find boot code on its boot disk.

The VM gets the firmware the source booted the live stick with (xenp2v.protocol.vm_firmware, as
provisioning decides it). A UEFI system on a GPT disk has no place for BIOS boot code unless the
disk has a BIOS boot partition; a BIOS system on an MBR disk has no EFI system partition. GRUB
cannot make either appear, so such a repair fails up front, saying what to change, rather than
reporting ok for a VM that stops at its firmware.
"""

from __future__ import annotations

from pathlib import Path

from xenp2v.protocol import vm_firmware


def firmware_of_vm(inventory: dict | None, in_the_vm: bool, efi: Path = Path("/sys/firmware/efi")) -> str | None:
    """"bios" or "uefi": the job's VM's firmware; the running one when repair runs in the VM
    itself without a job; None when neither says (a disk attached to another machine)."""
    if inventory:
        return vm_firmware(inventory)
    if in_the_vm:
        return "uefi" if efi.is_dir() else "bios"
    return None


def boot_problem(firmware: str | None, disk: str, bios_fits: bool, has_esp: bool) -> str | None:
    """The sentence that stops the repair when the VM's firmware finds no place for boot code on
    its boot disk `disk`; None when it does, or the firmware is not known."""
    if firmware == "bios" and not bios_fits:
        return (f"The VM starts with BIOS firmware, but its boot disk {disk} has a GPT partition "
                "table without a BIOS boot partition, so BIOS boot code has nowhere to go (the "
                "source booted with UEFI). Give the VM UEFI firmware (xe vm-param-set uuid=<VM> "
                "HVM-boot-params:firmware=uefi) and run repair again; or add a BIOS boot partition "
                "(1 MiB, type EF02) to that disk first. Nothing was changed.")
    if firmware == "uefi" and not has_esp:
        return (f"The VM starts with UEFI firmware, but its boot disk {disk} has no EFI system "
                "partition, so UEFI boot code has nowhere to go (the source booted with BIOS). Give "
                "the VM BIOS firmware (xe vm-param-set uuid=<VM> HVM-boot-params:firmware=bios) "
                "and run repair again. Nothing was changed.")
    return None
