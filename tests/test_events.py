"""The event codec: round trips, and malformed payloads as clean errors (fuzzed)."""

from __future__ import annotations

import random
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisor.events import (
    ENTRY,
    EXIT,
    F_TRUNCATED,
    T_ADDR,
    T_ARGV,
    T_COMM,
    T_CRED,
    T_CWD,
    T_ENVP,
    T_FILE,
    T_PATH,
    T_SOCK,
    Endpoint,
    Event,
    EventDecodeError,
    FileId,
    decode,
    encode,
)
from provisor.guesttext import escape, unescape

u64 = st.integers(0, 2**64 - 1)
s63 = st.integers(0, 2**63 - 1)  # a u64 field the store keeps as an integer (signed 64-bit)
u32 = st.integers(0, 2**32 - 1)
# string fields hold guest text (provisor/guesttext.py): the escape of the guest's bytes
raw_bytes = st.binary(max_size=40)
guest_bytes = raw_bytes.map(escape)
text = st.text(max_size=60).map(lambda t: escape(t.encode())) | guest_bytes

_events = st.builds(
    Event,
    nr=st.integers(0, 2**16 - 1),
    phase=st.sampled_from([ENTRY, EXIT]),
    ts_ns=s63, vcpu=st.integers(0, 2**16 - 1), entry_seq=s63, tgid=u32, pid=u32, ppid=u32,
    uid=u32, start_time=s63,
    ret=st.none() | st.integers(-(2**63), 2**63 - 1),
    cwd_mnt=s63,
    args=st.tuples(u64, u64, u64, u64, u64, u64),
    flags=st.integers(0, 0x3FF).map(lambda f: f & ~1),
    comm=text | guest_bytes, cwd=st.none() | guest_bytes,
    paths=st.lists(guest_bytes, max_size=3),
    argv=st.none() | st.lists(text | guest_bytes, min_size=1, max_size=4),
    envp=st.none() | st.lists(text | guest_bytes, min_size=1, max_size=2),
    files=st.lists(st.builds(FileId, s63, s63, guest_bytes), max_size=2),
    out_fds=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=2),
    cred=st.none() | st.tuples(*[u32] * 8),
)
u16 = st.integers(0, 2**16 - 1)
addr = st.sampled_from(["", "127.0.0.1:5000", "[::1]:80", "0.0.0.0:0"]) | guest_bytes


@st.composite
def _with_endpoints(draw, base=_events) -> Event:
    """An event whose endpoints describe some of its files (in file order, as decode wants)."""
    ev = draw(base)
    which = draw(st.lists(st.sampled_from(range(len(ev.files))), unique=True)) if ev.files \
        else []
    ev.endpoints = [Endpoint(i, draw(u16), draw(u16), draw(addr), draw(addr), draw(u64),
                             draw(u64)) for i in sorted(which)]
    if draw(st.booleans()):  # the socket address argument (connect, bind, sendto)
        ev.addr_family, ev.addr = draw(st.sampled_from([1, 2, 10])), draw(addr)
    return ev


events = _with_endpoints()


@settings(max_examples=300, deadline=None)
@given(events)
def test_round_trip(ev: Event) -> None:
    data = encode(ev)
    back = decode(data, seq=7)
    ev.seq, ev.payload = 7, data
    assert back == ev
    assert encode(back) == data


@pytest.mark.parametrize("field", ["ts_ns", "entry_seq", "start_time", "cwd_mnt", "dev", "ino"])
def test_a_stored_field_of_2_63_or_more_does_not_decode(field):
    """Those fields become signed 64-bit integers in the store: larger ones are refused."""
    ev = Event(nr=1, files=[FileId(1, 1, "/f")])
    if field in ("dev", "ino"):
        ev.files = [FileId(2**63 if field == "dev" else 1, 2**63 if field == "ino" else 1)]
    else:
        setattr(ev, field, 2**63)
    with pytest.raises(EventDecodeError, match="2\\^63 or more"):
        decode(encode(ev))
    if field not in ("dev", "ino"):
        setattr(ev, field, 2**63 - 1)
        assert getattr(decode(encode(ev)), field) == 2**63 - 1


UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


@settings(max_examples=300, deadline=None)
@given(comm=raw_bytes.filter(bool), cwd=raw_bytes, paths=st.lists(raw_bytes, max_size=3),
       argv=st.lists(raw_bytes, min_size=1, max_size=3),
       envp=st.lists(raw_bytes, min_size=1, max_size=2),
       files=st.lists(raw_bytes, max_size=2))
def test_the_ring_holds_the_guests_exact_bytes(comm, cwd, paths, argv, envp, files) -> None:
    """Guest text in, the exact guest bytes on the ring; decoded back, guest text (valid
    UTF-8, no control characters) that unescapes to those bytes."""
    ev = Event(2, comm=escape(comm), cwd=escape(cwd), paths=[escape(p) for p in paths],
               argv=[escape(a) for a in argv], envp=[escape(e) for e in envp],
               files=[FileId(8, i, escape(f)) for i, f in enumerate(files)])
    data = encode(ev)

    def tlv(tag: int, b: bytes) -> bytes:
        return bytes([tag]) + len(b).to_bytes(2, "little") + b

    want = encode(Event(2)) + b"".join(
        [tlv(T_COMM, comm), tlv(T_CWD, cwd), *(tlv(T_PATH, p) for p in paths),
         *(tlv(T_ARGV, a) for a in argv), *(tlv(T_ENVP, e) for e in envp),
         *(tlv(T_FILE, struct.pack("<QQ", 8, i) + f) for i, f in enumerate(files))])
    assert data == want
    back = decode(data)
    strings = [back.comm, back.cwd, *back.paths, *back.argv, *back.envp,
               *(f.path for f in back.files)]
    for s in strings:
        assert not UNSAFE.search(s), s
        s.encode("utf-8")  # no surrogates: SQLite takes it
    assert [unescape(s) for s in strings] == [comm, cwd, *paths, *argv, *envp, *files]
    assert encode(back) == data


def test_negative_args_and_at_fdcwd() -> None:
    ev = Event(257, args=(-100 & (2**64 - 1), 0, 0, 0, 0, 0), paths=["a.txt"])
    back = decode(encode(ev))
    assert back.arg(0) == -100 and back.name == "openat"


@settings(max_examples=500, deadline=None)
@given(events, st.data())
def test_mutations_never_escape(ev: Event, data) -> None:
    """Truncations, bit flips and garbage: a decoded Event or EventDecodeError, nothing else."""
    raw = bytearray(encode(ev))
    op = data.draw(st.sampled_from(["truncate", "flip", "splice", "extend"]))
    if op == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif op == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "splice":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(max_size=16))
    else:
        raw += data.draw(st.binary(min_size=1, max_size=16))
    try:
        out = decode(bytes(raw))
    except EventDecodeError:
        return
    assert isinstance(out, Event)


@pytest.mark.parametrize("n", [0, 1, 50, 111, 200, 4000])
def test_random_bytes_are_clean_errors(n: int) -> None:
    rng = random.Random(n)
    for _ in range(300):
        blob = rng.randbytes(n)
        try:
            decode(blob)
        except EventDecodeError as e:
            assert "\n" not in str(e)


def test_wrong_version_and_phase() -> None:
    raw = bytearray(encode(Event(0)))
    raw[0] = 9
    with pytest.raises(EventDecodeError, match="unknown event version 9"):
        decode(bytes(raw))
    raw[0], raw[1] = 1, 5
    with pytest.raises(EventDecodeError, match="bad phase"):
        decode(bytes(raw))


def test_long_strings_are_bounded() -> None:
    ev = Event(2, paths=["x" * 100_000])
    back = decode(encode(ev))
    assert len(back.paths[0]) == 0xFFFF
    assert back.flags & F_TRUNCATED
    assert not decode(encode(Event(2, paths=["short"]))).flags & F_TRUNCATED


def _tlv(tag: int, b: bytes) -> bytes:
    return bytes([tag]) + len(b).to_bytes(2, "little") + b


def test_cred_and_socket_fields_layout() -> None:
    """T_CRED is 8 x u32 LE; T_SOCK is u16 file, u16 family, u16 type, u16 local length,
    u64 sk, u64 peer, then the local and the remote bytes (docs/FORMAT.md)."""
    f = FileId(8, 77, "socket:[77]")
    ev = Event(44, files=[FileId(1, 2, "/x"), f], cred=(0, 1, 2, 3, 1000, 1001, 1002, 1003),
               endpoints=[Endpoint(1, 2, 1, "127.0.0.1:5000", "127.0.0.1:40000",
                                   0xFFFF888001234000, 0)])
    data = encode(ev)
    want = encode(Event(44, files=ev.files)) + _tlv(T_CRED, struct.pack(
        "<8I", 0, 1, 2, 3, 1000, 1001, 1002, 1003)) + _tlv(T_SOCK, struct.pack(
            "<HHHHQQ", 1, 2, 1, 14, 0xFFFF888001234000, 0) + b"127.0.0.1:5000127.0.0.1:40000")
    assert data == want
    back = decode(data)
    assert back.cred == (0, 1, 2, 3, 1000, 1001, 1002, 1003)
    assert back.endpoints == ev.endpoints
    assert encode(back) == data
    # a unix socket's bound path is guest bytes, like any path
    u = Event(44, files=[f], endpoints=[Endpoint(0, 1, 1, escape(b"\0abs\xff"), "", 1, 2)])
    assert decode(encode(u)).endpoints[0].local == "\\x00abs\\xff"
    assert encode(decode(encode(u))) == encode(u)


def _base(files: int = 2) -> bytes:
    return encode(Event(44, files=[FileId(1, i, "socket:[1]") for i in range(files)]))


@pytest.mark.parametrize("name,extra,match", [
    ("short cred", _tlv(T_CRED, b"\0" * 31), "cred"),
    ("long cred", _tlv(T_CRED, b"\0" * 33), "cred"),
    ("two creds", _tlv(T_CRED, b"\0" * 32) * 2, "cred"),
    ("short sock", _tlv(T_SOCK, b"\0" * 23), "short socket"),
    ("local past field", _tlv(T_SOCK, struct.pack("<HHHHQQ", 0, 2, 1, 5, 0, 0) + b"abcd"),
     "runs past"),
    ("file out of range", _tlv(T_SOCK, struct.pack("<HHHHQQ", 2, 2, 1, 0, 0, 0)),
     "lacks"),
    ("same file twice", _tlv(T_SOCK, struct.pack("<HHHHQQ", 1, 2, 1, 0, 0, 0)) * 2,
     "order"),
    ("files backwards", _tlv(T_SOCK, struct.pack("<HHHHQQ", 1, 2, 1, 0, 0, 0))
     + _tlv(T_SOCK, struct.pack("<HHHHQQ", 0, 2, 1, 0, 0, 0)), "order"),
    ("unknown tag 11", _tlv(11, b""), "unknown field tag 11"),
    ("empty addr", _tlv(T_ADDR, b""), "address"),
    ("addr without family", _tlv(T_ADDR, b"\x02"), "address"),
    ("addr text past 108", _tlv(T_ADDR, b"\x01\x00" + b"a" * 109), "address"),
    ("two addrs", _tlv(T_ADDR, b"\x02\x00") * 2, "repeated address"),
    ("addr of family 0", _tlv(T_ADDR, b"\x00\x00"), "family 0"),
    ("addr of family 3", _tlv(T_ADDR, b"\x03\x00x"), "family 3"),
])
def test_bad_cred_and_socket_fields_are_refused(name: str, extra: bytes, match: str) -> None:
    with pytest.raises(EventDecodeError, match=match):
        decode(_base() + extra)


def test_addr_field_layout_and_bounds() -> None:
    """T_ADDR is u16 family then the address text (docs/FORMAT.md): 2 to 110 bytes, once;
    the address is guest text (a unix abstract name keeps its NUL)."""
    ev = Event(42, addr="127.0.0.1:5002", addr_family=2)
    data = encode(ev)
    assert data == encode(Event(42)) + _tlv(T_ADDR, b"\x02\x00127.0.0.1:5002")
    back = decode(data)
    assert (back.addr, back.addr_family) == ("127.0.0.1:5002", 2) and encode(back) == data
    for fam, text in ((1, ""), (1, escape(b"\0" + b"\xff" * 107)), (10, "[::1]:80")):
        d = encode(Event(49, addr=text, addr_family=fam))
        assert (decode(d).addr, decode(d).addr_family) == (text, fam)
        assert encode(decode(d)) == d
    assert decode(encode(Event(44))).addr is None


def test_socket_field_bounds_accepted() -> None:
    """The edges that are valid: an empty local and remote, a local filling the field."""
    ok = _base() + _tlv(T_SOCK, struct.pack("<HHHHQQ", 0, 1, 2, 0, 0, 0)) + _tlv(
        T_SOCK, struct.pack("<HHHHQQ", 1, 1, 2, 3, 5, 6) + b"abc")
    ev = decode(ok)
    assert [(e.file, e.local, e.remote, e.sk, e.peer) for e in ev.endpoints] == [
        (0, "", "", 0, 0), (1, "abc", "", 5, 6)]
    assert encode(ev) == ok
