"""``provisor verify``: recompute the tamper-evidence hash chain and say where it breaks.

The chain (store/chain.py, the only definition of a link) covers, per ``chain`` row (one
applied batch), the events with seq in (previous last_seq, last_seq] and the relations with id
in [first_rel, last_rel], in key order; in chain encoding 2 also the versions, names, losses
and notes the batch wrote and the state (multiset hashes) of the tables later batches rewrite,
which are checked against the stored tables at the end; encoding 3 also the attrs rows;
encoding 4 chains an event as its seq and payload, and every event row is checked against
what its payload makes (the rest of the row is derived from it). A batch is checked against
its stored digest starting from the *stored* digest of the batch before, so every batch is
judged on its own and the first bad one is named. The digest says *that* a batch changed; to
say *which row*, the checker then looks for evidence, cheapest first:

* keys: a sequence number or relation id missing inside a batch's range (deleted), or a row
  outside every batch's range or colliding with a NOTE/LOSS record's seq (inserted);
* events: each row must equal what the analyzer derives from its own payload (altered column);
* order: a pair of rows whose exchange restores the digest (reordered);
* chain: a digest that is wrong while its rows and the next link are right (chain row altered);
* versions: each carries the seq and time of an event of its batch;
* relations, versions, names (and attrs, encoding 3): a replay of the stored events through the
  analyzer, compared row by row;
* state (encoding 2): a table that no longer hashes to the last batch's state is compared row
  by row with a replay of all stored events.

With ``--ring``, every record still readable in the ring image (the unreleased chain, and
released records not yet overwritten) is compared byte for byte with the stored payload.
See docs/TAMPER.md for what this does and does not protect against.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from daemon.replay import Batch as ABatch
from daemon.replay import Replay, event_row
from provisor.errors import ProvisorError
from provisor.machine import is_postgres_url
from store import chain, reader, schema

EV_SQL = f"SELECT {', '.join(chain.EVENT_COLS)} FROM events"
REL_SQL = f"SELECT {', '.join(chain.RELATION_COLS)} FROM relations"
MAX_FINDINGS = 50


class VerifyError(ProvisorError):
    pass


@dataclass
class Finding:
    what: str  # altered | deleted | inserted | reordered | broken
    table: str  # events | relations | versions | names | processes | ... | chain | meta | ring
    key: str  # "seq=12", "id=5", "batch=3", "chain_head"
    batch: int | None
    detail: str

    def __str__(self) -> str:
        where = f" (batch {self.batch})" if self.batch is not None else ""
        return f"{self.what}: {self.table} {self.key}{where}: {self.detail}"


@dataclass
class Report:
    db: str
    batches: int = 0
    events: int = 0
    relations: int = 0
    head: str = ""
    findings: list[Finding] = field(default_factory=list)
    ring: dict | None = None
    checked_at: float = 0.0
    bad_batches_unexamined: int = 0  # mismatching batches past MAX_FINDINGS

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, *a: object) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(Finding(*a))  # type: ignore[arg-type]

    def to_json(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["findings"] = [str(f) for f in self.findings]
        return d


@dataclass
class Batch:
    n: int
    lo: int  # events with lo < seq <= hi
    hi: int
    first_rel: int | None
    last_rel: int | None
    digest: bytes
    state: bytes | None = None  # encoding 2: chain.State digest after the batch


def _batches(conn: sqlite3.Connection, rep: Report, encoding: str = "1") -> list[Batch]:
    state = ", state" if encoding != "1" else ", NULL"
    rows = conn.execute("SELECT batch, first_seq, last_seq, first_rel, last_rel, digest"
                        f"{state} FROM chain ORDER BY batch").fetchall()
    out: list[Batch] = []
    prev_hi, prev_rel = None, 0
    for i, (n, first, last, fr, lr, dg, st) in enumerate(rows, 1):
        if n != i:
            rep.add("deleted" if n > i else "inserted", "chain", f"batch={i}", i,
                    f"chain rows jump from batch {i - 1} to {n}")
        if prev_hi is not None and last is not None and last <= prev_hi:
            rep.add("reordered", "chain", f"batch={n}", n,
                    f"last_seq {last} not after the previous batch's {prev_hi}")
        if fr is not None and (fr <= prev_rel or (lr is not None and lr < fr)):
            rep.add("reordered", "chain", f"batch={n}", n,
                    f"relation range {fr}..{lr} overlaps or precedes the previous batch's")
        if prev_hi is None:  # the first batch starts where the ring was when the DB was made
            lo = _first_record(conn, last) - 1 if first is None else min(
                first, _first_record(conn, last)) - 1
        else:
            lo = prev_hi
        out.append(Batch(n, lo, last, fr, lr, bytes(dg) if dg is not None else b"",
                         None if encoding == "1" else bytes(st or b"")))
        prev_hi = last if last is not None else prev_hi
        prev_rel = lr if lr is not None else prev_rel
    return out


def _first_record(conn: sqlite3.Connection, hi: int) -> int:
    row = conn.execute("SELECT min(s) FROM (SELECT min(seq) s FROM events UNION ALL "
                       "SELECT min(seq) FROM notes UNION ALL SELECT min(seq) FROM losses) AS firsts"
                       ).fetchone()
    return min(row[0] or hi, hi)


def _rows(conn: sqlite3.Connection, b: Batch) -> tuple[list[tuple], list[tuple]]:
    ev = conn.execute(f"{EV_SQL} WHERE seq > ? AND seq <= ? ORDER BY seq", (b.lo, b.hi)).fetchall()
    rel = ([] if b.first_rel is None else conn.execute(
        f"{REL_SQL} WHERE id BETWEEN ? AND ? ORDER BY id", (b.first_rel, b.last_rel)).fetchall())
    return ev, rel


class _Stream:
    """Rows of one table in key order, handed out batch by batch by a sequence column."""

    def __init__(self, conn: sqlite3.Connection, sql: str, seq_at: int) -> None:
        self.cur = conn.execute(sql)
        self.seq_at = seq_at
        self.ahead: tuple | None = None

    def take(self, hi: int) -> list[tuple]:
        out = []
        while True:
            row = self.ahead if self.ahead is not None else self.cur.fetchone()
            self.ahead = None
            if row is None:
                return out
            if row[self.seq_at] is not None and row[self.seq_at] > hi:
                self.ahead = row
                return out
            out.append(tuple(row))


class _Extras:
    """Encoding 2's per-batch rows (chain.Extra) from the stored tables, one batch after the
    other: versions and names by id, unbinds by their seq, losses and notes by seq."""

    def __init__(self, conn: sqlite3.Connection, encoding: str = "2") -> None:
        self.payloads = encoding >= "4"  # events chained by their seq and payload
        self.binary = chain.binary(encoding)  # encoding 5: rows by rows_bin, not repr
        # encoding 3: the attrs rows too, in the order they were written (by rowid)
        self.attrs = _Stream(conn, f"SELECT {', '.join(chain.ATTR_COLS)} FROM attrs "
                             "ORDER BY rowid", 3) if encoding >= "3" else None
        self.streams = [
            _Stream(conn, f"SELECT {', '.join(chain.VERSION_COLS)} FROM versions ORDER BY id", 4),
            _Stream(conn, f"SELECT {', '.join(chain.NAME_COLS)} FROM names ORDER BY id", 3),
            _Stream(conn, "SELECT unbind_seq, id FROM names WHERE unbind_seq IS NOT NULL "
                    "ORDER BY unbind_seq, id", 0),
            _Stream(conn, "SELECT * FROM losses ORDER BY seq", 0),
            _Stream(conn, "SELECT * FROM notes ORDER BY seq", 0)]

    def take(self, b: Batch) -> chain.Extra:
        return chain.Extra(*(s.take(b.hi) for s in self.streams), state=b.state or b"",
                           attrs=self.attrs.take(b.hi) if self.attrs else None,
                           payloads=self.payloads, binary=self.binary)


def _batch_rows(conn: sqlite3.Connection, batches: list[Batch], encoding: str
                ) -> Iterator[tuple[Batch, list[tuple], list[tuple], chain.Extra | None]]:
    extras = _Extras(conn, encoding) if encoding != "1" else None
    for b in batches:
        ev, rel = _rows(conn, b)
        yield b, ev, rel, (extras.take(b) if extras else None)


def batch_digest(conn: sqlite3.Connection, n: int) -> bytes:
    """Batch ``n``'s digest recomputed from the stored rows, chained on the stored digest of
    batch ``n - 1`` (what an attacker re-chaining one batch would compute)."""
    enc = conn.execute("SELECT value FROM meta WHERE key='chain_encoding'").fetchone()
    batches = _batches(conn, Report(""), enc[0] if enc else "1")
    for b, ev, rel, ex in _batch_rows(conn, batches, enc[0] if enc else "1"):
        if b.n == n:
            prev = batches[n - 2].digest if n > 1 else chain.GENESIS
            return chain.digest(prev, ev, rel, ex)
    raise KeyError(n)


# -- locating a change inside a bad batch --------------------------------------------------
def _keys(conn: sqlite3.Connection, b: Batch, ev: list[tuple], rel: list[tuple],
          rep: Report, prev: bytes = chain.GENESIS, ex: chain.Extra | None = None) -> bool:
    found = False
    other = {r[0] for r in conn.execute(
        "SELECT seq FROM notes WHERE seq > ? AND seq <= ? UNION SELECT seq FROM losses "
        "WHERE seq > ? AND seq <= ?", (b.lo, b.hi, b.lo, b.hi))}
    have = {r[0] for r in ev}
    for s in sorted(have & other):
        if ex is not None:  # encoding 2 chains both: the row whose removal restores the digest
            for t in ("notes", "losses"):
                rows = getattr(ex, t)
                if any(r[0] == s for r in rows):
                    fewer = chain.Extra(**{**ex.__dict__, t: [r for r in rows if r[0] != s]})
                    if chain.digest(prev, ev, rel, fewer) == b.digest:
                        rep.add("inserted", t, f"seq={s}", b.n, "an event has this seq")
                        return True
        rep.add("inserted", "events", f"seq={s}", b.n, "the ring record with this seq was a "
                "NOTE/LOSS, not an event")
        found = True
    for s in range(b.lo + 1, b.hi + 1):
        if s not in have and s not in other:
            rep.add("deleted", "events", f"seq={s}", b.n, "missing from a batch that applied it")
            found = True
            break
    if b.first_rel is not None:
        ids = [r[0] for r in rel]
        missing = sorted(set(range(b.first_rel, b.last_rel + 1)) - set(ids))
        if missing:
            rep.add("deleted", "relations", f"id={missing[0]}", b.n,
                    f"missing from ids {b.first_rel}..{b.last_rel}"
                    + (f" ({len(missing)} missing)" if len(missing) > 1 else ""))
            found = True
    return found


def _events(b: Batch, ev: list[tuple], rep: Report) -> bool:
    for row in ev:
        want = event_row(row[-1], row[0])
        if isinstance(want, str):
            rep.add("altered", "events", f"seq={row[0]}", b.n, want)
            return True
        if tuple(want) != tuple(row):
            cols = [c for c, x, y in zip(chain.EVENT_COLS, row, want, strict=True) if x != y]
            rep.add("altered", "events", f"seq={row[0]}", b.n,
                    f"column {', '.join(cols)} disagrees with the event's payload")
            return True
    return False


def _extra_rows(b: Batch, ev: list[tuple], ex: chain.Extra | None, rep: Report) -> bool:
    """Encoding 2, without an analyzer: a version carries the seq and time of an event of its
    batch; a name is bound and unbound at an event of its batch."""
    if ex is None:
        return False
    ts = {r[0]: r[1] for r in ev}
    for v in ex.versions:
        if v[4] not in ts:
            rep.add("altered", "versions", f"id={v[0]}", b.n,
                    f"column seq {v[4]} is no event of the batch")
            return True
        if v[5] != ts[v[4]]:
            rep.add("altered", "versions", f"id={v[0]}", b.n,
                    f"column ts_ns disagrees with event seq {v[4]}")
            return True
    for n in ex.names:
        if n[3] not in ts:
            rep.add("altered", "names", f"id={n[0]}", b.n,
                    f"column bind_seq {n[3]} is no event of the batch")
            return True
    for seq, nid in ex.unbinds:
        if seq not in ts:
            rep.add("altered", "names", f"id={nid}", b.n,
                    f"column unbind_seq {seq} is no event of the batch")
            return True
    return False


def _swaps(prev: bytes, ev: list[tuple], rel: list[tuple], want: bytes,
           ex: chain.Extra | None = None) -> Iterator[tuple]:
    """Candidate exchanges of two rows, from where timestamps go backwards."""
    for name, rows, ts_i in (("events", ev, 1), ("relations", rel, 6)):
        drops = [i for i in range(1, len(rows)) if (rows[i][ts_i] or 0) < (rows[i - 1][ts_i] or 0)]
        cands = {(d - 1, d) for d in drops}
        cands |= {(a - 1, c) for a in drops for c in drops if c > a}
        for a, c in sorted(cands)[:400]:
            swapped = list(rows)
            # the rows keep their keys; their contents trade places
            swapped[a] = (rows[a][0], *rows[c][1:])
            swapped[c] = (rows[c][0], *rows[a][1:])
            args = (swapped, rel) if name == "events" else (ev, swapped)
            if chain.digest(prev, *args, ex) == want:
                yield name, rows[a][0], rows[c][0]


def _replayed(conn: sqlite3.Connection, batches: list[Batch], rp: Replay | None = None
              ) -> Iterator[tuple[Batch, ABatch]]:
    """The stored events through a fresh analyzer, batch by batch: what the daemon wrote."""
    rp = rp or Replay()
    for b in batches:
        for (seq, payload) in conn.execute("SELECT seq, payload FROM events WHERE seq > ? AND "
                                           "seq <= ? ORDER BY seq", (b.lo, b.hi)):
            rp.feed(seq, payload)
        yield b, rp.take()


def _differ(cols: tuple[str, ...], stored: tuple, want: tuple) -> str:
    diff = [c for c, x, y in zip(cols, stored, want, strict=False) if x != y]
    return f"column {', '.join(diff) or '?'} differs from a replay of the stored events"


def _replay_extra(b: Batch, got: ABatch, ex: chain.Extra, rep: Report) -> bool:
    """Encoding 2: a batch's versions, names and unbinds against the replay's (encoding 3:
    and its attrs)."""
    checks = [
        ("versions", chain.VERSION_COLS, ex.versions, [tuple(v) for v in got.versions]),
        ("names", chain.NAME_COLS, ex.names, [tuple(n[:4]) for n in got.names_new]),
        ("names", ("unbind_seq", "id"), ex.unbinds, sorted(got.names_unbound))]
    if ex.attrs is not None:
        checks.append(("attrs", chain.ATTR_COLS, ex.attrs, [tuple(a) for a in got.attrs]))
    for table, cols, stored, want in checks:
        ident = 1 if cols[0] == "unbind_seq" else 0  # where the name, version or node id is
        if cols[0] == "unbind_seq":
            lost = {r[1] for r in want} - {r[1] for r in stored}
            extra = {r[1] for r in stored} - {r[1] for r in want}
            for nid in sorted(lost):
                rep.add("altered", table, f"id={nid}", b.n, "column unbind_seq: a replay "
                        "unbinds this name in the batch")
                return True
            for nid in sorted(extra):
                rep.add("altered", table, f"id={nid}", b.n, "column unbind_seq: a replay does "
                        "not unbind this name in the batch")
                return True
        def key(r: tuple, table: str = table, ident: int = ident) -> str:
            # attrs rows have no id: their node and key name them
            return f"node={r[0]} key={r[1]}" if table == "attrs" else f"id={r[ident]}"

        if len(stored) != len(want):  # a row deleted or inserted: where the rows part
            longer = stored if len(stored) > len(want) else want
            i = next((i for i, (s, w) in enumerate(zip(stored, want, strict=False)) if s != w),
                     min(len(stored), len(want)))
            rep.add("inserted" if len(stored) > len(want) else "deleted", table,
                    key(longer[i]), b.n,
                    f"{len(stored)} rows where a replay makes {len(want)}")
            return True
        for s, w in zip(stored, want, strict=False):
            if s != w:
                rep.add("altered", table, key(s), b.n, _differ(cols, s, w))
                return True
    return False


def _replay(conn: sqlite3.Connection, batches: list[Batch], rep: Report,
            encoding: str = "1") -> bool:
    """Replay the stored events through a fresh analyzer over ``batches``; compare each
    batch's relations (and, encoding 2, versions and names) with what the replay makes of it
    and report the first difference."""
    extras = _Extras(conn, encoding) if encoding != "1" else None
    for b, gb in _replayed(conn, batches):
        got = gb.relations
        if extras is not None and _replay_extra(b, gb, extras.take(b), rep):
            return True
        stored = {r[0]: tuple(r) for r in conn.execute(
            f"{REL_SQL} WHERE id BETWEEN ? AND ?", (b.first_rel or 0, b.last_rel or -1))}
        by_content = {r[1:]: r[0] for r in got}
        for r in got:
            s = stored.get(r[0])
            if s is None or s == tuple(r):
                continue
            if s[1:] in by_content and by_content[s[1:]] != r[0]:
                rep.add("reordered", "relations", f"id={r[0]}", b.n,
                        f"holds the row a replay puts at id={by_content[s[1:]]}")
            else:
                cols = [c for c, x, y in zip(chain.RELATION_COLS, s, r, strict=True) if x != y]
                rep.add("altered", "relations", f"id={r[0]}", b.n,
                        f"column {', '.join(cols)} differs from a replay of the stored events "
                        f"(the relation, or the events it came from, seq {r[5]}, changed)")
            return True
        extra = sorted(set(stored) - {r[0] for r in got})
        if extra:
            rep.add("inserted", "relations", f"id={extra[0]}", b.n, "not produced by a replay")
            return True
    return False


# -- the check -------------------------------------------------------------------------------
def verify(conn: sqlite3.Connection, path: str = "",
           tick: Callable[[int], None] = lambda n: None,
           expected_head: str | None = None) -> Report:
    """Check the whole chain; ``expected_head`` is a head anchored elsewhere earlier (printed,
    signed, logged remotely): it must still be one of the chain's links."""
    rep = Report(path, checked_at=time.time())
    q = conn.execute
    meta = dict(q("SELECT key, value FROM meta").fetchall())
    enc = meta.get("chain_encoding", "1")  # stores older than the key are encoding 1
    if enc not in chain.ENCODINGS:
        raise VerifyError(f"the store's hash chain uses encoding {enc}; this provisor "
                          f"verifies encodings {', '.join(chain.ENCODINGS)}")
    batches = _batches(conn, rep, enc)
    rep.batches = len(batches)
    if str(len(batches)) != meta.get("batches", "0"):
        rep.add("deleted" if len(batches) < int(meta.get("batches") or 0) else "inserted",
                "chain", f"batch={len(batches)}", None,
                f"{len(batches)} chain rows, meta says {meta.get('batches')}")
    prev = chain.GENESIS
    recomputed = chain.GENESIS
    state = {"replayed": False, "encoding": enc}
    rows = _batch_rows(conn, batches, enc)
    nxt = next(rows, None)
    for i, b in enumerate(batches):
        assert nxt is not None and nxt[0] is b
        _, ev, rel, ex = nxt
        nxt = next(rows, None)  # one batch ahead: a bad digest is judged by the next link
        rep.events += len(ev)
        rep.relations += len(rel)
        d = chain.digest(prev, ev, rel, ex)
        relink = False
        if d != b.digest:
            if len(rep.findings) < MAX_FINDINGS:
                relink = _locate(conn, batches, i, prev, d, ev, rel, ex, nxt, rep, state)
            else:
                rep.bad_batches_unexamined += 1
        elif ex is not None and ex.payloads and len(rep.findings) < MAX_FINDINGS:
            _events(b, ev, rep)  # encoding 4 chains the payloads: the columns are checked here
        recomputed = d
        prev = d if relink else b.digest
        tick(len(ev) + len(rel))
    if enc != "1" and batches:
        _check_state(conn, batches, rep, enc)
    head = meta.get("chain_head", "")
    rep.head = head
    if batches and head != batches[-1].digest.hex():
        if recomputed.hex() == head:
            rep.add("altered", "chain", f"batch={batches[-1].n}", batches[-1].n,
                    "stored digest differs from its rows and from the chain head")
        else:
            rep.add("altered", "meta", "chain_head", None,
                    f"head {head[:16]}... is not the last batch's digest")
    elif not batches and head not in ("", chain.GENESIS.hex()):
        rep.add("altered", "meta", "chain_head", None, "head set but no batch recorded")
    last_seq = batches[-1].hi if batches else 0
    if str(last_seq) != meta.get("applied_seq", "0"):
        rep.add("altered", "meta", "applied_seq", None,
                f"applied_seq {meta.get('applied_seq')} but the last batch ends at {last_seq}")
    last_rel = max((b.last_rel for b in batches if b.last_rel is not None), default=0)
    extra = q("SELECT min(seq) FROM events WHERE seq > ?", (last_seq,)).fetchone()[0]
    if extra is not None:
        rep.add("inserted", "events", f"seq={extra}", None, "after the last applied batch")
    extra = q("SELECT min(id) FROM relations WHERE id > ?", (last_rel,)).fetchone()[0]
    if extra is not None:
        rep.add("inserted", "relations", f"id={extra}", None, "after the last batch's relations")
    if batches:
        lo = batches[0].lo
        extra = q("SELECT min(seq) FROM events WHERE seq <= ?", (lo,)).fetchone()[0]
        if extra is not None:
            rep.add("inserted", "events", f"seq={extra}", None, "before the first batch")
        first_rel = min((b.first_rel for b in batches if b.first_rel is not None), default=1)
        extra = q("SELECT min(id) FROM relations WHERE id < ?", (first_rel,)).fetchone()[0]
        if extra is not None:
            rep.add("inserted", "relations", f"id={extra}", None, "before the first batch")
    if expected_head is not None:
        want = expected_head.strip().lower()
        links = {b.digest.hex(): b.n for b in batches}
        if want not in links and want != chain.GENESIS.hex():
            rep.add("altered", "chain", "anchored head", None,
                    f"the anchored head {want[:16]}... is no link of this chain: the store "
                    "was rewritten (or the head belongs to another store)")
    rep.findings.sort(key=lambda f: (f.batch is None, f.batch or 0))
    return rep


def _locate(conn: sqlite3.Connection, batches: list[Batch], i: int, prev: bytes, got: bytes,
            ev: list[tuple], rel: list[tuple], ex: chain.Extra | None, nxt: tuple | None,
            rep: Report, state: dict) -> bool:
    """Explain batch ``i``'s mismatch; True when its stored digest (not its rows) was altered,
    so the next batch must be checked against the recomputed one. ``nxt`` is the next batch's
    (batch, events, relations, extra)."""
    b = batches[i]
    n0 = len(rep.findings)
    if _keys(conn, b, ev, rel, rep, prev, ex) or _events(b, ev, rep) or _extra_rows(b, ev, ex,
                                                                                   rep):
        return False
    for name, a, c in _swaps(prev, ev, rel, b.digest, ex):
        key = "seq" if name == "events" else "id"
        rep.add("reordered", name, f"{key}={a}", b.n, f"exchanged with {key}={c}")
        return False
    # rows intact and the next link (or the head) agrees with them: the digest was altered
    nxt_ok = False
    if nxt is not None:
        b2, ev2, rel2, ex2 = nxt
        nxt_ok = chain.digest(got, ev2, rel2, ex2) == b2.digest
    else:
        nxt_ok = conn.execute("SELECT value FROM meta WHERE key='chain_head'").fetchone()[0] \
            == got.hex()
    if nxt_ok:
        rep.add("altered", "chain", f"batch={b.n}", b.n,
                "stored digest altered (its rows and the next link agree with each other)")
        return True
    if not state["replayed"]:  # a replay is from the start: once per run, not per bad batch
        state["replayed"] = True
        if _replay(conn, batches[:i + 1], rep, state["encoding"]):
            return False
    if len(rep.findings) == n0:
        rep.add("altered", "chain", f"batch={b.n}", b.n,
                f"digest mismatch over events seq {b.lo + 1}..{b.hi} and relations "
                f"{b.first_rel}..{b.last_rel}"
                + (" (and the batch's versions, names, losses, notes)" if ex else "")
                + "; the row could not be located (an earlier batch re-chained, or a payload "
                "and its columns changed together? verify --ring compares payloads with the "
                "ring)")
    return False


# -- encoding 2: the rows later batches rewrite ----------------------------------------------
def _state_cols(t: str) -> tuple[str, ...]:
    return schema.TABLES[t].cols


def _state_keylen(t: str) -> int:
    return len(schema.TABLES[t].pk)


def _check_state(conn: sqlite3.Connection, batches: list[Batch], rep: Report,
                 encoding: str) -> None:
    """The rows of the rewritten tables, as stored now, must hash to the state the last batch
    chained; a table that does not is located by a replay of the stored events."""
    last = batches[-1]
    want = chain.split_state(last.state or b"")
    have = chain.State.of(conn, encoding).table_digests()
    bad = [t for t, d in have.items() if want.get(t) != d]
    if not bad:
        return
    rp = Replay()
    for _ in _replayed(conn, batches, rp):
        pass
    final = rp.state_rows()
    for t in bad:
        k = _state_keylen(t)
        stored = {tuple(r[:k]): tuple(r) for r in conn.execute(chain.STATE_TABLES[t])}
        exp = final[t]
        keyname = _state_cols(t)[:k]

        def key(kv: tuple, names: tuple[str, ...] = keyname) -> str:
            return " ".join(f"{n}={v}" for n, v in zip(names, kv, strict=True))

        found = False
        for kv in sorted(set(stored) | set(exp), key=repr):
            s, w = stored.get(kv), exp.get(kv)
            if s == w:
                continue
            if s is None:
                rep.add("deleted", t, key(kv), last.n, "a replay of the stored events has it")
            elif w is None:
                rep.add("inserted", t, key(kv), last.n, "not produced by a replay")
            else:
                rep.add("altered", t, key(kv), last.n, _differ(_state_cols(t), s, w))
            found = True
            break
        if not found:
            rep.add("altered", t, "", last.n, f"the {t} rows do not hash to the state chained "
                    f"by batch {last.n}; the row could not be located (a replay agrees)")


# -- the ring --------------------------------------------------------------------------------
def ring_records(path: str) -> tuple[str, dict[int, tuple[int, bytes]], int]:
    """Every record still readable in a ring image: the live chain after the checkpoint, and
    released records not yet overwritten (``pmem.layout.salvage``: found by their own
    checksums)."""
    from pmem import layout as L
    from pmem.ring import Consumer

    with Consumer.open(path, readonly=True) as c:
        hdr, buf = c.header, c.buf
        sv = L.salvage(buf, hdr)
        out = {f.seq: (f.type, bytes(buf[L.DATA_OFFSET + f.offset + L.REC_HDR:
                                         L.DATA_OFFSET + f.offset + L.REC_HDR + f.length]))
               for f in sv.records}
        return hdr.uuid_str, out, hdr.checkpoint_seq


def verify_ring(conn: sqlite3.Connection, ring_path: str, rep: Report) -> None:
    from pmem import layout as L

    uuid_str, recs, checkpoint = ring_records(ring_path)
    q = conn.execute
    meta = dict(q("SELECT key, value FROM meta").fetchall())
    if meta.get("ring_uuid") and meta["ring_uuid"] != uuid_str:
        raise VerifyError(f"{ring_path} is ring {uuid_str}, the database belongs to ring "
                          f"{meta['ring_uuid']}")
    applied = int(meta.get("applied_seq") or 0)
    same = differ = 0
    pending = sum(1 for s in recs if s > applied)
    if checkpoint > applied:  # the ring let go of records the store does not have
        rep.add("deleted", "events", f"seq={applied + 1}..{checkpoint}", None,
                f"the ring released records up to {checkpoint} but the store is at applied seq "
                f"{applied}: released records are missing from the store (a truncated or "
                "replaced store, or a store of an earlier run)")
        differ += 1
    for seq in sorted(s for s in recs if s <= applied):
        rtype, payload = recs[seq]
        if rtype != L.RecType.EVENT:
            continue
        row = q("SELECT payload FROM events WHERE seq=?", (seq,)).fetchone()
        if row is None:
            if q("SELECT 1 FROM notes WHERE seq=?", (seq,)).fetchone():
                continue  # an undecodable event, stored as a note
            rep.add("deleted", "events", f"seq={seq}", None, "the ring still holds this record")
            differ += 1
        elif bytes(row[0]) != payload:
            rep.add("altered", "events", f"seq={seq}", None, "payload differs from the ring's")
            differ += 1
        else:
            same += 1
    rep.ring = {"path": ring_path, "uuid": uuid_str, "records": len(recs),
                "checkpoint_seq": checkpoint, "matched": same, "mismatched": differ,
                "not_yet_applied": pending}


# -- the sidecar status reads ----------------------------------------------------------------
def state_path(db: str) -> str:
    return db + ".verified"


def save_state(rep: Report) -> None:
    """Remember the last result next to the DB for ``provisor status`` (best effort: the
    result itself is no evidence; re-run verify to trust it)."""
    from provisor import files

    if not os.path.isabs(rep.db):
        return  # a PostgreSQL store: no file beside it (status --verify verifies there)
    try:  # private and exclusive like every file of ours; another user's marker is left alone
        with files.output(state_path(rep.db)) as f:
            json.dump(rep.to_json(), f)
    except (OSError, files.FileError):
        pass


def load_state(db: str) -> dict | None:
    """The last result, unless the marker is a symlink or another user's (a planted "intact"
    would be believed by ``provisor status``); root's is read (a root daemon's store)."""
    from provisor import files

    if not os.path.isabs(db):
        return None
    try:
        fd, _ = files.open_ours(state_path(db), os.O_RDONLY, root_ok=True)
    except files.FileError:
        return None
    try:
        with open(fd, closefd=True) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run(db: str, ring: str | None = None, tick: Callable[[int], None] = lambda n: None,
        expected_head: str | None = None, machine: str | None = None) -> Report:
    from examiner.query import connect

    if expected_head is not None:
        h = expected_head.strip().lower()
        if len(h) != 64 or any(ch not in "0123456789abcdef" for ch in h):
            raise VerifyError("--head must be 64 hex digits (as printed by verify)")
    conn = connect(db, machine)
    try:
        with reader.snapshot(conn):  # a daemon committing meanwhile is not seen half-way
            rep = verify(conn, conn.path if is_postgres_url(db) else os.path.abspath(db),
                         tick, expected_head)
            if ring:
                verify_ring(conn, ring, rep)
    finally:
        conn.close()
    save_state(rep)
    return rep


def render(rep: Report) -> str:
    """The report as ``provisor verify`` prints it: OK or TAMPERED with the first finding."""
    summary = (f"{rep.batches} batches, {rep.events} events, {rep.relations} relations; "
               f"chain head {rep.head}")
    if rep.ring:
        r = rep.ring
        summary += (f"\nring {r['uuid']}: {r['records']} records readable, {r['matched']} "
                    f"match the store, {r['mismatched']} do not, "
                    f"{r['not_yet_applied']} not applied yet")
    if rep.ok:
        return f"OK: {summary}"
    return "\n".join([f"TAMPERED: {rep.findings[0]}",
                      *(f"  also: {f}" for f in rep.findings[1:]), summary])
