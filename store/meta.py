"""The store's ``meta`` table, read and checked in one place.

Every opener (the daemon's and recovery's ``Applier``, and ``query``/``export``/``verify``/
``status`` through ``examiner.query.connect``) reads the meta table through :func:`read`. A
value that is missing, of the wrong type or out of range makes the store *damaged*: one line
(``p.db: damaged store: meta applied_seq is not an integer``) and exit 2, before anything is
written, instead of a traceback somewhere later.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from provisor.errors import ProvisorError
from provisor.machine import DEFAULT_MACHINE, MACHINE_RE, check_machine  # noqa: F401 (re-export)

SCHEMA_VERSION = 1
APP_ID = 0x50524F56  # "PROV": marks a provisor database (PRAGMA application_id)
SEQ_LIMIT = 1 << 63  # sequence numbers, ids and counters fit SQLite's signed 64-bit INTEGER

_UINT = re.compile(r"[0-9]{1,19}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class DamagedStore(ProvisorError):
    """The file is a provisor store, but its bookkeeping is not what provisor writes."""


@dataclass(frozen=True)
class Meta:
    schema_version: int
    ring_uuid: str
    applied_seq: int
    chain_head: bytes
    batches: int
    chain_encoding: str
    raw: dict[str, object]
    machine: str = DEFAULT_MACHINE  # meta machine_name (a store made before it: "default")


def read(conn: sqlite3.Connection, path: str) -> Meta:
    """The checked meta of the provisor store on ``conn``; DamagedStore (or ProvisorError for
    a file that is no provisor store at all) otherwise. Reads only."""
    try:
        app = conn.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e):
            raise ProvisorError(f"{path}: not a SQLite database") from None
        raise
    if app != APP_ID:
        raise ProvisorError(f"{path}: not a provisor database")
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            raise DamagedStore(f"{path}: damaged store: no meta table") from None
        raise
    return check(rows, path)


def check(rows: list[tuple], path: str) -> Meta:
    """The meta rows (key, value) of any backend, checked."""
    raw: dict[str, object] = {k: v for k, v in rows}

    def bad(key: str, what: str) -> DamagedStore:
        return DamagedStore(f"{path}: damaged store: meta {key} {what}")

    def text(key: str, default: str | None = None) -> str:
        if key not in raw:
            if default is not None:
                return default
            raise bad(key, "is missing")
        v = raw[key]
        if not isinstance(v, str):
            raise bad(key, f"is not text (a {type(v).__name__})")
        return v

    def count(key: str) -> int:
        v = text(key)
        if not _UINT.fullmatch(v) or int(v) >= SEQ_LIMIT:
            raise bad(key, f"is not an integer in 0..2^63-1 ({v[:40]!r})")
        return int(v)

    ver = count("schema_version")
    if ver > SCHEMA_VERSION:
        raise ProvisorError(f"{path}: schema version {ver} is newer than this provisor")
    head = text("chain_head")
    if not _HEX64.fullmatch(head):
        raise bad("chain_head", f"is not 64 hex digits ({head[:40]!r})")
    machine = text("machine_name", DEFAULT_MACHINE)
    if not MACHINE_RE.fullmatch(machine):
        raise bad("machine_name", f"is not a machine name ({machine[:40]!r})")
    return Meta(ver, text("ring_uuid"), count("applied_seq"), bytes.fromhex(head),
                count("batches"), text("chain_encoding", "1"), raw, machine)
