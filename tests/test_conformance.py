"""Conformance of the two producers: the native QEMU plugin (hv/plugin/, ``trap="plugin"``) and
the gdbstub interceptor (hv/interceptor.py, ``trap="watch"``) record one deterministic workload
that exercises every row of the syscall table, and their rings must agree field by field.

Each boot runs the same initramfs. Its /init is config/guest/init.sh behind a prologue that
turns user-space address randomization off and re-executes itself, so the workload's raw pointer
registers repeat from boot to boot and ``args`` is compared raw (registers beyond a call's arity
excepted where two plugin boots disagree on them: ``ALLOWED["unused args"]``). The streams are aligned per
task, not globally (the interleaving of concurrent processes follows the guest's timer, which
differs between boots): the workload's root is the task that execve()s ``sh /workload``, every
other task is named by its place in the fork tree (the k-th successful fork/clone of its parent),
and pids, tgids, ppids and the return value of fork-family calls are compared through those
names; an exit's ``entry_seq`` is compared through each stream's own seq -> (task, index) map;
an endpoint's ``sk`` and ``peer`` (kernel addresses) through the inode of the socket file that
struct sock belonged to.

Every field of ``provisor.events.Event`` is compared except those in ``ALLOWED``, the one list
of permitted differences (docs/HYPERVISORS.md, "Differences from the gdbstub producer", says the
same). A field not in ``ALLOWED`` that differs fails the test.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pmem import ring
from pmem.layout import RecType
from provisor import events as E
from provisor.syscalls import _TABLE, BY_NR, Family, nr_of

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "HYPERVISORS.md"

# The one list of differences allowed between the plugin's and the gdbstub's events: field (or
# class of events) -> why. docs/HYPERVISORS.md, "Differences from the gdbstub producer", names
# exactly these; every other field of every event of the workload must be equal.
ALLOWED: dict[str, str] = {
    "ts_ns": "wall-clock time of the record: two runs, two clocks",
    "seq": "ring sequence numbers: each producer numbers its own ring (an exit's entry_seq is "
           "compared as the (task, index) of its entry)",
    "start_time": "the task's start time in ns since boot: two boots, two timelines",
    "unused args": "argument registers beyond the call's arity in the table are not arguments: "
                   "user code leaves values there, some random per boot (busybox sh leaves one "
                   "in r10); compared wherever the two plugin boots agree on them",
    "F_COMPAT events": "32-bit entries (int 0x80, sysenter, compat-mode syscall), recorded with "
                       "F_COMPAT, are in the plugin's ring only: the gdbstub's entry trap is "
                       "on the 64-bit entry_SYSCALL_64 path",
}

# every other Event field is compared (``payload`` is the encoding of the fields)
COMPARED = tuple(f.name for f in dataclasses.fields(E.Event)
                 if f.name not in ALLOWED and f.name != "payload")

CONF_C = r"""
/* conformance helper: the table's rows the shell does not reach, through raw syscall(2) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define S(...) syscall(__VA_ARGS__)

static char *const targv[] = {"true", "from conf", NULL};
static char *const tenv[] = {"CONF=1", NULL};

static void *thread_main(void *arg)
{
    S(SYS_write, (long)arg, "thread\n", 7);
    return NULL; /* exit(2) of one thread */
}

static void reap(long pid)
{
    int st;
    if (pid > 0)
        waitpid((pid_t)pid, &st, 0);
}

int main(void)
{
    char buf[64];
    long fd = S(SYS_creat, "cr.txt", 0644);
    S(SYS_write, fd, "hello world\n", 12);
    S(SYS_pwrite64, fd, "HE", 2, 0);
    struct iovec wv[2] = {{"ab", 2}, {"cd\n", 3}};
    S(SYS_writev, fd, wv, 2);
    S(SYS_ftruncate, fd, 15);
    S(SYS_close, fd);
    fd = S(SYS_open, "cr.txt", O_RDONLY | O_CLOEXEC);
    S(SYS_read, fd, buf, 4);
    S(SYS_pread64, fd, buf, 4, 6);
    struct iovec rv[2] = {{buf, 3}, {buf + 8, 3}};
    S(SYS_readv, fd, rv, 2);
    long d1 = S(SYS_dup, fd);
    S(SYS_dup2, fd, 10);
    S(SYS_dup3, fd, 11, O_CLOEXEC);
    S(SYS_fcntl, fd, F_DUPFD, 20);
    S(SYS_fcntl, fd, F_DUPFD_CLOEXEC, 30);
    S(SYS_fcntl, fd, F_GETFD, 0);
    long out = S(SYS_openat, AT_FDCWD, "sf.txt", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    long off = 0;
    S(SYS_sendfile, out, fd, &off, 100);
    S(SYS_mmap, 0, 4096, 1 /* PROT_READ */, 2 /* MAP_PRIVATE */, fd, 0);
    int p[2], q[2];
    S(SYS_pipe, p);
    S(SYS_pipe2, q, O_CLOEXEC);
    S(SYS_write, p[1], "piped", 5);
    S(SYS_tee, p[0], q[1], 5, 0);
    S(SYS_splice, p[0], 0, out, 0, 5, 0);
    S(SYS_read, q[0], buf, 5);
    S(SYS_close, p[0]), S(SYS_close, p[1]), S(SYS_close, q[0]), S(SYS_close, q[1]);
    S(SYS_close, d1), S(SYS_close, 10), S(SYS_close, 11), S(SYS_close, 20), S(SYS_close, 30);
    /* pipes whose dentries the next pipe may get at the same address once RCU freed them */
    for (int i = 0; i < 4; i++) {
        S(SYS_pipe2, p, 0);
        S(SYS_close, p[0]), S(SYS_close, p[1]);
        usleep(20000);
    }

    S(SYS_mkdir, "d1", 0755);
    S(SYS_mkdirat, AT_FDCWD, "d2", 0700);
    long dfd = S(SYS_openat, AT_FDCWD, "d1", O_RDONLY | O_DIRECTORY, 0);
    long in = S(SYS_openat, dfd, "in.txt", O_WRONLY | O_CREAT | O_EXCL, 0600);
    S(SYS_close, in);
    S(SYS_renameat, dfd, "in.txt", AT_FDCWD, "moved.txt");
    S(SYS_renameat2, AT_FDCWD, "moved.txt", dfd, "back.txt", 1 /* RENAME_NOREPLACE */);
    S(SYS_rename, "cr.txt", "cr2.txt");
    S(SYS_link, "cr2.txt", "ln.txt");
    S(SYS_linkat, dfd, "back.txt", AT_FDCWD, "ln2.txt", 0);
    S(SYS_symlink, "cr2.txt", "sym");
    S(SYS_symlinkat, "back.txt", dfd, "sym2");
    S(SYS_unlink, "ln.txt");
    S(SYS_unlinkat, dfd, "sym2", 0);
    S(SYS_unlinkat, AT_FDCWD, "d2", AT_REMOVEDIR);
    S(SYS_mkdir, "d3", 0755);
    S(SYS_rmdir, "d3");
    S(SYS_truncate, "cr2.txt", 3);
    long here = S(SYS_open, ".", O_RDONLY | O_DIRECTORY);
    S(SYS_chdir, "d1");
    S(SYS_openat, AT_FDCWD, "back.txt", O_RDONLY, 0);
    S(SYS_fchdir, here);
    /* failures and hostile arguments */
    S(SYS_open, "no/such/file", O_RDONLY);
    S(SYS_close, 999);
    S(SYS_read, 999, buf, 1);
    S(SYS_openat, AT_FDCWD, (char *)1, O_RDONLY, 0);
    S(SYS_execve, (char *)16, (char **)24, 0);
    S(SYS_chdir, "no-such-dir");
    /* sockets */
    long so = S(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX, .sun_path = "sock"};
    S(SYS_bind, so, &sa, sizeof sa);
    S(SYS_listen, so, 2);
    long so2 = S(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    S(SYS_connect, so2, &sa, sizeof sa);
    S(SYS_accept, so, 0, 0);
    long so3 = S(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    S(SYS_connect, so3, &sa, sizeof sa);
    S(SYS_accept4, so, 0, 0, SOCK_CLOEXEC);
    int sv[2];
    S(SYS_socketpair, AF_UNIX, SOCK_DGRAM, 0, sv);
    S(SYS_sendto, sv[0], "dg", 2, 0, 0, 0);
    S(SYS_recvfrom, sv[1], buf, 2, 0, 0, 0);
    struct iovec mv = {"msg", 3}, mr = {buf, 3};
    struct msghdr mh = {.msg_iov = &mv, .msg_iovlen = 1}, rh = {.msg_iov = &mr, .msg_iovlen = 1};
    S(SYS_sendmsg, sv[0], &mh, 0);
    S(SYS_recvmsg, sv[1], &rh, 0);
    /* modes, owners, nodes, vectored and copied data */
    S(SYS_chmod, "cr2.txt", 0640);
    long cf = S(SYS_open, "cr2.txt", O_RDWR);
    S(SYS_fchmod, cf, 0600);
    S(SYS_fchmodat, AT_FDCWD, "cr2.txt", 0644);
    S(SYS_chown, "cr2.txt", 0, 0);
    S(SYS_fchown, cf, 0, 0);
    S(SYS_lchown, "sym", 0, 0);
    S(SYS_fchownat, AT_FDCWD, "cr2.txt", 0, 0, 0);
    S(SYS_mknod, "fifo", S_IFIFO | 0644, 0);
    S(SYS_mknodat, AT_FDCWD, "fifo2", S_IFIFO | 0600, 0);
    struct iovec pw = {"PW", 2}, pr = {buf, 2};
    S(SYS_pwritev, cf, &pw, 1, 0, 0);
    S(SYS_preadv, cf, &pr, 1, 0, 0);
    long cp = S(SYS_openat, AT_FDCWD, "cp.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    S(SYS_copy_file_range, cf, 0, cp, 0, 3, 0);
    S(SYS_close, cp), S(SYS_close, cf);
    /* signals: 0, which only checks the target */
    long me = S(SYS_getpid);
    S(SYS_kill, me, 0);
    S(SYS_tkill, me, 0);
    S(SYS_tgkill, me, me, 0);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    si.si_code = SI_QUEUE;
    S(SYS_rt_sigqueueinfo, me, 0, &si);
    S(SYS_rt_tgsigqueueinfo, me, me, 0, &si);
    /* processes: fork, clone, clone3, vfork, a thread; execve and execveat */
    long c = S(SYS_fork);
    if (c == 0) {
        S(SYS_write, 1, "forked\n", 7);
        S(SYS_exit, 0);
    }
    reap(c);
    c = S(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (c == 0) {
        S(SYS_execve, "/bin/busybox", targv, tenv);
        S(SYS_exit_group, 1);
    }
    reap(c);
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.exit_signal = SIGCHLD;
    c = S(SYS_clone3, &ca, sizeof ca);
    if (c == 0) {
        S(SYS_execveat, AT_FDCWD, "/bin/busybox", targv, tenv, 0);
        S(SYS_exit_group, 1);
    }
    reap(c);
    c = vfork();
    if (c == 0) {
        S(SYS_execve, "/bin/true", targv, tenv);
        _exit(1);
    }
    reap(c);
    pthread_t t;
    pthread_create(&t, NULL, thread_main, (void *)1L);
    pthread_join(t, NULL);
    /* credentials: root's own (tests/guest_sockcred.c, run by the workload, changes them) */
    S(SYS_setfsuid, 0), S(SYS_setfsgid, 0), S(SYS_setgid, 0), S(SYS_setuid, 0);
    S(SYS_setregid, -1, -1), S(SYS_setreuid, -1, -1);
    S(SYS_setresgid, -1, -1, -1), S(SYS_setresuid, -1, -1, -1);
    /* the 32-bit ABI from a 64-bit process: close(-1) through int 0x80 (i386 number 6) */
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(6L), "b"(-1L) : "memory");
    S(SYS_exit_group, 0);
    return 0;
}
"""

WORKLOAD = r"""#!/bin/sh
# provisor conformance workload: deterministic (one write per pipe writer, no times, no pids)
mkdir w
cd w
echo one > a.txt
echo two >> a.txt
cat a.txt > b.txt
cat < a.txt | sort > c.txt
exec 5< a.txt
exec 6>&5
read line <&6
echo "$line" 7>&5 > e.txt
exec 5<&- 6<&-
mv b.txt b2.txt
ln a.txt hard.txt
ln -s a.txt soft.txt
rm hard.txt
mkdir sub
rmdir sub
truncate -s 2 c.txt
dd if=a.txt of=d.txt bs=3 2>/dev/null
name=$(printf 'bad\377\376.txt')
echo x > "$name"
cat "$name" > /dev/null
mv "$name" "$name.2"
cd /root/w
/bin/conf arg1 "two words" "$(printf 'n\351')"
/bin/sockcred
sh -c 'echo child > f.txt'
cd /root
"""

# /init: user space without address randomization (set once, then /init runs again from the
# start, as PID 1 still), then config/guest/init.sh unchanged
INIT_PROLOGUE = """#!/bin/busybox sh
if [ "$1" != norand ]; then
    mount -t proc proc /proc
    echo 0 > /proc/sys/kernel/randomize_va_space
    umount /proc
    exec /init norand
fi
"""


# ------------------------------------------------------------------------------ the comparison

def _is_fork(e: E.Event) -> bool:
    return (e.phase == E.EXIT and BY_NR[e.nr].family is Family.FORK and e.ret is not None
            and e.ret > 0)


def workload_tasks(evs: list[E.Event]) -> dict[tuple, list[E.Event]]:
    """The workload's tasks, each named by its place in the fork tree, with its events in ring
    order: the root is the task that execve()s ``sh /workload`` (named ``("sh",)``), the k-th
    child a task forks or clones is its name plus ``(k,)``."""
    root = next(e.pid for e in evs if e.phase == E.ENTRY and e.name == "execve"
                and e.argv == ["sh", "/workload"])
    by_tid: dict[int, list[E.Event]] = defaultdict(list)
    for e in evs:
        by_tid[e.pid].append(e)
    names = {root: ("sh",)}
    order = [root]
    for tid in order:  # grows while walked: breadth first
        for k, child in enumerate(e.ret for e in by_tid[tid] if _is_fork(e)):
            assert child not in names, f"tid {child} forked twice"
            names[child] = names[tid] + (k,)
            order.append(child)
    first = by_tid[root][0].seq
    tree = set(order)
    strays = sorted({e.pid for e in evs if e.seq >= first and e.pid not in tree
                     and (e.tgid in tree or e.ppid in tree)})
    assert not strays, f"tasks of the workload not reached through its forks: {strays}"
    return {names[t]: by_tid[t] for t in order}


def _views(tasks: dict[tuple, list[E.Event]], noise: frozenset = frozenset()
           ) -> dict[tuple, list[dict]]:
    """Each event as a dict of the compared fields, with the per-boot numbers (pids, the
    child pid a fork returns, entry_seq) replaced by names that hold across boots, and the
    ``noise`` registers, (task, index, register), blanked."""
    pid_name = {evs[0].pid: name for name, evs in tasks.items()}
    outside: dict[int, tuple] = {}

    def name_of(pid: int) -> tuple:
        if pid in pid_name:
            return pid_name[pid]
        return outside.setdefault(pid, ("outside", len(outside)))

    at = {e.seq: (name, i) for name, evs in tasks.items() for i, e in enumerate(evs)}
    # an endpoint's sk and peer are kernel addresses (another boot, another heap): named by
    # the inode of the socket file that sk belonged to at that point of the stream
    sock_ino: dict[int, int] = {}
    ep_views: dict[int, list[tuple]] = {}
    for e in sorted((e for evs in tasks.values() for e in evs), key=lambda e: e.seq):
        for ep in e.endpoints:
            sock_ino[ep.sk] = e.files[ep.file].ino
        ep_views[e.seq] = [(ep.file, ep.family, ep.type, ep.local, ep.remote,
                            ("sock of inode", sock_ino[ep.sk]),
                            ("sock of inode", sock_ino.get(ep.peer)) if ep.peer else 0)
                           for ep in e.endpoints]
    out: dict[tuple, list[dict]] = {}
    for name, evs in sorted(tasks.items()):
        rows = []
        for i, e in enumerate(evs):
            v = {f: getattr(e, f) for f in COMPARED}
            v["nr"] = f"{e.nr} ({e.name})"
            v["pid"], v["tgid"], v["ppid"] = name_of(e.pid), name_of(e.tgid), name_of(e.ppid)
            if e.phase == E.EXIT:
                v["entry_seq"] = at.get(e.entry_seq, ("not in the workload", e.entry_seq))
            if _is_fork(e):
                v["ret"] = name_of(e.ret)
            v["args"] = tuple("(unused, differs between boots)" if (name, i, r) in noise
                              else hex(a) for r, a in enumerate(e.args))
            v["flags"] = hex(e.flags)
            v["files"] = [(f.dev, f.ino, f.path) for f in e.files]
            v["endpoints"] = ep_views[e.seq]
            rows.append(v)
        out[name] = rows
    return out


def _drop_compat(evs: list[E.Event]) -> list[E.Event]:
    return [e for e in evs if not ("F_COMPAT events" in ALLOWED and e.flags & E.F_COMPAT)]


def unused_register_noise(a: list[E.Event], b: list[E.Event]) -> frozenset:
    """(task, index, register) of the registers beyond each call's arity that differ between
    two boots ``a`` and ``b`` (of the same producer): values user code left there."""
    if "unused args" not in ALLOWED:
        return frozenset()
    ta, tb = workload_tasks(_drop_compat(a)), workload_tasks(_drop_compat(b))
    out = set()
    for name in set(ta) & set(tb):
        for i, (x, y) in enumerate(zip(ta[name], tb[name], strict=False)):
            if x.nr == y.nr:
                out.update((name, i, r) for r in range(len(BY_NR[x.nr].args), 6)
                           if x.args[r] != y.args[r])
    return frozenset(out)


def compare(a: list[E.Event], b: list[E.Event], noise: frozenset = frozenset(),
            limit: int = 40) -> list[str]:
    """Differences between two producers' streams of the workload (``a``: the plugin's,
    ``b``: the gdbstub's), one line each; [] when they conform."""
    va = _views(workload_tasks(_drop_compat(a)), noise)
    vb = _views(workload_tasks(_drop_compat(b)), noise)
    diffs = []
    for name in sorted(set(va) | set(vb)):
        ra, rb = va.get(name, []), vb.get(name, [])
        if len(ra) != len(rb):
            diffs.append(f"task {name}: {len(ra)} events vs {len(rb)}")
        for i, (x, y) in enumerate(zip(ra, rb, strict=False)):
            for f in x:
                if x[f] != y[f]:
                    diffs.append(f"task {name} event {i} {x['nr']} phase {x['phase']}: {f} "
                                 f"{x[f]!r} != {y[f]!r}")
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])


# ----------------------------------------------------------------------------- without a guest

def _ev(name: str, phase: int, seq: int, pid: int, **kw) -> E.Event:
    return E.Event(nr_of(name), phase, seq=seq, pid=pid, tgid=kw.pop("tgid", pid), **kw)


def _toy(base: int, child: int, path: str = "/root/a") -> list[E.Event]:
    """sh /workload clones a child that opens a file: pids from ``base``, seqs shifted."""
    s = base * 10
    clone = (17, 0, 0, 0, 0, 0)
    return [
        _ev("execve", E.ENTRY, s + 1, base, ppid=1, argv=["sh", "/workload"]),
        _ev("execve", E.EXIT, s + 2, base, ppid=1, entry_seq=s + 1, ret=0),
        _ev("clone", E.ENTRY, s + 3, base, ppid=1, args=clone),
        _ev("openat", E.ENTRY, s + 4, child, ppid=base, paths=[path], args=(-100, 7, 0, 0, 9, 0)),
        _ev("clone", E.EXIT, s + 5, base, ppid=1, entry_seq=s + 3, ret=child, args=clone),
        _ev("openat", E.EXIT, s + 6, child, ppid=base, entry_seq=s + 4, ret=3,
            files=[E.FileId(2, 9, path)]),
    ]


def test_compare_maps_per_boot_numbers_and_reports_field_differences() -> None:
    a, b = _toy(80, 85), _toy(90, 91)
    b[3], b[4] = b[4], b[3]  # another interleaving of the two tasks: still conforming
    b[0].ts_ns, b[0].start_time = 123, 456  # allowed
    assert compare(a, b) == []
    b[5].files = [E.FileId(2, 9, "/root/b")]
    b[1].entry_seq = 0
    diffs = compare(a, b)
    assert len(diffs) == 2, diffs
    assert "task ('sh',) event 1" in diffs[0] and "entry_seq" in diffs[0]
    assert "task ('sh', 0) event 1" in diffs[1] and "files" in diffs[1]
    a[3].cwd = "/x"
    assert any("cwd '/x' != None" in d for d in compare(a, _toy(90, 91)))


def test_unused_registers_are_compared_unless_they_differ_between_boots() -> None:
    a, b, c = _toy(80, 85), _toy(90, 91), _toy(70, 71)
    for evs in (b, c):  # openat takes four registers: r8 is not an argument
        evs[3].args = (-100, 7, 0, 0, 5, 0)
    assert compare(a, b) == ["task ('sh', 0) event 0 257 (openat) phase 0: args ('-0x64', "
                             "'0x7', '0x0', '0x0', '0x9', '0x0') != ('-0x64', '0x7', '0x0', "
                             "'0x0', '0x5', '0x0')"]
    assert unused_register_noise(b, c) == frozenset()  # two boots agree: compared
    noise = unused_register_noise(a, c)
    assert noise == {(("sh", 0), 0, 4)}
    assert compare(a, b, noise) == []
    b[3].args = (-100, 8, 0, 0, 5, 0)  # an argument of the call: never noise
    assert unused_register_noise(b, c) == frozenset()
    assert len(compare(a, b, noise | unused_register_noise(b, c))) == 1


def test_a_task_outside_the_fork_tree_fails_the_alignment() -> None:
    a = _toy(80, 85)
    a.append(_ev("close", E.ENTRY, 900, 86, ppid=80))  # a child whose fork was not recorded
    with pytest.raises(AssertionError, match=r"not reached through its forks: \[86\]"):
        workload_tasks(a)


def test_allowed_differences_are_the_documented_ones() -> None:
    """docs/HYPERVISORS.md's paragraph names exactly the allowed differences, as `key`: items."""
    text = DOC.read_text()
    m = re.search(r"\*\*Differences from the gdbstub producer\*\*(.*?)\n\n", text, re.S)
    assert m, "the paragraph is missing"
    para = m.group(1)
    assert "tests/test_conformance.py" in para
    assert set(re.findall(r"`([^`]+)`:", para)) == set(ALLOWED)


def test_pseudo_paths_are_not_cached() -> None:
    """Regression (found here): a freed pipe's dentry reused at the same address for the next
    pipe has the same parent and (empty) name, so a cached 'anon:[ino]' named the old inode.
    The Linux layer (and the plugin's hv/plugin/linux.c) no longer caches pseudo names."""
    from test_linux_layer import world

    g, w = world()
    pipe_root = g.dentry(b"", None)
    pm = g.mount(pipe_root, 7)
    old = g.inode(10220, 13)
    d = g.dentry(b"", None, old)  # d_alloc_pseudo: no name, its own parent
    f = g.file(pm, d, old)
    lx = g.linux()
    task = lx.task(w["task"])
    fdt = lx.u64(task.files + 32)
    g.u64(lx.u64(fdt + 8) + 8 * 4, f)
    assert lx.fd_file(task, 4).path == "anon:[10220]"
    new = g.inode(10223, 13)  # the dentry freed and reused by the next pipe
    g.u64(d + 48, new)
    g.u64(f + 32, new)
    assert lx.fd_file(task, 4) == E.FileId(13, 10223, "anon:[10223]")
    assert lx.cwd(task) == ("/root/work", 1) and lx.cwd(task) == ("/root/work", 1)  # cached


def test_unreadable_current_task_is_still_recorded(shm_dir) -> None:
    """Regression (found here): the gdbstub path dropped an entry whose current task it could
    not read; like the plugin, it now records it, flagged F_TASK_UNREADABLE."""
    from test_interceptor import PGD_VA, W_ENTRY, events, regs_for, run
    from test_linux_layer import world

    from pmem import ring as R

    g, _ = world()
    g.map(PGD_VA, g.cr3)
    path = str(shm_dir / "r.ring")
    R.create(path, 1 << 20)
    prod = R.Producer.open(path)
    try:
        name = g.ualloc(b"b.txt\0")
        regs = regs_for(nr_of("unlink"), name, cr3=g.cr3).with_(gs_base=0xFFFF_8880_DEAD_0000)
        ic, gdb = run(g, prod, path, [(W_ENTRY, regs, None)])
    finally:
        prod.close()
    (ev,) = events(path)
    assert ev.name == "unlink" and ev.phase == E.ENTRY and ev.paths == ["b.txt"]
    assert ev.flags == E.F_TASK_UNREADABLE and ev.pid == 0 and ev.cwd is None
    assert gdb.resumes[-1][0] == [] and not ic.pending  # no exit expected of an unknown task


# ----------------------------------------------------------------------------------- the guest

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not installed (make setup)")


def _events(path: str) -> list[E.Event]:
    return [E.decode(r.payload, r.seq) for r in ring.iter_records(path)
            if r.type == RecType.EVENT]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The workload under the gdbstub (nokaslr) and the plugin (nokaslr and KASLR)."""
    from hv.collect import collect
    from provisor.config import load

    base = tmp_path_factory.mktemp("conformance")
    inc = base / "inc"
    (inc / "bin").mkdir(parents=True)
    (base / "conf.c").write_text(CONF_C)
    r = subprocess.run(["gcc", "-static", "-O2", "-o", str(inc / "bin" / "conf"),
                        str(base / "conf.c"), "-lpthread"], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot build the static helper: {r.stderr.strip()[-200:]}")
    from test_plugin_guest import build_sockcred

    build_sockcred(inc / "bin")
    (base / "workload.sh").write_text(WORKLOAD)
    init = (ROOT / "config" / "guest" / "init.sh").read_text()
    (base / "init.sh").write_text(INIT_PROLOGUE + init.split("\n", 1)[1])
    cfg = copy.deepcopy(load())
    cfg["guest"]["init"] = str(base / "init.sh")
    cfg["daemon"]["record_envp"] = True  # envp compared too

    out = {}
    for trap, kaslr in (("watch", False), ("plugin", False), ("plugin", True)):
        tag = f"{trap}-{'kaslr' if kaslr else 'nokaslr'}"
        rp = str(base / f"{tag}.ring")
        t0 = time.monotonic()
        s = collect(cfg, str(base / "workload.sh"), str(inc), rp, str(base / f"{tag}.db"),
                    kaslr=kaslr, run_daemon=False, trap=trap, timeout=300, log=lambda m: None)
        serial = Path(s.serial_log).read_text(errors="replace")
        assert "provisor-guest: workload exit 0" in serial, serial[-2000:]
        out[tag] = (s, _events(rp), time.monotonic() - t0)
    return out


def _whole_ring(evs: list[E.Event]) -> Counter:
    return Counter((e.comm, e.name, e.phase, tuple(e.paths), e.ret) for e in _drop_compat(evs))


@pytest.mark.guest
@needs_qemu
@pytest.mark.parametrize("plugin", ["plugin-nokaslr", "plugin-kaslr"])
def test_plugin_events_equal_gdbstub_events(runs, plugin) -> None:
    ps, pev, _ = runs[plugin]
    ws, wev, _ = runs["watch-nokaslr"]
    assert ps.trap == "plugin" and ws.trap == "watch"
    assert (ps.slide != 0) == (plugin == "plugin-kaslr") and ws.slide == 0

    # the workload reaches every row of the table (so every family and every argument kind)
    tasks = workload_tasks(wev)
    seen = {e.name for evs in tasks.values() for e in evs}
    assert seen >= {s.name for s in _TABLE}, sorted({s.name for s in _TABLE} - seen)
    assert sum(map(len, tasks.values())) > 400
    # non-UTF-8 bytes, as guest text (provisor/guesttext.py), in a path and in an argv
    assert any(e.paths == ["bad\\xff\\xfe.txt"] for evs in tasks.values() for e in evs)
    assert any(e.argv == ["/bin/conf", "arg1", "two words", "n\\xe9"]
               for evs in tasks.values() for e in evs)
    # the one compat call, in the plugin's ring only: close(-1) through int 0x80
    compat = [e for e in pev if e.flags & E.F_COMPAT]
    assert [(e.name, e.phase, e.ret, e.comm) for e in compat] == [
        ("close", E.ENTRY, None, "conf"), ("close", E.EXIT, -9, "conf")]
    assert not any(e.flags & E.F_COMPAT for e in wev)
    # regression: a pseudo file's name is its own inode's ('pipe:[ino]', 'socket:[ino]'), in
    # every ring
    for evs in (pev, wev):
        for f in (f for e in evs for f in e.files if f.path.startswith(("anon:[", "pipe:[",
                                                                         "socket:["))):
            assert f.path.endswith(f":[{f.ino}]"), f
    # credentials and endpoints, as tests/guest_sockcred.c made them, in both rings
    from test_plugin_guest import check_sockcred

    for evs in (pev, wev):
        check_sockcred(evs)

    # the workload, field by field
    noise = unused_register_noise(runs["plugin-nokaslr"][1], runs["plugin-kaslr"][1])
    diffs = compare(pev, wev, noise)
    assert not diffs, "the producers differ:\n" + "\n".join(diffs)
    # the whole boot: both traced the same syscalls from the first user-space instruction on
    # (the kernel's modprobe helpers included)
    assert _whole_ring(pev) == _whole_ring(wev)
