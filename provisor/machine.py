"""Machine names and store locations: what every stage agrees on about "which guest, where".

A machine is the guest a ring's records come from. Its name keys its store: a SQLite file's
meta ``machine_name``, a PostgreSQL namespace ``provisor_<name>``, a file ``<name>.db`` in a
fleet's store directory, and the PROV identifiers of its nodes; so it is safe in all of them.
"""

from __future__ import annotations

import re

from provisor.errors import ProvisorError

MACHINE_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,39}")
DEFAULT_MACHINE = "default"


def check_machine(name: str) -> str:
    if not isinstance(name, str) or not MACHINE_RE.fullmatch(name):
        raise ProvisorError(f"machine name {name!r}: use 1-40 of a-z, 0-9 and _ (a letter or "
                            "digit first)")
    return name


def is_postgres_url(db: str) -> bool:
    """A PostgreSQL store (one database, a namespace per machine), not a SQLite path."""
    return db.startswith(("postgresql://", "postgres://"))
