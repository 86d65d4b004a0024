"""Windows volumes whose used blocks cannot be known from outside: read whole, and say why.

- BitLocker: the volume is encrypted (boot sector OEM id `-FVE-FS-`); its allocation is inside.
  It is copied whole and stays encrypted: the TPM that unlocked it does not move to the VM, so
  Windows asks for the recovery key at the VM's first boot.
- Dynamic disks (LDM: MBR type 0x42, GPT LDM metadata/data partitions): volumes may span, stripe
  or mirror across disks, and their layout lives in the LDM database, not the partition table.
- Storage Spaces (GPT type E75CAF8F-…): a pool's slabs, laid out by its own metadata.

Nothing is refused: each is read whole (which is always a faithful copy), with a warning.

Windows' page file (`pagefile.sys`), its swap file for apps (`swapfile.sys`) and its hibernation
file (`hiberfil.sys`) at a cleanly shut down NTFS volume's root hold nothing the VM needs: Windows
starts a fresh page and swap file at every boot, and resumes from `hiberfil.sys` only when its
header says a hibernated image is there ('hibr', or 'wake' on the way back from one). Their
extents are treated as free: the files stay in the filesystem, with whatever the target holds (a
restore makes it zeros). A `hiberfil.sys` whose header says 'hibr' or 'wake' is read with the
rest; its first cluster is always read, so the VM sees the header the source had. The extents
come from ntfs-3g's read-only tools: `ntfsls` (the root's names, matched case-insensitively as
Windows does) and `ntfsinfo -v -F` (the runlist of each file's unnamed $DATA attribute).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from agent.disk import fsstate

TIMEOUT = 120.0   # seconds any one ntfs-3g look may take

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


# --- page, swap and hibernation files -------------------------------------------------------------

SCRATCH_FILES = ("pagefile.sys", "swapfile.sys", "hiberfil.sys")
RESUMABLE = (b"hibr", b"wake")   # a hibernation file's header while Windows may resume from it


class NtfsLookError(Exception):
    """ntfs-3g's tools could not say where a file lies; the message says which and why."""


@dataclass(frozen=True)
class ScratchFile:
    name: str                        # as the volume spells it: pagefile.sys, HIBERFIL.SYS
    extents: list[tuple[int, int]]   # byte ranges [start, end) on the volume, not needed on the VM


def scratch_files(node: str) -> list[ScratchFile]:
    """Windows' page, swap and hibernation files at the root of the NTFS on `node`, with the
    byte ranges of their data that the VM does not need (a hiberfil.sys whose header says
    'hibr' or 'wake' is not among them). Raises NtfsLookError."""
    names = {name.lower(): name for name in _ntfs(["ntfsls", "-f", node], node).splitlines()}
    cluster = cluster_size(node)
    out = []
    for wanted in SCRATCH_FILES:
        name = names.get(wanted)
        if name is None:
            continue
        if wanted == "hiberfil.sys" and _header(node, name)[:4].lower() in RESUMABLE:
            continue
        extents = data_runs(_ntfs(["ntfsinfo", "-f", "-v", "-F", f"/{name}", node], node), cluster)
        if wanted == "hiberfil.sys":
            extents = _after_first_cluster(extents, cluster)
        if extents:
            out.append(ScratchFile(name, extents))
    return out


def cluster_size(node: str) -> int:
    """The NTFS on `node`'s cluster size in bytes (ntfsinfo -m)."""
    m = re.search(r"Cluster Size:\s*(\d+)", _ntfs(["ntfsinfo", "-f", "-m", node], node))
    if not m:
        raise NtfsLookError(f"ntfsinfo shows no cluster size for {node}")
    return int(m[1])


def data_runs(info: str, cluster: int) -> list[tuple[int, int]]:
    """The byte ranges of the unnamed $DATA attribute(s) in `ntfsinfo -v -F` output (each
    attribute record's "Runlist:" rows VCN, LCN, length, in clusters); holes hold no cluster."""
    out = []
    for block in info.split("Dumping attribute ")[1:]:
        if not block.startswith("$DATA") or not re.search(r"Name length:\s*0 ", block):
            continue
        _, _, runs = block.partition("Runlist:")
        for line in runs.splitlines()[1:]:
            fields = line.split()
            if len(fields) != 3 or not fields[0].startswith("0x"):
                break
            if fields[1].startswith("0x"):
                lcn, length = int(fields[1], 16), int(fields[2], 16)
                out.append((lcn * cluster, (lcn + length) * cluster))
    return out


def _header(node: str, name: str) -> bytes:
    try:
        return fsstate.head(node, f"/{name}", 4)
    except fsstate.CannotTell as e:
        raise NtfsLookError(str(e)) from None


def _after_first_cluster(extents: list[tuple[int, int]], cluster: int) -> list[tuple[int, int]]:
    """`extents` without the file's first cluster (its first range starts with it)."""
    if not extents:
        return []
    (start, end), rest = extents[0], extents[1:]
    return ([(start + cluster, end)] if end > start + cluster else []) + rest


def _ntfs(cmd: list[str], node: str) -> str:
    """What an ntfs-3g tool prints; they say "Error …" and exit 0 on some failures."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT)
    except FileNotFoundError:
        raise NtfsLookError(f"{cmd[0]} (ntfs-3g) is not installed") from None
    except subprocess.TimeoutExpired:
        raise NtfsLookError(f"{cmd[0]} took more than {TIMEOUT:.0f} s on {node}") from None
    said = proc.stderr.strip().splitlines()
    error = next((line for line in said if line.startswith("Error")), None)
    if proc.returncode != 0 or error:
        raise NtfsLookError(f"{cmd[0]} could not read {node}: "
                            f"{error or (said or ['no output'])[-1]}")
    return proc.stdout
