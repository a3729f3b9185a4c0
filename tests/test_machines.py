"""--machine on query, export, verify and status: a set of stores (a fleet's directory of
SQLite files, a PostgreSQL database of several namespaces) is read machine by machine, each
answer tagged with its machine, and no graph crosses from one machine into another."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import sys

import prov.model
import pytest
from eventscript import Script
from test_query import workload

from daemon.apply import Applier
from examiner import export as X
from examiner import stores
from examiner.query import QueryError
from provisor.machine import is_postgres_url

CLI = [sys.executable, "-c", "from provisor.cli import main; main()"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # rdflib, inside prov


def only_build() -> Script:
    """A second guest's own work: /w/final.txt never exists there, /b/tool.out does."""
    sc = Script()
    sc.fork(1, 10)
    sc.open(10, "/b/tool.out", 0o1101, fd=3, ino=900)
    sc.call(10, "write", (3, 0, 5), (), 5)
    sc.call(10, "close", (3,), (), 0)
    return sc


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet_db(request, tmp_path) -> str:
    """Three machines' stores: web and build ran the same workload (the same PIDs, paths and
    inodes), tools ran another."""
    if request.param == "sqlite":
        where = str(tmp_path / "fleet")
        (tmp_path / "fleet").mkdir()
        at = {m: f"{where}/{m}.db" for m in ("web", "build", "tools")}
    else:
        where = request.getfixturevalue("pg_url")
        at = dict.fromkeys(("web", "build", "tools"), where)
    for m in ("web", "build"):
        s = Applier(at[m], f"ring-{m}", machine=m)
        s.apply(workload()[0].records)
        s.close()
    s = Applier(at["tools"], "ring-tools", machine="tools")
    s.apply(only_build().records)
    s.close()
    return where


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True)


def shape(res: dict) -> tuple:
    """A graph with its ids and the machine left out: what two identical guests share."""
    label = {n["id"]: n["label"] for n in res["nodes"]}
    return (sorted(label.values()),
            sorted((label[e["src"]], e["kind"], label[e["dst"]]) for e in res["edges"]))


def test_members_of_each_kind_of_set(fleet_db):
    assert sorted(m.machine for m in stores.members(fleet_db)) == ["build", "tools", "web"]
    (web,) = stores.members(fleet_db, "web")
    assert web.machine == "web"
    with pytest.raises(QueryError, match=r"no store of machine nope \(there: .*web") as e:
        stores.members(fleet_db, "nope")
    assert "\n" not in str(e.value)
    with pytest.raises(QueryError, match="machine name"):
        stores.members(fleet_db, "Bad Name!")


def test_query_every_machine_each_graph_its_own(fleet_db):
    r = cli("query", "ancestors", "/w/final.txt", "--db", fleet_db, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # tools never had the file: left out, and said so; web and build answer apart
    assert [x["machine"] for x in out] == ["build", "web"]
    assert any("machine tools:" in n for n in out[0]["notes"])
    assert shape(out[0]) == shape(out[1]) and len(out[0]["nodes"]) > 8
    # the same PIDs on both guests are two processes, one in each graph, never joined
    for x in out:
        assert all(e["src"] in {n["id"] for n in x["nodes"]} for e in x["edges"])
    one = json.loads(cli("query", "ancestors", "/w/final.txt", "--db", fleet_db, "--machine",
                         "web", "--json").stdout)
    assert one["machine"] == "web" and shape(one) == shape(out[1])
    # the table: a section per machine; DOT: a cluster per machine, ids kept apart
    t = cli("query", "ancestors", "/w/final.txt", "--db", fleet_db).stdout
    assert "== machine build ==" in t and "== machine web ==" in t
    dot = cli("query", "ancestors", "/w/final.txt", "--db", fleet_db, "--dot").stdout
    assert "subgraph cluster_web" in dot and "subgraph cluster_build" in dot
    assert " web_v" in dot and " build_v" in dot
    # a target only one machine has
    b = json.loads(cli("query", "history", "/b/tool.out", "--db", fleet_db, "--json").stdout)
    assert b["machine"] == "tools" and any(r.get("reason") == "created" for r in b["rows"])


def test_query_errors_are_one_line(fleet_db):
    for bad in (["query", "ancestors", "/nowhere", "--db", fleet_db],
                ["query", "ancestors", "/w/final.txt", "--db", fleet_db, "--machine", "nope"]):
        r = cli(*bad)
        assert r.returncode == 2 and r.stderr.startswith("provisor: error:"), r.stderr
        assert r.stderr.count("\n") == 1


def test_export_of_several_machines_is_one_document_with_qualified_ids(fleet_db):
    out = io.StringIO()
    parts = [(m.machine, m.connect()) for m in stores.members(fleet_db)]
    try:
        counts = X.export_set(parts, out, "prov-json")
        single = {}
        for m, c in parts:
            single[m] = X.export(c, io.StringIO(), "prov-json")
    finally:
        for _, c in parts:
            c.close()
    doc = prov.model.ProvDocument.deserialize(content=out.getvalue(), format="json")
    ids = [str(r.identifier) for r in doc.get_records() if r.identifier is not None]
    assert len(ids) == len(set(ids))  # no record of one machine taken for another's
    for m in ("web", "build", "tools"):
        mine = [i for i in ids if i.startswith(f"provisor:{m}.v")]
        assert len(mine) == single[m]["entity"] + single[m]["activity"]
    assert counts["used"] == sum(s["used"] for s in single.values())
    r = cli("export", "--db", fleet_db, "--machine", "web", "--format", "prov-n", "-o", "-")
    assert r.returncode == 0 and "provisor:v" in r.stdout and "provisor:web." not in r.stdout


def test_verify_every_machine_and_name_the_tampered_one(fleet_db):
    r = cli("verify", "--db", fleet_db)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("OK:") == 3 and "== machine web ==" in r.stdout
    # someone with write access alters one relation of build's store
    if is_postgres_url(fleet_db):
        from store import postgres

        c = postgres.connect(fleet_db)
        c.execute("UPDATE provisor_build.relations SET dst = dst + 1 WHERE id = 3")
        c.commit()
    else:
        c = sqlite3.connect(f"{fleet_db}/build.db")
        c.execute("UPDATE relations SET dst = dst + 1 WHERE id = 3")
        c.commit()
    c.close()
    r = cli("verify", "--db", fleet_db, "--json")
    assert r.returncode == 1
    got = {x["machine"]: x["ok"] for x in json.loads(r.stdout)}
    assert got == {"build": False, "tools": True, "web": True}
    r = cli("verify", "--db", fleet_db, "--machine", "web")
    assert r.returncode == 0 and r.stdout.startswith("OK:")
    r = cli("verify", "--db", fleet_db, "--ring", "/dev/null")
    assert r.returncode == 2 and "--machine" in r.stderr


def test_status_of_one_machine(fleet_db):
    if not is_postgres_url(fleet_db):
        fleet_db = f"{fleet_db}/web.db"
    r = cli("status", "--db", fleet_db, "--machine", "web", "--json", "--ring", "/nonexistent")
    assert r.returncode == 2  # a --ring given must exist
    r = cli("status", "--db", fleet_db, "--machine", "web", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)["db"]
    assert d["machine"] == "web" and d["applied_seq"] == workload()[0].seq
    assert d["events"] > 0


def test_dot_ids_of_a_machine_named_from_a_digit_are_dot_ids():
    """A machine name may start with a digit; a DOT id may not: query and export prefix the
    same way (``_9lab_v1``), so both graphs parse."""
    from examiner import query as Q

    nodes = {1: {"label": "file /a v1", "time": "t", "kind": "file", "depth": 0,
                 "object_id": 1}}
    res = [Q.Result("ancestors", "/a", [], nodes=nodes, machine=m) for m in ("9lab", "web")]
    dot = Q.render_many(res, "dot")
    ids = re.findall(r"^\s+(\S+) \[label=", dot, re.M)
    assert ids == ["_9lab_v1", "web_v1"], dot
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", i) for i in ids)
    assert "subgraph cluster__9lab {" in dot and "subgraph cluster_web {" in dot
    assert Q.dot_prefix("9lab") == Q.machine_tag("9lab").replace(".", "_")
