"""Each pool version's rules for the VM a job gets: PV, firmware, Secure Boot, disk size, NICs.

Pure: takes what the pool said (``Pool.product``, ``Pool.features``, the SR record) and the job's
VmSpec, returns the choices and the sentences that explain them. A rule that cannot be met
raises XenServerError with a sentence saying what to do, before anything is created.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.xenserver.pool import PoolFeatures, Product, XenServerError

GiB = 1024 ** 3
TiB = 1024 ** 4
# sm's vhdutil.MAX_VHD_SIZE: a VHD VDI (file SRs, VHD on LVM) is at most 2040 GiB.
MAX_VHD_SIZE = 2040 * GiB
# XCP-ng's own keep VHDs too: FileSR's kin (xfs, zfs, glusterfs, cephfs, moosefs), largeblock
# (VHD on LVM on 4K disks), linstor (VHD on DRBD).
VHD_SR_TYPES = frozenset({"ext", "nfs", "lvm", "lvmoiscsi", "lvmohba", "lvmofcoe", "file", "smb", "xfs",
                          "zfs", "glusterfs", "cephfs", "moosefs", "largeblock", "linstor"})
# A UEFI VM's firmware and an OS without PV drivers see at most this many emulated NICs.
UEFI_EMULATED_NICS = 2


@dataclass(frozen=True)
class VmChoice:
    """What provisioning makes: firmware, Secure Boot, each disk's image format, and why."""

    firmware: str                         # "bios" or "uefi"
    secure_boot: bool
    disk_formats: tuple[str, ...]         # per disk: "" (the SR's own) or "qcow2"
    notes: tuple[str, ...]


LIMIT = f"{MAX_VHD_SIZE // GiB} GiB ({MAX_VHD_SIZE} bytes)"


def _size(n: int) -> str:
    return f"{n / TiB:.2f} TiB ({n} bytes)" if n >= TiB else f"{n / GiB:.1f} GiB ({n} bytes)"


def check_pv(product: Product, pv: bool) -> None:
    """PV guests: XenServer (and XCP-ng) up to 7.x; 8.x dropped them."""
    if pv and not product.pv:
        raise XenServerError(
            f"{product.brand} {product.version} does not run PV guests (PV ended with 7.x): "
            "provision without --pv; the VM stays HVM with PV drivers, which is what this "
            "pool supports.")


def firmware(product: Product, features: PoolFeatures, source: str,
             source_secure_boot: bool) -> tuple[str, bool, list[str]]:
    """(firmware, Secure Boot, notes): UEFI where the source booted UEFI and the pool has UEFI
    guests; Secure Boot where the source had it and the pool is ready for it; else BIOS."""
    notes = []
    if source == "uefi" and not product.uefi:
        notes.append(f"{product.brand} {product.version} has no UEFI guests (they came with API "
                     "2.12, Citrix Hypervisor 8.0): the VM boots with BIOS firmware, and the "
                     "repair installs a BIOS boot loader.")
        return "bios", False, notes
    if source != "uefi":
        return "bios", False, notes
    if source_secure_boot and not features.secure_boot:
        notes.append(f"The source booted with Secure Boot, but {product.brand} "
                     f"{product.version} has no Secure Boot certificates ready for guests: the "
                     "VM boots UEFI without Secure Boot (install the pool's certificates, e.g. "
                     "secureboot-certs install on XCP-ng, then set platform:secureboot=true).")
        return "uefi", False, notes
    return "uefi", source_secure_boot, notes


def disk_formats(product: Product, features: PoolFeatures, sr: dict, disks) -> tuple[list[str], list[str]]:
    """(format per disk, notes): a disk past the VHD limit on a VHD SR becomes a QCOW2 VDI where
    the SR's storage manager lists qcow2; elsewhere the job is refused with the numbers."""
    sr_type = sr.get("type", "")
    formats, notes, refused = [], [], []
    for disk in disks:
        if sr_type not in VHD_SR_TYPES or disk.size <= MAX_VHD_SIZE:
            formats.append("")
        elif "qcow2" in features.image_formats.get(sr_type, ()):
            formats.append("qcow2")
            notes.append(f"Disk {disk.id} is {_size(disk.size)}, past the {LIMIT} "
                         f"a VHD disk holds: it becomes a QCOW2 VDI on SR {sr.get('name_label')!r}.")
        else:
            refused.append(f"disk {disk.id} is {_size(disk.size)}")
    if refused:
        raise XenServerError(
            f"On SR {sr.get('name_label')!r} ({sr_type}) disks are VHD files, which stop at "
            f"{LIMIT}, and {product.brand} {product.version} offers no QCOW2 VDIs "
            f"there; {', '.join(refused)}. Choose an SR without that limit with --sr (a "
            "LUN-per-VDI SR, or one whose storage manager lists qcow2: XCP-ng 8.3 with QCOW2 "
            "support), or shrink that disk on the source and capture again. Nothing was created.")
    return formats, notes


def nic_notes(firmware_: str, nics) -> list[str]:
    """What happens to a UEFI VM's NICs past the emulated ones."""
    if firmware_ != "uefi" or len(nics) <= UEFI_EMULATED_NICS:
        return []
    extra = nics[UEFI_EMULATED_NICS:]
    names = ", ".join(n.name for n in extra)
    return [f"A UEFI VM shows at most {UEFI_EMULATED_NICS} emulated NICs before PV drivers run: "
            f"the VM gets all {len(nics)} NICs, but {names} (VIF {UEFI_EMULATED_NICS} on) "
            "appear only once the guest's PV network driver loads (Linux: xen-netfront, which "
            "the repair puts in the initramfs; Windows: the XenServer PV drivers). Until then "
            "the firmware and an installer see only the first two."]


def choose(product: Product, features: PoolFeatures, spec, disks, sr: dict, pv: bool) -> VmChoice:
    """Every rule for this pool and this VM (`spec`, its `disks` as DiskSpecs in slot order, on
    SR record `sr`), in one place; raises XenServerError on a refusal."""
    check_pv(product, pv)
    fw, secure, notes = firmware(product, features, spec.firmware, spec.secure_boot)
    formats, disk_notes = disk_formats(product, features, sr, disks)
    return VmChoice(fw, secure, tuple(formats), tuple(notes + disk_notes + nic_notes(fw, spec.nics)))
