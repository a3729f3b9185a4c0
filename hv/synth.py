"""A simulated guest: realistic, self-consistent syscall event streams, deterministic for a seed.

It is the workload for the daemon's tests and benchmarks until the real hypervisor side lands.
The guest keeps a model of a filesystem (devices, inodes, names) and of processes (tgid/pid,
fd tables, cwd), so every event is consistent with what came before: an fd is read only after
it was opened (or the read fails with EBADF), a child's first event follows its parent's
fork/clone exit, an exit names its entry's ring sequence number.

Scheduling: several tasks are live at once; at each step one of them, chosen at random, either
enters its next syscall or leaves the one it is in, so entries and exits of different threads
interleave as on several vCPUs. A syscall's effect on the model happens at its entry (the kernel
does it somewhere between entry and exit; only the calling task waits for the exit).

Determinism: all choices come from one ``random.Random(seed)`` and timestamps from a simulated
clock (``ts_ns`` host time from a fixed boot instant; ``start_time`` ns since guest boot, the
thread-group leader's for every thread, so (tgid, start_time) names a process), so one seed
gives byte-identical payloads. Sequence numbers are assigned when events are written (``events``
numbers them as if appended to an empty ring), which is how exits learn their entry's sequence
number even under a ring policy that drops records (an exit of a dropped entry names entry 0).

What the events carry (the daemon's contract with this producer):
- entries: the caller, ``args`` (all six registers; AT_FDCWD as 2**64-100), and for path
  syscalls ``cwd``/``cwd_mnt``/``paths`` (as the program wrote them, often relative);
  ``argv`` on execve; ``files`` = the identity of the fd's or path's file on fd/path calls;
- exits: ``ret``, ``entry_seq``, and no cwd/paths; ``files`` on the exits of open/openat/creat
  (the opened file), execve (the binary) and pipe/pipe2 (the pipe), ``out_fds`` on pipe exits;
  a successful execve's exit has the new ``comm``;
- a share (1 - ``file_fraction``) of would-be ``files`` is left out with F_FILE_UNREADABLE set;
- exit and exit_group have no exit event; every other entry has exactly one, except the last
  ``crash_tail`` entries of a stream. A vfork parent's exit comes before the child's events
  (the parent then waits for the child's execve or exit), unlike on Linux.
"""

from __future__ import annotations

import posixpath
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import click

from hv.eventbuild import read_entry
from hv.memory import Unreadable
from pmem.layout import RecType
from provisor import gcpause
from provisor.abi import (
    CLONE_CHILD_CLEARTID,
    CLONE_CHILD_SETTID,
    CLONE_FILES,
    CLONE_FS,
    CLONE_PARENT_SETTID,
    CLONE_SETTLS,
    CLONE_SIGHAND,
    CLONE_SYSVSEM,
    CLONE_THREAD,
    CLONE_VM,
    F_DUPFD,
    F_DUPFD_CLOEXEC,
    F_GETFD,
    MAP_PRIVATE,
    MAP_SHARED,
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_EXCL,
    O_RDONLY,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    SIGCHLD,
)
from provisor.errors import ProvisorError
from provisor.events import (
    ENTRY,
    EXIT,
    F_FILE_UNREADABLE,
    T_ARGV,
    T_COMM,
    T_CRED,
    T_CWD,
    T_ENVP,
    T_FILE,
    T_OUTFD,
    T_PATH,
    Event,
    FileId,
    encode,
)
from provisor.guesttext import unescape
from provisor.params import Finite
from provisor.syscalls import BY_NAME, BY_NR, Arg, Trait

U64 = 1 << 64
_Z6 = (0, 0, 0, 0, 0, 0)
AT_FDCWD_REG = U64 - 100  # AT_FDCWD as the register holds it

CLONE_PTHREAD = (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD
                 | CLONE_SYSVSEM | CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID)
CLONE_FORK = CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD  # what glibc's fork() passes
ENOENT, EBADF, EEXIST, EACCES, ENOTDIR = -2, -9, -17, -13, -20

NR = {name: sc.nr for name, sc in BY_NAME.items()}
NO_EXIT = frozenset(nr for nr, sc in BY_NR.items() if sc.has(Trait.NO_RETURN))

ROOT_DEV, TMP_DEV, PIPE_DEV = 0x801, 0x2A, 0xD  # /dev/sda1, a tmpfs, pipefs
ROOT_MNT, TMP_MNT = 26, 29  # mount ids: the "volume ID" of a cwd
HOST_BOOT_NS = 1_767_225_600_000_000_000  # the guest booted at 2026-01-01T00:00:00Z, host time
BOOT_NS = 4_000_000_000  # tracing starts 4 s after boot


class FastEncoder:
    """``provisor.events.encode`` with the strings' fields cached: a guest repeats the same
    comms, cwds, paths and file identities over and over. Byte-identical by construction and
    checked against ``encode`` at run time (``check_every``); a mismatch is an error, so a
    format change in provisor/events.py cannot slip through."""

    _FIXED = struct.Struct("<BBHHHQQIIIIQqQ6Q")
    _TLV = struct.Struct("<BH")
    _CAP = 200_000

    def __init__(self, check_every: int = 1024) -> None:
        self.comm: dict[str, bytes] = {}
        self.cwd: dict[str, bytes] = {}
        self.path: dict[str, bytes] = {}
        self.file: dict[FileId, bytes] = {}
        self.cred: dict[tuple[int, ...], bytes] = {}
        self.check_every = check_every
        self.left = 1  # the first event is always checked

    def _tlv(self, tag: int, data: bytes) -> bytes:
        data = data[:0xFFFF]
        return self._TLV.pack(tag, len(data)) + data

    _s = staticmethod(unescape)  # guest text -> bytes, as in encode

    def __call__(self, ev: Event) -> bytes:
        self.left -= 1
        if self.left <= 0:
            self.left = self.check_every
            out = self._encode(ev)
            if out != encode(ev):
                raise ProvisorError("hv.synth's fast encoder disagrees with "
                                    "provisor.events.encode: update hv/synth.py")
            return out
        return self._encode(ev)

    def _encode(self, ev: Event) -> bytes:
        ret = ev.ret
        try:
            head = self._FIXED.pack(1, ev.phase, ev.vcpu, ev.nr,
                                    ev.flags | (1 if ret is not None else 0), ev.entry_seq,
                                    ev.ts_ns, ev.tgid, ev.pid, ev.ppid, ev.uid, ev.start_time,
                                    ret or 0, ev.cwd_mnt, *ev.args)
        except struct.error:
            return encode(ev)
        parts = [head]
        if ev.comm:
            b = self.comm.get(ev.comm)
            if b is None:
                b = self.comm[ev.comm] = self._tlv(T_COMM, self._s(ev.comm))
            parts.append(b)
        if ev.cwd is not None:
            b = self.cwd.get(ev.cwd)
            if b is None:
                b = self.cwd[ev.cwd] = self._tlv(T_CWD, self._s(ev.cwd))
            parts.append(b)
        for x in ev.paths:
            b = self.path.get(x)
            if b is None:
                if len(self.path) > self._CAP:
                    self.path.clear()
                b = self.path[x] = self._tlv(T_PATH, self._s(x))
            parts.append(b)
        if ev.argv:
            parts.extend(self._tlv(T_ARGV, self._s(a)) for a in ev.argv)
        if ev.envp:
            parts.extend(self._tlv(T_ENVP, self._s(a)) for a in ev.envp)
        for f in ev.files:
            b = self.file.get(f)
            if b is None:
                if len(self.file) > self._CAP:
                    self.file.clear()
                b = self.file[f] = self._tlv(
                    T_FILE, struct.pack("<QQ", f.dev, f.ino) + self._s(f.path))
            parts.append(b)
        for fd in ev.out_fds:
            parts.append(self._tlv(T_OUTFD, struct.pack("<i", fd)))
        if ev.endpoints:  # the model has no sockets; whoever adds them gets encode's
            return encode(ev)
        if ev.cred is not None:
            b = self.cred.get(ev.cred)
            if b is None:
                b = self.cred[ev.cred] = self._tlv(T_CRED, struct.pack("<8I", *ev.cred))
            parts.append(b)
        return b"".join(parts)


@dataclass
class SynthStats:
    events: int = 0
    records: int = 0  # records the ring acknowledged (events minus dropped)
    dropped: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        rng = f"{self.first_seq}..{self.last_seq}" if self.first_seq is not None else "none"
        drop = f", {self.dropped} dropped" if self.dropped else ""
        return (f"synth: {self.events} events, {self.records} records{drop}, seq {rng}, "
                f"{self.elapsed:.2f}s, {self.rate:,.0f} events/s")


# -- the filesystem model -------------------------------------------------------------------

class Inode:
    __slots__ = ("dev", "ino", "kind", "path", "nlink", "target", "fid")

    def __init__(self, dev: int, ino: int, kind: str, path: str, target: str = "") -> None:
        self.dev, self.ino, self.kind, self.path = dev, ino, kind, path
        self.nlink = 1
        self.target = target  # a symlink's target
        self.fid = FileId(dev, ino, path)

    def rename(self, path: str) -> None:
        self.path = path
        self.fid = FileId(self.dev, self.ino, path)


class OpenFile:
    """An open file description: shared by dup'ed fds and across fork."""

    __slots__ = ("inode", "mode")

    def __init__(self, inode: Inode, mode: int) -> None:
        self.inode, self.mode = inode, mode  # mode: O_RDONLY / O_WRONLY / O_RDWR


class FS:
    def __init__(self) -> None:
        self.names: dict[str, Inode] = {}
        self._next_ino = {ROOT_DEV: 2, TMP_DEV: 1, PIPE_DEV: 4000}

    @staticmethod
    def dev_of(path: str) -> int:
        return TMP_DEV if path == "/tmp" or path.startswith("/tmp/") else ROOT_DEV

    def new_inode(self, dev: int, kind: str, path: str, target: str = "") -> Inode:
        ino = self._next_ino[dev]
        self._next_ino[dev] = ino + 1
        return Inode(dev, ino, kind, path, target)

    def lookup(self, path: str, follow: bool = True) -> Inode | None:
        node = self.names.get(path)
        if follow and node is not None and node.kind == "l":
            return self.names.get(posixpath.normpath(posixpath.join(
                posixpath.dirname(path), node.target)))
        return node

    def parent_ok(self, path: str) -> bool:
        d = self.names.get(posixpath.dirname(path))
        return d is not None and d.kind == "d"

    def create(self, path: str, kind: str = "f", target: str = "") -> Inode:
        node = self.new_inode(self.dev_of(path), kind, path, target)
        self.names[path] = node
        return node

    def unlink(self, path: str) -> Inode:
        node = self.names.pop(path)
        node.nlink -= 1
        if node.nlink == 0:
            node.rename(node.path + " (deleted)")
        elif node.path == path:  # d_path shows another remaining name
            node.rename(next(p for p, n in self.names.items() if n is node))
        return node

    def rename(self, src: str, dst: str) -> Inode:
        node = self.names.pop(src)
        old = self.names.get(dst)
        if old is not None and old is not node:
            old.nlink -= 1
            if old.nlink == 0:
                old.rename(old.path + " (deleted)")
        self.names[dst] = node
        if node.path == src:
            node.rename(dst)
        return node


# -- processes ------------------------------------------------------------------------------

class Proc:
    __slots__ = ("tgid", "ppid", "uid", "comm", "start_time", "cwd", "cwd_mnt", "fds",
                 "cloexec", "threads", "alive", "waiters", "vfork_parent")

    def __init__(self, tgid: int, ppid: int, uid: int, comm: str, start: int, cwd: str) -> None:
        self.tgid, self.ppid, self.uid, self.comm, self.start_time = tgid, ppid, uid, comm, start
        self.cwd = cwd
        self.cwd_mnt = TMP_MNT if FS.dev_of(cwd) == TMP_DEV else ROOT_MNT
        self.fds: dict[int, OpenFile] = {}
        self.cloexec: set[int] = set()
        self.threads: list[Task] = []
        self.alive = True
        self.waiters: list[Task] = []  # tasks waiting for this process to exit
        self.vfork_parent: Task | None = None

    def lowest_fd(self, start: int = 0) -> int:
        fd = start
        while fd in self.fds:
            fd += 1
        return fd


Script = Iterator  # a generator yielding calls, receiving return values
IDLE, BLOCK, JOIN = "idle", "block", "join"  # pseudo calls: no event


class Task:
    __slots__ = ("pid", "proc", "vcpu", "script", "pending", "last_ret", "waiting")

    def __init__(self, pid: int, proc: Proc, vcpu: int) -> None:
        self.pid, self.proc, self.vcpu = pid, proc, vcpu
        self.script: Script | None = None
        self.pending: tuple[Event, Event, Callable[[], None] | None] | None = None
        self.last_ret: object = None
        self.waiting = 0


Pair = tuple[Event, "Event | None", object, "Callable[[], None] | None"]

BINARIES = ["/bin/sh", "/bin/bash", "/bin/cat", "/bin/cp", "/bin/mv", "/usr/bin/sort",
            "/usr/bin/uniq", "/usr/bin/grep", "/usr/bin/wc", "/usr/bin/tee", "/usr/bin/head",
            "/usr/bin/gcc", "/usr/lib/gcc/x86_64-linux-gnu/12/cc1", "/usr/bin/as", "/usr/bin/ld",
            "/usr/bin/python3", "/usr/sbin/rsyslogd", "/usr/sbin/logrotate", "/usr/bin/make",
            "/usr/bin/sed", "/usr/bin/tar", "/usr/bin/gzip", "/usr/local/bin/worker"]
LIBS = ["/etc/ld.so.cache", "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libm.so.6", "/lib/x86_64-linux-gnu/libz.so.1"]
DIRS = ["/bin", "/etc", "/home", "/home/user", "/home/user/data", "/home/user/src",
        "/home/user/out", "/lib", "/lib/x86_64-linux-gnu", "/tmp", "/usr", "/usr/bin",
        "/usr/include", "/usr/lib", "/usr/lib/gcc", "/usr/lib/gcc/x86_64-linux-gnu",
        "/usr/lib/gcc/x86_64-linux-gnu/12", "/usr/local", "/usr/local/bin", "/usr/sbin",
        "/var", "/var/log", "/var/lib", "/var/lib/app"]
HEADERS = ["stdio.h", "stdlib.h", "string.h", "unistd.h", "errno.h"]
HOME = "/home/user"


_CREDS: dict[int, tuple[int, ...]] = {}


def _cred(uid: int) -> tuple[int, ...]:
    """Event.cred of a modelled process: one id for all eight (a user's own group; nothing in
    the model is setuid)."""
    c = _CREDS.get(uid)
    if c is None:
        c = _CREDS[uid] = (uid,) * 8
    return c


class _Model:
    """What the synthetic producer reads for an entry (an eventbuild.Source): the strings its
    call put behind the argument pointers, and the files of the caller's fd table, identified
    with probability ``file_fraction`` (else Unreadable: the event carries F_FILE_UNREADABLE)."""

    __slots__ = ("guest", "proc", "mem", "identify")

    def __init__(self, guest: Guest, proc: Proc, mem: dict[int, str | list[str]],
                 identify: bool) -> None:
        self.guest, self.proc, self.mem, self.identify = guest, proc, mem, identify

    def user_space(self) -> bool:
        return True

    def string(self, va: int) -> tuple[str | None, bool]:
        return self.mem[va], False

    def strv(self, va: int) -> tuple[list[str] | None, bool, bool]:
        return self.mem[va], False, False

    def ints(self, va: int, count: int) -> list[int] | None:
        return None  # exits are the model's own (Guest._exit)

    def fd_file(self, fd: int) -> FileId | None:
        f = self.proc.fds.get(fd) if self.identify else None
        if f is None:
            return None
        files, _ = self.guest._fid(f.inode)
        if not files:
            raise Unreadable("the synthetic producer missed this file")
        return files[0]

    def exe_file(self) -> FileId | None:
        return None

    def cwd(self) -> tuple[str | None, int]:
        return self.proc.cwd, self.proc.cwd_mnt

    def sockaddr(self, va: int, size: int) -> tuple[int, str] | None:
        return None  # the model makes no socket calls with an address


class Guest:
    """The simulated guest. ``run`` writes its events into a ring; ``events`` returns a list."""

    def __init__(self, seed: int = 0, *, file_fraction: float = 0.85, pid_max: int = 4096,
                 vcpus: int = 4, sessions: int = 3) -> None:
        """``file_fraction``: share of fd/path events that carry the file identity (the rest
        set F_FILE_UNREADABLE, so a consumer must track fds itself). ``pid_max`` is small by
        default so that long streams reuse PIDs (with a new start_time)."""
        if not 0.0 <= file_fraction <= 1.0:
            raise ProvisorError(f"file fraction must be within 0..1, not {file_fraction}")
        if pid_max < 301:
            raise ProvisorError(f"pid_max must be at least 301, not {pid_max}")
        self.rng = random.Random(seed)
        self.r = self.rng.random
        self.file_fraction = file_fraction
        self.pid_max = pid_max
        self.vcpus = max(1, vcpus)
        self.clock = HOST_BOOT_NS + BOOT_NS  # host time of the next event (ts_ns)
        self.fs = FS()
        self.pids: dict[int, Task] = {}
        self.next_pid = 300
        self.runnable: list[Task] = []
        self.open_entries = 0  # entries emitted whose exit is not yet emitted
        self.out: list[tuple[Event, Event | None]] = []
        self.addr = 0x5581_2000_0000
        self.crashed = False
        self._populate()
        init = Proc(1, 0, 0, "systemd", 1_000_000, "/")
        self.init = Task(1, init, 0)
        init.threads.append(self.init)
        self.pids[1] = self.init
        for fd in (0, 1, 2):
            init.fds[fd] = OpenFile(self.fs.names["/dev/console"], O_RDWR)
        self.init.script = self._init_script(sessions)
        self.runnable.append(self.init)

    def _populate(self) -> None:
        fs = self.fs
        fs.names["/"] = fs.new_inode(ROOT_DEV, "d", "/")
        for d in DIRS + ["/dev"]:
            fs.create(d, "d")
        fs.create("/dev/console", "c")
        fs.create("/dev/null", "c")
        for p in BINARIES + LIBS + ["/etc/passwd", "/etc/hosts", "/etc/logrotate.conf"]:
            fs.create(p)
        for h in HEADERS:
            fs.create("/usr/include/" + h)
        self.data = [f"{HOME}/data/{n}" for n in (
            "a.txt", "b.txt", "words", "names.csv", "log.1", "input.dat", "notes.md", "list")]
        for p in self.data:
            fs.create(p)
        self.srcs = [f"{HOME}/src/{n}.c" for n in ("main", "util", "parse", "io")]
        for p in self.srcs:
            fs.create(p)
        fs.create(f"{HOME}/src/util.h")
        fs.create("/var/log/syslog")

    # -- low-level emission ---------------------------------------------------------------
    def _alloc_pid(self) -> int:
        while True:
            pid = self.next_pid
            self.next_pid = pid + 1 if pid + 1 < self.pid_max else 300
            if pid not in self.pids:
                return pid

    def _ptr(self) -> int:
        self.addr = 0x5581_2000_0000 + (self.addr + 0x1a8) % 0x40_0000
        return self.addr

    def _call(self, t: Task, name: str, *vals: int | str | list[str],
              identify: bool = True) -> Event:
        """The entry event of task ``t``'s call, built as the gdbstub producer builds one
        (hv/eventbuild.py): ``vals`` fill the row's arguments in order (more are ignored, the
        other registers are 0), each DIRFD skipped (this guest names paths from its cwd:
        AT_FDCWD); a str or list is put in memory behind a fresh pointer and read back by the
        builder as guest memory is, and fd arguments are identified in the model
        (``identify``). cwd only for path syscalls; ts/vcpu come at emit."""
        sc = BY_NAME[name]
        mem: dict[int, str | list[str]] = {}
        if sc.path_pairs or Arg.ARGV in sc.args or Arg.DIRFD in sc.args:
            args: list[int] = []
            it = iter(vals)
            for kind in sc.args:
                if kind is Arg.DIRFD:
                    args.append(AT_FDCWD_REG)
                    continue
                v = next(it, None)
                if v is None:
                    break
                if not isinstance(v, int):
                    mem[ptr := self._ptr()] = v
                    v = ptr
                args.append(v)
            a6 = (tuple(args) + _Z6)[:6]
        else:  # registers only
            a6 = (vals[:len(sc.args)] + _Z6)[:6]
        p = t.proc
        if sc.path_pairs:
            ev = Event(sc.nr, ENTRY, 0, 0, 0, p.tgid, t.pid, p.ppid, p.uid, p.start_time, None,
                       p.cwd_mnt, a6, 0, p.comm, p.cwd, [], None, None, [], [], cred=_cred(p.uid))
        else:
            ev = Event(sc.nr, ENTRY, 0, 0, 0, p.tgid, t.pid, p.ppid, p.uid, p.start_time, None,
                       0, a6, 0, p.comm, None, [], None, None, [], [], cred=_cred(p.uid))
        read_entry(sc, ev, _Model(self, p, mem, identify), envp=False)
        return ev

    def _exit(self, en: Event, ret: int, files: list[FileId] | None = None, flags: int = 0,
              out_fds: list[int] | None = None) -> Event:
        """The exit of ``en``: lean (no cwd/paths; the entry has them), plus what the kernel
        returned: ret, out_fds, the identity of an opened or executed file."""
        return Event(en.nr, EXIT, 0, 0, 0, en.tgid, en.pid, en.ppid, en.uid, en.start_time,
                     ret, 0, en.args, flags, en.comm, None, [], None, None,
                     [] if files is None else files, [] if out_fds is None else out_fds,
                     cred=en.cred)  # no traced call of the model changes credentials

    def _fid(self, node: Inode | None) -> tuple[list[FileId], int]:
        """The file identity the producer could read, or the flag saying it could not."""
        if node is None:
            return [], 0
        if self.r() < self.file_fraction:
            return [node.fid], 0
        return [], F_FILE_UNREADABLE

    def _emit(self, ev: Event, entry: Event | None, vcpu: int) -> None:
        self.clock += 150 + int(self.r() * 4000)
        ev.ts_ns = self.clock
        ev.vcpu = vcpu
        self.out.append((ev, entry))

    def _enter(self, t: Task) -> None:
        """Pull the task's next call from its script, apply it and emit its entry. Pseudo
        calls (IDLE, BLOCK, JOIN) change the schedule and emit nothing."""
        while True:
            try:
                call = t.script.send(t.last_ret)
            except StopIteration:
                call = (self._exit_group, 0)
            t.last_ret = None
            handler = call[0]
            if handler is IDLE:
                return
            if handler is BLOCK:
                self._block(t)
                return
            if handler is not JOIN:
                break
            if len(t.proc.threads) > 1:
                t.waiting = -1
                self._block(t)
                return
        entry, exit_, ret, post = handler(t, *call[1:])
        self.clock = c = self.clock + 150 + int(self.r() * 4000)
        entry.ts_ns = c
        entry.vcpu = t.vcpu
        self.out.append((entry, None))
        if exit_ is None:  # exit/exit_group: the task is gone
            if post:
                post()
            return
        t.pending = (entry, exit_, post)
        t.last_ret = ret
        self.open_entries += 1

    def _leave(self, t: Task) -> None:
        entry, exit_, post = t.pending
        t.pending = None
        self.open_entries -= 1
        self._emit(exit_, entry, t.vcpu)
        if post:
            post()

    def _steps(self, k: int) -> None:
        """``k`` scheduler steps (``_leave`` inlined: this is the hot loop)."""
        run, r, enter, append = self.runnable, self.r, self._enter, self.out.append
        for _ in range(k):
            t = run[int(r() * len(run))]
            pending = t.pending
            if pending is None:
                enter(t)
                continue
            entry, exit_, post = pending
            t.pending = None
            self.open_entries -= 1
            self.clock = c = self.clock + 150 + int(r() * 4000)
            exit_.ts_ns = c
            exit_.vcpu = t.vcpu
            append((exit_, entry))
            if post:
                post()

    def _block(self, t: Task) -> None:
        self.runnable.remove(t)

    def _unblock(self, t: Task) -> None:
        if t.proc.alive:
            self.runnable.append(t)

    # -- the stream ------------------------------------------------------------------------
    def stream(self, n: int, crash_tail: int = 0) -> Iterator[list[tuple[Event, Event | None]]]:
        """Exactly ``n`` events, in chunks, as (event, its entry when it is an exit). Without
        ``crash_tail`` every entry that returns gets its exit; with it, the last
        ``crash_tail`` entries have none (a crash cut the stream)."""
        if n < 0 or crash_tail < 0:
            raise ProvisorError("event and crash-tail counts must not be negative")
        if crash_tail > n:
            raise ProvisorError(f"crash tail {crash_tail} exceeds the {n} events")
        if self.crashed:
            raise ProvisorError("this guest crashed (crash tail): make a new one")
        self.out = []
        base = 0  # events handed out so far

        def emitted() -> int:
            return base + len(self.out)

        spare = 16 if crash_tail else 0  # room for threads an exit_group may take along
        margin = 3 * crash_tail + 8 + spare  # crash_tail may need as many new threads
        while True:
            room = n - margin - emitted() - self.open_entries
            if room <= 0:
                break
            self._steps(min(room // 2 + 1, 2048))  # a step adds at most 2 to emitted + open
            if len(self.out) >= 4096:
                base += len(self.out)
                yield self.out
                self.out = []
        # drain: every open entry gets its exit
        for t in list(self.pids.values()):
            if t.pending is not None:
                self._leave(t)
        # then calls one at a time (entry, exit) until only a few events remain
        while n - emitted() - crash_tail >= 7 + spare + 2 * max(
                0, crash_tail - len(self.runnable)):
            t = self.runnable[int(self.r() * len(self.runnable))]
            self._enter(t)
            if t.pending is not None:
                self._leave(t)
        rest = n - emitted() - crash_tail
        if rest % 2:
            if rest >= 3:
                th = self._spawn_thread()
                self._exit_thread(th)
                rest -= 3
            else:
                self._single_exit()
                rest -= 1
        tail = self._tail_tasks(crash_tail)
        spare = [t for t in self.runnable if t.pending is None]
        while rest >= 2:
            if len(tail) < crash_tail:
                tail.append(self._spawn_thread())
            else:
                self._bad_close(spare[int(self.r() * len(spare))])
            rest -= 2
        if len(tail) < crash_tail:
            raise ProvisorError(f"crash tail {crash_tail} is too long for {n} events")
        for t in tail[:crash_tail]:
            self._crash_entry(t)
        if crash_tail:
            self.crashed = True
        if emitted() != n:
            raise ProvisorError(f"internal: synthetic stream of {emitted()} events, not {n}")
        yield self.out
        self.out = []

    def _tail_tasks(self, k: int) -> list[Task]:
        if not k:
            return []
        cand = [t for t in self.runnable if t.pending is None and t is not self.init]
        return (cand + [self.init])[:k]

    def _spawn_thread(self) -> Task:
        """clone(CLONE_THREAD) in a non-init process, emitted entry+exit at once."""
        procs = [t for t in self.runnable if t is not self.init and t.pending is None]
        parent = procs[0] if procs else self.init
        entry, exit_, _, post = self._clone_thread(parent, lambda th: self._sleeper())
        self._emit(entry, None, parent.vcpu)
        self._emit(exit_, entry, parent.vcpu)
        post()
        return parent.proc.threads[-1]

    def _exit_thread(self, t: Task) -> None:
        entry, _, _, post = self._thread_exit(t, 0)
        self._emit(entry, None, t.vcpu)
        post()

    def _single_exit(self) -> None:
        """One event that needs no exit: a process (or, failing that, init) calls exit_group."""
        cand = [t for t in self.runnable if t is not self.init and len(t.proc.threads) == 1]
        t = cand[-1] if cand else self.init
        entry, _, _, post = self._exit_group(t, 0)
        self._emit(entry, None, t.vcpu)
        post()

    def _bad_close(self, t: Task) -> None:
        fd = t.proc.lowest_fd(20)
        en = self._call(t, "close", fd)
        self._emit(en, None, t.vcpu)
        self._emit(self._exit(en, EBADF), en, t.vcpu)

    def _crash_entry(self, t: Task) -> None:
        """An entry whose exit never comes: a read on an open fd, else an open."""
        p = t.proc
        fd = next((fd for fd, f in p.fds.items() if f.mode != O_WRONLY), None)
        if fd is not None:
            en = self._call(t, "read", fd, self._ptr(), 4096)
        else:
            en = self._call(t, "openat", self.data[0], O_RDONLY, 0)
        self._emit(en, None, t.vcpu)
        self.open_entries += 1

    def _sleeper(self) -> Script:
        """A helper thread: a few harmless calls, then it exits (so joins finish)."""
        for _ in range(3):
            yield (self._nanosleep_like,)
        yield (self._thread_exit, 0)

    # -- runners ---------------------------------------------------------------------------
    def events(self, n: int, start_seq: int = 1, crash_tail: int = 0) -> list[Event]:
        """``n`` events numbered as if appended to a ring whose next sequence is
        ``start_seq``: ``seq`` and exits' ``entry_seq`` are filled in."""
        out: list[Event] = []
        seq = start_seq
        with gcpause.paused():
            for chunk in self.stream(n, crash_tail):
                for ev, entry in chunk:
                    ev.seq = seq
                    seq += 1
                    if entry is not None:
                        ev.entry_seq = entry.seq
                    out.append(ev)
        return out

    def iter_payloads(self, n: int, start_seq: int = 1, crash_tail: int = 0,
                      encoder: Callable[[Event], bytes] | None = None) -> Iterator[bytes]:
        """The encoded payloads of ``events``, streamed: constant memory for a million-event
        benchmark (a list of Events costs about 0.5 kB each)."""
        enc = encoder or FastEncoder()
        seq = start_seq
        chunks = self.stream(n, crash_tail)
        while True:
            with gcpause.paused():  # only while generating: the caller's code runs with its GC
                chunk = next(chunks, None)
                if chunk is None:
                    return
                out = []
                for ev, entry in chunk:
                    ev.seq = seq
                    seq += 1
                    if entry is not None:
                        ev.entry_seq = entry.seq
                    out.append(enc(ev))
            yield from out

    def run(self, producer, n: int, batch: int = 64, rate: float | None = None,
            crash_tail: int = 0) -> SynthStats:
        """Append ``n`` EVENT records through ``producer`` (a ``pmem.ring.Producer``).

        Batches go through ``append_many`` (one persist each); their sequence numbers are
        predicted from ``producer.next_seq`` and checked against what the ring returns. When a
        LOSS report could shift them (drop policy with unreported loss) or ``batch`` is 1,
        records go one by one through ``append``. ``rate`` caps events per second."""
        if batch < 1:
            raise ProvisorError(f"batch must be at least 1, not {batch}")
        if rate is not None and rate <= 0:
            raise ProvisorError(f"rate must be positive, not {rate}")
        if rate:  # smaller batches so that throttling is smooth (about 50 persists a second)
            batch = max(1, min(batch, int(rate // 50)))
        with gcpause.paused():
            return self._run(producer, n, batch, rate, crash_tail)

    def _run(self, producer, n: int, batch: int, rate: float | None,
             crash_tail: int) -> SynthStats:
        st = SynthStats()
        t0 = time.perf_counter()
        EV = RecType.EVENT
        enc = FastEncoder()
        for chunk in self.stream(n, crash_tail):
            for i in range(0, len(chunk), batch):
                part = chunk[i:i + batch]
                state = producer.state
                if batch == 1 or state.lost_total != state.lost_reported:
                    for ev, entry in part:
                        if entry is not None:
                            ev.entry_seq = entry.seq
                        self._account(st, ev, producer.append(EV, enc(ev)))
                else:
                    first = seq = producer.next_seq
                    items = []
                    for ev, entry in part:
                        ev.seq = seq
                        seq += 1
                        if entry is not None:
                            ev.entry_seq = entry.seq
                        items.append((EV, enc(ev)))
                    got = producer.append_many(items)
                    if got[-1] == seq - 1 and got[0] == first:
                        st.events += len(got)
                        st.records += len(got)
                        if st.first_seq is None:
                            st.first_seq = first
                        st.last_seq = seq - 1
                    else:
                        for (ev, _), s in zip(part, got, strict=True):
                            if s is not None and s != ev.seq:
                                raise ProvisorError(
                                    f"ring assigned sequence {s} where {ev.seq} was predicted")
                            self._account(st, ev, s)
                if rate:
                    ahead = st.events / rate - (time.perf_counter() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        st.elapsed = time.perf_counter() - t0
        return st

    @staticmethod
    def _account(st: SynthStats, ev: Event, seq: int | None) -> None:
        st.events += 1
        if seq is None:
            ev.seq = 0  # dropped: an exit will name entry 0, "unknown"
            st.dropped += 1
            return
        ev.seq = seq
        st.records += 1
        if st.first_seq is None:
            st.first_seq = seq
        st.last_seq = seq

    # -- syscall handlers: apply to the model, return (entry, exit, ret, post) ----------------
    def _abs(self, p: Proc, path: str) -> str:
        return posixpath.normpath(path if path.startswith("/") else posixpath.join(p.cwd, path))

    def _rel(self, p: Proc, path: str) -> str:
        """How a program names ``path``: relative to its cwd when under it (sometimes)."""
        cwd = p.cwd.rstrip("/") + "/"
        if path.startswith(cwd) and self.r() < 0.6:
            return path[len(cwd):]
        return path

    def _install(self, p: Proc, f: OpenFile, cloexec: bool, start: int = 0) -> int:
        fd = p.lowest_fd(start)
        p.fds[fd] = f
        if cloexec:
            p.cloexec.add(fd)
        else:
            p.cloexec.discard(fd)
        return fd

    def _open(self, t: Task, path: str, flags: int, at: bool = True, mode: int = 0o644) -> Pair:
        p = t.proc
        ap = self._abs(p, path)
        node = self.fs.lookup(ap)
        created = False
        if node is None and flags & O_CREAT and self.fs.parent_ok(ap):
            node = self.fs.create(ap)
            created = True
        en = self._call(t, "openat" if at else "open", path, flags,
                        mode if flags & O_CREAT else 0)
        if node is None:
            return en, self._exit(en, ENOENT), ENOENT, None
        if flags & O_CREAT and flags & O_EXCL and not created:
            return en, self._exit(en, EEXIST), EEXIST, None
        fd = self._install(p, OpenFile(node, flags & 3), bool(flags & O_CLOEXEC))
        files, fl = self._fid(node)
        return en, self._exit(en, fd, files, fl), fd, None

    def _creat(self, t: Task, path: str) -> Pair:
        return self._open(t, path, O_WRONLY | O_CREAT | O_TRUNC, at=False)

    def _rw(self, t: Task, name: str, fd: int, size: int, ret: int | None = None) -> Pair:
        """read/write/pread64/pwrite64/readv/writev on ``fd``; EBADF when it is not open.
        The arguments by kind: a buffer or iovec pointer, the size, an iovec count, an offset."""
        vals = [fd if k is Arg.FD else size if k is Arg.SIZE else
                1 + int(self.r() * 3) if k is Arg.INT else
                int(self.r() * 64) * 4096 if k is Arg.OFFSET else self._ptr()
                for k in BY_NAME[name].args]
        en = self._call(t, name, *vals)
        if fd not in t.proc.fds:
            return en, self._exit(en, EBADF), EBADF, None
        r = size if ret is None else ret
        return en, self._exit(en, r), r, None

    def _close(self, t: Task, fd: int) -> Pair:
        p = t.proc
        en = self._call(t, "close", fd)  # identifies the fd before it goes
        f = p.fds.pop(fd, None)
        p.cloexec.discard(fd)
        if f is None:
            return en, self._exit(en, EBADF), EBADF, None
        return en, self._exit(en, 0), 0, None

    def _dup(self, t: Task, kind: str, fd: int, newfd: int = 0, flags: int = 0) -> Pair:
        """dup, dup2, dup3 and fcntl(F_DUPFD/F_DUPFD_CLOEXEC)."""
        p = t.proc
        f = p.fds.get(fd)
        if kind == "fcntl":
            en = self._call(t, "fcntl", fd, flags, newfd)  # flags: F_DUPFD or F_DUPFD_CLOEXEC
        else:
            en = self._call(t, kind, fd, newfd, flags)  # the row takes what it has
        if f is None:
            return en, self._exit(en, EBADF), EBADF, None
        if kind == "dup":
            r = self._install(p, f, False)
        elif kind in ("dup2", "dup3"):
            if newfd != fd:
                p.fds[newfd] = f
                if kind == "dup3" and flags & O_CLOEXEC:
                    p.cloexec.add(newfd)
                else:
                    p.cloexec.discard(newfd)
            r = newfd
        else:
            r = self._install(p, f, flags == F_DUPFD_CLOEXEC, newfd)
        return en, self._exit(en, r), r, None

    def _pipe(self, t: Task, flags: int | None = None) -> Pair:
        p = t.proc
        node = self.fs.new_inode(PIPE_DEV, "p", "")
        node.rename(f"pipe:[{node.ino}]")
        cloexec = bool(flags and flags & O_CLOEXEC)
        r = self._install(p, OpenFile(node, O_RDONLY), cloexec)
        w = self._install(p, OpenFile(node, O_WRONLY), cloexec)
        if flags is None:
            en = self._call(t, "pipe", self._ptr())
        else:
            en = self._call(t, "pipe2", self._ptr(), flags)
        files, fl = self._fid(node)
        return en, self._exit(en, 0, files, fl, [r, w]), (r, w), None

    def _fork(self, t: Task, kind: str, script_fn: Callable[[Task], Script]) -> Pair:
        """fork, vfork or clone (glibc's fork): a new process, live after the parent's exit."""
        p = t.proc
        pid = self._alloc_pid()
        child = Proc(pid, p.tgid, p.uid, p.comm, self.clock - HOST_BOOT_NS, p.cwd)
        child.fds = dict(p.fds)
        child.cloexec = set(p.cloexec)
        ct = Task(pid, child, int(self.r() * self.vcpus))
        child.threads.append(ct)
        self.pids[pid] = ct
        ct.script = script_fn(ct)
        if kind == "clone":
            en = self._call(t, "clone", CLONE_FORK, 0, 0, self._ptr(), 0)
        else:
            en = self._call(t, kind)

        def post() -> None:
            self.runnable.append(ct)
            if kind == "vfork":  # the parent stays suspended until the child execs or exits
                child.vfork_parent = t
                self._block(t)

        return en, self._exit(en, pid), child, post

    def _clone_thread(self, t: Task, script_fn: Callable[[Task], Script]) -> Pair:
        p = t.proc
        pid = self._alloc_pid()
        th = Task(pid, p, int(self.r() * self.vcpus))
        th.script = script_fn(th)
        p.threads.append(th)
        self.pids[pid] = th
        en = self._call(t, "clone", CLONE_PTHREAD, 0x7f3a_0000_0000 + pid * 0x80_0000,
                        self._ptr(), self._ptr(), 0x7f3a_1000_0000 + pid)
        return en, self._exit(en, pid), th, lambda: self.runnable.append(th)

    def _release_vfork(self, p: Proc) -> None:
        if p.vfork_parent is not None:
            self._unblock(p.vfork_parent)
            p.vfork_parent = None

    def _execve(self, t: Task, path: str, argv: list[str]) -> Pair:
        p = t.proc
        ap = self._abs(p, path)
        node = self.fs.lookup(ap)
        en = self._call(t, "execve", path, argv, [])  # the environment is not recorded
        if node is None or node.kind != "f":
            return en, self._exit(en, ENOENT), ENOENT, None
        for fd in sorted(p.cloexec):
            p.fds.pop(fd, None)
        p.cloexec.clear()
        p.comm = posixpath.basename(ap)[:15]
        files, fl = self._fid(node)
        ex = self._exit(en, 0, files, fl)
        ex.comm = p.comm
        return en, ex, 0, lambda: self._release_vfork(p)

    def _die(self, p: Proc) -> None:
        p.alive = False
        p.fds.clear()
        for th in p.threads:
            if th in self.runnable:
                self.runnable.remove(th)
            if self.pids.get(th.pid) is th:
                del self.pids[th.pid]
        self._release_vfork(p)
        for w in p.waiters:
            if w.waiting > 0:  # 0: a wait-for-any already satisfied
                w.waiting -= 1
                if w.waiting == 0:
                    self._unblock(w)
        p.waiters.clear()

    def _exit_group(self, t: Task, code: int) -> Pair:
        en = self._call(t, "exit_group", code)
        return en, None, None, lambda: self._die(t.proc)

    def _thread_exit(self, t: Task, code: int) -> Pair:
        en = self._call(t, "exit", code)

        def post() -> None:
            p = t.proc
            p.threads.remove(t)
            if t in self.runnable:
                self.runnable.remove(t)
            del self.pids[t.pid]
            if not p.threads:
                self._die(p)
            elif len(p.threads) == 1 and p.threads[0].waiting == -1:
                p.threads[0].waiting = 0
                self._unblock(p.threads[0])

        return en, None, None, post

    def _nanosleep_like(self, t: Task) -> Pair:
        """A harmless call for idle threads: fcntl(F_GETFD) on fd 0 or 1."""
        fd = 1 if 1 in t.proc.fds else 0
        return self._fcntl_getfd(t, fd)

    def _fcntl_getfd(self, t: Task, fd: int) -> Pair:
        p = t.proc
        f = p.fds.get(fd)
        en = self._call(t, "fcntl", fd, F_GETFD, 0, identify=False)  # idle: no identity
        if f is None:
            return en, self._exit(en, EBADF), EBADF, None
        r = 1 if fd in p.cloexec else 0
        return en, self._exit(en, r), r, None

    def _path_call(self, t: Task, name: str, a: str, b: str | None = None,
                   extra: tuple[int, ...] = ()) -> Pair:
        """unlink, rename, renameat, link, symlink, mkdir, chdir, truncate."""
        p = t.proc
        fs = self.fs
        paths = (a,) if b is None else (a, b)
        aps = [self._abs(p, x) for x in paths]
        src = fs.lookup(aps[0], follow=name not in ("unlink", "rename", "renameat", "link",
                                                    "symlink"))
        en = self._call(t, name, *paths, *extra)
        # the model also knows the file a path names (the gdbstub producer does not read it)
        en.files, fl = self._fid(src) if name not in ("symlink", "mkdir") else ([], 0)
        en.flags |= fl
        ret = 0
        post = None
        if name == "symlink":  # symlink(target, linkpath)
            if aps[1] in fs.names:
                ret = EEXIST
            elif not fs.parent_ok(aps[1]):
                ret = ENOENT
            else:
                fs.create(aps[1], "l", paths[0])
        elif name == "mkdir":
            if aps[0] in fs.names:
                ret = EEXIST
            elif not fs.parent_ok(aps[0]):
                ret = ENOENT
            else:
                fs.create(aps[0], "d")
        elif src is None:
            ret = ENOENT
        elif name == "chdir":
            if src.kind != "d":
                ret = ENOTDIR
            else:
                p.cwd = aps[0]
                p.cwd_mnt = TMP_MNT if FS.dev_of(aps[0]) == TMP_DEV else ROOT_MNT
        elif name == "unlink":
            fs.unlink(aps[0])
        elif name in ("rename", "renameat"):
            if not fs.parent_ok(aps[1]):
                ret = ENOENT
            else:
                fs.rename(aps[0], aps[1])
        elif name == "link":
            if aps[1] in fs.names:
                ret = EEXIST
            else:
                fs.names[aps[1]] = src
                src.nlink += 1
        elif name == "truncate":
            pass
        return en, self._exit(en, ret), ret, post

    def _ftruncate(self, t: Task, fd: int, size: int) -> Pair:
        en = self._call(t, "ftruncate", fd, size)
        if fd not in t.proc.fds:
            return en, self._exit(en, EBADF), EBADF, None
        return en, self._exit(en, 0), 0, None

    def _mmap(self, t: Task, fd: int, size: int, prot: int, flags: int) -> Pair:
        en = self._call(t, "mmap", 0, size, prot, flags, fd, 0)
        if fd not in t.proc.fds:
            return en, self._exit(en, EBADF), EBADF, None
        addr = 0x7f00_0000_0000 + (self._ptr() & 0xFFFF_F000)
        return en, self._exit(en, addr), addr, None

    # -- script building blocks (generators used with ``yield from``) -----------------------
    def _wait(self, t: Task, procs: list[Proc]) -> Script:
        """Block until the given children are gone (wait4 is not traced: no event)."""
        alive = [c for c in procs if c.alive]
        if alive:
            t.waiting = len(alive)
            for c in alive:
                c.waiters.append(t)
            yield (BLOCK,)

    def _ld(self) -> Script:
        """What the dynamic loader does after every execve."""
        libs = [LIBS[0], LIBS[1]] + ([LIBS[2]] if self.r() < 0.3 else [])
        for lib in libs:
            fd = yield (self._open, lib, O_RDONLY | O_CLOEXEC)
            if lib != LIBS[0]:
                yield (self._rw, "read", fd, 832)
                yield (self._mmap, fd, 0x1e000, PROT_READ | PROT_EXEC, MAP_PRIVATE)
            else:
                yield (self._mmap, fd, 0x6000, PROT_READ, MAP_PRIVATE)
            yield (self._close, fd)

    def _exec(self, binary: str, argv: list[str]) -> Script:
        r = yield (self._execve, binary, argv)
        if r == 0:
            yield from self._ld()
        return r

    def _copy_loop(self, src: int, dst: int, lo: int = 1, hi: int = 6) -> Script:
        n = lo + int(self.r() * (hi - lo + 1))
        for _ in range(n):
            k = yield (self._rw, "read", src, 65536, 4096 + int(self.r() * 60000))
            if k <= 0:
                return
            yield (self._rw, "write", dst, k)
        yield (self._rw, "read", src, 65536, 0)

    def _pick(self, seq: list[str]) -> str:
        return seq[int(self.r() * len(seq))]

    def _out_name(self) -> str:
        return f"{HOME}/out/o{int(self.r() * 24)}.txt"

    # -- scripts ---------------------------------------------------------------------------
    def _init_script(self, sessions: int) -> Script:
        kids = []
        c = yield (self._fork, "fork", self._daemon_logger)
        kids.append(c)
        for _ in range(max(1, sessions)):
            c = yield (self._fork, "fork", self._session)
            kids.append(c)
        t = self.init
        while True:  # init sleeps in wait4 (untraced) and starts a new session when one ends
            kids = [k for k in kids if k.alive]
            if len(kids) < max(1, sessions) + 1:
                kids.append((yield (self._fork, "clone", self._session)))
                continue
            for k in kids:
                if t not in k.waiters:
                    k.waiters.append(t)
            t.waiting = 1
            yield (BLOCK,)

    def _session(self, t: Task) -> Script:
        """A login shell running one scenario after another."""
        yield from self._exec("/bin/bash", ["-bash"])
        yield (self._path_call, "chdir", HOME)
        t.proc.uid = 1000  # login's setuid is not traced
        fd = yield (self._open, "/etc/passwd", O_RDONLY | O_CLOEXEC)
        yield (self._close, fd)
        scenarios = [self._sc_cat_redirect, self._sc_sort_pipe, self._sc_cat_pipe,
                     self._sc_compile, self._sc_fileops, self._sc_threads, self._sc_mmap,
                     self._sc_dups, self._sc_save, self._sc_logrotate, self._sc_failures,
                     self._sc_tee]
        weights = [3, 3, 3, 1, 2, 1, 2, 1, 2, 1, 1, 1]
        total = sum(weights)
        done = 0
        while done < 40 + int(self.r() * 40):
            x = self.r() * total
            i = 0
            while x >= weights[i]:
                x -= weights[i]
                i += 1
            yield from scenarios[i](t)
            done += 1
        # the session ends; init starts another one
        yield (self._exit_group, 0)

    def _sc_cat_redirect(self, t: Task) -> Script:
        """cat a > b"""
        a, b = self._pick(self.data), self._out_name()
        fs = self

        def child(c: Task) -> Script:
            fd = yield (fs._open, fs._rel(c.proc, b), O_WRONLY | O_CREAT | O_TRUNC)
            yield (fs._dup, "dup2", fd, 1)
            yield (fs._close, fd)
            yield from fs._exec("/bin/cat", ["cat", a])
            fd = yield (fs._open, a, O_RDONLY)
            yield from fs._copy_loop(fd, 1)
            yield (fs._close, fd)
            yield (fs._close, 1)
            yield (fs._exit_group, 0)

        kind = "clone" if self.r() < 0.7 else "fork"
        p = yield (self._fork, kind, child)
        yield from self._wait(t, [p])

    def _filter(self, binary: str, argv: list[str], stdin: str | None, stdout: str | None,
                pipe_in: tuple[int, int] | None, pipe_out: tuple[int, int] | None
                ) -> Callable[[Task], Script]:
        fs = self

        def child(c: Task) -> Script:
            if stdin is not None:
                fd = yield (fs._open, fs._rel(c.proc, stdin), O_RDONLY)
                yield (fs._dup, "dup2", fd, 0)
                yield (fs._close, fd)
            if stdout is not None:
                fd = yield (fs._open, fs._rel(c.proc, stdout), O_WRONLY | O_CREAT | O_TRUNC)
                yield (fs._dup, "dup2", fd, 1)
                yield (fs._close, fd)
            for pp, target in ((pipe_in, 0), (pipe_out, 1)):
                if pp is not None:
                    yield (fs._dup, "dup2", pp[target], target)
            for pp in (pipe_in, pipe_out):
                if pp is not None:
                    yield (fs._close, pp[0])
                    yield (fs._close, pp[1])
            yield from fs._exec(binary, argv)
            yield from fs._copy_loop(0, 1, 1, 8)
            if fs.r() < 0.5:
                yield (fs._rw, "writev", 1, 128)
            yield (fs._close, 1)
            yield (fs._exit_group, 0)

        return child

    def _pipeline(self, t: Task, stages: list[tuple[str, list[str]]], stdin: str | None,
                  stdout: str | None) -> Script:
        prev: tuple[int, int] | None = None
        kids = []
        for i, (binary, argv) in enumerate(stages):
            last = i == len(stages) - 1
            nxt = None
            if not last:
                nxt = yield ((self._pipe,) if self.r() < 0.7 else (self._pipe, O_CLOEXEC))
            body = self._filter(binary, argv, stdin if i == 0 else None,
                                stdout if last else None, prev, nxt)
            c = yield (self._fork, "clone" if self.r() < 0.8 else "vfork", body)
            kids.append(c)
            if prev is not None:
                yield (self._close, prev[0])
                yield (self._close, prev[1])
            prev = nxt
        yield from self._wait(t, kids)

    def _sc_sort_pipe(self, t: Task) -> Script:
        """sort < a | uniq > c"""
        a, c = self._pick(self.data), self._out_name()
        yield from self._pipeline(t, [("/usr/bin/sort", ["sort"]), ("/usr/bin/uniq", ["uniq"])],
                                  a, c)

    def _sc_cat_pipe(self, t: Task) -> Script:
        """cat a | sort > c, sometimes a three-stage pipeline."""
        a, c = self._pick(self.data), self._out_name()
        stages = [("/bin/cat", ["cat", a]), ("/usr/bin/sort", ["sort", "-n"])]
        if self.r() < 0.4:
            stages.insert(1, ("/usr/bin/grep", ["grep", "-v", "x"]))
        fs = self

        def first(c_: Task, binary: str, argv: list[str], pout: tuple[int, int]) -> Script:
            yield (fs._dup, "dup2", pout[1], 1)
            yield (fs._close, pout[0])
            yield (fs._close, pout[1])
            yield from fs._exec(binary, argv)
            fd = yield (fs._open, a, O_RDONLY)
            yield from fs._copy_loop(fd, 1)
            yield (fs._close, fd)
            yield (fs._exit_group, 0)

        p = yield (self._pipe,)
        c1 = yield (self._fork, "clone", lambda ct: first(ct, *stages[0], p))
        prev = p
        kids = [c1]
        for i, (binary, argv) in enumerate(stages[1:]):
            last = i == len(stages) - 2
            nxt = None if last else (yield (self._pipe,))
            body = self._filter(binary, argv, None, c if last else None, prev, nxt)
            kids.append((yield (self._fork, "clone", body)))
            yield (self._close, prev[0])
            yield (self._close, prev[1])
            prev = nxt
        yield from self._wait(t, kids)

    def _sc_tee(self, t: Task) -> Script:
        """sort a | tee c | wc -l > d"""
        a = self._pick(self.data)
        yield from self._pipeline(t, [("/usr/bin/sort", ["sort", a]),
                                      ("/usr/bin/tee", ["tee", self._out_name()]),
                                      ("/usr/bin/wc", ["wc", "-l"])], a, self._out_name())

    def _sc_compile(self, t: Task) -> Script:
        """gcc -o prog main.c util.c: read many, write one, through temporary files."""
        fs = self
        srcs = [s for s in self.srcs[:1 + int(self.r() * len(self.srcs))]]
        prog = f"{HOME}/out/prog{int(self.r() * 4)}"

        def cc1(c: Task, src: str, asm: str) -> Script:
            yield from fs._exec("/usr/lib/gcc/x86_64-linux-gnu/12/cc1", ["cc1", src, "-o", asm])
            fd = yield (fs._open, src, O_RDONLY)
            yield (fs._rw, "read", fd, 65536, 1000 + int(fs.r() * 20000))
            yield (fs._rw, "read", fd, 65536, 0)
            yield (fs._close, fd)
            for h in HEADERS[:2 + int(fs.r() * 3)]:
                for inc in (f"{HOME}/src/", "/usr/local/include/", "/usr/include/"):
                    fd = yield (fs._open, inc + h, O_RDONLY | O_CLOEXEC)
                    if fd >= 0:
                        yield (fs._rw, "read", fd, 65536, 2000)
                        yield (fs._close, fd)
                        break
            fd = yield (fs._open, f"{HOME}/src/util.h", O_RDONLY)
            yield (fs._rw, "read", fd, 65536, 800)
            yield (fs._close, fd)
            fd = yield (fs._open, asm, O_WRONLY | O_CREAT | O_TRUNC)
            for _ in range(1 + int(fs.r() * 4)):
                yield (fs._rw, "write", fd, 4096)
            yield (fs._close, fd)
            yield (fs._exit_group, 0)

        def as_(c: Task, asm: str, obj: str) -> Script:
            yield from fs._exec("/usr/bin/as", ["as", asm, "-o", obj])
            fd = yield (fs._open, asm, O_RDONLY)
            yield (fs._rw, "read", fd, 65536, 9000)
            out = yield (fs._open, obj, O_RDWR | O_CREAT | O_TRUNC)
            yield (fs._rw, "pwrite64", out, 2048)
            yield (fs._rw, "pwrite64", out, 512)
            yield (fs._close, out)
            yield (fs._close, fd)
            yield (fs._exit_group, 0)

        def ld(c: Task, objs: list[str]) -> Script:
            yield from fs._exec("/usr/bin/ld", ["ld", "-o", prog, *objs])
            for o in objs:
                fd = yield (fs._open, o, O_RDONLY)
                yield (fs._mmap, fd, 8192, PROT_READ, MAP_PRIVATE)
                yield (fs._close, fd)
            fd = yield (fs._open, prog, O_RDWR | O_CREAT | O_TRUNC, True, 0o755)
            yield (fs._ftruncate, fd, 16384)
            yield (fs._mmap, fd, 16384, PROT_READ | PROT_WRITE, MAP_SHARED)
            yield (fs._close, fd)
            yield (fs._exit_group, 0)

        def gcc(c: Task) -> Script:
            yield from fs._exec("/usr/bin/gcc", ["gcc", "-O2", "-o", prog, *srcs])
            objs = []
            for s in srcs:
                base = posixpath.basename(s)[:-2]
                asm = f"/tmp/cc{base}{c.pid}.s"
                obj = f"/tmp/cc{base}{c.pid}.o"
                k = yield (fs._fork, "vfork", lambda ct, s=s, asm=asm: cc1(ct, s, asm))
                yield from fs._wait(c, [k])
                k = yield (fs._fork, "vfork", lambda ct, asm=asm, obj=obj: as_(ct, asm, obj))
                yield from fs._wait(c, [k])
                yield (fs._path_call, "unlink", asm)
                objs.append(obj)
            k = yield (fs._fork, "vfork", lambda ct: ld(ct, objs))
            yield from fs._wait(c, [k])
            for o in objs:
                yield (fs._path_call, "unlink", o)
            yield (fs._exit_group, 0)

        p = yield (self._fork, "clone", gcc)
        yield from self._wait(t, [p])

    def _sc_fileops(self, t: Task) -> Script:
        """mkdir, chdir, create, symlink, link, rename chains, unlink, truncate."""
        fs = self
        n = int(self.r() * 1000)

        def body(c: Task) -> Script:
            yield from fs._exec("/bin/sh", ["sh", "-c", f"fileops {n}"])
            d = f"{HOME}/out/d{n % 8}"
            r = yield (fs._path_call, "mkdir", d, None, (0o755,))
            yield (fs._path_call, "chdir", d)
            fd = yield (fs._open, "f1", O_WRONLY | O_CREAT | O_TRUNC, fs.r() < 0.5)
            yield (fs._rw, "write", fd, 100 + int(fs.r() * 4000))
            yield (fs._close, fd)
            yield (fs._path_call, "rename", "f1", "f2")
            yield (fs._path_call, "renameat", "f2", "f3")
            yield (fs._path_call, "link", "f3", "f4")
            yield (fs._path_call, "symlink", "f4", "s1")
            fd = yield (fs._open, "s1", O_RDONLY)
            yield (fs._rw, "read", fd, 4096, 100)
            yield (fs._close, fd)
            yield (fs._path_call, "truncate", "f3", None, (0,))
            yield (fs._path_call, "unlink", "f3")
            yield (fs._path_call, "unlink", "s1")
            if fs.r() < 0.5:
                yield (fs._path_call, "unlink", "f4")
            yield (fs._path_call, "chdir", "..")
            del r
            yield (fs._exit_group, 0)

        p = yield (self._fork, "fork", body)
        yield from self._wait(t, [p])

    def _sc_threads(self, t: Task) -> Script:
        """A multi-threaded writer: threads pwrite64 into one file, or write their own."""
        fs = self
        out = f"/var/lib/app/state{int(self.r() * 4)}.db"

        def worker(th: Task, fd: int) -> Script:
            own = None
            if fs.r() < 0.4:
                own = yield (fs._open, f"/tmp/w{th.pid}.part", O_WRONLY | O_CREAT | O_TRUNC)
            for _ in range(2 + int(fs.r() * 6)):
                yield (fs._rw, "pwrite64", fd, 4096)
                if own is not None:
                    yield (fs._rw, "write", own, 512)
            if own is not None:
                yield (fs._close, own)
            yield (fs._thread_exit, 0)

        def main(c: Task) -> Script:
            yield from fs._exec("/usr/local/bin/worker", ["worker", out])
            fd = yield (fs._open, out, O_RDWR | O_CREAT | O_CLOEXEC)
            k = 2 + int(fs.r() * 4)
            for _ in range(k):
                yield (fs._clone_thread, lambda th: worker(th, fd))
            yield (JOIN,)
            yield (fs._rw, "pread64", fd, 4096)
            yield (fs._close, fd)
            yield (fs._exit_group, 0)

        p = yield (self._fork, "clone", main)
        yield from self._wait(t, [p])

    def _sc_mmap(self, t: Task) -> Script:
        """python3 reads a file through mmap, writes a result through a shared mapping."""
        fs = self
        a, b = self._pick(self.data), self._out_name()

        def body(c: Task) -> Script:
            yield from fs._exec("/usr/bin/python3", ["python3", "-c", "mmapcopy"])
            fd = yield (fs._open, a, O_RDONLY | O_CLOEXEC)
            yield (fs._mmap, fd, 65536, PROT_READ, MAP_PRIVATE)
            yield (fs._close, fd)
            fd = yield (fs._open, b, O_RDWR | O_CREAT | O_CLOEXEC)
            yield (fs._ftruncate, fd, 65536)
            yield (fs._mmap, fd, 65536, PROT_READ | PROT_WRITE, MAP_SHARED)
            yield (fs._close, fd)
            yield (fs._exit_group, 0)

        p = yield (self._fork, "clone", body)
        yield from self._wait(t, [p])

    def _sc_dups(self, t: Task) -> Script:
        """exec 3>&1 style fd juggling: dup, fcntl(F_DUPFD), dup3(O_CLOEXEC), readv, writev."""
        fs = self
        a, b = self._pick(self.data), self._out_name()

        def body(c: Task) -> Script:
            yield from fs._exec("/bin/sh", ["sh", "-c", f"exec 3>&1; cat {a} >{b}"])
            saved = yield (fs._dup, "dup", 1)
            hi = yield (fs._dup, "fcntl", 1, 10, F_DUPFD)
            fd = yield (fs._open, b, O_WRONLY | O_CREAT | O_TRUNC)
            yield (fs._dup, "dup3", fd, 1, O_CLOEXEC if fs.r() < 0.3 else 0)
            yield (fs._close, fd)
            src = yield (fs._open, a, O_RDONLY)
            yield (fs._rw, "readv", src, 8192)
            yield (fs._rw, "writev", 1, 8192)
            yield (fs._close, src)
            yield (fs._dup, "dup2", saved, 1)
            yield (fs._close, saved)
            yield (fs._rw, "write", hi, 20)
            yield (fs._close, hi)
            yield (fs._exit_group, 0)

        p = yield (self._fork, "fork", body)
        yield from self._wait(t, [p])

    def _sc_save(self, t: Task) -> Script:
        """An editor's atomic save: write a temporary, rename it over the original."""
        fs = self
        a = self._pick(self.data)

        def body(c: Task) -> Script:
            yield from fs._exec("/usr/bin/python3", ["python3", "edit.py", a])
            fd = yield (fs._open, a, O_RDONLY | O_CLOEXEC)
            yield (fs._rw, "read", fd, 65536, 3000)
            yield (fs._close, fd)
            tmp = a + ".tmp"
            fd = yield (fs._open, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC)
            if fd >= 0:
                yield (fs._rw, "write", fd, 3100)
                yield (fs._close, fd)
                yield (fs._path_call, "rename", tmp, a)
            yield (fs._exit_group, 0)

        p = yield (self._fork, "clone", body)
        yield from self._wait(t, [p])

    def _sc_logrotate(self, t: Task) -> Script:
        """logrotate: rename chain syslog.2 <- syslog.1 <- syslog; the logger keeps its fd."""
        fs = self

        def body(c: Task) -> Script:
            yield from fs._exec("/usr/sbin/logrotate", ["logrotate", "/etc/logrotate.conf"])
            fd = yield (fs._open, "/etc/logrotate.conf", O_RDONLY)
            yield (fs._rw, "read", fd, 4096, 300)
            yield (fs._close, fd)
            yield (fs._path_call, "unlink", "/var/log/syslog.2")
            yield (fs._path_call, "rename", "/var/log/syslog.1", "/var/log/syslog.2")
            yield (fs._path_call, "rename", "/var/log/syslog", "/var/log/syslog.1")
            fd = yield (fs._creat, "/var/log/syslog")
            yield (fs._close, fd)
            yield (fs._exit_group, 0)

        p = yield (self._fork, "fork", body)
        yield from self._wait(t, [p])

    def _sc_failures(self, t: Task) -> Script:
        """Calls that fail: missing files, a bad fd, a missing binary."""
        fs = self

        def body(c: Task) -> Script:
            yield from fs._exec("/bin/sh", ["sh", "-c", "failures"])
            yield (fs._open, f"{HOME}/data/missing{int(fs.r() * 9)}", O_RDONLY, fs.r() < 0.5)
            yield (fs._rw, "read", 7, 4096)
            yield (fs._close, 9)
            yield (fs._path_call, "unlink", "/tmp/nonexistent")
            yield (fs._execve, "/usr/bin/nosuchtool", ["nosuchtool"])
            yield (fs._exit_group, 127)

        p = yield (self._fork, "vfork", body)
        yield from self._wait(t, [p])

    def _daemon_logger(self, t: Task) -> Script:
        """A long-lived log appender (O_APPEND); reopens its log after a rotation."""
        yield from self._exec("/usr/sbin/rsyslogd", ["rsyslogd", "-n"])
        yield (self._path_call, "chdir", "/")
        fd = yield (self._open, "/var/log/syslog", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC)
        while True:
            for _ in range(5 + int(self.r() * 20)):
                yield (self._rw, "write", fd, 40 + int(self.r() * 200))
                if self.r() < 0.5:
                    yield (IDLE,)
            if self.r() < 0.3:  # reopen (after logrotate renamed it, this is a new file)
                yield (self._close, fd)
                fd = yield (self._open, "/var/log/syslog",
                            O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC)


# -- convenience and the command ------------------------------------------------------------

def events(n: int, seed: int = 0, *, start_seq: int = 1, crash_tail: int = 0,
           **guest_kw) -> list[Event]:
    """``n`` events of a fresh guest, numbered as if appended to a ring at ``start_seq``."""
    return Guest(seed, **guest_kw).events(n, start_seq=start_seq, crash_tail=crash_tail)


def payloads(n: int, seed: int = 0, *, start_seq: int = 1, crash_tail: int = 0,
             **guest_kw) -> list[bytes]:
    """The EVENT payloads of ``events(n, seed)`` through the reference ``encode``: what
    ``run`` writes to a fresh ring."""
    return list(Guest(seed, **guest_kw).iter_payloads(n, start_seq, crash_tail, encode))


def iter_payloads(n: int, seed: int = 0, *, start_seq: int = 1, crash_tail: int = 0,
                  **guest_kw) -> Iterator[bytes]:
    """Like ``payloads`` but streamed and with the cached encoder (same bytes)."""
    return Guest(seed, **guest_kw).iter_payloads(n, start_seq, crash_tail)


@click.command("synth")
@click.option("--ring", "ring_path", required=True, type=click.Path(dir_okay=False),
              help="An existing ring image (provisor ring create).")
@click.option("--events", "n", required=True, type=click.IntRange(min=0),
              help="How many events (records) to write.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same payloads.")
@click.option("--rate", type=Finite(1e-3, 1e9), default=None,
              help="At most this many events per second, 0.001 to 1e9 (default: as fast as "
              "possible).")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Records per persist (append_many); 1 appends one by one.")
@click.option("--crash-tail", default=0, show_default=True, type=click.IntRange(min=0),
              help="Leave the last K entries without exits, as a crash would.")
@click.option("--file-fraction", default=0.85, show_default=True,
              type=Finite(0, 1), help="Share of events carrying file identities.")
@click.option("--policy", type=click.Choice(["block", "drop", "fail"]), default=None,
              help="Ring-full policy (default: config [ring] full_policy).")
@click.pass_obj
def synth_command(cfg: dict, ring_path: str, n: int, seed: int, rate: float | None,
                  batch: int, crash_tail: int, file_fraction: float,
                  policy: str | None) -> None:
    """A simulated guest writing realistic syscall events into a ring.

    Process trees that fork, exec, open, read, write, pipe into each other, redirect with
    dup2, rename, link, unlink, mmap, fail, and run threads; deterministic for a seed.

    \b
    Example:
      provisor ring create /dev/shm/p.ring --size 64M
      provisor synth --ring /dev/shm/p.ring --events 100000 --seed 7
    """
    from pmem.ring import Producer

    policy = policy or (cfg or {}).get("ring", {}).get("full_policy", "block")
    guest = Guest(seed, file_fraction=file_fraction)
    with Producer.open(ring_path, policy) as prod:
        st = guest.run(prod, n, batch=batch, rate=rate, crash_tail=crash_tail)
    click.echo(st.summary())
