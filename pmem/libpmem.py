"""Thin ctypes binding to PMDK's libpmem (Debian ``libpmem1``).

Only the four calls a ring needs. ``persist`` flushes an exact byte range: the PyPI binding
(pynvm) always flushes the whole mapping, which a ring cannot afford (see docs/DECISIONS.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

PMEM_FILE_CREATE = 1 << 0


class LibPmem:
    """The loaded library; ``load()`` returns None when libpmem is not installed."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.pmem_map_file.restype = ctypes.c_void_p
        lib.pmem_map_file.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_int),
        ]
        lib.pmem_unmap.restype = ctypes.c_int
        lib.pmem_unmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.pmem_persist.restype = None
        lib.pmem_persist.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.pmem_msync.restype = ctypes.c_int
        lib.pmem_msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.pmem_is_pmem.restype = ctypes.c_int
        lib.pmem_is_pmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.pmem_errormsg.restype = ctypes.c_char_p
        self.persist = lib.pmem_persist
        self.msync = lib.pmem_msync

    @classmethod
    def load(cls) -> LibPmem | None:
        if os.environ.get("PROVISOR_NO_LIBPMEM"):
            return None
        for name in ("libpmem.so.1", ctypes.util.find_library("pmem")):
            if not name:
                continue
            try:
                return cls(ctypes.CDLL(name))
            except OSError:
                continue
        return None

    def map_file(self, path: str, length: int) -> tuple[int, int, bool]:
        """Map an existing file (or a devdax device); returns (address, mapped length, is_pmem)."""
        mapped = ctypes.c_size_t(0)
        is_pmem = ctypes.c_int(0)
        addr = self._lib.pmem_map_file(
            os.fsencode(path), length, 0, 0o600, ctypes.byref(mapped), ctypes.byref(is_pmem)
        )
        if not addr:
            msg = self._lib.pmem_errormsg() or b"pmem_map_file failed"
            raise OSError(msg.decode(errors="replace"))
        return addr, mapped.value, bool(is_pmem.value)

    def unmap(self, addr: int, length: int) -> None:
        self._lib.pmem_unmap(addr, length)

    def is_pmem(self, addr: int, length: int) -> bool:
        return bool(self._lib.pmem_is_pmem(addr, length))


_LIB: LibPmem | None | bool = False


def libpmem() -> LibPmem | None:
    """The process-wide libpmem, loaded once."""
    global _LIB
    if _LIB is False:
        _LIB = LibPmem.load()
    return _LIB  # type: ignore[return-value]
