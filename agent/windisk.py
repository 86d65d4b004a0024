"""Windows volumes whose used blocks cannot be known from outside: read whole, and say why.

- BitLocker: the volume is encrypted (boot sector OEM id `-FVE-FS-`); its allocation is inside.
  It is copied whole and stays encrypted: the TPM that unlocked it does not move to the VM, so
  Windows asks for the recovery key at the VM's first boot.
- Dynamic disks (LDM: MBR type 0x42, GPT LDM metadata/data partitions): volumes may span, stripe
  or mirror across disks, and their layout lives in the LDM database, not the partition table.
- Storage Spaces (GPT type E75CAF8F-…): a pool's slabs, laid out by its own metadata.

Nothing is refused: each is read whole (which is always a faithful copy), with a warning.
"""

from __future__ import annotations

LDM_MBR = "42"
LDM_METADATA = "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3"
LDM_DATA = "AF9B60A0-1431-4F62-BC68-3311714A69AD"
STORAGE_SPACES = "E75CAF8F-F680-4CEE-AFA3-B001E56EFC2D"
BITLOCKER_OEM = b"-FVE-FS-"


def partition_kind(label: str, ptype: str) -> str | None:
    """Why a partition of type `ptype` on a `label` ("dos", "gpt") table is read whole, as words
    that follow its name; None for any other partition."""
    ptype = ptype.lower().removeprefix("0x") if label == "dos" else ptype.upper()
    if (label == "dos" and ptype == LDM_MBR) or ptype in (LDM_METADATA, LDM_DATA):
        return ("is part of a Windows dynamic disk (LDM), whose volumes the partition table does "
                "not describe: read whole. The VM gets the same dynamic disk; if a volume spans "
                "several disks, capture them all. To copy only used blocks, convert it to a basic "
                "disk in Windows first")
    if ptype == STORAGE_SPACES:
        return ("is part of a Windows Storage Spaces pool, laid out by the pool's own metadata: "
                "read whole. Capture every disk of the pool together")
    return None


def bitlocker(node: str) -> bool:
    """Is the volume at `node` BitLocker-encrypted (its boot sector's OEM id says so)?"""
    try:
        with open(node, "rb") as f:
            head = f.read(11)
    except OSError:
        return False
    return head[3:11] == BITLOCKER_OEM


BITLOCKER_WARNING = (
    "is encrypted with BitLocker, so its used blocks cannot be known: read whole, and it stays "
    "encrypted on the VM. The TPM that unlocks it does not move: Windows will ask for the "
    "48-digit recovery key at the VM's first boot (find it with 'manage-bde -protectors -get C:' "
    "or in the Microsoft account or Active Directory it was saved to). To avoid both, turn "
    "BitLocker off ('manage-bde -off C:') and wait for decryption before capturing")
