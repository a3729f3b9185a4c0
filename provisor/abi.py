"""The x86-64 Linux ABI numbers provisor interprets, and the one signed conversion.

Every producer and the analyzer take these from here, so a flag means the same thing on both
sides of the ring. Values are the kernel's (include/uapi); open flags are octal as in fcntl.h.
"""

from __future__ import annotations

# open(2) flags
O_RDONLY, O_WRONLY, O_RDWR = 0, 0o1, 0o2
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o100, 0o200, 0o1000, 0o2000
O_DIRECTORY, O_CLOEXEC = 0o200000, 0o2000000

# fcntl(2) commands and the fd flag
F_DUPFD, F_GETFD, F_SETFD, F_DUPFD_CLOEXEC = 0, 1, 2, 1030
FD_CLOEXEC = 1

# *at(2) directory fds and flags
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = 0x100, 0x200, 0x400, 0x1000

# clone(2) flags (the low byte is the exit signal)
SIGCHLD = 17
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM, CLONE_SETTLS = 0x10000, 0x40000, 0x80000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x100000, 0x200000, 0x1000000

# file types in a mode (mknod(2), stat(2))
S_IFMT, S_IFIFO, S_IFCHR, S_IFDIR, S_IFBLK, S_IFREG, S_IFSOCK = (
    0o170000, 0o010000, 0o020000, 0o040000, 0o060000, 0o100000, 0o140000)

# mmap(2)
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE = 1, 2


def to_signed(v: int, bits: int = 64) -> int:
    """A register (or any ``bits``-wide word) read as two's complement: the guest's -1, -100
    (AT_FDCWD) and -errno arrive as large unsigned numbers."""
    return v - (1 << bits) if v >= 1 << (bits - 1) else v
