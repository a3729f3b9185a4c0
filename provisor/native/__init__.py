"""The daemon's hot loop in C (native.c: ring scan with CRC, event decode; sqlite_rows.c:
the events rows bound into SQLite from their payloads; canon.c: the hash chain's row encoding),
built by the Makefile as ``_native``; the Python code (pmem/layout.py ``scan``,
provisor/events.py ``decode``, store/schema.py ``event_row`` by executemany, store/chain.py
``rows_bin_py`` and ``seq_payloads_py``) is its specification and the fallback. ``mod`` is
None when it is not built, or when ``PROVISOR_NATIVE=0`` asks for the Python code
(bench/daemon.py measures both)."""

from __future__ import annotations

import os
from types import ModuleType

mod: ModuleType | None = None
if os.environ.get("PROVISOR_NATIVE", "1") != "0":
    try:
        from provisor.native import _native as mod
    except ImportError:
        mod = None
