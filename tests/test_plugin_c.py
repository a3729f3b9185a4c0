"""The native plugin's C layers against their Python references, on real files and libpmem.

``pv-ringtool`` (hv/plugin/ringtool.c) drives the C ring producer (ring.c) and the event
encoder (event.c); ``pv-fuzz`` (hv/plugin/fuzz.c, built with ASan and UBSan) feeds the
decoding layer (linux.c) hostile memory and checks offsets files (offsets.c). What the C code
writes must be what pmem/ring.py, pmem/layout.py and provisor/events.py write and read: same
records, same sequence numbers, same LOSS reports, same bytes. ``make plugin`` builds both
tools; it runs once per session and its failure fails every test here (the module is skipped
only when the tools are missing and there is no gcc to build them).
"""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hv.profile import PLUGIN_MEMBERS, PLUGIN_OPTIONAL, Profile, plugin_offsets
from pmem import layout as L
from pmem import ring
from provisor import locks
from provisor.events import (
    F_TRUNCATED,
    MAX_FIELD,
    Endpoint,
    Event,
    EventDecodeError,
    FileId,
    decode,
    encode,
)
from provisor.guesttext import escape

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "hv" / "plugin"
RINGTOOL = PLUGIN / "build" / "pv-ringtool"
FUZZ = PLUGIN / "build" / "pv-fuzz"
SMALL = L.DATA_OFFSET + L.MIN_DATA  # 64 KiB of data: wraps every few hundred records
EVENT = L.RecType.EVENT

if not (RINGTOOL.exists() and FUZZ.exists()) and shutil.which("gcc") is None:
    pytest.skip("the C harnesses (hv/plugin/build/pv-ringtool, pv-fuzz) are not built and "
                "there is no gcc to build them", allow_module_level=True)


@pytest.fixture(scope="session", autouse=True)
def built() -> None:
    """``make plugin`` once: the tools must be current with the C sources under test."""
    r = subprocess.run(["make", "-s", "plugin"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 or not RINGTOOL.exists() or not FUZZ.exists():
        pytest.fail(f"make plugin failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")


# ------------------------------------------------------------------------------- helpers
def payload(i: int, size: int, vary: bool = False) -> bytes:
    """What pv-ringtool appends as record i (ringtool.c's header comment)."""
    n = (i * 7919) % (size + 1) if vary else size
    return i.to_bytes(8, "little")[:n] + bytes((i + 7 * j) & 0xFF for j in range(8, n))


def tool(path, policy: str, n: int, size: int, *extra: str, timeout: float = 60
         ) -> tuple[int, list[int | None], list[str]]:
    """Run pv-ringtool: (exit status, a seq or None (dropped) per record, stderr lines)."""
    r = subprocess.run([str(RINGTOOL), str(path), policy, str(n), str(size), *extra],
                       capture_output=True, text=True, timeout=timeout)
    seqs = [None if x == "drop" else int(x) for x in r.stdout.split()]
    return r.returncode, seqs, r.stderr.splitlines()


def read_all(cons: ring.Consumer) -> list[L.Record]:
    out: list[L.Record] = []
    while batch := cons.read(100000):
        out += batch
    return out


def chain(path) -> tuple[list[L.Record], L.ChainEnd]:
    """The valid chain from the checkpoint, read-only (PADs left out), and why it ended."""
    with ring.Consumer.open(str(path), readonly=True) as c:
        recs, end = L.collect(c.buf, c.header)
        return [r for r in recs if r.type != L.RecType.PAD], end


def next_off(r: L.Record, size: int) -> int:
    return (r.offset + L.padded(len(r.payload))) % size


# ------------------------------------------------------------ C producer, Python consumer
def test_c_records_read_back_across_wraps_and_producers_take_turns(shm_dir: Path) -> None:
    """Batches of C appends alternate with Python reads and (partial) releases over many
    wrap-arounds; every record comes back with its sequence number and exact payload. Then a
    Python producer continues the C one's ring, and a C producer the Python one's."""
    path = shm_dir / "wrap.ring"
    ring.create(str(path), SMALL)
    size = L.MIN_DATA
    rng = random.Random(7)
    nxt, wraps, last_off = 1, 0, -1
    unreleased: list[L.Record] = []
    with ring.Consumer.open(str(path)) as cons:
        for _ in range(30):
            # as many records as surely fit beside the unreleased ones (a PAD may be needed)
            room = size - sum(L.padded(len(r.payload)) for r in unreleased) - 2 * 1024 - 64
            n = 0
            while room - L.padded(len(payload(nxt + n, 700, True))) > 0 and n < 400:
                room -= L.padded(len(payload(nxt + n, 700, True)))
                n += 1
            rc, seqs, err = tool(path, "block", n, 700, "--from", str(nxt), "--vary")
            assert rc == 0 and not err, err
            assert seqs == list(range(nxt, nxt + n))
            recs = read_all(cons)
            assert [r.seq for r in recs] == seqs
            for r in recs:
                assert r.type == EVENT and r.payload == payload(r.seq, 700, True), r.seq
                wraps += r.offset < last_off
                last_off = r.offset
            unreleased += recs
            keep = rng.randrange(0, min(len(unreleased), 40) + 1)  # sometimes release all
            if keep < len(unreleased):
                upto = unreleased[len(unreleased) - keep - 1]
                cons.release(upto.seq, next_off(upto, size))
                unreleased = unreleased[len(unreleased) - keep:]
            nxt += n
        assert wraps >= 3, f"only {wraps} wrap-arounds"

        # the Python producer finds the C one's tail and continues its numbering
        with ring.Producer.open(str(path)) as p:
            got = [p.append(EVENT, payload(i, 300)) for i in range(nxt, nxt + 50)]
        assert got == list(range(nxt, nxt + 50))
        recs = read_all(cons)
        assert [(r.seq, r.payload) for r in recs] == [(i, payload(i, 300)) for i in got]
        cons.release(recs[-1].seq, next_off(recs[-1], size))
        nxt += 50
        # and the C producer the Python one's
        rc, seqs, err = tool(path, "block", 60, 500, "--from", str(nxt), "--vary",
                             "--note", "after python")
        assert rc == 0 and seqs == list(range(nxt, nxt + 61)), err
        recs = read_all(cons)
        assert (recs[0].type, recs[0].payload) == (L.RecType.NOTE, b"after python")
        assert [(r.seq, r.payload) for r in recs[1:]] == [
            (s, payload(i, 500, True)) for s, i in zip(seqs[1:], range(nxt, nxt + 60),
                                                      strict=True)]
    _, end = chain(path)
    assert end.reason == L.End.CLEAN


# ----------------------------------------------------------------------- ring-full policies
def test_drop_policy_matches_the_python_producer(shm_dir: Path) -> None:
    """The same appends and releases on twin rings, C producer on one, Python on the other:
    the same records dropped, the same LOSS records (payload: lost since the last report, lost
    total) at the same sequence numbers and offsets, the same producer state."""
    c_path, py_path = shm_dir / "c.ring", shm_dir / "py.ring"
    for p in (c_path, py_path):
        ring.create(str(p), SMALL)
    size, nxt, dropped, losses = L.MIN_DATA, 1, 0, []
    with ring.Consumer.open(str(c_path)) as cc, ring.Consumer.open(str(py_path)) as pc:
        for rnd in range(8):
            n = 150 + 40 * rnd
            note = ["--note", f"round {rnd}"] if rnd % 3 == 0 else []
            rc, c_seqs, err = tool(c_path, "drop", n, 800, "--from", str(nxt), "--vary", *note)
            assert rc == 0 and not err, err
            with ring.Producer.open(str(py_path), "drop") as prod:
                py_seqs = [prod.note(f"round {rnd}")] if note else []
                py_seqs += [prod.append(EVENT, payload(i, 800, True))
                            for i in range(nxt, nxt + n)]
            assert c_seqs == py_seqs, f"round {rnd}"
            dropped += c_seqs.count(None)
            c_recs, py_recs = read_all(cc), read_all(pc)
            assert [(r.seq, r.type, r.offset, r.payload) for r in c_recs] == [
                (r.seq, r.type, r.offset, r.payload) for r in py_recs], f"round {rnd}"
            events_seqs = c_seqs[1:] if note else c_seqs  # record i of the run -> its seq
            by_seq = {s: i for s, i in zip(events_seqs, range(nxt, nxt + n), strict=True) if s}
            for r in c_recs:
                if r.type == L.RecType.LOSS:
                    losses.append((int.from_bytes(r.payload[:8], "little"),
                                   int.from_bytes(r.payload[8:16], "little")))
                elif r.type == EVENT:
                    assert r.payload == payload(by_seq[r.seq], 800, True)
            if c_recs:  # release about two thirds: the next round starts on a part-full ring
                upto = c_recs[len(c_recs) * 2 // 3]
                cc.release(upto.seq, next_off(upto, size))
                pc.release(upto.seq, next_off(upto, size))
            nxt += n
        c_state = L.read_producer_state(cc.buf)
        py_state = L.read_producer_state(pc.buf)
    assert dropped > 0 and losses, "the ring never overflowed"
    assert c_state == py_state
    assert c_state.lost_total == dropped
    # each LOSS reports the drops since the previous one; the totals add up
    total = 0
    for pending, tot in losses:
        total += pending
        assert tot == total
    assert total == c_state.lost_reported


def test_fail_policy_stops_cleanly(shm_dir: Path) -> None:
    """A full ring under ``fail``: exit 2 with one line, after the seqs of the records that
    made it; the ring ends clean on exactly those, and the Python producer stops at the same
    record on a twin ring. After a release the next run continues the numbering."""
    path, twin = shm_dir / "fail.ring", shm_dir / "twin.ring"
    ring.create(str(path), SMALL)
    ring.create(str(twin), SMALL)
    rc, seqs, err = tool(path, "fail", 5000, 100)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("pv-ringtool: ") and "ring full" in err[0]
    assert f"at sequence {len(seqs) + 1}" in err[0]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 100
    recs, end = chain(path)
    assert end.reason == L.End.CLEAN
    assert [(r.seq, r.payload) for r in recs] == [(s, payload(s, 100)) for s in seqs]
    with ring.Producer.open(str(twin), "fail") as p:
        got = []
        with pytest.raises(ring.RingFull):
            for i in range(1, 5001):
                got.append(p.append(EVENT, payload(i, 100)))
    assert got == seqs

    with ring.Consumer.open(str(path)) as cons:
        recs = read_all(cons)
        cons.release(recs[99].seq, next_off(recs[99], L.MIN_DATA))
    first = len(seqs) + 1
    rc, more, err = tool(path, "fail", 5000, 100, "--from", str(first))
    assert rc == 2 and len(err) == 1 and "ring full" in err[0]
    assert more == list(range(first, first + len(more))) and 90 <= len(more) <= 100
    recs, end = chain(path)
    assert end.reason in (L.End.CLEAN, L.End.STALE)  # STALE: it filled up to the head exactly
    assert [r.seq for r in recs] == list(range(101, more[-1] + 1))
    assert all(r.payload == payload(r.seq, 100) for r in recs)


def test_open_refusals_are_one_line(shm_dir: Path) -> None:
    junk = shm_dir / "junk"
    junk.write_bytes(bytes(SMALL))
    link = shm_dir / "link"
    link.symlink_to(junk)
    for path, why in ((shm_dir / "absent", "no such ring image"), (link, "symlink"),
                      (junk, "not a provisor ring")):
        rc, seqs, err = tool(path, "block", 1, 10)
        assert rc == 2 and seqs == [] and len(err) == 1, err
        assert err[0].startswith("pv-ringtool: ") and why in err[0]


# --------------------------------------------------------------------------- producer lock
def test_one_producer_at_a_time_c_and_python(shm_dir: Path) -> None:
    path = shm_dir / "lock.ring"
    ring.create(str(path), SMALL)
    holder = subprocess.Popen([str(RINGTOOL), str(path), "hold", "5"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout and holder.stdout.readline() == "held\n"
        with pytest.raises(locks.LockError, match="ring producer") as e:
            ring.Producer.open(str(path))
        assert e.value.holder == holder.pid
        rc, _, err = tool(path, "block", 1, 10)  # a second C producer too
        assert rc == 2 and len(err) == 1 and "ring producer" in err[0]
        with ring.Consumer.open(str(path)):  # the consumer role is another byte
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    # the kernel dropped the dead holder's lock
    with ring.Producer.open(str(path)) as p:
        assert p.append(EVENT, b"x") == 1
        rc, seqs, err = tool(path, "block", 1, 10)
        assert rc == 2 and seqs == [] and len(err) == 1, err
        assert err[0].startswith("pv-ringtool: ") and "ring producer" in err[0]
    rc, seqs, _ = tool(path, "block", 1, 10)
    assert rc == 0 and seqs == [2]
    # a SIGKILLed Python holder releases it too
    py = subprocess.Popen([sys.executable, "-c",
                           "import sys, time\nfrom pmem import ring\n"
                           f"p = ring.Producer.open({str(path)!r})\n"
                           "print('held', flush=True)\ntime.sleep(30)\n"],
                          stdout=subprocess.PIPE, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert py.stdout and py.stdout.readline() == "held\n"
        assert tool(path, "block", 1, 10)[0] == 2
    finally:
        py.send_signal(signal.SIGKILL)
        py.wait(10)
    rc, seqs, _ = tool(path, "block", 1, 10)
    assert rc == 0 and seqs == [3]


# ---------------------------------------------------------------------------------- crash
class Drainer(threading.Thread):
    """The daemon's part: read what the C producer appends and release it, continuously."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.got: list[L.Record] = []
        self.end: L.ChainEnd | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with ring.Consumer.open(self.path) as cons:
                while True:
                    stopping = self.stop.is_set()
                    recs = cons.read(4096)
                    self.got += recs
                    if recs:
                        cons.release(cons.next_seq - 1, cons.next_off)
                    elif stopping:  # one full read after the stop: nothing left behind
                        self.end = cons.last_end
                        return
                    else:
                        time.sleep(0.0005)
        except BaseException as e:  # reported by the test thread
            self.error = e


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkilled_c_producer_keeps_every_acknowledged_record(shm_dir: Path, seed: int
                                                             ) -> None:
    """SIGKILL pv-ringtool in the middle of a long run on a small ring a Python consumer
    drains: every seq it printed is there exactly once with its payload (at most the one
    record being appended when it died is there besides), the chain ends safely, and the next
    producer continues the numbering."""
    path = str(shm_dir / "crash.ring")
    ring.create(path, SMALL)
    rng = random.Random(seed)
    drainer = Drainer(path)
    drainer.start()
    proc = subprocess.Popen([str(RINGTOOL), path, "block", "200000", "600", "--vary"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed: list[int] = []
    kill_at = 2000 + rng.randrange(3000)
    assert proc.stdout and proc.stderr
    for raw in proc.stdout:
        printed.append(int(raw))
        if len(printed) == kill_at:
            time.sleep(rng.uniform(0, 0.2))
            proc.send_signal(signal.SIGKILL)
            break
    printed += [int(x) for x in proc.stdout.read().split()]  # what was in the pipe
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    drainer.stop.set()
    drainer.join(60)
    assert drainer.error is None, drainer.error
    assert printed == list(range(1, len(printed) + 1))
    seqs = [r.seq for r in drainer.got]
    assert seqs == list(range(1, len(seqs) + 1)), "a record twice, or one missing"
    assert len(printed) <= len(seqs) <= len(printed) + 1
    for r in drainer.got:
        assert r.type == EVENT and r.payload == payload(r.seq, 600, True), r.seq
    offsets = [r.offset for r in drainer.got]
    assert sum(b < a for a, b in zip(offsets, offsets[1:], strict=False)) >= 3  # wraps
    # a kill leaves no torn record: the body and the sequence field land in that order
    assert drainer.end is not None
    assert drainer.end.reason in (L.End.CLEAN, L.End.CHECKSUM, L.End.STALE), drainer.end
    with ring.Consumer.open(path, readonly=True) as c:
        assert L.salvage(c.buf, c.header).duplicates == []
    first = len(seqs) + 1
    rc, more, err = tool(path, "block", 20, 600, "--from", str(first), "--vary")
    assert rc == 0 and more == list(range(first, first + 20)), err
    recs, end = chain(path)
    assert end.reason == L.End.CLEAN
    assert [(r.seq, r.payload) for r in recs] == [(s, payload(s, 600, True)) for s in more]


# --------------------------------------------------------------------------------- events
def _caps() -> dict[int, int]:
    """event.c's per-tag section capacities (its ``caps`` table, evaluated)."""
    src = (PLUGIN / "event.c").read_text()
    m = re.search(r"caps\[PV_N_SECTIONS\]\s*=\s*\{(.*?)\};", src, re.S)
    assert m, "event.c: no caps table"
    body = m.group(1)
    assert re.fullmatch(r"[\d\s+*(),]*", body), body
    caps = eval("(" + body + ")", {"__builtins__": {}})  # digits and arithmetic only
    return dict(enumerate(caps))


CAPS = _caps()


class EventTool:
    """``pv-ringtool --event`` as a coprocess: one description in, one hex line out."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(RINGTOOL), "--event"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def encode(self, lines: list[str]) -> bytes:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(("\n".join(lines) + "\nend\n").encode())
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        assert out.endswith(b"\n"), (self.proc.poll(), self.proc.stderr and
                                     self.proc.stderr.read())
        return bytes.fromhex(out.decode())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        assert self.proc.wait(10) == 0


@pytest.fixture(scope="module")
def event_tool():
    t = EventTool()
    yield t
    t.close()


FIXED = ("phase", "vcpu", "nr", "flags", "entry_seq", "ts_ns", "tgid", "pid", "ppid", "uid",
         "start_time", "cwd_mnt")


def c_expected(fixed: dict, ret: int | None, args: tuple[int, ...], fields: list[tuple]
               ) -> bytes:
    """What event.c must produce: events.encode of the event, after event.c's one documented
    difference: a field that does not fit its section (event.c's caps bound every payload)
    is left out, with F_TRUNCATED."""
    used = dict.fromkeys(CAPS, 0)
    flags = fixed["flags"]
    kept: dict[int, list] = {t: [] for t in range(1, 11)}
    for tag, value in sorted(fields, key=lambda f: f[0]):  # stable: order within a tag kept
        if tag in (8, 10) and kept[tag]:
            continue  # one cred, one address: a second is ignored
        if tag == 10 and len(value[1]) > 108:
            flags |= F_TRUNCATED  # beyond any address text: left out
            continue
        if tag == 9 and (len(value[5]) > 255 or len(value[6]) > 255):
            flags |= F_TRUNCATED  # beyond what the plugin reads: left out
            continue
        n = (4 if tag == 7 else 32 if tag == 8 else 24 + len(value[5]) + len(value[6])
             if tag == 9 else 2 + len(value[1]) if tag == 10 else min(MAX_FIELD, 16 + len(value[2]) if tag == 6 else len(value)))
        if used[tag] + 3 + n > CAPS[tag]:
            flags |= F_TRUNCATED
            continue
        used[tag] += 3 + n
        kept[tag].append(value)
    ev = Event(nr=fixed["nr"], phase=fixed["phase"], ts_ns=fixed["ts_ns"], vcpu=fixed["vcpu"],
               entry_seq=fixed["entry_seq"], tgid=fixed["tgid"], pid=fixed["pid"],
               ppid=fixed["ppid"], uid=fixed["uid"], start_time=fixed["start_time"], ret=ret,
               cwd_mnt=fixed["cwd_mnt"], args=args, flags=flags,
               comm=escape(kept[1][0]) if kept[1] else "",
               cwd=escape(kept[2][0]) if kept[2] else None,
               paths=[escape(b) for b in kept[3]],
               argv=[escape(b) for b in kept[4]] or None,
               envp=[escape(b) for b in kept[5]] or None,
               files=[FileId(d, i, escape(p)) for d, i, p in kept[6]], out_fds=kept[7],
               cred=kept[8][0] if kept[8] else None,
               endpoints=[Endpoint(f, fam, typ, escape(lo), escape(re_), sk, peer)
                          for f, fam, typ, sk, peer, lo, re_ in kept[9]],
               addr=escape(kept[10][0][1]) if kept[10] else None,
               addr_family=kept[10][0][0] if kept[10] else 0)
    return encode(ev)


def kept_files(fields: list[tuple]) -> int:
    """How many FILE fields event.c keeps (the rest do not fit its section)."""
    used = n = 0
    for tag, value in fields:
        if tag == 6:
            size = 3 + min(MAX_FIELD, 16 + len(value[2]))
            if used + size <= CAPS[6]:
                used, n = used + size, n + 1
    return n


def c_lines(fixed: dict, ret: int | None, args: tuple[int, ...], fields: list[tuple],
            rng: random.Random) -> list[str]:
    """The tool's input: every field, interleaved at random across tags (event.c must group
    them by tag) but in order within a tag."""
    names = {1: "comm", 2: "cwd", 3: "path", 4: "argv", 5: "envp"}
    queues: dict[int, list[str]] = {}
    for tag, v in fields:
        if tag == 6:
            line = f"file={v[0]}:{v[1]}:{v[2].hex()}"
        elif tag == 7:
            line = f"fd={v}"
        elif tag == 8:
            line = "cred=" + ":".join(map(str, v))
        elif tag == 9:
            line = "sock=" + ":".join(map(str, v[:5])) + f":{v[5].hex()}:{v[6].hex()}"
        elif tag == 10:
            line = f"addr={v[0]}:{v[1].hex()}"
        else:
            line = f"{names[tag]}={v.hex()}"
        queues.setdefault(tag, []).append(line)
    queues[0] = [f"{k}={fixed[k]}" for k in FIXED] + [f"a{i}={a}" for i, a in enumerate(args)]
    if ret is not None:
        queues[0].append(f"ret={ret}")
    rng.shuffle(queues[0])
    out = []
    while queues:
        tag = rng.choice(sorted(queues))
        out.append(queues[tag].pop(0))
        if not queues[tag]:
            del queues[tag]
    return out


_ALL = bytes(range(256)) * 300


def _long(n: int, seed: int) -> bytes:
    """n bytes (every byte value: NUL, invalid UTF-8, controls) starting at ``seed``."""
    return _ALL[seed:seed + n]


GUEST = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"\0", b"a\0b", b"\xff\xfe\x80", b"\xc0\xaf", b"\xed\xa0\x80",
                     "é漢😀".encode(), b"\\x41\\", b"\n\r\t\x1b[31m", b"\xe2\x80\xae",
                     b"\xc2\x85", b"/root/n\xff\x01m"]),
    st.tuples(st.integers(4090, 4100), st.integers(0, 255)).map(lambda t: _long(*t)),
    st.tuples(st.integers(MAX_FIELD - 20, MAX_FIELD + 20), st.integers(0, 255))
    .map(lambda t: _long(*t)),
)
U64 = st.integers(0, 2**64 - 1)
SOCK_ADDR = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"127.0.0.1:5000", b"[::1]:80", b"/tmp/s", b"\0abstract", b""]),
    st.tuples(st.integers(250, 260), st.integers(0, 255)).map(lambda t: _long(*t)),
)


@st.composite
def events(draw):
    fixed = {"phase": draw(st.integers(0, 255)), "vcpu": draw(st.integers(0, 0xFFFF)),
             "nr": draw(st.integers(0, 0xFFFF)), "flags": draw(st.integers(0, 0xFFFF)),
             "entry_seq": draw(U64), "ts_ns": draw(U64), "tgid": draw(st.integers(0, 2**32 - 1)),
             "pid": draw(st.integers(0, 2**32 - 1)), "ppid": draw(st.integers(0, 2**32 - 1)),
             "uid": draw(st.integers(0, 2**32 - 1)), "start_time": draw(U64),
             "cwd_mnt": draw(U64)}
    ret = draw(st.none() | st.integers(-(2**63), 2**63 - 1))
    args = tuple(draw(st.lists(U64, min_size=6, max_size=6)))
    fields: list[tuple] = []
    comm = draw(st.binary(min_size=1, max_size=20) | st.just(b""))
    if comm:
        fields.append((1, comm))
    if draw(st.booleans()):
        fields.append((2, draw(GUEST)))
    fields += [(3, b) for b in draw(st.lists(GUEST, max_size=3))]
    fields += [(4, b) for b in draw(st.lists(GUEST, max_size=6))]
    fields += [(5, b) for b in draw(st.lists(GUEST, max_size=3))]
    fields += [(6, (d, i, p)) for d, i, p in draw(st.lists(st.tuples(U64, U64, GUEST),
                                                           max_size=4))]
    fields += [(7, fd) for fd in draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3))]
    if draw(st.booleans()):
        fields.append((8, tuple(draw(st.lists(st.integers(0, 2**32 - 1), min_size=8,
                                              max_size=8)))))
    # endpoints of some of the files the plugin keeps (decode wants them in file order)
    nfiles = kept_files(fields)
    for f in sorted(draw(st.sets(st.integers(0, max(0, nfiles - 1)), max_size=nfiles))):
        fields.append((9, (f, draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)),
                           draw(U64), draw(U64), draw(SOCK_ADDR), draw(SOCK_ADDR))))
    # the socket address argument (tag 10): usually one, now and then a second or an
    # over-long text (event.c keeps the first, leaves out one beyond 108 bytes)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2]))):
        fields.append((10, (draw(st.sampled_from([1, 2, 10])),
                            draw(SOCK_ADDR | st.binary(min_size=105, max_size=112)))))
    return fixed, ret, args, fields, draw(st.randoms(use_true_random=False))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events())
def test_c_event_encoding_equals_events_encode(event_tool, ev) -> None:
    """Every field, cred, socket endpoints and the address argument included, byte for
    byte."""
    fixed, ret, args, fields, rng = ev
    got = event_tool.encode(c_lines(fixed, ret, args, fields, rng))
    assert got == c_expected(fixed, ret, args, fields)
    if fixed["phase"] > 1:  # decode refuses other phases (encode packs any byte)
        return
    # the store's integers are signed 64-bit: decode refuses a 64-bit field of 2^63 or more
    wide = [fixed[k] for k in ("entry_seq", "ts_ns", "start_time", "cwd_mnt")]
    wide += [x for tag, v in fields if tag == 6 for x in v[:2]]
    if any(x >> 63 for x in wide):
        with pytest.raises(EventDecodeError, match="2\\^63"):
            decode(got)
    else:
        assert encode(decode(got)) == got


@pytest.mark.parametrize("n,cut", [(MAX_FIELD - 16, False), (MAX_FIELD - 15, True)])
def test_c_event_field_bound(event_tool, n: int, cut: bool) -> None:
    """A FILE field (16-byte identity and path) of exactly 65535 bytes is kept whole; one
    byte more is cut there, with F_TRUNCATED, as events.encode does."""
    base = {k: 0 for k in FIXED}
    path = _long(n, 1)
    got = event_tool.encode(c_lines(base, None, (0,) * 6, [(6, (1, 2, path))],
                                    random.Random(0)))
    ev = decode(got)
    assert bool(ev.flags & F_TRUNCATED) == cut
    assert len(got) == 112 + 3 + MAX_FIELD
    assert got == encode(Event(nr=0, files=[FileId(1, 2, escape(path))]))


# -------------------------------------------------------------------------------- offsets
def fake_profile(offsets: dict[str, int], *, exe_file: bool = True, banner: str = "",
                 optional: bool = True) -> Profile:
    """A profile with the shape of a real one (ISF: metadata, user_types with fields at
    offsets, symbols with addresses), holding just what plugin_offsets reads."""
    types: dict[str, dict] = {}
    for key, off in offsets.items():
        if key == "mm_struct.exe_file" and not exe_file:
            continue
        if key in PLUGIN_OPTIONAL and key != "mm_struct.exe_file" and not optional:
            continue
        t, m = key.split(".")
        types.setdefault(t, {"kind": "struct", "size": 4096, "fields": {}})["fields"][m] = {
            "offset": off, "type": {"kind": "base", "name": "long unsigned int"}}
    banner = banner or "Linux version 6.1.0-fake (test@example) #1 SMP\n"
    return Profile({"metadata": {"linux": {"banner": banner, "release": "6.1.0-fake"}},
                    "base_types": {}, "user_types": types, "enums": {},
                    "symbols": {"current_task": {"address": 0x1FB80},
                                "linux_banner": {"address": 0xFFFFFFFF82000000}}})


KEYS = PLUGIN_MEMBERS + PLUGIN_OPTIONAL
# a Debian 6.1 kernel's layout (what a real profile gives)
DEBIAN = dict(zip(KEYS, (2416, 2420, 2976, 2432, 2960, 2776, 3040, 3048, 2272, 8, 40, 24, 0, 8,
                         32, 24, 48, 8, 4, 64, 40, 16, 32, 0, 8, 16, 32, 32, 16, 24, 292, 0,
                         12, 16, 20, 24, 28, 32, 36, 0, 200, 24, 0, 514, 16, 0, 4, 12, 14,
                         936, 56, 72, 776, 864, 4, 8, 2), strict=True))


def check_offsets(path) -> tuple[int, dict[str, str], list[str]]:
    r = subprocess.run([str(FUZZ), "--check-offsets", str(path)], capture_output=True,
                       text=True, timeout=60)
    lines = r.stdout.splitlines()
    vals = dict(line.split(" ", 1) for line in lines[1:]) if lines[:1] == ["ok"] else {}
    return r.returncode, vals, r.stderr.splitlines()


def test_offsets_keys_are_the_profiles() -> None:
    src = (PLUGIN / "offsets.c").read_text()
    keys = re.findall(r'\bM\("([^"]+)"', src)
    assert len(keys) == len(set(keys))
    assert set(keys) == set(PLUGIN_MEMBERS) | set(PLUGIN_OPTIONAL)
    required = {k for k, req in re.findall(r'\bM\("([^"]+)",\s*\w+,\s*(\d)\)', src) if req == "1"}
    assert required == set(PLUGIN_MEMBERS)


@pytest.mark.parametrize("exe_file,optional", [(True, True), (False, True), (True, False)])
def test_plugin_offsets_file_is_accepted(tmp_path: Path, exe_file: bool, optional: bool
                                         ) -> None:
    """Every value lands in its own field (distinct offsets: a key read into the wrong field
    shows); an optional member absent is -1 (the IPv6 and unix socket members: such sockets
    are flagged SOCK_UNREADABLE)."""
    offs = {k: 8 * i + 3 for i, k in enumerate(KEYS)}
    prof = fake_profile(offs, exe_file=exe_file, optional=optional)
    f = tmp_path / "offsets"
    f.write_text(plugin_offsets(prof))
    rc, vals, err = check_offsets(f)
    assert rc == 0 and not err, err
    assert vals.pop("current_task") == str(prof.symbol("current_task"))
    assert vals.pop("linux_banner") == str(prof.symbol("linux_banner"))
    assert vals.pop("banner") == prof.banner_bytes.hex()
    want = {k: str(v) for k, v in offs.items()}
    if not exe_file:
        want["mm_struct.exe_file"] = "-1"  # absent: the plugin records no exe identity
    if not optional:
        want.update({k: "-1" for k in PLUGIN_OPTIONAL if k != "mm_struct.exe_file"})
    assert vals == want


def _real_profile() -> Path | None:
    from hv.profile import is_current

    cache = os.environ.get("PROVISOR_CACHE") or "~/.cache/provisor"
    found = [p for p in sorted(glob.glob(os.path.expanduser(f"{cache}/kernel/*/profile.json")))
             if is_current(p)]  # an older builder's profile lacks members: guest fetch rebuilds
    return Path(found[0]) if found else None


def test_real_profile_offsets_are_accepted(tmp_path: Path) -> None:
    real = _real_profile()
    if real is None:
        pytest.skip("no kernel profile in ~/.cache/provisor/kernel (provisor guest fetch)")
    prof = Profile.load(real)
    f = tmp_path / "offsets"
    f.write_text(plugin_offsets(prof))
    rc, vals, err = check_offsets(f)
    assert rc == 0 and not err, err
    for k in PLUGIN_MEMBERS:
        assert vals[k] == str(prof.offset(k))


def _malformed() -> list[tuple[str, bytes]]:
    good = plugin_offsets(fake_profile(DEBIAN))
    lines = good.splitlines(keepends=True)
    cases = []
    for i, line in enumerate(lines):  # every required line missing in turn
        key = line.split(" ", 1)[0]
        if key not in ("provisor-offsets", "#", *PLUGIN_OPTIONAL):
            cases.append((f"missing {key}", "".join(lines[:i] + lines[i + 1:]).encode()))
    for key in ("task_struct.pid", "mm_struct.exe_file", "current_task", "linux_banner",
                "banner"):
        line = next(x for x in lines if x.startswith(key + " "))
        cases.append((f"repeated {key}", (good + line).encode()))

    def sub(old: str, new: str) -> bytes:
        assert old in good
        return good.replace(old, new, 1).encode()

    cases += [
        ("huge offset", sub("task_struct.pid 2416", "task_struct.pid 65537")),
        ("2^64", sub("cred.uid 8", "cred.uid 18446744073709551616")),
        ("huge address", sub("current_task 129920", "current_task 99999999999999999999999")),
        ("negative", sub("cred.uid 8", "cred.uid -8")),
        ("octal", sub("cred.uid 8", "cred.uid 010")),
        ("not a number", sub("cred.uid 8", "cred.uid 8x")),
        ("empty hex", sub("cred.uid 8", "cred.uid 0x")),
        ("three words", sub("cred.uid 8", "cred.uid 8 9")),
        ("no value", sub("cred.uid 8", "cred.uid")),
        ("unknown key", (good + "task_struct.bogus 8\n").encode()),
        ("odd banner", re.sub(r"banner ([0-9a-f]+)", r"banner \g<1>0", good, count=1).encode()),
        ("non-hex banner", re.sub(r"banner [0-9a-f]{2}", "banner zz", good, count=1).encode()),
        ("banner too long", re.sub(r"banner [0-9a-f]+", "banner " + "41" * 513, good,
                                   count=1).encode()),
        ("wrong version", sub("provisor-offsets 1", "provisor-offsets 2")),
        ("wrong header", sub("provisor-offsets 1", "provisor-offset 1")),
        ("no header", good.split("\n", 1)[1].encode()),
        ("empty", b""),
        ("comments only", b"# nothing\n\n"),
        ("line too long", (good + "#" + "x" * 5000 + "\n").encode()),
        ("NUL in a line", sub("cred.uid 8\n", "cred.uid 8\0junk\n")),
        ("garbage", bytes(random.Random(1).randrange(256) for _ in range(3000))),
        ("garbage lines", bytes(random.Random(2).choice(b"ab \n\t0x9#\xff")
                                for _ in range(3000))),
        ("too large", good.encode() + b"#" * (70 * 1024) + b"\n"),
        ("ELF", b"\x7fELF\x02\x01\x01" + bytes(200)),
    ]
    return cases


@pytest.mark.parametrize("name,text", _malformed(), ids=[c[0] for c in _malformed()])
def test_malformed_offsets_are_refused_with_one_line(tmp_path: Path, name: str, text: bytes
                                                     ) -> None:
    f = tmp_path / "offsets"
    f.write_bytes(text)
    rc, vals, err = check_offsets(f)  # pv-fuzz is built with ASan/UBSan: a crash shows
    assert rc == 2 and not vals, (name, err)
    assert len(err) == 1 and err[0].startswith(f"pv-fuzz: {f}: "), err


# ----------------------------------------------------------------------------------- fuzz
PV_MAX_PATH = 64 * (255 + 1) + 64  # linux.h: PV_MAX_DEPTH * (PV_MAX_NAME + 1) + 64


def test_decoder_fuzz(tmp_path: Path) -> None:
    """pv-fuzz over several seeds (hostile memory under ASan/UBSan), with the offsets
    plugin_offsets writes (the real profile's when there is one): no crash, no read bound
    broken, every path within PV_MAX_PATH, and the walks did reach long paths."""
    src = (PLUGIN / "linux.h").read_text()
    assert "#define PV_MAX_PATH (PV_MAX_DEPTH * (PV_MAX_NAME + 1) + 64)" in src
    real = _real_profile()
    prof = Profile.load(real) if real else fake_profile(DEBIAN)
    f = tmp_path / "offsets"
    f.write_text(plugin_offsets(prof))
    t0 = time.monotonic()
    longest = paths = 0
    for seed in range(1, 11):  # every fourth with pv-fuzz's built-in copy of a layout
        args = [str(FUZZ), str(seed), "10000"] + ([str(f)] if seed % 4 else [])
        r = subprocess.run(args, capture_output=True, text=True,
                           timeout=max(5.0, 60 - (time.monotonic() - t0)))
        assert r.returncode == 0, (seed, r.stdout, r.stderr[-3000:])
        m = re.fullmatch(r"pv-fuzz: seed \d+: calls (\d+), reads (\d+), failed reads (\d+), "
                         r"max reads per call (\d+), paths (\d+) \(longest (\d+)\), "
                         r"strings (\d+), sockets (\d+), addrs (\d+)\n", r.stdout)
        assert m, r.stdout
        calls, reads, failed, max_reads, npaths, long_, strings, socks, addrs = map(
            int, m.groups())
        assert calls > 10000 and reads > calls and 0 < failed < reads
        assert max_reads < 20000
        assert long_ <= PV_MAX_PATH
        longest, paths = max(longest, long_), paths + npaths
        assert strings > 0 and socks > 0  # socket endpoints were read, not only refused
        assert addrs > 0  # socket address arguments too
    assert paths > 100 and longest > 8000, "the fuzzer's worlds hardly ever gave a path"
    assert time.monotonic() - t0 < 60


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([2, 10]), st.binary(min_size=16, max_size=16),
                          st.integers(0, 0xFFFF)), min_size=1, max_size=40),
       st.data())
def test_c_inet_text_equals_python(addrs, data) -> None:
    """linux.c's pv_inet_text writes what hv/linux.py inet_text writes (IPv4, RFC 5952 IPv6
    with zero runs of every length, the unset address and port as "")."""
    from hv.linux import inet_text

    rows = []
    for fam, raw, port in addrs:
        if data.draw(st.booleans()):  # zero groups: runs, ties, the unset address
            raw = bytes(b if data.draw(st.booleans()) else 0 for b in raw)
        if data.draw(st.integers(0, 9)) == 0:
            raw, port = bytes(16), 0
        rows.append((fam, raw[:4] if fam == 2 else raw, port))
    r = subprocess.run([str(RINGTOOL), "--inet"], input="".join(
        f"{f} {a.hex()} {p}\n" for f, a, p in rows), capture_output=True, text=True,
        timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == [inet_text(f, a, p) for f, a, p in rows]


class _Mem:
    """Guest memory holding ``b`` at 0x10000 and nothing else (pv-ringtool --sockaddr's)."""

    def __init__(self, b: bytes) -> None:
        self.b = b

    def read(self, va: int, n: int) -> bytes:
        from hv.memory import Unreadable

        off = va - 0x10000
        if off < 0 or off + n > len(self.b):
            raise Unreadable(f"{va:#x}")
        return self.b[off:off + n]


def _py_sockaddr(va: int, size: int, mem: bytes) -> str:
    """What hv/linux.py's Linux.user_sockaddr gives, in pv-ringtool --sockaddr's form."""
    from types import SimpleNamespace

    from hv.linux import Linux
    from hv.memory import Unreadable

    try:
        got = Linux.user_sockaddr(SimpleNamespace(mem=_Mem(mem)), va, size)
    except Unreadable:
        return "!"
    if got is None:
        return "-"
    fam, text = got
    from provisor.guesttext import unescape

    return f"{fam} {unescape(text).hex()}"


def _sockaddr_bytes(draw) -> bytes:
    """A socket address as a caller lays it out (sockaddr_in, _in6, _un, another family), at
    times cut short or with trailing bytes."""
    kind = draw(st.sampled_from(["in", "in6", "un", "abstract", "other", "raw"]))
    port = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    if kind == "in":
        b = b"\x02\x00" + port + draw(st.binary(min_size=4, max_size=4)) + bytes(8)
    elif kind == "in6":
        a = bytes(x if draw(st.booleans()) else 0 for x in draw(st.binary(min_size=16,
                                                                           max_size=16)))
        b = b"\x0a\x00" + port + bytes(4) + a + draw(st.binary(min_size=4, max_size=4))
    elif kind == "un":
        b = b"\x01\x00" + draw(st.binary(max_size=120).filter(lambda x: b"\0" not in x[:1]))
    elif kind == "abstract":
        b = b"\x01\x00\x00" + draw(st.binary(max_size=120))
    elif kind == "other":
        b = draw(st.integers(3, 0xFFFF)).to_bytes(2, "little") + draw(st.binary(max_size=30))
    else:
        b = draw(st.binary(max_size=140))
    if draw(st.integers(0, 4)) == 0:
        b = b[:draw(st.integers(0, len(b)))]
    return b + draw(st.binary(max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4)), min_size=1, max_size=40), st.data())
def test_c_sockaddr_equals_python(rows, data) -> None:
    """linux.c's pv_user_sockaddr reads and formats a socket address argument as hv/linux.py's
    Linux.user_sockaddr does: the same bytes read (at most 128, never beyond the size), the
    same text (inet_text's, a unix path to its NUL, an abstract name whole), the same
    refusals (NULL, a size below 2 or negative, an unknown family, a short sockaddr_in/_in6:
    nothing; an unreadable byte or a pointer that is no user pointer: unreadable)."""
    lines, want = [], []
    for (k,) in rows:
        mem = _sockaddr_bytes(data.draw)
        va = 0x10000
        if k == 0:
            va = data.draw(st.sampled_from([0, 0x10000 + 1, 0xFFFF, 0xFFFF800000010000]))
        size = data.draw(st.one_of(st.just(len(mem)), st.integers(0, 140),
                                   st.sampled_from([2**31, 2**32 - 1, 2**32 + 16,
                                                    2**64 - 1])))
        lines.append(f"{va} {size} {mem.hex()}\n")
        want.append(_py_sockaddr(va, size, mem))
    r = subprocess.run([str(RINGTOOL), "--sockaddr"], input="".join(lines),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == want
