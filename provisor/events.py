"""The syscall event: what the hypervisor side writes into the ring as an EVENT record.

One module for hv/ (encode), daemon/ and recovery/ (decode). The encoding is a fixed
little-endian struct followed by tagged, length-prefixed fields; version 1 is described in
docs/FORMAT.md ("EVENT payload"). No pickle, no JSON: decoding untrusted bytes can only raise
EventDecodeError.

Strings: every string field (comm, cwd, paths, argv, envp, FileId.path) holds *guest text*
(provisor/guesttext.py): ``decode`` escapes the TLV bytes, ``encode`` unescapes them, so the
ring holds the guest's exact bytes and a payload ``encode`` made re-encodes byte for byte after
``decode``. A producer that has bytes calls ``guesttext.escape`` on them (docs/FORMAT.md,
"Guest strings").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields

from provisor.abi import to_signed
from provisor.errors import ProvisorError
from provisor.guesttext import escape, unescape
from provisor.native import mod as _native
from provisor.syscalls import name_of

EVENT_VERSION = 1
ENTRY, EXIT = 0, 1

# flags
F_HAS_RET = 1 << 0
F_CWD_UNREADABLE = 1 << 1
F_PATH_UNREADABLE = 1 << 2
F_ARGV_UNREADABLE = 1 << 3
F_TASK_UNREADABLE = 1 << 4
F_FILE_UNREADABLE = 1 << 5
F_TRUNCATED = 1 << 6  # a string or list hit its bound
F_COMPAT = 1 << 7  # entered through the 32-bit ABI (int 0x80, sysenter, compat syscall)
F_SOCK_UNREADABLE = 1 << 8  # a socket file's endpoint could not be read (no SOCK field for it)
F_ADDR_UNREADABLE = 1 << 9  # a socket address argument could not be read (no ADDR field)

_FIXED = struct.Struct("<BBHHHQQIIIIQqQ6Q")
_TLV = struct.Struct("<BH")
_FILE = struct.Struct("<QQ")
_I32 = struct.Struct("<i")
_CRED = struct.Struct("<8I")
_SOCK = struct.Struct("<HHHHQQ")  # file index, family, type, local length, sk, peer
_U16 = struct.Struct("<H")

_FIXED_SIZE = _FIXED.size
_unpack_fixed = _FIXED.unpack_from
_unpack_tlv = _TLV.unpack_from

T_COMM, T_CWD, T_PATH, T_ARGV, T_ENVP, T_FILE, T_OUTFD = 1, 2, 3, 4, 5, 6, 7
T_CRED, T_SOCK, T_ADDR = 8, 9, 10
MAX_FIELD = 0xFFFF
MAX_SOCK_ADDR = 108  # producers' bound on an endpoint's local or remote text (sun_path)
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
ADDR_FAMILIES = (AF_UNIX, AF_INET, AF_INET6)  # the families an ADDR field may carry


class EventDecodeError(ProvisorError, ValueError):
    """A payload that is not a valid version-1 event."""


# the store's integers are signed 64-bit (SQLite INTEGER, PostgreSQL BIGINT): an entry_seq,
# ts_ns, start_time, cwd_mnt, device or inode of 2^63 or more (no real kernel makes one) is
# refused here, so the record is kept as a note, never a daemon stopped by a guest's value
_TOO_BIG = ("a stored 64-bit field (entry_seq, ts_ns, start_time, cwd_mnt, dev, ino) is 2^63 "
            "or more")


@dataclass(frozen=True, slots=True)
class FileId:
    """A file as the kernel knows it: device, inode, and the kernel's own path (d_path)."""

    dev: int
    ino: int
    path: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a socket in ``Event.files`` is connected to, as its struct sock has it."""

    file: int      # index into Event.files of the socket described
    family: int    # AF_UNIX=1, AF_INET=2, AF_INET6=10 (skc_family)
    type: int      # SOCK_STREAM=1, SOCK_DGRAM=2, ... (sk_type)
    local: str     # "127.0.0.1:5000", "[::1]:80"; AF_UNIX: bound path or "" (guest text)
    remote: str    # peer address "ip:port"; "" when not connected
    sk: int        # kernel address of this socket's struct sock (identity while it is open)
    peer: int      # AF_UNIX: the peer's struct sock address (unix_sock.peer), else 0


@dataclass(slots=True)
class Event:
    nr: int
    phase: int = ENTRY
    ts_ns: int = 0
    vcpu: int = 0
    entry_seq: int = 0  # on an exit: the sequence number of its entry
    tgid: int = 0
    pid: int = 0
    ppid: int = 0
    uid: int = 0
    start_time: int = 0  # task start time (ns since boot): tells reused PIDs apart
    ret: int | None = None
    cwd_mnt: int = 0  # identity of the mount holding the CWD (the seed's "volume ID")
    args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    flags: int = 0
    comm: str = ""
    cwd: str | None = None
    paths: list[str] = field(default_factory=list)
    argv: list[str] | None = None
    envp: list[str] | None = None
    files: list[FileId] = field(default_factory=list)
    out_fds: list[int] = field(default_factory=list)
    seq: int = 0  # the ring sequence number (from the record, not the payload)
    payload: bytes = b""  # the encoded form, as decoded (kept for the store)
    # (uid, gid, suid, sgid, euid, egid, fsuid, fsgid) from task->cred at that moment (entry:
    # before the call, exit: after it); None when the task was unreadable
    cred: tuple[int, ...] | None = None
    endpoints: list[Endpoint] = field(default_factory=list)  # one per socket in files
    # the socket address argument (connect, bind, sendto's destination) read at entry, as
    # text like Endpoint.local ("127.0.0.1:5000", "[::1]:80", a unix path); None: none read
    addr: str | None = None
    addr_family: int = 0  # its sa_family (AF_UNIX, AF_INET, AF_INET6) when addr is not None

    @property
    def name(self) -> str:
        return name_of(self.nr)

    def arg(self, i: int) -> int:
        """Argument register ``i`` as a signed 64-bit integer (fds, AT_FDCWD, flags)."""
        return to_signed(self.args[i])


_s = unescape  # guest text -> the guest's bytes


def encode(ev: Event) -> bytes:
    """Encode an event; a field longer than 65535 bytes is cut there and F_TRUNCATED set."""
    flags = ev.flags | (F_HAS_RET if ev.ret is not None else 0)
    args = tuple(a & 0xFFFFFFFFFFFFFFFF for a in ev.args) + (0,) * (6 - len(ev.args))
    parts: list[bytes] = [b""]

    def put(tag: int, data: bytes) -> None:
        nonlocal flags
        if len(data) > MAX_FIELD:
            data = data[:MAX_FIELD]
            flags |= F_TRUNCATED
        parts.append(_TLV.pack(tag, len(data)))
        parts.append(data)

    if ev.comm:
        put(T_COMM, _s(ev.comm))
    if ev.cwd is not None:
        put(T_CWD, _s(ev.cwd))
    for p in ev.paths:
        put(T_PATH, _s(p))
    for a in ev.argv or ():
        put(T_ARGV, _s(a))
    for a in ev.envp or ():
        put(T_ENVP, _s(a))
    for f in ev.files:
        put(T_FILE, _FILE.pack(f.dev, f.ino) + _s(f.path))
    for fd in ev.out_fds:
        put(T_OUTFD, _I32.pack(fd))
    if ev.cred is not None:
        put(T_CRED, _CRED.pack(*ev.cred))
    for ep in ev.endpoints:
        local = _s(ep.local)
        put(T_SOCK, _SOCK.pack(ep.file, ep.family, ep.type, len(local), ep.sk, ep.peer)
            + local + _s(ep.remote))
    if ev.addr is not None:
        put(T_ADDR, _U16.pack(ev.addr_family) + _s(ev.addr))
    parts[0] = _FIXED.pack(
        EVENT_VERSION, ev.phase, ev.vcpu, ev.nr, flags, ev.entry_seq, ev.ts_ns, ev.tgid,
        ev.pid, ev.ppid, ev.uid, ev.start_time, ev.ret or 0, ev.cwd_mnt, *args[:6])
    return b"".join(parts)


def decode(data: bytes, seq: int = 0) -> Event:
    """Decode an EVENT payload; EventDecodeError on anything malformed. The native decoder
    takes every well-formed payload; what it refuses, ``decode_py`` decodes or explains."""
    if _native is not None and type(data) is bytes:
        ev = _native.decode(data, seq)
        if ev is not None:
            return ev
    return decode_py(data, seq)


def decode_py(data: bytes, seq: int = 0) -> Event:
    """``decode`` in Python: the specification of the native decoder."""
    try:
        end = len(data)
        if end < _FIXED_SIZE:
            raise EventDecodeError(f"event payload too short ({end} bytes)")
        (version, phase, vcpu, nr, flags, entry_seq, ts, tgid, pid, ppid, uid, start, ret,
         mnt, a0, a1, a2, a3, a4, a5) = _unpack_fixed(data)
        if version != EVENT_VERSION:
            raise EventDecodeError(f"unknown event version {version}")
        if phase > EXIT:
            raise EventDecodeError(f"bad phase {phase}")
        if (entry_seq | ts | start | mnt) >> 63:
            raise EventDecodeError(_TOO_BIG)
        comm, cwd = "", None
        paths: list[str] = []
        files: list[FileId] = []
        out_fds: list[int] = []
        argv: list[str] | None = None
        envp: list[str] | None = None
        cred: tuple[int, ...] | None = None
        endpoints: list[Endpoint] = []
        addr: str | None = None
        addr_family = 0
        off = _FIXED_SIZE
        while off < end:
            if off + 3 > end:
                raise EventDecodeError("truncated field header")
            tag, n = _unpack_tlv(data, off)
            off += 3
            nxt = off + n
            if nxt > end:
                raise EventDecodeError("field runs past the payload")
            if tag == T_PATH:
                paths.append(escape(data[off:nxt]))
            elif tag == T_FILE:
                if n < 16:
                    raise EventDecodeError("short file identity")
                dev, ino = _FILE.unpack_from(data, off)
                if (dev | ino) >> 63:
                    raise EventDecodeError(_TOO_BIG)
                files.append(FileId(dev, ino, escape(data[off + 16:nxt])))
            elif tag == T_COMM:
                comm = escape(data[off:nxt])
            elif tag == T_CWD:
                cwd = escape(data[off:nxt])
            elif tag == T_OUTFD:
                if n != 4:
                    raise EventDecodeError("bad fd field")
                out_fds.append(_I32.unpack_from(data, off)[0])
            elif tag == T_ARGV:
                argv = (argv or [])
                argv.append(escape(data[off:nxt]))
            elif tag == T_ENVP:
                envp = (envp or [])
                envp.append(escape(data[off:nxt]))
            elif tag == T_CRED:
                if n != _CRED.size or cred is not None:
                    raise EventDecodeError("bad or repeated cred field")
                cred = _CRED.unpack_from(data, off)
            elif tag == T_SOCK:
                if n < _SOCK.size:
                    raise EventDecodeError("short socket field")
                fi, fam, typ, ln, sk, peer = _SOCK.unpack_from(data, off)
                a = off + _SOCK.size
                if ln > nxt - a:
                    raise EventDecodeError("socket address runs past its field")
                if endpoints and fi <= endpoints[-1].file:
                    raise EventDecodeError("socket fields out of file order")
                endpoints.append(Endpoint(fi, fam, typ, escape(data[a:a + ln]),
                                          escape(data[a + ln:nxt]), sk, peer))
            elif tag == T_ADDR:
                if not 2 <= n <= 2 + MAX_SOCK_ADDR or addr is not None:
                    raise EventDecodeError("bad or repeated address field")
                addr_family = _U16.unpack_from(data, off)[0]
                if addr_family not in ADDR_FAMILIES:
                    raise EventDecodeError(f"address field of family {addr_family}")
                addr = escape(data[off + 2:nxt])
            else:
                raise EventDecodeError(f"unknown field tag {tag}")
            off = nxt
        if endpoints and endpoints[-1].file >= len(files):
            raise EventDecodeError("socket field of a file the event lacks")
        return Event(nr, phase, ts, vcpu, entry_seq, tgid, pid, ppid, uid, start,
                     ret if flags & F_HAS_RET else None, mnt, (a0, a1, a2, a3, a4, a5),
                     flags & ~F_HAS_RET, comm, cwd, paths, argv, envp, files, out_fds, seq,
                     data, cred, endpoints, addr, addr_family)
    except EventDecodeError:
        raise
    except Exception as e:  # struct.error and friends: still a clean, typed error
        raise EventDecodeError(f"malformed event: {e}") from None


if _native is not None:  # native.c builds these types slot by slot: it checks their fields
    _native.setup_event(Event, tuple(f.name for f in fields(Event)), FileId,
                        tuple(f.name for f in fields(FileId)), Endpoint,
                        tuple(f.name for f in fields(Endpoint)), escape)
