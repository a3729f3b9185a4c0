"""Damaged images and a full ring: the chain ends where the damage is, for the right reason, and
nothing after it is trusted; bad images give one-line errors; every ring-full policy does what
the configuration promises (block waits, drop counts and reports, fail raises)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pmem import layout as L
from pmem import ring
from pmem.layout import RecType

SIZE = L.DATA_OFFSET + L.MIN_DATA
SLOT_PAYLOAD = 224  # padded to 256: a 64 KiB data area holds exactly 256 records


def make_ring(path: Path, n: int, size_of=lambda i: 40 + 37 * (i % 11)) -> list[bytes]:
    ring.create(str(path), SIZE, overwrite=True)
    payloads = [bytes([i % 256]) * size_of(i) for i in range(n)]
    with ring.Producer.open(str(path), "fail") as prod:
        assert prod.append_many([(RecType.NOTE, p) for p in payloads]) == list(range(1, n + 1))
    return payloads


def chain(buf) -> tuple[list[L.Record], L.ChainEnd]:
    recs, end = L.collect(buf, L.read_header(buf)[0])
    return [r for r in recs if r.type != RecType.PAD], end


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisor.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def assert_one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("provisor: error:"), res.stderr
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in lines[0], lines[0]


# -- damage inside the chain ----------------------------------------------------------------
def test_bit_flips_end_the_chain_at_the_damaged_record(shm_dir: Path) -> None:
    path = shm_dir / "r"
    payloads = make_ring(path, 40)
    clean = bytearray(path.read_bytes())
    recs, end = chain(clean)
    assert [r.payload for r in recs] == payloads and end.reason == L.End.CLEAN
    rng = random.Random(5)
    reasons = set()
    for _ in range(300):
        img = bytearray(clean)
        victim = recs[rng.randrange(len(recs))]
        base = L.DATA_OFFSET + victim.offset
        field = rng.choice(["seq", "hdr", "payload"])
        lo, hi = {"seq": (0, 8), "hdr": (8, 32),
                  "payload": (32, 32 + max(1, len(victim.payload)))}[field]
        byte = base + rng.randrange(lo, hi)
        if field == "hdr" and 16 <= byte - base < 28:
            continue  # reserved bytes: covered by the CRC too, but keep the reasons exact
        img[byte] ^= 1 << rng.randrange(8)
        got, end2 = chain(img)
        assert [r.payload for r in got] == payloads[:victim.seq - 1]  # nothing after it
        assert end2.offset == victim.offset and end2.seq == victim.seq
        expect = L.End.CHECKSUM if field == "seq" else L.End.TORN
        assert end2.reason == expect, (field, end2)
        reasons.add(end2.reason)
    assert reasons == {L.End.CHECKSUM, L.End.TORN}


def test_producer_reopened_after_a_flip_overwrites_from_there(shm_dir: Path) -> None:
    path = shm_dir / "r"
    payloads = make_ring(path, 30)
    recs, _ = chain(path.read_bytes())
    victim = recs[17]
    with open(path, "r+b") as f:
        f.seek(L.DATA_OFFSET + victim.offset + 40)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    with ring.Producer.open(str(path), "fail") as prod:
        assert prod.next_seq == victim.seq and prod.tail == victim.offset
        assert prod.append(RecType.NOTE, b"after") == victim.seq
    got, end = chain(path.read_bytes())
    assert [r.payload for r in got] == payloads[:17] + [b"after"]
    assert end.reason == L.End.CLEAN


def test_zeroed_tail_is_a_clean_end(shm_dir: Path) -> None:
    path = shm_dir / "r"
    payloads = make_ring(path, 25)
    recs, _ = chain(path.read_bytes())
    img = bytearray(path.read_bytes())
    cut = L.DATA_OFFSET + recs[12].offset
    img[cut:] = bytes(len(img) - cut)
    got, end = chain(img)
    assert [r.payload for r in got] == payloads[:12]
    assert (end.reason, end.offset, end.seq) == (L.End.CLEAN, recs[12].offset, 13)


def _wrapped_ring(path: Path) -> tuple[bytes, int]:
    """A ring whose second lap stops at slot 44, with the first lap's record 45 saved."""
    ring.create(str(path), SIZE)
    with ring.Producer.open(str(path), "fail") as prod, ring.Consumer.open(str(path)) as cons:
        for i in range(200):
            prod.append(RecType.NOTE, bytes([i]) * SLOT_PAYLOAD)
        cons.read(4096)
        cons.release(200, 200 * 256)
        lap1 = path.read_bytes()
        for i in range(100):
            assert prod.append(RecType.NOTE, b"2" * SLOT_PAYLOAD) == 201 + i
        assert prod.tail == 44 * 256
    return lap1, 44 * 256


def test_stale_lap_where_the_next_record_is_expected(shm_dir: Path) -> None:
    path = shm_dir / "r"
    lap1, tail = _wrapped_ring(path)
    got, end = chain(path.read_bytes())
    assert [r.seq for r in got] == list(range(201, 301)) and end.reason == L.End.CLEAN
    img = bytearray(path.read_bytes())
    a = L.DATA_OFFSET + tail
    img[a:a + 256] = lap1[a:a + 256]  # the trailer never landed: lap 1's record 45 shows
    got, end = chain(img)
    assert [r.seq for r in got] == list(range(201, 301))
    assert (end.reason, end.offset, end.seq) == (L.End.STALE, tail, 301)
    hdr, _ = L.read_header(img)
    body, seqb = L.encode_record(hdr.uuid, 305, RecType.NOTE, b"z" * SLOT_PAYLOAD)
    img[a:a + 256] = seqb + body  # a valid record from the future: a gap
    got, end = chain(img)
    assert len(got) == 100 and end.reason == L.End.GAP


def test_record_of_another_ring_never_validates(shm_dir: Path) -> None:
    path = shm_dir / "r"
    make_ring(path, 10)
    old = path.read_bytes()
    make_ring(path, 3)  # re-created: new UUID, same path
    img = bytearray(path.read_bytes())
    recs, _ = chain(old)
    a = L.DATA_OFFSET + recs[3].offset
    img[a:] = old[a:]
    got, end = chain(img)
    assert len(got) == 3 and end.reason == L.End.TORN  # seq 4 expected, the CRC differs


# -- headers -----------------------------------------------------------------------------------
def test_corrupt_header_copy_falls_back_to_the_other(shm_dir: Path) -> None:
    path = shm_dir / "r"
    payloads = make_ring(path, 20)
    with ring.Consumer.open(str(path)) as cons:
        recs = cons.read(5)
        cons.release(recs[-1].seq, recs[-1].offset + L.padded(len(recs[-1].payload)))
    img = bytearray(path.read_bytes())
    hdr, slot = L.read_header(img)
    assert (slot, hdr.generation, hdr.checkpoint_seq) == (1, 1, 5)
    a = bytearray(img)
    a[50] ^= 0xFF  # copy A (the older one) corrupt: B still current
    assert L.read_header(a)[0] == hdr
    b = bytearray(img)
    b[L.HEADER_SLOT + 70] ^= 0x01  # copy B (current) corrupt: A, one release older
    old, slot_b = L.read_header(b)
    assert (slot_b, old.generation, old.checkpoint_seq) == (0, 0, 0)
    got, end = chain(b)
    assert [r.payload for r in got] == payloads and end.reason == L.End.CLEAN


@pytest.mark.parametrize("damage", ["both_headers", "truncated", "truncated_data", "magic",
                                    "newer", "random", "empty", "directory", "missing"])
def test_bad_images_give_one_line_errors(shm_dir: Path, damage: str) -> None:
    path = shm_dir / "r"
    make_ring(path, 5)
    img = bytearray(path.read_bytes())
    words: tuple[str, ...] = ()
    if damage == "both_headers":
        img[20] ^= 1
        img[L.HEADER_SLOT:L.HEADER_SLOT + 8] = b"XXXXXXXX"
        words = ("both header copies are corrupt",)
    elif damage == "truncated":
        img = img[:20000]
        words = ("truncated",)
    elif damage == "truncated_data":
        big = shm_dir / "big"
        ring.create(str(big), SIZE + 8 * 4096)
        img = bytearray(big.read_bytes()[:SIZE])
        words = ("truncated", "header says")
    elif damage == "magic":
        img[0:8] = img[L.HEADER_SLOT:L.HEADER_SLOT + 8] = b"NOTARING"
        words = ("bad magic",)
    elif damage == "newer":
        hdr, _ = L.read_header(img)
        from dataclasses import replace
        newer = replace(hdr, version=2).pack()
        img[0:L.HEADER_LEN] = newer
        img[L.HEADER_SLOT:L.HEADER_SLOT + L.HEADER_LEN] = newer
        words = ("newer format",)
    elif damage == "random":
        img = bytearray(random.Random(1).randbytes(len(img)))
        words = ("not a provisor ring",)
    elif damage == "empty":
        img = bytearray()
    if damage == "directory":
        path.unlink()
        path.mkdir()
        words = ("directory",)
    elif damage == "missing":
        path.unlink()
        words = ("no such",)
    else:
        path.write_bytes(bytes(img))
    assert_one_line_error(cli("ring", "info", str(path)), *words)
    if damage in ("both_headers", "random", "missing"):  # the other readers share the path
        assert_one_line_error(cli("ring", "dump", "--json", str(path)), *words)
        assert_one_line_error(cli("ring", "append", str(path), stdin="x\n"))
    if damage not in ("directory", "missing", "empty"):
        with pytest.raises(ring.RingError):
            ring.Consumer.open(str(path), readonly=True)


# -- ring-full policies ---------------------------------------------------------------------
def fill(path: Path) -> int:
    """Fill the ring to the last byte (policy fail); the last acknowledged sequence number."""
    last = 0
    with ring.Producer.open(str(path), "fail") as prod:
        for payload in (b"f" * 1000, b""):
            while True:
                try:
                    last = prod.append(RecType.NOTE, payload) or last
                except ring.RingFull:
                    break
        assert prod._free() == 0
    return last


def release_all(path: Path) -> int:
    with ring.Consumer.open(str(path)) as cons:
        recs = cons.read(100000)
        cons.release(recs[-1].seq, cons.next_off)
        return recs[-1].seq


def test_block_waits_for_the_consumer(shm_dir: Path) -> None:
    path = shm_dir / "r"
    ring.create(str(path), SIZE)
    last = fill(path)
    with ring.Producer.open(str(path), "block", block_timeout=0.05) as prod:
        with pytest.raises(ring.RingFull, match="policy: block"):
            prod.append(RecType.NOTE, b"f" * 1000)
    result: list[int | None] = []
    with ring.Producer.open(str(path), "block") as prod:
        t = threading.Thread(target=lambda: result.append(
            prod.append(RecType.NOTE, b"unblocked")), daemon=True)
        t.start()
        time.sleep(0.2)
        assert t.is_alive() and not result  # still waiting: no room until a release
        release_all(path)
        t.join(30)
        assert not t.is_alive() and result == [last + 1]
    got, _ = chain(path.read_bytes())
    assert [r.payload for r in got] == [b"unblocked"]


def test_block_append_many_larger_than_the_free_space(shm_dir: Path) -> None:
    """A batch that only fits in pieces persists what it wrote, then waits; all acknowledged."""
    path = shm_dir / "r"
    ring.create(str(path), SIZE)
    stop = threading.Event()
    seen: list[bytes] = []

    def consumer() -> None:
        with ring.Consumer.open(str(path)) as cons:
            while not stop.is_set():
                recs = cons.read(7)
                if recs:
                    seen.extend(r.payload for r in recs)
                    cons.release(recs[-1].seq, cons.next_off)
                else:
                    time.sleep(0.001)

    t = threading.Thread(target=consumer, daemon=True)
    t.start()
    items = [(RecType.NOTE, bytes([i % 256]) * (i * 7 % 1900)) for i in range(400)]
    with ring.Producer.open(str(path), "block", block_timeout=30) as prod:
        assert prod.append_many(items) == list(range(1, 401))
    deadline = time.monotonic() + 30
    while len(seen) < 400 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join(10)
    assert seen == [p for _, p in items]


def loss_records(path: Path) -> list[tuple[int, int, int]]:
    got, _ = chain(path.read_bytes())
    return [(r.seq, int.from_bytes(r.payload[:8], "little"),
             int.from_bytes(r.payload[8:], "little")) for r in got if r.type == RecType.LOSS]


@pytest.mark.parametrize("batch", [False, True])
def test_drop_counts_persistently_and_reports_once(shm_dir: Path, batch: bool) -> None:
    path = shm_dir / "r"
    ring.create(str(path), SIZE)
    last = fill(path)
    with ring.Producer.open(str(path), "drop") as prod:
        if batch:
            assert prod.append_many([(RecType.NOTE, b"d" * 500)] * 7) == [None] * 7
        else:
            assert [prod.append(RecType.NOTE, b"d" * 500) for _ in range(7)] == [None] * 7
        assert prod.state.lost_total == 7
    with ring.Producer.open(str(path), "drop") as prod:  # the count survives a reopen
        assert (prod.state.lost_total, prod.state.lost_reported) == (7, 0)
        assert prod.append(RecType.NOTE, b"d") is None  # still full: 8 lost, none silent
    info = cli("ring", "info", "--json", str(path))
    assert '"lost_total": 8' in info.stdout and '"lost_reported": 0' in info.stdout
    assert loss_records(path) == []
    release_all(path)
    with ring.Producer.open(str(path), "drop") as prod:
        if batch:
            seqs = prod.append_many([(RecType.NOTE, b"after")] * 3)
        else:
            seqs = [prod.append(RecType.NOTE, b"after") for _ in range(3)]
        assert seqs == [last + 2, last + 3, last + 4]  # last + 1 is the LOSS record
        assert (prod.state.lost_total, prod.state.lost_reported) == (8, 8)
    assert loss_records(path) == [(last + 1, 8, 8)]
    with ring.Producer.open(str(path), "drop") as prod:
        prod.append(RecType.NOTE, b"more")
    assert loss_records(path) == [(last + 1, 8, 8)]  # reported once


def test_drop_never_appends_ahead_of_an_unreported_loss(shm_dir: Path) -> None:
    """A LOSS record needs 64 bytes; a 0-byte record needs 32. When only 32 are free, the small
    record must be dropped too: accepting it would put it before the LOSS that precedes it."""
    path = shm_dir / "r"
    ring.create(str(path), SIZE)
    with ring.Producer.open(str(path), "drop") as prod:
        while prod._free() > 32:
            prod.append(RecType.NOTE, b"" if prod._free() <= 1056 else b"f" * 1000)
        assert prod._free() == 32
        assert prod.append(RecType.NOTE, b"x" * 40) is None
        assert prod.append_many([(RecType.NOTE, b"")]) == [None]
        assert prod.append(RecType.NOTE, b"") is None
        assert prod.state.lost_total == 3
    release_all(path)
    with ring.Producer.open(str(path), "drop") as prod:
        prod.append(RecType.NOTE, b"after")
    losses = loss_records(path)
    assert [(n, t) for _, n, t in losses] == [(3, 3)]


def test_fail_raises_and_reports_the_appended_part_of_a_batch(shm_dir: Path) -> None:
    path = shm_dir / "r"
    ring.create(str(path), SIZE)
    last = fill(path)
    release_all(path)
    with ring.Producer.open(str(path), "fail") as prod:
        with pytest.raises(ring.RingFull) as exc:
            prod.append_many([(RecType.NOTE, b"b" * 1000)] * 100)
        acked = exc.value.acked
        assert acked == list(range(last + 1, last + 1 + len(acked))) and 40 < len(acked) < 100
    got, _ = chain(path.read_bytes())
    assert [r.seq for r in got] == acked  # exactly the acknowledged part, nothing more


def test_fail_via_cli_is_one_line(shm_dir: Path) -> None:
    path = shm_dir / "r"
    ring.create(str(path), SIZE)
    lines = "".join(f"{i:04d}{'x' * 900}\n" for i in range(100))
    res = cli("ring", "append", "--policy", "fail", str(path), stdin=lines)
    assert_one_line_error(res, "ring full")
    acked = [int(x) for x in res.stdout.split()]
    assert acked == list(range(1, len(acked) + 1)) and 40 < len(acked) < 100
    got, _ = chain(path.read_bytes())
    assert [r.payload[:4] for r in got] == [f"{i:04d}".encode() for i in range(len(acked))]


def test_read_one_at_a_time_gets_past_a_pad(shm_dir: Path) -> None:
    """``Consumer.read(1)`` where a PAD lies next must return the record after it, not []."""
    path = shm_dir / "r"
    ring.create(str(path), SIZE)
    last = fill(path)
    release_all(path)
    with ring.Producer.open(str(path), "fail") as prod:
        tail = prod.tail
        assert prod.append(RecType.NOTE, b"w" * 1000) == last + 1
    with ring.Consumer.open(str(path)) as cons:
        assert cons.next_off == tail  # a PAD lies there: the record wrapped to offset 0
        recs = cons.read(1)
        assert [(r.seq, r.offset) for r in recs] == [(last + 1, 0)]
        assert cons.read(1) == []


@pytest.mark.parametrize("policy", ["block", "fail"])
def test_loss_left_by_drop_is_reported_under_another_policy(shm_dir: Path, policy: str) -> None:
    """Drops counted under ``drop``, ring reopened under ``block``/``fail`` while still full:
    the next record must wait (block) or raise (fail), not be dropped in turn."""
    path = shm_dir / "r"
    ring.create(str(path), SIZE)
    with ring.Producer.open(str(path), "drop") as prod:
        while prod._free() > 32:
            prod.append(RecType.NOTE, b"" if prod._free() <= 1056 else b"f" * 1000)
        last = prod.next_seq - 1
        assert prod.append(RecType.NOTE, b"lost" * 10) is None
    with ring.Producer.open(str(path), policy, block_timeout=0.05) as prod:
        with pytest.raises(ring.RingFull):  # 32 bytes free: the record fits, the LOSS not
            prod.append(RecType.NOTE, b"")
        assert prod.state.lost_total == 1  # nothing more was dropped
    release_all(path)
    with ring.Producer.open(str(path), policy) as prod:
        assert prod.append(RecType.NOTE, b"") == last + 2
    assert loss_records(path) == [(last + 1, 1, 1)]
