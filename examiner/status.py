"""``provisor status``: one look at the ring, the store, the daemon between them, and the
last verification.

The daemon is found without a pidfile: psutil scans for ``provisor daemon`` processes and
matches their ``--db`` (resolved against their own working directory; no ``--db`` means the
config's default) with ours, so a stale pidfile can never claim a dead daemon is alive.
"""

from __future__ import annotations

import os
import sqlite3

import psutil

from examiner import verify as V
from examiner.query import connect, fmt_ts
from provisor.errors import ProvisorError
from provisor.machine import DEFAULT_MACHINE, is_postgres_url
from store import base, postgres, reader


def ring_status(path: str) -> dict:
    from pmem.cli import ring_summary

    s = ring_summary(path)
    end = s["chain_end"]
    # with nothing unreleased the scan sees no record: the last one written is just before
    # where the chain ends (else the checkpoint)
    last = s["last_seq"] if s["last_seq"] is not None else (
        end["expected_seq"] - 1 if end else s["checkpoint_seq"])
    return {"path": path, "uuid": s["uuid"], "mode": s["mode"], "data_size": s["data_size"],
            "fill": s["fill"], "checkpoint_seq": s["checkpoint_seq"], "last_seq": last,
            "records": sum(s["records"].values()), "lost_total": s["lost_total"],
            "lost_reported": s["lost_reported"],
            "chain_end": s["chain_end"]["reason"] if s["chain_end"] else None}


def db_status(path: str, machine: str | None = None) -> dict:
    conn = connect(path, machine)
    try:
        q = conn.execute
        meta = dict(q("SELECT key, value FROM meta").fetchall())
        lost = q("SELECT max(lost_total), count(*) FROM losses").fetchone()
        counts = base.counts(lambda sql: q(sql).fetchall())
        return {"path": getattr(conn, "path", path), "machine": meta.get("machine_name")
                or DEFAULT_MACHINE, "ring_uuid": meta.get("ring_uuid") or None,
                "applied_seq": int(meta.get("applied_seq") or 0),
                "batches": int(meta.get("batches") or 0), "chain_head": meta.get("chain_head"),
                "events": counts["events"], "relations": counts["relations"],
                "outcome_unknown": counts["outcome_unknown"],
                "lost_reported": lost[0] or 0, "loss_records": lost[1]}
    except sqlite3.DatabaseError as e:
        raise ProvisorError(f"{path}: {e}") from None
    finally:
        conn.close()


def _arg(cmd: list[str], name: str) -> str | None:
    for i, a in enumerate(cmd):
        if a == name and i + 1 < len(cmd):
            return cmd[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _same_store(theirs: str, their_machine: str | None, want: str, machine: str) -> bool:
    """Whether a daemon's ``--db`` (and ``--machine``) is the store we look at: the same file
    (resolved), or the same PostgreSQL database and machine."""
    if is_postgres_url(want) or is_postgres_url(theirs):
        if not (is_postgres_url(want) and is_postgres_url(theirs)):
            return False
        (a, am), (b, _) = postgres.split_url(theirs), postgres.split_url(want)
        return a == b and (their_machine or am or DEFAULT_MACHINE) == machine
    return os.path.realpath(theirs) == os.path.realpath(want)


def find_daemons(db: str, default_db: str, machine: str | None = None) -> list[int]:
    """PIDs of ``provisor daemon`` processes draining into ``db`` (``machine``'s namespace of
    it, for a PostgreSQL URL)."""
    want_m = machine or (postgres.split_url(db)[1] if is_postgres_url(db) else None) \
        or DEFAULT_MACHINE
    out = []
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["pid"] == me or "daemon" not in cmd or not any(
                    "provisor" in a for a in cmd[: cmd.index("daemon")]):
                continue
            theirs = _arg(cmd, "--db") or default_db
            if not is_postgres_url(theirs) and not os.path.isabs(theirs):
                theirs = os.path.join(p.cwd(), theirs)
            if _same_store(theirs, _arg(cmd, "--machine"), db, want_m):
                out.append(p.info["pid"])
        except (psutil.Error, ValueError):
            continue
    return out


def status(db: str, ring: str | None, default_db: str, ring_required: bool = False,
           run_verify: bool = False, machine: str | None = None) -> dict:
    out: dict = {"ring": None, "db": None}
    if ring:
        if os.path.exists(ring):
            out["ring"] = ring_status(ring)
        elif ring_required:
            raise ProvisorError(f"{ring}: no such ring image")
        else:
            out["ring"] = {"path": ring, "absent": True}
    if is_postgres_url(db):
        m = machine or postgres.split_url(db)[1] or DEFAULT_MACHINE
        out["db"] = db_status(db, m) if m in reader.machines(db) else {
            "path": postgres.shown(db, m), "absent": True}
    elif os.path.exists(db):
        out["db"] = db_status(db)
    else:
        out["db"] = {"path": db, "absent": True}
    r, d = out["ring"], out["db"]
    if r and d and not r.get("absent") and not d.get("absent"):
        same = not d["ring_uuid"] or d["ring_uuid"] == r["uuid"]
        out["lag"] = max(r["last_seq"] - d["applied_seq"], 0) if same else None
        out["same_ring"] = same
    pids = find_daemons(db, default_db, machine)
    out["daemon"] = {"alive": bool(pids), "pids": pids}
    if run_verify and not d.get("absent"):
        rep = V.run(db, ring if r and not r.get("absent") else None, machine=machine)
        state = rep.to_json()
    else:
        state = None if is_postgres_url(db) else V.load_state(os.path.abspath(db))
    out["verification"] = _verification(state, d)
    return out


def _verification(state: dict | None, d: dict) -> dict:
    if not state:
        return {"state": "never verified"}
    v = {"state": "ok" if state["ok"] else "TAMPERED",
         "at": fmt_ts(int(state["checked_at"] * 1e9)),
         "batches": state["batches"], "first_finding": (state["findings"] or [None])[0]}
    if not d.get("absent"):
        v["batches_since"] = d["batches"] - state["batches"]
    return v


def render(s: dict) -> str:
    lines = []
    r, d = s["ring"], s["db"]
    if r is None:
        lines.append("ring      (none given)")
    elif r.get("absent"):
        lines.append(f"ring      {r['path']}: absent")
    else:
        lines.append(f"ring      {r['path']} ({r['uuid']}), mode {r['mode']}")
        lines.append(f"          fill {r['fill']:.1%} of {r['data_size']} bytes; checkpoint seq "
                     f"{r['checkpoint_seq']}; last seq {r['last_seq']}; chain end "
                     f"{r['chain_end']}")
        lines.append(f"          lost records {r['lost_total']} (reported {r['lost_reported']})")
    if d.get("absent"):
        lines.append(f"db        {d['path']}: absent")
    else:
        lines.append(f"db        {d['path']}: applied seq {d['applied_seq']}, {d['batches']} "
                     f"batches, {d['events']} events, {d['relations']} relations, "
                     f"{d['outcome_unknown']} outcome unknown, lost {d['lost_reported']}")
        lines.append(f"          chain head {d['chain_head']}")
    if "lag" in s:
        lines.append("lag       " + (f"{s['lag']} records" if s["same_ring"] else
                                     "n/a: the DB belongs to another ring"))
    dm = s["daemon"]
    lines.append("daemon    " + (f"alive (pid {', '.join(map(str, dm['pids']))})" if dm["alive"]
                                 else "not running"))
    v = s["verification"]
    if v["state"] == "never verified":
        lines.append("verified  never (run: provisor verify)")
    else:
        since = (f", {v['batches_since']} batches applied since"
                 if v.get("batches_since") else "")
        lines.append(f"verified  {v['state']} at {v['at']} ({v['batches']} batches{since})"
                     + (f": {v['first_finding']}" if v["first_finding"] else ""))
    return "\n".join(lines)
