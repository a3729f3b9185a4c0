"""The one syscall table: its rows fit their families, the C plugin's header is generated from
it (and says the same when compiled), shared code never imports the hypervisor package, and a
new row needs no code."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from eventscript import Script
from test_analyzer import labels

from daemon.apply import Applier
from hv import eventbuild
from provisor import events as E
from provisor import syscalls as S
from provisor.abi import AT_FDCWD, O_CLOEXEC, O_CREAT, O_TRUNC, O_WRONLY, to_signed
from provisor.syscalls import BY_NAME, BY_NR, BY_NR32, Arg, Family, Syscall, Trait

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "hv" / "plugin" / "syscalls.h"
ASM = Path("/usr/include/x86_64-linux-gnu/asm")  # Debian's linux-libc-dev


# -- the table ---------------------------------------------------------------------------------
def test_rows_are_unique_and_fit_the_registers() -> None:
    assert len(BY_NR) == len(BY_NAME) == len(S._TABLE) == 80
    for s in S._TABLE:
        assert len(s.args) <= 6, s.name
        assert BY_NR[s.nr] is BY_NAME[s.name] is s
        assert S.name_of(s.nr) == s.name and S.nr_of(s.name) == s.nr
    assert S.name_of(999) == "syscall_999"


def test_nr32_rows_are_unique_and_indexed() -> None:
    with32 = [s for s in S._TABLE if s.nr32 is not None]
    assert len({s.nr32 for s in with32}) == len(with32), "two rows share an nr32"
    assert len(BY_NR32) == len(with32)
    for s in with32:
        assert BY_NR32[s.nr32] is s, s.name
    assert BY_NAME["accept"].nr32 is None  # i386 has it only through socketcall
    assert BY_NAME["read"].nr32 == 3 and BY_NAME["mmap"].nr32 == 192


# the i386 call a row's nr32 names when it is not the x86-64 name: same kinds, same order
_I386_NAME = {"mmap": "mmap2", "fcntl": "fcntl64", "sendfile": "sendfile64",
              **{n: n + "32" for n in ("chown", "fchown", "lchown", "setuid", "setgid",
                                      "setreuid", "setregid", "setresuid", "setresgid",
                                      "setfsuid", "setfsgid")}}


def _unistd(path: Path) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in
            re.finditer(r"^#define __NR_(\w+)\s+(\d+)\s*$", path.read_text(), re.M)}


@pytest.mark.skipif(not (ASM / "unistd_32.h").exists() or not (ASM / "unistd_64.h").exists(),
                    reason=f"needs {ASM}/unistd_32.h and unistd_64.h (linux-libc-dev)")
def test_numbers_match_the_kernel_headers() -> None:
    nr64, nr32 = _unistd(ASM / "unistd_64.h"), _unistd(ASM / "unistd_32.h")
    assert nr64["read"] == 0 and nr32["read"] == 3  # the headers parsed
    for s in S._TABLE:
        assert nr64.get(s.name) == s.nr, f"{s.name}: nr {s.nr}, unistd_64.h {nr64.get(s.name)}"
        name32 = _I386_NAME.get(s.name, s.name)
        if s.nr32 is None:  # none only when i386 has no call of that name
            assert name32 not in nr32, f"{s.name}: i386 has __NR_{name32} {nr32[name32]}"
        else:
            assert nr32.get(name32) == s.nr32, \
                f"{s.name}: nr32 {s.nr32}, unistd_32.h __NR_{name32} {nr32.get(name32)}"


def test_path_pairs_are_derived_from_the_kinds() -> None:
    assert BY_NAME["open"].path_pairs == ((None, 0),)
    assert BY_NAME["openat"].path_pairs == ((0, 1),)
    assert BY_NAME["renameat2"].path_pairs == ((0, 1), (2, 3))
    assert BY_NAME["symlinkat"].path_pairs == ((None, 0), (1, 2))  # target, then the new name
    assert BY_NAME["openat"].flags_arg == 2 and BY_NAME["dup3"].flags_arg == 2
    assert BY_NAME["creat"].flags_arg is None
    assert BY_NAME["creat"].implied_flags == O_CREAT | O_WRONLY | O_TRUNC
    assert BY_NAME["mmap"].fd_arg == 4
    for s in S._TABLE:  # every DIRFD qualifies the PATH right after it
        for i, k in enumerate(s.args):
            if k is Arg.DIRFD:
                assert s.args[i + 1] is Arg.PATH, s.name


# what each family's handler (daemon/analyzer.py) and the producers read from a row
_NEEDS = {
    Family.DATA_READ: lambda s: s.fd_arg is not None and s.has(Trait.READS_DATA),
    Family.DATA_WRITE: lambda s: s.fd_arg is not None and s.has(Trait.WRITES_DATA),
    Family.OPEN: lambda s: len(s.path_pairs) == 1 and s.has(Trait.RETURNS_FD)
    and (s.flags_arg is not None or s.implied_flags is not None),
    Family.CLOSE: lambda s: s.fd_arg is not None,
    Family.DUP: lambda s: s.fd_arg is not None and s.has(Trait.RETURNS_FD),
    Family.FCNTL: lambda s: None not in (s.fd_arg, s.at(Arg.FCNTL_CMD), s.at(Arg.INT)),
    Family.PIPE: lambda s: s.at(Arg.FDPAIR) is not None,
    Family.FORK: lambda s: True,
    Family.EXEC: lambda s: bool(s.path_pairs) and s.has(Trait.EXECS),
    Family.EXIT: lambda s: s.has(Trait.NO_RETURN),
    Family.EXIT_GROUP: lambda s: s.has(Trait.NO_RETURN),
    Family.MMAP: lambda s: None not in (s.fd_arg, s.at(Arg.PROT), s.at(Arg.MAP_FLAGS)),
    Family.TRUNCATE: lambda s: (bool(s.path_pairs) or s.fd_arg is not None)
    and s.at(Arg.SIZE) is not None,
    Family.TRANSFER: lambda s: s.xfer is not None
    and all(s.args[i] is Arg.FD for i in s.xfer),
    Family.RENAME: lambda s: len(s.path_pairs) == 2 and s.has(Trait.MOVES_NAME),
    Family.LINK: lambda s: len(s.path_pairs) == 2,
    Family.SYMLINK: lambda s: len(s.path_pairs) == 2,
    Family.UNLINK: lambda s: len(s.path_pairs) == 1,
    Family.CHDIR: lambda s: (bool(s.path_pairs) or s.fd_arg is not None)
    and s.has(Trait.CHANGES_CWD),
    Family.SOCKET: lambda s: s.has(Trait.RETURNS_FD),
    Family.CHMOD: lambda s: (bool(s.path_pairs) or s.fd_arg is not None)
    and s.at(Arg.MODE) is not None,
    Family.CHOWN: lambda s: (bool(s.path_pairs) or s.fd_arg is not None)
    and None not in (s.at(Arg.UID), s.at(Arg.GID)),
    Family.MKNOD: lambda s: len(s.path_pairs) == 1 and s.at(Arg.MODE) is not None,
    Family.CRED: lambda s: s.at(Arg.UID) is not None or s.at(Arg.GID) is not None,
    Family.SIGNAL: lambda s: None not in (s.at(Arg.PID), s.at(Arg.SIGNAL)),
    Family.SOCKETPAIR: lambda s: s.at(Arg.FDPAIR) is not None,
    Family.NONE: lambda s: True,
}


def test_every_row_has_what_its_family_reads() -> None:
    assert set(_NEEDS) == set(Family)
    for s in S._TABLE:
        assert _NEEDS[s.family](s), s
        assert (s.xfer is not None) == (s.family is Family.TRANSFER), s.name


def test_every_family_with_an_effect_has_a_handler() -> None:
    from daemon.analyzer import _HANDLERS
    assert set(_HANDLERS) == set(Family) - {Family.NONE, Family.EXIT, Family.EXIT_GROUP}


def test_to_signed() -> None:
    assert to_signed(2**64 - 100) == AT_FDCWD and to_signed(5) == 5
    assert to_signed(0xFFFFFF9C, 32) == -100 and to_signed(2**63) == -2**63
    ev = E.Event(0, args=(2**64 - 1, 3, 0, 0, 0, 0))
    assert ev.arg(0) == -1 and ev.arg(1) == 3


def test_normalize_args_sign_extends_every_fd_kind() -> None:
    zero_ext = 0xFFFFFF9C  # AT_FDCWD as a 32-bit int, zero-extended
    at = eventbuild.normalize_args(BY_NAME["openat"], (zero_ext, 0x1000, 0, 0, 0, 0))
    assert to_signed(at[0]) == AT_FDCWD and at[1] == 0x1000
    dup2 = eventbuild.normalize_args(BY_NAME["dup2"], (1 << 32 | 3, 1 << 32 | 1, 0, 0, 0, 0))
    assert dup2[:2] == (3, 1)  # NEWFD too: a C int


# -- the C header --------------------------------------------------------------------------
def test_committed_header_is_generated_from_the_table() -> None:
    assert HEADER.read_text() == S.c_header(), \
        "hv/plugin/syscalls.h differs from provisor/syscalls.py: run make hv/plugin/syscalls.h"


def test_header_generator_cli(tmp_path, capsys) -> None:
    out = tmp_path / "s.h"
    assert S.main(["--c-header", str(out)]) == 0
    assert out.read_text() == S.c_header()
    assert S.main([]) == 2


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_compiled_header_agrees_with_the_table(tmp_path) -> None:
    """The table as C reads it, printed and compared row by row with the Python table."""
    prog = tmp_path / "dump.c"
    prog.write_text(r"""
#include <stdio.h>
#include "syscalls.h"
int main(void) {
    for (int i = 0; i < PV_SYSCALL_COUNT; i++) {
        const struct pv_syscall *s = &pv_syscalls[i];
        printf("%u %d %s %u %u %u", s->nr, s->nr32, s->name, s->family, s->traits,
               s->nargs);
        for (int j = 0; j < s->nargs; j++) printf(" a%u", s->args[j]);
        for (int j = 0; j < s->npaths; j++) printf(" p%d:%d", s->paths[j].dirfd, s->paths[j].path);
        printf(" f%d i%lld x%d:%d\n", s->flags_arg, (long long)s->implied_flags, s->xfer_in,
               s->xfer_out);
    }
    return 0;
}
""")
    exe = tmp_path / "dump"
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{HEADER.parent}",
                    str(prog), "-o", str(exe)], check=True)
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout

    def c(v: int | None) -> int:
        return -1 if v is None else v

    want = []
    for s in S._TABLE:
        xin, xout = s.xfer or (None, None)
        want.append(" ".join([
            f"{s.nr} {c(s.nr32)} {s.name} {s.family.value} {s.traits.value} {len(s.args)}",
            *(f"a{a.value}" for a in s.args),
            *(f"p{c(d)}:{p}" for d, p in s.path_pairs),
            f"f{c(s.flags_arg)} i{c(s.implied_flags)} x{c(xin)}:{c(xout)}"]) + "\n")
    assert got == "".join(want)


# -- data flows one way ----------------------------------------------------------------------
# the command root registers every package's commands, the hypervisor side's included
_COMPOSITION_ROOT = {"provisor/cli.py"}


def _imports(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            mods.add(node.module)
    return mods


def test_shared_and_daemon_code_never_import_hv() -> None:
    bad = []
    for pkg in ("provisor", "daemon", "recovery", "pmem"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in _COMPOSITION_ROOT:
                continue
            bad += [f"{rel}: {m}" for m in _imports(path) if m == "hv" or m.startswith("hv.")]
    assert not bad, "shared, daemon, recovery and pmem code must not import hv/: " + str(bad)


def test_the_import_walk_sees_hv_imports(tmp_path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import os\ndef g():\n    from hv.memory import Unreadable\n    import hv\n")
    assert {"hv", "hv.memory", "os"} <= _imports(f)


# -- a new syscall is one row ------------------------------------------------------------------
READ_AGAIN = Syscall(1000, "read_again", (Arg.FD, Arg.BUF, Arg.SIZE), Family.DATA_READ,
                     Trait.READS_DATA)
# an open with its arguments in an order no real call has: positions come from the row
OPEN_ODD = Syscall(1001, "open_odd", (Arg.FLAGS, Arg.DIRFD, Arg.PATH), Family.OPEN,
                   Trait.RETURNS_FD)


@pytest.fixture
def new_rows(monkeypatch):
    for row in (READ_AGAIN, OPEN_ODD):
        monkeypatch.setitem(BY_NR, row.nr, row)
        monkeypatch.setitem(BY_NAME, row.name, row)


def test_the_analyzer_handles_a_new_row_with_no_code(new_rows, tmp_path) -> None:
    sc = Script()
    sc.call(1, "openat", (AT_FDCWD, 0, 0, 0), ["/data"], 5, [E.FileId(8, 40, "/data")])
    sc.call(1, "open_odd", (O_CLOEXEC, 5, 0), ["in"], 3, [E.FileId(8, 41, "/data/in")])
    sc.call(1, "read_again", (3, 0, 10), (), 10)
    sc.open(1, "out", O_WRONLY | O_CREAT | O_TRUNC, fd=4, ino=42)
    sc.call(1, "write", (4, 0, 10), (), 10)
    s = Applier(str(tmp_path / "p.db"), "test-ring")
    try:
        s.apply(sc.records)
        rel = labels(s)
        names = {n for (n,) in s.conn.execute("SELECT name FROM events")}
    finally:
        s.close()
    assert {"open_odd", "read_again"} <= names
    assert ("used", "p1.v1", "file:/data/in.v1") in rel  # the path resolved against fd 5
    assert ("wasDerivedFrom", "file:/w/out.v1", "file:/data/in.v1") in rel


class _Mem:
    """An eventbuild.Source over a dict of strings and an fd table."""

    def __init__(self, strings: dict[int, str], fds: dict[int, E.FileId]) -> None:
        self.strings, self.fds = strings, fds

    def user_space(self) -> bool:
        return True

    def string(self, va: int) -> tuple[str | None, bool]:
        return self.strings.get(va), False

    def strv(self, va: int) -> tuple[list[str] | None, bool, bool]:
        return None, False, True

    def ints(self, va: int, count: int) -> list[int] | None:
        return None

    def fd_file(self, fd: int) -> E.FileId | None:
        return self.fds.get(fd)

    def exe_file(self) -> E.FileId | None:
        return None

    def cwd(self) -> tuple[str | None, int]:
        return None, 0


def test_the_producer_builder_handles_a_new_row_with_no_code(new_rows) -> None:
    d, f = E.FileId(8, 40, "/data"), E.FileId(8, 41, "/data/in")
    src = _Mem({0x1000: "in"}, {5: d, 3: f})
    en = E.Event(OPEN_ODD.nr, E.ENTRY, args=(O_CLOEXEC, 5, 0x1000, 0, 0, 0))
    eventbuild.read_entry(OPEN_ODD, en, src)
    assert en.paths == ["in"] and en.files == [d] and en.flags == 0
    ex = E.Event(OPEN_ODD.nr, E.EXIT, args=en.args, ret=3)
    eventbuild.read_exit(OPEN_ODD, ex, src)  # RETURNS_FD: the new fd is identified
    assert ex.files == [f]
    assert E.decode(E.encode(ex)).name == "open_odd"
