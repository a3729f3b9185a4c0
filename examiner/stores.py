"""The stores one examiner command reads: ``--db`` and ``--machine`` resolved to machines.

A store holds one machine (guest), so a graph never spans two: PID 1 of one guest and PID 1 of
another are different processes in different stores, and ancestry cannot cross between them.
``--db`` names a set of stores:

* a SQLite file: one machine (the name in its meta, ``default`` when none was given);
* a directory (what ``provisor fleet`` writes): each ``*.db`` in it, one machine each;
* a ``postgresql://`` URL: every machine's namespace in that database (or the URL's
  ``?machine=``).

``--machine NAME`` keeps one of them; without it, the command runs on every machine of the set
and tags what it prints with the machine's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from examiner import query as Q
from provisor.errors import ProvisorError
from provisor.machine import DEFAULT_MACHINE, check_machine, is_postgres_url
from store import postgres, reader


@dataclass(frozen=True)
class Member:
    """One machine's store: where it is and the name it was collected under."""

    machine: str
    db: str

    def connect(self):  # noqa: ANN201 (sqlite3.Connection or reader.PgConn)
        return Q.connect(self.db, self.machine if is_postgres_url(self.db) else None)


def _sqlite_machine(path: str) -> str:
    conn = Q.connect(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='machine_name'").fetchone()
    finally:
        conn.close()
    return (row[0] if row and row[0] else None) or DEFAULT_MACHINE


def members(db: str, machine: str | None = None) -> list[Member]:
    """The stores of ``db`` (one, or one per machine), restricted to ``machine`` when given;
    a name no store has is an error that lists those there are."""
    if not db:
        raise Q.QueryError("no database given (--db, or [daemon] db in the config)")
    if machine is not None:
        try:
            check_machine(machine)
        except ProvisorError as e:
            raise Q.QueryError(str(e)) from None
    if is_postgres_url(db):
        try:
            names = reader.machines(db)
        except ProvisorError as e:
            raise Q.QueryError(str(e)) from None
        in_url = postgres.split_url(db)[1]
        found = [Member(n, db) for n in names]
        where = postgres.redact(postgres.split_url(db)[0])
        want = machine or in_url
    elif os.path.isdir(db):
        files = sorted(f for f in os.listdir(db) if f.endswith(".db")
                       and os.path.isfile(os.path.join(db, f)))
        found = [Member(_sqlite_machine(p), p) for p in (os.path.join(db, f) for f in files)]
        where, want = db, machine
        seen: dict[str, str] = {}
        for m in found:
            if m.machine in seen:
                raise Q.QueryError(f"{db}: two stores of machine {m.machine} "
                                   f"({seen[m.machine]}, {m.db}): name one with --db")
            seen[m.machine] = m.db
    else:
        found, where, want = [Member(_sqlite_machine(db), db)], db, machine
    if not found:
        raise Q.QueryError(f"{where}: no provisor store in it")
    if want is None:
        return found
    keep = [m for m in found if m.machine == want]
    if not keep:
        raise Q.QueryError(f"{where}: no store of machine {want} (there: "
                           f"{', '.join(m.machine for m in found)})")
    return keep
