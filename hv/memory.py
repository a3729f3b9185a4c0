"""Guest memory, in layers as in Volatility 3 and LibVMI: physical, then virtual (one CR3).

The physical layer maps QEMU's RAM backing file read-only (``-object memory-backend-file,
share=on``): reading guest memory is then a memcpy, not a gdbstub round trip. The virtual layer
walks the x86-64 4-level page tables from a CR3 and caches translations; the cache is valid
only while the guest is stopped, so the interceptor calls ``flush()`` before every resume.
``GdbVirtual`` reads through the stub's 'm' packets: the fallback when no RAM file exists.
Every failure is ``Unreadable``: guest memory is hostile and callers must expect it.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Protocol

PAGE = 4096
_ADDR_MASK = 0x000F_FFFF_FFFF_F000  # bits 12..51 of a page-table entry
_PRESENT, _PS = 1, 1 << 7
_U64 = struct.Struct("<Q")
# the lowest split of RAM below 4 GiB among QEMU's PC machines (q35: 2 GiB when RAM > 2.75G)
MAX_FLAT_RAM = 2 << 30


class Unreadable(Exception):
    """An address that is not mapped, not canonical, or outside guest RAM."""


class Reader(Protocol):
    def read(self, addr: int, n: int) -> bytes: ...


def canonical(va: int) -> bool:
    top = va >> 47
    return top == 0 or top == 0x1FFFF


class PhysicalFile:
    """Guest-physical memory from QEMU's RAM backing file (flat: guest RAM <= 2 GiB)."""

    def __init__(self, path: str, size: int | None = None) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            real = os.fstat(fd).st_size
            size = real if size is None else min(size, real)
            if size > MAX_FLAT_RAM:
                raise ValueError(f"guest RAM of {size >> 20} MiB crosses the PCI hole; "
                                 f"provisor reads at most {MAX_FLAT_RAM >> 20} MiB flat")
            self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self.size = size
        self.path = path

    def read(self, addr: int, n: int) -> bytes:
        if addr < 0 or n < 0 or addr + n > self.size:
            raise Unreadable(f"physical {addr:#x}+{n} outside guest RAM")
        return self.mm[addr:addr + n]

    def u64(self, addr: int) -> int:
        if addr < 0 or addr + 8 > self.size:
            raise Unreadable(f"physical {addr:#x} outside guest RAM")
        return _U64.unpack_from(self.mm, addr)[0]

    def close(self) -> None:
        try:
            self.mm.close()
        except (BufferError, ValueError):
            pass


class PhysicalBytes:
    """Physical memory from a bytes-like object: tests and memory dumps."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.size = len(data)

    def read(self, addr: int, n: int) -> bytes:
        if addr < 0 or n < 0 or addr + n > self.size:
            raise Unreadable(f"physical {addr:#x}+{n} outside memory")
        return bytes(self.data[addr:addr + n])

    def u64(self, addr: int) -> int:
        if addr < 0 or addr + 8 > self.size:
            raise Unreadable(f"physical {addr:#x} outside memory")
        return _U64.unpack_from(self.data, addr)[0]


class Virtual:
    """An address space: x86-64 4-level paging from ``cr3`` over a physical layer."""

    def __init__(self, phys: PhysicalFile | PhysicalBytes, cr3: int,
                 direct_map: int | None = None) -> None:
        self.phys = phys
        self.cr3 = cr3 & _ADDR_MASK
        self._tlb: dict[int, int] = {}  # virtual page number -> physical page address
        self.walks = 0
        self.set_direct_map(direct_map)

    def set_direct_map(self, base: int | None) -> None:
        """Linux maps all RAM linearly at page_offset_base: there, pa = va - base, with no
        walk and no cache to flush (the kernel's own __pa)."""
        self._dm_lo = base or 0
        self._dm_hi = self._dm_lo + getattr(self.phys, "size", 0) if base else 0

    def set_cr3(self, cr3: int) -> None:
        cr3 &= _ADDR_MASK
        if cr3 != self.cr3:
            self.cr3 = cr3
            self._tlb.clear()

    def flush(self) -> None:
        """Forget translations: the guest is about to run and may change its page tables."""
        self._tlb.clear()

    def translate(self, va: int) -> int:
        if self._dm_lo <= va < self._dm_hi:
            return va - self._dm_lo
        vpn = va >> 12
        base = self._tlb.get(vpn)
        if base is None:
            base = self._walk(va)
            self._tlb[vpn] = base
        return base | (va & 0xFFF)

    def _walk(self, va: int) -> int:
        if not canonical(va):
            raise Unreadable(f"non-canonical address {va:#x}")
        self.walks += 1
        u64 = self.phys.u64
        table = self.cr3
        for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
            e = u64(table + ((va >> shift) & 0x1FF) * 8)
            if not e & _PRESENT:
                raise Unreadable(f"{va:#x} not mapped (level {level})")
            if level in (3, 2) and e & _PS:
                size = 1 << shift
                return (e & _ADDR_MASK & ~(size - 1)) | (va & (size - 1) & ~0xFFF)
            table = e & _ADDR_MASK
        return table

    def read(self, va: int, n: int) -> bytes:
        """``n`` bytes at ``va``, across pages; Unreadable if any page is not mapped."""
        if n <= 0:
            return b""
        first = PAGE - (va & 0xFFF)
        if n <= first:
            return self.phys.read(self.translate(va), n)
        parts = []
        while n > 0:
            chunk = min(n, PAGE - (va & 0xFFF))
            parts.append(self.phys.read(self.translate(va), chunk))
            va = (va + chunk) & 0xFFFF_FFFF_FFFF_FFFF
            n -= chunk
        return b"".join(parts)

    def u64(self, va: int) -> int:
        return _U64.unpack(self.read(va, 8))[0]

    def read_cstr(self, va: int, limit: int) -> tuple[bytes, bool]:
        """A NUL-terminated string of at most ``limit`` bytes, read a page at a time.
        Returns (bytes, truncated)."""
        out = bytearray()
        while len(out) < limit:
            chunk = min(limit - len(out), PAGE - (va & 0xFFF))
            data = self.read(va, chunk)
            z = data.find(0)
            if z != -1:
                out += data[:z]
                return bytes(out), False
            out += data
            va += chunk
        return bytes(out), True


class GdbVirtual(Virtual):
    """Virtual memory through the gdbstub ('m' packets; the vCPU's current page tables)."""

    def __init__(self, client) -> None:  # client: hv.gdbstub.GdbClient
        self.client = client
        self.cr3 = 0
        self._tlb = {}
        self.walks = 0
        self._dm_lo = self._dm_hi = 0

    def set_cr3(self, cr3: int) -> None:
        self.cr3 = cr3

    def translate(self, va: int) -> int:  # pragma: no cover - never used for this layer
        raise Unreadable("the gdbstub layer does not expose physical addresses")

    def read(self, va: int, n: int) -> bytes:
        from hv.gdbstub import GdbError

        if n <= 0:
            return b""
        if not canonical(va) or not canonical(va + n - 1):
            raise Unreadable(f"non-canonical address {va:#x}")
        try:
            return self.client.read_memory(va, n)
        except GdbError as e:
            raise Unreadable(str(e)) from None
