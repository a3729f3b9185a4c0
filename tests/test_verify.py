"""Tamper evidence: an untouched store verifies clean; each altered, deleted, inserted or
reordered row (and chain row, and head) is reported with its table, key and batch."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

import pytest
from test_query import drained_ring, workload

from daemon.apply import Applier
from examiner import verify as V
from examiner.query import connect
from pmem import layout as L
from pmem.layout import Record, RecType
from provisor.errors import ProvisorError
from provisor.events import decode, encode
from store import chain, reader


def build(path: str) -> list[int]:
    """The query workload plus a synthetic stream and a NOTE, applied in several batches;
    returns the NOTE's seq."""
    from hv.synth import Guest

    s = Applier(path, "test-ring")
    sc, _ = workload()
    recs = list(sc.records)
    note = Record(sc.seq + 1, RecType.NOTE, 0, b"operator: backup started")
    recs.append(note)
    evs = Guest(5).events(900, start_seq=note.seq + 1)
    recs += [Record(e.seq, RecType.EVENT, 0, encode(e)) for e in evs]
    for i in range(0, len(recs), 150):
        s.apply(recs[i:i + 150])
    s.close()
    return [note.seq]


class PgWriter:
    """Someone with write access to a PostgreSQL store (the superuser), with the part of
    ``sqlite3.Connection`` these tests use: the same tampering statements run on both."""

    def __init__(self, url: str) -> None:
        from store import postgres

        self.conn = postgres.connect(url)
        self.conn.autocommit = True
        self.conn.execute(f'SET search_path TO "{postgres.namespace("default")}"')

    def execute(self, sql: str, args=()):  # noqa: ANN001, ANN201
        return self.conn.execute(reader.translate(sql), tuple(args) or None)

    def executemany(self, sql: str, rows) -> None:  # noqa: ANN001
        self.conn.cursor().executemany(reader.translate(sql), list(rows))

    def close(self) -> None:
        self.conn.close()


def is_pg(path: str) -> bool:
    return path.startswith("postgresql://")


def writer(path: str):  # noqa: ANN201
    return PgWriter(path) if is_pg(path) else sqlite3.connect(path, isolation_level=None)


_copies = iter(range(1 << 30))


def copy_store(src: str, tmp_path, name: str, request) -> str:  # noqa: ANN001
    """A copy of the store at ``src`` (a file copy; a database made from it as template)."""
    if not is_pg(src):
        dst = str(tmp_path / name)
        shutil.copy(src, dst)
        return dst
    template = src.split("?", 1)[0].rsplit("/", 1)[1]
    return request.getfixturevalue("pg_cluster").createdb(f"{template}_c{next(_copies)}",
                                                          template=template)


@pytest.fixture(scope="module")
def pristine(module_store_db):
    notes = build(module_store_db)
    return module_store_db, notes


@pytest.fixture
def db(pristine, tmp_path, request):
    path = copy_store(pristine[0], tmp_path, "p.db", request)
    c = writer(path)
    yield path, c, pristine[1]
    c.close()


def check(path: str) -> V.Report:
    conn = connect(path)
    try:
        return V.verify(conn, path)
    finally:
        conn.close()


def batch_of(c: sqlite3.Connection, seq: int) -> int:
    return c.execute("SELECT min(batch) FROM chain WHERE last_seq >= ?", (seq,)).fetchone()[0]


def rel_batch(c: sqlite3.Connection, rid: int) -> int:
    return c.execute("SELECT batch FROM chain WHERE ? BETWEEN first_rel AND last_rel",
                     (rid,)).fetchone()[0]


def first(rep: V.Report) -> V.Finding:
    assert rep.findings, "tampering went unnoticed"
    return rep.findings[0]


def test_untouched_store_verifies_clean(db):
    path, c, _ = db
    rep = check(path)
    assert rep.ok, [str(f) for f in rep.findings]
    assert rep.batches > 5 and rep.relations == c.execute(
        "SELECT count(*) FROM relations").fetchone()[0]
    assert rep.head == c.execute("SELECT value FROM meta WHERE key='chain_head'").fetchone()[0]


def test_altered_event_column(db):
    path, c, _ = db
    c.execute("UPDATE events SET paths='/etc/shadow' WHERE seq=200")
    f = first(check(path))
    assert (f.what, f.table, f.key, f.batch) == ("altered", "events", "seq=200", batch_of(c, 200))
    assert "paths" in f.detail


def test_altered_event_payload(db):
    path, c, _ = db
    p = bytearray(c.execute("SELECT payload FROM events WHERE seq=300").fetchone()[0])
    p[20] ^= 0x01  # inside the timestamp
    c.execute("UPDATE events SET payload=? WHERE seq=300", (bytes(p),))
    f = first(check(path))
    assert (f.what, f.table, f.key, f.batch) == ("altered", "events", "seq=300", batch_of(c, 300))


def test_altered_payload_and_columns_together_still_caught(db):
    path, c, _ = db
    row = c.execute("SELECT payload, ts_ns FROM events WHERE seq=310").fetchone()
    ev = decode(row[0], 310)
    ev.ts_ns += 1
    c.execute("UPDATE events SET payload=?, ts_ns=? WHERE seq=310", (encode(ev), ev.ts_ns))
    rep = check(path)
    f = first(rep)
    assert f.batch == batch_of(c, 310) and f.table in ("chain", "events", "relations")


def test_deleted_event(db):
    path, c, _ = db
    c.execute("DELETE FROM events WHERE seq=123")
    f = first(check(path))
    assert (f.what, f.table, f.key, f.batch) == ("deleted", "events", "seq=123", batch_of(c, 123))


def test_deleted_relation(db):
    path, c, _ = db
    c.execute("DELETE FROM relations WHERE id=77")
    f = first(check(path))
    assert (f.what, f.table, f.key, f.batch) == ("deleted", "relations", "id=77",
                                                 rel_batch(c, 77))


def test_altered_relation(db):
    path, c, _ = db
    c.execute("UPDATE relations SET dst = dst + 1 WHERE id=150")
    f = first(check(path))
    assert (f.what, f.table, f.key, f.batch) == ("altered", "relations", "id=150",
                                                 rel_batch(c, 150))
    assert "dst" in f.detail


def test_inserted_rows_at_the_end(db):
    path, c, _ = db
    last = c.execute("SELECT max(seq) FROM events").fetchone()[0]
    c.execute("INSERT INTO events SELECT ?, ts_ns, vcpu, phase, entry_seq, nr, name, tgid, pid, "
              "ppid, uid, start_time, comm, cwd, paths, ret, flags, payload FROM events "
              "WHERE seq=?", (last + 5, last))
    keys = {(f.what, f.table, f.key) for f in check(path).findings}
    assert ("inserted", "events", f"seq={last + 5}") in keys
    rid = c.execute("SELECT max(id) FROM relations").fetchone()[0]
    c.execute("DELETE FROM events WHERE seq=?", (last + 5,))
    c.execute("INSERT INTO relations SELECT ?, kind, dst, src, entry_seq, exit_seq, ts_ns "
              "FROM relations WHERE id=?", (rid + 1, rid))
    f = first(check(path))
    assert (f.what, f.table, f.key) == ("inserted", "relations", f"id={rid + 1}")


def test_inserted_event_in_place_of_a_note(db):
    path, c, notes = db
    seq = notes[0]
    c.execute("INSERT INTO events SELECT ?, ts_ns, vcpu, phase, entry_seq, nr, name, tgid, pid, "
              "ppid, uid, start_time, comm, cwd, paths, ret, flags, payload FROM events "
              "WHERE seq=?", (seq, seq - 1))
    f = first(check(path))
    assert (f.what, f.table, f.key, f.batch) == ("inserted", "events", f"seq={seq}",
                                                 batch_of(c, seq))


def _swap(c: sqlite3.Connection, table: str, key: str, a: int, b: int) -> None:
    cols = chain.EVENT_COLS if table == "events" else chain.RELATION_COLS
    ra = c.execute(f"SELECT * FROM {table} WHERE {key}=?", (a,)).fetchone()
    rb = c.execute(f"SELECT * FROM {table} WHERE {key}=?", (b,)).fetchone()
    sets = ", ".join(f"{col}=?" for col in cols[1:])
    c.execute(f"UPDATE {table} SET {sets} WHERE {key}=?", (*rb[1:len(cols)], a))
    c.execute(f"UPDATE {table} SET {sets} WHERE {key}=?", (*ra[1:len(cols)], b))


def test_reordered_events(db):
    path, c, _ = db
    _swap(c, "events", "seq", 401, 404)
    f = first(check(path))
    assert (f.what, f.table, f.batch) == ("reordered", "events", batch_of(c, 401))
    assert {f.key, f.detail.split()[-1]} == {"seq=401", "seq=404"}


def test_reordered_relations(db):
    path, c, _ = db
    _swap(c, "relations", "id", 160, 161)
    f = first(check(path))
    assert (f.what, f.table, f.batch) == ("reordered", "relations", rel_batch(c, 160))
    assert f.key in ("id=160", "id=161")


def test_altered_chain_digest_is_one_finding(db):
    path, c, _ = db
    c.execute("UPDATE chain SET digest=? WHERE batch=3", (bytes(32),))
    rep = check(path)
    assert [(f.what, f.table, f.key) for f in rep.findings] == [("altered", "chain", "batch=3")]


def _set_meta(c: sqlite3.Connection, **kv: object) -> None:
    c.executemany("UPDATE meta SET value=? WHERE key=?", [(str(v), k) for k, v in kv.items()])


def truncate_consistently(c: sqlite3.Connection, n: int) -> None:
    """Make the store what it was after batch ``n - 1``, as whoever can write the file (and
    run the analyzer) can: the last batch's events, relations, versions, names, notes and
    losses gone, unbinds undone, the rewritten tables replaced by a replay's (chain encoding
    2 chains their state), the chain row deleted and meta rewritten to match."""
    lo, last_rel, digest = c.execute("SELECT last_seq, coalesce(last_rel, 0), digest FROM chain "
                                     "WHERE batch=?", (n - 1,)).fetchone()
    batches = V._batches(c, V.Report(""), "2")[:n - 1]
    rp = V.Replay()
    for _ in V._replayed(c, batches, rp):
        pass
    c.execute("DELETE FROM chain WHERE batch=?", (n,))
    for t in ("events", "notes", "losses", "versions", "attrs"):
        c.execute(f"DELETE FROM {t} WHERE seq > ?", (lo,))
    c.execute("DELETE FROM relations WHERE id > ?", (last_rel,))
    c.execute("DELETE FROM names WHERE bind_seq > ?", (lo,))
    c.execute("UPDATE names SET unbind_seq=NULL WHERE unbind_seq > ?", (lo,))
    for t, rows in rp.state_rows().items():
        c.execute(f"DELETE FROM {t}")
        if rows:
            marks = ",".join("?" * len(next(iter(rows.values()))))
            c.executemany(f"INSERT INTO {t} VALUES ({marks})", list(rows.values()))
    _set_meta(c, applied_seq=lo, batches=n - 1, chain_head=bytes(digest).hex())


def test_deleted_chain_row_and_head(db, pristine, tmp_path, request):
    """Chain rows deleted with the head (and meta) made to agree. A row from the middle is
    found by the batch numbering; the last row by meta.batches; a consistent truncation
    (the last batch's rows and chain row gone, head, batches and applied_seq rewritten to
    match) is a self-consistent store that verify alone passes (docs/TAMPER.md: whoever can
    write the file can do this; neither --ring nor the .verified sidecar is compared against
    it), and a head anchored before it exposes it."""
    path, c, _ = db
    head0 = check(path).head
    n = c.execute("SELECT count(*) FROM chain").fetchone()[0]
    digest = {b: d.hex() for b, d in c.execute("SELECT batch, digest FROM chain")}
    # 1. a middle row, with meta.batches lowered to match (the head is still the last digest)
    mid = copy_store(pristine[0], tmp_path, "mid.db", request)
    c1 = writer(mid)
    c1.execute("DELETE FROM chain WHERE batch=2")
    _set_meta(c1, batches=n - 1)
    c1.close()
    f = first(check(mid))
    assert (f.what, f.table, f.key) == ("deleted", "chain", "batch=2")
    # 2. the last row, the head moved back to the new last digest (meta.batches untouched)
    c.execute("DELETE FROM chain WHERE batch=?", (n,))
    _set_meta(c, chain_head=digest[n - 1])
    keys = [(f.what, f.table, f.key) for f in check(path).findings]
    assert ("deleted", "chain", f"batch={n - 1}") in keys, keys
    assert ("altered", "meta", "chain_head") not in keys  # the head does agree
    # 3. ... and everything else made consistent: the batch's rows deleted, the rewritten
    # tables as they were, applied_seq and batches rewritten
    path = copy_store(pristine[0], tmp_path, "truncated.db", request)
    c3 = writer(path)
    truncate_consistently(c3, n)
    c3.close()
    rep = check(path)
    assert rep.ok and rep.head == digest[n - 1] != head0, [str(f) for f in rep.findings]
    conn = connect(path)
    try:
        rep = V.verify(conn, path, expected_head=head0)
    finally:
        conn.close()
    assert [(f.what, f.table, f.key) for f in rep.findings] == [
        ("altered", "chain", "anchored head")]


def test_altered_head(db):
    path, c, _ = db
    c.execute("UPDATE meta SET value=? WHERE key='chain_head'", ("00" * 32,))
    f = first(check(path))
    assert (f.what, f.table, f.key) == ("altered", "meta", "chain_head")


def test_rechained_batch_is_still_located(db):
    """An attacker alters a relation and recomputes that batch's digest, but cannot fix the
    next link without rewriting every later digest and the head."""
    path, c, _ = db
    b = rel_batch(c, 150)
    assert c.execute("UPDATE relations SET kind = CASE kind WHEN 'used' THEN 'wasDerivedFrom' "
                     "ELSE 'used' END WHERE id=150").rowcount == 1
    c.execute("UPDATE chain SET digest=? WHERE batch=?", (V.batch_digest(c, b), b))
    f = first(check(path))
    assert (f.what, f.table, f.key, f.batch) == ("altered", "relations", "id=150", b)


def test_anchored_head(db):
    path, c, _ = db
    head = check(path).head
    conn = connect(path)
    assert V.verify(conn, path, expected_head=head).ok
    # a head anchored earlier (the store grew since) is still a link of the chain
    mid = c.execute("SELECT digest FROM chain WHERE batch=3").fetchone()[0].hex()
    assert V.verify(conn, path, expected_head=mid).ok
    rep = V.verify(conn, path, expected_head="ab" * 32)
    assert [(f.what, f.table) for f in rep.findings] == [("altered", "chain")]
    conn.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from provisor.cli import main; main()",
                           *args], capture_output=True, text=True)


def test_cli_exit_codes(db, tmp_path):
    path, c, _ = db
    r = _cli("verify", "--db", path)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    c.execute("DELETE FROM relations WHERE id=77")
    r = _cli("verify", "--db", path)
    assert r.returncode == 1 and "deleted: relations id=77" in r.stdout
    r = _cli("verify", "--db", str(tmp_path / "none.db"))
    assert r.returncode == 2 and r.stderr.startswith("provisor: error:")
    assert r.stderr.count("\n") == 1


# -- against the ring ------------------------------------------------------------------------
@pytest.fixture
def ringdb(shm_dir):
    from pmem import ring

    rpath, dpath = drained_ring(shm_dir, "r", batch_min=16, batch_max=16)
    with ring.Producer.open(rpath, "fail") as prod:  # one more, not yet applied
        prod.note("late")
    return rpath, dpath


def test_ring_matches_untouched_store(ringdb):
    rpath, dpath = ringdb
    rep = V.run(dpath, rpath)
    assert rep.ok, [str(f) for f in rep.findings]
    assert rep.ring["matched"] == 59  # released records are still there, all compared
    assert rep.ring["not_yet_applied"] == 1
    assert V.load_state(dpath)["ok"] is True


def test_ring_pinpoints_a_consistent_payload_forgery(ringdb):
    rpath, dpath = ringdb
    c = sqlite3.connect(dpath, isolation_level=None)
    row = c.execute("SELECT payload FROM events WHERE seq=21").fetchone()
    ev = decode(row[0], 21)
    ev.ts_ns += 7
    c.execute("UPDATE events SET payload=?, ts_ns=? WHERE seq=21", (encode(ev), ev.ts_ns))
    c.execute("DELETE FROM events WHERE seq=40")
    c.close()
    rep = V.run(dpath, rpath)
    keys = {(f.what, f.table, f.key) for f in rep.findings}
    assert ("altered", "events", "seq=21") in keys
    assert ("deleted", "events", "seq=40") in keys
    assert V.load_state(dpath)["ok"] is False


def test_ring_exposes_a_consistent_truncation_of_the_store(ringdb):
    """The last batch's rows and chain row deleted and meta rewritten to match: verify alone
    passes (test_deleted_chain_row_and_head); the ring released those records, so --ring
    names them."""
    rpath, dpath = ringdb
    c = sqlite3.connect(dpath, isolation_level=None)
    n = c.execute("SELECT max(batch) FROM chain").fetchone()[0]
    lo = c.execute("SELECT last_seq FROM chain WHERE batch=?", (n - 1,)).fetchone()[0]
    truncate_consistently(c, n)
    c.close()
    assert check(dpath).ok  # self-consistent without the ring
    rep = V.run(dpath, rpath)
    keys = [(f.what, f.table) for f in rep.findings]
    assert not rep.ok and ("deleted", "events") in keys, [str(f) for f in rep.findings]
    assert any(f"seq={lo + 1}.." in str(f) for f in rep.findings), [str(f) for f in rep.findings]


def test_ring_of_another_store_is_refused(ringdb, shm_dir):
    from pmem import ring

    other = str(shm_dir / "o.ring")
    ring.create(other, L.DATA_OFFSET + 64 * 1024)
    r = _cli("verify", "--db", ringdb[1], "--ring", other)
    assert r.returncode == 2 and "belongs to ring" in r.stderr


def test_a_batch_committed_during_verify_is_not_seen_half_way(db, monkeypatch):
    """verify reads one snapshot: the daemon committing meanwhile is no 'inserted' row."""
    from hv.synth import Guest

    path, c, _ = db
    before = c.execute("SELECT count(*) FROM chain").fetchone()[0]
    last = c.execute("SELECT value FROM meta WHERE key='applied_seq'").fetchone()[0]
    real = V._rows
    done = []

    def rows_then_commit(conn, b):
        out = real(conn, b)
        if not done:
            done.append(1)
            s = Applier(path, "test-ring")
            evs = Guest(9).events(200, start_seq=int(last) + 1)
            s.apply([Record(e.seq, RecType.EVENT, 0, encode(e)) for e in evs])
            s.close()
        return out

    monkeypatch.setattr(V, "_rows", rows_then_commit)
    rep = V.run(path)
    assert done and rep.ok, [str(f) for f in rep.findings]
    assert rep.batches == before
    monkeypatch.setattr(V, "_rows", real)
    assert V.run(path).batches == before + 1


def test_unknown_chain_encoding_is_refused(tmp_path):
    from daemon.apply import Applier
    from examiner.verify import VerifyError, verify

    s = Applier(str(tmp_path / "e.db"), "r")
    s.conn.execute("UPDATE meta SET value='99' WHERE key='chain_encoding'")
    with pytest.raises(VerifyError, match="encoding 99"):
        verify(s.conn, str(tmp_path / "e.db"))
    s.close()


# -- encoding 2: the rows outside events and relations are chained too ------------------------
def _some(c: sqlite3.Connection, sql: str) -> int:
    row = c.execute(sql).fetchone()
    assert row is not None and row[0] is not None, sql
    return row[0]


# (edit, the table and key the first finding must name); each edit must change a value
TAMPER = {
    "artifacts.path": ("UPDATE artifacts SET path='/forged' WHERE id={a}", "artifacts", "id={a}"),
    "artifacts.ino": ("UPDATE artifacts SET ino=ino+1 WHERE id={ai}", "artifacts", "id={ai}"),
    "names.path": ("UPDATE names SET path='/forged' WHERE id={n}", "names", "id={n}"),
    "names.unbind_seq": ("UPDATE names SET unbind_seq=NULL WHERE id={u}", "names", "id={u}"),
    "processes.exe": ("UPDATE processes SET exe='/bin/forged' WHERE id={p}", "processes",
                      "id={p}"),
    "processes.uid": ("UPDATE processes SET uid=uid+1000 WHERE id={p}", "processes", "id={p}"),
    "versions.ts_ns": ("UPDATE versions SET ts_ns=ts_ns+1 WHERE id={v}", "versions", "id={v}"),
    "versions.reason": ("UPDATE versions SET reason='forged' WHERE id={v}", "versions",
                        "id={v}"),
    "fds.artifact_id": ("UPDATE fds SET artifact_id=artifact_id+1 WHERE proc_id={fp} AND "
                        "fd={fd}", "fds", "proc_id={fp} fd={fd}"),
    "proc_used": ("DELETE FROM proc_used WHERE proc_id={up} AND pos={upos}", "proc_used",
                  "proc_id={up} pos={upos}"),
    "pending": ("INSERT INTO pending VALUES (5)", "pending", "seq=5"),
    "losses": ("INSERT INTO losses VALUES (3, 1, 1)", "losses", "seq=3"),
    "attrs.value": ("UPDATE attrs SET value='forged' WHERE node={an} AND key='{ak}' AND "
                    "seq={aseq}", "attrs", "node={an} key={ak}"),
    "attrs.deleted": ("DELETE FROM attrs WHERE node={an} AND key='{ak}' AND seq={aseq}",
                      "attrs", "node={an} key={ak}"),
}


def _keys_of(c: sqlite3.Connection) -> dict[str, int]:
    fp, fd = c.execute("SELECT proc_id, fd FROM fds ORDER BY proc_id, fd LIMIT 1").fetchone()
    up, upos = c.execute("SELECT proc_id, pos FROM proc_used LIMIT 1").fetchone()
    return {"a": _some(c, "SELECT min(id) FROM artifacts WHERE path IS NOT NULL"),
            "ai": _some(c, "SELECT min(id) FROM artifacts WHERE ino IS NOT NULL"),
            "n": _some(c, "SELECT max(id) FROM names"),
            "u": _some(c, "SELECT min(id) FROM names WHERE unbind_seq IS NOT NULL"),
            "p": _some(c, "SELECT max(id) FROM processes"),
            "v": _some(c, "SELECT max(id) / 2 FROM versions"),
            "fp": fp, "fd": fd, "up": up, "upos": upos, **_attr_keys(c)}


def _attr_keys(c: sqlite3.Connection) -> dict[str, object]:
    """An attrs row in the middle of the store, alone of its (node, key, seq)."""
    n = _some(c, "SELECT count(*) FROM attrs")
    an, ak, aseq = c.execute(
        "SELECT node, key, seq FROM attrs GROUP BY node, key, seq HAVING count(*) = 1 "
        "ORDER BY seq, node, key LIMIT 1 OFFSET ?", (n // 3,)).fetchone()
    return {"an": an, "ak": ak, "aseq": aseq}


@pytest.mark.parametrize("name", list(TAMPER))
def test_every_stored_column_is_under_the_chain(db, name):
    """docs/TAMPER.md: an edit to any row of versions, names, processes, artifacts, fds,
    proc_used, pending or losses fails verify, which names the table and the row."""
    path, c, _ = db
    enc = c.execute("SELECT value FROM meta WHERE key='chain_encoding'").fetchone()[0]
    assert enc == chain.ENCODING
    sql, table, key = TAMPER[name]
    k = _keys_of(c)
    assert c.execute(sql.format(**k)).rowcount == 1
    r = _cli("verify", "--db", path)
    assert r.returncode == 1, r.stdout + r.stderr
    first_line = r.stdout.splitlines()[0]
    assert first_line.startswith("TAMPERED: ") and f" {table} {key.format(**k)} " in first_line, \
        first_line


def test_an_edited_note_is_caught_in_its_batch(db):
    path, c, notes = db
    c.execute("UPDATE notes SET text='forged' WHERE seq=?", (notes[0],))
    f = first(check(path))
    assert (f.what, f.table, f.batch) == ("altered", "chain", batch_of(c, notes[0]))


def test_the_daemon_does_not_chain_edited_state(db):
    """Resuming on edited state would chain the forgery as the daemon's own: the writer
    refuses, and verify still names the row."""
    path, c, _ = db
    k = _keys_of(c)
    c.execute("UPDATE processes SET exe='/bin/forged' WHERE id=?", (k["p"],))
    with pytest.raises(ProvisorError, match=r"damaged store: the processes rows differ"):
        Applier(path, "test-ring")
    f = first(check(path))
    assert (f.table, f.key) == ("processes", f"id={k['p']}")


def grown(path: str, recs: list[Record], step: int = 100) -> V.Report:
    """``recs`` applied to the store at ``path`` a batch of ``step`` per daemon run; verified."""
    for i in range(0, len(recs), step):
        s = Applier(path, "r")
        s.apply(recs[i:i + step])
        s.close()
    return check(path)


def test_an_encoding_1_store_still_verifies_and_grows_in_encoding_1(tmp_path):
    """Stores made before encoding 2 keep their chain: verify checks it as it was made (events
    and relations), the daemon extends it the same way."""
    from hv.synth import Guest

    path = str(tmp_path / "old.db")
    s = Applier(path, "r")
    s.conn.execute("ALTER TABLE chain DROP COLUMN state")
    s.conn.execute("UPDATE meta SET value='1' WHERE key='chain_encoding'")
    s.close()
    recs = [Record(e.seq, RecType.EVENT, 0, encode(e)) for e in Guest(2).events(400)]
    rep = grown(path, recs)
    assert rep.ok and rep.batches == 4, [str(f) for f in rep.findings]
    c = sqlite3.connect(path)
    c.execute("UPDATE relations SET dst=dst+1 WHERE id=5")
    c.commit()
    c.close()
    assert first(check(path)).table == "relations"


def test_stores_of_encodings_3_and_4_still_verify_and_grow_in_their_encoding(tmp_path):
    """Encoding 3 chained each event's columns; encoding 4 chains its seq and payload and
    checks the columns against the payload; encoding 5 is 4 with rows in chain.rows_bin, not
    repr. A store made in an older encoding keeps it, and verify catches an edited column in
    each."""
    from hv.synth import Guest

    recs = [Record(e.seq, RecType.EVENT, 0, encode(e)) for e in Guest(2).events(400)]
    seen = {}
    for enc in ("3", "4", "5"):
        path = str(tmp_path / f"e{enc}.db")
        s = Applier(path, "r")
        s.conn.execute("UPDATE meta SET value=? WHERE key='chain_encoding'", (enc,))
        s.close()
        rep = grown(path, recs)
        assert rep.ok and rep.batches == 4, [str(f) for f in rep.findings]
        c = sqlite3.connect(path)
        digests = [r[0] for r in c.execute("SELECT digest FROM chain ORDER BY batch")]
        c.execute("UPDATE events SET comm='evil' WHERE seq=150")
        c.commit()
        c.close()
        f = first(check(path))
        assert (f.what, f.table, f.key, f.batch) == ("altered", "events", "seq=150", 2), str(f)
        assert digests not in seen.values()  # the encodings differ: the store's own is used
        seen[enc] = digests
        assert c_encoding(path) == enc


def c_encoding(path: str) -> str:
    c = sqlite3.connect(path)
    try:
        return c.execute("SELECT value FROM meta WHERE key='chain_encoding'").fetchone()[0]
    finally:
        c.close()


def test_encoding_5_never_hashes_a_repr(tmp_path, monkeypatch):
    """Python's repr of a string depends on the interpreter's Unicode database (a character
    new in a later Unicode version is escaped by an older Python), so a chain built on it
    could fail verify after an upgrade. Encoding 5 (new stores) hashes rows by rows_bin:
    with repr made unusable in store/chain, a store with non-ASCII guest paths is written,
    grown and verified, and an edit is still caught."""
    from hv.synth import Guest
    from store import chain

    def no_repr(_obj: object) -> str:
        raise AssertionError("encoding 5 used repr")

    evs = list(Guest(3).events(300))
    for e in evs[::7]:
        if e.paths:
            e.paths = [p + "/\U000323af-\u00e9-\U0001fae8" for p in e.paths]
    recs = [Record(e.seq, RecType.EVENT, 0, encode(e)) for e in evs]
    monkeypatch.setattr(chain, "repr", no_repr, raising=False)
    path = str(tmp_path / "e5.db")
    assert chain.ENCODING == "5"
    rep = grown(path, recs)
    assert rep.ok and rep.batches == 3, [str(f) for f in rep.findings]
    assert c_encoding(path) == "5"
    c = sqlite3.connect(path)
    assert c.execute("SELECT count(*) FROM names WHERE path LIKE '%\U000323af%'"
                     ).fetchone()[0] > 0
    c.execute("UPDATE attrs SET value = value || 'x' WHERE rowid = 5")
    c.commit()
    c.close()
    assert first(check(path)).table == "attrs"
