"""KASLR detection on a crafted guest physical memory with hand-built x86-64 page tables."""

from __future__ import annotations

import struct

import pytest

from hv.kaslr import KERNEL_MAP, KaslrError, detect, find_banner, walk
from hv.profile import Profile

MB = 1 << 20
BANNER = b"Linux version 6.1.0-47-cloud-amd64 (test@host) (gcc 12) #1 SMP Debian 6.1.170-3\n"
LINK_TEXT = 0xFFFFFFFF81000000
LINK_BANNER = LINK_TEXT + 0xE00140
LINK_POB = LINK_TEXT + 0xF00008          # page_offset_base variable
DIRECT_MAP = 0xFFFF9A4C00000000
PGD, USER_PGD, PDPT, PD, PT = 0x10000, 0x11000, 0x12000, 0x13000, 0x14000
P, RW, PS = 1, 2, 0x80


def profile() -> Profile:
    syms = {"linux_banner": LINK_BANNER, "_text": LINK_TEXT, "page_offset_base": LINK_POB}
    return Profile({"metadata": {"linux": {"banner": BANNER.decode(), "release": "6.1.0-47-cloud-amd64"}},
                    "symbols": {k: {"address": v} for k, v in syms.items()},
                    "user_types": {}, "base_types": {}, "enums": {}})


class Mem:
    def __init__(self, size: int = 64 * MB) -> None:
        self.b = bytearray(size)
        self.reads = 0

    def put(self, addr: int, data: bytes) -> None:
        self.b[addr:addr + len(data)] = data

    def q(self, addr: int, val: int) -> None:
        self.put(addr, struct.pack("<Q", val))

    def read(self, addr: int, n: int) -> bytes:
        self.reads += 1
        return bytes(self.b[addr:addr + n])


def guest(slide: int, phys_text: int, split_4k: bool = False) -> Mem:
    """A kernel image loaded at ``phys_text`` and mapped at ``LINK_TEXT + slide``."""
    m = Mem()
    vtext = LINK_TEXT + slide
    m.put(phys_text + (LINK_BANNER - LINK_TEXT), BANNER + b"\0")
    m.q(phys_text + (LINK_POB - LINK_TEXT), DIRECT_MAP)
    m.put(0x200140, BANNER + b"\0")       # a 2 MB-congruent copy no kernel mapping points at
    m.put(0x500123, b"<6>" + BANNER)      # the printk buffer's copy
    m.q(PGD + ((vtext >> 39) & 0x1FF) * 8, PDPT | P | RW)
    m.q(USER_PGD + 0 * 8, 0x20000 | P)    # PTI user PGD: no kernel image mapping
    m.q(PDPT + ((vtext >> 30) & 0x1FF) * 8, PD | P | RW)
    for i in range(8):                     # 16 MB of image
        va, pa = vtext + i * 2 * MB, phys_text + i * 2 * MB
        idx = PD + ((va >> 21) & 0x1FF) * 8
        if split_4k or pa % (2 * MB):
            pt = PT + i * 0x1000
            m.q(idx, pt | P | RW)
            for j in range(512):
                m.q(pt + j * 8, (pa + j * 0x1000) | P | RW)
        else:
            m.q(idx, pa | P | RW | PS)
    return m


@pytest.mark.parametrize("slide,phys_text,split", [
    (0x1C600000, 0x2400000, False),
    (0, 0x1000000, False),             # nokaslr
    (0x3E000000 - 0x1000000 - 0x1000000, 0x1200000, True),  # near the top of the window, 4 KB PTEs
])
def test_detects_slide(slide, phys_text, split):
    m = guest(slide, phys_text, split)
    k = detect(profile(), m.read, PGD, len(m.b))
    assert k.slide == slide
    assert k.banner_paddr == phys_text + 0xE00140
    assert k.addr(LINK_TEXT) == LINK_TEXT + slide
    assert k.pgd == PGD
    assert k.page_offset_base == DIRECT_MAP


def test_user_cr3_with_pcid_bits_uses_the_kernel_pgd():
    m = guest(0x8000000, 0x2400000)
    k = detect(profile(), m.read, USER_PGD | 0x803, len(m.b))
    assert (k.slide, k.pgd) == (0x8000000, PGD)


def test_unaligned_load_falls_back_to_a_full_scan():
    m = guest(0x400000, 0x2401000)     # physically off the 2 MB grid: only a scan finds it
    m.b[0x200140:0x200140 + len(BANNER)] = bytes(len(BANNER))
    hits = find_banner(m.read, BANNER + b"\0", LINK_BANNER, len(m.b))
    assert hits == [0x500126, 0x2401000 + 0xE00140]  # the printk copy too: the mapping decides
    assert detect(profile(), m.read, PGD, len(m.b)).slide == 0x400000


def test_fast_path_reads_little():
    m = guest(0x1C600000, 0x2400000)
    m.reads = 0
    detect(profile(), m.read, PGD, len(m.b))
    assert m.reads < 4 * 512 + 64


def test_translate_callable_replaces_the_walk():
    m = guest(0x1C600000, 0x2400000)
    seen = []

    def tr(v: int) -> int | None:
        seen.append(v)
        return walk(m.read, PGD, v)

    assert detect(profile(), m.read, PGD, len(m.b), translate=tr).slide == 0x1C600000
    assert seen and all(v >= KERNEL_MAP for v in seen)


def test_override():
    m = guest(0x1C600000, 0x2400000)
    k = detect(profile(), m.read, PGD, len(m.b), slide=0x1C600000)
    assert (k.slide, k.banner_paddr, k.page_offset_base) == (0x1C600000, None, DIRECT_MAP)
    with pytest.raises(KaslrError, match="not page aligned"):
        detect(profile(), m.read, PGD, len(m.b), slide=0x123)


def test_other_kernel_is_refused():
    m = Mem()
    with pytest.raises(KaslrError, match="not found in guest memory"):
        detect(profile(), m.read, PGD, len(m.b))


def test_banner_without_mapping_is_refused():
    m = guest(0x1C600000, 0x2400000)
    with pytest.raises(KaslrError, match="no kernel mapping"):
        detect(profile(), m.read, 0x30000, len(m.b))  # a CR3 pointing at an empty table


def test_walk_sizes():
    m = Mem(8 * MB)
    m.q(0x1000, 0x2000 | P)                       # PML4[0]
    m.q(0x2000, 0x3000 | P)                       # PDPT[0] -> PD
    m.q(0x2008, 0x40000000 | P | PS)              # PDPT[1]: 1 GB page
    m.q(0x3000, 0x200000 | P | PS)                # PD[0]: 2 MB page
    m.q(0x3008, 0x4000 | P)                       # PD[1] -> PT
    m.q(0x4000 + 3 * 8, 0x7000 | P)               # PT[3]
    assert walk(m.read, 0x1000, 0x1234) == 0x201234
    assert walk(m.read, 0x1000, 0x40005678) == 0x40005678
    assert walk(m.read, 0x1000, 0x203ABC) == 0x7ABC
    assert walk(m.read, 0x1000, 0x204000) is None
    assert walk(m.read, 0x1000, 1 << 39) is None


@pytest.mark.guest
@pytest.mark.parametrize("kaslr,workload", [(True, "sleep 60"), (False, "sleep 60"),
                                            (True, "while :; do :; done")])  # often stopped in user mode
def test_real_guest(tmp_path, kaslr, workload):
    """Boot the Debian kernel with its RAM in a file, stop it through the QEMU monitor, read CR3,
    detect the slide and check it by reading init_task's comm through the page tables."""
    import mmap
    import re
    import socket
    import subprocess
    import time

    from hv import guest
    from hv.kaslr import walk
    from provisor.config import load

    cfg = load()
    k = guest.kit(cfg)
    p = Profile.load(k.profile)
    w = tmp_path / "w.sh"
    w.write_text(f"echo ready\n{workload}\n")
    initrd = guest.build_initramfs(cfg, w, log=lambda _m: None)
    ram, mon, log = tmp_path / "ram", tmp_path / "mon.sock", tmp_path / "serial.log"
    q = subprocess.Popen(guest.qemu_args(k.kernel, initrd, serial_log=log, kaslr=kaslr, extra=[
        "-object", f"memory-backend-file,id=ram,size=256M,mem-path={ram},share=on",
        "-machine", "memory-backend=ram", "-monitor", f"unix:{mon},server,nowait"]))
    try:
        deadline = time.monotonic() + 120
        while "ready" not in (log.read_text(errors="replace") if log.exists() else ""):
            assert q.poll() is None and time.monotonic() < deadline, "guest did not come up"
            time.sleep(0.2)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(mon))
        s.settimeout(10)

        def hmp(cmd: str, until: bytes) -> str:
            s.sendall(cmd.encode() + b"\n")
            buf = b""
            while until not in buf:
                buf += s.recv(1 << 16)
            return buf.decode(errors="replace")

        hmp("stop", b"(qemu)")
        cr3 = int(re.search(r"CR3=([0-9a-f]+)", hmp("info registers", b"CR3=")).group(1), 16)
        with open(ram, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            def read(a: int, n: int) -> bytes:
                return mm[a:a + n]

            r = detect(p, read, cr3, len(mm))
            assert (r.slide == 0) is (not kaslr)
            assert r.slide % 0x200000 == 0
            pa = walk(read, r.pgd, r.addr(p.symbol("init_task")) + p.offset("task_struct.comm"))
            assert mm[pa:pa + 10] == b"swapper/0\0"
            assert r.page_offset_base is not None and (r.page_offset_base == 0xFFFF888000000000) is (not kaslr)
        s.sendall(b"quit\n")
        q.wait(20)
    finally:
        if q.poll() is None:
            q.kill()
            q.wait()
