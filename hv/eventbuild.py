"""What a producer records of a syscall beyond its registers, chosen by the argument kinds and
traits of the shared table (provisor/syscalls.py), never by the syscall's name.

One builder for the hypervisor side: the gdbstub interceptor runs it over guest memory (the
traced task, through hv/linux.py), the synthetic guest over its model. A ``Source`` is what a
producer can read; an unreadable string, list or file sets the event's flag and the event is
still recorded.
"""

from __future__ import annotations

from typing import Protocol

from hv.linux import SOCKET_PREFIX
from hv.memory import Unreadable
from provisor import events as E
from provisor.abi import AT_FDCWD, F_DUPFD, F_DUPFD_CLOEXEC, to_signed
from provisor.syscalls import Arg, Syscall, Trait

_M64 = (1 << 64) - 1
_C_INT_FDS = (Arg.FD, Arg.DIRFD, Arg.NEWFD)


class Source(Protocol):
    """The calling task's memory and files, as a producer sees them."""

    def user_space(self) -> bool:
        """Make the task's user memory readable (its page tables); False if it cannot be."""

    def string(self, va: int) -> tuple[str | None, bool]:
        """(guest text of the NUL-terminated string at ``va`` or None if unreadable, truncated)"""

    def strv(self, va: int) -> tuple[list[str] | None, bool, bool]:
        """(a NULL-terminated string array, truncated by a bound, something unreadable)"""

    def ints(self, va: int, count: int) -> list[int] | None: ...

    def fd_file(self, fd: int) -> E.FileId | None:
        """The file open as ``fd``; None if the fd is not open; Unreadable if it cannot tell."""

    def exe_file(self) -> E.FileId | None: ...

    def cwd(self) -> tuple[str | None, int]: ...

    def socket(self, fd: int) -> tuple[int, int, str, str, int, int] | None:
        """The endpoint of the socket open as ``fd`` (family, type, local, remote, sk, peer);
        None if not open; Unreadable if it cannot be read."""

    def sockaddr(self, va: int, size: int) -> tuple[int, str] | None:
        """(family, text) of the socket address argument at ``va`` of ``size`` bytes
        (hv/linux.py ``Linux.user_sockaddr``); None: nothing to record; Unreadable."""


def add_file(ev: E.Event, src: Source, fd: int, f: E.FileId) -> None:
    """Append the file open as ``fd`` and, for a socket, its endpoint (F_SOCK_UNREADABLE when
    it cannot be read)."""
    ev.files.append(f)
    if not f.path.startswith(SOCKET_PREFIX):
        return
    try:
        s = src.socket(fd)
    except Unreadable:
        s = None
    if s is None:
        ev.flags |= E.F_SOCK_UNREADABLE
    else:
        ev.endpoints.append(E.Endpoint(len(ev.files) - 1, *s))


def normalize_args(sc: Syscall, args: tuple[int, ...]) -> tuple[int, ...]:
    """fd and dirfd arguments are C ints: the kernel reads only the low 32 bits of the
    register (libc may pass AT_FDCWD zero-extended, 0xffffff9c). Store them sign-extended,
    so that ``Event.arg(i)`` gives -100, not 4294967196."""
    out = list(args)
    for i, kind in enumerate(sc.args[:len(out)]):
        if kind in _C_INT_FDS:
            out[i] = to_signed(out[i] & 0xFFFFFFFF, 32) & _M64
    return tuple(out)


def read_entry(sc: Syscall, ev: E.Event, src: Source, *, task_ok: bool = True,
               envp: bool = True) -> None:
    """Fill an entry (or an exit-only event) from what its arguments point to: PATH strings
    (``paths``, in argument order), ARGV/ENVP lists, the files of FD and DIRFD arguments
    (AT_FDCWD and the NEWFD target excepted), the socket address a caller gives (``addr``:
    connect, bind, sendto; F_ADDR_UNREADABLE when it cannot be read). Needs the task
    (``task_ok``) for its files."""
    if sc.addr_arg is not None:
        read_addr(sc, ev, src)
    reads = sc.entry_reads
    if not reads:
        return
    kinds = sc.args
    if (Arg.PATH in kinds or Arg.ARGV in kinds) and task_ok and not src.user_space():
        ev.flags |= E.F_PATH_UNREADABLE
    for i, kind in reads:
        if kind is Arg.PATH:
            s, trunc = src.string(ev.args[i])
            if s is None:
                ev.flags |= E.F_PATH_UNREADABLE
                s = ""
            if trunc:
                ev.flags |= E.F_TRUNCATED
            ev.paths.append(s)
        elif (kind is Arg.FD or kind is Arg.DIRFD) and task_ok:
            fd = ev.arg(i)
            if kind is Arg.DIRFD and fd == AT_FDCWD:
                continue
            try:
                f = src.fd_file(fd)
            except Unreadable:
                ev.flags |= E.F_FILE_UNREADABLE
                continue
            if f is not None:  # None: not an open fd (the call fails with EBADF)
                add_file(ev, src, fd, f)
        elif kind is Arg.ARGV or (kind is Arg.ENVP and envp):
            lst, trunc, bad = src.strv(ev.args[i])
            if bad:
                ev.flags |= E.F_ARGV_UNREADABLE
            if trunc:
                ev.flags |= E.F_TRUNCATED
            if kind is Arg.ARGV:
                ev.argv = lst
            else:
                ev.envp = lst


def read_addr(sc: Syscall, ev: E.Event, src: Source) -> None:
    """The socket address argument (``sc.addr_arg``: the pointer, then its size) into
    ``ev.addr`` and ``ev.addr_family``; a NULL pointer (sendto on a connected socket), a size
    below 2 or an unknown family record nothing, a failed read sets F_ADDR_UNREADABLE."""
    assert sc.addr_arg is not None
    va, size = ev.args[sc.addr_arg[0]], ev.args[sc.addr_arg[1]] & 0xFFFFFFFF
    if va == 0 or not 2 <= size < 1 << 31:  # the size is a C int
        return
    try:
        if not src.user_space():
            raise Unreadable("no user address space")
        got = src.sockaddr(va, size)
    except Unreadable:
        ev.flags |= E.F_ADDR_UNREADABLE
        return
    if got is not None:
        ev.addr_family, ev.addr = got


def reread_paths(sc: Syscall, ev: E.Event, src: Source) -> None:
    """An exit whose entry had F_PATH_UNREADABLE: its PATH arguments read again, into the
    exit's ``paths`` (argument order; '' and F_PATH_UNREADABLE for one still unreadable). By
    the return the kernel has read each string, so its page is mapped (a fork child's first
    call names a literal in a page it had not touched). Not after an execve that succeeded:
    the pointers were into the image it replaced."""
    if not sc.path_pairs or (sc.has(Trait.EXECS) and ev.ret == 0):
        return
    ok = src.user_space()
    for _, i in sc.path_pairs:
        s, trunc = src.string(ev.args[i]) if ok else (None, False)
        if s is None:
            ev.flags |= E.F_PATH_UNREADABLE
            s = ""
        if trunc:
            ev.flags |= E.F_TRUNCATED
        ev.paths.append(s)


def returns_fd(sc: Syscall, ev: E.Event) -> bool:
    """Whether a successful return of this call is a new fd (fcntl: only F_DUPFD*)."""
    if sc.has(Trait.RETURNS_FD):
        return True
    cmd = sc.at(Arg.FCNTL_CMD)
    return cmd is not None and ev.arg(cmd) in (F_DUPFD, F_DUPFD_CLOEXEC)


def read_exit(sc: Syscall, ev: E.Event, src: Source) -> None:
    """Fill a successful exit with what the call made: the file of a returned fd, the FDPAIR
    the kernel wrote (``out_fds``) and its files, the new cwd (CHANGES_CWD), the new image's
    binary as the kernel resolved it (EXECS)."""
    if ev.ret is None or ev.ret < 0:
        return
    fds: list[int] = []
    pair = sc.at(Arg.FDPAIR)
    if returns_fd(sc, ev):
        fds = [ev.ret]
    elif pair is not None:
        src.user_space()
        got = src.ints(ev.args[pair], 2)
        if got is None:
            ev.flags |= E.F_FILE_UNREADABLE
            return
        ev.out_fds = got
        fds = got
    elif sc.has(Trait.CHANGES_CWD):
        ev.cwd, ev.cwd_mnt = src.cwd()
        if ev.cwd is None:
            ev.flags |= E.F_CWD_UNREADABLE
    elif sc.has(Trait.EXECS):
        exe = src.exe_file()
        if exe is not None:
            ev.files.append(exe)
    for fd in fds:
        try:
            f = src.fd_file(fd)
        except Unreadable:
            f = None
        if f is None:  # it was just returned: it must be open and readable
            ev.flags |= E.F_FILE_UNREADABLE
        else:
            add_file(ev, src, fd, f)
