"""Build event streams that mirror real syscalls, for analyzer and store tests."""

from __future__ import annotations

from pmem.layout import Record, RecType
from provisor.abi import AT_FDCWD
from provisor.events import ENTRY, EXIT, Event, FileId, encode
from provisor.syscalls import nr_of

U64 = (1 << 64) - 1


class Script:
    """Appends entry/exit event pairs with consecutive sequence numbers."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.seq = 0
        self.ppid: dict[int, int] = {1: 0}
        self.cwd: dict[int, str] = {}
        self.comm: dict[int, str] = {}  # default p<tgid>
        self.cred: dict[int, tuple[int, ...]] = {}  # Event.cred per tgid (default: none read)

    def _rec(self, ev: Event) -> int:
        self.seq += 1
        ev.seq = self.seq
        ev.ts_ns = self.seq * 1000
        self.records.append(Record(self.seq, RecType.EVENT, 0, encode(ev)))
        return self.seq

    def entry(self, tgid: int, name: str, args=(), paths=(), pid: int | None = None,
              argv=None, files=(), endpoints=(), addr: str | None = None,
              addr_family: int = 0, flags: int = 0) -> int:
        a = tuple(x & U64 for x in args) + (0,) * (6 - len(args))
        ev = Event(nr_of(name), ENTRY, tgid=tgid, pid=pid or tgid,
                   ppid=self.ppid.get(tgid, 1), comm=self.comm.get(tgid, f"p{tgid}"),
                   cwd=self.cwd.get(tgid, "/w"),
                   args=a, paths=list(paths), argv=list(argv) if argv else None,
                   files=list(files), start_time=tgid * 10, cred=self.cred.get(tgid),
                   endpoints=list(endpoints), addr=addr, addr_family=addr_family, flags=flags)
        return self._rec(ev)

    def exit(self, entry_seq: int, tgid: int, name: str, ret: int, files=(), out_fds=(),
             pid: int | None = None, paths=(), flags: int = 0) -> int:
        ev = Event(nr_of(name), EXIT, entry_seq=entry_seq, tgid=tgid, pid=pid or tgid,
                   ppid=self.ppid.get(tgid, 1), comm=self.comm.get(tgid, f"p{tgid}"), ret=ret,
                   files=list(files),
                   out_fds=list(out_fds), start_time=tgid * 10, cred=self.cred.get(tgid),
                   paths=list(paths), flags=flags)
        return self._rec(ev)

    def call(self, tgid: int, name: str, args=(), paths=(), ret: int = 0, files=(),
             out_fds=(), pid: int | None = None, argv=None, entry_files=(), endpoints=(),
             addr: str | None = None, addr_family: int = 0) -> tuple[int, int]:
        """An entry and its exit; ``files`` are the exit's, ``entry_files`` the entry's (the
        files of its FD and DIRFD arguments, in argument order) with their ``endpoints``
        and the socket address argument (``addr``)."""
        e = self.entry(tgid, name, args, paths, pid, argv, entry_files, endpoints, addr,
                       addr_family)
        return e, self.exit(e, tgid, name, ret, files, out_fds, pid)

    # conveniences mirroring libc
    def open(self, tgid: int, path: str, flags: int = 0, fd: int = 3, ino: int | None = None):
        files = [FileId(8, ino, path)] if ino else []
        return self.call(tgid, "openat", (AT_FDCWD, 0x1000, flags, 0o644), [path], fd, files)

    def fork(self, parent: int, child: int) -> None:
        self.ppid[child] = parent
        self.cwd[child] = self.cwd.get(parent, "/w")
        self.call(parent, "fork", (), (), child)
