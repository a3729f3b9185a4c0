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

The analyzer only computes rows; daemon/apply.py and store/sqlite.py writes them (and this state) in the same
transaction that advances the applied sequence number.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter

from provisor.abi import (
    AT_FDCWD,
    CLONE_THREAD,
    F_DUPFD,
    F_DUPFD_CLOEXEC,
    F_SETFD,
    FD_CLOEXEC,
    MAP_SHARED,
    O_CLOEXEC,
    O_CREAT,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    PROT_READ,
    PROT_WRITE,
    S_IFBLK,
    S_IFCHR,
    S_IFIFO,
    S_IFMT,
    S_IFSOCK,
    to_signed,
)
from provisor.events import AF_INET, AF_INET6, ENTRY, F_PATH_UNREADABLE, Event, FileId
from provisor.guestpath import normpath
from provisor.syscalls import BY_NR, Arg, Family, Syscall, Trait
from store.schema import ARTIFACTS, PROCESSES

USED_CAP = 4096  # bound on the per-process set of versions read since exec
PEERS_CAP = 256  # bound on the endpoints remembered per remote address (by_remote)


def _destinations(family: int, addr: str) -> tuple[str, ...]:
    """The local addresses a datagram sent to ``addr`` may be received at: itself and, for a
    loopback address, the wildcard with its port (a server bound to 0.0.0.0 or [::])."""
    host, _, port = addr.rpartition(":")
    if family == AF_INET and host.startswith("127."):
        return addr, f"0.0.0.0:{port}"
    if family == AF_INET6 and host == "[::1]":
        return addr, f"[::]:{port}"
    return (addr,)

USED, GENERATED, INFORMED, DERIVED = "used", "wasGeneratedBy", "wasInformedBy", "wasDerivedFrom"
# the attrs keys of a process version's credentials, in Event.cred order
CRED_KEYS = ("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid")
_FILE_TYPES = {S_IFIFO: "fifo", S_IFCHR: "chr", S_IFBLK: "blk", S_IFSOCK: "sock"}


_PROC_ROW = attrgetter(*PROCESSES.cols)
_ART_ROW = attrgetter(*ARTIFACTS.cols)


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
        """The processes row (store/schema order: the fields are named as its columns)."""
        return _PROC_ROW(self)


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
        """The artifacts row (store/schema order: the fields are named as its columns)."""
        return _ART_ROW(self)


@dataclass
class Batch:
    """Rows produced by one batch of events."""

    events: list[Event] = field(default_factory=list)  # their rows: store/schema.event_row
    versions: list[tuple] = field(default_factory=list)
    relations: list[tuple] = field(default_factory=list)
    names_new: list[tuple] = field(default_factory=list)
    names_unbound: list[tuple] = field(default_factory=list)  # (unbind_seq, name_id)
    losses: list[tuple] = field(default_factory=list)
    notes: list[tuple] = field(default_factory=list)
    attrs: list[tuple] = field(default_factory=list)  # (node, key, value, seq)
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
        # the pending entries that write data (DATA_WRITE, TRANSFER), and those of them whose
        # generation a reader already saw (``_early_writes``): both follow from ``pending``
        # and the attrs rows ``early_write``, so a restarted daemon rebuilds them (daemon/apply.py)
        self.pending_writes: set[int] = set()
        self.early_done: set[int] = set()
        self.names_of: dict[int, set[str]] = {}  # artifact -> the paths bound to it now
        self.peer: dict[int, set[int]] = {}  # socket endpoint artifact -> its peers' (UDP: many)
        self.by_endpoint: dict[tuple, int] = {}  # (family, type, local, remote) -> artifact
        self.by_sk: dict[int, int] = {}  # AF_UNIX: kernel struct sock address -> artifact
        # (family, type, remote) -> the endpoints connected to that address, or that sent a
        # datagram to it unconnected (``_sent_to``), newest last (an unconnected UDP server
        # finds its clients here; bounded: PEERS_CAP per address)
        self.by_remote: dict[tuple, dict[int, None]] = {}
        self.endpoint_of: dict[int, tuple] = {}  # artifact -> its last endpoint key, sk
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

    def _attr(self, node: int, key: str, value: object, ev: Event) -> None:
        """An attribute of a version node (the attrs table): text, set by event ``ev``."""
        self.b.attrs.append((node, key, value if isinstance(value, str) else str(value), ev.seq))

    def _cred_attrs(self, node: int, ev: Event) -> None:
        cred = ev.cred
        if cred:
            for k, v in zip(CRED_KEYS, cred, strict=False):
                self._attr(node, k, v, ev)

    def _fd_event(self, p: Proc, ev: Event, text: str) -> None:
        """A call that changed only the fd table (no data flow): found on the process."""
        self._attr(p.node, "fd_event", text, ev)

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
        self._cred_attrs(p.node, ev)
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

    def _new_version_p(self, p: Proc, ev: Event, reason: str, eseq: int | None) -> int:
        """A new version of ``p`` (execve, credentials, a signal) informed by its previous."""
        prev = p.node
        p.version += 1
        p.node = self._node("process", p.id, p.version, ev, reason)
        p.frozen = False
        self._rel(INFORMED, p.node, prev, ev, eseq)
        self._dirty_p(p)
        return prev

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
        self.names_of.setdefault(aid, set()).add(path)
        self.b.names_new.append((nid, aid, path, ev.seq, None))
        a = self.arts[aid]
        a.path = path
        self._dirty_a(a)

    def _unbind(self, path: str, ev: Event) -> int | None:
        cur = self.by_path.pop(path, None)
        if cur is None:
            return None
        names = self.names_of.get(cur[0])
        if names is not None:
            names.discard(path)
            if not names:
                del self.names_of[cur[0]]
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
        if p.node not in a.gens:
            self._rel(GENERATED, a.node, p.node, ev, entry_seq)
            a.gens.add(p.node)
        p.frozen = True
        for src in p.used:  # what it read since its last write here, too
            if src not in a.derived:
                self._rel(DERIVED, a.node, src, ev, entry_seq)
                a.derived.add(src)
        self._dirty_a(a)

    def _meta_version(self, p: Proc, a: Art, ev: Event, eseq: int | None, reason: str) -> None:
        """A change to an artifact's names or attributes (rename, link, unlink, chmod, chown):
        a new version derived from the previous one and generated by ``p``; not derived from
        what ``p`` read (no data moved)."""
        prev = a.node
        a.version += 1
        a.node = self._node(a.kind, a.id, a.version, ev, reason)
        a.frozen = False
        a.gens, a.derived = {p.node}, {prev}
        self._rel(DERIVED, a.node, prev, ev, eseq)
        self._rel(GENERATED, a.node, p.node, ev, eseq)
        p.frozen = True
        self._dirty_a(a)

    def _created(self, p: Proc, a: Art, ev: Event, eseq: int | None) -> None:
        """``a`` came into existence by ``p`` (a pipe, socket, FIFO, symlink, new file):
        generated by it, derived from nothing. Not a write: ``gens`` (the writers of the
        version's data) stays as it was, so a peer reads nothing from an endpoint only made,
        and the creator's own first write is a generation of its own (attrs ``created_by``
        tells the two apart when a restarted daemon rebuilds ``gens``)."""
        self._rel(GENERATED, a.node, p.node, ev, eseq)
        self._attr(a.node, "created_by", p.node, ev)
        p.frozen = True
        self._dirty_a(a)

    def _flow(self, src: Art, dst: Art, ev: Event, eseq: int | None) -> None:
        """Data from one socket endpoint reached its peer: ``dst`` derives from what was last
        written to ``src`` (a new version of ``dst`` when its current one was already used)."""
        if not src.gens or src.node in dst.derived:
            return
        if dst.frozen:
            prev = dst.node
            dst.version += 1
            dst.node = self._node(dst.kind, dst.id, dst.version, ev, "received after use")
            dst.frozen = False
            dst.gens, dst.derived = set(), {prev}
            self._rel(DERIVED, dst.node, prev, ev, eseq)
        self._rel(DERIVED, dst.node, src.node, ev, eseq)
        dst.derived.add(src.node)
        src.frozen = True
        self._dirty_a(dst)

    def _pair(self, a: Art, b: Art, ev: Event) -> None:
        """Two socket endpoints found connected (recorded as attrs ``peer``, for a restart)."""
        for x, y in ((a, b), (b, a)):
            peers = self.peer.setdefault(x.id, set())
            if y.id not in peers:
                peers.add(y.id)
                self._attr(x.node, "peer", f"{y.kind}:{y.id}", ev)

    def _endpoints(self, ev: Event) -> None:
        """Socket endpoint addresses the producer read: recorded on the socket's version when
        they change, and connected endpoints paired (inet: local/remote; AF_UNIX: the kernel's
        peer pointer)."""
        for ep in ev.endpoints:
            if not 0 <= ep.file < len(ev.files):
                continue
            f = ev.files[ep.file]
            aid = self.by_devino.get((f.dev, f.ino)) if f.ino else None
            if aid is None:
                continue
            a = self.arts[aid]
            key = (ep.family, ep.type, ep.local, ep.remote)
            if self.endpoint_of.get(aid) != (key, ep.sk):
                self.endpoint_of[aid] = (key, ep.sk)
                for k, v in (("endpoint_family", ep.family), ("endpoint_type", ep.type),
                             ("endpoint_local", ep.local), ("endpoint_remote", ep.remote),
                             ("endpoint_sk", f"{ep.sk:#x}"), ("endpoint_peer", f"{ep.peer:#x}")):
                    self._attr(a.node, k, v, ev)
                self._register_endpoint(aid, key, ep.sk)
            other = None
            if ep.peer:
                other = self.by_sk.get(ep.peer)
            elif ep.remote:  # the connected peer, else a bound unconnected one (a UDP server)
                other = self.by_endpoint.get((ep.family, ep.type, ep.remote, ep.local))
                if other is None:
                    other = self.by_endpoint.get((ep.family, ep.type, ep.remote, ""))
            if other is not None and other != aid:
                self._pair(a, self.arts[other], ev)
            elif ep.local and not ep.remote and not ep.peer:  # bound, unconnected: a server
                for other in list(self.by_remote.get((ep.family, ep.type, ep.local), ())):
                    if other != aid:
                        self._pair(a, self.arts[other], ev)

    def _sent_to(self, ev: Event) -> None:
        """A datagram sent to an address (sendto's destination, ``Event.addr``, at its entry)
        from a socket with no remote: that socket is a client of the address, paired with the
        endpoint bound there unconnected (a UDP server: key (family, type, addr, "")), now or
        when that endpoint is seen (``by_remote``), so what the server then receives derives
        from what was sent (``_flow``). Recorded as attrs ``sent_to`` (once per address while
        remembered) and ``peer``, for a restart (daemon/apply.py and store/sqlite.py ``_load_endpoints``)."""
        ep = next((e for e in ev.endpoints if e.file == 0), None)  # the fd argument's socket
        if ep is None or ep.remote or ep.peer or ep.family != ev.addr_family:
            return
        f = ev.files[0]
        aid = self.by_devino.get((f.dev, f.ino)) if f.ino else None
        if aid is None:
            return
        a = self.arts[aid]
        if self._register_client(aid, ep.family, ep.type, ev.addr):
            self._attr(a.node, "sent_to", f"{ep.family}:{ep.type}:{ev.addr}", ev)
        for dest in _destinations(ep.family, ev.addr):
            other = self.by_endpoint.get((ep.family, ep.type, dest, ""))
            if other is not None and other != aid:
                self._pair(a, self.arts[other], ev)
                break

    def _register_client(self, aid: int, family: int, typ: int, addr: str) -> bool:
        """``aid`` sent to ``addr`` unconnected: one of its clients in ``by_remote`` (under
        the loopback wildcard too); whether it is new there."""
        new = False
        for dest in _destinations(family, addr):
            clients = self.by_remote.setdefault((family, typ, dest), {})
            new = new or aid not in clients
            clients.pop(aid, None)
            clients[aid] = None
            if len(clients) > PEERS_CAP:
                del clients[next(iter(clients))]
        return new

    def _register_endpoint(self, aid: int, key: tuple, sk: int) -> None:
        if key[2] or key[3]:
            self.by_endpoint[key] = aid
        if key[3]:
            clients = self.by_remote.setdefault((key[0], key[1], key[3]), {})
            clients.pop(aid, None)
            clients[aid] = None
            if len(clients) > PEERS_CAP:
                del clients[next(iter(clients))]
        if sk:
            self.by_sk[sk] = aid

    # -- paths and fds ---------------------------------------------------------------------
    def _abspath(self, p: Proc, path: str, dirfd: int = AT_FDCWD,
                 dir_file: FileId | None = None) -> str:
        """``path`` made absolute: against the directory fd (the kernel's own path of it, as
        the producer read it, else the fd table's artifact), or the cwd."""
        if path.startswith("/"):
            base = ""
        elif dirfd != AT_FDCWD and dir_file is not None and dir_file.path.startswith("/"):
            base = dir_file.path
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
        sc = BY_NR.get(ev.nr)
        self.b.events.append(ev)
        if ev.phase == ENTRY:
            if sc is None or not sc.has(Trait.NO_RETURN):
                self.pending[ev.seq] = ev
                if sc is not None and sc.family in WRITE_FAMILIES:
                    self.pending_writes.add(ev.seq)
            else:
                if sc.family is Family.EXIT_GROUP or ev.pid == ev.tgid:
                    p.exit_seq = ev.seq
                    self._attr(p.node, "exit_status", ev.args[0] & 0xFF, ev)
            if ev.files:
                self._endpoints(ev)
                if ev.addr is not None and sc is not None and sc.family is Family.DATA_WRITE:
                    self._sent_to(ev)
            return
        entry = self.pending.pop(ev.entry_seq, None)
        early = False  # a reader already took this write's generation (``_early_writes``)
        if entry is not None:
            self.b.pending_done.append(entry.seq)
            self.pending_writes.discard(entry.seq)
            if entry.seq in self.early_done:
                self.early_done.discard(entry.seq)
                early = True
                if sc is not None and sc.family is Family.DATA_WRITE:
                    self._dirty_p(p)
                    return  # its generation is made already (TRANSFER: its read is not)
        if ev.ret is None or ev.ret < 0:
            return  # a failed call is an event, never a relation
        self._exit(p, ev, entry or ev, sc, early)
        if ev.files:
            self._endpoints(ev)

    def _exit(self, p: Proc, ev: Event, en: Event, sc: Syscall | None,
              early: bool = False) -> None:
        """A successful call's effect: the handler of its row's family (``_HANDLERS``)."""
        if sc is None:
            return
        handler = _HANDLERS.get(sc.family)
        files = _arg_files(sc, en) if en is not ev else {}
        if handler is not None:
            # the file a handler acts on: what the call made (a returned fd, the new image),
            # else the file of its FD argument; never a DIRFD's (that is the directory)
            fid = ev.files[0] if ev.files else files.get(sc.fd_arg) if sc.fd_arg is not None \
                else None
            # an entry whose paths were unreadable: the exit read them again (FORMAT.md)
            paths = ev.paths if en is not ev and en.flags & F_PATH_UNREADABLE and ev.paths \
                else en.paths or ev.paths
            handler(self, _Call(p, ev, en, sc, en.seq if en is not ev else None, fid, paths,
                                files, early))
        elif sc.fd_arg is not None:  # bind, connect, listen: the fd's file stays as it was
            self._fd_event(p, ev, f"{sc.name} fd={to_signed(en.args[sc.fd_arg])}")
        self._dirty_p(p)

    # -- the handlers of successful calls, one per family (provisor/syscalls.py) ----------
    def _pair_path(self, c: _Call, k: int) -> str:
        """The absolute form of the event's ``k``-th path, against its row's dirfd."""
        d = c.sc.path_pairs[k][0]
        if d is None:
            return self._abspath(c.p, c.paths[k])
        return self._abspath(c.p, c.paths[k], c.arg(d), c.files.get(d))

    def _target(self, c: _Call) -> Art | None:
        """The file a path-or-fd call (chmod/fchmod, truncate/ftruncate, ...) acts on."""
        if c.sc.path_pairs:
            return self._file(c.ev, self._pair_path(c, 0), None) if c.paths else None
        return self._fd_art(c.p, c.arg(c.sc.fd_arg), c.fid, c.ev)

    def _early_writes(self, c: _Call, a: Art) -> None:
        """A read returned data while writes into ``a`` (or its peers) were still in their
        calls: a blocked writer's data is visible to the reader before the writer's exit is
        seen. Their generations are made now, from their entries (once: their exits then
        make none)."""
        targets = {a.id, *self.peer.get(a.id, ())}
        for seq in sorted(self.pending_writes - self.early_done):
            en = self.pending[seq]
            sc = BY_NR[en.nr]
            pos = sc.xfer[1] if sc.xfer else sc.fd_arg
            f = _arg_files(sc, en).get(pos)
            aid = self.by_devino.get((f.dev, f.ino)) if f is not None and f.ino else None
            writer = self.procs.get(en.tgid)
            if aid is None and writer is not None:
                ref = writer.fds.get(en.arg(pos))
                aid = ref[0] if ref else None
            if aid in targets and writer is not None and writer.exit_seq is None:
                self.early_done.add(seq)
                art = self.arts[aid]
                self._generate(writer, art, c.ev, seq)
                # for a restart: this generation may add no relation (the writer's version
                # was made already), so the relations alone cannot tell it was taken
                self._attr(art.node, "early_write", seq, c.ev)
                self._dirty_p(writer)

    def _data_read(self, c: _Call) -> None:
        a = self._fd_art(c.p, c.arg(c.sc.fd_arg), c.fid, c.ev)
        if a is not None:
            if c.ev.ret > 0:  # data came (0: end of file, nothing)
                if self.pending_writes:
                    self._early_writes(c, a)
                for peer in sorted(self.peer.get(a.id, ())):
                    self._flow(self.arts[peer], a, c.ev, c.eseq)
            self._use(c.p, a, c.ev, c.eseq)

    def _data_write(self, c: _Call) -> None:
        a = self._fd_art(c.p, c.arg(c.sc.fd_arg), c.fid, c.ev)
        if a is not None:
            self._generate(c.p, a, c.ev, c.eseq)

    def _open(self, c: _Call) -> None:
        if not c.paths:
            return
        flags, fid, user = c.flags(), c.fid, self._pair_path(c, 0)
        # the kernel's path of what was opened: through a symlink, the target's
        real = fid.path if fid is not None and fid.path.startswith("/") else user
        known = ((fid is not None and fid.ino and (fid.dev, fid.ino) in self.by_devino)
                 or real in self.by_path)
        a = self._file(c.ev, real, fid)
        link = self.by_path.get(user) if real != user else None
        if link is not None and self.arts[link[0]].kind == "symlink":
            self._use(c.p, self.arts[link[0]], c.ev, c.eseq)  # the kernel read the link
        c.p.fds[c.ev.ret] = (a.id, 1 if flags & O_CLOEXEC else 0)
        if flags & O_TRUNC and flags & (O_WRONLY | O_RDWR):
            self._generate(c.p, a, c.ev, c.eseq, truncate=True)
        elif flags & O_CREAT and not known:
            self._created(c.p, a, c.ev, c.eseq)
        if flags & O_CREAT and not known and c.sc.at(Arg.MODE) is not None:
            # the mode asked for (the umask, which the producer does not read, may clear bits)
            self._attr(a.node, "mode", f"{c.arg(c.sc.at(Arg.MODE)) & 0o7777:04o}", c.ev)
        self._fd_event(c.p, c.ev, f"{c.sc.name} fd={c.ev.ret} {real}")

    def _close(self, c: _Call) -> None:
        fd = c.arg(c.sc.fd_arg)
        ref = c.p.fds.pop(fd, None)
        what = f" {self.arts[ref[0]].path or self.arts[ref[0]].kind}" if ref else ""
        self._fd_event(c.p, c.ev, f"close fd={fd}{what}")

    def _dup(self, c: _Call) -> None:
        fds, old, new = c.p.fds, c.arg(c.sc.fd_arg), c.sc.at(Arg.NEWFD)
        if old in fds and (new is None or c.arg(new) != old):
            fds[c.ev.ret] = (fds[old][0], 1 if c.flags() & O_CLOEXEC else 0)
        self._fd_event(c.p, c.ev, f"{c.sc.name} fd={old} -> fd={c.ev.ret}")

    def _fcntl(self, c: _Call) -> None:
        fds, fd, cmd = c.p.fds, c.arg(c.sc.fd_arg), c.arg(c.sc.at(Arg.FCNTL_CMD))
        if fd not in fds:
            return
        if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
            fds[c.ev.ret] = (fds[fd][0], 1 if cmd == F_DUPFD_CLOEXEC else 0)
            self._fd_event(c.p, c.ev, f"fcntl F_DUPFD fd={fd} -> fd={c.ev.ret}")
        elif cmd == F_SETFD:
            fds[fd] = (fds[fd][0], c.arg(c.sc.at(Arg.INT)) & FD_CLOEXEC)

    def _pipe(self, c: _Call) -> None:
        fds = c.ev.out_fds
        if len(fds) == 2:
            a = self._new_art(c.ev, "pipe", c.fid, None)
            self._created(c.p, a, c.ev, c.eseq)
            ref = (a.id, 1 if c.flags() & O_CLOEXEC else 0)
            c.p.fds[fds[0]] = c.p.fds[fds[1]] = ref
            self._fd_event(c.p, c.ev, f"{c.sc.name} fd={fds[0]},{fds[1]}")

    def _socketpair(self, c: _Call) -> None:
        """Two endpoints, connected from birth: an artifact each, paired."""
        fds = c.ev.out_fds
        if len(fds) != 2:
            return
        ends = []
        for i, fd in enumerate(fds):
            f = c.ev.files[i] if i < len(c.ev.files) else None
            a = self._new_art(c.ev, "socket", f, None)
            self._created(c.p, a, c.ev, c.eseq)
            c.p.fds[fd] = (a.id, 0)
            ends.append(a)
        self._pair(ends[0], ends[1], c.ev)
        self._fd_event(c.p, c.ev, f"socketpair fd={fds[0]},{fds[1]}")

    def _fork(self, c: _Call) -> None:
        sc, ret = c.sc, c.ev.ret
        if Arg.CLONE_ARGS in sc.args:
            return  # clone3: the flags are in guest memory, unread: a thread or a process?
        i = sc.at(Arg.CLONE_FLAGS)
        if (i is not None and c.arg(i) & CLONE_THREAD) or ret <= 0:
            return
        child = self.procs.get(ret)
        if child is not None and child.parent_id == c.p.id and (
                child.exit_seq is None or (c.eseq is not None and child.first_seq > c.eseq)):
            return  # seen already: it ran (vfork: and may have exited) before the call returned
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
        a = self._target(c)
        if a is not None:
            self._generate(c.p, a, c.ev, c.eseq, truncate=c.arg(c.sc.at(Arg.SIZE)) == 0)

    def _transfer(self, c: _Call) -> None:
        i, o = c.sc.xfer or (0, 0)
        src, dst = c.p.fds.get(c.arg(i)), c.p.fds.get(c.arg(o))
        if src:
            a = self.arts[src[0]]
            if self.pending_writes and c.ev.ret > 0:
                self._early_writes(c, a)
            for peer in sorted(self.peer.get(a.id, ())):
                self._flow(self.arts[peer], a, c.ev, c.eseq)
            self._use(c.p, a, c.ev, c.eseq)
        if dst and not c.early:
            self._generate(c.p, self.arts[dst[0]], c.ev, c.eseq)

    def _named(self, c: _Call, path: str) -> Art:
        """The artifact bound to ``path`` (a path-only call: no file identity to go by)."""
        cur = self.by_path.get(path)
        return self.arts[cur[0]] if cur is not None else self._file(c.ev, path, None)

    def _rename(self, c: _Call) -> None:
        """A new version of the renamed artifact under its new name; a file it replaced loses
        that name (a version too: ``unlinked``)."""
        if len(c.paths) < 2:
            return
        old, new = self._pair_path(c, 0), self._pair_path(c, 1)
        a = self._named(c, old)
        cur = self.by_path.get(new)
        if cur is not None and cur[0] != a.id:
            self._unbind(new, c.ev)
            self._unnamed(c, self.arts[cur[0]], new)
        self._unbind(old, c.ev)
        self._bind(new, a.id, c.ev)
        self._meta_version(c.p, a, c.ev, c.eseq, "renamed")

    def _link(self, c: _Call) -> None:
        if len(c.paths) >= 2:
            a = self._named(c, self._pair_path(c, 0))
            self._bind(self._pair_path(c, 1), a.id, c.ev)
            self._meta_version(c.p, a, c.ev, c.eseq, "linked")

    def _symlink(self, c: _Call) -> None:
        if len(c.paths) >= 2:  # the first path is the link's text, the second its name
            a = self._bound_new(c.ev, "symlink", None, self._pair_path(c, 1))
            self._attr(a.node, "link_target", c.paths[0], c.ev)
            self._created(c.p, a, c.ev, c.eseq)

    def _unlink(self, c: _Call) -> None:
        if c.paths:
            path = self._pair_path(c, 0)
            a = self._named(c, path)
            self._unbind(path, c.ev)
            self._unnamed(c, a, path)

    def _unnamed(self, c: _Call, a: Art, path: str) -> None:
        """``path`` no longer names ``a`` (unlink, rmdir, replaced by a rename): attributes of
        its current version, not a new one (nothing of it changed; what derived from it still
        does). Its last name gone, it is invalidated by the caller (PROV wasInvalidatedBy)."""
        self._attr(a.node, "unlinked", path, c.ev)
        if a.id not in self.names_of:
            self._attr(a.node, "invalidated_by", c.p.node, c.ev)

    def _chmod(self, c: _Call) -> None:
        a = self._target(c)
        if a is not None:
            self._meta_version(c.p, a, c.ev, c.eseq, "chmod")
            self._attr(a.node, "mode", f"{c.arg(c.sc.at(Arg.MODE)) & 0o7777:04o}", c.ev)

    def _chown(self, c: _Call) -> None:
        a = self._target(c)
        if a is None:
            return
        self._meta_version(c.p, a, c.ev, c.eseq, "chown")
        for kind, key in ((Arg.UID, "owner_uid"), (Arg.GID, "owner_gid")):
            v = to_signed(c.en.args[c.sc.at(kind)] & 0xFFFFFFFF, 32)
            if v != -1:  # -1: left as it was
                self._attr(a.node, key, v, c.ev)

    def _mknod(self, c: _Call) -> None:
        """A FIFO, device node or socket file: a new artifact generated by the caller (its
        identity is adopted when it is first opened)."""
        if not c.paths:
            return
        mode = c.arg(c.sc.at(Arg.MODE))
        ftype = _FILE_TYPES.get(mode & S_IFMT, "reg")
        a = self._bound_new(c.ev, "fifo" if ftype == "fifo" else "file", None,
                            self._pair_path(c, 0))
        self._attr(a.node, "file_type", ftype, c.ev)
        self._attr(a.node, "mode", f"{mode & 0o7777:04o}", c.ev)
        self._created(c.p, a, c.ev, c.eseq)

    def _cred(self, c: _Call) -> None:
        """A credential change: a new process version carrying the credentials read at the
        exit (when the producer read them and they did not change: no version)."""
        before, after = c.en.cred, c.ev.cred
        if before and after and before == after:
            return
        self._new_version_p(c.p, c.ev, "credentials", c.eseq)
        self._cred_attrs(c.p.node, c.ev)
        args = ", ".join(str(to_signed(c.en.args[i] & 0xFFFFFFFF, 32))
                         for i in range(len(c.sc.args)))
        self._attr(c.p.node, "cred_call", f"{c.sc.name}({args})", c.ev)

    def _signal(self, c: _Call) -> None:
        """A signal delivered to another live process: the receiver's new version was
        informed by the sender. Groups (pid <= 0), probes (signal 0), unknown receivers: the
        sender's attribute only."""
        sc = c.sc
        target, sig = c.arg(sc.at(Arg.PID)), c.arg(sc.at(Arg.SIGNAL))
        self._attr(c.p.node, "signal_sent", f"{sc.name}({target}, {sig})", c.ev)
        recv = self.procs.get(target) if target > 0 and sig > 0 else None
        if recv is None or recv.exit_seq is not None:
            return
        self._new_version_p(recv, c.ev, "signalled", c.eseq)
        if recv is not c.p:
            self._rel(INFORMED, recv.node, c.p.node, c.ev, c.eseq)
            c.p.frozen = True
        self._attr(recv.node, "signal", sig, c.ev)

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
        """socket, accept, accept4: a new endpoint artifact, generated by the caller."""
        a = self._new_art(c.ev, "socket", c.fid, None)
        self._created(c.p, a, c.ev, c.eseq)
        c.p.fds[c.ev.ret] = (a.id, 0)
        self._fd_event(c.p, c.ev, f"{c.sc.name} fd={c.ev.ret}")

    def _exec(self, p: Proc, ev: Event, en: Event, paths: list[str]) -> None:
        """execve replaces the process image: a new process version that used the binary (and
        interpreter); close-on-exec fds go; what the old image read no longer counts."""
        self._new_version_p(p, ev, "execve", en.seq if en is not ev else None)
        p.used = {}
        self.b.used_clear.add(p.id)
        self.b.used_add.pop(p.id, None)
        p.fds = {fd: ref for fd, ref in p.fds.items() if not ref[1]}
        files = ev.files  # the exit's: the new image (the entry's are execveat's dirfd)
        if files and files[0].path.startswith("/"):
            p.exe = files[0].path  # the kernel's resolution (/proc/self/exe -> the binary)
        elif paths:
            p.exe = self._abspath(p, paths[0])
        if en.argv:
            p.comm = ev.comm or p.comm
        self._cred_attrs(p.node, ev)  # a set-id binary changes them
        self._attr(p.node, "exe", p.exe, ev)
        if en.argv is not None:
            self._attr(p.node, "argv", json.dumps(en.argv, ensure_ascii=False), ev)
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
    fid: FileId | None  # what the call made (exit), else its FD argument's file (entry)
    paths: list[str]
    files: dict[int, FileId]  # the entry's FD and DIRFD files, by argument position
    early: bool = False  # a write whose generation a reader already made from its entry

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
    Family.CHMOD: Analyzer._chmod,
    Family.CHOWN: Analyzer._chown,
    Family.MKNOD: Analyzer._mknod,
    Family.CRED: Analyzer._cred,
    Family.SIGNAL: Analyzer._signal,
    Family.SOCKETPAIR: Analyzer._socketpair,
}  # NONE, EXIT and EXIT_GROUP have no exit effect (the exits are handled at their entry)


WRITE_FAMILIES = frozenset({Family.DATA_WRITE, Family.TRANSFER})


def _arg_files(sc: Syscall, en: Event) -> dict[int, FileId]:
    """The entry's files by argument position. A producer appends one per FD and DIRFD
    argument, in argument order, AT_FDCWD excepted; one it could not identify (not open,
    unreadable) is missing, and then no position is trusted."""
    pos = [i for i, k in sc.entry_reads
           if k is Arg.FD or (k is Arg.DIRFD and en.arg(i) != AT_FDCWD)]
    return dict(zip(pos, en.files, strict=True)) if len(pos) == len(en.files) else {}
