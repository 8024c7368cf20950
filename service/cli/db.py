"""`db upgrade|downgrade|current|views|schema`: versioned schema changes (Alembic) and the report views."""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from . import Context, cli, pass_context


def _engine(ctx: Context):
    """The configured database, without the start-up schema check (these commands are how you fix it)."""
    from flask import Flask

    from ..storage import init_storage

    return init_storage(Flask("service-db"), ctx.settings, create_tables=False).engine


def _database_error(exc: Exception) -> click.ClickException:
    return click.ClickException(f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}")


@cli.group()
def db() -> None:
    """Schema versions (migrations) and report views."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_context
def upgrade(ctx: Context, revision: str) -> None:
    """Migrate the database to the newest revision, keeping every row; (re)install the report views."""
    from ..storage import schema

    engine = _engine(ctx)
    try:
        before, after = schema.upgrade(engine, revision)
    except SQLAlchemyError as exc:
        raise _database_error(exc) from None
    if before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"upgraded database from revision {before or 'empty'} to {after}")
    if schema.is_mysql(engine) and after == schema.head_revision():
        click.echo(f"installed {len(schema.view_names())} report views")


@db.command("downgrade")
@click.argument("revision")
@pass_context
def downgrade(ctx: Context, revision: str) -> None:
    """Migrate back to REVISION (e.g. 0001); columns and tables added after it are dropped with their data."""
    from ..storage import schema

    try:
        before, after = schema.downgrade(_engine(ctx), revision)
    except SQLAlchemyError as exc:
        raise _database_error(exc) from None
    click.echo(f"downgraded database from revision {before} to {after or 'empty'}")


@db.command("current")
@pass_context
def current(ctx: Context) -> None:
    """Print the database's revision and the newest one; exit 1 when the database needs `db upgrade`."""
    from ..storage import schema

    try:
        revision = schema.current_revision(_engine(ctx))
    except SQLAlchemyError as exc:
        raise _database_error(exc) from None
    head = schema.head_revision()
    click.echo(f"database: {revision or 'none'}\nnewest:   {head}")
    if revision != head:
        raise SystemExit(1)


@db.command("views")
@pass_context
def views(ctx: Context) -> None:
    """(Re)install the report views of sql/reports.sql (MySQL/MariaDB)."""
    from ..storage import schema

    try:
        names = schema.install_views(_engine(ctx))
    except schema.SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _database_error(exc) from None
    click.echo("installed views: " + ", ".join(names))


@db.command("schema")
def ddl() -> None:
    """Print the full schema as MySQL DDL (what sql/schema.sql holds)."""
    from ..storage import schema

    click.echo(schema.schema_ddl(), nl=False)
