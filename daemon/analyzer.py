"""Syscall events to a PASS-style provenance graph, named as in W3C PROV.

Nodes are *versions*: of processes (a new one at execve) and of artifacts (files, pipes,
sockets). Edges (``relations``): process-version **used** artifact-version, artifact-version
**wasGeneratedBy** process-version, process-version **wasInformedBy** process-version (fork, and
a process's previous version), artifact-version **wasDerivedFrom** artifact-version (through a
process that read one and wrote the other, and a file's previous version).

Cycle avoidance, as in PASS: a node whose incoming edges have started is *frozen* and takes no
more outgoing edges; an edge that would leave a frozen node goes from a new version of its
object instead. Then every node's outgoing edges predate its incoming ones, so no cycle can
close (each edge of a cycle would have to be older than the one before it).

The analyzer only computes rows; daemon/store.py writes them (and this state) in the same
transaction that advances the applied sequence number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from provisor.abi import (
    AT_FDCWD,
    CLONE_THREAD,
    F_DUPFD,
    F_DUPFD_CLOEXEC,
    F_SETFD,
    FD_CLOEXEC,
    MAP_SHARED,
    O_CLOEXEC,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    PROT_READ,
    PROT_WRITE,
    to_signed,
)
from provisor.events import ENTRY, Event, FileId
from provisor.syscalls import BY_NR, Arg, Family, Syscall, Trait, name_of

USED_CAP = 4096  # bound on the per-process set of versions read since exec

USED, GENERATED, INFORMED, DERIVED = "used", "wasGeneratedBy", "wasInformedBy", "wasDerivedFrom"


@dataclass
class Proc:
    id: int
    tgid: int
    start_time: int
    parent_id: int | None
    node: int
    version: int = 1
    exe: str = ""
    comm: str = ""
    cwd: str = "/"
    cwd_mnt: int = 0
    uid: int = 0
    first_seq: int = 0
    last_seq: int = 0
    exit_seq: int | None = None
    frozen: bool = False
    used: dict[int, int] = field(default_factory=dict)  # version node -> position
    used_pos: int = 0
    fds: dict[int, tuple[int, int]] = field(default_factory=dict)  # fd -> (artifact, cloexec)

    def row(self) -> tuple:
        return (self.id, self.tgid, self.start_time, self.parent_id, self.exe, self.comm,
                self.cwd, self.cwd_mnt, self.uid, self.version, self.node, self.first_seq,
                self.last_seq, self.exit_seq)


@dataclass
class Art:
    id: int
    kind: str
    dev: int | None
    ino: int | None
    path: str | None
    node: int
    version: int = 1
    created_seq: int = 0
    frozen: bool = False
    gens: set[int] = field(default_factory=set)  # generators of the current version
    derived: set[int] = field(default_factory=set)  # what the current version derives from

    def row(self) -> tuple:
        return (self.id, self.kind, self.dev, self.ino, self.path, self.version, self.node,
                self.created_seq)


@dataclass
class Batch:
    """Rows produced by one batch of events."""

    events: list[tuple] = field(default_factory=list)
    versions: list[tuple] = field(default_factory=list)
    relations: list[tuple] = field(default_factory=list)
    names_new: list[tuple] = field(default_factory=list)
    names_unbound: list[tuple] = field(default_factory=list)  # (unbind_seq, name_id)
    losses: list[tuple] = field(default_factory=list)
    notes: list[tuple] = field(default_factory=list)
    procs: dict[int, Proc] = field(default_factory=dict)
    arts: dict[int, Art] = field(default_factory=dict)
    pending_done: list[int] = field(default_factory=list)
    used_add: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # proc: (pos, node)
    used_del: set[tuple[int, int]] = field(default_factory=set)  # (proc, pos)
    used_clear: set[int] = field(default_factory=set)  # procs whose used set was reset


class Analyzer:
    """Holds the live state (processes, fd tables, name bindings, current versions)."""

    def __init__(self) -> None:
        self.procs: dict[int, Proc] = {}  # live processes by tgid
        self.proc_by_id: dict[int, Proc] = {}
        self.arts: dict[int, Art] = {}
        self.by_devino: dict[tuple[int, int], int] = {}
        self.by_path: dict[str, tuple[int, int]] = {}  # path -> (artifact, name id)
        self.pending: dict[int, Event] = {}  # entry seq -> entry event awaiting its exit
        self.next_proc = 1
        self.next_art = 1
        self.next_node = 1
        self.next_rel = 1
        self.next_name = 1
        self.b = Batch()

    # -- ids and nodes ---------------------------------------------------------------------
    def _node(self, kind: str, obj: int, version: int, ev: Event, reason: str) -> int:
        nid = self.next_node
        self.next_node += 1
        self.b.versions.append((nid, kind, obj, version, ev.seq, ev.ts_ns, reason))
        return nid

    def _rel(self, kind: str, src: int, dst: int, ev: Event, entry_seq: int | None) -> None:
        self.b.relations.append((self.next_rel, kind, src, dst, entry_seq, ev.seq, ev.ts_ns))
        self.next_rel += 1

    def _dirty_p(self, p: Proc) -> None:
        self.b.procs[p.id] = p

    def _dirty_a(self, a: Art) -> None:
        self.b.arts[a.id] = a

    # -- processes -------------------------------------------------------------------------
    def _new_proc(self, ev: Event, tgid: int, start_time: int, parent: Proc | None,
                  reason: str) -> Proc:
        pid = self.next_proc
        self.next_proc += 1
        p = Proc(pid, tgid, start_time, parent.id if parent else None, 0,
                 first_seq=ev.seq, last_seq=ev.seq)
        p.node = self._node("process", pid, 1, ev, reason)
        if parent is not None:
            p.exe, p.comm, p.cwd, p.cwd_mnt, p.uid = (parent.exe, parent.comm, parent.cwd,
                                                     parent.cwd_mnt, parent.uid)
            p.fds = dict(parent.fds)
            self._rel(INFORMED, p.node, parent.node, ev, None)
            self._freeze_p(parent)
        old = self.procs.get(tgid)
        if old is not None and old.exit_seq is None:
            old.exit_seq = ev.seq  # the PID was reused: the old process is gone
            self._dirty_p(old)
        self.procs[tgid] = p
        self.proc_by_id[p.id] = p
        self._dirty_p(p)
        return p

    def _freeze_p(self, p: Proc) -> None:
        p.frozen = True

    def _proc_for(self, ev: Event) -> Proc:
        """The process an event belongs to, created on first sight (parent from ppid)."""
        p = self.procs.get(ev.tgid)
        leader = ev.pid == ev.tgid
        if p is None or (leader and ev.start_time and p.start_time
                         and p.start_time != ev.start_time):
            parent = self.procs.get(ev.ppid)
            p = self._new_proc(ev, ev.tgid, ev.start_time if leader else 0, parent, "first seen")
        elif leader and ev.start_time and not p.start_time:
            p.start_time = ev.start_time
        p.last_seq = ev.seq
        if ev.comm:
            p.comm = ev.comm
        if ev.cwd is not None:
            p.cwd, p.cwd_mnt = ev.cwd, ev.cwd_mnt
        p.uid = ev.uid
        self._dirty_p(p)
        return p

    def _unfrozen_proc(self, p: Proc, ev: Event) -> int:
        """The node of ``p`` that may take a new outgoing edge (a new version if frozen)."""
        if p.frozen:
            prev = p.node
            p.version += 1
            p.node = self._node("process", p.id, p.version, ev, "cycle avoidance")
            p.frozen = False
            self._rel(INFORMED, p.node, prev, ev, None)
            self._dirty_p(p)
        return p.node

    # -- artifacts -------------------------------------------------------------------------
    def _new_art(self, ev: Event, kind: str, fid: FileId | None, path: str | None) -> Art:
        aid = self.next_art
        self.next_art += 1
        a = Art(aid, kind, fid.dev if fid else None, fid.ino if fid else None, path, 0,
                created_seq=ev.seq)
        a.node = self._node(kind, aid, 1, ev, "created")
        self.arts[aid] = a
        if fid is not None and fid.ino:
            self.by_devino[(fid.dev, fid.ino)] = aid
        self._dirty_a(a)
        return a

    def _bind(self, path: str, aid: int, ev: Event) -> None:
        cur = self.by_path.get(path)
        if cur is not None:
            if cur[0] == aid:
                return
            self._unbind(path, ev)
        nid = self.next_name
        self.next_name += 1
        self.by_path[path] = (aid, nid)
        self.b.names_new.append((nid, aid, path, ev.seq, None))
        a = self.arts[aid]
        a.path = path
        self._dirty_a(a)

    def _unbind(self, path: str, ev: Event) -> int | None:
        cur = self.by_path.pop(path, None)
        if cur is None:
            return None
        self.b.names_unbound.append((ev.seq, cur[1]))
        return cur[0]

    def _file(self, ev: Event, path: str | None, fid: FileId | None) -> Art:
        """The file artifact for an identity (dev, ino) and/or an absolute path: the identity
        wins; a name now bound to a different inode means the file was replaced."""
        if fid is not None and fid.ino:
            aid = self.by_devino.get((fid.dev, fid.ino))
            if aid is not None:
                if path and self.by_path.get(path, (None,))[0] != aid:
                    self._bind(path, aid, ev)
                return self.arts[aid]
            cur = self.by_path.get(path) if path else None
            if cur is not None and self.arts[cur[0]].ino is None:
                a = self.arts[cur[0]]
                a.dev, a.ino = fid.dev, fid.ino
                self.by_devino[(fid.dev, fid.ino)] = a.id
                self._dirty_a(a)
                return a
            return self._bound_new(ev, "file", fid, path)
        cur = self.by_path.get(path) if path else None
        if cur is not None:
            return self.arts[cur[0]]
        return self._bound_new(ev, "file", None, path)

    def _bound_new(self, ev: Event, kind: str, fid: FileId | None, path: str | None) -> Art:
        a = self._new_art(ev, kind, fid, path)
        if path:
            self._bind(path, a.id, ev)
        return a

    # -- edges with cycle avoidance ------------------------------------------------------
    def _use(self, p: Proc, a: Art, ev: Event, entry_seq: int | None) -> None:
        if a.node in p.used:
            return
        src = self._unfrozen_proc(p, ev)
        self._rel(USED, src, a.node, ev, entry_seq)
        a.frozen = True
        if len(p.used) >= USED_CAP:
            oldest = next(iter(p.used))
            self.b.used_del.add((p.id, p.used.pop(oldest)))
        p.used[a.node] = p.used_pos
        self.b.used_add.setdefault(p.id, []).append((p.used_pos, a.node))
        p.used_pos += 1
        self._dirty_p(p)

    def _generate(self, p: Proc, a: Art, ev: Event, entry_seq: int | None,
                  truncate: bool = False) -> None:
        """``a`` wasGeneratedBy ``p`` and derives from what ``p`` read. A used (frozen) version
        gets a successor derived from it; a truncation starts a successor derived from nothing."""
        if a.frozen or (truncate and (a.gens or a.derived)):
            prev = a.node
            a.version += 1
            a.node = self._node(a.kind, a.id, a.version, ev,
                                "truncated" if truncate else "written after use")
            a.frozen = False
            a.gens, a.derived = set(), set()
            if not truncate:
                self._rel(DERIVED, a.node, prev, ev, entry_seq)
                a.derived.add(prev)
            self._dirty_a(a)
        if p.node in a.gens:
            return
        self._rel(GENERATED, a.node, p.node, ev, entry_seq)
        a.gens.add(p.node)
        p.frozen = True
        for src in p.used:
            if src not in a.derived:
                self._rel(DERIVED, a.node, src, ev, entry_seq)
                a.derived.add(src)
        self._dirty_a(a)

    # -- paths and fds ---------------------------------------------------------------------
    def _abspath(self, p: Proc, path: str, dirfd: int = AT_FDCWD) -> str:
        if path.startswith("/"):
            base = ""
        elif dirfd != AT_FDCWD and dirfd in p.fds:
            base = self.arts[p.fds[dirfd][0]].path or ""
        else:
            base = p.cwd or "/"
        return normpath(base + "/" + path if base else path)

    def _fd_art(self, p: Proc, fd: int, fid: FileId | None, ev: Event) -> Art | None:
        """The artifact behind fd: the event's own file identity wins over the fd table."""
        if fid is not None and fid.ino:
            aid = self.by_devino.get((fid.dev, fid.ino))
            if aid is not None:
                return self.arts[aid]
            kind = "pipe" if fid.path.startswith("pipe:") else (
                "socket" if fid.path.startswith("socket:") else "file")
            path = fid.path if fid.path.startswith("/") else None
            a = self._file(ev, path, fid) if kind == "file" else self._new_art(ev, kind, fid, None)
            if fd >= 0 and fd not in p.fds:
                p.fds[fd] = (a.id, 0)
            return a
        ref = p.fds.get(fd)
        return self.arts[ref[0]] if ref else None

    # -- the entry point -------------------------------------------------------------------
    def event(self, ev: Event) -> None:
        """Analyze one event (called in sequence order)."""
        p = self._proc_for(ev)
        paths = "\n".join(ev.paths) if ev.paths else None
        sc = BY_NR.get(ev.nr)
        name = sc.name if sc is not None else name_of(ev.nr)
        self.b.events.append((ev.seq, ev.ts_ns, ev.vcpu, "exit" if ev.phase else "entry",
                              ev.entry_seq or None, ev.nr, name, ev.tgid, ev.pid, ev.ppid,
                              ev.uid, ev.start_time, ev.comm, ev.cwd, paths, ev.ret, ev.flags,
                              ev.payload))
        if ev.phase == ENTRY:
            if sc is None or not sc.has(Trait.NO_RETURN):
                self.pending[ev.seq] = ev
            elif sc.family is Family.EXIT_GROUP or ev.pid == ev.tgid:
                p.exit_seq = ev.seq
            return
        entry = self.pending.pop(ev.entry_seq, None)
        if entry is not None:
            self.b.pending_done.append(entry.seq)
        if ev.ret is None or ev.ret < 0:
            return  # a failed call is an event, never a relation
        self._exit(p, ev, entry or ev, sc)

    def _exit(self, p: Proc, ev: Event, en: Event, sc: Syscall | None) -> None:
        """A successful call's effect: the handler of its row's family (``_HANDLERS``)."""
        handler = _HANDLERS.get(sc.family) if sc is not None else None
        if handler is not None:
            fid = ev.files[0] if ev.files else (en.files[0] if en.files else None)
            handler(self, _Call(p, ev, en, sc, en.seq if en is not ev else None, fid,
                                en.paths or ev.paths))
        self._dirty_p(p)

    # -- the handlers of successful calls, one per family (provisor/syscalls.py) ----------
    def _pair_path(self, c: _Call, k: int) -> str:
        """The absolute form of the event's ``k``-th path, against its row's dirfd."""
        d = c.sc.path_pairs[k][0]
        return self._abspath(c.p, c.paths[k], AT_FDCWD if d is None else c.arg(d))

    def _data_read(self, c: _Call) -> None:
        a = self._fd_art(c.p, c.arg(c.sc.fd_arg), c.fid, c.ev)
        if a is not None:
            self._use(c.p, a, c.ev, c.eseq)

    def _data_write(self, c: _Call) -> None:
        a = self._fd_art(c.p, c.arg(c.sc.fd_arg), c.fid, c.ev)
        if a is not None:
            self._generate(c.p, a, c.ev, c.eseq)

    def _open(self, c: _Call) -> None:
        if not c.paths:
            return
        flags = c.flags()
        a = self._file(c.ev, self._pair_path(c, 0), c.fid)
        c.p.fds[c.ev.ret] = (a.id, 1 if flags & O_CLOEXEC else 0)
        if flags & O_TRUNC and flags & (O_WRONLY | O_RDWR):
            self._generate(c.p, a, c.ev, c.eseq, truncate=True)

    def _close(self, c: _Call) -> None:
        c.p.fds.pop(c.arg(c.sc.fd_arg), None)

    def _dup(self, c: _Call) -> None:
        fds, old, new = c.p.fds, c.arg(c.sc.fd_arg), c.sc.at(Arg.NEWFD)
        if old in fds and (new is None or c.arg(new) != old):
            fds[c.ev.ret] = (fds[old][0], 1 if c.flags() & O_CLOEXEC else 0)

    def _fcntl(self, c: _Call) -> None:
        fds, fd, cmd = c.p.fds, c.arg(c.sc.fd_arg), c.arg(c.sc.at(Arg.FCNTL_CMD))
        if fd not in fds:
            return
        if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
            fds[c.ev.ret] = (fds[fd][0], 1 if cmd == F_DUPFD_CLOEXEC else 0)
        elif cmd == F_SETFD:
            fds[fd] = (fds[fd][0], c.arg(c.sc.at(Arg.INT)) & FD_CLOEXEC)

    def _pipe(self, c: _Call) -> None:
        fds = c.ev.out_fds
        if len(fds) == 2:
            ref = (self._new_art(c.ev, "pipe", c.fid, None).id, 1 if c.flags() & O_CLOEXEC else 0)
            c.p.fds[fds[0]] = c.p.fds[fds[1]] = ref

    def _fork(self, c: _Call) -> None:
        sc, ret = c.sc, c.ev.ret
        if Arg.CLONE_ARGS in sc.args:
            return  # clone3: the flags are in guest memory, unread: a thread or a process?
        i = sc.at(Arg.CLONE_FLAGS)
        if (i is not None and c.arg(i) & CLONE_THREAD) or ret <= 0:
            return
        child = self.procs.get(ret)
        if child is None or child.exit_seq is not None or child.parent_id != c.p.id:
            self._new_proc(c.ev, ret, 0, c.p, sc.name)

    def _execve(self, c: _Call) -> None:
        self._exec(c.p, c.ev, c.en, c.paths)

    def _mmap(self, c: _Call) -> None:
        sc = c.sc
        prot, flags, fd = c.arg(sc.at(Arg.PROT)), c.arg(sc.at(Arg.MAP_FLAGS)), c.arg(sc.fd_arg)
        a = self._fd_art(c.p, fd, c.fid, c.ev) if fd >= 0 else None
        if a is not None and a.kind == "file":
            if prot & PROT_READ:
                self._use(c.p, a, c.ev, c.eseq)
            if prot & PROT_WRITE and flags & MAP_SHARED:
                self._generate(c.p, a, c.ev, c.eseq)

    def _truncate(self, c: _Call) -> None:
        """truncate (a path) or ftruncate (an fd); to length 0 starts a version from nothing."""
        if c.sc.path_pairs:
            if not c.paths:
                return
            a = self._file(c.ev, self._pair_path(c, 0), c.fid)
        else:
            a = self._fd_art(c.p, c.arg(c.sc.fd_arg), c.fid, c.ev)
            if a is None:
                return
        self._generate(c.p, a, c.ev, c.eseq, truncate=c.arg(c.sc.at(Arg.SIZE)) == 0)

    def _transfer(self, c: _Call) -> None:
        i, o = c.sc.xfer or (0, 0)
        src, dst = c.p.fds.get(c.arg(i)), c.p.fds.get(c.arg(o))
        if src:
            self._use(c.p, self.arts[src[0]], c.ev, c.eseq)
        if dst:
            self._generate(c.p, self.arts[dst[0]], c.ev, c.eseq)

    def _rename(self, c: _Call) -> None:
        if len(c.paths) < 2:
            return
        old, new = self._pair_path(c, 0), self._pair_path(c, 1)
        aid = self._unbind(old, c.ev)
        if aid is None:
            aid = self._file(c.ev, old, c.fid).id
            self._unbind(old, c.ev)
        self._bind(new, aid, c.ev)

    def _link(self, c: _Call) -> None:
        if len(c.paths) >= 2:
            a = self._file(c.ev, self._pair_path(c, 0), c.fid)
            self._bind(self._pair_path(c, 1), a.id, c.ev)

    def _symlink(self, c: _Call) -> None:
        if len(c.paths) >= 2:  # the first path is the link's text, the second its name
            self._bound_new(c.ev, "symlink", None, self._pair_path(c, 1))

    def _unlink(self, c: _Call) -> None:
        if c.paths:
            self._unbind(self._pair_path(c, 0), c.ev)

    def _chdir(self, c: _Call) -> None:
        """chdir (a path) or fchdir (an fd), when the producer could not read the new cwd."""
        if c.ev.cwd is not None:
            return
        if c.sc.path_pairs:
            if c.paths:
                c.p.cwd = self._pair_path(c, 0)
            return
        ref = c.p.fds.get(c.arg(c.sc.fd_arg))
        if ref and self.arts[ref[0]].path:
            c.p.cwd = self.arts[ref[0]].path or c.p.cwd

    def _socket(self, c: _Call) -> None:
        c.p.fds[c.ev.ret] = (self._new_art(c.ev, "socket", c.fid, None).id, 0)

    def _exec(self, p: Proc, ev: Event, en: Event, paths: list[str]) -> None:
        """execve replaces the process image: a new process version that used the binary (and
        interpreter); close-on-exec fds go; what the old image read no longer counts."""
        prev = p.node
        p.version += 1
        p.node = self._node("process", p.id, p.version, ev, "execve")
        p.frozen = False
        self._rel(INFORMED, p.node, prev, ev, en.seq if en is not ev else None)
        p.used = {}
        self.b.used_clear.add(p.id)
        self.b.used_add.pop(p.id, None)
        p.fds = {fd: ref for fd, ref in p.fds.items() if not ref[1]}
        files = ev.files or en.files
        if files and files[0].path.startswith("/"):
            p.exe = files[0].path  # the kernel's resolution (/proc/self/exe -> the binary)
        elif paths:
            p.exe = self._abspath(p, paths[0])
        if en.argv:
            p.comm = ev.comm or p.comm
        targets: list[Art] = []
        if files:
            for i, f in enumerate(files):
                path = f.path if f.path.startswith("/") else (p.exe if i == 0 else None)
                a = self._file(ev, path, f)
                if a is not None:
                    targets.append(a)
        elif paths:
            a = self._file(ev, p.exe, None)
            if a is not None:
                targets.append(a)
        for a in targets:
            self._use(p, a, ev, en.seq if en is not ev else None)

    def take(self) -> Batch:
        b, self.b = self.b, Batch()
        return b


@dataclass(slots=True)
class _Call:
    """A successful call being analyzed: its exit, its entry (or the exit again), its row."""

    p: Proc
    ev: Event
    en: Event
    sc: Syscall
    eseq: int | None  # the entry's sequence number, when the entry was seen
    fid: FileId | None  # the first file identity the producer read (exit first)
    paths: list[str]

    def arg(self, i: int | None) -> int:
        """Argument ``i`` of the entry, signed (fds, AT_FDCWD, flags)."""
        return to_signed(self.en.args[i])

    def flags(self) -> int:
        """The call's O_* flags: its FLAGS argument, else what the row implies (creat)."""
        i = self.sc.flags_arg
        return self.arg(i) if i is not None else (self.sc.implied_flags or 0)


_HANDLERS: dict[Family, Callable[[Analyzer, _Call], None]] = {
    Family.DATA_READ: Analyzer._data_read,
    Family.DATA_WRITE: Analyzer._data_write,
    Family.OPEN: Analyzer._open,
    Family.CLOSE: Analyzer._close,
    Family.DUP: Analyzer._dup,
    Family.FCNTL: Analyzer._fcntl,
    Family.PIPE: Analyzer._pipe,
    Family.FORK: Analyzer._fork,
    Family.EXEC: Analyzer._execve,
    Family.MMAP: Analyzer._mmap,
    Family.TRUNCATE: Analyzer._truncate,
    Family.TRANSFER: Analyzer._transfer,
    Family.RENAME: Analyzer._rename,
    Family.LINK: Analyzer._link,
    Family.SYMLINK: Analyzer._symlink,
    Family.UNLINK: Analyzer._unlink,
    Family.CHDIR: Analyzer._chdir,
    Family.SOCKET: Analyzer._socket,
}  # NONE, EXIT and EXIT_GROUP have no exit effect (the exits are handled at their entry)


def normpath(path: str) -> str:
    """Lexical normalisation of an absolute guest path (the guest's symlinks are unknown)."""
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
        else:
            parts.append(seg)
    return "/" + "/".join(parts)
