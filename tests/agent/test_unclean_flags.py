"""f2fs, exFAT and HFS+: a filesystem that was not cleanly unmounted is read whole, with a
warning; a clean one is mapped. The images are made with the real mkfs tools (HFS+ excepted:
Debian 12 ships no mkfs for it) and then left as a crash leaves them:

- f2fs: a mounted f2fs writes a checkpoint at every sync without CP_UMOUNT_FLAG (only the
  unmount's has it), into the pack other than the current one, with the next version. That is
  written here the same way: the current pack copied into the other slot, version + 1, the flag
  cleared, both CRCs made anew. dump.f2fs must then read the same checkpoint as current.
- exFAT: Linux sets VolumeDirty in the boot sector at mount and clears it at unmount; the boot
  region's checksum leaves VolumeFlags out, so setting the bit alone is exactly that state.
- HFS+: Linux clears kHFSVolumeUnmountedBit and sets kHFSBootVolumeInconsistentBit at a
  read-write mount; a journaled volume after a crash has a journal whose start and end differ.
"""

from __future__ import annotations

import re
import struct

from agent.disk import fsstate
from agent.disk.plan import plan_disk
from sourcedisks import MiB
from support import rescan, run


def one_partition(loopdev, size: int, name: str) -> tuple[str, str]:
    """(disk, its one partition, 1 MiB in)."""
    disk = loopdev(size, name)
    run("sfdisk", "-q", disk, input="label: dos\nstart=2048, type=83\n")
    (part,) = rescan(disk)
    return disk, part


def mapped(disk: str, part: str, fstype: str) -> bool:
    plan = plan_disk(disk)
    return f"{part}: {fstype}: used blocks only" in plan.notes[1] and not plan.warnings


def read_whole_with_a_warning(disk: str, part: str, fstype: str, why: str) -> None:
    plan = plan_disk(disk)
    (warning,) = plan.warnings
    assert warning.startswith(f"{fstype} on {part} {why}: read whole"), warning
    assert plan.used == [(0, plan.size)]


# --- f2fs -----------------------------------------------------------------------------------------

def f2fs_packs(dev: str) -> tuple[int, int, list[int]]:
    """(block size, blocks per pack slot, byte offsets of the two pack slots)."""
    with open(dev, "rb") as f:
        f.seek(1024)
        sb = f.read(1024)
    log_block, log_per_seg = struct.unpack_from("<II", sb, 16)
    cp_blkaddr, = struct.unpack_from("<I", sb, 76)
    block = 1 << log_block
    return block, 1 << log_per_seg, [(cp_blkaddr + (i << log_per_seg)) * block for i in range(2)]


def f2fs_crc(data: bytes) -> int:
    """f2fs-tools' f2fs_cal_crc32, bit by bit: seeded with the magic, no inversions."""
    crc = 0xF2F52010
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc


def write_checkpoint(dev: str, slot: int, version: int, unmount: bool, good_crc: bool = True):
    """The current pack, copied into `slot` as checkpoint `version`, CP_UMOUNT_FLAG as told."""
    block, _, slots = f2fs_packs(dev)
    with open(dev, "r+b") as f:
        current = max(slots, key=lambda at: (f.seek(at), struct.unpack("<Q", f.read(8)))[1])
        f.seek(current)
        first = f.read(block)
        total, = struct.unpack_from("<I", first, 136)
        f.seek(current)
        pack = bytearray(f.read(total * block))
        for at in (0, (total - 1) * block):   # the pack's first and last blocks: the checkpoint
            cp = memoryview(pack)[at:at + block]
            struct.pack_into("<Q", cp, 0, version)
            flags, = struct.unpack_from("<I", cp, 132)
            struct.pack_into("<I", cp, 132, flags | 1 if unmount else flags & ~1)
            crc_at, = struct.unpack_from("<I", cp, 164)
            crc = f2fs_crc(bytes(cp[:crc_at])) ^ (0 if good_crc else 1)
            struct.pack_into("<I", cp, crc_at, crc)
        f.seek(slots[slot])
        f.write(pack)


def dump_f2fs_state(dev: str) -> tuple[int, str]:
    """(current checkpoint version, its state words) as dump.f2fs reads them."""
    said = run("dump.f2fs", dev).stdout
    version = int(re.search(r"CKPT version = ([0-9a-f]+)", said).group(1), 16)
    return version, re.search(r"checkpoint state = \w+ :(.*)", said).group(1)


def test_an_f2fs_whose_last_checkpoint_is_not_an_unmounts_is_read_whole(loopdev):
    disk, dev = one_partition(loopdev, 257 * MiB, "f2fs")
    run("mkfs.f2fs", "-q", "-f", dev)
    version, state = dump_f2fs_state(dev)
    assert "unmount" in state.split() and fsstate.unclean(dev, "f2fs") is None
    assert mapped(disk, dev, "f2fs")

    write_checkpoint(dev, 1, version + 1, unmount=False)   # a sync while mounted, then the cut
    now, words = dump_f2fs_state(dev)
    assert now == version + 1 and "unmount" not in words.split() and "sudden-power-off" in words
    why = fsstate.unclean(dev, "f2fs")
    assert why == ("was not cleanly unmounted (its last checkpoint is not an unmount's: the "
                   "first mount recovers what was fsync'ed after it)")
    read_whole_with_a_warning(disk, dev, "f2fs", why)

    write_checkpoint(dev, 0, version + 2, unmount=True, good_crc=False)   # torn: not valid
    assert dump_f2fs_state(dev)[0] == version + 1 and fsstate.unclean(dev, "f2fs") == why
    write_checkpoint(dev, 0, version + 2, unmount=True)   # then unmounted cleanly after all
    assert dump_f2fs_state(dev) == (version + 2, state)
    assert fsstate.unclean(dev, "f2fs") is None


def test_f2fs_error_flags():
    assert fsstate.f2fs_verdict(0x185) is None
    assert "errors recorded" in fsstate.f2fs_verdict(0x185 | 0x8)
    assert "errors recorded" in fsstate.f2fs_verdict(0x185 | 0x10)
    assert "checkpoints disabled" in fsstate.f2fs_verdict(0x185 | 0x1000)


# --- exFAT ----------------------------------------------------------------------------------------

def test_an_exfat_marked_dirty_is_read_whole(loopdev):
    disk, dev = one_partition(loopdev, 65 * MiB, "exfat")
    run("mkfs.exfat", dev)
    assert fsstate.unclean(dev, "exfat") is None
    assert mapped(disk, dev, "exfat")
    with open(dev, "r+b") as f:   # what Linux's exfat writes at mount: VolumeDirty set
        f.seek(106)
        flags, = struct.unpack("<H", f.read(2))
        f.seek(106)
        f.write(struct.pack("<H", flags | 0x2))
    why = fsstate.unclean(dev, "exfat")
    assert why == "was not cleanly unmounted (its boot sector's VolumeDirty flag is set)"
    read_whole_with_a_warning(disk, dev, "exfat", why)


# --- HFS+ -----------------------------------------------------------------------------------------

def hfsplus_image(path, attributes: int, journal: tuple[int, int] | None = None,
                  order: str = ">") -> str:
    """A 1 MiB HFS+ volume header (4 KiB blocks) with `attributes`; journaled, its journal info
    block at block 1 and its header (start, end) at block 2, in byte order `order`."""
    image = bytearray(MiB)
    struct.pack_into(">2sHI4sI", image, 1024, b"H+", 4, attributes, b"H+Lx",
                     1 if journal else 0)   # signature, version, attributes, last mounted by
    struct.pack_into(">II", image, 1024 + 40, 4096, 256)
    if journal:
        struct.pack_into(">I", image, 4096, 0x1)
        struct.pack_into(">QQ", image, 4096 + 36, 8192, 4096)
        struct.pack_into(f"{order}IIQQQ", image, 8192, 0x4A4E4C78, 0x12345678, *journal, 4096)
    path.write_bytes(image)
    return str(path)


def test_hfsplus_volume_header_and_journal(tmp_path):
    unmounted, inconsistent, journaled = 1 << 8, 1 << 11, 1 << 13

    def check(*args, **kw) -> str | None:
        return fsstate.unclean(hfsplus_image(tmp_path / "hfs", *args, **kw), "hfsplus")

    assert check(unmounted) is None
    assert "inconsistent" in check(inconsistent)     # as a Linux read-write mount leaves it
    assert "still mounted" in check(0)
    assert "inconsistent" in check(unmounted | inconsistent)
    assert check(unmounted | journaled, (512, 512)) is None
    assert "journal holds transactions" in check(unmounted | journaled, (512, 1536))
    assert "journal holds transactions" in check(unmounted | journaled, (512, 1536), "<")
    (tmp_path / "zeros").write_bytes(bytes(MiB))
    assert fsstate.unclean(str(tmp_path / "zeros"), "hfsplus") == (
        "could not be checked for a clean unmount (no HFS+ volume header is there)")
