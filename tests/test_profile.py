"""The profile builder against offsets a C program prints about itself, and on the real kernel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hv.profile import Profile, ProfileError, Spec, build, write

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

HEADER = r"""
#include <stddef.h>
#include <stdio.h>
struct list_head { struct list_head *next, *prev; };
struct other;                                  /* complete only in b.c */
typedef struct { unsigned int val; } kuid_t;   /* typedef of an anonymous struct */
struct qstr {
    union {
        struct { unsigned int hash; unsigned int len; };
        unsigned long hash_len;
    };
    const unsigned char *name;
};
struct dentry {
    unsigned int d_flags;
    struct dentry *d_parent;
    struct qstr d_name;
    unsigned char d_iname[32];
};
enum state { S_RUN = 0, S_SLEEP = 4 };
struct task {
    volatile long state;
    int pid;
    char pad1;
    struct {                                   /* anonymous struct holding an anonymous union */
        short deep;
        union { long inner; char bytes[3]; };
    };
    union { struct list_head lh; int x; } named_u;
    char comm[16];
    int matrix[2][3];
    unsigned int flag:3, bit2:5;
    const struct other *o;
    kuid_t uid;
    enum state st;
    void (*fn)(int);
    struct dentry *cwd;
    struct task *children[4];
};
#define P(T, M) printf(#T "." #M " %zu\n", offsetof(struct T, M))
#define S(T) printf("sizeof." #T " %zu\n", sizeof(struct T))
void print_other(void);
int main(void);
"""

A_C = r"""
#include "shapes.h"
struct task the_task;                          /* gcc emits DWARF only for types in use */
struct dentry the_dentry;
int main(void) {
    P(task, state); P(task, pid); P(task, pad1); P(task, deep); P(task, inner); P(task, bytes);
    P(task, named_u); P(task, comm); P(task, matrix); P(task, o); P(task, uid);
    P(task, st); P(task, fn); P(task, cwd); P(task, children);
    printf("task.named_u.lh.prev %zu\n", offsetof(struct task, named_u.lh.prev));
    printf("task.uid.val %zu\n", offsetof(struct task, uid.val));
    P(qstr, hash); P(qstr, len); P(qstr, hash_len); P(qstr, name);
    P(dentry, d_flags); P(dentry, d_parent); P(dentry, d_name); P(dentry, d_iname);
    printf("dentry.d_name.len %zu\n", offsetof(struct dentry, d_name.len));
    printf("dentry.d_name.name %zu\n", offsetof(struct dentry, d_name.name));
    P(list_head, next); P(list_head, prev);
    S(task); S(qstr); S(dentry); S(list_head);
    print_other();
    return 0;
}
"""

B_C = r"""
#include "shapes.h"
struct other { char tag[5]; struct { struct list_head node; long weight; }; struct qstr q; };
struct other the_other;
/* the kernel's syscall dispatch shape: the builder records where x64_sys_call returns to */
long x64_sys_call(long nr) {
    printf("ret.minus.main %ld\n", (long)((char *)__builtin_return_address(0) - (char *)main));
    return nr;
}
long do_syscall_64(long nr) { return x64_sys_call(nr) + 1; }
void print_other(void) {
    do_syscall_64(3);
    P(other, tag); P(other, node); P(other, weight); P(other, q);
    printf("other.q.len %zu\n", offsetof(struct other, q.len));
    S(other);
}
"""

SPEC = Spec(
    types={"task": ("pid", "comm", "inner", "bytes", "deep", "uid", "named_u", "flag", "bit2"),
           "dentry": ("d_name", "d_parent"), "qstr": ("name", "len"), "other": ("node", "q"),
           "list_head": ("next",)},
    symbols=("main", "print_other", "the_other", "do_syscall_64", "x64_sys_call"),
    anchors=("main", "print_other"),
)


def _compile(tmp: Path, *flags: str, name: str = "prog") -> Path:
    (tmp / "shapes.h").write_text(HEADER)
    (tmp / "a.c").write_text(A_C)
    (tmp / "b.c").write_text(B_C)
    exe = tmp / name
    subprocess.run(["gcc", "-O0", *flags, "-o", str(exe), str(tmp / "a.c"), str(tmp / "b.c")],
                   check=True, capture_output=True)
    return exe


def _truth(exe: Path) -> dict[str, int]:
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


@pytest.fixture(scope="module", params=["-gdwarf-5", "-gdwarf-4"])
def built(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prof")
    exe = _compile(tmp, request.param)
    prof = build(exe, spec=SPEC)
    path = write(prof, tmp / "p.json")
    return _truth(exe), Profile.load(path), exe


def test_offsets_match_offsetof(built):
    truth, p, _ = built
    checked = 0
    for key, want in truth.items():
        if key.startswith("ret."):
            assert p.syscall_return - p.symbol("main") == want
        elif key.startswith("sizeof."):
            assert p.size(key.split(".", 1)[1]) == want, key
        else:
            assert p.offset(key) == want, key
        checked += 1
    assert checked == len(truth) > 30


def test_shapes(built):
    _, p, _ = built
    comm = p.member("task", "comm")["type"]
    assert comm == {"kind": "array", "count": 16, "subtype": {"kind": "base", "name": "char"}}
    matrix = p.member("task", "matrix")["type"]
    assert (matrix["count"], matrix["subtype"]["count"]) == (2, 3)
    assert p.member_size("task", "matrix") == 24
    assert p.member("task", "cwd")["type"] == {"kind": "pointer", "subtype": {"kind": "struct", "name": "dentry"}}
    assert p.member("task", "o")["type"]["subtype"] == {"kind": "struct", "name": "other"}
    assert p.member("task", "fn")["type"]["subtype"]["kind"] == "function"
    assert p.member("task", "children")["type"]["subtype"]["kind"] == "pointer"
    flag, bit2 = p.member("task", "flag")["type"], p.member("task", "bit2")["type"]
    assert (flag["kind"], flag["bit_length"], bit2["bit_length"]) == ("bitfield", 3, 5)
    assert flag["bit_position"] + 3 == bit2["bit_position"]
    assert p.data["enums"]["state"]["constants"] == {"S_RUN": 0, "S_SLEEP": 4}
    assert p.member("task", "uid")["type"] == {"kind": "struct", "name": "kuid_t"}
    assert p.size("kuid_t") == 4
    assert p.size("pointer") == 8


def test_symbols_match_nm(built):
    _, p, exe = built
    nm = subprocess.run(["nm", str(exe)], check=True, capture_output=True, text=True).stdout
    table = {parts[2]: int(parts[0], 16) for parts in (ln.split() for ln in nm.splitlines()) if len(parts) == 3}
    for s in ("main", "print_other", "the_other"):
        assert p.symbol(s) == table[s]
    with pytest.raises(ProfileError):
        p.symbol("nope")


def test_isf_shape(built):
    _, p, _ = built
    d = json.loads(Path(p.path).read_text())
    assert set(d) == {"metadata", "base_types", "user_types", "enums", "symbols"}
    assert d["metadata"]["producer"]["name"] == "provisor"
    for t in d["user_types"].values():
        assert {"kind", "size", "fields"} <= set(t)
        for f in t["fields"].values():
            assert set(f) == {"offset", "type"}


def test_errors(tmp_path):
    with pytest.raises(ProfileError, match="no such file"):
        build(tmp_path / "missing")
    junk = tmp_path / "vmlinuz"
    junk.write_bytes(b"MZ not an elf" * 10)
    with pytest.raises(ProfileError, match="not an ELF"):
        build(junk)
    nodebug = _compile(tmp_path, name="nodebug")
    with pytest.raises(ProfileError, match="no DWARF"):
        build(nodebug, spec=SPEC)
    exe = _compile(tmp_path, "-g", name="dbg")
    with pytest.raises(ProfileError, match="nosuchtype"):
        build(exe, spec=Spec(types={"nosuchtype": ()}, symbols=("main",), anchors=("main",)))
    with pytest.raises(ProfileError, match="no member nosuch"):
        build(exe, spec=Spec(types={"task": ("nosuch",)}, symbols=("main",), anchors=("main",)))
    with pytest.raises(ProfileError, match="not found: missing_sym"):
        build(exe, spec=Spec(types={}, symbols=("missing_sym",), anchors=("main",)))
    with pytest.raises(ProfileError, match="no such profile"):
        Profile.load(tmp_path / "none.json")


def test_cli_error_is_one_line(tmp_path):
    junk = tmp_path / "x"
    junk.write_text("hello")
    r = subprocess.run([sys.executable, "-c", "from provisor.cli import main; main()", "profile", "build",
                        "--vmlinux", str(junk), "-o", str(tmp_path / "p.json")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("provisor: error:") and r.stderr.count("\n") == 1


@pytest.mark.guest
def test_real_kernel_profile(tmp_path):
    """The Debian cloud kernel's vmlinux (downloaded once into the cache) yields the known layout."""
    from hv.guest import kit
    from provisor.config import load

    k = kit(load())
    p = Profile.load(k.profile)
    assert p.release and p.release in p.banner and p.banner.startswith("Linux version ")
    for s in ("init_task", "current_task", "__per_cpu_offset", "linux_banner", "do_syscall_64",
              "__x64_sys_openat", "__x64_sys_execve", "__x64_sys_clone3"):
        assert p.symbol(s)
    assert p.symbol("init_task") >= 0xFFFFFFFF80000000
    assert p.symbol("do_syscall_64") < p.syscall_return < p.symbol("do_syscall_64") + 0x200
    # layout facts stable across 6.1 builds
    assert p.offset("pt_regs.orig_ax") == 15 * 8 and p.size("pt_regs") == 21 * 8
    assert p.offset("pt_regs.di") == 14 * 8 and p.offset("pt_regs.ip") == 16 * 8
    assert p.offset("qstr.len") == 4 and p.offset("qstr.name") == 8
    assert p.offset("dentry.d_name.len") == p.offset("dentry.d_name") + 4
    assert p.offset("path.dentry") == 8 and p.offset("list_head.prev") == 8
    assert p.offset("cred.uid.val") == p.offset("cred.uid") == 8
    assert p.member_size("task_struct", "comm") == 16
    assert p.offset("task_struct.tgid") == p.offset("task_struct.pid") + 4
    assert p.offset("mount.mnt.mnt_root") == p.offset("mount.mnt")
    # rebuilding straight from the vmlinux is deterministic apart from the timestamp
    again = build(k.vmlinux, k.system_map)
    assert again["user_types"] == p.data["user_types"] and again["symbols"] == p.data["symbols"]


def test_lookups_raise_lookup_errors(built):
    from hv.profile import ProfileLookupError

    _, p, _ = built
    for call in (lambda: p.symbol("nope"), lambda: p.offset("task.nope"), lambda: p.size("nope"),
                 lambda: p.offset("nope.x")):
        with pytest.raises(ProfileLookupError):
            call()
        with pytest.raises(LookupError):
            call()
    with pytest.raises(ProfileError, match="not an embedded struct"):
        p.offset("task.pid.x")
