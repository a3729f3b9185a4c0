"""ProvMark's method in a real guest: one boot runs every case's control and action (each a
fresh probe process in its own stage dir), the store is split per run, normalized, and the
action run's PROV-JSON elements that its control lacks are the case's difference.

Split: the run's probe process (its execve's argv names the case, the mode and the stage dir),
its descendants, and the non-process nodes they are related to, plus one wasDerivedFrom hop
from those (a file's previous version). The records are those of the store's own
``provisor export --format prov-json``, as an auditor reads it: elements by id, relations whose
ends are in the run.

Normalization: identifiers, times, sequence numbers, pids, object ids and inode numbers are
dropped; the stage dir, the mode word (action/control), ephemeral ports and kernel pipe/socket
numbers in strings are replaced by placeholders; a process's first version is "born" whether
its parent's fork or its own first event made it (a scheduling race). An element is then its PROV type and its
attributes; a relation its type, its attributes and its ends' normal forms. The difference is
the multiset of action records minus the control's.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cases import GROUPS, Case

from provisor import events as E

HERE = Path(__file__).resolve().parent
PROBE_C = HERE / "probe.c"
STAGE = "/stage"
MODES = ("control", "action")

# PROV-JSON record keys naming another record (the relation's ends)
ROLE_KEYS = ("prov:entity", "prov:activity", "prov:agent", "prov:informed", "prov:informant",
             "prov:generatedEntity", "prov:usedEntity", "prov:trigger", "prov:starter",
             "prov:ender", "prov:generation", "prov:usage", "prov:specificEntity",
             "prov:generalEntity", "prov:alternate1", "prov:alternate2", "prov:delegate",
             "prov:responsible", "prov:plan", "prov:collection", "prov:influencee",
             "prov:influencer", "prov:generalEntity", "prov:bundle")
ELEMENT_SECTIONS = ("entity", "activity", "agent")
# attributes that differ between any two runs: identities, times, sequence numbers
VOLATILE = {"prov:time", "prov:startTime", "prov:endTime", "provisor:seq", "provisor:entry_seq",
            "provisor:exit_seq", "provisor:ts_ns", "provisor:tgid", "provisor:pid",
            "provisor:process", "provisor:artifact", "provisor:ino", "provisor:dev",
            "provisor:start_time", "provisor:sk", "provisor:peer", "provisor:object",
            "provisor:node", "provisor:ring", "provisor:machine",
            # attrs naming another record by its version id, or a kernel address
            "provisor:created_by", "provisor:invalidated_by",
            "provisor:endpoint_sk", "provisor:endpoint_peer"}
_VOLATILE_SUFFIX = ("_seq", "_ns", "_time", "_id")


def mode_dir(case: str, mode: str) -> str:
    return f"{STAGE}/{case}-{mode[0]}"


def build_probe(out_dir: Path) -> Path:
    (out_dir / "bin").mkdir(parents=True, exist_ok=True)
    exe = out_dir / "bin" / "probe"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(exe), str(PROBE_C)],
                   check=True, capture_output=True, text=True)
    return exe


def workload(cases: list[Case]) -> str:
    """The guest script: loopback up, then every case's control and action in turn."""
    lines = ["#!/bin/sh", "ifconfig lo 127.0.0.1 up", f"mkdir -p {STAGE}"]
    for c in cases:
        for m in MODES:
            d = mode_dir(c.name, m)
            lines.append(f"mkdir {d}; /bin/probe {c.name} {m} {d}; "
                         f"echo \"fidelity: {c.name} {m} rc=$?\"")
    lines.append('echo "fidelity: done"')
    return "\n".join(lines) + "\n"


@dataclass
class Boot:
    """One guest boot under one producer: the store, its PROV-JSON export, the console."""

    trap: str
    db: str
    doc: dict
    serial: str
    rcs: dict[tuple[str, str], int]
    seconds: float
    runs: dict[tuple[str, str], Run] = field(default_factory=dict)

    def run(self, case: str, mode: str) -> Run:
        return self.runs[(case, mode)]


def provisor(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisor.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def boot(tmp: Path, cases: list[Case], trap: str) -> Boot:
    """Build the probe and the workload, collect one boot under ``trap``, load the result."""
    inc = tmp / "inc"
    build_probe(inc)
    wl = tmp / "fidelity.sh"
    wl.write_text(workload(cases))
    t0 = time.monotonic()
    r = provisor("collect", "--workload", str(wl), "--include", str(inc), "--ring",
                 str(tmp / "f.ring"), "--db", str(tmp / "f.db"), "--serial-log",
                 str(tmp / "f.serial"), "--trap", trap)
    if r.returncode != 0:
        raise RuntimeError(f"collect --trap {trap} failed ({r.returncode}): {r.stderr[-2000:]}")
    return load(tmp, cases, trap, time.monotonic() - t0)


def load(tmp: Path, cases: list[Case], trap: str, seconds: float = 0.0) -> Boot:
    """The store of a collected boot in ``tmp``: export it, read the console, split it."""
    db, out = str(tmp / "f.db"), tmp / "f.json"
    for fmt, path in (("prov-json", out), ("prov-n", tmp / "f.provn")):
        r = provisor("export", "--db", db, "--format", fmt, "-o", str(path))
        if r.returncode != 0:
            raise RuntimeError(f"export --format {fmt} failed: {r.stderr[-2000:]}")
    text = (tmp / "f.serial").read_text(errors="replace")
    rcs = {(m[1], m[2]): int(m[3]) for m in
           re.finditer(r"fidelity: (\S+) (action|control) rc=(\d+)", text)}
    b = Boot(trap, db, json.loads(out.read_text()), text, rcs, seconds)
    split(b, cases)
    return b


# -- the split ----------------------------------------------------------------------------
@dataclass
class Run:
    case: str
    mode: str
    stage: str
    root: int | None  # processes.id of the probe, None when not found
    procs: set[int]  # processes.id of the probe and its descendants
    nodes: set[int]  # version ids in the run
    elements: dict[str, tuple[str, dict]] = field(default_factory=dict)  # id -> (section, rec)
    relations: dict[str, tuple[str, dict]] = field(default_factory=dict)

    # raw views for the pattern checks
    def el(self, ident: str) -> dict:
        return self.elements[ident][1]

    def process_of(self, ident: str) -> int | None:
        """The processes.id an activity is a version of (None: not an activity)."""
        sec, rec = self.elements.get(ident, ("", {}))
        ps = values(rec, "provisor:process")
        return int(ps[0]) if sec == "activity" and ps else None

    def is_root_activity(self, ident: str) -> bool:
        return self.root is not None and self.process_of(ident) == self.root

    def is_child_activity(self, ident: str) -> bool:
        p = self.process_of(ident)
        return p is not None and p in self.procs and p != self.root


def values(rec: dict, key: str) -> list:
    """An attribute's plain values (PROV-JSON gives a value, a typed {"$": v}, or a list)."""
    v = rec.get(key)
    if v is None:
        return []
    vs = v if isinstance(v, list) else [v]
    return [x.get("$") if isinstance(x, dict) else x for x in vs]


def _find_probes(con: sqlite3.Connection, cases: list[Case]) -> dict[tuple[str, str], int]:
    """(case, mode) -> processes.id of the probe process, from its execve's argv."""
    want = {(c.name, m, mode_dir(c.name, m)) for c in cases for m in MODES}
    out: dict[tuple[str, str], int] = {}
    for seq, tgid, payload in con.execute(
            "SELECT seq, tgid, payload FROM events WHERE name = 'execve' AND phase = 'entry' "
            "AND paths LIKE '%probe%'"):
        ev = E.decode(payload, seq)
        argv = ev.argv or []
        if len(argv) >= 4 and tuple(argv[1:4]) in want:
            row = con.execute(
                "SELECT id FROM processes WHERE tgid = ? AND first_seq <= ? AND "
                "(exit_seq IS NULL OR exit_seq >= ?) ORDER BY first_seq DESC LIMIT 1",
                (tgid, seq, seq)).fetchone()
            if row:
                out[(argv[1], argv[2])] = row[0]
    return out


def split(b: Boot, cases: list[Case]) -> None:
    con = sqlite3.connect(f"file:{b.db}?mode=ro", uri=True)
    try:
        roots = _find_probes(con, cases)
        children: dict[int, list[int]] = {}
        for pid, parent in con.execute("SELECT id, parent_id FROM processes"):
            children.setdefault(parent, []).append(pid)
        kinds = dict(con.execute("SELECT id, kind FROM versions"))
        pver: dict[int, list[int]] = {}
        for vid, obj in con.execute("SELECT id, object_id FROM versions WHERE kind='process'"):
            pver.setdefault(obj, []).append(vid)
        adj: dict[int, list[tuple[str, int, bool]]] = {}  # node -> (kind, other, other is dst)
        # the relations, and the invalidations (an artifact's last name removed: attrs rows
        # the export renders as wasInvalidatedBy)
        for kind, src, dst in con.execute(
                "SELECT kind, src, dst FROM relations UNION ALL SELECT 'wasInvalidatedBy', "
                "node, CAST(value AS INTEGER) FROM attrs WHERE key = 'invalidated_by'"):
            adj.setdefault(src, []).append((kind, dst, True))
            adj.setdefault(dst, []).append((kind, src, False))
    finally:
        con.close()
    index = _index(b.doc)
    for c in cases:
        for m in MODES:
            root = roots.get((c.name, m))
            procs: set[int] = set()
            todo = [root] if root is not None else []
            while todo:
                p = todo.pop()
                if p not in procs:
                    procs.add(p)
                    todo += children.get(p, [])
            s0 = {v for p in procs for v in pver.get(p, [])}
            s1 = set(s0)
            for v in s0:
                s1 |= {o for _k, o, _d in adj.get(v, ()) if kinds.get(o) != "process"}
            nodes = set(s1)
            for v in s1 - s0:  # what those were derived from (not what derives from them)
                nodes |= {o for k, o, o_dst in adj.get(v, ()) if k == "wasDerivedFrom"
                          and o_dst and kinds.get(o) != "process"}
            run = Run(c.name, m, mode_dir(c.name, m), root, procs, nodes)
            _select(run, index)
            b.runs[(c.name, m)] = run


def _index(doc: dict) -> tuple[dict, list]:
    elements = {ident: (sec, rec) for sec in ELEMENT_SECTIONS
                for ident, rec in (doc.get(sec) or {}).items()}
    rels = [(sec, ident, rec) for sec, items in doc.items()
            if sec not in ELEMENT_SECTIONS and sec != "prefix" and isinstance(items, dict)
            for ident, rec in items.items()]
    return elements, rels


_VID = re.compile(r"^provisor:v(\d+)$")


def _ends(rec: dict) -> list[str]:
    return [str(v) for k in ROLE_KEYS for v in values(rec, k) if v is not None]


def _select(run: Run, index: tuple[dict, list]) -> None:
    elements, rels = index
    mine = {f"provisor:v{n}" for n in run.nodes}
    for ident in mine:
        if ident in elements:
            run.elements[ident] = elements[ident]
    for sec, ident, rec in rels:
        ends = _ends(rec)
        if not ends or not any(e in mine for e in ends):
            continue
        if all(e in mine or not _VID.match(e) for e in ends):  # the others: agents, extras
            run.relations[ident] = (sec, rec)
            for e in ends:
                if e not in run.elements and e in elements:
                    run.elements[e] = elements[e]


# -- normalization and the difference --------------------------------------------------------
_NUM_IN_TEXT = [(re.compile(r"(pipe|socket|anon_inode):\[\d+\]"), r"\1:[N]"),
                (re.compile(r"\bprocess \d+"), "process N"),
                (re.compile(r"#\d+"), "#N"),
                (re.compile(r":(3[2-9]\d{3}|[4-6]\d{4})\b"), ":EPHEMERAL")]


def _norm_value(v, run: Run):
    if isinstance(v, list):
        return tuple(sorted((_norm_value(x, run) for x in v), key=repr))
    if isinstance(v, dict):
        return ("typed", _norm_value(v.get("$"), run), v.get("type"))
    if isinstance(v, str):
        s = v.replace(run.stage, "$STAGE")
        s = re.sub(r"\b(action|control)\b", "$MODE", s)
        for rx, rep in _NUM_IN_TEXT:
            s = rx.sub(rep, s)
        return s
    return v


def _volatile(key: str) -> bool:
    return key in VOLATILE or key.endswith(_VOLATILE_SUFFIX)


# A process's first version is made by its parent's fork exit, or by the child's own first
# event when the scheduler ran the child before the parent's return was recorded: which one is
# a race, not provenance the action made
_BIRTH = {"first seen", "fork", "vfork", "clone", "clone3"}


def norm_element(run: Run, ident: str) -> tuple:
    sec, rec = run.elements[ident]
    out = []
    for k, v in rec.items():
        if _volatile(k):
            continue
        if sec == "activity" and k == "provisor:reason" and v in _BIRTH:
            v = "$BORN"
        out.append((k, _norm_value(v, run)))
    return (sec, tuple(sorted(out)))


def norm_label(run: Run, ident: str) -> tuple:
    """An element's object and version, normalized: its type and label."""
    sec, rec = run.elements[ident]
    return (sec, _norm_value(rec.get("prov:label", ident), run))


def norm_relation(run: Run, ident: str) -> tuple:
    sec, rec = run.relations[ident]
    attrs, ends = [], []
    for k, v in rec.items():
        if k in ROLE_KEYS:
            ends.append((k, tuple(norm_element(run, str(x)) if str(x) in run.elements
                                  else ("?",) for x in values(rec, k))))
        elif not _volatile(k):
            attrs.append((k, _norm_value(v, run)))
    return (sec, tuple(sorted(attrs)), tuple(sorted(ends)))


@dataclass
class Diff:
    """What the action run has that its control lacks, with the action run's raw records."""

    action: Run
    control: Run
    elements: list[str]  # ids in the action run
    relations: list[str]

    def __bool__(self) -> bool:
        return bool(self.elements or self.relations)

    def rels(self, sec: str) -> list[dict]:
        return [self.action.relations[i][1] for i in self.relations
                if self.action.relations[i][0] == sec]

    def describe(self) -> str:
        out = [f"{len(self.elements)} elements, {len(self.relations)} relations"]
        for i in self.elements:
            sec, rec = self.action.elements[i]
            out.append(f"  + {sec} {i} {rec.get('prov:label', '')}")
        for i in self.relations:
            sec, rec = self.action.relations[i]
            ends = " ".join(f"{k.split(':')[1]}={v}" for k in ROLE_KEYS for v in values(rec, k))
            out.append(f"  + {sec} {ends} {rec.get('provisor:syscall', '')}")
        return "\n".join(out)


def _excess(action: Run, control: Run, norm, ids_a, ids_c) -> list[str]:
    left = Counter(norm(control, i) for i in ids_c)
    out = []
    for i in sorted(ids_a):
        k = norm(action, i)
        if left[k] > 0:
            left[k] -= 1
        else:
            out.append(i)
    return out


def diff(b: Boot, case: str) -> Diff:
    a, c = b.run(case, "action"), b.run(case, "control")
    return Diff(a, c, _excess(a, c, norm_element, a.elements, c.elements),
                _excess(a, c, norm_relation, a.relations, c.relations))


def all_cases() -> list[Case]:
    return [c for g in GROUPS for c in g.cases]
