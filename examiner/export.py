"""W3C PROV export of the store, built on the ``prov`` package (ProvDocument).

Mapping: a process version is a ``prov:Activity``; a file, pipe, socket or symlink version is
a ``prov:Entity``; the user (uid) is a ``prov:Agent`` each process version
``wasAssociatedWith``; the store's relations map one to one onto ``used``, ``wasGeneratedBy``,
``wasInformedBy`` and ``wasDerivedFrom``. Identifiers are ``provisor:v<version id>``,
``provisor:r<relation id>``, ``provisor:uid<uid>``, ``provisor:assoc<version id>`` (in an
export of several machines each carries its machine, ``provisor:web.v12``); ring
sequence numbers (``provisor:seq``, ``provisor:entry_seq``, ``provisor:exit_seq``) and exact
nanosecond times (``provisor:ts_ns``) are attributes; PROV times are timezone-aware (UTC).

What each record carries (several values of one key -- names, attrs rows -- make a
multi-valued attribute: PROV-JSON writes a list, PROV-N repeats the attribute, ``prov.read``
gives the set):

==========================  ===================================================================
record                      attributes
==========================  ===================================================================
entity (artifact version)   ``provisor:path``: every name bound during the version's life (the
                            contract's rule: bound before the next version, not unbound at or
                            before this one), so a renamed or linked file is found by each
                            name; ``kind artifact version dev ino seq ts_ns reason``,
                            ``deleted`` (1: no name of the artifact is bound any more),
                            ``machine``
activity (process version)  ``process version tgid exe comm seq ts_ns reason machine``;
                            credentials ``uid gid suid sgid euid egid fsuid fsgid`` (the
                            version's own attrs rows, else the nearest earlier version's: they
                            stay until a call changes them; without attrs ``uid`` is the
                            process's); ``outcome_unknown``: one text per entry whose exit
                            never came (``seq 57 write(fd 6)``), a mark, never a relation
attrs rows (any node)       ``provisor:<key>``, one value per row (``argv``: the JSON list
                            text, in order; ``uid``-like keys, ``signal``, ``exit_status``,
                            ``owner_uid/gid``, ``endpoint_family``: integers; the rest text,
                            e.g. ``mode`` "0644"); a row replaces the computed attribute of
                            its name; a key the export writes itself (``seq``, ``path``, ...)
                            becomes ``provisor:attr_<key>``
agent provisor:uid<N>       ``uid``, ``machine``; each activity ``wasAssociatedWith`` the
                            agent of its own credentials' uid
wasInvalidatedBy            an artifact version whose last name a process removed (unlink,
                            rmdir, a rename over it: attrs ``invalidated_by``), by that process
                            version; ``provisor:inv<node>_<seq>``
agent provisor:ring_<uuid>  ``prov:type provisor:machine``: the ring the records came from
                            (``ring_uuid``) and the machine (``host``, ``guest_kernel``,
                            ``ring_created_ns``: meta ``machine``, written once by the live
                            daemon, absent after a recovery into a new store); every entity,
                            activity and uid agent names it in ``provisor:machine``; it holds
                            the ``outcome_unknown`` entries of no known process
==========================  ===================================================================

Why chunks: a store of millions of relations does not fit one in-memory ProvDocument. Records are
read in sections of one PROV type (entities, activities, agents, associations, then each relation
kind), a ProvDocument of at most ``chunk`` records is built and serialized by ``prov`` for each
slice, and the slices are spliced into one document: PROV-N and PROV-XML by taking the records
between the document wrapper, PROV-JSON by writing each type's section incrementally, RDF as
concatenated Turtle (prefixes may repeat; blank nodes are unique per rdflib). One document rather
than a bundle per chunk keeps identifiers global and the output readable by ``prov.read`` as the
same graph. Memory is bounded by the chunk size. DOT is written directly (prov's DOT needs the
whole document in memory and pydot).
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import warnings
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import IO

from prov.constants import PROV
from prov.identifier import Namespace
from prov.model import ProvDocument

from examiner import query as Q
from provisor.errors import ProvisorError
from provisor.machine import DEFAULT_MACHINE
from store import reader

NS = "urn:provisor:"
PROVISOR = Namespace("provisor", NS)
TYPES = {k: PROVISOR[k] for k in ("process", "file", "pipe", "socket", "symlink")}
FORMATS = Q.EXPORT_FORMATS
RELATION_KINDS = ("used", "wasGeneratedBy", "wasInformedBy", "wasDerivedFrom")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ExportError(ProvisorError):
    pass


def when(ns: int | None) -> datetime | None:
    """Nanoseconds -> an aware UTC datetime (microseconds; the exact value is ts_ns)."""
    return None if ns is None else EPOCH + timedelta(microseconds=ns // 1000)


def _attrs(**kw: object) -> list[tuple[str, object]]:
    return [(f"provisor:{k}" if ":" not in k else k, v) for k, v in kw.items()
            if v is not None and v != ""]


# -- the attrs table (contract of issue 14): version attributes by key ---------------------
CRED_KEYS = ("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid")
INT_KEYS = frozenset(CRED_KEYS + ("signal", "exit_status", "owner_uid", "owner_gid",
                                  "endpoint_family"))
# what the export itself writes: an attrs row of such a key is exported as provisor:attr_<key>
RESERVED = frozenset(("kind", "artifact", "process", "version", "path", "dev", "ino", "seq",
                      "ts_ns", "reason", "deleted", "tgid", "comm", "machine",
                      "outcome_unknown", "label", "type"))
_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_INT = re.compile(r"-?[0-9]{1,19}")


def has_attrs(conn: sqlite3.Connection) -> bool:
    return reader.has_table(conn, "attrs")


def _value(key: str, text: object) -> object:
    if key in INT_KEYS and isinstance(text, str) and _INT.fullmatch(text):
        return int(text)
    return text


def _qkey(key: str) -> str:
    if not _KEY.fullmatch(key):
        return "provisor:attr"  # never a malformed name in the document (value: key=value)
    return f"provisor:attr_{key}" if key in RESERVED else f"provisor:{key}"


def node_attrs(conn: sqlite3.Connection, ids: list[int]) -> dict[int, list[tuple[str, object]]]:
    """Version id -> its attrs rows as (key, value), in the order they were set (seq)."""
    out: dict[int, list[tuple[str, object]]] = defaultdict(list)
    if not ids or not has_attrs(conn):
        return out
    for node, key, value in conn.execute(
            "SELECT node, key, value FROM attrs WHERE node IN (SELECT value FROM json_each(?)) "
            "ORDER BY seq, rowid", (json.dumps(ids),)):
        out[node].append((key, _value(key, value)))
    return out


def creds(conn: sqlite3.Connection, ids: list[int]) -> dict[int, dict[str, object]]:
    """Process version id -> its credentials (CRED_KEYS): a version's own attrs rows, else
    those of the nearest earlier version of the same process that has them (credentials stay
    until a call changes them). The last row of a key wins."""
    out: dict[int, dict[str, object]] = {}
    if not ids or not has_attrs(conn):
        return out
    mine = conn.execute("SELECT id, object_id, version FROM versions WHERE kind='process' AND "
                        "id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)).fetchall()
    objs = sorted({o for _i, o, _v in mine})
    hist: dict[int, list[tuple[int, dict[str, object]]]] = defaultdict(list)
    for obj, ver, key, value in conn.execute(
            "SELECT v.object_id, v.version, a.key, a.value FROM versions v JOIN attrs a "
            "ON a.node = v.id WHERE v.kind='process' AND v.object_id IN (SELECT value FROM "
            f"json_each(?)) AND a.key IN ({', '.join('?' * len(CRED_KEYS))}) "
            "ORDER BY v.object_id, v.version, a.seq, a.rowid",
            (json.dumps(objs), *CRED_KEYS)):
        h = hist[obj]
        if not h or h[-1][0] != ver:
            h.append((ver, dict(h[-1][1]) if h else {}))
        h[-1][1][key] = _value(key, value)
    for vid, obj, ver in mine:
        h = hist.get(obj)
        if h:
            i = bisect_right([v for v, _c in h], ver) - 1
            if i >= 0:
                out[vid] = h[i][1]
    return out


def _merge(base: list[tuple[str, object]], rows: list[tuple[str, object]],
           inherited: dict[str, object] | None = None) -> list[tuple[str, object]]:
    """The record's attributes: attrs rows replace a computed attribute of the same name (they
    are the version's own); inherited credentials fill keys the version has no row for."""
    own = {k for k, _v in rows}
    extra = [(k, v) for k, v in (inherited or {}).items() if k not in own]
    names = {_qkey(k) for k, _v in rows + extra}
    out = [(k, v) for k, v in base if k not in names]
    for k, v in rows + extra:
        out.append((_qkey(k), f"{k}={v}" if _qkey(k) == "provisor:attr" else v))
    return out


# -- the machine and ring the records came from --------------------------------------------
def machine(conn: sqlite3.Connection) -> dict[str, object]:
    """The store's ring UUID and what the daemon recorded about the machine (meta
    ``machine``, JSON: host, guest_kernel, ring_created_ns), when it did."""
    rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('ring_uuid', "
                             "'machine', 'machine_name')").fetchall())
    out: dict[str, object] = {"ring_uuid": rows.get("ring_uuid") or None,
                              "machine_name": rows.get("machine_name") or DEFAULT_MACHINE}
    try:
        m = json.loads(rows.get("machine") or "{}")
    except ValueError:
        m = {}
    if isinstance(m, dict):
        for k in MACHINE_KEYS:
            if isinstance(m.get(k), str | int) and not isinstance(m.get(k), bool):
                out[k] = m[k]
    return out


MACHINE_KEYS = ("host", "guest_kernel", "ring_created_ns")


def machine_id(info: dict[str, object]) -> str:
    tail = re.sub(r"[^A-Za-z0-9-]", "_", str(info.get("ring_uuid") or ""))
    return f"provisor:ring_{tail}" if tail else "provisor:ring"


def _unknown_text(u: dict) -> str:
    what = ", ".join(u["paths"]) if u["paths"] else f"fd {u['arg0']}"
    return f"seq {u['seq']} {u['syscall']}({what})"


class Selection:
    """Which versions and relations to export: all, a time window, and/or one object's
    lineage (its ancestors and descendants, all versions)."""

    def __init__(self, conn: sqlite3.Connection, win: Q.Window, target: str | None,
                 machine: str = "") -> None:
        self.conn, self.win, self.machine = conn, win, machine
        self.ns = "provisor:" + (Q.machine_tag(machine) if machine else "")
        self.nodes: set[int] | None = None
        self.chunk = 2000
        if target:
            tg = Q.resolve(conn, target, all_versions=True)
            self.nodes = (set(tg.nodes) | Q.walk(conn, tg.nodes, True, None, win)
                          | Q.walk(conn, tg.nodes, False, None, win))

    def _rel_where(self, r: str = "") -> tuple[str, tuple]:
        sql, args = f"{r}ts_ns BETWEEN ? AND ?", (self.win.lo, self.win.hi)
        if self.nodes is not None:
            js = json.dumps(sorted(self.nodes))
            sql += (f" AND {r}src IN (SELECT value FROM json_each(?)) AND {r}dst IN "
                    "(SELECT value FROM json_each(?))")
            args += (js, js)
        return sql, args

    def version_ids(self, process: bool) -> Iterator[list[int]]:
        """Version ids in chunks: the selected nodes, else those in the window or touched by a
        relation in it."""
        op = "=" if process else "!="
        if self.nodes is not None:
            sql = (f"SELECT id FROM versions WHERE kind {op} 'process' AND id IN "
                   f"(SELECT value FROM json_each(?)) ORDER BY id")
            args: tuple = (json.dumps(sorted(self.nodes)),)
        elif self.win.lo == -Q.NO_LIMIT and self.win.hi == Q.NO_LIMIT:
            sql, args = f"SELECT id FROM versions WHERE kind {op} 'process' ORDER BY id", ()
        else:
            sql = (f"SELECT id FROM versions WHERE kind {op} 'process' AND (ts_ns BETWEEN ? AND ? "
                   f"OR id IN (SELECT src FROM relations WHERE ts_ns BETWEEN ? AND ?) "
                   f"OR id IN (SELECT dst FROM relations WHERE ts_ns BETWEEN ? AND ?)) "
                   f"ORDER BY id")
            args = (self.win.lo, self.win.hi) * 3
        yield from _chunks((r[0] for r in self.conn.execute(sql, args)), self.chunk)

    def relations(self, kind: str) -> Iterator[list[tuple]]:
        where, args = self._rel_where("r.")
        cur = self.conn.execute(
            f"SELECT r.id, r.src, r.dst, r.entry_seq, r.exit_seq, r.ts_ns, e.name "
            # the call that made it: its entry (a write seen early by a reader has no exit yet)
            f"FROM relations r LEFT JOIN events e ON e.seq = coalesce(r.entry_seq, r.exit_seq) "
            f"WHERE r.kind = ? AND {where} ORDER BY r.id", (kind, *args))
        yield from _chunks(cur, self.chunk)

    def invalidations(self) -> Iterator[list[tuple]]:
        """(entity version, process version, seq, ts_ns, syscall) of each ``invalidated_by``
        attrs row (the analyzer's: an artifact's last name removed), in the selection."""
        if not has_attrs(self.conn):
            return
        rows = []
        for node, value, seq, ts, name in self.conn.execute(
                "SELECT a.node, a.value, a.seq, e.ts_ns, e.name FROM attrs a LEFT JOIN events e "
                "ON e.seq = a.seq WHERE a.key = 'invalidated_by' ORDER BY a.rowid"):
            if not str(value).isdigit() or ts is None or not self.win.lo <= ts <= self.win.hi:
                continue
            if self.nodes is not None and not {node, int(value)} <= self.nodes:
                continue
            rows.append((node, int(value), seq, ts, name))
        yield from _chunks(rows, self.chunk)

    def count(self) -> dict[str, int]:
        where, args = self._rel_where()
        out = dict.fromkeys(RELATION_KINDS, 0)
        for kind, n in self.conn.execute(
                f"SELECT kind, count(*) FROM relations WHERE {where} GROUP BY kind", args):
            out[kind] = n
        out["wasInvalidatedBy"] = sum(len(c) for c in self.invalidations())
        out["activity"] = sum(len(c) for c in self.version_ids(True))
        out["entity"] = sum(len(c) for c in self.version_ids(False))
        out["wasAssociatedWith"] = out["activity"]
        return out


def _chunks(it, n: int) -> Iterator[list]:
    buf: list = []
    for x in it:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def _doc() -> ProvDocument:
    d = ProvDocument()
    # a Namespace caches every QualifiedName made through it: a fresh one per slice keeps
    # memory bounded by the slice, not by the store
    d.add_namespace(Namespace("provisor", NS))
    return d


# -- record builders: each yields ProvDocuments holding records of one PROV type -------------
def _entities(sel: Selection, mid: str) -> Iterator[tuple[ProvDocument, int]]:
    for ids in sel.version_ids(False):
        d = _doc()
        rows = node_attrs(sel.conn, ids)
        for v in Q.describe_nodes(sel.conn, ids).values():
            base = _attrs(**{"prov:label": v["label"],
                             "prov:type": TYPES.get(v["kind"]) or PROVISOR[v["kind"]]},
                          kind=v["kind"], artifact=v["object_id"], version=v["version"])
            # every name of the version's life: a multi-valued attribute (contract rule)
            base += [("provisor:path", p) for p in v.get("names") or ()]
            base += _attrs(dev=v.get("dev"), ino=v.get("ino"), seq=v["seq"], ts_ns=v["ts_ns"],
                           reason=v["reason"], deleted=1 if v.get("deleted") else None,
                           machine=d.valid_qualified_name(mid))
            d.entity(f"{sel.ns}v{v['id']}", _merge(base, rows.get(v["id"], [])))
        yield d, len(ids)


def _activities(sel: Selection, uids: set[int], mid: str,
                unknown: dict[int | None, list[dict]]) -> Iterator[tuple[ProvDocument, int]]:
    for ids in sel.version_ids(True):
        d = _doc()
        rows, cr = node_attrs(sel.conn, ids), creds(sel.conn, ids)
        for v in Q.describe_nodes(sel.conn, ids).values():
            base = _attrs(**{"prov:label": v["label"], "prov:type": TYPES["process"]},
                          process=v["object_id"], version=v["version"], tgid=v.get("tgid"),
                          exe=v.get("exe"), comm=v.get("comm"), uid=v.get("uid"), seq=v["seq"],
                          ts_ns=v["ts_ns"], reason=v["reason"],
                          machine=d.valid_qualified_name(mid))
            base += [("provisor:outcome_unknown", _unknown_text(u))
                     for u in unknown.get(v["id"], ())]
            c = cr.get(v["id"], {})
            d.activity(f"{sel.ns}v{v['id']}", when(v["ts_ns"]), None,
                       _merge(base, rows.get(v["id"], []), c))
            uid = _uid(c, v.get("uid"))
            if uid is not None:
                uids.add(uid)
        yield d, len(ids)


def _uid(c: dict[str, object], fallback: int | None) -> int | None:
    """The uid a process version acts for: its credentials' uid, else the process's."""
    u = c.get("uid")
    return u if isinstance(u, int) else fallback


def _agents(sel: Selection, uids: set[int], info: dict[str, object], mid: str,
            unknown: dict[int | None, list[dict]]) -> Iterator[tuple[ProvDocument, int]]:
    d = _doc()
    who = " on " + str(info["host"]) if info.get("host") else ""
    kern = f" (guest kernel {info['guest_kernel']})" if info.get("guest_kernel") else ""
    d.agent(mid, _attrs(**{"prov:label": f"ring {info.get('ring_uuid') or '?'}{who}{kern}",
                           "prov:type": PROVISOR["machine"]},
                        **{k: info.get(k) for k in ("ring_uuid", "machine_name",
                                                     *MACHINE_KEYS)})
            + [("provisor:outcome_unknown", _unknown_text(u)) for u in unknown.get(None, ())])
    for uid in sorted(uids):
        d.agent(f"{sel.ns}uid{uid}", _attrs(**{"prov:label": f"uid {uid}",
                                                 "prov:type": PROV["Person"]}, uid=uid,
                                              machine=d.valid_qualified_name(mid)))
    yield d, 0


def _associations(sel: Selection) -> Iterator[tuple[ProvDocument, int]]:
    for ids in sel.version_ids(True):
        d = _doc()
        cr = creds(sel.conn, ids)
        for vid, uid in sel.conn.execute(
                "SELECT v.id, p.uid FROM versions v JOIN processes p ON p.id = v.object_id "
                "WHERE v.id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)):
            d.wasAssociatedWith(f"{sel.ns}v{vid}",
                                f"{sel.ns}uid{_uid(cr.get(vid, {}), uid)}",
                                identifier=f"{sel.ns}assoc{vid}")
        yield d, 0


def _relations(sel: Selection, kind: str) -> Iterator[tuple[ProvDocument, int]]:
    for rows in sel.relations(kind):
        d = _doc()
        for rid, src, dst, en, ex, ts, name in rows:
            ident = f"{sel.ns}r{rid}"
            a = _attrs(entry_seq=en, exit_seq=ex, ts_ns=ts, syscall=name)
            s, t = f"{sel.ns}v{src}", f"{sel.ns}v{dst}"
            if kind == "used":
                d.used(s, t, when(ts), identifier=ident, other_attributes=a)
            elif kind == "wasGeneratedBy":
                d.wasGeneratedBy(s, t, when(ts), identifier=ident, other_attributes=a)
            elif kind == "wasInformedBy":
                d.wasInformedBy(s, t, identifier=ident, other_attributes=a)
            else:
                d.wasDerivedFrom(s, t, identifier=ident, other_attributes=a)
        yield d, len(rows)


def documents(sel: Selection | list[Selection]) -> Iterator[tuple[ProvDocument, int]]:
    """The whole export as a sequence of (document slice, records of progress): one PROV
    type after another, each for every machine's selection (the writers splice slices of one
    type into one section)."""
    sels = sel if isinstance(sel, list) else [sel]
    uids: list[set[int]] = [set() for _ in sels]
    info = [machine(s.conn) for s in sels]
    mid = [machine_id(i) for i in info]
    # the pending entries: few (a crash's tail)
    unknown = [Q.unknown_by_version(s.conn) for s in sels]
    for i, s in enumerate(sels):
        yield from _entities(s, mid[i])
    for i, s in enumerate(sels):
        yield from _activities(s, uids[i], mid[i], unknown[i])
    for i, s in enumerate(sels):
        yield from _agents(s, uids[i], info[i], mid[i], unknown[i])
    for s in sels:
        yield from _associations(s)
    for kind in RELATION_KINDS:
        for s in sels:
            yield from _relations(s, kind)
    for s in sels:
        yield from _invalidations(s)


def _invalidations(sel: Selection) -> Iterator[tuple[ProvDocument, int]]:
    """An artifact version whose last name a process removed (unlink, rmdir, replaced by a
    rename) wasInvalidatedBy that process version."""
    for rows in sel.invalidations():
        d = _doc()
        for node, proc, seq, ts, name in rows:
            d.wasInvalidatedBy(f"{sel.ns}v{node}", f"{sel.ns}v{proc}", when(ts),
                               identifier=f"{sel.ns}inv{node}_{seq}",
                               other_attributes=_attrs(exit_seq=seq, ts_ns=ts, syscall=name))
        yield d, len(rows)


# -- writers: splice slices into one document ---------------------------------------------
def _ser(d: ProvDocument, fmt: str, **kw: object) -> str:
    buf = io.StringIO()
    d.serialize(buf, format=fmt, **kw)
    return buf.getvalue()


def write_provn(out: IO[str], slices: Iterator[tuple[ProvDocument, int]],
                tick: Callable[[int], None]) -> None:
    out.write(f"document\n  prefix provisor <{NS}>\n\n")
    for d, n in slices:
        text = _ser(d, "provn")
        lines = text.split("\n")
        i = 0
        while i < len(lines) and (lines[i].strip() in ("", "document")
                                  or lines[i].lstrip().startswith("prefix ")):
            i += 1
        body = "\n".join(lines[i:])
        body = body[:body.rfind("endDocument")].rstrip()
        if body:
            out.write(body + "\n")
        tick(n)
    out.write("endDocument\n")


def write_provjson(out: IO[str], slices: Iterator[tuple[ProvDocument, int]],
                   tick: Callable[[int], None]) -> None:
    out.write('{\n"prefix": ' + json.dumps({"provisor": NS}))
    section, first = None, True
    for d, n in slices:
        data = json.loads(_ser(d, "json"))
        for key, items in data.items():
            if key == "prefix":
                continue
            if key != section:
                if section is not None:
                    out.write("\n}")
                out.write(f',\n{json.dumps(key)}: {{')
                section, first = key, True
            for ident, rec in items.items():
                out.write(("\n" if first else ",\n") + json.dumps(ident) + ": "
                          + json.dumps(rec))
                first = False
        tick(n)
    if section is not None:
        out.write("\n}")
    out.write("\n}\n")


def write_provxml(out: IO[str], slices: Iterator[tuple[ProvDocument, int]],
                  tick: Callable[[int], None]) -> None:
    try:
        from lxml import etree
    except ImportError:
        raise ExportError("prov-xml export needs lxml (pip install 'prov[xml]')") from None
    head_done = False
    for d, n in slices:
        root = etree.fromstring(_ser(d, "xml").encode())
        if not head_done:
            nsdecl = " ".join(f'xmlns:{k}="{v}"' for k, v in root.nsmap.items() if k)
            out.write(f"<?xml version='1.0' encoding='UTF-8'?>\n<prov:document {nsdecl}>\n")
            head_done = True
        for child in root:
            out.write(etree.tostring(child, encoding="unicode").rstrip() + "\n")
        tick(n)
    if not head_done:
        out.write(f"<?xml version='1.0' encoding='UTF-8'?>\n<prov:document "
                  f'xmlns:prov="http://www.w3.org/ns/prov#" xmlns:provisor="{NS}">\n')
    out.write("</prov:document>\n")


def write_rdf(out: IO[str], slices: Iterator[tuple[ProvDocument, int]],
              tick: Callable[[int], None]) -> None:
    try:
        import rdflib  # noqa: F401
    except ImportError:
        raise ExportError("rdf export needs rdflib (pip install 'prov[rdf]')") from None
    with warnings.catch_warnings():  # rdflib deprecations raised inside prov
        warnings.simplefilter("ignore", DeprecationWarning)
        for d, n in slices:
            if d.records:
                out.write(_ser(d, "rdf", rdf_format="turtle"))
            tick(n)


def write_dot(out: IO[str], sels: list[Selection], tick: Callable[[int], None]) -> None:
    out.write("\n".join(["digraph provisor {", *Q._DOT_HEAD, ""]))
    for sel in sels:
        p = Q.dot_prefix(sel.machine) if sel.machine else ""
        if p:
            out.write(f"  subgraph cluster_{p.rstrip('_')} {{\n"
                      f"  label={Q._dq('machine ' + sel.machine)};\n")
        _dot_of(out, sel, p, tick)
        if p:
            out.write("  }\n")
    out.write("}\n")


def _dot_of(out: IO[str], sel: Selection, p: str, tick: Callable[[int], None]) -> None:
    for process in (False, True):
        for ids in sel.version_ids(process):
            for v in Q.describe_nodes(sel.conn, ids).values():
                out.write(f"  {p}v{v['id']} [label={Q._dq(v['label'])}, "
                          f"shape={Q.SHAPES.get(v['kind'], 'ellipse')}];\n")
            tick(len(ids))
    for kind in RELATION_KINDS:
        for rows in sel.relations(kind):
            for _rid, src, dst, *_ in rows:
                out.write(f"  {p}v{src} -> {p}v{dst} [label={Q._dq(kind)}];\n")
            tick(len(rows))
    for rows in sel.invalidations():
        for node, proc, *_ in rows:
            out.write(f"  {p}v{node} -> {p}v{proc} [label=\"wasInvalidatedBy\", "
                      "style=dashed];\n")
        tick(len(rows))


def export(conn: sqlite3.Connection, out: IO[str], fmt: str, win: Q.Window | None = None,
           target: str | None = None, chunk: int = 2000,
           tick: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Write the selected graph of one store to ``out`` in ``fmt``; returns the counts
    written."""
    return export_set([("", conn)], out, fmt, win, target, chunk, tick)


def export_set(parts: list[tuple[str, sqlite3.Connection]], out: IO[str], fmt: str,
               win: Q.Window | None = None, target: str | None = None, chunk: int = 2000,
               tick: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Write the selected graphs of several machines' stores, ``(machine, conn)``, to ``out``
    as one document: each machine's ids qualified by its name (``query.machine_tag``), so no
    record of one is taken for another's. A machine named ``""`` keeps the plain ids (one
    store). With ``target``, the machines where it names nothing are left out."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if chunk < 1:
        raise ExportError("--chunk must be at least 1")
    with ExitStack() as stack:
        sels, missed = [], []
        for m, conn in parts:
            stack.enter_context(reader.snapshot(conn))  # a snapshot while daemons commit
            try:
                sel = Selection(conn, win or Q.Window(), target, m)
            except Q.QueryError as e:
                if len(parts) == 1:
                    raise
                missed.append(f"machine {m}: {e}")
                continue
            sel.chunk = chunk
            sels.append(sel)
        if not sels:
            raise ExportError("; ".join(missed))
        counts: dict[str, int] = {}
        for sel in sels:
            for k, v in sel.count().items():
                counts[k] = counts.get(k, 0) + v
        if fmt == "dot":
            write_dot(out, sels, tick)
        else:
            writer = {"prov-n": write_provn, "prov-json": write_provjson,
                      "prov-xml": write_provxml, "rdf": write_rdf}[fmt]
            writer(out, documents(sels), tick)
    return counts
