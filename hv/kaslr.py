"""KASLR: the slide between the profile's link-time kernel addresses and the running guest's.

The banner string ``linux_banner`` is compile-time constant, so its bytes (in the profile) can
be found in guest physical memory; the slide is then the one 2 MB-aligned shift of the
kernel image that maps ``linux_banner`` onto that physical address through the kernel's own page
tables. Checking the mapping (not just finding the string) rules out copies of the banner, such
as the one in the printk buffer. A manual ``slide=`` skips detection.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from provisor.errors import ProvisorError

ReadPhys = Callable[[int, int], bytes]
Translate = Callable[[int], "int | None"]

KERNEL_MAP = 0xFFFFFFFF80000000   # __START_KERNEL_map: the kernel image's 1 GB window
KERNEL_IMAGE_SIZE = 1 << 30
ALIGN = 0x200000                  # KASLR moves the image (virtually and physically) in 2 MB steps
_ADDR = 0x000FFFFFFFFFF000
_PTI_USER = 0x1000                # with PTI the user PGD is the kernel PGD + 4 KB


class KaslrError(ProvisorError):
    pass


@dataclass(frozen=True)
class Kaslr:
    slide: int                  # add to every profile symbol address
    banner_paddr: int | None    # where linux_banner lives physically (None when overridden)
    pgd: int | None             # the kernel page-table root that confirmed it
    page_offset_base: int | None = None  # start of the (also randomized) direct map, if read

    def addr(self, link_addr: int) -> int:
        return (link_addr + self.slide) & 0xFFFFFFFFFFFFFFFF


def walk(read_phys: ReadPhys, pgd: int, vaddr: int) -> int | None:
    """Minimal x86-64 4-level walk (4 KB, 2 MB and 1 GB pages); None where unmapped."""
    table = pgd & _ADDR
    for level, shift in enumerate((39, 30, 21, 12)):
        raw = read_phys(table + ((vaddr >> shift) & 0x1FF) * 8, 8)
        if len(raw) != 8:
            return None
        (e,) = struct.unpack("<Q", raw)
        if not e & 1:
            return None
        if level in (1, 2) and e & 0x80:  # PS: 1 GB or 2 MB page
            size = 1 << shift
            return (e & _ADDR & ~(size - 1)) | (vaddr & (size - 1))
        table = e & _ADDR
    return table | (vaddr & 0xFFF)


def find_banner(read_phys: ReadPhys, banner: bytes, link_addr: int, phys_size: int,
                chunk: int = 1 << 24) -> list[int]:
    """Physical addresses holding ``banner``: the 2 MB-congruent spots first (a read each),
    then, only if none matched, a full scan."""
    hits = []
    first = link_addr % ALIGN
    for p in range(first, phys_size - len(banner) + 1, ALIGN):
        if read_phys(p, len(banner)) == banner:
            hits.append(p)
    if hits:
        return hits
    over = len(banner) - 1
    for base in range(0, phys_size, chunk):
        data = read_phys(base, min(chunk + over, phys_size - base))
        i = data.find(banner)
        while i != -1:
            if i < chunk:
                hits.append(base + i)
            i = data.find(banner, i + 1)
    return hits


def detect(profile, read_phys: ReadPhys, cr3: int, phys_size: int, *, slide: int | None = None,
           translate: Translate | None = None) -> Kaslr:
    """The guest's KASLR slide. ``profile`` is an hv.profile.Profile; ``read_phys(addr, n)`` reads
    guest physical memory; ``cr3`` the current CR3 (user or kernel PGD, PCID bits allowed);
    ``translate`` replaces the built-in walk (it must use the kernel PGD)."""
    if slide is not None:
        if slide % 0x1000:
            raise KaslrError(f"KASLR slide {slide:#x} is not page aligned")
        return Kaslr(slide, None, None, _page_offset_base(profile, read_phys, cr3, slide, translate))
    link = profile.symbol("linux_banner")
    banner = profile.banner_bytes + b"\0"
    if len(banner) < 16:
        raise KaslrError("the profile has no linux_banner text (rebuild it with provisor profile build)")
    hits = find_banner(read_phys, banner, link, phys_size)
    if not hits:
        raise KaslrError(f"linux_banner of {profile.release or 'the profiled kernel'} not found in guest "
                         "memory: the guest runs another kernel (or pass slide=)")
    pgds = [cr3 & _ADDR] if translate else [cr3 & _ADDR, cr3 & _ADDR & ~_PTI_USER]
    for pgd in dict.fromkeys(pgds):
        tr = translate or (lambda v, _p=pgd: walk(read_phys, _p, v))
        for v in range(KERNEL_MAP + link % ALIGN, KERNEL_MAP + KERNEL_IMAGE_SIZE, ALIGN):
            pa = tr(v)
            if pa is not None and pa in hits:
                s = v - link
                return Kaslr(s, pa, pgd, _page_offset_base(profile, read_phys, cr3, s, translate, pgd))
    raise KaslrError(f"linux_banner found at {', '.join(hex(h) for h in hits[:3])} but no kernel "
                     "mapping points there (wrong CR3?)")


def _page_offset_base(profile, read_phys: ReadPhys, cr3: int, slide: int,
                      translate: Translate | None, pgd: int | None = None) -> int | None:
    """The direct map's base (randomized too); read from the variable when the profile has it."""
    if not profile.has_symbol("page_offset_base"):
        return None
    v = profile.symbol("page_offset_base") + slide
    roots = [pgd] if pgd is not None else [cr3 & _ADDR, cr3 & _ADDR & ~_PTI_USER]
    for root in roots:
        pa = translate(v) if translate else walk(read_phys, root, v)
        if pa is not None:
            raw = read_phys(pa, 8)
            if len(raw) == 8:
                val = struct.unpack("<Q", raw)[0]
                if val >> 47 == 0x1FFFF:  # a canonical kernel address
                    return val
    return None
