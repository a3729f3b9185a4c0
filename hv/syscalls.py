"""The x86-64 syscalls provisor traces, and what each argument register holds.

Argument kinds tell the producer what to read from guest memory (``path``: a NUL-terminated
string; ``argv``/``envp``: a NULL-terminated array of strings; ``fdpair``: an int[2] written by
the kernel, read at exit) and the analyzer how to interpret the raw register. Data buffers
(``buf``) are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

AT_FDCWD = -100


@dataclass(frozen=True)
class Syscall:
    nr: int
    name: str
    args: tuple[str, ...]

    def arg_index(self, kind: str) -> list[int]:
        return [i for i, k in enumerate(self.args) if k == kind]


_TABLE = [
    (0, "read", ("fd", "buf", "size")),
    (1, "write", ("fd", "buf", "size")),
    (2, "open", ("path", "flags", "mode")),
    (3, "close", ("fd",)),
    (9, "mmap", ("ptr", "size", "prot", "flags", "fd", "size")),
    (17, "pread64", ("fd", "buf", "size", "size")),
    (18, "pwrite64", ("fd", "buf", "size", "size")),
    (19, "readv", ("fd", "iovec", "int")),
    (20, "writev", ("fd", "iovec", "int")),
    (22, "pipe", ("fdpair",)),
    (32, "dup", ("fd",)),
    (33, "dup2", ("fd", "fd")),
    (40, "sendfile", ("fd", "fd", "ptr", "size")),
    (41, "socket", ("int", "int", "int")),
    (42, "connect", ("fd", "sockaddr", "size")),
    (43, "accept", ("fd", "sockaddr", "ptr")),
    (49, "bind", ("fd", "sockaddr", "size")),
    (56, "clone", ("flags", "ptr", "ptr", "ptr", "ptr")),
    (57, "fork", ()),
    (58, "vfork", ()),
    (59, "execve", ("path", "argv", "envp")),
    (60, "exit", ("int",)),
    (72, "fcntl", ("fd", "int", "int")),
    (76, "truncate", ("path", "size")),
    (77, "ftruncate", ("fd", "size")),
    (80, "chdir", ("path",)),
    (81, "fchdir", ("fd",)),
    (82, "rename", ("path", "path")),
    (83, "mkdir", ("path", "mode")),
    (84, "rmdir", ("path",)),
    (85, "creat", ("path", "mode")),
    (86, "link", ("path", "path")),
    (87, "unlink", ("path",)),
    (88, "symlink", ("path", "path")),
    (231, "exit_group", ("int",)),
    (257, "openat", ("dirfd", "path", "flags", "mode")),
    (258, "mkdirat", ("dirfd", "path", "mode")),
    (263, "unlinkat", ("dirfd", "path", "flags")),
    (264, "renameat", ("dirfd", "path", "dirfd", "path")),
    (265, "linkat", ("dirfd", "path", "dirfd", "path", "flags")),
    (266, "symlinkat", ("path", "dirfd", "path")),
    (275, "splice", ("fd", "ptr", "fd", "ptr", "size", "flags")),
    (276, "tee", ("fd", "fd", "size", "flags")),
    (292, "dup3", ("fd", "fd", "flags")),
    (293, "pipe2", ("fdpair", "flags")),
    (316, "renameat2", ("dirfd", "path", "dirfd", "path", "flags")),
    (322, "execveat", ("dirfd", "path", "argv", "envp", "flags")),
    (435, "clone3", ("clone_args", "size")),
]

BY_NR: dict[int, Syscall] = {nr: Syscall(nr, name, args) for nr, name, args in _TABLE}
BY_NAME: dict[str, Syscall] = {s.name: s for s in BY_NR.values()}
PROVENANCE_SET: frozenset[str] = frozenset(BY_NAME)


def name_of(nr: int) -> str:
    s = BY_NR.get(nr)
    return s.name if s else f"syscall_{nr}"


def nr_of(name: str) -> int:
    return BY_NAME[name].nr
