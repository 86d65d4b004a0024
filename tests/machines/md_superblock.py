"""Write an md RAID v1.2 member superblock from user space.

The kernel these tests run on has no md driver, so `mdadm --create` cannot work here; a member
written by this module is what mdadm would write for a clean, assembled-once RAID1 member, and
`mdadm --examine` and `blkid -p` read it as such. Layout: struct mdp_superblock_1 in
<linux/raid/md_p.h>.
"""

from __future__ import annotations

import os
import struct
import time
import uuid

MAGIC = 0xA92B4EFC
SUPER_OFFSET = 8          # sectors: v1.2 puts the superblock 4 KiB from the start
DATA_OFFSET = 2048        # sectors: 1 MiB, as mdadm does for small members
MAX_DEV = 2


def superblock(*, set_uuid: bytes, name: str, level: int, raid_disks: int, dev_number: int,
               member_sectors: int, ctime: int) -> bytes:
    data_size = member_sectors - DATA_OFFSET
    body = bytearray(256 + 2 * MAX_DEV)
    struct.pack_into("<IIII", body, 0, MAGIC, 1, 0, 0)
    body[16:32] = set_uuid
    body[32:64] = name.encode()[:32].ljust(32, b"\0")
    struct.pack_into("<QIIQII", body, 64, ctime, level, 0, data_size, 0, raid_disks)
    struct.pack_into("<QQQQ", body, 128, DATA_OFFSET, data_size, SUPER_OFFSET, 0)
    struct.pack_into("<II", body, 160, dev_number, 0)
    body[168:184] = uuid.uuid5(uuid.UUID(bytes=set_uuid), str(dev_number)).bytes
    struct.pack_into("<QQQ", body, 192, ctime, 1, 0xFFFFFFFFFFFFFFFF)  # utime, events, clean
    struct.pack_into("<I", body, 220, MAX_DEV)
    for role in range(MAX_DEV):
        struct.pack_into("<H", body, 256 + 2 * role, role if role < raid_disks else 0xFFFF)
    total = sum(struct.unpack_from(f"<{len(body) // 4}I", body))
    struct.pack_into("<I", body, 216, (total & 0xFFFFFFFF) + (total >> 32) & 0xFFFFFFFF)
    return bytes(body)


def write_raid1(members: list[str], name: str, set_uuid: bytes | None = None) -> int:
    """Make `members` (same size) the halves of a clean RAID1; returns the data offset in bytes."""
    set_uuid = set_uuid or uuid.uuid4().bytes
    now = int(time.time())
    for number, dev in enumerate(members):
        fd = os.open(dev, os.O_RDWR)
        try:
            sectors = os.lseek(fd, 0, os.SEEK_END) // 512
            os.pwrite(fd, superblock(set_uuid=set_uuid, name=name, level=1,
                                     raid_disks=len(members), dev_number=number,
                                     member_sectors=sectors, ctime=now), SUPER_OFFSET * 512)
            os.fsync(fd)
        finally:
            os.close(fd)
    return DATA_OFFSET * 512
