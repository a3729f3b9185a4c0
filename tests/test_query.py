"""Lineage queries on a workload with the cases examiners care about: renamed, replaced,
deleted and re-created files, repeated exec, data through a pipe, outcome-unknown events."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from eventscript import Script

from daemon.apply import Applier
from examiner import query as Q
from provisor.errors import ProvisorError
from provisor.events import FileId

O_WRONLY, O_CREAT, O_TRUNC = 0o1, 0o100, 0o1000
W = O_WRONLY | O_CREAT | O_TRUNC


def workload() -> tuple[Script, dict[str, int]]:
    sc = Script()
    marks: dict[str, int] = {}
    # p10 writes in.txt, then exec's twice (gen, then tool)
    sc.fork(1, 10)
    sc.open(10, "in.txt", W, fd=3, ino=100)
    sc.call(10, "write", (3, 0, 5), (), 5)
    sc.call(10, "close", (3,), (), 0)
    sc.call(10, "execve", (0, 0, 0), ["/bin/gen"], 0, files=[FileId(8, 500, "/bin/gen")])
    sc.call(10, "execve", (0, 0, 0), ["/bin/tool"], 0, files=[FileId(8, 501, "/bin/tool")])
    # in.txt | p21 > out.txt through a pipe
    sc.call(1, "pipe2", (0, 0), (), 0, out_fds=[3, 4])
    sc.fork(1, 20)
    sc.fork(1, 21)
    sc.call(20, "dup2", (4, 1), (), 1)
    sc.open(20, "in.txt", 0, fd=5, ino=100)
    sc.call(20, "read", (5, 0, 10), (), 10)
    sc.call(20, "write", (1, 0, 10), (), 10)
    sc.call(21, "dup2", (3, 0), (), 0)
    sc.open(21, "out.txt", W, fd=5, ino=200)
    sc.call(21, "read", (0, 0, 10), (), 10)
    sc.call(21, "write", (5, 0, 10), (), 10)
    # renamed: out.txt -> final.txt
    marks["rename"] = sc.call(1, "rename", (0, 0), ["out.txt", "final.txt"], 0)[1]
    # replaced: p30 writes final.tmp and renames it over final.txt
    sc.fork(1, 30)
    sc.open(30, "final.txt", 0, fd=3, ino=200)
    sc.call(30, "read", (3, 0, 10), (), 10)
    sc.open(30, "final.tmp", W, fd=4, ino=300)
    sc.call(30, "write", (4, 0, 10), (), 10)
    marks["replace"] = sc.call(30, "rename", (0, 0), ["final.tmp", "final.txt"], 0)[1]
    # deleted and re-created
    marks["unlink"] = sc.call(1, "unlink", (0,), ["in.txt"], 0)[1]
    sc.fork(1, 40)
    sc.open(40, "in.txt", W, fd=3, ino=101)
    sc.call(40, "write", (3, 0, 5), (), 5)
    # outcome unknown: a write whose exit never came
    sc.open(30, "final.txt", O_WRONLY, fd=6, ino=300)
    marks["unknown"] = sc.entry(30, "write", (6, 0, 10), files=[FileId(8, 300, "/w/final.txt")])
    return sc, marks


def drained_ring(directory, name: str, **daemon_kw) -> tuple[str, str]:
    """A ring holding ``workload()``'s records, drained once by the daemon into a store."""
    from daemon.service import Daemon
    from pmem import layout as L
    from pmem import ring

    rpath, dpath = f"{directory}/{name}.ring", f"{directory}/{name}.db"
    ring.create(rpath, L.DATA_OFFSET + 256 * 1024)
    sc, _ = workload()
    with ring.Producer.open(rpath, "fail") as prod:
        for r in sc.records:
            prod.append(r.type, r.payload)
    d = Daemon(rpath, dpath, **daemon_kw)
    d.run(once=True)
    d.close()
    return rpath, dpath


@pytest.fixture
def db(store_db):
    path = store_db
    s = Applier(path, "test-ring")
    sc, marks = workload()
    s.apply(sc.records)
    s.close()
    return path, marks


@pytest.fixture
def conn(db):
    c = Q.connect(db[0])
    yield c
    c.close()


def labels(res: Q.Result) -> set[str]:
    return {d["label"] for d in res.nodes.values()}


def test_ancestors_cross_pipe_rename_and_replace(conn):
    res = Q.lineage(conn, "/w/final.txt", up=True)
    lab = labels(res)
    # final.txt now is the replacement (written as final.tmp), derived from the renamed out.txt,
    # which came through the pipe from the (since deleted) first in.txt
    assert "file /w/final.tmp v1" in lab
    assert "file /w/out.txt v1 (deleted)" in lab
    assert any(x.startswith("pipe ") for x in lab)
    assert "file /w/in.txt v1 (deleted)" in lab
    assert {"process 20 p20 v1", "process 30 p30 v1"} <= lab
    assert "artifact 5" in res.notes[0]  # the name also denoted the replaced file
    kinds = {e["kind"] for e in res.edges}
    assert kinds == {"used", "wasGeneratedBy", "wasDerivedFrom", "wasInformedBy"}
    # every edge points inside the result
    assert all(e["src"] in res.nodes and e["dst"] in res.nodes for e in res.edges)


def test_depth_limits_the_walk(conn):
    full = Q.lineage(conn, "/w/final.txt", up=True)
    one = Q.lineage(conn, "/w/final.txt", up=True, depth=1)
    assert {d["depth"] for d in one.nodes.values()} == {0, 1}
    assert len(one.nodes) < len(full.nodes)
    assert max(d["depth"] for d in full.nodes.values()) >= 4


def test_time_window_prunes_relations(conn, db):
    marks = db[1]
    # only relations up to the rename: the replacement's lineage is cut off
    res = Q.lineage(conn, "artifact:1", up=False, win=Q.Window(None, marks["rename"] * 1000))
    assert not any("final.tmp" in x for x in labels(res))
    assert any("out.txt" in x for x in labels(res))
    full = Q.lineage(conn, "artifact:1", up=False)
    assert any("final.tmp" in x for x in labels(full))


def test_descendants_of_deleted_file_by_past_name(conn):
    # in.txt was deleted and re-created: the path names the new file; artifact:1 the old one
    new = Q.lineage(conn, "/w/in.txt", up=False)
    assert len(new.nodes) == 1 and "artifact 1" in new.notes[0]
    old = Q.lineage(conn, "artifact:1", up=False)
    assert any(x.startswith("pipe ") for x in labels(old))
    assert "process 30 p30 v1" in labels(old)


def test_history_renamed_replaced_deleted_recreated(conn):
    h = Q.history(conn, "/w/final.txt")
    text = "\n".join(h.notes)
    assert "renamed to /w/final.txt" in text and "replaced by artifact:6" in text
    # each file's version made by the rename that gave it the name
    assert [(r["artifact"], r["reason"]) for r in h.rows] == [
        ("artifact:5", "created"), ("artifact:5", "renamed"), ("artifact:6", "created"),
        ("artifact:6", "renamed"), ("?", "OUTCOME UNKNOWN")]
    assert h.rows[-1]["reason"] == "OUTCOME UNKNOWN"  # the pending write to final.txt
    h2 = Q.history(conn, "/w/in.txt")
    notes = "\n".join(h2.notes)
    assert "deleted" in notes and "[seq 54 .. now]" in notes
    assert len(h2.rows) == 2


def test_process_repeated_exec_and_children(conn):
    p = Q.process(conn, "10")
    acts = [(r["action"], r["what"]) for r in p.rows]
    assert ("exec", "/bin/gen") in acts and ("exec", "/bin/tool") in acts
    assert ("executed", "file /bin/gen v1") in acts
    assert any(a == "wrote" and "in.txt" in w for a, w in acts)
    procs = {r["process"] for r in p.rows}
    assert {"process 10 /bin/gen v2", "process 10 /bin/tool v3"} <= procs
    tree = Q.process(conn, "1", depth=2)
    assert sum(1 for r in tree.rows if r["action"] == "spawned") == 5


def test_writers_and_derivation_depth(conn):
    w = Q.writers(conn, "/w/final.txt")
    # and the shell, whose rename made out.txt's version named final.txt
    assert {r["process"] for r in w.rows if r["hop"] == 0} == {
        "process 1 p1 v1", "process 21 p21 v1", "process 21 p21 v2", "process 30 p30 v1"}
    deep = Q.writers(conn, "/w/final.txt", depth=3)
    assert any(r["hop"] == 1 and r["wrote"].startswith("pipe") for r in deep.rows)
    assert any(r["hop"] == 2 and "in.txt" in r["wrote"] for r in deep.rows)


def test_outcome_unknown_is_shown(conn, db):
    seq = db[1]["unknown"]
    for res in (Q.process(conn, "30"), Q.writers(conn, "/w/final.txt"),
                Q.lineage(conn, "/w/final.txt", up=True)):
        assert [u["seq"] for u in res.unknown] == [seq]
        assert any(r.get("seq") == seq and "OUTCOME UNKNOWN" in r.values() for r in res.rows)
    assert "OUTCOME UNKNOWN" in Q.render_dot(Q.process(conn, "30"))
    # not attributed to unrelated processes
    assert Q.process(conn, "40").unknown == []


@pytest.mark.parametrize("target", ["v:3", "a:1", "artifact:1", "process:2", "p:2", "tgid:10"])
def test_target_syntax(conn, target):
    tg = Q.resolve(conn, target)
    assert tg.nodes


@pytest.mark.parametrize("target", ["", "foo", "v:x", "v:99999", "artifact:999", "tgid:77",
                                    "/nope", "123"])
def test_bad_targets_are_one_line_errors(conn, target):
    with pytest.raises(ProvisorError) as e:
        Q.resolve(conn, target)
    assert "\n" not in str(e.value)


def test_time_parsing():
    assert Q.parse_time("1500") == 1500
    assert Q.parse_time("1970-01-01T00:00:01Z") == 10**9
    assert Q.parse_time("1970-01-01T01:00:01+01:00") == 10**9
    assert Q.parse_time("1970-01-01 00:00:00.5") == 5 * 10**8
    with pytest.raises(ProvisorError):
        Q.parse_time("yesterday")
    with pytest.raises(ProvisorError):
        Q.Window(10, 5)


def test_renderers(conn):
    res = Q.lineage(conn, "/w/final.txt", up=True)
    data = json.loads(Q.render_json(res))
    assert len(data["nodes"]) == len(res.nodes) and data["outcome_unknown"]
    dot = Q.render_dot(res)
    assert dot.startswith("digraph") and dot.count("->") >= len(res.edges)
    table = Q.render_table(res)
    assert "OUTCOME UNKNOWN" in table and "file /w/final.tmp v1" in table


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from provisor.cli import main; main()",
                           *args], capture_output=True, text=True)


def test_cli_outputs_and_errors(db, tmp_path):
    path = db[0]
    r = _cli("query", "ancestors", "/w/final.txt", "--db", path, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["query"] == "ancestors"
    r = _cli("query", "history", "/w/in.txt", "--db", path, "--dot")
    assert r.returncode == 0 and r.stdout.startswith("digraph")
    for bad in (["query", "ancestors", "nope", "--db", path],
                ["query", "process", "1", "--db", str(tmp_path / "missing.db")],
                ["query", "writers", "/w/final.txt", "--db", path, "--since", "soon"]):
        r = _cli(*bad)
        assert r.returncode == 2, r
        assert r.stderr.startswith("provisor: error:") and r.stderr.count("\n") == 1
    not_db = tmp_path / "x.db"
    not_db.write_bytes(b"hello" * 100)
    r = _cli("query", "ancestors", "/x", "--db", str(not_db))
    assert r.returncode == 2 and "provisor: error:" in r.stderr


def test_old_database_gets_query_indexes(tmp_path):
    path = str(tmp_path / "old.db")
    Applier(path, "r").close()
    import sqlite3
    c = sqlite3.connect(path)
    c.execute("DROP INDEX relations_up")
    c.commit()
    c.close()
    conn = Q.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "relations_up" in names
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT dst FROM relations WHERE src = 5"))
    assert "COVERING INDEX relations_up" in plan


def test_limit_keeps_the_nearest_nodes_and_counts_all(conn):
    full = Q.lineage(conn, "/w/final.txt", up=True, detail=False)
    few = Q.lineage(conn, "/w/final.txt", up=True, detail=False, limit=3)
    assert len(few.nodes) == 3 and len(full.nodes) > 3
    assert few.notes[0] == full.notes[0]  # the whole closure is still counted
    assert "nearest 3 nodes" in few.notes[1]
    assert max(d["depth"] for d in few.nodes.values()) <= 1
    assert all(e["src"] in few.nodes and e["dst"] in few.nodes for e in few.edges)
    detailed = Q.lineage(conn, "/w/final.txt", up=True, detail=True, limit=3)
    assert set(detailed.nodes) == set(few.nodes)
    # the fast path (table) and the detailed one (JSON) agree on the graph
    assert {(e["src"], e["dst"], e["kind"]) for e in full.edges} == {
        (e["src"], e["dst"], e["kind"]) for e in Q.lineage(conn, "/w/final.txt", up=True).edges}


def test_fast_breadth_first_depths_match_a_real_bfs(tmp_path):
    """The table path reads depths off the CTE's FIFO order; the JSON path does a real BFS."""
    from hv.synth import Guest
    from pmem.layout import Record, RecType
    from provisor.events import encode

    path = str(tmp_path / "s.db")
    s = Applier(path, "r")
    evs = Guest(11).events(6000)
    s.apply([Record(e.seq, RecType.EVENT, 0, encode(e)) for e in evs])
    s.close()
    c = Q.connect(path)
    files = [r[0] for r in c.execute("SELECT id FROM versions WHERE kind='file' ORDER BY id")]
    for v in files[:: max(1, len(files) // 15)]:
        for up in (True, False):
            fast = Q.lineage(c, f"v:{v}", up, detail=False)
            slow = Q.lineage(c, f"v:{v}", up, detail=True)
            assert {n: d["depth"] for n, d in fast.nodes.items()} == {
                n: d["depth"] for n, d in slow.nodes.items()}
    c.close()
