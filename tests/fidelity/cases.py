"""The fidelity suite's one list of syscall groups and their test cases (issue 14).

Each ``Group`` is one row of docs/FIDELITY.md (tests/fidelity/test_fidelity_doc.py checks the
table against this list) and one pattern check in tests/fidelity/test_fidelity.py. Each
``Case`` is one subcommand of tests/fidelity/probe.c, run once as ``action`` and once as
``control`` in the same guest boot.

``XFAIL`` names, per case, the missing piece that keeps its pattern from holding yet (the
analyzer and export work of issue 14 lands concurrently): the tests are marked
``xfail(strict=True)`` with that reason, so a case that starts passing fails until its entry
here is removed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str  # probe subcommand; stage dir /stage/<name>-a (action) or -c (control)
    syscalls: tuple[str, ...]  # the calls the action makes (provisor.syscalls names)
    root: bool = False  # starts as root and keeps it (credential tests); else uid 1000
    exit_status: int = 0  # the action run's expected exit status (control: always 0)


@dataclass(frozen=True)
class Group:
    name: str
    cases: tuple[Case, ...]

    @property
    def syscalls(self) -> tuple[str, ...]:
        out: list[str] = []
        for c in self.cases:
            out += [s for s in c.syscalls if s not in out]
        return tuple(out)


def _c(name: str, *syscalls: str, **kw) -> Case:
    return Case(name, syscalls, **kw)


GROUPS: tuple[Group, ...] = (
    Group("creat", (_c("creat", "creat"),)),
    Group("open", (_c("open", "open"), _c("openat", "openat"),
                   _c("open-trunc", "openat"), _c("open-append", "openat"),
                   _c("open-creat-existing", "openat"), _c("open-after-fork", "openat"))),
    Group("close", (_c("close", "close"),)),
    Group("read", (_c("read", "read"), _c("readv", "readv"),
                   _c("pread", "pread64"))),
    Group("write", (_c("write", "write"), _c("writev", "writev"),
                    _c("pwrite", "pwrite64"))),
    Group("dup", (_c("dup", "dup"), _c("dup2", "dup2"), _c("dup3", "dup3"),
                  _c("fcntl-dupfd", "fcntl"))),
    Group("link", (_c("link", "link"), _c("linkat", "linkat"))),
    Group("symlink", (_c("symlink", "symlink"), _c("symlinkat", "symlinkat"),
                      _c("open-symlink", "openat", "read"))),
    Group("mknod", (_c("mknod", "mknod"), _c("mknodat", "mknodat"),
                    _c("mkfifo", "mknodat"),
                    _c("fifo-data", "openat", "write", "read"))),
    Group("rename", (_c("rename", "rename"), _c("renameat", "renameat"),
                     _c("renameat2", "renameat2"), _c("rename-over", "rename"))),
    Group("truncate", (_c("truncate", "truncate"), _c("ftruncate", "ftruncate"))),
    Group("unlink", (_c("unlink", "unlink"), _c("unlinkat", "unlinkat"),
                     _c("rmdir", "rmdir"))),
    Group("chmod", (_c("chmod", "chmod"), _c("fchmod", "fchmod"),
                    _c("fchmodat", "fchmodat"))),
    Group("chown", (_c("chown", "chown"), _c("fchown", "fchown"),
                    _c("lchown", "lchown"), _c("fchownat", "fchownat"))),
    Group("credentials", (_c("setuid", "setuid", root=True),
                          _c("setgid", "setgid", root=True),
                          _c("setreuid", "setreuid", root=True),
                          _c("setregid", "setregid", root=True),
                          _c("setresuid", "setresuid", root=True),
                          _c("setresgid", "setresgid", root=True))),
    Group("process", (_c("fork", "fork"), _c("vfork", "vfork"),
                      _c("clone", "clone"), _c("thread", "clone", "read"))),
    Group("exec", (_c("execve", "execve"), _c("execveat", "execveat"))),
    Group("exit", (_c("exit", "exit", exit_status=7),)),
    Group("signal", (_c("kill", "kill"), _c("tkill", "tkill"))),
    Group("pipe", (_c("pipe", "pipe"), _c("pipe2", "pipe2"),
                   _c("pipe-io", "write", "read"))),
    Group("transfer", (_c("sendfile", "sendfile"),
                       _c("copy_file_range", "copy_file_range"),
                       _c("splice", "splice"), _c("tee", "tee"))),
    Group("mmap", (_c("mmap-read", "mmap"), _c("mmap-shared-write", "mmap"))),
    Group("socket", (_c("socket", "socket"), _c("socketpair", "socketpair"),
                     _c("socketpair-io", "sendmsg", "recvmsg"), _c("unix-bind", "bind"),
                     _c("unix-connect", "connect", "accept"),
                     _c("unix-io", "sendto", "recvfrom"),
                     _c("tcp-connect", "connect", "accept"),
                     _c("tcp-io", "sendto", "recvfrom"),
                     _c("udp-io", "sendto", "recvfrom"),
                     _c("udp-connected-io", "sendto", "recvfrom"))),
    Group("failed", (_c("fail-enoent", "openat"), _c("fail-ebadf", "write"),
                     _c("fail-eacces", "openat"))),
)

CASES: dict[str, Case] = {c.name: c for g in GROUPS for c in g.cases}
GROUP_OF: dict[str, Group] = {c.name: g for g in GROUPS for c in g.cases}

# case -> the missing piece (xfail strict): what main does not capture yet; the same cases fail
# under both producers
XFAIL: dict[str, str] = {}
