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
    library creates get no more than our mode). Execute bits are left to the creator: a
    umask is process-wide, and a compiler or QEMU run from the same process must still make
    programs it can run (0600 files stay 0600: they are created without x bits)."""
    return 0o077 if _mode == 0o600 else 0o027


def file_mode() -> int:
    return _mode


def _why(e: OSError) -> str:
    import errno

    if e.errno == errno.EEXIST:
        return "already exists (refusing to reuse a file provisor did not just create)"
    if e.errno == errno.ELOOP:
        return "is a symbolic link (refusing to follow it)"
    if e.errno == errno.EISDIR:
        return "is a directory"
    return e.strerror or str(e)


def _link_reason(path: str) -> str:
    try:
        return f"is a symbolic link to {os.readlink(path)} (refusing to follow it; name the " \
               "file itself)"
    except OSError:
        return "is a symbolic link (refusing to follow it)"


def _kind(mode: int) -> str:
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a character device"
            if stat.S_ISCHR(mode) else "a directory" if stat.S_ISDIR(mode) else "not regular")


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


def check_ours(path: str, st: os.stat_result | None = None, *,
               root_ok: bool = False) -> os.stat_result:
    """An existing file we may use: a regular file (not a symlink) owned by us (``root_ok``:
    or by root, for reading what a root daemon wrote, e.g. through the configured group)."""
    try:
        st = st or os.lstat(path)
    except OSError as e:
        raise FileError(path, e.strerror or str(e)) from None
    if stat.S_ISLNK(st.st_mode):
        raise FileError(path, _link_reason(path))
    if stat.S_ISDIR(st.st_mode):
        raise FileError(path, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise FileError(path, f"not a regular file ({_kind(st.st_mode)})")
    _check_owner(path, st, root_ok)
    return st


def _check_owner(path: str, st: os.stat_result, root_ok: bool = False) -> None:
    if st.st_uid != os.geteuid() and not (root_ok and st.st_uid == 0):
        raise FileError(path, f"owned by uid {st.st_uid}, not by us (uid {os.geteuid()}): "
                              "refusing a file another user may have planted")


def open_ours(path: str, flags: int = os.O_RDWR, *, foreign_ok: bool = False,
              devices: bool = False, root_ok: bool = False) -> tuple[int, os.stat_result]:
    """Open an existing file without following a symlink and check, on the open descriptor
    (no window for a swap), that it is a regular file we own; returns (fd, its stat).

    ``foreign_ok``: another user's file is accepted (an examiner reads evidence handed to
    them; only with read-only ``flags``). ``devices``: a character device is accepted too (a
    devdax device: the kernel made it, in a directory no user can plant in). ``root_ok``: a
    file of root's is accepted too (as in check_ours)."""
    if foreign_ok and flags & (os.O_WRONLY | os.O_RDWR):
        raise ValueError("foreign_ok is for read-only opening")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; cleared below
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        import errno

        if e.errno == errno.ELOOP:
            raise FileError(path, _link_reason(path)) from None
        raise FileError(path, _why(e)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileError(path, "is a directory")
        if not (stat.S_ISREG(st.st_mode) or (devices and stat.S_ISCHR(st.st_mode))):
            raise FileError(path, f"not a regular file ({_kind(st.st_mode)})")
        if not foreign_ok and stat.S_ISREG(st.st_mode):
            _check_owner(path, st, root_ok)
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def ensure_ours(path: str, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """An fd on ``path``: created exclusively (our mode and group) when absent, else our own
    existing regular file (a log appended across runs); never a planted file or a symlink."""
    import errno

    for _ in range(3):
        try:
            return create_new(path, flags)
        except FileError as e:
            if not e.reason.startswith("already exists"):
                raise
        try:
            return open_ours(path, flags)[0]
        except FileError as e:
            if e.reason != os.strerror(errno.ENOENT):  # removed in between: create it again
                raise
    raise FileError(path, "keeps appearing and disappearing (refusing it)")


def check_output(path: str) -> None:
    """Fail now, before anything is written elsewhere, if ``path`` cannot be written later:
    its directory must exist and be writable; an existing target must not be a directory, a
    symlink, another user's file or a FIFO another user may have planted."""
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
    else:
        _check_direct(path, st)


def _check_direct(path: str, st: os.stat_result) -> None:
    """A target written directly: a character device (only the kernel makes those), or a FIFO
    or block device of ours (or root's); a socket cannot be written."""
    if stat.S_ISCHR(st.st_mode):
        return
    if stat.S_ISSOCK(st.st_mode):
        raise FileError(path, "is a socket")
    if st.st_uid not in (os.geteuid(), 0):
        raise FileError(path, f"{_kind(st.st_mode)} owned by uid {st.st_uid}, not by us: "
                              "refusing to write into a file another user may have planted")


@contextmanager
def output(path: str, *, binary: bool = False) -> Iterator[IO]:
    """Write ``path`` all or nothing: a regular target (or a new one) is replaced by rename
    from a private temporary file (``O_EXCL|O_NOFOLLOW``, a random name) in its directory,
    keeping an existing target's mode and group; a device or FIFO is written directly, never
    replaced; "-" is stdout. On error nothing is left behind, and a failed write or flush of
    the target itself (ENOSPC on /dev/full) is a FileError naming it."""
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
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise FileError(path, _why(e)) from None
        try:
            fst = os.fstat(fd)
            if stat.S_ISREG(fst.st_mode):  # swapped since the check: never write it in place
                raise FileError(path, "changed while being opened (refusing it)")
            _check_direct(path, fst)
        except BaseException:
            os.close(fd)
            raise
        f = _wrap(fd, binary)
        try:
            yield f
            _flush(f, path, sync=False)
        finally:
            _close(f)
        return
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{secrets.token_hex(6)}.part")
    fd = create_new(tmp, os.O_WRONLY)
    try:
        if st is not None:
            _keep_mode(fd, st)
        f = _wrap(fd, binary)
        try:
            yield f
            _flush(f, path, sync=True)
        finally:
            _close(f)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    sync_dir(parent)


def _keep_mode(fd: int, st: os.stat_result) -> None:
    """The replacement gets the target's group and mode; when its group cannot be given to
    the new file, the group bits go rather than reach our own group."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_gid != os.fstat(fd).st_gid:
        try:
            os.fchown(fd, -1, st.st_gid)
        except OSError:
            mode &= ~0o070
    os.fchmod(fd, mode)


def _flush(f: IO, path: str, *, sync: bool) -> None:
    try:
        f.flush()
        if sync:
            os.fsync(f.fileno())
    except OSError as e:
        raise FileError(path, e.strerror or str(e)) from None


def _close(f: IO) -> None:
    try:
        f.close()
    except OSError:
        pass  # only after a failed write or flush, which is what is reported


def sync_dir(d: str) -> None:
    """Make a rename or creation in ``d`` durable (best effort)."""
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _wrap(fd: int, binary: bool) -> IO:
    raw = io.FileIO(fd, "w", closefd=True)
    buf = io.BufferedWriter(raw, 1 << 16)
    return buf if binary else io.TextIOWrapper(buf, encoding="utf-8", newline="\n")
