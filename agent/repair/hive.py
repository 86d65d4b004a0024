"""The edge that reads and writes Windows registry hive files: libhivex, through ctypes.

hivex (libguestfs's library, Debian's libhivex0) is what virt-v2v writes Windows registries
with; nothing here knows the file format. It is called through ctypes because the agent runs in
its own virtual environment, where Debian's python3-hivex (built for the system Python) cannot be
imported; the C library is the same one that module wraps.

Keys are paths from the hive's root, parts joined with backslashes (`ControlSet001\\Services`),
matched case-insensitively as Windows does. Values are (type, raw bytes), e.g. (REG_DWORD,
b"\\0\\0\\0\\0").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

REG_SZ, REG_EXPAND_SZ, REG_BINARY, REG_DWORD, REG_MULTI_SZ = 1, 2, 3, 4, 7
_OPEN_WRITE = 4   # HIVEX_OPEN_WRITE


class HiveError(Exception):
    """A hive cannot be opened, read or written; the message says which and why."""


class _SetValue(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("t", ctypes.c_int), ("len", ctypes.c_size_t),
                ("value", ctypes.c_char_p)]


_lib = None


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("hivex") or "libhivex.so.0"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            raise HiveError("The hivex library (Debian package libhivex0) is not installed; it is "
                            "needed to change a Windows registry. Install it and run repair again.") \
                from None
        size_t, p = ctypes.c_size_t, ctypes.c_void_p
        lib.hivex_open.restype, lib.hivex_open.argtypes = p, [ctypes.c_char_p, ctypes.c_int]
        lib.hivex_close.argtypes = [p]
        lib.hivex_root.restype, lib.hivex_root.argtypes = size_t, [p]
        lib.hivex_node_get_child.restype = size_t
        lib.hivex_node_get_child.argtypes = [p, size_t, ctypes.c_char_p]
        lib.hivex_node_children.restype = ctypes.POINTER(size_t)
        lib.hivex_node_children.argtypes = [p, size_t]
        lib.hivex_node_name.restype, lib.hivex_node_name.argtypes = p, [p, size_t]
        lib.hivex_node_values.restype = ctypes.POINTER(size_t)
        lib.hivex_node_values.argtypes = [p, size_t]
        lib.hivex_node_get_value.restype = size_t
        lib.hivex_node_get_value.argtypes = [p, size_t, ctypes.c_char_p]
        lib.hivex_value_key.restype, lib.hivex_value_key.argtypes = p, [p, size_t]
        lib.hivex_value_value.restype = p
        lib.hivex_value_value.argtypes = [p, size_t, ctypes.POINTER(ctypes.c_int),
                                          ctypes.POINTER(size_t)]
        lib.hivex_node_add_child.restype = size_t
        lib.hivex_node_add_child.argtypes = [p, size_t, ctypes.c_char_p]
        lib.hivex_node_set_value.argtypes = [p, size_t, ctypes.POINTER(_SetValue), ctypes.c_int]
        lib.hivex_commit.argtypes = [p, ctypes.c_char_p, ctypes.c_int]
        _lib = lib
    return _lib


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.free.argtypes = [ctypes.c_void_p]


def _take_string(ptr: int | None) -> str:
    """A C string hivex allocated, as text; freed."""
    try:
        return ctypes.string_at(ptr).decode("utf-8", "replace")
    finally:
        _libc.free(ptr)


def _take_handles(arr) -> list[int]:
    """A zero-terminated array of handles hivex allocated, as a list; freed."""
    out = []
    i = 0
    while arr[i]:
        out.append(arr[i])
        i += 1
    _libc.free(ctypes.cast(arr, ctypes.c_void_p))
    return out


class Hive:
    """One open hive file; `write=True` allows set/add and `commit()`. A context manager."""

    def __init__(self, path: str | Path, write: bool = False):
        self.path = Path(path)
        self._lib = _library()
        ctypes.set_errno(0)
        self._h = self._lib.hivex_open(os.fsencode(self.path), _OPEN_WRITE if write else 0)
        if not self._h:
            code = ctypes.get_errno() or errno.EINVAL
            if code in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOMEM, errno.EIO):
                raise HiveError(f"Cannot open the registry hive {self.path}: {os.strerror(code)}.")
            raise HiveError(f"The registry hive {self.path} is damaged: hivex cannot read it "
                            f"({os.strerror(code)}).")

    def __enter__(self) -> "Hive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._h:
            self._lib.hivex_close(self._h)
            self._h = None

    # --- reading ----------------------------------------------------------------------------------

    def node(self, key: str) -> int | None:
        """The node at `key` ("" is the root), or None when a part of it is missing."""
        node = self._lib.hivex_root(self._h)
        for part in filter(None, key.split("\\")):
            ctypes.set_errno(0)
            node = self._lib.hivex_node_get_child(self._h, node, part.encode())
            if not node:
                if ctypes.get_errno():
                    self._fail(f"read {key}")
                return None
        return node

    def subkeys(self, key: str) -> list[str]:
        """The names of the keys under `key` (none when it is missing)."""
        node = self.node(key)
        if node is None:
            return []
        arr = self._lib.hivex_node_children(self._h, node)
        if not arr:
            self._fail(f"list the keys under {key}")
        return [_take_string(self._lib.hivex_node_name(self._h, child))
                for child in _take_handles(arr)]

    def value(self, key: str, name: str) -> tuple[int, bytes] | None:
        """(type, raw data) of value `name` of `key`; None when either is missing."""
        node = self.node(key)
        if node is None:
            return None
        ctypes.set_errno(0)
        handle = self._lib.hivex_node_get_value(self._h, node, name.encode())
        if not handle:
            if ctypes.get_errno():
                self._fail(f"read {key}\\{name}")
            return None
        return self._raw(handle, f"{key}\\{name}")

    def values(self, key: str) -> dict[str, tuple[int, bytes]]:
        """Every value of `key`: name ("" for the default) → (type, raw data)."""
        node = self.node(key)
        if node is None:
            return {}
        arr = self._lib.hivex_node_values(self._h, node)
        if not arr:
            self._fail(f"list the values of {key}")
        out = {}
        for handle in _take_handles(arr):
            name = _take_string(self._lib.hivex_value_key(self._h, handle))
            out[name] = self._raw(handle, f"{key}\\{name}")
        return out

    def _raw(self, handle: int, what: str) -> tuple[int, bytes]:
        kind, length = ctypes.c_int(), ctypes.c_size_t()
        ptr = self._lib.hivex_value_value(self._h, handle, ctypes.byref(kind), ctypes.byref(length))
        if not ptr:
            self._fail(f"read {what}")
        try:
            return kind.value, ctypes.string_at(ptr, length.value)
        finally:
            _libc.free(ptr)

    # --- writing ----------------------------------------------------------------------------------

    def ensure_key(self, key: str) -> int:
        """The node at `key`, created with any missing parents."""
        node = self._lib.hivex_root(self._h)
        for part in filter(None, key.split("\\")):
            child = self._lib.hivex_node_get_child(self._h, node, part.encode())
            if not child:
                child = self._lib.hivex_node_add_child(self._h, node, part.encode())
                if not child:
                    self._fail(f"create {key}")
            node = child
        return node

    def set_value(self, key: str, name: str, kind: int, data: bytes) -> None:
        """Set one value of `key` (created when missing); its other values stay as they are."""
        node = self.ensure_key(key)
        buf = ctypes.create_string_buffer(data, len(data))
        value = _SetValue(name.encode(), kind, len(data), ctypes.cast(buf, ctypes.c_char_p))
        if self._lib.hivex_node_set_value(self._h, node, ctypes.byref(value), 0) != 0:
            self._fail(f"set {key}\\{name}")

    def commit(self) -> None:
        """Write the whole hive back over its file (the caller keeps a backup)."""
        if self._lib.hivex_commit(self._h, None, 0) != 0:
            self._fail("write it back")

    def _fail(self, what: str) -> None:
        raise HiveError(f"Cannot {what} in the registry hive {self.path}: "
                        f"{os.strerror(ctypes.get_errno() or errno.EIO)}.")
