"""Write small Windows registry hives (regf format) for the Windows recorded machine and tests.

Only what a SOFTWARE or SYSTEM hive needs for the probe: keys and REG_SZ values, one hive bin.
Layout as documented in the Windows NT registry file format (base block, hbin, nk, li, vk).
"""

from __future__ import annotations

import struct

NONE = 0xFFFFFFFF
REG_SZ = 1
KEY_HIVE_ENTRY, KEY_NO_DELETE, KEY_COMP_NAME = 0x04, 0x08, 0x20
SE_SELF_RELATIVE = 0x8000
FILETIME = 133_000_000_000_000_000  # 2022-06-18, any fixed time will do


class _Cells:
    def __init__(self) -> None:
        self.data = bytearray()

    def alloc(self, payload: bytes) -> int:
        """Store one allocated cell; returns its offset from the start of the hive bins."""
        offset = 32 + len(self.data)  # cells start after the 32-byte hbin header
        size = (4 + len(payload) + 7) // 8 * 8
        self.data += struct.pack("<i", -size) + payload + bytes(size - 4 - len(payload))
        return offset

    def patch(self, cell: int, at: int, fmt: str, *values: int) -> None:
        struct.pack_into(fmt, self.data, cell - 32 + 4 + at, *values)


def _key(cells: _Cells, name: str, tree: dict, parent: int, root: bool = False,
         keys: list[int] | None = None) -> int:
    encoded = name.encode("ascii")
    flags = KEY_COMP_NAME | (KEY_HIVE_ENTRY | KEY_NO_DELETE if root else 0)
    nk = cells.alloc(b"nk" + struct.pack("<HQ15IHH", flags, FILETIME, *([0] * 2), *([0] * 13),
                                         len(encoded), 0) + encoded)
    cells.patch(nk, 2 + 2 + 8 + 4, "<I", parent if not root else NONE)
    if keys is not None:
        keys.append(nk)
    subkeys = sorted((k, v) for k, v in tree.items() if isinstance(v, dict))
    values = [(k, v) for k, v in tree.items() if isinstance(v, str)]
    children = [_key(cells, k, v, nk, keys=keys) for k, v in subkeys]
    sublist = cells.alloc(b"li" + struct.pack(f"<H{len(children)}I", len(children), *children)) \
        if children else NONE
    vks = []
    for vname, text in values:
        data = (text + "\0").encode("utf-16-le")
        vname_b = vname.encode("ascii")
        if len(data) <= 4:
            size, where = len(data) | 0x80000000, int.from_bytes(data.ljust(4, b"\0"), "little")
        else:
            size, where = len(data), cells.alloc(data)
        vks.append(cells.alloc(b"vk" + struct.pack("<HIIIHH", len(vname_b), size, where, REG_SZ, 1, 0)
                               + vname_b))
    vallist = cells.alloc(struct.pack(f"<{len(vks)}I", *vks)) if vks else NONE
    # subkey count, volatile count, subkey list, volatile list, value count, value list,
    # security, class, largest subkey name, largest class, largest value name, largest data
    cells.patch(nk, 2 + 2 + 8 + 4 + 4, "<12I", len(children), 0, sublist, NONE, len(vks), vallist,
                NONE, NONE, max((len(k) * 2 for k, _ in subkeys), default=0), 0,
                max((len(k) * 2 for k, _ in values), default=0),
                max((len(v) * 2 + 2 for _, v in values), default=0))
    return nk


def hive(tree: dict, root_name: str = "ROOT", file_name: str = "") -> bytes:
    """A hive holding `tree`: {key: {subkey: {...}, value_name: "text"}}."""
    cells = _Cells()
    keys: list[int] = []
    root = _key(cells, root_name, tree, 0, root=True, keys=keys)
    assert root == 32  # readers take the first cell of the first bin as the root key
    # One security cell shared by every key (hivex copies its parent's when it adds a key): a
    # self-relative descriptor with no DACL, i.e. open to all, as a test hive may be.
    descriptor = struct.pack("<BBHIIII", 1, 0, SE_SELF_RELATIVE, 0, 0, 0, 0)
    sk = cells.alloc(b"sk" + struct.pack("<HIIII", 0, 0, 0, len(keys), len(descriptor))
                     + descriptor)
    cells.patch(sk, 4, "<II", sk, sk)
    for nk in keys:
        cells.patch(nk, 2 + 2 + 8 + 4 + 4 + 4 * 6, "<I", sk)
    used = 32 + len(cells.data)
    bin_size = (used + 4095) // 4096 * 4096
    free = bin_size - used
    body = (b"hbin" + struct.pack("<III", 0, bin_size, 0) + struct.pack("<IQI", 0, FILETIME, 0)
            + bytes(cells.data) + (struct.pack("<i", free) + bytes(free - 4) if free else b""))
    base = bytearray(4096)
    struct.pack_into("<4sIIQIIIIIII", base, 0, b"regf", 1, 1, FILETIME, 1, 5, 0, 1, root,
                     bin_size, 1)
    name = file_name.encode("utf-16-le")[:64]
    base[48:48 + len(name)] = name
    checksum = 0
    for (word,) in struct.iter_unpack("<I", bytes(base[:508])):
        checksum ^= word
    checksum = {0: 1, NONE: NONE - 1}.get(checksum, checksum)
    struct.pack_into("<I", base, 508, checksum)
    return bytes(base) + body
