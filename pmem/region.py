"""A mapped region of (possibly emulated) persistent memory.

The region is the address layer of the ring: bytes, and a way to make a byte range durable.
On real pmem (``pmem_is_pmem``) that is ``pmem_persist`` of the exact range (cache-line flush and
fence, no system call); on a file that is not pmem (the /dev/shm default) it is ``pmem_msync`` of
the covering pages; without libpmem, Python's mmap and msync.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import secrets
import stat
from collections.abc import Callable
from enum import StrEnum

from pmem.libpmem import libpmem
from provisor import files
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
    ``buf[off:off+n]`` durable before it returns.

    An existing image is opened without following a symlink, and checked on the open
    descriptor: a regular file of ours, or a devdax character device. Read-only opening (an
    examiner's evidence copy) accepts a file another user owns, still never a symlink."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        devdax = is_devdax(path)
        try:
            fd, st = files.open_ours(path, os.O_RDONLY if readonly else os.O_RDWR,
                                     foreign_ok=readonly, devices=devdax)
        except files.FileError as e:
            if e.reason == "is a directory":
                raise RegionError(f"{path}: is a directory, not a ring image") from None
            raise RegionError(str(e)) from None
        try:
            try:
                size = _devdax_size(path) if stat.S_ISCHR(st.st_mode) else st.st_size
            except OSError as e:
                raise RegionError(f"{path}: {e.strerror}") from None
            if size == 0:
                raise RegionError(f"{path}: empty file")
            self.size = size
            lib = None if readonly else libpmem()
            self._lib = lib
            self._mmap: mmap.mmap | None = None
            if lib is not None:
                # map the very file checked above: libpmem opens a name, so give it the fd's
                # (a devdax device is the kernel's: its own name, which libpmem recognizes)
                name = path if stat.S_ISCHR(st.st_mode) else _fd_path(fd, path)
                try:
                    addr, mapped, is_pmem = lib.map_file(name, 0)
                except OSError as e:
                    raise RegionError(f"{path}: {e}") from None
                self._addr = addr
                self.size = mapped
                self.mode = Mode.PMEM if is_pmem else Mode.EMULATED
                carr = (ctypes.c_char * mapped).from_address(addr)
                self.buf = memoryview(carr).cast("B")
            else:
                access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
                try:
                    self._mmap = mmap.mmap(fd, size, access=access)
                except OSError as e:
                    raise RegionError(f"{path}: {e.strerror}") from None
                self._addr = 0
                self.mode = Mode.MMAP
                self.buf = memoryview(self._mmap)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, path: str, size: int, *, replace: bool = False,
               init: Callable[[Region], None] | None = None) -> Region:
        """Create ``path`` exclusively (``O_EXCL|O_NOFOLLOW``, 0600 or 0640 with the configured
        group) with all ``size`` bytes reserved, and map it; ``init`` (the ring's headers) runs
        on the mapping before the image appears under ``path``.

        Space is reserved for real (``fallocate``), never a sparse file that dies of SIGBUS
        when the filesystem fills: not enough free space, or a filesystem that cannot
        preallocate, is a one-line RegionError and leaves no file. ``replace``: an existing
        ring of ours at ``path`` is replaced atomically by a new image built under a private
        temporary name and renamed over it, so a failed re-create leaves it intact (the old
        and the new image coexist until the rename: both must fit). A symlink, another user's
        file, a FIFO or any other non-regular file is refused; a devdax device is used in
        place (the kernel made it: it is mapped whole, never created or reserved)."""
        if not isinstance(size, int) or size <= 0 or size % PAGE:
            raise RegionError(f"size must be a positive multiple of {PAGE}")
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise RegionError(f"{path}: {e.strerror}") from None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise RegionError(f"{path}: is a directory")
            if check_existing(path, st):
                return cls._create_devdax(path, size, init)
            if not replace:
                raise RegionError(f"{path}: already exists (refusing to reuse a file provisor "
                                  "did not just create)")
        parent = os.path.dirname(os.path.abspath(path))
        _check_space(parent, size)
        target = path if st is None else os.path.join(
            parent, f".{os.path.basename(path)}.{secrets.token_hex(6)}.part")
        try:
            fd = files.create_new(target)
        except files.FileError as e:
            raise RegionError(str(e)) from None
        region = None
        try:
            try:
                _reserve(fd, size, parent)
                os.fsync(fd)
            finally:
                os.close(fd)
            region = cls(target)
            if init is not None:
                init(region)
            if target != path:
                os.rename(target, path)
                region.path = path
            files.sync_dir(parent)
        except BaseException:
            if region is not None:
                region.close()
            try:
                os.unlink(target)
            except OSError:
                pass
            raise
        return region

    @classmethod
    def _create_devdax(cls, path: str, size: int,
                       init: Callable[[Region], None] | None) -> Region:
        try:
            have = _devdax_size(path)
        except OSError as e:
            raise RegionError(f"{path}: {e.strerror}") from None
        if size > have:
            raise RegionError(f"{path}: device holds {have} bytes, {size} requested")
        region = cls(path)
        try:
            if init is not None:
                init(region)
        except BaseException:
            region.close()
            raise
        return region

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


def check_existing(path: str, st: os.stat_result) -> bool:
    """Check that the existing image at ``path`` (its lstat ``st``) may be re-created: True for
    a devdax device (initialised in place), False for our own regular file (replaced by
    rename); a symlink, a FIFO or another user's file is a RegionError."""
    if stat.S_ISCHR(st.st_mode) and is_devdax(path):
        return True
    try:
        files.check_ours(path, st)
    except files.FileError as e:
        raise RegionError(str(e)) from None
    return False


def is_devdax(path: str) -> bool:
    return os.path.basename(path).startswith("dax") and path.startswith("/dev/")


def _devdax_size(path: str) -> int:
    name = os.path.basename(path)
    with open(f"/sys/bus/dax/devices/{name}/size") as f:
        return int(f.read())


def _fd_path(fd: int, path: str) -> str:
    p = f"/proc/self/fd/{fd}"
    return p if os.path.exists(p) else path


def _check_space(parent: str, size: int) -> None:
    """Fail at once when the filesystem has not ``size`` bytes free (a request far beyond the
    disk must not write tens of gigabytes first)."""
    try:
        vfs = os.statvfs(parent)
    except OSError as e:
        raise RegionError(f"{parent}: {e.strerror}") from None
    free = vfs.f_bavail * vfs.f_frsize
    if size > free:
        raise RegionError(f"cannot reserve {size} bytes in {parent}: "
                          f"{os.strerror(errno.ENOSPC)} ({free} bytes free)")


_FALLOCATE: Callable[..., int] | None | bool = False


def _fallocate_fn() -> Callable[..., int] | None:
    """fallocate(2) itself: glibc's posix_fallocate emulates it on a filesystem without it by
    writing every block, which is how a 200G request once wrote 78 GB before failing."""
    global _FALLOCATE
    if _FALLOCATE is False:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = getattr(libc, "fallocate64", None) or libc.fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
            _FALLOCATE = fn
        except (OSError, AttributeError):
            _FALLOCATE = None
    return _FALLOCATE  # type: ignore[return-value]


def _reserve(fd: int, size: int, parent: str) -> None:
    """Allocate every block of ``[0, size)`` or raise a one-line RegionError."""
    fn = _fallocate_fn()
    while True:
        try:
            if fn is None:
                os.posix_fallocate(fd, 0, size)
            elif fn(fd, 0, 0, size) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return
        except InterruptedError:
            continue
        except OSError as e:
            why = e.strerror or str(e)
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                why += " (the filesystem cannot preallocate; a sparse ring would die of SIGBUS)"
            raise RegionError(f"cannot reserve {size} bytes in {parent}: {why}") from None
