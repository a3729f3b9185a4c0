"""The export says what the store knows (issue 14), read with nothing but ``prov``.

A workload ``echo > src; cat src > copy; mv copy renamed; ln renamed hard`` is stored through
the real daemon (ring -> ``Daemon`` -> ``Applier.apply``); its PROV-JSON and PROV-N exports are
read back with ``prov.read`` (the installed prov, 3.2.3, reads PROV-N too: no test-side
parser is needed) and asked, by the current path alone, where the file came from. The
events carry the credentials a producer reads (``Event.cred``); every attribute checked here
is the analyzer's own.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections import deque

import prov
import pytest
from eventscript import Script
from prov.model import (
    ProvActivity,
    ProvAgent,
    ProvCommunication,
    ProvDerivation,
    ProvEntity,
    ProvGeneration,
    ProvRelation,
    ProvUsage,
)

from examiner import export as X
from examiner import query as Q
from provisor.events import FileId

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
O_WRONLY, O_CREAT, O_TRUNC = 0o1, 0o100, 0o1000
W = O_WRONLY | O_CREAT | O_TRUNC
SRC, COPY, RENAMED, HARD = "/stage/src.txt", "/stage/copy.txt", "/stage/renamed.txt", \
    "/stage/hard.txt"
FORMATS = {"prov-json": "json", "prov-n": "provn"}
ALL_FORMATS = {**FORMATS, "prov-xml": "xml", "rdf": "rdf"}


def workload() -> Script:
    sc = Script()
    sc.cwd[1] = "/stage"
    sc.cred[1] = sc.cred[50] = (0,) * 8  # root; cat runs as 1000 (set-id binary, say)
    sc.cred[51] = (1000,) * 8
    sc.fork(1, 50)  # the shell
    sc.open(50, SRC, W, fd=3, ino=10)  # echo hello > src.txt
    sc.call(50, "write", (3, 0, 6), (), 6)
    sc.call(50, "close", (3,), (), 0)
    sc.fork(50, 51)  # cat src.txt > copy.txt
    sc.open(51, COPY, W, fd=3, ino=11)
    sc.call(51, "dup2", (3, 1), (), 1)
    sc.call(51, "close", (3,), (), 0)
    sc.call(51, "execve", (0, 0, 0), ["/bin/cat"], 0, files=[FileId(8, 500, "/bin/cat")],
            argv=["cat", "src.txt"])
    sc.open(51, "src.txt", 0, fd=3, ino=10)
    sc.call(51, "read", (3, 0, 4096), (), 6)
    sc.call(51, "write", (1, 0, 6), (), 6)
    sc.entry(51, "exit_group", (0,))
    sc.fork(50, 52)  # mv copy.txt renamed.txt
    sc.call(52, "execve", (0, 0, 0), ["/bin/mv"], 0, files=[FileId(8, 501, "/bin/mv")],
            argv=["mv", "copy.txt", "renamed.txt"])
    sc.call(52, "rename", (0, 0), ["copy.txt", "renamed.txt"], 0)
    sc.fork(50, 53)  # ln renamed.txt hard.txt, then a write whose exit never came
    sc.call(53, "link", (0, 0), ["renamed.txt", "hard.txt"], 0)
    sc.open(53, "/stage/other.txt", W, fd=3, ino=12)
    sc.entry(53, "write", (3, 0, 5), files=[FileId(8, 12, "/stage/other.txt")])
    return sc


@pytest.fixture(scope="module")
def store(tmp_path_factory, module_store_db):
    from daemon.service import Daemon
    from pmem import layout as L
    from pmem import ring

    d = tmp_path_factory.mktemp("where")
    rpath, dpath = f"{d}/w.ring", module_store_db
    ring.create(rpath, L.DATA_OFFSET + 256 * 1024)
    with ring.Producer.open(rpath, "fail") as prod:
        for r in workload().records:
            prod.append(r.type, r.payload)
    dm = Daemon(rpath, dpath, machine={"host": "hv-test", "guest_kernel": "6.1.0-test"})
    uuid = dm.consumer.header.uuid_str
    dm.run(once=True)
    dm.close()
    return dpath, uuid


def exported(db: str, fmt: str) -> prov.model.ProvDocument:
    conn = Q.connect(db)
    try:
        buf = io.StringIO()
        X.export(conn, buf, fmt, chunk=3)  # many slices
    finally:
        conn.close()
    if fmt == "prov-xml":
        pytest.importorskip("lxml")
    kw = {"rdf_format": "turtle"} if fmt == "rdf" else {}
    return prov.read(io.StringIO(buf.getvalue()), format=ALL_FORMATS[fmt], **kw)


def one(rec, attr: str):
    vals = rec.get_attribute(attr)
    assert len(vals) == 1, (rec, attr, vals)
    return next(iter(vals))


def causes(doc) -> dict:
    """Effect -> its causes, over the four relations (each read by its formal arguments)."""
    up: dict = {}
    for r in doc.get_records(ProvRelation):
        if isinstance(r, ProvDerivation | ProvGeneration | ProvUsage | ProvCommunication):
            up.setdefault(r.args[0], []).append((type(r).__name__, r.args[1]))
    return up


def where_from(doc, path: str) -> tuple[ProvEntity, dict]:
    """The entity the path names now (the latest version carrying it) and everything it came
    from, by identifier: what a PROV consumer does, knowing only the path."""
    named = [e for e in doc.get_records(ProvEntity) if path in e.get_attribute("provisor:path")]
    assert named, f"no entity carries {path}"
    start = max(named, key=lambda e: one(e, "provisor:seq"))
    up = causes(doc)
    seen, todo = {start.identifier}, deque([start.identifier])
    while todo:
        for _kind, cause in up.get(todo.popleft(), ()):
            if cause not in seen:
                seen.add(cause)
                todo.append(cause)
    recs = {r.identifier: r for r in doc.get_records(ProvEntity)}
    recs.update({r.identifier: r for r in doc.get_records(ProvActivity)})
    return start, {i: recs[i] for i in seen}


def exes(nodes: dict) -> set[str]:
    return {x for r in nodes.values() if isinstance(r, ProvActivity)
            for x in r.get_attribute("provisor:exe")}


def paths(nodes: dict) -> set[str]:
    return {x for r in nodes.values() if isinstance(r, ProvEntity)
            for x in r.get_attribute("provisor:path")}


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_where_did_this_file_come_from(store, fmt):
    doc = exported(store[0], fmt)
    start, lineage = where_from(doc, RENAMED)
    assert HARD in start.get_attribute("provisor:path")  # a link leads to the same artifact
    assert SRC in paths(lineage)  # the original source file
    assert "/bin/cat" in exes(lineage)  # and the process that copied it
    src = [r for r in lineage.values() if SRC in r.get_attribute("provisor:path")]
    assert {one(r, "provisor:reason") for r in src} == {"created"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_rename_is_a_version_by_the_renaming_process(store, fmt):
    doc = exported(store[0], fmt)
    start, lineage = where_from(doc, RENAMED)
    assert "/bin/mv" in exes(lineage)
    renamed = [e for e in lineage.values() if isinstance(e, ProvEntity)
               and one(e, "provisor:reason") == "renamed"]
    assert renamed and RENAMED in renamed[0].get_attribute("provisor:path")
    assert COPY not in renamed[0].get_attribute("provisor:path")
    older = [c for k, c in causes(doc)[renamed[0].identifier] if k == "ProvDerivation"]
    assert older and COPY in lineage[older[0]].get_attribute("provisor:path")


@pytest.mark.parametrize("fmt", FORMATS)
def test_names_per_version(store, fmt):
    """Each version carries the names of its life (contract "Names per version"): with
    renamed/linked versions, each name on its own version; before them, on the one."""
    doc = exported(store[0], fmt)
    conn = Q.connect(store[0])
    try:
        ver = conn.execute("SELECT v.id, v.reason FROM versions v JOIN artifacts a ON "
                           "a.id = v.object_id AND v.kind = a.kind WHERE a.ino = 11 "
                           "ORDER BY v.version").fetchall()
    finally:
        conn.close()
    got = {}
    for vid, _reason in ver:
        rec = next(iter(doc.get_record(f"provisor:v{vid}")))
        got[vid] = set(rec.get_attribute("provisor:path"))
    every = set().union(*got.values())
    assert every == {COPY, RENAMED, HARD}
    assert [r for _v, r in ver] == ["created", "renamed", "linked"]
    assert [got[v] for v, _r in ver] == [{COPY}, {RENAMED}, {RENAMED, HARD}]


@pytest.mark.parametrize("fmt", FORMATS)
def test_attrs_credentials_argv_and_unknown(store, fmt):
    doc = exported(store[0], fmt)
    acts = list(doc.get_records(ProvActivity))
    cat = [a for a in acts if a.get_attribute("provisor:exe") == {"/bin/cat"}]
    assert cat
    for a in cat:  # own rows on the execve version, inherited by any later one
        assert one(a, "provisor:uid") == 1000 and one(a, "provisor:egid") == 1000
    ex = [a for a in cat if one(a, "provisor:reason") == "execve"][0]
    assert json.loads(one(ex, "provisor:argv")) == ["cat", "src.txt"]  # a JSON list, in order
    assert one(ex, "provisor:exit_status") == 0
    # the uid agent of each activity is its own credentials' uid
    assoc = {r.args[0]: r.args[1] for r in doc.get_records(ProvRelation)
             if type(r).__name__ == "ProvAssociation"}
    assert assoc[ex.identifier].localpart == "uid1000"
    shell = [a for a in acts if one(a, "provisor:tgid") == 50]
    assert shell and all(one(a, "provisor:gid") == 0 for a in shell)
    assert {a.localpart for a in assoc.values()} == {"uid0", "uid1000"}
    # the outcome-unknown write: a mark on p53's activity, never a relation
    marked = [a for a in acts if a.get_attribute("provisor:outcome_unknown")]
    assert [one(a, "provisor:tgid") for a in marked] == [53]
    text = one(marked[0], "provisor:outcome_unknown")
    assert "write(" in text and "seq " in text
    src = [e for e in doc.get_records(ProvEntity) if SRC in e.get_attribute("provisor:path")]
    assert one(src[0], "provisor:mode") == "0644"


@pytest.mark.parametrize("fmt", FORMATS)
def test_machine_and_ring(store, fmt):
    db, uuid = store
    doc = exported(db, fmt)
    agents = {a.identifier: a for a in doc.get_records(ProvAgent)}
    m = [a for a in agents.values() if a.get_attribute("prov:type") and
         next(iter(a.get_attribute("prov:type"))).localpart == "machine"]
    assert len(m) == 1
    m = m[0]
    assert one(m, "provisor:ring_uuid") == uuid
    assert one(m, "provisor:host") == "hv-test"
    assert one(m, "provisor:guest_kernel") == "6.1.0-test"
    assert isinstance(one(m, "provisor:ring_created_ns"), int)
    for r in list(doc.get_records(ProvActivity)) + list(doc.get_records(ProvEntity)):
        assert one(r, "provisor:machine") == m.identifier


def test_machine_written_once_and_not_by_recovery(tmp_path):
    from daemon.service import Daemon
    from pmem import layout as L
    from pmem import ring

    rpath, dpath = str(tmp_path / "r.ring"), str(tmp_path / "r.db")
    ring.create(rpath, L.DATA_OFFSET + 64 * 1024)
    Daemon(rpath, dpath).close()  # recovery's way: no machine
    conn = sqlite3.connect(dpath)
    assert conn.execute("SELECT value FROM meta WHERE key='machine'").fetchone() is None
    conn.close()
    for host in ("first", "second"):
        Daemon(rpath, dpath, machine={"host": host}).close()
    c = Q.connect(dpath)
    info = X.machine(c)
    c.close()
    assert info["host"] == "first" and info["ring_uuid"]
