"""`db upgrade|downgrade|current|history|stamp|views|schema`: versioned schema changes (Alembic), report views."""

from __future__ import annotations

import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from . import Context, cli, pass_context


def _engine(ctx: Context):
    """The configured database, without the start-up schema check (these commands are how you fix it)."""
    from flask import Flask

    from ..storage import init_storage

    return init_storage(Flask("service-db"), ctx.settings, create_tables=False).engine


def _database_error(exc: Exception) -> click.ClickException:
    from ..storage.diagnostics import describe_database_error

    return click.ClickException(f"database error: {describe_database_error(exc)}")


def _progress():
    from ..storage.progress import Progress

    return Progress.to_stderr


class _Failure:
    """Turn the storage layer's refusals and database errors into one line and exit 1 (no traceback)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, _tb) -> bool:
        from ..storage.schema import SchemaError

        if isinstance(exc, SchemaError):
            raise click.ClickException(str(exc)) from None
        if isinstance(exc, SQLAlchemyError):
            raise _database_error(exc) from None
        return False


@cli.group()
def db() -> None:
    """Schema versions (Alembic migrations) and the report views.

    \b
    python -m service db upgrade          migrate to the newest revision (keeps every row)
    python -m service db upgrade 0003     migrate up to revision 0003 only
    python -m service db downgrade 0001   go back to 0001 (asks first: it drops data)
    python -m service db current          the database's revision vs the newest (exit 1: upgrade due)
    python -m service db history          every revision, oldest first
    python -m service db stamp head       record a revision without running it (schema loaded by hand)
    python -m service db views            (re)install the report views (MySQL/MariaDB)
    python -m service db schema           the full DDL, what sql/schema.sql holds
    """


@db.command("upgrade", short_help="Migrate up to REVISION (default: the newest).")
@click.argument("revision", required=False, default=None)
@click.option("--revision", "revision_option", default=None, hidden=True, help="Same as REVISION (old spelling).")
@pass_context
def upgrade(ctx: Context, revision: str | None, revision_option: str | None) -> None:
    """Migrate the database up to REVISION (default: head, the newest), keeping every row.

    An empty database gets the whole schema; one made by the first release (tables, no version) is stamped
    0001 and migrated. At head the report views are (re)installed (MySQL/MariaDB). Every step can be run
    again: after a failure (e.g. a missing privilege), fix the cause and run the same command.
    Needs SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, REFERENCES and CREATE VIEW.
    """
    from ..storage import schema

    target = revision or revision_option or "head"
    with _Failure():
        engine = _engine(ctx)
        before, after = schema.upgrade(engine, target, progress=_progress())
    if before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"upgraded database from revision {before or 'empty'} to {after}")
    if schema.is_mysql(engine) and after == schema.head_revision():
        click.echo(f"installed {len(schema.view_names())} report views")


@db.command("downgrade", short_help="Migrate back to REVISION (asks before dropping data).")
@click.argument("revision")
@click.option("--yes", "-y", is_flag=True, help="Do not ask: confirm a downgrade that drops data (for scripts).")
@pass_context
def downgrade(ctx: Context, revision: str, yes: bool) -> None:
    """Migrate back to REVISION, such as 0001 (base: an empty database), asking before data is dropped.

    The revision is checked before anything is touched. Tables and columns added after REVISION are dropped
    with their data: the command lists what would go and asks for confirmation on a terminal; scripts
    pass --yes (without a terminal and without --yes it refuses). The report views are dropped too; `db
    upgrade` brings everything back (the dropped data excepted).
    """
    from ..storage import schema

    with _Failure():
        engine = _engine(ctx)
        plan = schema.plan_downgrade(engine, revision)
        if plan.losses and not yes:
            listing = "".join(f"\n  {loss}" for loss in plan.losses)
            if not sys.stdin.isatty():
                raise click.ClickException(
                    f"downgrading from {plan.before} to {revision} drops data:{listing}\n"
                    "refusing without a terminal to confirm: add --yes")
            click.echo(f"downgrading from {plan.before} to {revision} drops data:{listing}", err=True)
            if not click.confirm("Downgrade?", default=False, err=True):
                raise click.ClickException("downgrade cancelled; nothing was changed")
        before, after = schema.downgrade(engine, revision, progress=_progress())
    click.echo(f"downgraded database from revision {before} to {after or 'empty'}")


@db.command("current", short_help="The database's revision vs the newest one.")
@pass_context
def current(ctx: Context) -> None:
    """Print the database's revision and the newest one; exit 1 when the database needs `db upgrade`."""
    from ..storage import schema

    with _Failure():
        revision = schema.current_revision(_engine(ctx))
    head = schema.head_revision()
    click.echo(f"database: {revision or 'none'}\nnewest:   {head}")
    if revision != head:
        raise SystemExit(1)


@db.command("history", short_help="Every schema revision, oldest first.")
def history() -> None:
    """List every schema revision, oldest first, with what it changes (no database needed)."""
    from ..storage import schema

    for revision, doc in schema.history():
        click.echo(f"{revision}  {doc}")


@db.command("stamp", short_help="Record a revision without migrating.")
@click.argument("revision", default="head")
@pass_context
def stamp(ctx: Context, revision: str) -> None:
    """Record REVISION (default head) as the database's revision without running any migration.

    For a schema a DBA created by hand from sql/schema.sql (which stamps itself) or restored from a dump
    without its alembic_version table. Stamping a revision the tables do not match makes later upgrades
    fail: check with `db current` and the DDL of `db schema` first.
    """
    from ..storage import schema

    with _Failure():
        before, after = schema.stamp(_engine(ctx), revision)
    click.echo(f"stamped database at revision {after} (was {before or 'none'})")


@db.command("views", short_help="(Re)install the report views (MySQL/MariaDB).")
@pass_context
def views(ctx: Context) -> None:
    """(Re)install the report views of sql/reports.sql (MySQL/MariaDB; needs CREATE VIEW and DROP)."""
    from ..storage import schema

    with _Failure():
        names = schema.install_views(_engine(ctx))
    click.echo("installed views: " + ", ".join(names))


@db.command("schema", short_help="Print the full schema as MySQL DDL.")
@pass_context
def ddl(ctx: Context) -> None:
    """Print the full schema as MySQL DDL (what sql/schema.sql holds), with TABLE_PREFIX applied."""
    from ..storage import schema
    from ..storage.models import apply_table_prefix

    apply_table_prefix(ctx.settings.table_prefix)
    click.echo(schema.schema_ddl(), nl=False)
