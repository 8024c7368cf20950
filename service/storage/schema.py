"""Schema versions: Alembic migrations, what start-up does with each kind of database, and the report views.

- An empty database: the server creates every table from the models, installs the report views (MySQL and
  MariaDB) and stamps it at the newest revision: nothing to migrate.
- A database at the newest revision: the server starts.
- Anything else (an older revision, or tables from before migrations existed): the server refuses to start
  and says to run `python -m service db upgrade`, which migrates, keeps every row and reinstalls the views.

Revisions live in `migrations/versions/` (NNNN_topic.py, `down_revision` = the previous one). The views in
`sql/reports.sql` are not a revision: they are replaced after every upgrade, so a revision that changes a
column they read only needs the matching edit of that file.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.schema import CreateTable

from .models import db

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
REPORTS_SQL = SQL_DIR / "reports.sql"
# The tables of revision 0001: a database that has them and no alembic_version predates migrations.
FIRST_RELEASE_TABLES = {"agents", "chat_sessions", "chat_messages"}


class SchemaError(RuntimeError):
    """The database's schema is not the one this code needs; the message says what to run."""


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_mysql(engine: Engine) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str | None]:
    """Migrate to `target`, keeping every row; (revision before, revision after). Reinstalls the views at head."""
    before = current_revision(engine)
    if before is None and FIRST_RELEASE_TABLES <= _tables(engine):
        log.info("unversioned database with the first release's tables: stamping 0001")
        _run(engine, lambda config: command.stamp(config, "0001"))
        before = "0001"
    _run(engine, lambda config: command.upgrade(config, target))
    after = current_revision(engine)
    if is_mysql(engine) and after == head_revision():
        install_views(engine)
    return before, after


def downgrade(engine: Engine, target: str) -> tuple[str | None, str | None]:
    before = current_revision(engine)
    if is_mysql(engine):
        drop_views(engine)
    _run(engine, lambda config: command.downgrade(config, target))
    after = current_revision(engine)
    if is_mysql(engine) and after == head_revision():
        install_views(engine)
    return before, after


def stamp(engine: Engine, target: str = "head") -> None:
    _run(engine, lambda config: command.stamp(config, target))


def _run(engine: Engine, action) -> None:
    with engine.begin() as conn:
        action(alembic_config(conn))


def prepare_for_serving(engine: Engine) -> None:
    """Start-up: create an empty database at head, accept one at head, refuse anything else (SchemaError)."""
    head = head_revision()
    tables = _tables(engine)
    if not tables - {"alembic_version"}:
        _create_fresh(engine, head)
        return
    current = current_revision(engine)
    if current == head:
        return
    if current is None:
        raise SchemaError(
            "the database has tables but no schema version (it was created before migrations): "
            "run `python -m service db upgrade` once, then start the server"
        )
    raise SchemaError(
        f"the database schema is at revision {current} and this version needs {head}: "
        "run `python -m service db upgrade`, then start the server"
    )


def _create_fresh(engine: Engine, head: str) -> None:
    """create_all, views and stamp; several workers may race here, and losing the race is fine."""
    for attempt in range(3):
        try:
            db.metadata.create_all(engine, checkfirst=True)
            break
        except (OperationalError, ProgrammingError) as exc:
            if attempt == 2 or "already exists" not in str(exc).lower():
                raise
            log.debug("create_all raced another worker; retrying")
    if is_mysql(engine):
        install_views(engine)
    try:
        with engine.begin() as conn:
            context = MigrationContext.configure(conn)
            if context.get_current_revision() is None:
                context.stamp(ScriptDirectory.from_config(alembic_config()), head)
    except (IntegrityError, OperationalError, ProgrammingError):
        # Another worker stamped first (alembic_version's primary key refuses the second row).
        if current_revision(engine) != head:
            raise
    log.info("created the schema at revision %s", head)


# -- report views ----------------------------------------------------------------------------------------

_VIEW = re.compile(r"^CREATE OR REPLACE VIEW\s+(\w+)", re.MULTILINE)


def view_statements() -> list[str]:
    """The CREATE OR REPLACE VIEW statements of sql/reports.sql, in file order (comments dropped)."""
    source = REPORTS_SQL.read_text(encoding="utf-8").splitlines()
    lines = [line for line in source if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def view_names() -> list[str]:
    return _VIEW.findall(REPORTS_SQL.read_text(encoding="utf-8"))


def install_views(engine: Engine) -> list[str]:
    """(Re)create every report view (MySQL/MariaDB only: the views use their SQL)."""
    if not is_mysql(engine):
        raise SchemaError("the report views are MySQL/MariaDB SQL; on SQLite use the API or `python -m service report`")
    with engine.begin() as conn:
        for statement in view_statements():
            conn.execute(text(statement))
    return view_names()


def drop_views(engine: Engine) -> None:
    with engine.begin() as conn:
        for name in reversed(view_names()):
            conn.execute(text(f"DROP VIEW IF EXISTS {name}"))


# -- sql/schema.sql ---------------------------------------------------------------------------------------

SCHEMA_HEADER = """\
-- The chat service's full schema (MySQL 8 / MariaDB 10.11 DDL), generated from service/storage/models.py
-- by `python -m service db schema > sql/schema.sql`. tests/test_migrations.py proves it equals the schema
-- that `python -m service db upgrade` builds. Do not edit by hand: change the models, add a migration
-- revision (service/storage/migrations/versions/), regenerate this file.
--
-- Times are naive DATETIMEs in APP_TIMEZONE (the legacy convention). The report views are in reports.sql.
-- Schema revision: {head}
"""


def _create_table_with_keys(table, dialect) -> str:
    """CREATE TABLE IF NOT EXISTS with the indexes inside, so the file loads twice on MySQL 8 and MariaDB
    alike (MySQL has no CREATE INDEX IF NOT EXISTS)."""
    ddl = str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)).strip()
    head, _, tail = ddl.rpartition("\n)")
    keys = []
    for index in sorted(table.indexes, key=lambda i: i.name or ""):
        columns = ", ".join(str(expr.compile(dialect=dialect)) if not hasattr(expr, "name") else expr.name
                            for expr in index.expressions)
        keys.append(f"\t{'UNIQUE KEY' if index.unique else 'KEY'} {index.name} ({columns})")
    body = head + "".join(f",\n{key}" for key in keys)
    return body + "\n)" + tail + ";\n"


def schema_ddl() -> str:
    """The models as MySQL DDL, with the alembic_version row of the head revision."""
    from sqlalchemy.dialects import mysql

    dialect = mysql.dialect()
    head = head_revision()
    parts = [SCHEMA_HEADER.format(head=head)]
    for table in db.metadata.sorted_tables:
        parts.append(_create_table_with_keys(table, dialect))
    parts.append(
        "CREATE TABLE IF NOT EXISTS alembic_version (\n\tversion_num VARCHAR(32) NOT NULL,\n"
        "\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n);\n"
        f"INSERT IGNORE INTO alembic_version (version_num) VALUES ('{head}');\n"
    )
    return "\n".join(line.rstrip() for line in "\n".join(parts).splitlines()) + "\n"
