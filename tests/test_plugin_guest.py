"""The native plugin in a real QEMU 10 guest: several vCPUs, the 32-bit and prefixed entries a
hostile process could use, QEMU killed mid-workload, and the one-line refusals.

Every test boots the Debian cloud kernel of the guest kit under TCG with the plugin built by
`make plugin` (hv/plugin/), and reads what it wrote back through the daemon's own code.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hv import native
from hv.collect import wait_drained
from pmem import layout as L
from pmem import ring
from provisor import events as E
from provisor.syscalls import BY_NR, Trait

ROOT = Path(__file__).resolve().parent.parent
COMPAT_C = Path(__file__).resolve().parent / "guest_compat.c"

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not native.PLUGIN.is_file(), reason="plugin not built (make plugin)"),
]


def provisor(*args: str, env: dict | None = None, timeout: float = 600
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisor.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _kit():
    from hv import guest
    from hv.profile import Profile
    from provisor.config import load

    cfg = load()
    kit = guest.kit(cfg, log=lambda m: None)
    return cfg, kit, Profile.load(kit.profile)


def _initrd(cfg, tmp: Path, script: str, include: Path | None = None) -> str:
    from hv import guest

    wl = tmp / "w.sh"
    wl.write_text(script)
    return str(guest.build_initramfs(cfg, str(wl), str(include) if include else None,
                                     log=lambda m: None))


def ring_events(path: str) -> list[E.Event]:
    c = ring.Consumer.open(path, readonly=True)
    try:
        out = []
        while True:
            recs = c.read(100_000)
            if not recs:
                return out
            out += [E.decode(r.payload, r.seq) for r in recs if r.type == L.RecType.EVENT]
    finally:
        c.close()


def _paths_of(evs: list[E.Event], name: str, prefix: str) -> dict[str, list[E.Event]]:
    out: dict[str, list[E.Event]] = {}
    for e in evs:
        if e.name == name and e.phase == E.ENTRY and e.paths and e.paths[-1].startswith(prefix):
            out.setdefault(e.paths[-1], []).append(e)
    return out


LOOPS = """#!/bin/sh
loop() { i=0; while [ $i -lt {n} ]; do echo $i > /root/$1_$i; i=$((i+1)); done; }
loop A & loop B & wait
cat /root/A_3 /root/B_3 > /root/joined
"""


def test_smp2_every_syscall_of_both_vcpus_in_causal_order(shm_dir, tmp_path) -> None:
    """Two loops on two vCPUs (MTTCG): every open of both is in the ring with its exit, on both
    vCPUs, and every record's entry precedes its exit and the task's next entry."""
    cfg, kit, profile = _kit()
    n = 150
    initrd = _initrd(cfg, tmp_path, LOOPS.replace("{n}", str(n)))
    rp = str(shm_dir / "smp.ring")
    ring.create(rp, 32 << 20)
    with native.PluginGuest(str(kit.kernel), initrd, "console=ttyS0 quiet panic=-1", rp,
                            profile, smp=2) as vm:
        st = vm.run(300)
    evs = ring_events(rp)
    assert st.records == len(evs) and st.dropped == 0
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    for loop in ("A", "B"):
        opens = _paths_of([e for e in evs if e.comm == "sh"], "openat", f"/root/{loop}_")
        assert sorted(opens) == sorted(f"/root/{loop}_{i}" for i in range(n)), loop
        assert all(len(v) == 1 for v in opens.values())
    assert {e.vcpu for e in evs} == {0, 1}
    by_seq = {e.seq: e for e in evs}
    open_entry: dict[tuple[int, int], int] = {}
    for e in evs:  # causal order per task: entry, its exit, the next entry
        task = (e.pid, e.start_time)
        if e.phase == E.EXIT:
            assert e.entry_seq < e.seq and by_seq[e.entry_seq].nr == e.nr
            assert open_entry.pop(task) == e.entry_seq
        else:
            assert task not in open_entry, (e, by_seq[open_entry[task]])
            if not BY_NR[e.nr].has(Trait.NO_RETURN):
                open_entry[task] = e.seq
    # a write that a read on the other vCPU then sees comes first: cat opened A_3 and B_3
    # after the loops wrote them, so their writers' entries precede the cat's opens
    writer = {p: es[0].seq for p, es in _paths_of([e for e in evs if e.comm == "sh"], "openat",
                                                  "/root/").items()}
    cat_opens = [e for e in evs if e.comm == "cat" and e.name == "openat" and e.phase == E.ENTRY]
    for e in cat_opens:
        assert writer[e.paths[-1]] < e.seq


def test_compat_and_prefixed_entries_are_traced(shm_dir, tmp_path) -> None:
    """`int 0x80` (i386 numbers, 32-bit registers, a socket address through a 32-bit
    pointer) and a prefixed `syscall` (66 2e 0f 05) are recorded like any other call: the
    gdbstub path sees neither."""
    cfg, kit, profile = _kit()
    inc = tmp_path / "inc"
    (inc / "bin").mkdir(parents=True)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(inc / "bin" / "compat"), str(COMPAT_C)],
                   check=True)
    initrd = _initrd(cfg, tmp_path, "#!/bin/sh\n/bin/compat\n", inc)
    rp = str(shm_dir / "compat.ring")
    ring.create(rp, 16 << 20)
    with native.PluginGuest(str(kit.kernel), initrd, "console=ttyS0 quiet panic=-1", rp,
                            profile) as vm:
        vm.run(300)
    evs = [e for e in ring_events(rp) if e.comm == "compat"]
    by_seq = {e.seq: e for e in evs}
    opens = [e for e in evs if e.name == "open" and e.phase == E.EXIT]
    compat = next(e for e in opens if by_seq[e.entry_seq].paths == ["/root/compat32.txt"])
    assert compat.flags & E.F_COMPAT and by_seq[compat.entry_seq].flags & E.F_COMPAT
    assert compat.ret >= 0 and compat.files and compat.files[0].path == "/root/compat32.txt"
    assert by_seq[compat.entry_seq].arg(1) == 0o1101  # from ecx, as the i386 ABI passes it
    w = next(e for e in evs if e.name == "write" and e.phase == E.EXIT and e.flags & E.F_COMPAT)
    assert w.ret == len("via int 0x80\n")
    assert by_seq[w.entry_seq].files and by_seq[w.entry_seq].files[0].path == "/root/compat32.txt"
    pre = next(e for e in opens if by_seq[e.entry_seq].paths == ["/root/prefixed64.txt"])
    assert not pre.flags & E.F_COMPAT and pre.ret >= 0
    assert pre.files[0].path == "/root/prefixed64.txt"
    # i386 bind and connect: the address argument through a 32-bit pointer
    (b,) = [e for e in evs if e.name == "bind" and e.phase == E.ENTRY]
    (c,) = [e for e in evs if e.name == "connect" and e.phase == E.ENTRY]
    assert b.flags & E.F_COMPAT and c.flags & E.F_COMPAT
    assert (b.addr_family, b.addr) == (2, "0.0.0.0:5010") and b.arg(1) < 1 << 32, b
    assert (c.addr_family, c.addr) == (2, "127.0.0.1:5011"), c
    assert next(e for e in evs if e.entry_seq == b.seq).ret == 0  # the bind worked


SOCKCRED_C = Path(__file__).resolve().parent / "guest_sockcred.c"
V4, V6 = "127.0.0.1", "[::1]"


def build_sockcred(bindir: Path) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(bindir / "sockcred"), str(SOCKCRED_C)],
                   check=True)


def check_sockcred(evs: list[E.Event]) -> None:
    """What tests/guest_sockcred.c did, as its events must say it (either producer): the
    endpoints of every socket it used at each call (the local and remote addresses and ports,
    before the call at entry, the new socket at exit), the address arguments of connect, bind
    and sendto, the socketpair's two ends pointing at each other, the credentials before and
    after setresgid/setresuid, and the fork child's first path, unreadable at entry, in the
    exit."""
    evs = [e for e in evs if e.comm == "sockcred"]
    assert evs, "sockcred left no events"
    by_seq = {e.seq: e for e in evs}
    bad = E.F_TASK_UNREADABLE | E.F_SOCK_UNREADABLE | E.F_ADDR_UNREADABLE
    for e in evs:
        assert e.cred is not None and not e.flags & bad, e
        assert e.uid == e.cred[0]
        socks = [i for i, f in enumerate(e.files) if f.path.startswith("socket:[")]
        assert [ep.file for ep in e.endpoints] == socks, e  # one endpoint per socket file
        for ep in e.endpoints:
            assert e.files[ep.file].path == f"socket:[{e.files[ep.file].ino}]"
            assert ep.sk >= 0xFFFF_8000_0000_0000

    def eps(name: str, phase: int = E.ENTRY) -> list[tuple]:
        return [(ep.family, ep.type, ep.local, ep.remote) for e in evs
                if e.name == name and e.phase == phase for ep in e.endpoints]

    tcp4 = f"{V4}:40001", f"{V4}:5000"
    tcp6 = f"{V6}:40002", f"{V6}:6000"
    assert eps("write") == [
        (2, 1, *tcp4), (2, 1, *tcp4[::-1]), (10, 1, *tcp6), (10, 1, *tcp6[::-1]),
        (1, 1, "", ""), (2, 2, f"{V4}:5003", f"{V4}:5002")]
    assert eps("read") == [
        (2, 1, *tcp4[::-1]), (2, 1, *tcp4), (10, 1, *tcp6[::-1]), (10, 1, *tcp6),
        (1, 1, "", ""), (2, 2, f"{V4}:5002", "")]
    # connect's entry: before the call, bound but not connected
    assert eps("connect") == [(2, 1, tcp4[0], ""), (10, 1, tcp6[0], ""),
                              (2, 2, f"{V4}:5003", "")]
    assert eps("listen") == [(2, 1, tcp4[1], ""), (10, 1, tcp6[1], "")]
    assert eps("accept", E.EXIT) == [(2, 1, *tcp4[::-1]), (10, 1, *tcp6[::-1])]
    assert eps("sendto") == [(2, 2, f"{V4}:5003", ""), (2, 2, f"{V4}:5003", f"{V4}:5002"),
                             (1, 2, "", ""), (1, 2, "", "")]
    assert eps("recvfrom") == [(2, 2, f"{V4}:5002", ""), (1, 2, "\\x00pv-abs", ""),
                               (1, 2, "/pv.sock", "")]
    # the address arguments, read at entry; nothing at exit, nothing for other calls
    def addrs(name: str) -> list[tuple]:
        return [(e.addr_family, e.addr) for e in evs if e.name == name and e.phase == E.ENTRY]

    assert addrs("connect") == [(2, f"{V4}:5000"), (10, f"{V6}:6000"), (2, f"{V4}:5002")]
    assert addrs("bind") == [(2, f"{V4}:5000"), (2, f"{V4}:40001"), (10, f"{V6}:6000"),
                             (10, f"{V6}:40002"), (2, f"{V4}:5002"), (2, f"{V4}:5003"),
                             (1, "\\x00pv-abs"), (1, "/pv.sock")]
    assert addrs("sendto") == [(2, f"{V4}:5002"), (0, None), (1, "\\x00pv-abs"),
                               (1, "/pv.sock")]
    assert not [e for e in evs if e.addr is not None and (
        e.phase == E.EXIT or e.name not in ("connect", "bind", "sendto"))]
    # the fork child's unlinkat: its path unreadable at entry, read again at the exit
    (ue,) = [e for e in evs if e.name == "unlinkat" and e.phase == E.ENTRY]
    (ux,) = [e for e in evs if e.name == "unlinkat" and e.phase == E.EXIT]
    assert ux.entry_seq == ue.seq and ux.ret == 0
    assert ue.paths == [""] and ue.flags & E.F_PATH_UNREADABLE, ue
    assert ux.paths == ["pv-fork-literal"] and not ux.flags & E.F_PATH_UNREADABLE, ux
    assert not [e for e in evs if e.phase == E.EXIT and e.paths and e is not ux]
    # the socketpair: both ends at exit, each the other's peer; the write and read use them
    (sp,) = [e for e in evs if e.name == "socketpair" and e.phase == E.EXIT]
    assert sp.ret == 0 and len(sp.out_fds) == 2 and len(sp.files) == 2
    a, b = sp.endpoints
    assert (a.file, b.file, a.family, b.family) == (0, 1, 1, 1)
    assert a.peer == b.sk and b.peer == a.sk and a.sk != b.sk
    (w,) = [e for e in evs if e.name == "write" and e.phase == E.ENTRY and e.endpoints
            and e.endpoints[0].family == 1]
    (r,) = [e for e in evs if e.name == "read" and e.phase == E.ENTRY and e.endpoints
            and e.endpoints[0].family == 1]
    assert w.arg(0) == sp.out_fds[0] and w.endpoints[0].sk == a.sk
    assert r.arg(0) == sp.out_fds[1] and r.endpoints[0].sk == b.sk
    # inet endpoints are no unix pairs: peer 0
    assert all(ep.peer == 0 for e in evs for ep in e.endpoints if ep.family != 1)
    # credentials: entry before the call, exit after it
    root, gid1000, all1000 = (0,) * 8, (0, 1000) * 4, (1000,) * 8
    (gx,) = [e for e in evs if e.name == "setresgid" and e.phase == E.EXIT]
    (ux,) = [e for e in evs if e.name == "setresuid" and e.phase == E.EXIT]
    assert gx.ret == 0 and ux.ret == 0
    assert by_seq[gx.entry_seq].cred == root and gx.cred == gid1000
    assert by_seq[ux.entry_seq].cred == gid1000 and ux.cred == all1000 and ux.uid == 1000
    last = [e for e in evs if e.seq > ux.seq]
    assert last and all(e.cred == all1000 for e in last)
    first = [e for e in evs if e.seq < gx.entry_seq]
    assert first and all(e.cred == root for e in first)


def test_credentials_and_socket_endpoints(shm_dir, tmp_path) -> None:
    """tests/guest_sockcred.c under the plugin: cred before and after setresgid/setresuid,
    the endpoints of TCP (v4 and v6), a socketpair, UDP and unix datagrams, the address
    arguments, a fork child's path re-read at the exit (check_sockcred)."""
    cfg, kit, profile = _kit()
    inc = tmp_path / "inc"
    build_sockcred(inc / "bin")
    initrd = _initrd(cfg, tmp_path, "#!/bin/sh\n/bin/sockcred\n", inc)
    rp = str(shm_dir / "sockcred.ring")
    ring.create(rp, 16 << 20)
    with native.PluginGuest(str(kit.kernel), initrd, "console=ttyS0 quiet panic=-1", rp,
                            profile) as vm:
        vm.run(300)
    evs = ring_events(rp)
    exits = [e for e in evs if e.comm == "sockcred" and e.name == "exit_group"
             and e.phase == E.ENTRY]
    assert len(exits) == 2, exits  # its fork child's and its own
    assert all(e.arg(0) == 0 for e in exits), "sockcred failed in the guest"
    check_sockcred(evs)


KILL_LOOP = """#!/bin/sh
i=0
while true; do
  echo $i > /root/k_$i
  echo "done $i"
  i=$((i+1))
done
"""


@pytest.mark.parametrize("with_daemon", [False, True])
def test_sigkill_qemu_then_recover_stores_every_acked_record_once(shm_dir, tmp_path,
                                                                  with_daemon) -> None:
    """QEMU (and the daemon draining it) SIGKILLed mid-workload: `provisor recover` stores every
    record the plugin wrote, exactly once. Every loop iteration the serial console reports as
    done had its open recorded, entry and exit, before it ran on (write-ahead)."""
    cfg, kit, profile = _kit()
    initrd = _initrd(cfg, tmp_path, KILL_LOOP)
    rp, db = str(shm_dir / "kill.ring"), str(shm_dir / "kill.db")
    ring.create(rp, 4 << 20)  # small: the ring wraps while the daemon drains it
    serial = str(shm_dir / "kill.serial")
    dproc = None
    vm = native.PluginGuest(str(kit.kernel), initrd, "console=ttyS0 quiet panic=-1", rp, profile,
                            serial_log=serial)
    try:
        if with_daemon:
            dproc = subprocess.Popen([sys.executable, "-m", "provisor.cli", "daemon", "--ring", rp,
                                      "--db", db, "-q"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        vm.start()
        target = 120 if with_daemon else 60
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            text = Path(serial).read_text(errors="replace") if os.path.exists(serial) else ""
            if f"done {target}\n" in text:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the guest loop did not get going")
        vm.proc.send_signal(signal.SIGKILL)
        if dproc is not None:
            dproc.send_signal(signal.SIGKILL)
            dproc.wait()
        vm.proc.wait()
    finally:
        vm.close()
    # the kill may land mid-line ("done " and no number yet): only whole lines report a step
    done = [int(m[1]) for m in re.finditer(r"^done (\d+)\r?\n",
                                           Path(serial).read_text(errors="replace"), re.M)]
    assert done and max(done) >= target
    in_ring = ring_events(rp)
    r = provisor("recover", "--ring", rp, "--db", db, "--live")
    assert r.returncode == 0, r.stderr
    r2 = provisor("recover", "--ring", rp, "--db", db, "--live")  # idempotent
    assert r2.returncode == 0, r2.stderr
    con = sqlite3.connect(db)
    try:
        seqs = [s for (s,) in con.execute("SELECT seq FROM events ORDER BY seq")]
        rows = con.execute("SELECT seq, phase, entry_seq, paths FROM events WHERE name = 'openat'"
                           ).fetchall()
    finally:
        con.close()
    assert seqs == list(range(1, len(seqs) + 1))  # exactly once, nothing missing
    assert len(seqs) >= max((e.seq for e in in_ring), default=0)  # all the ring held: stored
    entries = {p: s for s, ph, _, p in rows if ph == "entry" and p.startswith("/root/k_")}
    exits = {es for _, ph, es, _ in rows if ph == "exit"}
    for i in range(max(done) + 1):  # each completed iteration: its open, entry and exit
        assert f"/root/k_{i}" in entries, i
        assert entries[f"/root/k_{i}"] in exits, i


def test_refusals_are_one_line(shm_dir, tmp_path) -> None:
    """No QEMU 10, a missing plugin build, a profile of another kernel, a ring already produced
    into: each a one-line error, exit status 2, and no record written."""
    wl = tmp_path / "w.sh"
    wl.write_text("#!/bin/sh\ntrue\n")
    rp = str(shm_dir / "r.ring")
    ring.create(rp, 1 << 20)
    base = ["collect", "--workload", str(wl), "--ring", rp, "--db", str(shm_dir / "r.db"),
            "--no-daemon"]
    old = tmp_path / "oldqemu"
    old.mkdir()
    fake = old / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)'\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{old}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    r = provisor(*base, env=env)
    assert r.returncode == 2 and "QEMU 7.2.22" in r.stderr and "QEMU 10" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    env = dict(os.environ, PROVISOR_PLUGIN=str(tmp_path / "nope.so"))
    r = provisor(*base, env=env)
    assert r.returncode == 2 and "make plugin" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with ring.Producer.open(rp):  # a producer holds the ring
        r = provisor(*base)
    assert r.returncode == 2 and "ring producer already running (pid" in r.stderr
    assert ring_events(rp) == []


class _OtherKernel:
    """The real profile with another build's banner (same release and build number, another
    compiler): the bzImage check passes, the plugin's banner check in the guest must not."""

    def __init__(self, profile) -> None:
        self._p = profile
        b = profile.banner
        self.banner = b.replace("(gcc", "(xcc", 1) if "(gcc" in b else b[:-2] + "X\n"

    @property
    def banner_bytes(self) -> bytes:
        return self.banner.encode()

    def __getattr__(self, name: str):
        return getattr(self._p, name)


def test_profile_of_another_kernel_is_refused_in_the_guest(shm_dir, tmp_path) -> None:
    cfg, kit, profile = _kit()
    initrd = _initrd(cfg, tmp_path, "#!/bin/sh\necho hi > /root/x\n")
    rp = str(shm_dir / "p.ring")
    ring.create(rp, 1 << 20)
    with native.PluginGuest(str(kit.kernel), initrd, "console=ttyS0 quiet panic=-1", rp,
                            _OtherKernel(profile)) as vm:
        with pytest.raises(native.NativeError) as ei:
            vm.run(120)
    msg = str(ei.value)
    assert "not the one the profile describes" in msg and "\n" not in msg
    assert ring_events(rp) == []  # refused before the first record


def test_bzimage_check_catches_a_wrong_pairing(tmp_path) -> None:
    _, kit, profile = _kit()
    kv = native.bzimage_version(kit.kernel)
    assert kv and kv.split()[0] == profile.release
    native.check_kernel(profile, kit.kernel)  # the right pair passes

    class Other:
        banner = profile.banner.replace(profile.release, "6.1.0-99-cloud-amd64")
        release = "6.1.0-99-cloud-amd64"

    with pytest.raises(native.NativeError, match="does not describe"):
        native.check_kernel(Other(), kit.kernel)


BUSY = """#!/bin/sh
i=0
while [ $i -lt 300 ]; do echo $i > /root/p_$i; i=$((i+1)); done
"""


@pytest.mark.parametrize("policy", ["block", "drop", "fail"])
def test_ring_full_policies_in_a_guest(shm_dir, tmp_path, policy) -> None:
    """A ring far too small for the workload. block: the daemon drains it while the vCPU waits,
    and everything is stored; drop: the guest runs on, the loss is counted and reported by a
    LOSS record; fail: QEMU stops with one line, and what it acknowledged is intact."""
    cfg, kit, profile = _kit()
    initrd = _initrd(cfg, tmp_path, BUSY)
    rp, db = str(shm_dir / "full.ring"), str(shm_dir / "full.db")
    ring.create(rp, L.DATA_OFFSET + L.MIN_DATA)
    dproc = None
    if policy == "block":
        dproc = subprocess.Popen([sys.executable, "-m", "provisor.cli", "daemon", "--ring", rp,
                                  "--db", db, "-q"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        with native.PluginGuest(str(kit.kernel), initrd, "console=ttyS0 quiet panic=-1", rp,
                                profile, policy=policy) as vm:
            if policy == "fail":
                with pytest.raises(native.NativeError) as ei:
                    vm.run(300)
                assert "ring full" in str(ei.value) and "policy: fail" in str(ei.value)
                st = vm.stats()
            else:
                st = vm.run(300)
        if dproc is not None:
            assert wait_drained(rp, int(st.next_seq) - 1, dproc)
    finally:
        if dproc is not None:
            dproc.send_signal(signal.SIGTERM)
            assert dproc.wait(60) == 0
    if policy == "block":
        con = sqlite3.connect(db)
        try:
            n = con.execute("SELECT count(*) FROM events").fetchone()[0]
            opens = con.execute("SELECT count(*) FROM events WHERE name = 'openat' AND "
                                "phase = 'entry' AND paths LIKE '/root/p_%'").fetchone()[0]
        finally:
            con.close()
        assert (n, st.dropped, opens) == (st.records, 0, 300), st.raw
        assert st.blocked_ns > 0, st.raw  # the vCPU did wait for the daemon
        return
    c = ring.Consumer.open(rp, readonly=True)
    try:
        recs = c.read(100_000)
        end = c.last_end
    finally:
        c.close()
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    assert end.reason in (L.End.CLEAN, L.End.FULL, L.End.STALE)
    if policy == "drop":
        assert st.dropped > 0
        with open(rp, "rb") as f:
            state = L.read_producer_state(f.read(L.DATA_OFFSET + L.MIN_DATA))
        assert state.lost_total == st.dropped  # counted persistently, as pmem/ring.py does
        for r in recs:  # a LOSS record (when a small one still fitted) reports running totals
            if r.type == L.RecType.LOSS:
                assert int.from_bytes(r.payload[8:16], "little") <= state.lost_total
        assert ring_events(rp)  # what fitted is intact
    else:
        assert st is not None and st.dropped == 0 and len(recs) >= 1
