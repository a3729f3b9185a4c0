"""The Linux layer: tasks, CWDs, open files and user strings read from outside the guest.

An API in the spirit of XenAccess/LibVMI on top of ``hv.memory``: the caller gives the kernel
address space (the CR3 of a vCPU stopped in a syscall maps the user half too, PTI or not) and a
profile (member offsets and symbols). Guest memory is hostile: every walk is bounded (string
bytes, dentry depth, argv count and bytes), every pointer is checked before use, cycles are
detected, and anything that fails yields ``None`` plus a flag, never an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from hv.memory import Unreadable, Virtual, canonical
from provisor.events import FileId
from provisor.guesttext import escape

MAX_STR = 4096
MAX_DEPTH = 64  # dentries in one path
MAX_MOUNTS = 16  # mount crossings in one path
MAX_ARGV = 256
MAX_ARGV_BYTES = 32 * 1024
MAX_NAME = 255  # NAME_MAX: a longer qstr is a lie
MAX_FDS = 1 << 20
ARG_REGS = ("di", "si", "dx", "r10", "r8", "r9")
PT_REGS = (*ARG_REGS, "orig_ax", "ax", "cx", "r11", "ip", "cs", "flags")

CRED_MEMBERS = ("cred.uid", "cred.gid", "cred.suid", "cred.sgid", "cred.euid", "cred.egid",
                "cred.fsuid", "cred.fsgid")  # the order of Event.cred
SOCK_MEMBERS = (
    "inode.i_mode", "file.private_data", "socket.sk", "sock.__sk_common", "sock.sk_type",
    "sock_common.skc_family", "sock_common.skc_daddr", "sock_common.skc_rcv_saddr",
    "sock_common.skc_dport", "sock_common.skc_num",
)
SOCKET_PREFIX = "socket:["  # the kernel's name of a socket's file (sockfs dentries)
MAX_SUN_PATH = 108  # sizeof sockaddr_un.sun_path: the bound on a unix address
MAX_SOCKADDR = 128  # sizeof struct sockaddr_storage: the most of an address argument read
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
S_IFMT, S_IFSOCK, S_IFIFO = 0o170000, 0o140000, 0o010000

# every member the layer reads; a profile must provide them all
MEMBERS = (
    "task_struct.pid", "task_struct.tgid", "task_struct.comm", "task_struct.real_parent",
    "task_struct.cred", "task_struct.start_time", "task_struct.fs", "task_struct.files",
    "cred.uid", "fs_struct.pwd", "fs_struct.root", "path.mnt", "path.dentry",
    "dentry.d_name", "dentry.d_parent", "dentry.d_inode", "qstr.name", "qstr.len",
    "inode.i_ino", "inode.i_sb", "super_block.s_dev", "files_struct.fdt", "fdtable.max_fds",
    "fdtable.fd", "file.f_path", "file.f_inode", "mount.mnt", "mount.mnt_parent",
    "mount.mnt_mountpoint", "mount.mnt_id", "vfsmount.mnt_root",
    "pt_regs.di", "pt_regs.si", "pt_regs.dx", "pt_regs.r10", "pt_regs.r8", "pt_regs.r9",
    "pt_regs.orig_ax", "pt_regs.ax", "pt_regs.cx", "pt_regs.r11", "pt_regs.ip", "pt_regs.cs",
    "pt_regs.flags", "task_struct.mm", "mm_struct.pgd",
    *CRED_MEMBERS[1:], *SOCK_MEMBERS,
)
# optional: a kernel without CONFIG_IPV6 / CONFIG_UNIX lacks them; such sockets are then
# flagged F_SOCK_UNREADABLE (hv/profile.py PLUGIN_OPTIONAL holds the same names)
SOCK_OPTIONAL = (
    "sock_common.skc_v6_daddr", "sock_common.skc_v6_rcv_saddr", "unix_sock.addr",
    "unix_sock.peer", "unix_address.len", "unix_address.name", "sockaddr_un.sun_path",
)


class ProfileLike(Protocol):
    def symbol(self, name: str) -> int: ...
    def offset(self, member: str) -> int: ...


class DictProfile:
    """A profile from plain dicts: tests, and the fallback when no profile file exists."""

    def __init__(self, symbols: dict[str, int], offsets: dict[str, int]) -> None:
        self.symbols = symbols
        self.offsets = offsets

    def symbol(self, name: str) -> int:
        return self.symbols[name]

    def offset(self, member: str) -> int:
        return self.offsets[member]


class _Off:
    """Member offsets resolved once into attributes: task_struct.pid -> self.task_struct_pid."""

    def __init__(self, profile: ProfileLike) -> None:
        missing = []
        for m in MEMBERS:
            try:
                setattr(self, m.replace(".", "_"), int(profile.offset(m)))
            except (KeyError, LookupError, TypeError, ValueError):
                missing.append(m)
        if missing:
            raise KeyError(f"profile lacks {', '.join(missing)}")

    def __getattr__(self, name: str) -> int:  # only reached for unknown members
        raise AttributeError(name)


@dataclass(slots=True)
class Task:
    addr: int
    pid: int = 0
    tgid: int = 0
    ppid: int = 0
    uid: int = 0
    start_time: int = 0
    comm: str = ""
    fs: int = 0
    files: int = 0
    mm: int = 0
    ok: bool = False
    cred: tuple[int, ...] | None = None  # uid gid suid sgid euid egid fsuid fsgid


def kernel_ptr(v: int) -> int:
    """``v`` if it can be a kernel pointer, else Unreadable."""
    if v < 0xFFFF_8000_0000_0000 or not canonical(v):
        raise Unreadable(f"not a kernel pointer: {v:#x}")
    return v


def user_ptr(v: int) -> int:
    if v == 0 or v >= 0x0000_8000_0000_0000:
        raise Unreadable(f"not a user pointer: {v:#x}")
    return v


def ipv6_text(b: bytes) -> str:
    """RFC 5952 text of 16 address bytes: lowercase hex groups without leading zeros, the
    longest run of two or more zero groups (the first of equals) as '::'. No dotted form for
    IPv4-mapped addresses (hv/plugin/linux.c writes the same bytes; Python's ipaddress
    changed that between versions)."""
    g = struct.unpack(">8H", b)
    best, blen, i = -1, 1, 0
    while i < 8:
        if g[i] == 0:
            j = i
            while j < 8 and g[j] == 0:
                j += 1
            if j - i > blen:
                best, blen = i, j - i
            i = j
        else:
            i += 1
    if best < 0:
        return ":".join(f"{x:x}" for x in g)
    head = ":".join(f"{x:x}" for x in g[:best])
    tail = ":".join(f"{x:x}" for x in g[best + blen:])
    return f"{head}::{tail}"


def inet_text(family: int, addr: bytes, port: int) -> str:
    """'1.2.3.4:80' or '[::1]:80'; '' for the unset address and port (not bound, not
    connected)."""
    if port == 0 and not any(addr):
        return ""
    if family == AF_INET:
        return f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}:{port}"
    return f"[{ipv6_text(addr)}]:{port}"


def sockaddr_text(raw: bytes) -> tuple[int, str] | None:
    """(family, text) of the socket address bytes a caller passed (its size given: ``raw`` is
    what that size covers, at most MAX_SOCKADDR bytes), the text as an endpoint's (inet_text;
    AF_UNIX: the path up to its NUL, an abstract name whole, its leading NUL kept, guest
    text). None for what holds no address of a known family: fewer than 2 bytes, a family
    other than AF_INET, AF_INET6, AF_UNIX, or fewer bytes than its sockaddr_in (16) or
    sockaddr_in6 without scope id (24): the kernel refuses those (hv/plugin/linux.c
    pv_sockaddr_text is the same)."""
    if len(raw) < 2:
        return None
    family = raw[0] | raw[1] << 8
    if family == AF_INET and len(raw) >= 16:
        return family, inet_text(AF_INET, raw[4:8], raw[2] << 8 | raw[3])
    if family == AF_INET6 and len(raw) >= 24:
        return family, inet_text(AF_INET6, raw[8:24], raw[2] << 8 | raw[3])
    if family == AF_UNIX:
        path = raw[2:2 + MAX_SUN_PATH]
        if path[:1] != b"\0":
            path = path.split(b"\0", 1)[0]
        return family, escape(path)
    return None


def encode_dev(kdev: int) -> int:
    """Kernel dev_t (major << 20 | minor) to the st_dev user space sees (new_encode_dev)."""
    major, minor = kdev >> 20, kdev & 0xFFFFF
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


class Linux:
    def __init__(self, mem: Virtual, profile: ProfileLike, slide: int = 0) -> None:
        self.mem = mem
        self.o = _Off(profile)
        try:  # optional: older profiles lack it (the executable is then the execve path)
            self.mm_exe_file: int | None = int(profile.offset("mm_struct.exe_file"))
        except (KeyError, LookupError, TypeError, ValueError):
            self.mm_exe_file = None
        self.opt: dict[str, int | None] = {}
        for m in SOCK_OPTIONAL:
            try:
                self.opt[m] = int(profile.offset(m))
            except (KeyError, LookupError, TypeError, ValueError):
                self.opt[m] = None
        self.current_task_off = profile.symbol("current_task")  # a per-cpu offset: no slide
        self.slide = slide
        o = self.o
        fields = (o.task_struct_pid, o.task_struct_tgid, o.task_struct_comm,
                  o.task_struct_real_parent, o.task_struct_cred, o.task_struct_start_time,
                  o.task_struct_fs, o.task_struct_files, o.task_struct_mm)
        self._task_lo = min(fields)
        self._task_len = max(fields) + 16 - self._task_lo
        self._cred = tuple(getattr(o, m.replace(".", "_")) for m in CRED_MEMBERS)
        self._cred_lo = min(self._cred)
        self._cred_len = max(self._cred) + 4 - self._cred_lo
        self._paths: dict[tuple, tuple[bytes, str, int]] = {}
        dk = (o.dentry_d_parent, o.dentry_d_name + o.qstr_len, o.dentry_d_name + o.qstr_name)
        self._dkey_lo = min(dk)
        self._dkey_len = max(dk) + 8 - self._dkey_lo
        regs = [getattr(o, "pt_regs_" + r) for r in PT_REGS]
        self._regs_lo = min(regs)
        self._regs_len = max(regs) + 8 - self._regs_lo

    # -- primitives ----------------------------------------------------------------------
    def u64(self, va: int) -> int:
        return self.mem.u64(va)

    def u32(self, va: int) -> int:
        return struct.unpack("<I", self.mem.read(va, 4))[0]

    def kptr(self, va: int) -> int:
        return kernel_ptr(self.mem.u64(va))

    # -- tasks ---------------------------------------------------------------------------
    def current_task(self, gs_base: int) -> int:
        """The running task: the per-cpu ``current_task`` at gs_base (kernel mode)."""
        return self.kptr(kernel_ptr(gs_base) + self.current_task_off)

    def task(self, addr: int) -> Task:
        """Identity of a task; ``ok`` False when its memory cannot be read."""
        t = Task(addr)
        o = self.o
        try:
            blob = self.mem.read(kernel_ptr(addr) + self._task_lo, self._task_len)
            lo = self._task_lo

            def at(off: int, fmt: str) -> int:
                return struct.unpack_from(fmt, blob, off - lo)[0]

            t.pid = at(o.task_struct_pid, "<I")  # pid_t, read unsigned: the event's field
            t.tgid = at(o.task_struct_tgid, "<I")
            t.start_time = at(o.task_struct_start_time, "<Q")
            comm = blob[o.task_struct_comm - lo:o.task_struct_comm - lo + 16]
            t.comm = escape(comm.split(b"\0", 1)[0])
            t.fs = at(o.task_struct_fs, "<Q")
            t.files = at(o.task_struct_files, "<Q")
            t.mm = at(o.task_struct_mm, "<Q")
            parent = kernel_ptr(at(o.task_struct_real_parent, "<Q"))
            t.ppid = struct.unpack("<I", self.mem.read(parent + o.task_struct_tgid, 4))[0]
            cred = kernel_ptr(at(o.task_struct_cred, "<Q"))
            cb = self.mem.read(cred + self._cred_lo, self._cred_len)
            t.cred = tuple(struct.unpack_from("<I", cb, c - self._cred_lo)[0]
                           for c in self._cred)
            t.uid = t.cred[0]
            t.ok = True
        except (Unreadable, struct.error):
            t.ok = False
            t.cred = None
        return t

    def pt_regs(self, regs_ptr: int) -> dict[str, int]:
        """The user registers saved at kernel entry (one bulk read of ``struct pt_regs``)."""
        blob = self.mem.read(kernel_ptr(regs_ptr) + self._regs_lo, self._regs_len)
        lo = self._regs_lo
        return {r: struct.unpack_from("<Q", blob, getattr(self.o, "pt_regs_" + r) - lo)[0]
                for r in PT_REGS}

    def syscall_args(self, regs_ptr: int) -> tuple[tuple[int, ...], int]:
        """The six user arguments and orig_ax from a ``struct pt_regs``."""
        r = self.pt_regs(regs_ptr)
        return tuple(r[x] for x in ARG_REGS), r["orig_ax"]

    def user_cr3(self, task: Task) -> int:
        """Physical address of the task's top-level page table (mm->pgd), usable as a CR3
        that maps its user half (and, PTI or not, the kernel half)."""
        mm = kernel_ptr(task.mm)
        return self.mem.translate(self.kptr(mm + self.o.mm_struct_pgd))

    # -- paths ---------------------------------------------------------------------------
    def _qstr(self, dentry: int) -> bytes:
        o = self.o
        q = dentry + o.dentry_d_name
        n = self.u32(q + o.qstr_len)
        if n > MAX_NAME:
            raise Unreadable(f"dentry name of {n} bytes")
        if n == 0:
            return b""
        return self.mem.read(self.kptr(q + o.qstr_name), n)

    def invalidate_paths(self) -> None:
        """Forget cached paths: a rename may have moved any directory."""
        self._paths.clear()

    def _dentry_key(self, dentry: int) -> bytes:
        """What identifies a dentry's place: its parent pointer and name (hash, length and
        pointer), read in one piece."""
        return self.mem.read(dentry + self._dkey_lo, self._dkey_len)

    def path_of(self, mnt: int, dentry: int, root_mount: int | None = None
                ) -> tuple[str | None, int]:
        """Absolute path of (vfsmount, dentry), walking d_parent and crossing mounts.
        Returns (path or None, mnt_id of ``mnt``'s mount). Bounded and cycle-safe; a path
        on a mount outside the namespace tree (pipes, sockets) comes back as 'fs:[ino]'.

        Results (but pseudo names) are cached per (mount, dentry) and reused only while the
        dentry still has the same parent and name; the interceptor drops the cache after every
        rename (the one syscall that moves a dentry's ancestors), so a cached path is a current
        path."""
        key = (mnt, dentry, root_mount)
        hit = self._paths.get(key)
        if hit is not None:
            try:
                if self._dentry_key(dentry) == hit[0]:
                    return hit[1], hit[2]
            except Unreadable:
                pass
        path, mnt_id = self._path_of(mnt, dentry, root_mount)
        # only real paths: a pseudo name ('anon:[ino]') comes from the inode, and a freed
        # pipe or socket dentry reused at the same address keeps its parent and empty name
        if path is not None and path.startswith("/"):
            try:
                if len(self._paths) > 4096:
                    self._paths.clear()
                self._paths[key] = (self._dentry_key(dentry), path, mnt_id)
            except Unreadable:
                pass
        return path, mnt_id

    def _path_of(self, mnt: int, dentry: int, root_mount: int | None = None
                 ) -> tuple[str | None, int]:
        o = self.o
        try:
            mount = kernel_ptr(mnt) - o.mount_mnt
            dentry = kernel_ptr(dentry)
            mnt_id = self.u32(mount + o.mount_mnt_id)
        except Unreadable:
            return None, 0
        parts: list[bytes] = []
        seen: set[tuple[int, int]] = set()
        start_dentry = dentry
        depth = crossings = 0
        try:
            while True:
                if (dentry, mount) in seen:
                    return None, mnt_id
                seen.add((dentry, mount))
                mnt_root = self.kptr(mount + o.mount_mnt + o.vfsmount_mnt_root)
                parent = self.kptr(dentry + o.dentry_d_parent)
                if dentry == mnt_root or parent == dentry:
                    up = self.kptr(mount + o.mount_mnt_parent)
                    if up == mount:  # the top of a mount tree
                        if root_mount is not None and mount != root_mount - o.mount_mnt:
                            return self._pseudo(start_dentry), mnt_id
                        break
                    crossings += 1
                    if crossings > MAX_MOUNTS:
                        return None, mnt_id
                    dentry = self.kptr(mount + o.mount_mnt_mountpoint)
                    mount = up
                    continue
                depth += 1
                if depth > MAX_DEPTH:
                    return None, mnt_id
                parts.append(self._qstr(dentry))
                dentry = parent
        except Unreadable:
            return None, mnt_id
        path = b"/" + b"/".join(reversed(parts))
        return escape(path), mnt_id

    def _pseudo(self, dentry: int) -> str:
        """The name of a file outside the namespace's tree, as /proc/PID/fd shows it: a socket
        'socket:[ino]' (by its inode's mode, whatever its dentry says), else a dentry name
        with a ':' ('anon_inode:[eventfd]'), else a FIFO 'pipe:[ino]', else 'anon:[ino]'."""
        ino = mode = 0
        try:
            inode = self.kptr(dentry + self.o.dentry_d_inode)
            ino = self.u64(inode + self.o.inode_i_ino)
            mode = self.u16(inode + self.o.inode_i_mode)
        except Unreadable:
            pass
        if mode & S_IFMT == S_IFSOCK:
            return f"socket:[{ino}]"
        try:
            name = escape(self._qstr(dentry))
        except Unreadable:
            name = ""
        if ":" in name:
            return name
        return f"pipe:[{ino}]" if mode & S_IFMT == S_IFIFO else f"anon:[{ino}]"

    def _root_mount(self, fs: int) -> int | None:
        try:
            return self.kptr(kernel_ptr(fs) + self.o.fs_struct_root + self.o.path_mnt)
        except Unreadable:
            return None

    def cwd(self, task: Task) -> tuple[str | None, int]:
        """(CWD path or None, mnt_id of the mount holding it)."""
        o = self.o
        try:
            fs = kernel_ptr(task.fs)
            pwd = fs + o.fs_struct_pwd
            mnt = self.kptr(pwd + o.path_mnt)
            dentry = self.kptr(pwd + o.path_dentry)
        except Unreadable:
            return None, 0
        return self.path_of(mnt, dentry, self._root_mount(fs))

    # -- files ---------------------------------------------------------------------------
    def fd_file(self, task: Task, fd: int, strict: bool = False) -> FileId | None:
        """The file open as ``fd`` in ``task``: (st_dev, inode number, path); None if
        the fd is not open or (unless ``strict``: Unreadable) its structures cannot be read."""
        o = self.o
        if fd < 0 or fd >= MAX_FDS:
            return None
        try:
            files = kernel_ptr(task.files)
            fdt = self.kptr(files + o.files_struct_fdt)
            if fd >= self.u32(fdt + o.fdtable_max_fds):
                return None
            arr = self.kptr(fdt + o.fdtable_fd)
            f = self.u64(arr + 8 * fd)
            if f == 0:
                return None
            return self.file_id(kernel_ptr(f), task)
        except Unreadable:
            if strict:
                raise
            return None

    def fd_socket(self, task: Task, fd: int) -> tuple[int, int, str, str, int, int] | None:
        """The endpoint of the socket open as ``fd``: (family, type, local, remote, sk, peer)
        as events.Endpoint holds them (but its file index), from file->private_data (struct
        socket) -> sk; None if the fd is not open; Unreadable if anything cannot be read (or
        the kernel's profile lacks what its family needs)."""
        o = self.o
        if fd < 0 or fd >= MAX_FDS:
            return None
        files = kernel_ptr(task.files)
        fdt = self.kptr(files + o.files_struct_fdt)
        if fd >= self.u32(fdt + o.fdtable_max_fds):
            return None
        f = self.u64(self.kptr(fdt + o.fdtable_fd) + 8 * fd)
        return None if f == 0 else self.socket_of(kernel_ptr(f))

    def socket_of(self, f: int) -> tuple[int, int, str, str, int, int]:
        o = self.o
        if self.u16(self.kptr(f + o.file_f_inode) + o.inode_i_mode) & S_IFMT != S_IFSOCK:
            raise Unreadable("not a socket's inode")  # a name that only looks like one
        sock = self.kptr(f + o.file_private_data)
        sk = self.kptr(sock + o.socket_sk)
        common = sk + o.sock___sk_common
        family = self.u16(common + o.sock_common_skc_family)
        typ = self.u16(sk + o.sock_sk_type)
        local = remote = ""
        peer = 0
        if family == AF_INET:
            local = inet_text(AF_INET, self.mem.read(common + o.sock_common_skc_rcv_saddr, 4),
                              self.u16(common + o.sock_common_skc_num))
            remote = inet_text(AF_INET, self.mem.read(common + o.sock_common_skc_daddr, 4),
                               self._be16(common + o.sock_common_skc_dport))
        elif family == AF_INET6:
            la, ra = self.opt["sock_common.skc_v6_rcv_saddr"], self.opt["sock_common.skc_v6_daddr"]
            if la is None or ra is None:
                raise Unreadable("the profile has no IPv6 socket addresses")
            local = inet_text(AF_INET6, self.mem.read(common + la, 16),
                              self.u16(common + o.sock_common_skc_num))
            remote = inet_text(AF_INET6, self.mem.read(common + ra, 16),
                               self._be16(common + o.sock_common_skc_dport))
        elif family == AF_UNIX:
            po = self.opt["unix_sock.peer"]
            if po is None:
                raise Unreadable("the profile has no unix_sock")
            local = self._unix_addr(sk)
            peer = self.u64(sk + po)
            if peer:
                remote = self._unix_addr(kernel_ptr(peer))
        return family, typ, local, remote, sk, peer

    def _be16(self, va: int) -> int:
        b = self.mem.read(va, 2)
        return b[0] << 8 | b[1]

    def u16(self, va: int) -> int:
        return struct.unpack("<H", self.mem.read(va, 2))[0]

    def _unix_addr(self, sk: int) -> str:
        """The bound address of a unix socket (unix_sock.addr): the path, an abstract name
        (its leading NUL kept, as guest bytes), or '' when unbound."""
        ao, lo, no, po = (self.opt[k] for k in ("unix_sock.addr", "unix_address.len",
                                                "unix_address.name", "sockaddr_un.sun_path"))
        if ao is None or lo is None or no is None or po is None:
            raise Unreadable("the profile has no unix_address")
        addr = self.u64(sk + ao)
        if addr == 0:
            return ""
        n = self.u32(kernel_ptr(addr) + lo)
        if not 2 <= n <= 2 + MAX_SUN_PATH:
            raise Unreadable(f"unix address of {n} bytes")
        raw = self.mem.read(addr + no + po, n - 2) if n > 2 else b""
        if raw[:1] != b"\0":
            raw = raw.split(b"\0", 1)[0]
        return escape(raw)

    def exe_file(self, task: Task) -> FileId | None:
        """The executable of ``task`` (mm->exe_file), as the kernel resolved it: after an
        execve of /proc/self/exe or a symlink, the real binary. None if unknown."""
        if self.mm_exe_file is None:
            return None
        try:  # task.mm is re-read: a Task read before an execve holds the old image's mm
            mm = self.kptr(kernel_ptr(task.addr) + self.o.task_struct_mm)
            f = self.u64(mm + self.mm_exe_file)
            return self.file_id(kernel_ptr(f), task) if f else None
        except Unreadable:
            return None

    def file_id(self, f: int, task: Task) -> FileId:
        """(st_dev, inode number, path) of a ``struct file``; Unreadable if it cannot be read."""
        o = self.o
        inode = self.kptr(f + o.file_f_inode)
        ino = self.u64(inode + o.inode_i_ino)
        sb = self.kptr(inode + o.inode_i_sb)
        dev = encode_dev(self.u32(sb + o.super_block_s_dev))
        mnt = self.u64(f + o.file_f_path + o.path_mnt)
        dentry = self.u64(f + o.file_f_path + o.path_dentry)
        path, _ = self.path_of(mnt, dentry, self._root_mount(task.fs))
        return FileId(dev, ino, path if path is not None else "")

    # -- user memory ---------------------------------------------------------------------
    def user_bytes(self, va: int, limit: int = MAX_STR) -> tuple[bytes | None, bool]:
        """(the NUL-terminated bytes at ``va``, or None if unreadable; truncated)."""
        try:
            return self.mem.read_cstr(user_ptr(va), limit)
        except Unreadable:
            return None, False

    def user_string(self, va: int, limit: int = MAX_STR) -> tuple[str | None, bool]:
        """(guest text of the string, or None if unreadable; truncated)."""
        raw, trunc = self.user_bytes(va, limit)
        return (None if raw is None else escape(raw)), trunc

    def user_strv(self, va: int, max_count: int = MAX_ARGV, max_bytes: int = MAX_ARGV_BYTES
                  ) -> tuple[list[str] | None, bool, bool]:
        """A NULL-terminated array of strings (argv, envp), bounded in count and bytes.
        Returns (what could be read, or None if not even the array could; truncated by a
        bound; something was unreadable)."""
        if va == 0:
            return [], False, False
        out: list[str] = []
        budget = max_bytes
        try:
            p = user_ptr(va)
            while True:
                sp = self.u64(p)
                if sp == 0:
                    return out, False, False
                if len(out) >= max_count or budget <= 1:
                    return out, True, False
                raw, trunc = self.user_bytes(sp, min(MAX_STR, budget - 1))
                if raw is None:
                    return out, False, True
                out.append(escape(raw))
                budget -= len(raw) + 1  # the bound is on guest bytes, not on their escapes
                if trunc:
                    return out, True, False
                p += 8
        except Unreadable:
            return (out if out else None), False, True

    def user_sockaddr(self, va: int, size: int) -> tuple[int, str] | None:
        """The socket address argument at ``va`` of ``size`` bytes (a C int: the register's
        low 32 bits), as sockaddr_text gives it: at most MAX_SOCKADDR bytes read, never more
        than ``size``. None for a NULL pointer, a size below 2 (negative included) or no
        address of a known family; Unreadable when it cannot be read (not a user pointer, a
        failed read)."""
        n = size & 0xFFFFFFFF
        if va == 0 or n < 2 or n >= 1 << 31:
            return None
        return sockaddr_text(self.mem.read(user_ptr(va), min(n, MAX_SOCKADDR)))

    def user_ints(self, va: int, count: int) -> list[int] | None:
        try:
            raw = self.mem.read(user_ptr(va), 4 * count)
        except Unreadable:
            return None
        return list(struct.unpack(f"<{count}i", raw))
