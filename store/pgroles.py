"""Who may read and write a PostgreSQL store: least privilege per machine (docs/SECURITY.md).

Three kinds of role, each granted per namespace (``provisor_<machine>``), never per row:

* the **admin** owns every namespace and its tables: it makes them (:func:`init`, the same
  create path as a daemon's first open), migrates them and grants the others;
* a machine's **daemon role** may do exactly what the apply path does in that machine's
  namespace and nothing else: read its tables, append to the append-only ones, upsert
  ``processes``/``artifacts`` (never their ids), replace ``fds``/``proc_used``/``pending``
  rows, set ``names.unbind_seq`` (that column only), and in ``meta`` advance ``applied_seq``,
  ``chain_head`` and ``batches``, bind a ring and record ``machine`` once (row-level security on
  ``meta``: never ``schema_version``, ``chain_encoding`` or ``machine_name``). No DDL, no
  UPDATE or DELETE of a chained append-only row, nothing in another machine's namespace;
* an **examiner role** may read (USAGE and SELECT) the namespaces it is granted, nothing more.

What a daemon role may still rewrite (``processes``, ``artifacts``, the replaced tables) is
covered by the hash chain's state digests (docs/TAMPER.md); what it may not, the server refuses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

from store import meta, postgres, schema
from store.base import StoreError

# every table of the declaration, by what the apply path does to it (store/postgres.write):
# a new table must be placed here before any role may touch it
APPEND_ONLY = ("events", "versions", "relations", "names", "losses", "notes", "attrs", "chain")
UPSERTED = ("processes", "artifacts")  # INSERT ... ON CONFLICT (id) DO UPDATE
REPLACED = ("fds", "proc_used", "pending")  # DELETE + INSERT, never UPDATE
META = "meta"
assert set(APPEND_ONLY + UPSERTED + REPLACED + (META,)) == set(schema.TABLES)
UPDATED_COLUMNS = {"names": ("unbind_seq",), META: ("value",)}  # beside the upserts' columns

# the meta rows a daemon role may change: each batch's bookkeeping, the ring binding (only
# while the store has no ring, or has not applied a batch: Applier's bind and --force rebind),
# and the one row it adds (meta ``machine``, the first daemon's host and guest kernel)
BATCH_KEYS = ("applied_seq", "chain_head", "batches")
INSERTED_KEYS = ("machine",)


class PgRoleError(StoreError):
    pass


def _sql():  # noqa: ANN202 (psycopg.sql, imported when used: psycopg is optional)
    from psycopg import sql

    return sql


def _ident(*names: str):  # noqa: ANN202 (a psycopg.sql.Identifier)
    return _sql().Identifier(*names)


def daemon_statements(ns: str, role: str) -> list:
    """The GRANTs that let ``role`` apply batches in namespace ``ns`` (psycopg.sql objects)."""
    sql = _sql()
    r = _ident(role)

    def on(table: str):  # noqa: ANN202
        return _ident(ns, table)

    out = [sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(_ident(ns), r)]
    for t in schema.TABLES:  # the apply path reads every table (rebuilding its state)
        out.append(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(on(t), r))
    for t in REPLACED:
        out.append(sql.SQL("GRANT DELETE ON {} TO {}").format(on(t), r))
    cols = {t: tuple(c for c in schema.TABLES[t].cols if c not in schema.TABLES[t].pk)
            for t in UPSERTED}
    cols.update(UPDATED_COLUMNS)
    for t, cs in cols.items():
        out.append(sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(
            sql.SQL(", ").join(map(_ident, cs)), on(t), r))
    return out


def secure_statements(ns: str) -> list:
    """Nothing for PUBLIC in ``ns``; row-level security on ``meta`` (idempotent)."""
    sql = _sql()
    m = _ident(ns, META)
    keys = sql.SQL(", ").join(map(sql.Literal, BATCH_KEYS))
    update = sql.SQL("key IN ({}) OR (key = 'ring_uuid' AND (value = '' OR NOT EXISTS "
                     "(SELECT 1 FROM {})))").format(keys, _ident(ns, "chain"))
    insert = sql.SQL("key IN ({})").format(sql.SQL(", ").join(map(sql.Literal, INSERTED_KEYS)))
    out = [sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(_ident(ns)),
           sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM PUBLIC").format(_ident(ns)),
           sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(m)]
    # policies limit rows; the GRANTs decide who may select, insert or update at all (the
    # owner is exempt: the admin's migrations may still set schema_version)
    for name, rule in (("provisor_read", sql.SQL("FOR SELECT USING (true)")),
                       ("provisor_insert", sql.SQL("FOR INSERT WITH CHECK ({})").format(insert)),
                       ("provisor_update", sql.SQL("FOR UPDATE USING ({0}) WITH CHECK ({0})"
                                                   ).format(update))):
        out.append(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(_ident(name), m))
        out.append(sql.SQL("CREATE POLICY {} ON {} {}").format(_ident(name), m, rule))
    return out


class _Admin:
    """A connection as the admin, every failure one line."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.psycopg = psycopg
        if not postgres.is_url(url):
            raise PgRoleError(f"{url}: roles are PostgreSQL's: give a postgresql:// URL")
        self.url, m = postgres.split_url(url)
        self.url_machine = m
        self.path = postgres.redact(self.url)
        self.conn = postgres.connect(self.url, error=PgRoleError)

    def __enter__(self) -> _Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def one(self, query: str, args: Sequence[object] = ()) -> tuple | None:
        return self.conn.execute(query, tuple(args)).fetchone()

    def run(self, statements: Iterable, what: str) -> None:
        """``statements`` in one transaction."""
        try:
            with self.conn.transaction():
                for s in statements:
                    self.conn.execute(s)
        except self.psycopg.errors.InsufficientPrivilege as e:
            raise PgRoleError(f"{self.path}: {what}: {postgres._first_line(e)} (run it as the "
                              "admin that owns the namespaces, the role `pg init` ran as)"
                              ) from None
        except self.psycopg.Error as e:
            raise PgRoleError(f"{self.path}: {what}: {postgres._first_line(e)}") from None

    def machines(self) -> list[str]:
        """The machines with a store here (their namespaces made, their tables too)."""
        rows = self.conn.execute(
            "SELECT n.nspname FROM pg_namespace n JOIN pg_tables t ON t.schemaname = n.nspname "
            "AND t.tablename = 'chain' WHERE n.nspname LIKE 'provisor\\_%' ORDER BY 1")
        names = [r[0][len("provisor_"):] for r in rows]
        return [m for m in names if meta.MACHINE_RE.fullmatch(m)]

    def store(self, machine: str) -> str:
        ns = postgres.namespace(machine)
        if machine not in self.machines():
            raise PgRoleError(f"{self.path}: no store for machine {machine} (no {ns}): run "
                              f"`provisor pg init --db URL --machine {machine}` first")
        return ns

    def role(self, role: str, bound: bool = True) -> None:
        """``role`` must exist and (``bound``) be limited by grants: no superuser, no
        BYPASSRLS."""
        row = self.one("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (role,))
        if row is None:
            raise PgRoleError(f"{self.path}: no role {role!r} (the admin makes it: CREATE ROLE "
                              f"{role} LOGIN)")
        if bound and (row[0] or row[1]):
            raise PgRoleError(f"{self.path}: role {role} is a superuser or bypasses row-level "
                              "security: no grant can limit it; use an ordinary role")

    def reaches(self, role: str, privilege: str) -> list[str]:
        """The machines on whose namespace (``USAGE``) or chain table (``INSERT``, ...)
        ``role`` holds ``privilege``, directly or through a role it belongs to (by oid: the
        admin needs no USAGE of its own to ask)."""
        test = ("has_schema_privilege(%s, n.oid, 'USAGE')" if privilege == "USAGE" else
                "has_table_privilege(%s, t.oid, %s)")
        args = (role,) if privilege == "USAGE" else (role, privilege)
        rows = self.conn.execute(
            "SELECT n.nspname FROM pg_namespace n JOIN pg_class t ON t.relnamespace = n.oid "
            "AND t.relname = 'chain' AND t.relkind = 'r' WHERE n.nspname LIKE 'provisor\\_%%' "
            f"AND {test} ORDER BY 1", args).fetchall()
        return [r[0][len("provisor_"):] for r in rows]

    def admin_of(self, nss: Sequence[str]) -> None:
        """The connected role must own each namespace (or be a superuser): only the owner may
        grant, enable row-level security and migrate."""
        me, sup = self.one("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = "
                           "current_user", ())
        for ns in nss:
            if not sup and self.owner(ns) != me:
                raise PgRoleError(f"{self.path}: role {me} does not own {ns}: run this as the "
                                  "admin that owns the namespaces (the role `pg init` ran as)")

    def owner(self, ns: str) -> str:
        return self.one("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s",
                        (ns,))[0]


def _one_line(f: Callable) -> Callable:
    """Any server error the steps above did not name: still one line (the CLI's contract)."""
    @functools.wraps(f)
    def run(url: str, *a, **kw):  # noqa: ANN202
        import psycopg

        try:
            return f(url, *a, **kw)
        except psycopg.Error as e:
            where = postgres.redact(postgres.split_url(url)[0])
            raise PgRoleError(f"{where}: {postgres._first_line(e)}") from None
    return run


@_one_line
def init(url: str, machine: str) -> str:
    """As the admin: make machine ``machine``'s namespace and tables (or migrate them), and
    secure them (nothing for PUBLIC, row-level security on ``meta``). Idempotent; needs no
    writer's lock, so it may run beside a daemon. Returns the namespace."""
    ns = postgres.namespace(machine)
    with _Admin(url) as a:
        c = a.conn
        try:
            if a.one("SELECT 1 FROM pg_namespace WHERE nspname = %s", (ns,)) is None:
                postgres.create(c, ns, machine)
            else:
                postgres.migrate(c, ns)
        except a.psycopg.Error as e:
            raise PgRoleError(f"{a.path}: cannot make {ns}: {postgres._first_line(e)} (the "
                              "admin needs CREATE on the database)") from None
        a.run(secure_statements(ns), f"cannot secure {ns}")
    return ns


@_one_line
def grant_daemon(url: str, machine: str, role: str) -> str:
    """As the admin: let ``role`` be machine ``machine``'s daemon (and recovery). Refused for a
    role that already reaches another machine's store: a daemon role is one machine's only."""
    with _Admin(url) as a:
        ns = a.store(machine)
        a.admin_of([ns])
        a.role(role)
        if a.owner(ns) == role:
            raise PgRoleError(f"{a.path}: role {role} owns {ns}: an owner may do anything; the "
                              "daemon role must be another role")
        other = [m for m in a.reaches(role, "USAGE") if m != machine]
        if other:
            raise PgRoleError(f"{a.path}: role {role} already reaches machine {other[0]}'s store"
                              ": a daemon role is one machine's only (use one role per machine)")
        a.run(secure_statements(ns) + daemon_statements(ns, role),
              f"cannot grant {role} on {ns}")
    return ns


@_one_line
def grant_examiner(url: str, role: str, machines: Sequence[str] = ()) -> list[str]:
    """As the admin: let ``role`` read the stores of ``machines`` (every store here when none is
    named; a store made later needs another grant). Refused for a role that may write a store.
    Returns the machines granted."""
    sql = _sql()
    with _Admin(url) as a:
        names = list(machines) or a.machines()
        nss = [a.store(m) for m in names]
        a.admin_of(nss)
        a.role(role)
        writes = a.reaches(role, "INSERT")
        if writes:
            raise PgRoleError(f"{a.path}: role {role} writes machine {writes[0]}'s store: an "
                              "examiner role only reads (use another role)")
        for ns in nss:
            a.run(secure_statements(ns) + [
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(_ident(ns), _ident(role)),
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                    _ident(ns), _ident(role))], f"cannot grant {role} on {ns}")
    return names


@_one_line
def revoke(url: str, role: str, machines: Sequence[str] = ()) -> list[str]:
    """As the admin: take every privilege ``role`` holds on the stores of ``machines`` (every
    store here when none is named). Returns the machines."""
    sql = _sql()
    with _Admin(url) as a:
        names = list(machines) or a.machines()
        nss = [a.store(m) for m in names]
        a.admin_of(nss)
        a.role(role, bound=False)
        for ns in nss:
            a.run([sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(
                       _ident(ns), _ident(role)),
                   sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(_ident(ns), _ident(role))],
                  f"cannot revoke {role} on {ns}")
    return names
