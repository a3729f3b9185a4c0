"""A mapped region of (possibly emulated) persistent memory.

The region is the address layer of the ring: bytes, and a way to make a byte range durable.
On real pmem (``pmem_is_pmem``) that is ``pmem_persist`` of the exact range (cache-line flush and
fence, no system call); on a file that is not pmem (the /dev/shm default) it is ``pmem_msync`` of
the covering pages; without libpmem, Python's mmap and msync.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from enum import StrEnum

from pmem.libpmem import libpmem
from provisor.errors import ProvisorError

PAGE = mmap.PAGESIZE
DEFAULT_DIR = "/dev/shm"


class Mode(StrEnum):
    PMEM = "pmem"  # DAX on persistent memory: pmem_persist
    EMULATED = "emulated"  # libpmem on a non-pmem file: pmem_msync
    MMAP = "mmap"  # no libpmem: Python mmap.flush (msync)

    def describe(self) -> str:
        return {
            "pmem": "DAX persistent memory (pmem_persist: cache-line flush + fence)",
            "emulated": "emulated pmem via libpmem (pmem_msync of the page range)",
            "mmap": "plain mmap fallback, libpmem not found (msync of the page range)",
        }[self.value]


class RegionError(ProvisorError):
    """A region could not be created or mapped."""


class Region:
    """``buf`` is a writable memoryview over the whole mapping; ``persist(off, n)`` makes
    ``buf[off:off+n]`` durable before it returns."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if os.path.isdir(path):
            raise RegionError(f"{path}: is a directory, not a ring image")
        try:
            size = os.path.getsize(path) if not _is_devdax(path) else _devdax_size(path)
        except OSError as e:
            raise RegionError(f"{path}: {e.strerror}") from None
        if size == 0:
            raise RegionError(f"{path}: empty file")
        self.size = size
        lib = None if readonly else libpmem()
        self._lib = lib
        self._mmap: mmap.mmap | None = None
        if lib is not None:
            try:
                addr, mapped, is_pmem = lib.map_file(path, 0)
            except OSError as e:
                raise RegionError(f"{path}: {e}") from None
            self._addr = addr
            self.size = mapped
            self.mode = Mode.PMEM if is_pmem else Mode.EMULATED
            carr = (ctypes.c_char * mapped).from_address(addr)
            self.buf = memoryview(carr).cast("B")
        else:
            flags = os.O_RDONLY if readonly else os.O_RDWR
            try:
                fd = os.open(path, flags)
            except OSError as e:
                raise RegionError(f"{path}: {e.strerror}") from None
            try:
                access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
                self._mmap = mmap.mmap(fd, size, access=access)
            finally:
                os.close(fd)
            self._addr = 0
            self.mode = Mode.MMAP
            self.buf = memoryview(self._mmap)

    @classmethod
    def create(cls, path: str, size: int) -> Region:
        """Create and preallocate ``path`` (page faults on a sparse file are far slower)."""
        if size <= 0 or size % PAGE:
            raise RegionError(f"size must be a positive multiple of {PAGE}")
        if os.path.isdir(path):
            raise RegionError(f"{path}: is a directory")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise RegionError(f"{path}: {e.strerror}") from None
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:
                os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(path)

    def persist(self, off: int, length: int) -> None:
        """Make ``[off, off+length)`` durable."""
        if length <= 0:
            return
        lib = self._lib
        if lib is None:
            assert self._mmap is not None
            start = off - off % PAGE
            self._mmap.flush(start, min(self.size, off + length) - start)
        elif self.mode is Mode.PMEM:
            lib.persist(self._addr + off, length)
        else:
            start = off - off % PAGE
            lib.msync(self._addr + start, off + length - start)

    def close(self) -> None:
        buf, self.buf = self.buf, memoryview(b"")
        try:
            buf.release()
        except (ValueError, BufferError):
            pass
        if self._lib is not None and self._addr:
            self._lib.unmap(self._addr, self.size)
            self._addr = 0
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass
            self._mmap = None

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_devdax(path: str) -> bool:
    return os.path.basename(path).startswith("dax") and path.startswith("/dev/")


def _devdax_size(path: str) -> int:
    name = os.path.basename(path)
    with open(f"/sys/bus/dax/devices/{name}/size") as f:
        return int(f.read())
