"""Role locks held for a process's life: one producer and one consumer per ring, one writer per
store (docs/SECURITY.md, "Operator mistakes").

Open-file-description locks (``F_OFD_SETLK``): the kernel drops them when the holder dies
(SIGKILL included), so a crash never leaves a stale lock; and unlike POSIX record locks they are
not dropped when the process closes *another* descriptor of the same file (libpmem's
``pmem_map_file`` and recovery's image hash both open and close the ring). Each role locks one
byte of the file, so the producer and the consumer of a ring hold different bytes of the same
file and do not exclude each other. The store's byte lies far beyond SQLite's own lock bytes
(at 1 GiB), so the two never interact. The native plugin takes the producer byte the same way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from provisor.errors import ProvisorError

RING_PRODUCER = 0  # byte 0 of the ring image
RING_CONSUMER = 1  # byte 1 of the ring image
STORE_WRITER = 1 << 40  # one byte of the SQLite file, far beyond its own lock bytes

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on x86-64/aarch64 Linux: type, whence, start, len, pid


class LockError(ProvisorError):
    """The role is held by another process (``holder`` is its pid when it could be found)."""

    def __init__(self, message: str, path: str, role: str, holder: int | None) -> None:
        super().__init__(message)
        self.path, self.role, self.holder = path, role, holder


@dataclass
class Lock:
    """A held role; ``release`` (or process exit) gives it up."""

    path: str
    offset: int
    role: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock(kind: int, offset: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0)


def acquire(path: str, offset: int, role: str) -> Lock:
    """Take ``role`` (one byte at ``offset``) on ``path`` or raise LockError naming the
    holder. The file must exist; it is opened without following a symlink."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ProvisorError(f"{path}: cannot open to lock it ({e.strerror})") from None
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, offset))
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise ProvisorError(f"{path}: cannot lock ({e.strerror})") from None
        pid = holder(path, offset)
        who = f"pid {pid}" if pid else "another process"
        raise LockError(f"{path}: {role} already running ({who}); one {role} at a time",
                        path, role, pid) from None
    return Lock(path, offset, role, fd)


def is_held(path: str, offset: int) -> bool:
    """True when some open file description holds the byte (ours included)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, offset))
        return _FLOCK.unpack(got)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


def holder(path: str, offset: int) -> int | None:
    """The pid of a process holding the byte, from /proc/PID/fdinfo (OFD locks show no pid in
    /proc/locks); None when it is not visible (another user's process, no /proc)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} {offset} {offset}"
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        base = f"/proc/{pid}/fdinfo"
        try:
            fds = os.listdir(base)
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"{base}/{fd}") as f:
                    info = f.read()
            except OSError:
                continue
            if "OFDLCK" in info and any(line.startswith("lock:") and line.endswith(ident)
                                        for line in info.splitlines()):
                return int(pid)
    return None
