"""Lineage queries over the provenance store: what an examiner asks of it.

Every answer is a :class:`Result` (nodes, edges, table rows, outcome-unknown events) so that the
CLI can print it as a table, JSON or Graphviz DOT without knowing the query. Walks are recursive
CTEs over the covering indexes ``relations_walk_up`` / ``relations_walk_down`` (daemon/apply.py and store/sqlite.py),
so a step reads only the index. All edges point from effect to cause (used: process -> artifact,
wasGeneratedBy: artifact -> process, wasInformedBy: newer/child -> older/parent, wasDerivedFrom:
artifact -> artifact), so *ancestors* follow ``src -> dst`` and *descendants* ``dst -> src``.

Guest strings (paths, comms, exes) are guest text (provisor/guesttext.py) in the store and so in
every result: escaped, single-line, safe to print. A typed path is matched as guest text, so a
name with bytes that are not printable UTF-8 is typed escaped (``/root/n\\xff\\x01m``); a typed
path is canonicalised first (``guesttext.canonical``), so raw bytes (``$'/root/n\\xff'``) match too.

TARGET syntax (see :func:`resolve`): an absolute path (current or past name: the artifact it
names now, else the one it named last), or ``v:ID`` (one version node), ``artifact:ID`` /
``a:ID``, ``process:ID`` / ``p:ID`` (object ids, as shown in query output), ``tgid:N`` (the last
process with that thread-group id).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from bisect import bisect_left, bisect_right
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from provisor.errors import ProvisorError
from provisor.events import EventDecodeError, decode
from provisor.guestpath import normpath
from provisor.guesttext import canonical
from store import postgres, reader, schema, sqlite

# the covering indexes the lineage walks read (store/schema), added to an older store on open
_QUERY_INDEXES = tuple(n for n, _ in schema.RELATIONS.indexes if n.startswith("relations_"))

NO_LIMIT = 1 << 62
EXPORT_FORMATS = ("prov-json", "prov-n", "prov-xml", "rdf", "dot")  # examiner/export.py
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() also takes '²'
_ID = re.compile(r"[0-9]{1,19}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_MIN_NS = 10**17  # timestamps below this are nanoseconds since boot, not since 1970
TARGET_HELP = ("an absolute path, or an id: v:VERSION, artifact:ID (a:ID), process:ID (p:ID), "
               "tgid:N")
PATH_HELP = ("A path is matched as guest text: type a name's bytes that are not printable UTF-8 "
             "(and a backslash) escaped, as queries print them, e.g. '/root/n\\xff\\x01m' "
             "(raw bytes match too; docs/FORMAT.md, \"Guest strings\").")


class QueryError(ProvisorError):
    pass


# -- opening and input ---------------------------------------------------------------------
def connect(path: str, machine: str | None = None) -> sqlite3.Connection:
    """Open a provisor DB for reading (store/sqlite's checks); add missing query indexes
    first when it is writable (an older DB), so walks never fall back to a table scan. A
    postgresql:// URL opens ``machine``'s namespace read-only (store/reader.PgConn: the same
    SQL, translated)."""
    if not path:
        raise QueryError("no database given (--db, or [daemon] db in the config)")
    if postgres.is_url(path):
        try:
            return reader.PgConn(path, machine)  # type: ignore[return-value]
        except ProvisorError as e:
            raise QueryError(str(e)) from None
    if os.path.isdir(path):
        raise QueryError(f"{path}: is a directory")
    if not os.path.lexists(path):
        raise QueryError(f"{path}: no such database")
    writable = os.access(path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(path)),
                                                      os.W_OK)
    # never a symlink or another user's DB (or -wal/-shm/-journal beside it), before SQLite
    # opens them by name
    conn, exists = sqlite.open_conn(path, readonly=not writable, error=QueryError)
    try:
        if not exists:
            raise QueryError(f"{path}: no such database")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: a deep walk revisits index pages
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        if writable and any(name not in have for name in _QUERY_INDEXES):
            sqlite.migrate(conn)
        conn.execute("PRAGMA query_only=1")
    except sqlite3.Error as e:
        conn.close()
        raise QueryError(f"{path}: {e}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def parse_time(text: str | int | None) -> int | None:
    """ISO-8601 (naive means UTC) or an integer of nanoseconds -> nanoseconds. Times must fit
    a signed 64-bit count of nanoseconds since 1970 (as the store keeps them): 1677 to 2262."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        ns = text
    else:
        t = text.strip()
        if _INTEGER.fullmatch(t):
            ns = int(t)
        else:
            try:
                dt = datetime.fromisoformat(t)
            except ValueError:
                raise QueryError(f"not a timestamp: {text!r} (use ISO-8601 such as "
                                 "2026-11-23T08:00:00Z, or nanoseconds)") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            d = dt - _EPOCH  # exact, and no overflow where a UTC conversion would leave year 1
            ns = (d.days * 86400 + d.seconds) * 10**9 + d.microseconds * 1000
    if not -(1 << 63) <= ns < 1 << 63:
        raise QueryError(f"timestamp out of range: {text!r} (times are 64-bit nanoseconds "
                         "since 1970: 1677-09-21 to 2262-04-11)")
    return ns


def fmt_ts(ns: int | None) -> str:
    """Wall-clock ISO time for epoch timestamps, seconds since boot for small ones."""
    if ns is None:
        return "-"
    if ns >= EPOCH_MIN_NS:
        return f"{_iso_second(ns // 10**9)}.{ns % 10**9 // 1000:06d}Z"
    return f"+{ns / 1e9:.6f}s"


@lru_cache(maxsize=4096)
def _iso_second(sec: int) -> str:
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# -- results -------------------------------------------------------------------------------
@dataclass
class Result:
    query: str
    target: str
    columns: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    nodes: dict[int, dict] = field(default_factory=dict)
    edges: list[dict] = field(default_factory=list)
    unknown: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: str = ""  # the guest whose store answered (a graph never spans two)

    def to_json(self) -> dict:
        out = {"query": self.query, "target": self.target, "notes": self.notes,
               "rows": self.rows, "nodes": list(self.nodes.values()), "edges": self.edges,
               "outcome_unknown": self.unknown}
        return {"machine": self.machine, **out} if self.machine else out


@dataclass
class Target:
    text: str
    nodes: list[int]
    desc: str
    artifacts: list[int] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)


class Window:
    """A --since/--until window over timestamps in nanoseconds (inclusive)."""

    def __init__(self, since: int | None = None, until: int | None = None) -> None:
        self.lo = since if since is not None else -NO_LIMIT
        self.hi = until if until is not None else NO_LIMIT
        if self.lo > self.hi:
            raise QueryError("--since is after --until")

    def __contains__(self, ns: int | None) -> bool:
        return ns is None or self.lo <= ns <= self.hi


def _ints(xs: Iterable[int]) -> str:
    return json.dumps(sorted(set(xs)))


# -- targets -------------------------------------------------------------------------------
def typed(text: str | None) -> str:
    """A TARGET as typed -> guest text: escapes as printed by queries, or raw bytes (a
    ``sys.argv`` string holds undecodable bytes as surrogates), match the stored name. A path
    keeps trailing blanks (a guest's name may end in a space); an id loses them."""
    t = (text or "").lstrip()
    try:
        return canonical(t if t.startswith("/") else t.rstrip())
    except ValueError:
        raise QueryError(f"bad target {text!r}: not text") from None


def resolve(conn: sqlite3.Connection, text: str, all_versions: bool = False) -> Target:
    """TARGET -> start nodes. A path names an artifact through ``names`` (bound now, else the
    last binding); ``all_versions`` starts from every version of the object, not the latest."""
    q = conn.execute
    t = typed(text)
    prefix, _, num = t.partition(":")
    if t.startswith("/"):
        path = normpath(t)
        row = q("SELECT artifact_id FROM names WHERE path=? "
                "ORDER BY unbind_seq IS NULL DESC, bind_seq DESC, id DESC LIMIT 1",
                (path,)).fetchone()
        if row is None:
            raise QueryError(f"{path}: no file of that name in the store")
        aid = row[0]
        others = [r[0] for r in q("SELECT DISTINCT artifact_id FROM names WHERE path=? AND "
                                  "artifact_id != ?", (path, aid))]
        tg = _artifact_target(conn, t, aid, all_versions)
        if others:
            tg.desc += (" (the name also denoted artifact " + ", ".join(map(str, others))
                        + "; use artifact:ID or `history` for those)")
        return tg
    if prefix not in ("v", "version", "a", "artifact", "p", "process", "tgid") or not num:
        raise QueryError(f"bad target {text!r}: expected {TARGET_HELP}")
    n = parse_id(num, text)
    if prefix in ("v", "version"):
        row = q("SELECT kind, object_id FROM versions WHERE id=?", (n,)).fetchone()
        if row is None:
            raise QueryError(f"no version v:{n}")
        tg = Target(t, [n], f"version v:{n}")
        (tg.processes if row[0] == "process" else tg.artifacts).append(row[1])
        return tg
    if prefix in ("a", "artifact"):
        if q("SELECT 1 FROM artifacts WHERE id=?", (n,)).fetchone() is None:
            raise QueryError(f"no artifact:{n}")
        return _artifact_target(conn, t, n, all_versions)
    if prefix == "tgid":
        row = q("SELECT id FROM processes WHERE tgid=? ORDER BY id DESC LIMIT 1", (n,)).fetchone()
        if row is None:
            raise QueryError(f"no process with tgid {n}")
        n = row[0]
    row = q("SELECT node, tgid FROM processes WHERE id=?", (n,)).fetchone()
    if row is None:
        raise QueryError(f"no process:{n}")
    nodes = ([r[0] for r in q("SELECT id FROM versions WHERE kind='process' AND object_id=? "
                              "ORDER BY version", (n,))] if all_versions else [row[0]])
    return Target(t, nodes, f"process:{n} (tgid {row[1]})", processes=[n])


def parse_id(num: str, text: str) -> int:
    """The number of an id target: ASCII digits that fit SQLite's INTEGER."""
    if not _ID.fullmatch(num) or int(num) >= 1 << 63:
        raise QueryError(f"bad target {text!r}: {num!r} is not a valid id (a number below "
                         "2^63)")
    return int(num)


def _artifact_target(conn: sqlite3.Connection, text: str, aid: int, all_versions: bool
                     ) -> Target:
    q = conn.execute
    kind, node, path = q("SELECT kind, node, path FROM artifacts WHERE id=?", (aid,)).fetchone()
    nodes = ([r[0] for r in q("SELECT id FROM versions WHERE kind=? AND object_id=? "
                              "ORDER BY version", (kind, aid))] if all_versions else [node])
    return Target(text, nodes, f"artifact:{aid} ({kind} {path or ''})".replace(" )", ")"),
                  artifacts=[aid])


# -- node and edge details -----------------------------------------------------------------
def describe_nodes(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, dict]:
    """Version id -> a dict with its object and a readable label (the name it had then, the
    image a process version ran).

    An artifact version also gets ``names``: every name bound at some point of its life
    [its seq, the next version's seq) -- a name whose ``bind_seq`` is before the next version
    and that was not unbound at or before this version's seq (``unbind_seq`` NULL or later),
    in binding order. ``path`` is the one name of the label: the name bound when the version
    came to be, else the first one bound later."""
    ids = list(ids)
    if not ids:
        return {}
    out: dict[int, dict] = {}
    procs: dict[int, list[dict]] = defaultdict(list)
    arts: dict[int, list[dict]] = defaultdict(list)
    for (vid, kind, obj, ver, seq, ts, reason, tgid, comm, uid, path, dev, ino, nxt) in \
        conn.execute(
            "SELECT v.id, v.kind, v.object_id, v.version, v.seq, v.ts_ns, v.reason, p.tgid, "
            "p.comm, p.uid, a.path, a.dev, a.ino, "
            # the next version's seq: where this version's life ends (an index lookup)
            "(SELECT n.seq FROM versions n WHERE n.object_id = v.object_id AND n.kind = v.kind "
            " AND n.version = v.version + 1) FROM versions v "
            "LEFT JOIN processes p ON v.kind='process' AND p.id=v.object_id "
            "LEFT JOIN artifacts a ON v.kind!='process' AND a.id=v.object_id "
            "WHERE v.id IN (SELECT value FROM json_each(?))", (_ints(ids),)):
        if kind == "process":
            d = {"id": vid, "kind": kind, "object_id": obj, "version": ver, "seq": seq,
                 "ts_ns": ts, "time": fmt_ts(ts), "reason": reason, "tgid": tgid, "exe": None,
                 "comm": comm, "uid": uid}
            procs[obj].append(d)
        else:
            d = {"id": vid, "kind": kind, "object_id": obj, "version": ver, "seq": seq,
                 "ts_ns": ts, "time": fmt_ts(ts), "reason": reason, "path": path, "dev": dev,
                 "ino": ino, "deleted": False, "names": [], "next_seq": nxt}
            arts[obj].append(d)
        out[vid] = d
    if procs:
        exes: dict[int, tuple[list[int], list[str]]] = defaultdict(lambda: ([], []))
        # the analyzer's image of an execve version (attrs exe: the binary as the kernel
        # resolved it, against execveat's dirfd too), else its entry's path made absolute
        has = reader.has_table(conn, "attrs")
        image = "(SELECT a.value FROM attrs a WHERE a.node = v.id AND a.key = 'exe' " \
                "ORDER BY a.rowid DESC LIMIT 1)" if has else "NULL"
        for obj, ver, paths, cwd, img in conn.execute(
                f"SELECT v.object_id, v.version, en.paths, en.cwd, {image} FROM versions v "
                "JOIN events x ON x.seq = v.seq JOIN events en ON en.seq = x.entry_seq "
                "WHERE v.kind='process' AND v.reason='execve' AND v.object_id IN "
                "(SELECT value FROM json_each(?)) ORDER BY v.version", (_ints(procs),)):
            if img:
                vs, es = exes[obj]
                vs.append(ver)
                es.append(img)
            elif paths:
                p = paths.split("\n", 1)[0]
                vs, es = exes[obj]
                vs.append(ver)
                es.append(normpath(p if p.startswith("/") else f"{cwd or '/'}/{p}"))
        for obj, ds in procs.items():
            vs, es = exes[obj] if obj in exes else ((), ())
            for d in ds:
                # the image this version runs: the last exec at or before it
                i = bisect_right(vs, d["version"]) - 1 if vs else -1
                d["exe"] = es[i] if i >= 0 else None
                d["label"] = (f"process {d['tgid']} {d['exe'] or d['comm'] or '?'} "
                              f"v{d['version']}")
    if arts:
        names: dict[int, list[tuple[int, int | None, str]]] = defaultdict(list)
        for aid, path, b, u in conn.execute(
                "SELECT artifact_id, path, bind_seq, unbind_seq FROM names WHERE artifact_id IN "
                "(SELECT value FROM json_each(?)) ORDER BY bind_seq, id", (_ints(arts),)):
            names[aid].append((b, u, path))
        for obj, ds in arts.items():
            ns = names.get(obj)
            binds = [b for b, _u, _p in ns] if ns else []
            gone = bool(ns) and all(u is not None for _b, u, _p in ns)
            for d in ds:
                if ns:
                    # the name bound when this version came to be, else the first one later
                    i = bisect_right(binds, d["seq"]) - 1
                    while i >= 0 and ns[i][1] is not None and ns[i][1] <= d["seq"]:
                        i -= 1
                    d["path"] = ns[i][2] if i >= 0 else ns[0][2]
                    end = d.pop("next_seq")
                    last = len(ns) if end is None else bisect_left(binds, end)
                    seen: set[str] = set()
                    for _b, u, p in ns[:last]:
                        if (u is None or u > d["seq"]) and p not in seen:
                            seen.add(p)
                            d["names"].append(p)
                else:
                    d.pop("next_seq")
                d["deleted"] = gone
                d["label"] = label(d)
    return out


def label(d: dict) -> str:
    if d["kind"] == "process":
        who = d.get("exe") or d.get("comm") or "?"
        return f"process {d.get('tgid')} {who} v{d['version']}"
    name = d.get("path") or f"#{d['object_id']}"
    gone = " (deleted)" if d.get("deleted") else ""
    return f"{d['kind']} {name} v{d['version']}{gone}"


def fetch_edges(conn: sqlite3.Connection, nodes: set[int], up: bool, win: Window,
                inner: bool = True, detail: bool = True) -> list[dict]:
    """The relations leaving ``nodes`` upwards (src in nodes), else arriving (dst in nodes);
    with ``inner`` only those whose other end is in ``nodes`` too. Without ``detail`` only
    src, dst, kind and ts_ns, which the covering index holds (no row lookups)."""
    if not nodes:
        return []
    col, idx = ("src", "relations_up") if up else ("dst", "relations_down")
    args = (_ints(nodes), win.lo, win.hi)
    if not detail:
        return [{"kind": kind, "src": src, "dst": dst, "ts_ns": ts} for src, dst, kind, ts in
                conn.execute(f"SELECT src, dst, kind, ts_ns FROM relations INDEXED BY {idx} "
                             f"WHERE {col} IN (SELECT value FROM json_each(?)) "
                             f"AND ts_ns BETWEEN ? AND ?", args)
                if not inner or (dst if up else src) in nodes]
    out = []
    for rid, kind, src, dst, en, ex, ts, name in conn.execute(
            f"SELECT r.id, r.kind, r.src, r.dst, r.entry_seq, r.exit_seq, r.ts_ns, e.name "
            # the call that made it: its entry (a write seen early by a reader has no exit yet)
            f"FROM relations r LEFT JOIN events e ON e.seq = coalesce(r.entry_seq, r.exit_seq) "
            f"WHERE r.{col} IN (SELECT value FROM json_each(?)) AND r.ts_ns BETWEEN ? AND ?",
            args):
        if not inner or (dst if up else src) in nodes:
            out.append({"id": rid, "kind": kind, "src": src, "dst": dst, "entry_seq": en,
                        "exit_seq": ex, "ts_ns": ts, "time": fmt_ts(ts), "syscall": name})
    return out


def outcome_unknown(conn: sqlite3.Connection, procs: set[int] | None = None,
                    arts: dict[int, tuple] | None = None, paths: set[str] | None = None,
                    every: bool = False) -> list[dict]:
    """Entries whose exit never came: the syscall may or may not have happened. Those of the
    given process objects, or touching the given artifacts ((dev, ino)) or absolute paths;
    with ``every``, all of them."""
    rows = conn.execute(
        "SELECT e.seq, e.ts_ns, e.tgid, e.pid, e.name, e.cwd, e.paths, e.payload, "
        "(SELECT id FROM processes p WHERE p.tgid = e.tgid AND p.first_seq <= e.seq "
        " AND (p.exit_seq IS NULL OR p.exit_seq >= e.seq) ORDER BY id DESC LIMIT 1) "
        "FROM pending k JOIN events e ON e.seq = k.seq ORDER BY k.seq").fetchall()
    devino = {v: k for k, v in (arts or {}).items() if v[1]}
    out = []
    for seq, ts, tgid, pid, name, cwd, epaths, payload, proc in rows:
        abspaths = [normpath(p if p.startswith("/") else f"{cwd or '/'}/{p}")
                    for p in (epaths or "").split("\n") if p]
        hit_arts: list[int] = []
        try:
            ev = decode(payload, seq)
            hit_arts = [devino[(f.dev, f.ino)] for f in ev.files if (f.dev, f.ino) in devino]
            arg0 = ev.arg(0)
        except EventDecodeError:
            arg0 = None
        if not (every or (procs and proc in procs) or hit_arts
                or (paths and set(abspaths) & paths)):
            continue
        out.append({"seq": seq, "ts_ns": ts, "time": fmt_ts(ts), "tgid": tgid, "pid": pid,
                    "process_id": proc, "syscall": name, "paths": abspaths, "arg0": arg0,
                    "artifacts": hit_arts, "outcome": "unknown"})
    return out


def unknown_by_version(conn: sqlite3.Connection) -> dict[int | None, list[dict]]:
    """Every outcome-unknown entry under the process version current at its seq (the
    version the call would belong to); None for an entry no process is known for."""
    out: dict[int | None, list[dict]] = defaultdict(list)
    for u in outcome_unknown(conn, every=True):
        row = None if u["process_id"] is None else conn.execute(
            "SELECT id FROM versions WHERE kind='process' AND object_id=? AND seq <= ? "
            "ORDER BY version DESC LIMIT 1", (u["process_id"], u["seq"])).fetchone()
        out[row[0] if row else None].append(u)
    return dict(out)


def _unknown_text(u: dict) -> str:
    what = ", ".join(u["paths"]) if u["paths"] else f"fd {u['arg0']}"
    return f"{u['syscall']}({what})"


# -- walks ---------------------------------------------------------------------------------
def walk(conn: sqlite3.Connection, starts: list[int], up: bool, depth: int | None = None,
         win: Window | None = None) -> set[int]:
    """Every node reachable from ``starts`` (ancestors when ``up``), within ``depth`` steps
    and over relations inside the time window."""
    win = win or Window()
    a, b = ("src", "dst") if up else ("dst", "src")
    if depth is None:
        sql = (f"WITH RECURSIVE w(node) AS (SELECT value FROM json_each(?) UNION "
               f"SELECT r.{b} FROM w JOIN relations r ON r.{a} = w.node "
               f"WHERE r.ts_ns BETWEEN ? AND ?) SELECT node FROM w")
        args: tuple = (_ints(starts), win.lo, win.hi)
    else:
        sql = (f"WITH RECURSIVE w(node, d) AS (SELECT value, 0 FROM json_each(?) UNION "
               f"SELECT r.{b}, w.d + 1 FROM w JOIN relations r ON r.{a} = w.node "
               f"WHERE w.d < ? AND r.ts_ns BETWEEN ? AND ?) SELECT DISTINCT node FROM w")
        args = (_ints(starts), depth, win.lo, win.hi)
    return {r[0] for r in conn.execute(sql, args)}


def closure_edges(conn: sqlite3.Connection, starts: list[int], up: bool, win: Window
                  ) -> list[tuple[int, int, str, int]]:
    """Every relation (src, dst, kind, ts_ns) reachable from ``starts``: walk and edges in one
    statement that reads
    only the covering index (no depth limit: every edge out of the closure stays inside it)."""
    a, b, idx = ("src", "dst", "relations_up") if up else ("dst", "src", "relations_down")
    sql = (f"WITH RECURSIVE w(node) AS (SELECT value FROM json_each(?) UNION "
           f"SELECT r.{b} FROM w JOIN relations r INDEXED BY {idx} ON r.{a} = w.node "
           f"WHERE r.ts_ns BETWEEN ? AND ?) "
           f"SELECT r.src, r.dst, r.kind, r.ts_ns FROM w JOIN relations r INDEXED BY {idx} "
           f"ON r.{a} = w.node WHERE r.ts_ns BETWEEN ? AND ?")
    return conn.execute(sql, (_ints(starts), win.lo, win.hi, win.lo, win.hi)).fetchall()


def _bfs(starts: list[int], pairs: list[tuple], up: bool, ordered: bool
         ) -> tuple[dict[int, int], dict[int, str], list[int]]:
    """Depth, the kind of the edge that first reached each node, and the breadth-first order.

    SQLite runs a recursive CTE as a FIFO queue, so ``closure_edges`` returns edges grouped by
    their near end in breadth-first order and one pass suffices; should an edge's near end not
    be known yet when it is read (another plan), a real BFS is done instead."""
    dist = dict.fromkeys(starts, 0)
    via: dict[int, str] = {}
    order = list(dist)
    ok = ordered
    if ordered:
        get = dist.get
        for a, b, k, _t in pairs:
            near, far = (a, b) if up else (b, a)
            da = get(near)
            if da is None:
                ok = False
                break
            if far not in dist:
                dist[far] = da + 1
                via[far] = k
                order.append(far)
    if ok:
        return dist, via, order
    dist = dict.fromkeys(starts, 0)
    via = {}
    dist = _depths(starts, pairs, up)
    for a, b, k, _t in pairs:
        via.setdefault(b if up else a, k)
    return dist, via, sorted(dist, key=lambda n: (dist[n], n))


def _depths(starts: list[int], pairs: list[tuple], up: bool) -> dict[int, int]:
    adj: dict[int, list[int]] = defaultdict(list)
    if up:
        for a, b, *_ in pairs:
            adj[a].append(b)
    else:
        for a, b, *_ in pairs:
            adj[b].append(a)
    dist = {s: 0 for s in starts}
    dq = deque(starts)
    while dq:
        n = dq.popleft()
        for m in adj[n]:
            if m not in dist:
                dist[m] = dist[n] + 1
                dq.append(m)
    return dist


def lineage(conn: sqlite3.Connection, target: str, up: bool, depth: int | None = None,
            win: Window | None = None, all_versions: bool = False,
            detail: bool = True, limit: int | None = None) -> Result:
    """ancestors (``up``) or descendants of TARGET, with outcome-unknown events of the
    processes involved. ``detail`` adds each edge's id, entry/exit seq and syscall (JSON and
    DOT show them; the table does not need them). ``limit`` keeps the nearest nodes (by depth,
    then age) and the edges among them: the whole closure is still walked and counted, but only
    what is shown is labelled, which is what costs at millions of relations."""
    win = win or Window()
    if depth is not None and depth < 0:
        raise QueryError("--depth must not be negative")
    if limit is not None and limit < 0:
        raise QueryError("--limit must not be negative")
    tg = resolve(conn, target, all_versions)
    if depth is None and not detail:
        pairs = closure_edges(conn, tg.nodes, up, win)
        nodes = None  # the breadth-first pass below finds them
    else:
        nodes = walk(conn, tg.nodes, up, depth, win)
        edges = fetch_edges(conn, nodes, up, win, detail=detail)
        pairs = [(e["src"], e["dst"], e["kind"], e["ts_ns"]) for e in edges]
    dist, via, order = _bfs(tg.nodes, pairs, up, ordered=depth is None and not detail)
    if nodes is None:
        nodes = dist.keys()
    total_nodes, total_edges = len(nodes), len(pairs)
    shown = nodes
    if limit and len(nodes) > limit:
        shown = set(order[:limit])  # discovery order is breadth-first: the nearest first
    if depth is None and not detail:
        edges = [{"kind": k, "src": a, "dst": b, "ts_ns": t} for a, b, k, t in pairs
                 if shown is nodes or (a in shown and b in shown)]
    elif shown is not nodes:
        edges = [e for e in edges if e["src"] in shown and e["dst"] in shown]
    info = describe_nodes(conn, shown)
    res = Result("ancestors" if up else "descendants", target,
                 ["depth", "node", "kind", "object", "time", "seq", "reason", "via"])
    res.notes.append(f"{res.query} of {tg.desc}: {total_nodes - len(tg.nodes)} nodes, "
                     f"{total_edges} relations")
    if shown is not nodes:
        res.notes.append(f"showing the nearest {len(shown)} nodes and the {len(edges)} "
                         f"relations among them (--limit 0 shows all)")
    for n, d in info.items():
        d["depth"] = dist.get(n, 0)
    res.nodes = info
    res.edges = edges
    for d in sorted(info.values(), key=lambda d: (d["depth"], d["seq"], d["id"])):
        res.rows.append({"depth": d["depth"], "node": f"v:{d['id']}", "kind": d["kind"],
                         "object": d["label"], "time": d["time"], "seq": d["seq"],
                         "reason": d["reason"], "via": via.get(d["id"], "(target)")
                         if d["depth"] else "(target)"})
    procs = {d["object_id"] for d in info.values() if d["kind"] == "process"}
    arts = _art_ids(conn, {d["object_id"] for d in info.values() if d["kind"] != "process"})
    res.unknown = [u for u in outcome_unknown(conn, procs, arts) if u["ts_ns"] in win]
    _unknown_rows(res)
    return res


def _art_ids(conn: sqlite3.Connection, ids: set[int]) -> dict[int, tuple]:
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT id, dev, ino FROM artifacts WHERE id IN (SELECT value FROM json_each(?))",
        (_ints(ids),))}


def _unknown_rows(res: Result) -> None:
    """Outcome-unknown entries as rows of their own, so a table shows them too."""
    for u in res.unknown:
        row = dict.fromkeys(res.columns, "")
        row.update({"time": u["time"], "seq": u["seq"]})
        first = res.columns[0]
        row[first] = "?"
        for col in ("object", "what", "process"):
            if col in row:
                row[col] = f"{_unknown_text(u)} by tgid {u['tgid']}"
                break
        for col in ("reason", "action", "syscall"):
            if col in row:
                row[col] = "OUTCOME UNKNOWN"
                break
        res.rows.append(row)


# -- history, writers, process -------------------------------------------------------------
def _path_artifacts(conn: sqlite3.Connection, target: str) -> tuple[list[int], str]:
    t = typed(target)
    if t.startswith("/"):
        path = normpath(t)
        ids = [r[0] for r in conn.execute(
            "SELECT artifact_id FROM names WHERE path=? GROUP BY artifact_id "
            "ORDER BY min(bind_seq)", (path,))]
        if not ids:
            raise QueryError(f"{path}: no file of that name in the store")
        return ids, path
    tg = resolve(conn, t)
    if not tg.artifacts:
        raise QueryError(f"{target}: not a file (give a path or artifact:ID)")
    return tg.artifacts[:1], ""


def history(conn: sqlite3.Connection, target: str, depth: int | None = None,
            win: Window | None = None) -> Result:
    """Every artifact ever named PATH, its names over time (renamed, replaced, deleted,
    re-created), each version and what made it."""
    win = win or Window()
    aids, path = _path_artifacts(conn, target)
    q = conn.execute
    res = Result("history", target, ["artifact", "version", "node", "time", "seq", "reason",
                                     "made by", "derived from"])
    starts: list[int] = []
    for aid in aids:
        kind, dev, ino, created = q("SELECT kind, dev, ino, created_seq FROM artifacts "
                                    "WHERE id=?", (aid,)).fetchone()
        names = q("SELECT path, bind_seq, unbind_seq FROM names WHERE artifact_id=? "
                  "ORDER BY bind_seq, id", (aid,)).fetchall()
        spans = []
        for p, b, u in names:
            end = "now" if u is None else f"seq {u}"
            why = ""
            if u is not None:
                nxt = q("SELECT artifact_id FROM names WHERE path=? AND bind_seq=? AND "
                        "artifact_id != ?", (p, u, aid)).fetchone()
                moved = [p2 for p2, b2, _u2 in names if b2 == u and p2 != p]
                why = (f" renamed to {moved[0]}" if moved else
                       f" replaced by artifact:{nxt[0]}" if nxt else " deleted")
            spans.append(f"{p} [seq {b} .. {end}]{why}")
        ident = f"dev {dev} ino {ino}" if ino else "no inode seen"
        res.notes.append(f"artifact:{aid} {kind} ({ident}), created at seq {created}: "
                         + "; ".join(spans))
        vers = q("SELECT id, version, seq, ts_ns, reason FROM versions WHERE kind=? AND "
                 "object_id=? ORDER BY version", (kind, aid)).fetchall()
        starts += [v[0] for v in vers]
    nodes = set(starts) | walk(conn, starts, True, max(depth or 1, 1), win)
    edges = fetch_edges(conn, nodes, True, win)
    info = describe_nodes(conn, nodes)
    direct: dict[int, list[dict]] = defaultdict(list)
    for e in edges:
        direct[e["src"]].append(e)
    for vid in starts:
        d = info[vid]
        if d["ts_ns"] not in win:
            continue
        made = [f"{info[e['dst']]['label']} ({e['syscall']} seq {e['exit_seq']})"
                for e in direct[vid] if e["kind"] == "wasGeneratedBy"]
        src = [info[e["dst"]]["label"] for e in direct[vid] if e["kind"] == "wasDerivedFrom"]
        res.rows.append({"artifact": f"artifact:{d['object_id']}", "version": d["version"],
                         "node": f"v:{vid}", "time": d["time"], "seq": d["seq"],
                         "reason": d["reason"], "made by": "; ".join(made) or "-",
                         "derived from": "; ".join(src) or "-"})
    res.nodes, res.edges = info, edges
    res.unknown = [u for u in outcome_unknown(conn, None, _art_ids(conn, set(aids)),
                                              {path} if path else None) if u["ts_ns"] in win]
    _unknown_rows(res)
    return res


def writers(conn: sqlite3.Connection, target: str, depth: int | None = None,
            win: Window | None = None) -> Result:
    """Who wrote the file (every artifact ever named PATH, every version); with ``depth`` N >
    1 also who wrote what it was derived from, N-1 derivation steps back."""
    win = win or Window()
    aids, path = _path_artifacts(conn, target)
    starts = [r[0] for r in conn.execute(
        "SELECT v.id FROM versions v JOIN artifacts a ON a.id = v.object_id AND a.kind = v.kind "
        "WHERE a.id IN (SELECT value FROM json_each(?))", (_ints(aids),))]
    # derivation hops (artifact -> artifact only), then the generators of all of them
    hops = {s: 0 for s in starts}
    frontier = list(starts)
    for h in range(1, (depth or 1)):
        nxt = [r for r in conn.execute(
            "SELECT DISTINCT dst FROM relations WHERE kind='wasDerivedFrom' AND src IN "
            "(SELECT value FROM json_each(?)) AND ts_ns BETWEEN ? AND ?",
            (_ints(frontier), win.lo, win.hi))]
        frontier = [r[0] for r in nxt if r[0] not in hops]
        if not frontier:
            break
        for n in frontier:
            hops[n] = h
    gens = [e for e in fetch_edges(conn, set(hops), True, win, inner=False)
            if e["kind"] == "wasGeneratedBy"]
    info = describe_nodes(conn, set(hops) | {e["dst"] for e in gens})
    res = Result("writers", target, ["hop", "time", "seq", "process", "uid", "syscall",
                                     "wrote"])
    for e in sorted(gens, key=lambda e: (hops[e["src"]], e["exit_seq"] or 0)):
        p = info[e["dst"]]
        res.rows.append({"hop": hops[e["src"]], "time": e["time"], "seq": e["exit_seq"],
                         "process": p["label"], "uid": p.get("uid"), "syscall": e["syscall"],
                         "wrote": info[e["src"]]["label"]})
    res.notes.append(f"writers of {path or target}: {len(res.rows)} writes by "
                     f"{len({e['dst'] for e in gens})} process versions")
    res.nodes = info
    res.edges = gens
    res.unknown = [u for u in outcome_unknown(conn, None, _art_ids(conn, set(aids)),
                                              {path} if path else None) if u["ts_ns"] in win]
    _unknown_rows(res)
    return res


ACTIONS = {"execve": "executed", "execveat": "executed", "mmap": "mapped"}


def process(conn: sqlite3.Connection, target: str, depth: int | None = None,
            win: Window | None = None) -> Result:
    """What a process read, wrote, executed and spawned, with times; TGID names every process
    that had it (PIDs are reused). ``depth`` N > 1 includes spawned children N-1 levels down."""
    win = win or Window()
    t = (target or "").strip()
    q = conn.execute
    if t[:1].isdigit():
        pids = [r[0] for r in q("SELECT id FROM processes WHERE tgid=? ORDER BY id",
                                (parse_id(t, target),))]
        if not pids:
            raise QueryError(f"no process with tgid {t}")
    else:
        tg = resolve(conn, t)
        if not tg.processes:
            raise QueryError(f"{target}: not a process (give a TGID or process:ID)")
        pids = tg.processes
    res = Result("process", target, ["time", "seq", "process", "action", "what", "syscall"])
    seen: set[int] = set()
    level = list(pids)
    for _ in range(max(depth or 1, 1)):
        level = [p for p in level if p not in seen]
        if not level:
            break
        seen.update(level)
        level = [r[0] for r in q("SELECT id FROM processes WHERE parent_id IN "
                                 "(SELECT value FROM json_each(?))", (_ints(level),))]
    vers = {r[0]: r[1] for r in q(
        "SELECT id, object_id FROM versions WHERE kind='process' AND object_id IN "
        "(SELECT value FROM json_each(?))", (_ints(seen),))}
    for pid in sorted(seen):
        row = q("SELECT tgid, start_time, parent_id, exe, comm, uid, first_seq, last_seq, "
                "exit_seq FROM processes WHERE id=?", (pid,)).fetchone()
        tgid, start, parent, exe, comm, uid, first, last, ex = row
        ptg = q("SELECT tgid FROM processes WHERE id=?", (parent,)).fetchone() if parent else None
        res.notes.append(f"process:{pid} tgid {tgid} ({comm}, {exe or 'no exec seen'}), uid "
                         f"{uid}, parent {f'process:{parent} tgid {ptg[0]}' if ptg else '-'}, "
                         f"seq {first}..{last}, "
                         + (f"exited at seq {ex}" if ex else "no exit seen"))
    edges = (fetch_edges(conn, set(vers), True, win, inner=False)
             + fetch_edges(conn, set(vers), False, win, inner=False))
    uniq = {e["id"]: e for e in edges}
    edges = sorted(uniq.values(), key=lambda e: (e["exit_seq"] or 0, e["id"]))
    info = describe_nodes(conn, {e["src"] for e in edges} | {e["dst"] for e in edges}
                          | set(vers))
    for e in edges:
        s, d = info[e["src"]], info[e["dst"]]
        if e["kind"] == "used":
            who, act, what = s, ACTIONS.get(e["syscall"] or "", "read"), d["label"]
        elif e["kind"] == "wasGeneratedBy":
            who, act, what = d, "wrote", s["label"]
        elif e["kind"] == "wasInformedBy" and s["object_id"] == d["object_id"]:
            who = s
            act = "exec" if s["reason"] == "execve" else "new version"
            what = (s.get("exe") or "?") if act == "exec" else f"{s['label']} ({s['reason']})"
        elif e["kind"] == "wasInformedBy" and e["src"] in vers and vers[e["src"]] in seen \
                and e["dst"] not in vers:
            who, act, what = s, "spawned by", d["label"]
        elif e["kind"] == "wasInformedBy":
            who, act, what = d, "spawned", s["label"]
        else:
            continue
        res.rows.append({"time": e["time"], "seq": e["exit_seq"], "process": who["label"],
                         "action": act, "what": what, "syscall": e["syscall"] or "-"})
    res.nodes, res.edges = info, edges
    res.unknown = [u for u in outcome_unknown(conn, seen) if u["ts_ns"] in win]
    _unknown_rows(res)
    return res


QUERY_NAMES = ("ancestors", "descendants", "history", "process", "writers")


def run_query(conn: sqlite3.Connection, name: str, target: str, depth: int | None = None,
              win: Window | None = None, all_versions: bool = False, detail: bool = True,
              limit: int | None = None) -> Result:
    """One entry point for the CLI: ``all_versions``, ``detail`` and ``limit`` concern the
    lineage walks only."""
    target = typed(target)  # Result.target is printed (the DOT comment): guest text too
    if name in ("ancestors", "descendants"):
        return lineage(conn, target, name == "ancestors", depth, win, all_versions, detail,
                       limit)
    fn = {"history": history, "process": process, "writers": writers}.get(name)
    if fn is None:
        raise QueryError(f"unknown query {name!r} (one of {', '.join(QUERY_NAMES)})")
    return fn(conn, target, depth, win)


# -- rendering -----------------------------------------------------------------------------
def render_table(res: Result) -> str:
    lines = list(res.notes)
    if not res.rows:
        lines.append("(nothing)")
        return "\n".join(lines)
    cols = res.columns
    cells = [[str(r.get(c, "")) for c in cols] for r in res.rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, width, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in width))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, width, strict=True)).rstrip())
    return "\n".join(lines)


def render_json(res: Result) -> str:
    return json.dumps(res.to_json(), indent=2, default=str)


SHAPES = {"process": "box", "file": "ellipse", "pipe": "diamond", "socket": "hexagon",
          "symlink": "note"}


def _dq(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_body(res: Result, p: str = "", ind: str = "  ") -> list[str]:
    """Nodes and edges of one result; ``p`` prefixes every node id (one machine's ids apart
    from another's in one graph)."""
    out = []
    for n, d in sorted(res.nodes.items()):
        style = ', style=filled, fillcolor="#ffe08a"' if d.get("depth") == 0 and \
            res.query in ("ancestors", "descendants") else ""
        out.append(f"{ind}{p}v{n} [label={_dq(d['label'] + chr(10) + d['time'])}, "
                   f"shape={SHAPES.get(d['kind'], 'ellipse')}{style}];")
    for e in res.edges:
        if e["src"] in res.nodes and e["dst"] in res.nodes:
            out.append(f"{ind}{p}v{e['src']} -> {p}v{e['dst']} [label={_dq(e['kind'])}];")
    procs = defaultdict(list)
    for n, d in res.nodes.items():
        if d["kind"] == "process":
            procs[d["object_id"]].append(n)
    for u in res.unknown:
        out.append(f"{ind}{p}u{u['seq']} [label={_dq('OUTCOME UNKNOWN: ' + _unknown_text(u))}, "
                   'shape=octagon, color=red, fontcolor=red, style=dashed];')
        for n in procs.get(u["process_id"], [])[-1:]:
            out.append(f"{ind}{p}u{u['seq']} -> {p}v{n} [style=dashed, color=red];")
    return out


_DOT_HEAD = ["  rankdir=BT;", '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontsize=8];']


def render_dot(res: Result) -> str:
    return "\n".join([f"digraph provisor {{  // {res.query} {res.target}", *_DOT_HEAD,
                      *_dot_body(res), "}"])


def machine_tag(machine: str) -> str:
    """The part of every id that keeps one machine's records apart from another's in one
    document: ``web.`` (``provisor:web.v12``); a name starting with a digit gets a ``_``
    first (a QName's local part may not start with one; no machine name starts with ``_``)."""
    return (machine if machine[:1].isalpha() else f"_{machine}") + "."


def dot_prefix(machine: str) -> str:
    """:func:`machine_tag` as the start of a DOT node id (``web_v12``, ``_9lab_v12``: a DOT id
    may not start with a digit)."""
    return machine_tag(machine).replace(".", "_")


def render_many(results: list[Result], fmt: str) -> str:
    """Several machines' answers to one query, each tagged with its machine: a section per
    machine (table), a list (JSON), a cluster per machine with its own node ids (DOT)."""
    if len(results) == 1 and fmt != "json":
        return {"table": render_table, "dot": render_dot}[fmt](results[0])
    if fmt == "json":
        if len(results) == 1:
            return render_json(results[0])
        return json.dumps([r.to_json() for r in results], indent=2, default=str)
    if fmt == "table":
        return "\n\n".join(f"== machine {r.machine} ==\n{render_table(r)}" for r in results)
    out = [f"digraph provisor {{  // {results[0].query} {results[0].target}", *_DOT_HEAD]
    for r in results:
        p = dot_prefix(r.machine)
        out += [f"  subgraph cluster_{p.rstrip('_')} {{",
                f"    label={_dq('machine ' + r.machine)};", *_dot_body(r, p, "    "), "  }"]
    return "\n".join([*out, "}"])
