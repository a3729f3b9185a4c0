"""The Linux layer against crafted guest memory: page tables, tasks, dentries and mounts built
byte by byte, including the lies a hostile guest can tell (cycles, absurd lengths, pointers
into nowhere). FakeGuest is shared with test_interceptor.py."""

from __future__ import annotations

import struct

import pytest

from hv.linux import MAX_ARGV, MAX_STR, DictProfile, Linux, encode_dev
from hv.memory import PhysicalBytes, Unreadable, Virtual

KBASE = 0xFFFF_8880_0010_0000  # kernel objects (a direct-map-like address)
UBASE = 0x0000_0000_0040_0000  # user memory
PERCPU = 0xFFFF_8880_0F80_0000

OFFSETS = {
    "task_struct.pid": 0, "task_struct.tgid": 4, "task_struct.comm": 8,
    "task_struct.real_parent": 24, "task_struct.cred": 32, "task_struct.start_time": 40,
    "task_struct.fs": 48, "task_struct.files": 56, "task_struct.mm": 64,
    "cred.uid": 8, "fs_struct.root": 24, "fs_struct.pwd": 40, "path.mnt": 0, "path.dentry": 8,
    "dentry.d_parent": 24, "dentry.d_name": 32, "dentry.d_inode": 48, "qstr.len": 4,
    "qstr.name": 8, "inode.i_sb": 40, "inode.i_ino": 64, "super_block.s_dev": 16,
    "files_struct.fdt": 32, "fdtable.max_fds": 0, "fdtable.fd": 8, "file.f_path": 16,
    "file.f_inode": 32, "mount.mnt_parent": 16, "mount.mnt_mountpoint": 24, "mount.mnt": 32,
    "mount.mnt_id": 80, "vfsmount.mnt_root": 0, "mm_struct.pgd": 72,
    "pt_regs.r11": 48, "pt_regs.r10": 56, "pt_regs.r9": 64, "pt_regs.r8": 72, "pt_regs.ax": 80,
    "pt_regs.cx": 88, "pt_regs.dx": 96, "pt_regs.si": 104, "pt_regs.di": 112,
    "pt_regs.orig_ax": 120, "pt_regs.ip": 128, "pt_regs.cs": 136, "pt_regs.flags": 144,
    "cred.gid": 12, "cred.suid": 16, "cred.sgid": 20, "cred.euid": 24, "cred.egid": 28,
    "cred.fsuid": 32, "cred.fsgid": 36, "inode.i_mode": 0, "file.private_data": 40, "socket.sk": 24,
    "sock.__sk_common": 0, "sock.sk_type": 136, "sock_common.skc_daddr": 0,
    "sock_common.skc_rcv_saddr": 4, "sock_common.skc_dport": 12, "sock_common.skc_num": 14,
    "sock_common.skc_family": 16, "sock_common.skc_v6_daddr": 56,
    "sock_common.skc_v6_rcv_saddr": 72, "unix_sock.addr": 144, "unix_sock.peer": 152,
    "unix_address.len": 4, "unix_address.name": 8, "sockaddr_un.sun_path": 2,
}
CURRENT_TASK = 0x1FB80


class FakeGuest:
    """Physical memory with real x86-64 page tables (4K pages), and a bump allocator for
    kernel and user objects. ``write`` goes through the test's own map, not the walker."""

    def __init__(self, size: int = 2 << 20) -> None:
        self.phys = bytearray(size)
        self._next = 0x1000
        self.cr3 = self.page()
        self.pages: dict[int, int] = {}
        self.kbrk = KBASE
        self.ubrk = UBASE
        self.map_range(PERCPU, 0x20000)

    def page(self) -> int:
        p = self._next
        self._next += 0x1000
        if self._next > len(self.phys):
            raise MemoryError("fake guest out of memory")
        return p

    def _entry(self, table: int, idx: int, create: bool = True, flags: int = 0x63) -> int:
        e = struct.unpack_from("<Q", self.phys, table + idx * 8)[0]
        if not e & 1 and create:
            e = self.page() | flags
            struct.pack_into("<Q", self.phys, table + idx * 8, e)
        return e & 0x000F_FFFF_FFFF_F000

    def map(self, va: int, pa: int) -> None:
        t = self.cr3
        for shift in (39, 30, 21):
            t = self._entry(t, (va >> shift) & 0x1FF)
        struct.pack_into("<Q", self.phys, t + ((va >> 12) & 0x1FF) * 8, pa | 0x63)
        self.pages[va >> 12] = pa

    def map_large(self, va: int, pa: int, level: int) -> None:
        """A 2M (level 2) or 1G (level 3) page."""
        t = self.cr3
        for shift in {3: (39,), 2: (39, 30)}[level]:
            t = self._entry(t, (va >> shift) & 0x1FF)
        shift = {2: 21, 3: 30}[level]
        struct.pack_into("<Q", self.phys, t + ((va >> shift) & 0x1FF) * 8, pa | 0xE3)

    def unmap(self, va: int) -> None:
        t = self.cr3
        for shift in (39, 30, 21):
            t = self._entry(t, (va >> shift) & 0x1FF, create=False)
        struct.pack_into("<Q", self.phys, t + ((va >> 12) & 0x1FF) * 8, 0)
        self.pages.pop(va >> 12, None)

    def map_range(self, va: int, size: int) -> int:
        for off in range(0, size, 0x1000):
            if (va + off) >> 12 not in self.pages:
                self.map(va + off, self.page())
        return va

    def write(self, va: int, data: bytes) -> None:
        while data:
            pa = self.pages[va >> 12] | (va & 0xFFF)
            n = min(len(data), 0x1000 - (va & 0xFFF))
            self.phys[pa:pa + n] = data[:n]
            va, data = va + n, data[n:]

    def u64(self, va: int, v: int) -> None:
        self.write(va, struct.pack("<Q", v & 0xFFFF_FFFF_FFFF_FFFF))

    def u32(self, va: int, v: int) -> None:
        self.write(va, struct.pack("<I", v))

    def kalloc(self, size: int) -> int:
        a = self.kbrk
        self.kbrk += (size + 63) & ~63
        self.map_range(a & ~0xFFF, self.kbrk - (a & ~0xFFF) + 0x1000)
        return a

    def ualloc(self, data: bytes) -> int:
        a = self.ubrk
        self.ubrk += (len(data) + 15) & ~15
        self.map_range(a & ~0xFFF, self.ubrk - (a & ~0xFFF) + 0x1000)
        self.write(a, data)
        return a

    # -- kernel objects --------------------------------------------------------------------
    def dentry(self, name: bytes, parent: int | None, inode: int = 0) -> int:
        d = self.kalloc(64)
        nm = self.kalloc(len(name) + 1)
        self.write(nm, name + b"\0")
        self.u64(d + 24, parent if parent is not None else d)
        self.u32(d + 32 + 4, len(name))
        self.u64(d + 32 + 8, nm)
        self.u64(d + 48, inode)
        return d

    def inode(self, ino: int, dev: int, mode: int = 0) -> int:
        sb = self.kalloc(32)
        self.u32(sb + 16, dev)
        i = self.kalloc(80)
        self.write(i, struct.pack("<H", mode))
        self.u64(i + 40, sb)
        self.u64(i + 64, ino)
        return i

    def mount(self, root: int, mnt_id: int, parent: int | None = None,
              mountpoint: int = 0) -> int:
        m = self.kalloc(96)
        self.u64(m + 16, parent if parent is not None else m)
        self.u64(m + 24, mountpoint or root)
        self.u64(m + 32, root)  # mnt.mnt_root
        self.u32(m + 80, mnt_id)
        return m

    def fs(self, root_mnt: int, root: int, pwd_mnt: int, pwd: int) -> int:
        f = self.kalloc(64)
        self.u64(f + 24, root_mnt + 32)
        self.u64(f + 32, root)
        self.u64(f + 40, pwd_mnt + 32)
        self.u64(f + 48, pwd)
        return f

    def files(self, fds: list[int]) -> int:
        arr = self.kalloc(8 * max(1, len(fds)))
        for i, f in enumerate(fds):
            self.u64(arr + 8 * i, f)
        fdt = self.kalloc(16)
        self.u32(fdt, len(fds))
        self.u64(fdt + 8, arr)
        fs = self.kalloc(40)
        self.u64(fs + 32, fdt)
        return fs

    def file(self, mnt: int, dentry: int, inode: int) -> int:
        f = self.kalloc(48)
        self.u64(f + 16, mnt + 32)
        self.u64(f + 24, dentry)
        self.u64(f + 32, inode)
        return f

    def task(self, pid: int, tgid: int, comm: bytes, parent: int | None, uid: int,
             fs: int, files: int, start: int = 1000, cred: tuple[int, ...] | None = None
             ) -> int:
        t = self.kalloc(72)
        c = self.kalloc(40)
        self.write(c + 8, struct.pack("<8I", *(cred or (uid,) * 8)))
        cred = c
        self.write(t, struct.pack("<ii", pid, tgid))
        self.write(t + 8, comm[:15].ljust(16, b"\0"))
        self.u64(t + 24, parent if parent is not None else t)
        self.u64(t + 32, cred)
        self.u64(t + 40, start)
        self.u64(t + 48, fs)
        self.u64(t + 56, files)
        mm = self.kalloc(80)
        self.u64(mm + 72, KBASE + 0x7F000)  # pgd: a kernel address (unused by these tests)
        self.u64(t + 64, mm)
        return t

    def sock(self, family: int, typ: int, *, laddr: bytes = b"", raddr: bytes = b"",
             lport: int = 0, rport: int = 0, addr: bytes | None = None, peer: int = 0) -> int:
        """A struct sock (a unix_sock for AF_UNIX, bound to ``addr``), the ports as the kernel
        keeps them: skc_num in host order, skc_dport in network order."""
        sk = self.kalloc(160)
        if family == 10:
            self.write(sk + 72, laddr.ljust(16, b"\0"))
            self.write(sk + 56, raddr.ljust(16, b"\0"))
        else:
            self.write(sk + 4, laddr.ljust(4, b"\0"))
            self.write(sk + 0, raddr.ljust(4, b"\0"))
        self.write(sk + 12, struct.pack(">H", rport) + struct.pack("<H", lport))
        self.write(sk + 16, struct.pack("<H", family))
        self.write(sk + 136, struct.pack("<H", typ))
        if addr is not None:
            ua = self.kalloc(8 + 2 + len(addr))
            self.u32(ua + 4, 2 + len(addr))
            self.write(ua + 8, struct.pack("<H", 1) + addr)
            self.u64(sk + 144, ua)
        self.u64(sk + 152, peer)
        return sk

    def socket_file(self, sk: int, ino: int) -> int:
        """A sockfs file (its dentry 'socket:[ino]' on a mount of its own) of struct sock sk."""
        root = self.dentry(b"", None)
        node = self.inode(ino, 8, 0o140777)
        d = self.dentry(b"", root, node)  # sockfs: no name; the kernel's d_dname makes one
        f = self.file(self.mount(root, 9), d, node)
        sock = self.kalloc(32)
        self.u64(sock + 24, sk)
        self.u64(f + 40, sock)
        return f

    def set_current(self, task: int) -> None:
        self.u64(PERCPU + CURRENT_TASK, task)

    def linux(self) -> Linux:
        prof = DictProfile({"current_task": CURRENT_TASK}, OFFSETS)
        return Linux(Virtual(PhysicalBytes(self.phys), self.cr3), prof)


def world() -> tuple[FakeGuest, dict[str, int]]:
    """/ (rootfs, mnt 1) with /root/work, and /mnt/data on a second mount (mnt 42)."""
    g = FakeGuest()
    ino_root = g.inode(1, (8 << 20) | 1)
    r = g.dentry(b"/", None, ino_root)
    root_d = g.dentry(b"root", r, g.inode(2, (8 << 20) | 1))
    work = g.dentry(b"work", root_d, g.inode(3, (8 << 20) | 1))
    mnt_d = g.dentry(b"mnt", r)
    m1 = g.mount(r, 1)
    r2 = g.dentry(b"/", None)
    data = g.dentry(b"data", r2)
    m2 = g.mount(r2, 42, parent=m1, mountpoint=mnt_d)
    a_ino = g.inode(77, (8 << 20) | 1)
    a_d = g.dentry(b"a.txt", work, a_ino)
    f = g.file(m1, a_d, a_ino)
    pipe_root = g.dentry(b"pipe:", None)
    pipe_ino = g.inode(555, 13)
    pipe_d = g.dentry(b"pipe:[555]", pipe_root, pipe_ino)
    pm = g.mount(pipe_root, 7)
    pf = g.file(pm, pipe_d, pipe_ino)
    fs = g.fs(m1, r, m1, work)
    files = g.files([0, 0, 0, f, pf])
    init = g.task(1, 1, b"init", None, 0, fs, files)
    t = g.task(80, 80, b"sh", init, 1000, fs, files, start=5555)
    g.set_current(t)
    return g, {"task": t, "init": init, "m1": m1, "m2": m2, "data": data, "work": work,
               "fs": fs, "r": r, "root_d": root_d}


def test_task_identity() -> None:
    g, w = world()
    lx = g.linux()
    assert lx.current_task(PERCPU) == w["task"]
    t = lx.task(w["task"])
    assert t.ok and (t.pid, t.tgid, t.ppid, t.uid, t.comm, t.start_time) == \
        (80, 80, 1, 1000, "sh", 5555)


def test_cwd_normal_and_across_mounts() -> None:
    g, w = world()
    lx = g.linux()
    assert lx.cwd(lx.task(w["task"])) == ("/root/work", 1)
    g.u64(w["fs"] + 40, w["m2"] + 32)
    g.u64(w["fs"] + 48, w["data"])
    assert lx.cwd(lx.task(w["task"])) == ("/mnt/data", 42)
    g.u64(w["fs"] + 48, lx.u64(w["m2"] + 32))  # the root dentry of the second mount
    assert lx.cwd(lx.task(w["task"])) == ("/mnt", 42)


def test_cyclic_dparent_chain_is_unreadable_not_a_hang() -> None:
    g, w = world()
    g.u64(w["root_d"] + 24, w["work"])  # root's parent is work, work's parent is root
    lx = g.linux()
    path, mnt = lx.cwd(lx.task(w["task"]))
    assert path is None and mnt == 1


def test_cyclic_mount_chain() -> None:
    g, w = world()
    m3 = g.mount(g.dentry(b"/", None), 3)
    g.u64(w["m2"] + 16, m3)
    g.u64(m3 + 16, w["m2"])  # two mounts, each the other's parent
    g.u64(w["fs"] + 40, w["m2"] + 32)
    g.u64(w["fs"] + 48, w["data"])
    lx = g.linux()
    assert lx.cwd(lx.task(w["task"]))[0] is None


def test_deep_chain_hits_the_depth_bound() -> None:
    g, w = world()
    d = w["root_d"]
    for i in range(80):
        d = g.dentry(b"d%d" % i, d)
    g.u64(w["fs"] + 48, d)
    lx = g.linux()
    assert lx.cwd(lx.task(w["task"]))[0] is None
    d2 = w["root_d"]
    for i in range(40):
        d2 = g.dentry(b"e%d" % i, d2)
    g.u64(w["fs"] + 48, d2)
    path = lx.cwd(lx.task(w["task"]))[0]
    assert path is not None and path.count("/") == 41


@pytest.mark.parametrize("length", [256, 0xFFFFFFFF, 1 << 20])
def test_absurd_qstr_length(length: int) -> None:
    g, w = world()
    g.u32(w["work"] + 32 + 4, length)
    lx = g.linux()
    assert lx.cwd(lx.task(w["task"]))[0] is None


@pytest.mark.parametrize("ptr", [0, 0x1234, 0xDEAD_BEEF_0000_0000, 0xFFFF_8880_7FFF_F000,
                                 0xFFFF_FFFF_FFFF_FFF8])
def test_bad_pointers(ptr: int) -> None:
    g, w = world()
    lx = g.linux()
    g.u64(w["work"] + 24, ptr)  # d_parent
    assert lx.cwd(lx.task(w["task"]))[0] is None
    g2, w2 = world()
    g2.u64(w2["task"] + 48, ptr)  # task->fs
    lx2 = g2.linux()
    assert lx2.cwd(lx2.task(w2["task"])) == (None, 0)
    g3, w3 = world()
    g3.u64(w3["task"] + 32, ptr)  # task->cred
    lx3 = g3.linux()
    assert not lx3.task(w3["task"]).ok


def test_unmapped_page_under_an_object() -> None:
    g, w = world()
    g.unmap(w["work"] & ~0xFFF)
    lx = g.linux()
    t = lx.task(w["task"])  # the task may share that page: either way, no exception
    assert lx.cwd(t)[0] is None


def test_fd_to_file_identity() -> None:
    g, w = world()
    lx = g.linux()
    t = lx.task(w["task"])
    f = lx.fd_file(t, 3)
    assert f is not None
    assert (f.dev, f.ino, f.path) == (encode_dev((8 << 20) | 1), 77, "/root/work/a.txt")
    p = lx.fd_file(t, 4)
    assert p is not None and p.ino == 555 and p.path == "pipe:[555]"
    for fd in (0, 5, 1000, -1, 1 << 30):
        assert lx.fd_file(t, fd) is None


def test_fd_table_lies() -> None:
    g, w = world()
    lx = g.linux()
    fdt = lx.u64(lx.task(w["task"]).files + 32)
    g.u32(fdt, 0xFFFFFFFF)  # max_fds: claims 4 billion
    g.u64(fdt + 8, 0x1000)  # the fd array in user space
    assert lx.fd_file(lx.task(w["task"]), 3) is None
    with pytest.raises(Unreadable):
        lx.fd_file(lx.task(w["task"]), 3, strict=True)
    assert lx.fd_file(lx.task(w["task"]), -5, strict=True) is None  # not open: no error


def test_encode_dev() -> None:
    assert encode_dev((8 << 20) | 1) == 0x801
    assert encode_dev((259 << 20) | 0x12345) == (0x45 | (259 << 8) | (0x123 << 12 << 8))


def test_user_strings_and_bounds() -> None:
    g, _ = world()
    lx = g.linux()
    s = g.ualloc(b"/root/a.txt\0")
    assert lx.user_string(s) == ("/root/a.txt", False)
    long = g.ualloc(b"x" * (MAX_STR + 100))  # no NUL within the bound
    text, trunc = lx.user_string(long)
    assert trunc and len(text) == MAX_STR
    assert lx.user_string(0) == (None, False)
    assert lx.user_string(0xFFFF_8880_0010_0000) == (None, False)  # a kernel address
    assert lx.user_string(0x7000_0000) == (None, False)  # unmapped
    # a string running into an unmapped page
    edge = g.ubrk = (g.ubrk + 0xFFF) & ~0xFFF
    g.map_range(edge, 0x1000)
    g.write(edge + 0xFF0, b"A" * 16)
    assert lx.user_string(edge + 0xFF0) == (None, False)


def test_argv() -> None:
    g, _ = world()
    lx = g.linux()
    ptrs = [g.ualloc(b"cat\0"), g.ualloc(b"a.txt\0"), 0]
    argv = g.ualloc(b"".join(struct.pack("<Q", p) for p in ptrs))
    assert lx.user_strv(argv) == (["cat", "a.txt"], False, False)
    one = g.ualloc(b"x\0")
    many = g.ualloc(b"".join(struct.pack("<Q", one) for _ in range(MAX_ARGV + 50)) + bytes(8))
    lst, trunc, bad = lx.user_strv(many)
    assert trunc and not bad and len(lst) == MAX_ARGV
    big = g.ualloc(b"y" * 4000 + b"\0")
    heavy = g.ualloc(b"".join(struct.pack("<Q", big) for _ in range(20)) + bytes(8))
    lst, trunc, bad = lx.user_strv(heavy)
    assert trunc and not bad and sum(len(x) + 1 for x in lst) <= 32 * 1024
    bad = g.ualloc(struct.pack("<QQ", ptrs[0], 0x7777_0000) + bytes(8))
    assert lx.user_strv(bad) == (["cat"], False, True)
    assert lx.user_strv(0x7777_0000) == (None, False, True)
    assert lx.user_strv(0) == ([], False, False)


def test_pt_regs_and_ints() -> None:
    g, _ = world()
    lx = g.linux()
    regs = g.kalloc(168)
    for name, off in OFFSETS.items():
        if name.startswith("pt_regs."):
            g.u64(regs + off, off * 3)
    args, nr = lx.syscall_args(regs)
    assert args == (112 * 3, 104 * 3, 96 * 3, 56 * 3, 72 * 3, 64 * 3) and nr == 120 * 3
    pair = g.ualloc(struct.pack("<ii", 3, 4))
    assert lx.user_ints(pair, 2) == [3, 4]
    assert lx.user_ints(0x7777_0000, 2) is None


def test_profile_missing_members_is_a_clear_error() -> None:
    g, _ = world()
    offs = dict(OFFSETS)
    del offs["qstr.len"]
    with pytest.raises(KeyError, match="qstr.len"):
        Linux(Virtual(PhysicalBytes(g.phys), g.cr3), DictProfile({"current_task": 0}, offs))


def test_path_cache_follows_renames() -> None:
    g, w = world()
    lx = g.linux()
    t = lx.task(w["task"])
    assert lx.cwd(t)[0] == "/root/work"
    # rename work -> job in place (same name pointer, new bytes and hash): the cache sees
    # a different key and walks again
    name_ptr = lx.u64(w["work"] + 40)
    g.write(name_ptr, b"job\0")
    g.u32(w["work"] + 36, 3)
    assert lx.cwd(t)[0] == "/root/job"
    # an ancestor renamed: the dentry itself is unchanged, so the cache needs invalidating
    g.write(lx.u64(w["root_d"] + 40), b"home")
    assert lx.cwd(t)[0] == "/root/job"  # stale until told
    lx.invalidate_paths()
    assert lx.cwd(t)[0] == "/home/job"


def test_guest_bytes_become_guest_text_losslessly() -> None:
    """comm, dentry names and user strings are bytes: escaped (provisor/guesttext.py), never
    replaced by U+FFFD nor left as surrogates, so the exact bytes come back."""
    from provisor.guesttext import unescape

    g, w = world()
    lx = g.linux()
    t = lx.task(g.task(90, 90, b"n\xff\x1b[2J", w["init"], 0, w["fs"], 0))
    assert t.comm == r"n\xff\x1b[2J" and unescape(t.comm) == b"n\xff\x1b[2J"
    ino = g.inode(78, (8 << 20) | 1)
    f = g.file(w["m1"], g.dentry(b"n\xff\x01m\nx", w["work"], ino), ino)
    path = lx.file_id(f, lx.task(w["task"])).path
    assert path == r"/root/work/n\xff\x01m\x0ax"
    assert unescape(path) == b"/root/work/n\xff\x01m\nx"
    pipe_root = g.dentry(b"pipe:", None)
    pino = g.inode(556, 13)
    pf = g.file(g.mount(pipe_root, 8), g.dentry(b"pipe:[\xff\\]", pipe_root, pino), pino)
    assert lx.file_id(pf, lx.task(w["task"])).path == r"pipe:[\xff\\]"
    assert lx.user_string(g.ualloc(b"a\xc3\xa9\xff\\\0")) == ("a\u00e9\\xff\\\\", False)
    ptrs = [g.ualloc(b"cat\0"), g.ualloc(b"n\xff\x01m\0"), 0]
    argv = g.ualloc(b"".join(struct.pack("<Q", p) for p in ptrs))
    assert lx.user_strv(argv) == (["cat", r"n\xff\x01m"], False, False)
    # the argv bound counts guest bytes, not the (longer) escapes
    big = g.ualloc(b"\xff" * 4000 + b"\0")
    heavy = g.ualloc(b"".join(struct.pack("<Q", big) for _ in range(20)) + bytes(8))
    lst, trunc, _ = lx.user_strv(heavy)
    assert trunc and sum(len(unescape(x)) + 1 for x in lst) <= 32 * 1024
    assert [len(unescape(x)) for x in lst[:8]] == [4000] * 8  # 8 whole, then a cut one


def _fds(g: FakeGuest, lx: Linux, task: int, files: list[int]) -> object:
    t = lx.task(task)
    fdt = lx.u64(t.files + 32)
    arr = g.kalloc(8 * len(files))
    for i, f in enumerate(files):
        g.u64(arr + 8 * i, f)
    g.u32(fdt, len(files))
    g.u64(fdt + 8, arr)
    return t


def test_cred_is_read_whole_and_in_order() -> None:
    g, w = world()
    t = g.task(81, 81, b"su", w["init"], 0, w["fs"], 0, cred=(1, 2, 3, 4, 5, 6, 7, 8))
    lx = g.linux()
    task = lx.task(t)
    assert task.ok and task.cred == (1, 2, 3, 4, 5, 6, 7, 8) and task.uid == 1
    g.u64(t + 32, 0xFFFF_8880_DEAD_0000)  # cred into nowhere: the task is unreadable
    task = lx.task(t)
    assert not task.ok and task.cred is None


def test_inet_endpoints_and_port_byte_order() -> None:
    """skc_num is host order, skc_dport network order: 5000 and 40000 come out as such."""
    g, w = world()
    lx = g.linux()
    tcp = g.sock(2, 1, laddr=bytes([127, 0, 0, 1]), lport=5000, raddr=bytes([127, 0, 0, 1]),
                 rport=40000)
    udp = g.sock(2, 2, laddr=bytes([10, 1, 2, 3]), lport=53)  # bound, not connected
    raw = g.sock(2, 1)  # neither
    v6 = g.sock(10, 1, laddr=bytes(15) + b"\1", lport=80,
                raddr=bytes.fromhex("20010db8000000000000000000000001"), rport=443)
    t = _fds(g, lx, w["task"], [g.socket_file(s, 100 + i) for i, s in
                                enumerate((tcp, udp, raw, v6))])
    assert lx.fd_file(t, 0).path == "socket:[100]"
    assert lx.fd_socket(t, 0) == (2, 1, "127.0.0.1:5000", "127.0.0.1:40000", tcp, 0)
    assert lx.fd_socket(t, 1) == (2, 2, "10.1.2.3:53", "", udp, 0)
    assert lx.fd_socket(t, 2) == (2, 1, "", "", raw, 0)
    assert lx.fd_socket(t, 3) == (10, 1, "[::1]:80", "[2001:db8::1]:443", v6, 0)
    assert lx.fd_socket(t, 9) is None


def test_unix_endpoints_pair_up() -> None:
    g, w = world()
    lx = g.linux()
    a = g.sock(1, 1, addr=b"/tmp/s\0")
    b = g.sock(1, 1, peer=a)
    g.u64(a + 152, b)
    abstract = g.sock(1, 2, addr=b"\0a\xffb")
    t = _fds(g, lx, w["task"], [g.socket_file(s, 200 + i) for i, s in
                                enumerate((a, b, abstract))])
    assert lx.fd_socket(t, 0) == (1, 1, "/tmp/s", "", a, b)
    assert lx.fd_socket(t, 1) == (1, 1, "", "/tmp/s", b, a)
    assert lx.fd_socket(t, 2) == (1, 2, "\\x00a\\xffb", "", abstract, 0)


@pytest.mark.parametrize("lie", ["sk", "socket", "addr_len", "addr_ptr", "peer"])
def test_socket_lies_are_unreadable(lie: str) -> None:
    g, w = world()
    lx = g.linux()
    sk = g.sock(1, 1, addr=b"/x\0")
    f = g.socket_file(sk, 300)
    t = _fds(g, lx, w["task"], [f])
    if lie == "sk":
        g.u64(lx.u64(f + 40) + 24, 0)
    elif lie == "socket":
        g.u64(f + 40, 0x1000)  # a user address
    elif lie == "addr_len":
        g.u32(lx.u64(sk + 144) + 4, 5000)  # longer than a sockaddr_un
    elif lie == "addr_ptr":
        g.u64(sk + 144, 0xFFFF_8880_DEAD_0000)
    else:
        g.u64(sk + 152, 0x4141)  # not a kernel pointer
    with pytest.raises(Unreadable):
        lx.fd_socket(t, 0)


def test_socket_without_optional_members() -> None:
    """A profile without unix_sock or the IPv6 addresses (CONFIG_UNIX, CONFIG_IPV6 off):
    inet still works; the others are Unreadable (the event is flagged), never misread."""
    g, w = world()
    offs = {k: v for k, v in OFFSETS.items() if not k.startswith(("unix_", "sockaddr_un"))
            and "v6" not in k}
    lx = Linux(Virtual(PhysicalBytes(g.phys), g.cr3), DictProfile({"current_task": 0}, offs))
    inet, unix, v6 = g.sock(2, 2, lport=7), g.sock(1, 1), g.sock(10, 1, lport=7)
    t = _fds(g, lx, w["task"], [g.socket_file(s, 400 + i) for i, s in
                                enumerate((inet, unix, v6))])
    assert lx.fd_socket(t, 0) == (2, 2, "0.0.0.0:7", "", inet, 0)
    for fd in (1, 2):
        with pytest.raises(Unreadable):
            lx.fd_socket(t, fd)


@pytest.mark.parametrize("hexaddr,text", [
    ("00000000000000000000000000000000", "::"),
    ("00000000000000000000000000000001", "::1"),
    ("20010db8000000000000000000000001", "2001:db8::1"),
    ("20010db8000000010000000000000001", "2001:db8:0:1::1"),  # the longer run
    ("20010db8000000000001000000000001", "2001:db8::1:0:0:1"),  # equal runs: the first
    ("20010db8000100000001000100010001", "2001:db8:1:0:1:1:1:1"),  # one zero group: no ::
    ("00000000000000000000ffff7f000001", "::ffff:7f00:1"),  # no dotted form
    ("fe800000000000000000000000000000", "fe80::"),
])
def test_ipv6_text_is_rfc5952(hexaddr: str, text: str) -> None:
    from hv.linux import ipv6_text

    assert ipv6_text(bytes.fromhex(hexaddr)) == text


def test_pseudo_names_by_inode_mode_and_spoofed_socket_names() -> None:
    """Outside the namespace's tree a file is named as /proc/PID/fd names it: socket:[ino]
    and pipe:[ino] by the inode's mode. A dentry that only calls itself a socket is not
    read as one (its file's inode is no S_IFSOCK): Unreadable, the event is flagged."""
    g, w = world()
    lx = g.linux()
    root = g.dentry(b"", None)
    m = g.mount(root, 11)
    fifo = g.inode(600, 12, 0o010600)
    pf = g.file(m, g.dentry(b"", root, fifo), fifo)
    plain = g.inode(601, 12, 0o100644)
    spoof = g.file(m, g.dentry(b"socket:[601]", root, plain), plain)
    sk = g.sock(2, 1, lport=9)
    g.u64(spoof + 40, g.kalloc(32))  # some private_data
    t = _fds(g, lx, w["task"], [pf, spoof, g.socket_file(sk, 602)])
    assert lx.fd_file(t, 0).path == "pipe:[600]"
    assert lx.fd_file(t, 1).path == "socket:[601]"
    with pytest.raises(Unreadable, match="not a socket"):
        lx.fd_socket(t, 1)
    assert lx.fd_file(t, 2).path == "socket:[602]"
    assert lx.fd_socket(t, 2) == (2, 1, "0.0.0.0:9", "", sk, 0)


def test_eventbuild_adds_endpoints_and_flags_unreadable_ones() -> None:
    """hv/eventbuild.add_file (both Python producers): an endpoint per socket file, with the
    file's index; a socket whose endpoint cannot be read gets none and F_SOCK_UNREADABLE;
    other files never ask."""
    from hv.eventbuild import add_file
    from provisor import events as E

    class Src:
        asked: list[int] = []

        def socket(self, fd: int):
            self.asked.append(fd)
            if fd == 7:
                raise Unreadable("gone")
            return (2, 1, "127.0.0.1:1", "", 0xFFFF_8880_0000_1000, 0)

    ev = E.Event(1)
    src = Src()
    add_file(ev, src, 3, E.FileId(1, 2, "/root/a"))
    add_file(ev, src, 4, E.FileId(8, 9, "socket:[9]"))
    assert ev.endpoints == [E.Endpoint(1, 2, 1, "127.0.0.1:1", "", 0xFFFF_8880_0000_1000, 0)]
    assert not ev.flags & E.F_SOCK_UNREADABLE
    add_file(ev, src, 7, E.FileId(8, 10, "socket:[10]"))
    assert len(ev.files) == 3 and len(ev.endpoints) == 1 and ev.flags & E.F_SOCK_UNREADABLE
    assert src.asked == [4, 7]
    assert E.decode(E.encode(ev)).endpoints == ev.endpoints


def test_eventbuild_reads_the_address_argument_and_rereads_paths_at_exit() -> None:
    """hv/eventbuild (the gdbstub producer's builder): read_entry records a connect's or
    sendto's address argument (NULL, a size below 2 or negative: nothing; Unreadable:
    F_ADDR_UNREADABLE), accept's kernel-filled one is never read; reread_paths fills an exit's
    paths from the PATH arguments (still unreadable: '' and F_PATH_UNREADABLE), but not after
    a successful execve."""
    from hv.eventbuild import read_entry, reread_paths
    from hv.linux import sockaddr_text
    from provisor import events as E
    from provisor.syscalls import BY_NAME

    class Src:
        def __init__(self, mem: dict[int, bytes]) -> None:
            self.mem, self.asked = mem, []

        def user_space(self) -> bool:
            return True

        def string(self, va: int):
            s = self.mem.get(va)
            return (None, False) if s is None else (s.decode(), False)

        def fd_file(self, fd: int):
            return None

        def sockaddr(self, va: int, size: int):
            self.asked.append((va, size))
            if va not in self.mem:
                raise Unreadable("gone")
            return sockaddr_text(self.mem[va][:min(size, 128)])

    sin = b"\x02\x00\x13\x8a\x7f\x00\x00\x01" + bytes(8)
    src = Src({0x1000: sin, 0x3000: b"/etc/x"})
    for name, args, want, flagged in (
            ("connect", (3, 0x1000, 16), (2, "127.0.0.1:5002"), False),
            ("sendto", (3, 0, 1, 0, 0x1000, 16), (2, "127.0.0.1:5002"), False),
            ("sendto", (3, 0, 1, 0, 0, 0), (0, None), False),  # connected: NULL
            ("bind", (3, 0x1000, 1), (0, None), False),
            ("bind", (3, 0x1000, 2**32 - 1), (0, None), False),  # -1 as a C int
            ("bind", (3, 0x2000, 16), (0, None), True),  # unreadable
            ("connect", (3, 0x1000, 15), (0, None), False),  # short of a sockaddr_in
            ("accept", (3, 0x1000, 0x1000), (0, None), False)):  # filled by the kernel
        ev = E.Event(BY_NAME[name].nr, args=args + (0,) * (6 - len(args)))
        read_entry(BY_NAME[name], ev, src)
        assert (ev.addr_family, ev.addr) == want, (name, args)
        assert bool(ev.flags & E.F_ADDR_UNREADABLE) == flagged, (name, args)
        assert E.decode(E.encode(ev)).addr == ev.addr
    assert (0x1000, 0x1000) not in src.asked  # accept's
    # paths at the exit
    ren = BY_NAME["renameat"]
    ex = E.Event(ren.nr, E.EXIT, ret=0, args=(-100, 0x3000, -100, 0x4000, 0, 0))
    reread_paths(ren, ex, src)
    assert ex.paths == ["/etc/x", ""] and ex.flags & E.F_PATH_UNREADABLE
    exe = BY_NAME["execve"]
    ex = E.Event(exe.nr, E.EXIT, ret=0, args=(0x3000, 0, 0, 0, 0, 0))
    reread_paths(exe, ex, src)
    assert ex.paths == []
    ex.ret = -2  # a failed execve: the old image is still there
    reread_paths(exe, ex, src)
    assert ex.paths == ["/etc/x"]
