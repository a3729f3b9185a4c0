"""Physical and virtual memory layers: page walks (4K/2M/1G), the translation cache, bounds."""

from __future__ import annotations

import os
import struct

import pytest
from test_linux_layer import FakeGuest

from hv.memory import MAX_FLAT_RAM, PhysicalBytes, PhysicalFile, Unreadable, Virtual, canonical


def test_canonical() -> None:
    assert canonical(0) and canonical(0x7FFF_FFFF_FFFF) and canonical(0xFFFF_8000_0000_0000)
    assert not canonical(0x8000_0000_0000) and not canonical(0xDEAD_0000_0000_0000)


def test_4k_walk_and_cross_page_read() -> None:
    g = FakeGuest()
    va = 0x7F00_0000_0000
    pa1, pa2 = g.page(), g.page() + 0x1000  # not contiguous
    g.page()
    g.map(va, pa1)
    g.map(va + 0x1000, pa2)
    g.write(va + 0xFF8, b"ABCDEFGHIJKLMNOP")
    v = Virtual(PhysicalBytes(g.phys), g.cr3)
    assert v.translate(va + 0x123) == pa1 + 0x123
    assert v.read(va + 0xFF8, 16) == b"ABCDEFGHIJKLMNOP"
    assert v.read(va, 0) == b""
    with pytest.raises(Unreadable):
        v.read(va + 0x1FF8, 16)  # runs into an unmapped third page


def test_large_pages() -> None:
    g = FakeGuest(size=8 << 20)
    v = Virtual(PhysicalBytes(g.phys), g.cr3)
    g.map_large(0xFFFF_C900_0020_0000, 0x200000, level=2)
    struct.pack_into("<Q", g.phys, 0x200000 + 0x12340, 0x1122334455667788)
    assert v.translate(0xFFFF_C900_0021_2340) == 0x212340
    assert v.u64(0xFFFF_C900_0021_2340) == 0x1122334455667788
    g.map_large(0x40000000 * 3, 0, level=3)  # 1G page at 3G -> physical 0
    assert v.translate(0xC000_0000 + 0x201234) == 0x201234
    with pytest.raises(Unreadable):
        v.read(0xC000_0000 + 0x3F00_0000, 8)  # inside the 1G page but beyond our RAM


def test_not_present_and_non_canonical() -> None:
    g = FakeGuest()
    v = Virtual(PhysicalBytes(g.phys), g.cr3)
    for bad in (0x1234_5000, 0xFFFF_FFFF_FFFF_F000, 0x8000_0000_0000, 0xDEAD_BEEF_DEAD_BEEF):
        with pytest.raises(Unreadable):
            v.read(bad, 8)


def test_cache_is_flushed() -> None:
    g = FakeGuest()
    va = 0x10_0000
    p1, p2 = g.page(), g.page()
    g.map(va, p1)
    g.phys[p1:p1 + 4] = b"old!"
    g.phys[p2:p2 + 4] = b"new!"
    v = Virtual(PhysicalBytes(g.phys), g.cr3)
    assert v.read(va, 4) == b"old!"
    g.map(va, p2)  # the guest remaps while running
    assert v.read(va, 4) == b"old!"  # stale while "stopped": cached
    v.flush()
    assert v.read(va, 4) == b"new!"
    walks = v.walks
    v.read(va, 4)
    assert v.walks == walks


def test_set_cr3_switches_address_space() -> None:
    g1 = FakeGuest()
    va = 0x10_0000
    p = g1.page()
    g1.map(va, p)
    g1.phys[p:p + 2] = b"A1"
    other = FakeGuest()  # a second set of tables in the same physical memory
    other.phys = g1.phys
    other._next = g1._next
    other.cr3 = other.page()
    p2 = other.page()
    other.map(va, p2)
    g1.phys[p2:p2 + 2] = b"B2"
    v = Virtual(PhysicalBytes(g1.phys), g1.cr3)
    assert v.read(va, 2) == b"A1"
    v.set_cr3(other.cr3 | 0x1)  # PCID bits are ignored
    assert v.read(va, 2) == b"B2"


def test_read_cstr_bounds() -> None:
    g = FakeGuest()
    va = g.map_range(0x40_0000, 0x3000)
    g.write(va + 0xFFC, b"abcdefgh\0")
    v = Virtual(PhysicalBytes(g.phys), g.cr3)
    assert v.read_cstr(va + 0xFFC, 100) == (b"abcdefgh", False)
    assert v.read_cstr(va + 0xFFC, 4) == (b"abcd", True)


def test_physical_file(tmp_path) -> None:
    p = tmp_path / "ram"
    p.write_bytes(bytes(range(256)) * 64)
    phys = PhysicalFile(str(p))
    try:
        assert phys.read(0x10, 4) == bytes([0x10, 0x11, 0x12, 0x13])
        assert phys.u64(8) == struct.unpack("<Q", bytes(range(8, 16)))[0]
        with pytest.raises(Unreadable):
            phys.read(phys.size - 2, 4)
        with pytest.raises(Unreadable):
            phys.u64(-8)
    finally:
        phys.close()


def test_physical_file_refuses_the_pci_hole(tmp_path) -> None:
    p = tmp_path / "big"
    with open(p, "wb") as f:
        f.truncate(MAX_FLAT_RAM + 4096)  # sparse
    with pytest.raises(ValueError, match="PCI hole"):
        PhysicalFile(str(p))
    os.unlink(p)


def test_direct_map_fast_path() -> None:
    g = FakeGuest()
    base = 0xFFFF_8880_0000_0000
    v = Virtual(PhysicalBytes(g.phys), g.cr3, direct_map=base)
    g.phys[0x5008:0x5010] = b"direct!!"
    assert v.read(base + 0x5008, 8) == b"direct!!" and v.walks == 0
    with pytest.raises(Unreadable):
        v.read(base + len(g.phys), 8)  # past RAM: not in the direct map, not mapped
    with pytest.raises(Unreadable):
        v.read((1 << 64) - 4, 8)  # wraps around
    v.set_direct_map(None)
    with pytest.raises(Unreadable):
        v.read(base + 0x5008, 8)


def test_gdb_fallback_layer() -> None:
    import socket

    from test_gdbstub import FakeStub

    from hv.gdbstub import GdbClient
    from hv.memory import GdbVirtual

    a, b = socket.socketpair()
    stub = FakeStub(b)
    stub.start()
    c = GdbClient(a, timeout=5)
    try:
        v = GdbVirtual(c)
        assert v.read(0x10, 4) == bytes([0x10, 0x11, 0x12, 0x13])
        assert v.u64(8) == struct.unpack("<Q", bytes(range(8, 16)))[0]
        stub.mem[0x40:0x44] = b"ab\0c"
        assert v.read_cstr(0x40, 100) == (b"ab", False)
        with pytest.raises(Unreadable):
            v.read(len(stub.mem) - 2, 8)  # the stub answers E14
        with pytest.raises(Unreadable):
            v.read(0x8000_0000_0000, 8)  # non-canonical: never sent
        with pytest.raises(Unreadable):
            v.translate(0x10)
    finally:
        c.close()
        b.close()
