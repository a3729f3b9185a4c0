"""``provisor pg init|grant|revoke``: the admin's side of a PostgreSQL store (store/pgroles).

Run as the role that owns the namespaces (docs/SECURITY.md, "PostgreSQL roles"); the daemons
and examiners then connect as the roles granted here.
"""

from __future__ import annotations

import click

from store import pgroles

_DB = click.option("--db", "url", required=True, metavar="URL",
                   help="postgresql:// URL, connecting as the admin (the namespaces' owner).")


@click.group("pg")
def pg_group() -> None:
    """PostgreSQL stores: make a machine's namespace, grant its roles (as the admin).

    \b
    Example:
      provisor pg init --db postgresql://admin@db/prov --machine web1
      provisor pg grant --db postgresql://admin@db/prov --machine web1 --daemon-role d_web1
      provisor pg grant --db postgresql://admin@db/prov --examiner-role auditor
    """


@pg_group.command("init")
@_DB
@click.option("--machine", required=True, metavar="NAME", help="The machine whose store to make.")
def init_cmd(url: str, machine: str) -> None:
    """Make (or migrate) machine NAME's namespace provisor_NAME and secure it."""
    ns = pgroles.init(url, machine)
    click.echo(f"{ns}: ready (owned by the admin; grant its daemon role next)")


@pg_group.command("grant")
@_DB
@click.option("--machine", "machines", multiple=True, metavar="NAME",
              help="A machine's store (repeatable). --daemon-role needs exactly one; an "
              "examiner role without it reads every store made so far.")
@click.option("--daemon-role", metavar="ROLE", help="Let ROLE apply the machine's batches.")
@click.option("--examiner-role", metavar="ROLE", help="Let ROLE read (SELECT only).")
def grant_cmd(url: str, machines: tuple[str, ...], daemon_role: str | None,
              examiner_role: str | None) -> None:
    """Grant a machine's daemon role, or an examiner role, what it needs and no more."""
    if not daemon_role and not examiner_role:
        raise click.UsageError("give --daemon-role or --examiner-role")
    if daemon_role:
        if len(machines) != 1:
            raise click.UsageError("--daemon-role needs exactly one --machine")
        ns = pgroles.grant_daemon(url, machines[0], daemon_role)
        click.echo(f"{ns}: {daemon_role} may apply machine {machines[0]}'s batches")
    if examiner_role:
        got = pgroles.grant_examiner(url, examiner_role, machines)
        click.echo(f"{examiner_role} may read machines: {', '.join(got) or '(none yet)'}")


@pg_group.command("revoke")
@_DB
@click.option("--machine", "machines", multiple=True, metavar="NAME",
              help="A machine's store (repeatable; default: every store).")
@click.option("--role", required=True, metavar="ROLE", help="The role to take them from.")
def revoke_cmd(url: str, machines: tuple[str, ...], role: str) -> None:
    """Take every privilege ROLE holds on the machines' stores."""
    got = pgroles.revoke(url, role, machines)
    click.echo(f"{role} holds nothing on machines: {', '.join(got) or '(none)'}")


COMMANDS: list[click.Command] = [pg_group]
