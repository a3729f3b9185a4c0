"""The synthetic guest: deterministic, self-consistent streams, written exactly into a ring."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest
from click.testing import CliRunner

from hv import synth
from hv.synth import AT_FDCWD_REG, NO_EXIT, NR, O_CLOEXEC, Guest
from pmem.layout import RecType
from pmem.ring import Consumer, Producer, create
from provisor.cli import cli
from provisor.errors import ProvisorError
from provisor.events import ENTRY, EXIT, F_FILE_UNREADABLE, decode, encode

N = 20_000
FD_SYSCALLS = {NR[n]: n for n in ("read", "write", "pread64", "pwrite64", "readv", "writev",
                                  "close", "dup", "dup2", "dup3", "fcntl", "ftruncate", "mmap")}
FORKS = {NR["fork"], NR["vfork"], NR["clone"]}
F_DUPFD, F_DUPFD_CLOEXEC = 0, 1030


@pytest.fixture(scope="module")
def stream() -> list:
    return synth.events(N, seed=11)


def _by_seq(evs: list) -> dict:
    return {e.seq: e for e in evs}


def _read_ring(path: str) -> list:
    with Consumer.open(path, readonly=True) as c:
        out = []
        while batch := c.read(65536):
            out.extend(batch)
        return out


def test_deterministic_for_a_seed() -> None:
    a = synth.payloads(3000, seed=5)
    assert a == synth.payloads(3000, seed=5)
    assert a != synth.payloads(3000, seed=6)


def test_exact_count_and_numbering() -> None:
    for n in (0, 1, 2, 3, 4, 5, 37, 100, 1001):
        evs = synth.events(n, seed=n, start_seq=50)
        assert len(evs) == n
        assert [e.seq for e in evs] == list(range(50, 50 + n))


def test_every_payload_decodes_to_the_event(stream: list) -> None:
    """Also: every string synth makes is already guest text (decode escapes what encode
    unescaped; a backslash or a control character would not come back equal)."""
    for ev in stream:
        back = decode(encode(ev), ev.seq)
        back.payload = ev.payload
        assert back == ev


def test_every_event_has_the_modelled_credentials(stream: list) -> None:
    """synth models a process's credentials as its uid for all eight ids (nothing in the model
    is setuid): Event.cred on every event, entry and exit, the fast encoder's bytes included."""
    assert all(ev.cred == (ev.uid,) * 8 for ev in stream)
    assert {ev.uid for ev in stream} >= {0, 1000}
    enc = synth.FastEncoder(check_every=1)  # checks every event against events.encode
    for ev in stream[:3000]:
        assert decode(enc(ev)).cred == ev.cred


def test_exits_reference_their_entries(stream: list) -> None:
    by_seq = _by_seq(stream)
    exits_of: dict[int, int] = defaultdict(int)
    for ev in stream:
        if ev.phase == EXIT:
            en = by_seq[ev.entry_seq]
            assert en.phase == ENTRY and en.seq < ev.seq
            assert (en.pid, en.tgid, en.nr) == (ev.pid, ev.tgid, ev.nr)
            assert ev.ret is not None
            exits_of[en.seq] += 1
    for ev in stream:
        if ev.phase == ENTRY:
            assert ev.ret is None
            # without a crash tail every call that returns has exactly one exit
            assert exits_of[ev.seq] == (0 if ev.nr in NO_EXIT else 1), ev


def test_threads_interleave(stream: list) -> None:
    """Another task's event comes between some entry and its exit."""
    by_seq = _by_seq(stream)
    assert any(ev.phase == EXIT and ev.entry_seq != ev.seq - 1 and
               by_seq[ev.seq - 1].pid != ev.pid for ev in stream)


def test_process_tree(stream: list) -> None:
    """Each task shows up only after the fork/clone exit that created it, in its parent."""
    by_seq = _by_seq(stream)
    created: set[int] = {1}  # pids live so far
    threads: dict[int, set[int]] = {1: {1}}  # tgid -> its live pids
    for ev in stream:
        if ev.pid not in created:
            pytest.fail(f"pid {ev.pid} (tgid {ev.tgid}) acts before it was created: {ev}")
        if ev.phase == EXIT and ev.nr in FORKS and ev.ret > 0:
            en = by_seq[ev.entry_seq]
            created.add(ev.ret)
            if en.arg(0) & 0x10000:
                threads[ev.tgid].add(ev.ret)
            else:
                threads[ev.ret] = {ev.ret}
            child = next((e for e in stream if e.seq > ev.seq and e.pid == ev.ret), None)
            if child is None:  # created at the very end of the stream
                assert ev.seq > len(stream) - 50
            elif en.arg(0) & 0x10000:  # CLONE_THREAD
                assert child.tgid == ev.tgid
            else:
                assert (child.tgid, child.ppid) == (ev.ret, ev.tgid)
                assert child.start_time > 0
        if ev.phase == ENTRY and ev.nr == NR["exit_group"]:
            created -= threads.pop(ev.tgid)
        elif ev.phase == ENTRY and ev.nr == NR["exit"]:
            created.discard(ev.pid)
            threads[ev.tgid].discard(ev.pid)


def test_reused_pids_get_a_new_start_time() -> None:
    evs = Guest(3, pid_max=320).events(30_000)
    starts = defaultdict(set)
    for ev in evs:
        if ev.pid == ev.tgid:
            starts[ev.tgid].add(ev.start_time)
    assert any(len(s) > 1 for s in starts.values())
    # one start time per live incarnation: an exit_group precedes a reuse
    last_start: dict[int, int] = {}
    gone: set[int] = set()
    for ev in evs:
        if ev.tgid in last_start and ev.start_time != last_start[ev.tgid]:
            assert ev.tgid in gone
            gone.discard(ev.tgid)
        last_start[ev.tgid] = ev.start_time
        if ev.nr == NR["exit_group"]:
            gone.add(ev.tgid)


def _replay_fds(stream: list) -> list[str]:
    """Track fd tables from the events alone (what the daemon must do); return problems."""
    by_seq = _by_seq(stream)
    tables: dict[int, dict[int, bool]] = {1: {0: False, 1: False, 2: False}}  # fd -> cloexec
    threaded: set[int] = set()  # tgids with threads: their fds may be taken concurrently
    problems = []

    def lowest(fds: dict[int, bool], start: int = 0) -> int:
        fd = start
        while fd in fds:
            fd += 1
        return fd

    for ev in stream:
        if ev.phase != EXIT:
            if ev.nr == NR["exit_group"]:
                tables.pop(ev.tgid, None)
                threaded.discard(ev.tgid)
            continue
        en = by_seq[ev.entry_seq]
        fds = tables.setdefault(ev.tgid, {})
        name, ret = en.name, ev.ret
        if ev.nr in FD_SYSCALLS:
            fd = en.arg(4) if name == "mmap" else en.arg(0)
            if (fd in fds) != (ret >= 0 or ret < -4096 or name == "mmap" and ret > 0):
                if not (ret == -9 and fd not in fds):
                    problems.append(f"{name} on fd {fd} (open: {fd in fds}) returned {ret}")
            if ret == -9 and fd in fds:
                problems.append(f"EBADF on open fd {fd}: {ev}")
        if ret < 0:
            continue
        if name in ("open", "openat", "dup") and ev.tgid not in threaded:
            if ret != lowest(fds):
                problems.append(f"{name} returned {ret}, not the lowest free fd")
        if name in ("open", "openat"):
            flags = en.arg(1) if name == "open" else en.arg(2)
            if ret in fds:
                problems.append(f"open returned fd {ret} already open")
            fds[ret] = bool(flags & O_CLOEXEC)
        elif name in ("pipe", "pipe2"):
            r, w = ev.out_fds
            fds[r] = fds[w] = name == "pipe2" and bool(en.arg(1) & O_CLOEXEC)
        elif name == "close":
            del fds[en.arg(0)]
        elif name == "dup":
            fds[ret] = False
        elif name in ("dup2", "dup3"):
            fds[ret] = name == "dup3" and bool(en.arg(2) & O_CLOEXEC)
        elif name == "fcntl" and en.arg(1) in (F_DUPFD, F_DUPFD_CLOEXEC):
            if ret < en.arg(2) or ret in fds:
                problems.append(f"F_DUPFD returned {ret}")
            fds[ret] = en.arg(1) == F_DUPFD_CLOEXEC
        elif ev.nr in FORKS and ret > 0 and not en.arg(0) & 0x10000:
            tables[ret] = dict(fds)
            threaded.discard(ret)  # a reused tgid
        elif ev.nr in FORKS and ret > 0:
            threaded.add(ev.tgid)
        elif name == "execve":
            for fd in [fd for fd, ce in fds.items() if ce]:
                del fds[fd]
    return problems


def test_fd_consistency(stream: list) -> None:
    assert _replay_fds(stream) == []
    failed = [e for e in stream if e.phase == EXIT and e.nr in FD_SYSCALLS and e.ret == -9]
    assert failed, "deliberate EBADF calls are part of the workload"


def test_fd_replay_catches_a_bad_stream(stream: list) -> None:
    """The consistency check can fail: a read on a never-opened fd that succeeds."""
    bad = [e for e in stream]
    i = next(i for i, e in enumerate(bad) if e.phase == ENTRY and e.nr == NR["read"])
    ev = bad[i]
    bad[i] = decode(encode(ev), ev.seq)
    bad[i].args = (77,) + ev.args[1:]
    assert _replay_fds(bad)


def test_syscall_details(stream: list) -> None:
    names = {e.name for e in stream}
    for n in ("fork", "vfork", "clone", "execve", "open", "openat", "read", "write", "pread64",
              "pwrite64", "readv", "writev", "pipe", "pipe2", "dup", "dup2", "dup3", "fcntl",
              "close", "rename", "renameat", "link", "unlink", "symlink", "mkdir", "chdir",
              "mmap", "truncate", "ftruncate", "exit_group", "exit"):
        assert n in names, n
    by_seq = _by_seq(stream)
    for ev in stream:
        en = ev if ev.phase == ENTRY else by_seq[ev.entry_seq]
        assert ev.comm and ev.start_time and ev.tgid and ev.pid
        if ev.name == "openat" and ev.phase == ENTRY:
            assert ev.args[0] == AT_FDCWD_REG and ev.arg(0) == -100 and len(ev.paths) == 1
        if ev.phase == ENTRY and ev.paths:
            assert ev.cwd and ev.cwd.startswith("/") and ev.cwd_mnt
        if ev.name == "execve" and ev.phase == ENTRY:
            assert ev.argv and ev.paths
        if ev.name in ("pipe", "pipe2") and ev.phase == EXIT:
            assert ev.ret == 0 and len(ev.out_fds) == 2 and ev.out_fds[0] != ev.out_fds[1]
            assert all(f.path.startswith("pipe:[") for f in ev.files)
        if ev.name == "openat" and ev.phase == EXIT and ev.ret >= 0:
            assert ev.files or ev.flags & F_FILE_UNREADABLE
        if ev.phase == EXIT and ev.name == "execve" and ev.ret == 0:
            assert ev.comm != en.comm or ev.comm in ("bash", "sh", "python3")
    assert any(e.phase == EXIT and e.ret == -2 for e in stream)  # ENOENT
    assert any(e.flags & F_FILE_UNREADABLE for e in stream)
    pids_of = defaultdict(set)
    for ev in stream:
        pids_of[ev.tgid].add(ev.pid)
    assert any(len(p) > 1 for p in pids_of.values()), "threads share a tgid"


def test_renames_keep_identity(stream: list) -> None:
    """A file renamed keeps (dev, ino); the kernel path in later identities follows it."""
    by_seq = _by_seq(stream)
    seen = 0
    for ev in stream:
        if ev.phase == EXIT and ev.name == "rename" and ev.ret == 0:
            en = by_seq[ev.entry_seq]
            if en.files:
                seen += 1
                assert en.files[0].path.endswith(en.paths[0].rsplit("/", 1)[-1])
    assert seen


def test_file_fraction() -> None:
    none = synth.events(3000, seed=2, file_fraction=0.0)
    assert not any(e.files for e in none if e.name not in ("pipe", "pipe2"))
    reads = [e for e in synth.events(3000, seed=2, file_fraction=1.0)
             if e.name == "read" and e.phase == ENTRY]
    assert reads and all(e.files for e in reads if e.ret is None and e.arg(0) != 7)
    with pytest.raises(ProvisorError):
        Guest(1, file_fraction=2.0)


@pytest.mark.parametrize("k", [1, 3, 12])
def test_crash_tail(k: int) -> None:
    evs = synth.events(5000, seed=4, crash_tail=k)
    assert len(evs) == 5000
    exited = {e.entry_seq for e in evs if e.phase == EXIT}
    entries = [e for e in evs if e.phase == ENTRY and e.nr not in NO_EXIT]
    assert all(e.seq not in exited for e in entries[-k:])
    assert all(e.seq in exited for e in entries[:-k])
    assert len({e.pid for e in entries[-k:]}) == k


def test_crash_tail_bounds() -> None:
    with pytest.raises(ProvisorError):
        synth.events(3, seed=1, crash_tail=4)
    g = Guest(1)
    g.events(100, crash_tail=1)
    with pytest.raises(ProvisorError):
        g.events(100)


def test_run_writes_the_same_payloads(shm_dir) -> None:
    path = str(shm_dir / "r")
    create(path, 16 << 20)
    with Producer.open(path) as prod:
        st = Guest(9).run(prod, 4000, batch=50)
    assert (st.events, st.records, st.first_seq, st.last_seq) == (4000, 4000, 1, 4000)
    recs = _read_ring(path)
    assert [r.payload for r in recs] == synth.payloads(4000, seed=9)
    # one by one: the same bytes
    create(path, 16 << 20, overwrite=True)
    with Producer.open(path) as prod:
        Guest(9).run(prod, 4000, batch=1)
    assert [r.payload for r in _read_ring(path)] == synth.payloads(4000, seed=9)


def test_run_continues_after_existing_records(shm_dir) -> None:
    path = str(shm_dir / "r")
    create(path, 16 << 20)
    with Producer.open(path) as prod:
        prod.note("before")
        Guest(9).run(prod, 500)
    recs = _read_ring(path)[1:]
    got = [decode(r.payload, r.seq) for r in recs]
    for ev in got:
        ev.payload = b""
    assert got == synth.events(500, seed=9, start_seq=2)


def test_drop_policy_keeps_entry_seqs_true(shm_dir) -> None:
    """With a small ring and drop: LOSS records shift sequence numbers; exits still name
    their own entries (or 0 when the entry was dropped)."""
    path = str(shm_dir / "r")
    create(path, 12288 + 65536)
    g = Guest(8)
    seen: dict[int, object] = {}
    dropped = losses = 0
    with Producer.open(path, "drop") as prod, Consumer.open(path) as cons:
        for _ in range(6):
            st = g.run(prod, 800, batch=32)
            dropped += st.dropped
            recs = cons.read(100000)
            for r in recs:
                if r.type == RecType.LOSS:
                    losses += 1
                elif r.type == RecType.EVENT:
                    seen[r.seq] = decode(r.payload, r.seq)
            if recs:
                last = recs[-1]
                cons.release(last.seq, (last.offset + (32 + len(last.payload) + 31) // 32 * 32)
                             % cons.size)
    assert dropped and losses
    checked = 0
    for ev in seen.values():
        if ev.phase == EXIT and ev.entry_seq:
            en = seen.get(ev.entry_seq)
            assert en is not None and en.phase == ENTRY and en.pid == ev.pid
            checked += 1
    assert checked > 100


def test_bad_arguments() -> None:
    with pytest.raises(ProvisorError):
        Guest(1).events(-1)
    with pytest.raises(ProvisorError):
        Guest(1, pid_max=10)
    with pytest.raises(ProvisorError):
        Guest(1).run(None, 10, batch=0)


def test_cli_writes_records(shm_dir) -> None:
    path = str(shm_dir / "c.ring")
    run = CliRunner().invoke
    assert run(cli, ["ring", "create", path, "--size", "8M"]).exit_code == 0
    res = run(cli, ["synth", "--ring", path, "--events", "2500", "--seed", "3",
                    "--crash-tail", "2"])
    assert res.exit_code == 0, res.output
    assert "2500 events" in res.output and "seq 1..2500" in res.output
    info = json.loads(run(cli, ["ring", "info", path, "--json"]).output)
    assert info["records"] == {"EVENT": 2500}
    assert (info["first_seq"], info["last_seq"]) == (1, 2500)
    payloads = [r.payload for r in _read_ring(path)]
    assert payloads == synth.payloads(2500, seed=3, crash_tail=2)
    res = run(cli, ["synth", "--ring", path, "--events", "100", "--batch", "1",
                    "--rate", "1e9"])
    assert res.exit_code == 0
    info = json.loads(run(cli, ["ring", "info", path, "--json"]).output)
    assert info["last_seq"] == 2600


def test_cli_errors(shm_dir) -> None:
    run = CliRunner().invoke
    res = run(cli, ["synth", "--ring", str(shm_dir / "missing"), "--events", "10"])
    assert isinstance(res.exception, ProvisorError)
    bad = shm_dir / "notaring"
    bad.write_bytes(b"x" * 100000)
    res = run(cli, ["synth", "--ring", str(bad), "--events", "10"])
    assert isinstance(res.exception, ProvisorError)
    res = run(cli, ["synth", "--ring", str(bad), "--events", "-3"])
    assert res.exit_code == 2 and res.exception is not None
    assert "Example" in run(cli, ["synth", "--help"]).output


def test_fast_encoder_is_byte_identical(stream: list) -> None:
    enc = synth.FastEncoder(check_every=1 << 40)
    assert [enc(ev) for ev in stream] == [encode(ev) for ev in stream]


def test_fast_encoder_refuses_to_disagree(monkeypatch, stream: list) -> None:
    monkeypatch.setattr(synth, "encode", lambda ev: b"other")
    enc = synth.FastEncoder(check_every=1)
    with pytest.raises(ProvisorError):
        enc(stream[0])


def test_deterministic_across_interpreters() -> None:
    """String hashing differs between interpreters; the stream must not."""
    code = ("import hashlib; from hv import synth; h = hashlib.sha256(); "
            "[h.update(p) for p in synth.payloads(4000, seed=21)]; print(h.hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": str(hs)},
                           check=True).stdout for hs in (1, 2)}
    h = hashlib.sha256()
    for p in synth.payloads(4000, seed=21):
        h.update(p)
    assert outs == {h.hexdigest() + "\n"}


def test_iter_payloads_streams_the_same_bytes() -> None:
    assert list(synth.iter_payloads(3000, seed=4, start_seq=7, crash_tail=2)) == \
        synth.payloads(3000, seed=4, start_seq=7, crash_tail=2)


def test_gc_state_is_restored() -> None:
    assert gc.isenabled()
    synth.events(100, seed=1)
    assert gc.isenabled()
    with pytest.raises(ProvisorError):
        synth.events(5, seed=1, crash_tail=9)
    assert gc.isenabled()
