"""``provisor status --fleet FILE``: every guest of a fleet in one look.

Per guest: whether it runs (a QEMU with provisor's plugin on its ring, or a ``collect`` of its
ring), whether a daemon drains its ring, the ring's fill, the store's applied sequence, the lag
(records in the ring the store has not committed yet) and the records the producer lost. Every
figure is read now, from the ring image, the store and the process table.
"""

from __future__ import annotations

import os

import psutil

from examiner.query import connect
from examiner.status import ring_status
from provisor.errors import ProvisorError
from provisor.fleet import Fleet, Guest


def _procs_of(ring: str) -> tuple[list[int], list[int]]:
    """(guest pids, daemon pids) working on ``ring``: a QEMU whose plugin writes it or a
    ``collect`` of it; a ``daemon`` that consumes it."""
    want = os.path.realpath(ring)
    plugin_args = {f"ring={want}", f"ring={os.path.abspath(ring)}"}
    guests, daemons = [], []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if any(plugin_args & set(a.split(",")) for a in cmd):
                guests.append(p.info["pid"])
                continue
            if "--ring" not in cmd:
                continue
            theirs = cmd[cmd.index("--ring") + 1] if cmd.index("--ring") + 1 < len(cmd) else ""
            if not os.path.isabs(theirs):
                theirs = os.path.join(p.cwd(), theirs)
            if os.path.realpath(theirs) != want:
                continue
            if "daemon" in cmd:
                daemons.append(p.info["pid"])
            elif "collect" in cmd:
                guests.append(p.info["pid"])
        except (psutil.Error, ValueError, IndexError):
            continue
    return guests, daemons


def _store(path: str, machine: str) -> dict:
    try:
        conn = connect(path, machine)
    except ProvisorError as e:
        if "no such" in str(e):
            return {"absent": True}
        raise
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        lost, nloss = conn.execute("SELECT max(lost_total), count(*) FROM losses").fetchone()
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return {"ring_uuid": meta.get("ring_uuid") or None,
                "applied_seq": int(meta.get("applied_seq") or 0), "events": events,
                "lost_reported": lost or 0, "loss_records": nloss}
    finally:
        conn.close()


def guest_status(fleet: Fleet, g: Guest) -> dict:
    out: dict = {"machine": g.name, "ring": g.ring, "store": fleet.store_of(g)}
    r = ring_status(g.ring) if os.path.exists(g.ring) else None
    d = _store(fleet.store_of(g), g.name)
    guests, daemons = _procs_of(g.ring)
    out["guest"] = {"running": bool(guests), "pids": guests}
    out["daemon"] = {"alive": bool(daemons), "pids": daemons}
    out["ring_fill"] = None if r is None else r["fill"]
    out["ring_last_seq"] = None if r is None else r["last_seq"]
    out["lost"] = None if r is None else r["lost_total"]
    out["applied_seq"] = None if d.get("absent") else d["applied_seq"]
    out["events"] = None if d.get("absent") else d["events"]
    same = r is not None and not d.get("absent") and d["ring_uuid"] in (None, r["uuid"])
    out["lag"] = max(r["last_seq"] - d["applied_seq"], 0) if same else None
    out["note"] = ("no ring" if r is None else "no store yet" if d.get("absent") else
                   "" if same else "the store belongs to another ring")
    return out


def fleet_status(fleet: Fleet) -> list[dict]:
    return [guest_status(fleet, g) for g in fleet.guests]


def render(rows: list[dict]) -> str:
    head = ("machine", "guest", "daemon", "ring fill", "applied seq", "lag", "lost", "events",
            "note")

    def cell(v: object, fmt: str = "{}") -> str:
        return "-" if v is None else fmt.format(v)

    body = [(r["machine"], "running" if r["guest"]["running"] else "stopped",
             "alive" if r["daemon"]["alive"] else "not running",
             cell(r["ring_fill"], "{:.1%}"), cell(r["applied_seq"]), cell(r["lag"]),
             cell(r["lost"]), cell(r["events"]), r["note"]) for r in rows]
    w = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)).rstrip(),
             "  ".join("-" * x for x in w)]
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(b)).rstrip() for b in body]
    return "\n".join(lines)
