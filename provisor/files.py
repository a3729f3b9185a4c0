"""Files provisor creates or writes: private, never through a planted name (docs/SECURITY.md).

Everything is created 0600 (auditd's default), or 0640 when ``[files] group`` is configured,
with ``O_CREAT|O_EXCL|O_NOFOLLOW``: a name another local user planted in a world-writable
directory (/dev/shm is the default) is refused, never reused or followed. An existing file is
used only when it is a regular file, not a symlink, owned by us. Outputs are replaced
atomically through a temporary file made the same way in the target's directory, keeping the
target's mode; a target that is not a regular file (/dev/stdout, /dev/full, a FIFO) is written
directly, never replaced.
"""

from __future__ import annotations

import io
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from provisor.errors import ProvisorError

_mode = 0o600
_gid: int | None = None


class FileError(ProvisorError):
    """A file provisor will not create, use or write (one line, names the file)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def set_group(group: str | int | None) -> None:
    """Files created from now on are 0640 and belong to ``group`` (name or gid); None or ""
    means 0600 and our own group."""
    global _mode, _gid
    if group in (None, ""):
        _mode, _gid = 0o600, None
        return
    if isinstance(group, int):
        gid = group
    else:
        import grp

        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ProvisorError(f"files.group: no such group {group!r}") from None
    _mode, _gid = 0o640, gid


def umask() -> int:
    """The process umask that goes with the policy (SQLite's -wal/-shm and every other file a
    library creates get no more than our mode)."""
    return 0o777 & ~_mode


def file_mode() -> int:
    return _mode


def _why(e: OSError) -> str:
    import errno

    if e.errno == errno.EEXIST:
        return "already exists (refusing to reuse a file provisor did not just create)"
    if e.errno == errno.ELOOP:
        return "is a symbolic link (refusing to follow it)"
    return e.strerror or str(e)


def create_new(path: str, flags: int = os.O_RDWR) -> int:
    """Create ``path`` exclusively with our mode and group; returns the open fd."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _mode)
    except OSError as e:
        raise FileError(path, _why(e)) from None
    try:
        os.fchmod(fd, _mode)  # exact, whatever the umask
        if _gid is not None:
            os.fchown(fd, -1, _gid)
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise FileError(path, f"cannot set mode or group ({e.strerror})") from None
    return fd


def check_ours(path: str, st: os.stat_result | None = None) -> os.stat_result:
    """An existing file we may use: a regular file (not a symlink) owned by us."""
    try:
        st = st or os.lstat(path)
    except OSError as e:
        raise FileError(path, e.strerror or str(e)) from None
    if stat.S_ISLNK(st.st_mode):
        raise FileError(path, "is a symbolic link (refusing to follow it)")
    if not stat.S_ISREG(st.st_mode):
        raise FileError(path, "not a regular file")
    if st.st_uid != os.geteuid():
        raise FileError(path, f"owned by uid {st.st_uid}, not by us (uid {os.geteuid()}): "
                              "refusing a file another user may have planted")
    return st


def check_output(path: str) -> None:
    """Fail now, before anything is written elsewhere, if ``path`` cannot be written later:
    its directory must exist and be writable; an existing target must not be a directory, a
    symlink or another user's file."""
    if path == "-":
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileError(path, f"directory {parent} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise FileError(path, f"directory {parent} is not writable") from None
        return
    except OSError as e:
        raise FileError(path, e.strerror or str(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise FileError(path, "is a directory")
    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        check_ours(path, st)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise FileError(path, f"directory {parent} is not writable")


@contextmanager
def output(path: str, *, binary: bool = False) -> Iterator[IO]:
    """Write ``path`` all or nothing: a regular target (or a new one) is replaced by rename
    from a private temporary file in its directory, keeping an existing target's mode; a
    device or FIFO is written directly; "-" is stdout. On error nothing is left behind."""
    import sys

    if path == "-":
        out = sys.stdout.buffer if binary else sys.stdout
        yield out
        out.flush()
        return
    check_output(path)
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise FileError(path, e.strerror or str(e)) from None
        f = _wrap(fd, binary)
        with f:
            yield f
            f.flush()
        return
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{secrets.token_hex(6)}.part")
    fd = create_new(tmp, os.O_WRONLY)
    try:
        if st is not None:
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        f = _wrap(fd, binary)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _wrap(fd: int, binary: bool) -> IO:
    raw = io.FileIO(fd, "w", closefd=True)
    buf = io.BufferedWriter(raw, 1 << 16)
    return buf if binary else io.TextIOWrapper(buf, encoding="utf-8", newline="\n")
