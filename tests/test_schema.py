"""The schema is declared once (store/schema.py): a new store's tables are the declaration, the
analyzer's rows line up with it column by column, and the layering rules of
docs/ARCHITECTURE.md hold in the imports."""

from __future__ import annotations

import ast
import pathlib
import sqlite3

from daemon.analyzer import Analyzer
from daemon.apply import Applier
from hv import synth
from pmem.layout import Record, RecType
from provisor.events import decode
from store import chain, schema

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_new_store_is_the_declaration(tmp_path) -> None:
    Applier(str(tmp_path / "s.db"), "u").close()
    c = sqlite3.connect(tmp_path / "s.db")
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == set(schema.TABLES)
    for t in schema.TABLES.values():
        info = c.execute(f"PRAGMA table_info({t.name})").fetchall()
        assert tuple(r[1] for r in info) == t.cols, t.name
        assert tuple(r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]) == t.pk, t.name
        have = {r[1] for r in c.execute(f"PRAGMA index_list({t.name})")}
        for name, cols in t.indexes:
            assert name in have, name
            got = tuple(r[2] for r in c.execute(f"PRAGMA index_info({name})"))
            assert got == cols, name
    views = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='view'")}
    assert views == set(schema.VIEWS)


def test_analyzer_rows_line_up_with_the_declaration(tmp_path) -> None:
    """Each analyzer row, read back by column name, holds the field of that name."""
    an = Analyzer()
    evs = [decode(p, i + 1) for i, p in enumerate(synth.payloads(400, 3))]
    for ev in evs:
        an.event(ev)
    b = an.take()
    by_seq = {e.seq: e for e in evs}
    cols = schema.EVENTS.cols
    for row in map(schema.event_row, b.events):
        assert len(row) == len(cols)
        r = dict(zip(cols, row, strict=True))
        e = by_seq[r["seq"]]
        assert (r["ts_ns"], r["nr"], r["tgid"], r["pid"], r["comm"], r["ret"], r["payload"]) \
            == (e.ts_ns, e.nr, e.tgid, e.pid, e.comm, e.ret, e.payload)
        assert r["phase"] == ("exit" if e.phase else "entry")
    for p in b.procs.values():
        r = dict(zip(schema.PROCESSES.cols, p.row(), strict=True))
        assert (r["id"], r["tgid"], r["node"], r["exe"], r["uid"]) == (p.id, p.tgid, p.node,
                                                                        p.exe, p.uid)
    for a in b.arts.values():
        r = dict(zip(schema.ARTIFACTS.cols, a.row(), strict=True))
        assert (r["id"], r["kind"], r["ino"], r["node"], r["version"]) == (
            a.id, a.kind, a.ino, a.node, a.version)
    for table, rows in (("versions", b.versions), ("relations", b.relations),
                        ("names", b.names_new), ("attrs", b.attrs)):
        assert rows, table
        assert {len(r) for r in rows} == {len(schema.TABLES[table].cols)}, table
    ids = {v[0] for v in b.versions}
    assert {r[schema.RELATIONS.pos("src")] for r in b.relations} <= ids
    assert chain.EVENT_COLS == cols and chain.RELATION_COLS == schema.RELATIONS.cols


def test_store_rows_read_back_in_declared_order(tmp_path) -> None:
    """What the applier wrote reads back, by the declaration's columns, as the same rows."""
    pls = synth.payloads(300, 5)
    s = Applier(str(tmp_path / "s.db"), "u")
    s.apply([Record(i + 1, RecType.EVENT, 0, p) for i, p in enumerate(pls)])
    procs = list(s.db.rows("processes", "id"))
    assert procs and all(len(r) == len(schema.PROCESSES.cols) for r in procs)
    assert [p.row() for p in sorted(s.an.proc_by_id.values(), key=lambda p: p.id)] == procs
    s.close()


def _imports(pkg: str) -> set[str]:
    out: set[str] = set()
    for f in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
    return out


def test_data_flows_one_way() -> None:
    """store imports neither daemon nor examiner; examiner reaches the daemon only through
    daemon.replay; nothing but hv imports hv."""
    def top(mods: set[str]) -> set[str]:
        return {m.split(".")[0] for m in mods}

    assert not top(_imports("store")) & {"daemon", "examiner", "hv", "recovery"}
    ex = _imports("examiner")
    assert {m for m in ex if m.split(".")[0] == "daemon"} <= {"daemon.replay"}
    assert "hv" not in top(ex)
    for pkg in ("provisor", "pmem", "store", "daemon", "examiner"):
        assert "hv" not in top(_imports(pkg)) - ({"hv"} if pkg == "provisor" else set()), pkg


def test_the_writer_drops_the_indexes_a_store_no_longer_needs(tmp_path) -> None:
    """A store made with the first relations indexes loses them on its writer's next open;
    its rows and the lineage indexes stay."""
    db = str(tmp_path / "s.db")
    Applier(db, "u").close()
    c = sqlite3.connect(db)
    c.execute("CREATE INDEX idx_relations_src_kind ON relations(src, kind)")
    c.execute("CREATE INDEX idx_relations_dst_kind ON relations(dst, kind)")
    c.commit()
    c.close()
    Applier(db, "u").close()
    c = sqlite3.connect(db)
    have = {r[1] for r in c.execute("PRAGMA index_list(relations)")}
    c.close()
    assert not have & set(schema.DROPPED_INDEXES)
    assert {"relations_up", "relations_down"} <= have
