"""PROV export: every format reads back with prov.read with the store's counts; PROV-N and
PROV-JSON round-trip to the same document; slices (chunks) splice into one document."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter

import prov
import pytest
from prov.model import (
    ProvActivity,
    ProvAgent,
    ProvAssociation,
    ProvCommunication,
    ProvDerivation,
    ProvEntity,
    ProvGeneration,
    ProvInvalidation,
    ProvUsage,
)
from test_query import workload

from daemon.apply import Applier
from examiner import export as X
from examiner import query as Q
from pmem.layout import Record, RecType
from provisor.errors import ProvisorError
from provisor.events import encode

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # rdflib, inside prov
READ_FMT = {"prov-json": ("json", {}), "prov-n": ("provn", {}), "prov-xml": ("xml", {}),
            "rdf": ("rdf", {"rdf_format": "turtle"})}
TYPES = {ProvUsage: "used", ProvGeneration: "wasGeneratedBy", ProvCommunication: "wasInformedBy",
         ProvDerivation: "wasDerivedFrom", ProvActivity: "activity", ProvEntity: "entity",
         ProvAssociation: "wasAssociatedWith", ProvAgent: "agent",
         ProvInvalidation: "wasInvalidatedBy"}


@pytest.fixture(scope="module")
def db(module_store_db):
    """The query workload, then a synthetic guest's stream: pipes, execs, renames, crashes."""
    from hv.synth import Guest

    path = module_store_db
    s = Applier(path, "test-ring")
    sc, _ = workload()
    s.apply(sc.records)
    base = sc.seq
    evs = Guest(3).events(1500, start_seq=base + 1, crash_tail=2)
    s.apply([Record(e.seq, RecType.EVENT, 0, encode(e)) for e in evs])
    s.close()
    return path


@pytest.fixture
def conn(db):
    c = Q.connect(db)
    yield c
    c.close()


def store_counts(conn, lo: int = -Q.NO_LIMIT, hi: int = Q.NO_LIMIT) -> Counter:
    q = conn.execute
    out: Counter = Counter(dict(q("SELECT kind, count(*) FROM relations WHERE ts_ns BETWEEN ? "
                                  "AND ? GROUP BY kind", (lo, hi)).fetchall()))
    if lo == -Q.NO_LIMIT and hi == Q.NO_LIMIT:
        out["activity"] = q("SELECT count(*) FROM versions WHERE kind='process'").fetchone()[0]
        out["entity"] = q("SELECT count(*) FROM versions WHERE kind!='process'").fetchone()[0]
        out["wasAssociatedWith"] = out["activity"]
        # one agent per uid, and the machine/ring the records came from
        out["agent"] = q("SELECT count(DISTINCT uid) FROM processes").fetchone()[0] + 1
    # an artifact's last name removed (the analyzer's attrs): a PROV invalidation
    out["wasInvalidatedBy"] = q("SELECT count(*) FROM attrs a JOIN events e ON e.seq = a.seq "
                                "WHERE a.key = 'invalidated_by' AND e.ts_ns BETWEEN ? AND ?",
                                (lo, hi)).fetchone()[0]
    return out


def run_export(conn, fmt: str, **kw) -> tuple[str, dict]:
    buf = io.StringIO()
    counts = X.export(conn, buf, fmt, **kw)
    return buf.getvalue(), counts


def read(text: str, fmt: str) -> prov.model.ProvDocument:
    f, kw = READ_FMT[fmt]
    return prov.read(io.StringIO(text), format=f, **kw)


def doc_counts(doc) -> Counter:
    return Counter(TYPES[type(r)] for r in doc.get_records())


@pytest.mark.parametrize("fmt", ["prov-json", "prov-n", "prov-xml", "rdf"])
def test_reads_back_with_the_store_counts(conn, fmt):
    if fmt == "prov-xml":
        pytest.importorskip("lxml")
    if fmt == "rdf":
        pytest.importorskip("rdflib")
    text, counts = run_export(conn, fmt, chunk=97)  # many slices
    expect = store_counts(conn)
    assert expect["used"] and expect["wasDerivedFrom"] and expect["wasInformedBy"]
    got = doc_counts(read(text, fmt))
    assert got == expect
    assert {k: v for k, v in counts.items()} == {k: expect[k] for k in counts}


def test_provn_and_provjson_round_trip(conn):
    n_text, _ = run_export(conn, "prov-n", chunk=50)
    j_text, _ = run_export(conn, "prov-json", chunk=50)
    doc_n, doc_j = read(n_text, "prov-n"), read(j_text, "prov-json")
    assert doc_n == doc_j  # one graph, whichever format carried it
    again_n = read(doc_n.serialize(format="provn"), "prov-n")
    again_j = read(doc_j.serialize(format="json"), "prov-json")
    assert again_n == doc_n and again_j == doc_j
    # chunking does not change the document
    whole, _ = run_export(conn, "prov-json", chunk=10**9)
    assert read(whole, "prov-json") == doc_j


def test_times_are_aware_and_sequence_numbers_attributes(conn):
    doc = read(run_export(conn, "prov-json")[0], "prov-json")
    q = conn.execute
    rel = {r[0]: r[1:] for r in q("SELECT id, entry_seq, exit_seq, ts_ns FROM relations")}
    usages = list(doc.get_records(ProvUsage))
    assert usages
    for u in usages:
        t = u.get_attribute("prov:time")
        assert t and next(iter(t)).tzinfo is not None
        rid = int(u.identifier.localpart[1:])
        assert next(iter(u.get_attribute("provisor:exit_seq"))) == rel[rid][1]
        assert next(iter(u.get_attribute("provisor:ts_ns"))) == rel[rid][2]
    for a in doc.get_records(ProvActivity):
        assert a.get_startTime().tzinfo is not None
        assert a.get_attribute("provisor:seq")


def test_window_and_object_selection(conn):
    lo, hi = conn.execute("SELECT min(ts_ns), max(ts_ns) FROM relations").fetchone()
    mid = (lo + hi) // 2
    text, counts = run_export(conn, "prov-json", win=Q.Window(None, mid))
    got = doc_counts(read(text, "prov-json"))
    expect = store_counts(conn, hi=mid)
    for kind in X.RELATION_KINDS:
        assert got[kind] == expect[kind] == counts[kind]
    assert got["used"] < store_counts(conn)["used"]
    # one object's lineage: only relations among its ancestors and descendants
    text, counts = run_export(conn, "prov-n", target="/w/final.txt")
    doc = read(text, "prov-n")
    lin = Q.lineage(conn, "/w/final.txt", up=True, all_versions=True)
    ids = {f"v{n}" for n in lin.nodes}
    ents = {r.identifier.localpart for r in doc.get_records(ProvEntity)}
    now = {f"v{n}" for n in Q.resolve(conn, "/w/final.txt").nodes}
    assert now and now <= ents and ents <= ids | {f"v{n}" for n in Q.lineage(
        conn, "/w/final.txt", up=False, all_versions=True).nodes}
    assert doc_counts(doc)["wasDerivedFrom"] == counts["wasDerivedFrom"] > 0


def test_dot_and_errors(conn):
    text, counts = run_export(conn, "dot")
    assert text.startswith("digraph") and text.count(" -> ") == sum(
        counts[k] for k in (*X.RELATION_KINDS, "wasInvalidatedBy"))
    assert counts["wasInvalidatedBy"] > 0
    with pytest.raises(ProvisorError):
        run_export(conn, "prov-q")
    with pytest.raises(ProvisorError):
        run_export(conn, "prov-n", target="v:bogus")


def test_cli(db, tmp_path):
    out = tmp_path / "g.provn"
    r = subprocess.run([sys.executable, "-c", "from provisor.cli import main; main()", "export",
                        "--db", db, "--format", "prov-n", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "exported" in r.stderr and out.read_text().startswith("document")
    r = subprocess.run([sys.executable, "-c", "from provisor.cli import main; main()", "export",
                        "--db", db, "--object", "/nope", "-o", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()
