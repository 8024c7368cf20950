"""Schema versions: Alembic migrations, what start-up does with each kind of database, and the report views.

- An empty database (or one holding only other applications' tables, which are never touched): the server
  checks its privileges, creates every table from the models, installs the report views (MySQL and MariaDB)
  and stamps it at the newest revision, all or nothing (a failure removes what it created).
- A database at the newest revision: the server starts (and reinstalls report views that went missing).
- Anything else (an older revision, or our tables from before migrations or a failed start): the server
  refuses to start in one line and says to run `python -m service db upgrade`, which migrates, keeps every
  row and reinstalls the views. Migration steps are idempotent (migrations/steps.py): MySQL commits DDL
  statement by statement, so a revision stopped half-way is finished by running the same command again.

Every name goes through TABLE_PREFIX (naming.py). Revisions live in `migrations/versions/` (NNNN_topic.py,
`down_revision` = the previous one). The views in `sql/reports.sql` are not a revision: they are replaced
after every upgrade, so a revision that changes a column they read only needs the matching edit of that file.
"""

from __future__ import annotations

import fcntl
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Alembic announces its seven plugins (when imported) and its context at INFO on every worker boot: noise.
for _noisy in ("alembic.runtime.plugins", "alembic.runtime.migration"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import Engine, inspect, text  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402
from sqlalchemy.schema import CreateTable  # noqa: E402

from . import naming  # noqa: E402
from .diagnostics import describe_database_error  # noqa: E402
from .models import BASE_NAMES, db  # noqa: E402

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
REPORTS_SQL = SQL_DIR / "reports.sql"
# The tables of revision 0001: a database that has them and no alembic_version predates migrations.
FIRST_RELEASE_TABLES = ("agents", "chat_sessions", "chat_messages")

# MySQL/MariaDB privileges on the service's database, by what is done (README "Running on MySQL / MariaDB").
MIGRATE = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "INDEX", "REFERENCES", "CREATE VIEW")
CREATE_SCHEMA = tuple(p for p in MIGRATE if p != "ALTER")  # DROP: CREATE OR REPLACE VIEW, and undoing a failure
VIEWS = ("SELECT", "DROP", "CREATE VIEW")
GRANT_LINE = "GRANT " + ", ".join(MIGRATE) + " ON <database>.* TO <user>"


class SchemaError(RuntimeError):
    """The database's schema is not the one this code needs, or cannot be changed; one line says what to do."""


def alembic_config(connection=None, progress: Callable | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes["progress"] = progress
    return config


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = scripts().get_current_head()
    assert head is not None
    return head


def _context(conn) -> MigrationContext:
    return MigrationContext.configure(conn, opts={"version_table": naming.name("alembic_version")})


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return _context(conn).get_current_revision()


def is_mysql(engine: Engine) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def our_tables() -> set[str]:
    """Our table names in the database (TABLE_PREFIX applied), the version table included."""
    return {naming.name(base) for base in (*BASE_NAMES.values(), "alembic_version")}


def _tables(engine: Engine) -> set[str]:
    """Our tables present in the database; anything else in it belongs to someone else and is left alone."""
    return set(inspect(engine).get_table_names()) & our_tables()


# A column each of our tables has had since it was created: a table of ours by name without it is someone else's.
SIGNATURE_COLUMNS = {"agents": "user_id", "chat_sessions": "open_flag", "chat_messages": "sender_role"}


def check_not_foreign(engine: Engine, tables: set[str]) -> None:
    """Refuse tables that have our names but not our columns (the PHP server's chat_sessions, say): migrating
    them would alter another application's data."""
    insp = inspect(engine)
    for base, column in SIGNATURE_COLUMNS.items():
        table = naming.name(base)
        if table in tables and column not in {c["name"] for c in insp.get_columns(table)}:
            raise SchemaError(
                f"table {table} exists but is not this service's (it has no {column} column; the PHP server's?): "
                "leave it alone and set TABLE_PREFIX (e.g. TABLE_PREFIX=cs_) so our tables are created beside it"
            )


# -- privileges (MySQL/MariaDB) ----------------------------------------------------------------------------

_GRANT = re.compile(r"^GRANT (.+?) ON (\S+) TO ", re.IGNORECASE)
_ROLE = re.compile(r"^GRANT `[^`]*` TO ", re.IGNORECASE)


def _database_matches(pattern: str, database: str) -> bool:
    """A grant's database part (`chat`, `chat\\_x`, `ch%`) against our database name (GRANT wildcards)."""
    regex = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += "." if c == "_" else ".*" if c == "%" else re.escape(c)
        i += 1
    return re.fullmatch(regex, database) is not None


def missing_privileges(engine: Engine, needed: tuple[str, ...]) -> list[str]:
    """The privileges of `needed` the connecting user lacks on the database ([] when it has them, on SQLite, or
    when roles make SHOW GRANTS inconclusive: then the statements themselves will say)."""
    if not is_mysql(engine):
        return []
    database = engine.url.database or ""
    granted: set[str] = set()
    with engine.connect() as conn:
        lines = [row[0] for row in conn.execute(text("SHOW GRANTS FOR CURRENT_USER()"))]
    if any(_ROLE.match(line) for line in lines):
        return []  # privileges through a role are not listed here: the statements themselves will say
    for line in lines:
        match = _GRANT.match(line)
        if not match:
            continue
        privileges, target = match.groups()
        where = target.split(".", 1)[0].strip("`")
        if target.split(".", 1)[1] != "*" or not (where == "*" or _database_matches(where, database)):
            continue
        for privilege in (p.strip().upper() for p in privileges.split(",")):
            if privilege.startswith("ALL"):
                return []
            granted.add(privilege)
    return [p for p in dict.fromkeys(needed) if p not in granted]


def require_privileges(engine: Engine, needed: tuple[str, ...], doing: str) -> None:
    """Refuse up front, before any statement changes anything, when the user cannot finish `doing`."""
    missing = missing_privileges(engine, needed)
    if missing:
        raise SchemaError(
            f"the database user {engine.url.username}@{engine.url.host} lacks {', '.join(missing)} on database "
            f"{engine.url.database}, needed to {doing}: {GRANT_LINE.replace('<database>', str(engine.url.database))}"
            " (README, Running on MySQL / MariaDB)"
        )


# -- revisions ---------------------------------------------------------------------------------------------


def known_revision(target: str) -> str:
    """`target` as a revision id ('head', 'base' or one of ours); SchemaError naming the known ones otherwise."""
    if target in ("head", "base"):
        return target
    ids = [r for r, _ in history()]
    if target not in ids:
        known = ", ".join(ids)
        raise SchemaError(f"unknown revision {target!r}: the revisions are {known} (or head, base); see `db history`")
    return target


def history() -> list[tuple[str, str]]:
    """(revision, first line of its description), oldest first."""
    return [(r.revision, (r.doc or "").splitlines()[0] if r.doc else "")
            for r in reversed(list(scripts().walk_revisions()))]


def _order(revision: str | None) -> int:
    """Position in the (linear) history: 0 = empty, 1 = 0001, ..."""
    if revision in (None, "base"):
        return 0
    ids = [r for r, _ in history()]
    return len(ids) if revision == "head" else ids.index(revision) + 1


@dataclass(frozen=True)
class DowngradePlan:
    before: str
    target: str
    losses: list[str]  # what the revisions undone drop with their data (their LOSES), newest first


def plan_downgrade(engine: Engine, target: str) -> DowngradePlan:
    """Check a downgrade before anything is touched: a known revision, below the database's."""
    known_revision(target)
    if target == "head":
        raise SchemaError("`db downgrade head` would change nothing: give the revision to go back to (e.g. 0001)")
    before = current_revision(engine)
    if before is None:
        raise SchemaError("the database has no schema version: there is nothing to downgrade")
    if _order(target) >= _order(before):
        raise SchemaError(f"revision {target} is not below the database's revision {before}: "
                          f"use `db upgrade {target}` to go forward")
    losses = []
    for script in scripts().iterate_revisions(before, None if target == "base" else target):
        loss = getattr(script.module, "LOSES", "")
        if loss:
            losses.append(f"{script.revision}: {loss}")
    return DowngradePlan(before, target, losses)


def upgrade(engine: Engine, target: str = "head", progress: Callable | None = None) -> tuple[str | None, str | None]:
    """Migrate to `target`, keeping every row; (revision before, revision after). Reinstalls the views at head.

    Every revision's steps are idempotent (migrations/steps.py): after a failure part-way, the revision is
    still the last one completed and the same command finishes the job.
    """
    known_revision(target)
    before = current_revision(engine)
    if target != "head" and _order(target) < _order(before):
        raise SchemaError(f"revision {target} is below the database's revision {before}: "
                          f"use `db downgrade {target}` to go back")
    require_privileges(engine, MIGRATE, "migrate the schema")
    tables = _tables(engine)
    check_not_foreign(engine, tables)
    if before is None and {naming.name(t) for t in FIRST_RELEASE_TABLES} <= tables:
        log.info("unversioned database with the first release's tables: stamping 0001")
        _run(engine, lambda config: command.stamp(config, "0001"))
        before = "0001"
    _run(engine, lambda config: command.upgrade(config, target), progress)
    after = current_revision(engine)
    if is_mysql(engine) and after == head_revision():
        install_views(engine)
    return before, after


def downgrade(engine: Engine, target: str, progress: Callable | None = None) -> tuple[str | None, str | None]:
    """Migrate back to `target` (checked first: nothing is touched for a bad revision)."""
    plan = plan_downgrade(engine, target)
    require_privileges(engine, MIGRATE, "migrate the schema")
    if is_mysql(engine):
        drop_views(engine)
    try:
        _run(engine, lambda config: command.downgrade(config, target), progress)
    finally:
        after = current_revision(engine)
        if is_mysql(engine) and after == head_revision():
            install_views(engine)  # nothing was undone: the views are back
    return plan.before, after


def stamp(engine: Engine, target: str = "head") -> tuple[str | None, str]:
    """Record `target` as the database's revision without running anything (for a schema loaded by hand)."""
    known_revision(target)
    require_privileges(engine, ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE"), "record the schema revision")
    before = current_revision(engine)
    _run(engine, lambda config: command.stamp(config, target))
    return before, current_revision(engine) or "base"


def _run(engine: Engine, action, progress: Callable | None = None) -> None:
    with engine.begin() as conn:
        action(alembic_config(conn, progress))


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """One process at a time checks and creates the schema: workers (and hosts) start together, and one that
    looked between another's CREATE and its stamp would see tables without a version and refuse to start."""
    if is_mysql(engine):
        lock = f"chat_schema:{engine.url.database}:{naming.prefix()}"[:64]
        with engine.connect() as conn:
            conn.execute(text("SELECT GET_LOCK(:lock, 60)"), {"lock": lock})
            try:
                yield
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:lock)"), {"lock": lock})
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.schema-lock", "a+") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def prepare_for_serving(engine: Engine) -> None:
    """Start-up: create an empty database at head, accept one at head, refuse anything else (SchemaError)."""
    with _schema_lock(engine):
        _prepare(engine)


def _prepare(engine: Engine) -> None:
    head = head_revision()
    tables = _tables(engine)
    if not tables - {naming.name("alembic_version")}:
        _create_fresh(engine, head)
        return
    check_not_foreign(engine, tables)
    current = current_revision(engine)
    if current == head:
        if is_mysql(engine):
            _reinstall_missing_views(engine)
        return
    if current is None:
        raise SchemaError(
            f"the database has tables of this service ({', '.join(sorted(tables))}) but no schema version "
            "(created before migrations, or by a start that failed): run `python -m service db upgrade` once, "
            "then start the server"
        )
    raise SchemaError(
        f"the database schema is at revision {current} and this version needs {head}: "
        "run `python -m service db upgrade`, then start the server"
    )


def _create_fresh(engine: Engine, head: str) -> None:
    """create_all, views and stamp, or nothing: a failure removes what this attempt created, so the database
    is never left with tables and no version."""
    require_privileges(engine, CREATE_SCHEMA if is_mysql(engine) else (), "create the schema")
    existing = _tables(engine)
    try:
        db.metadata.create_all(engine, checkfirst=True)
        if is_mysql(engine):
            install_views(engine)
        with engine.begin() as conn:
            context = _context(conn)
            if context.get_current_revision() is None:
                context.stamp(scripts(), head)
    except SQLAlchemyError as exc:
        reason = describe_database_error(exc)
        try:
            _remove_created(engine, existing)
        except SQLAlchemyError as cleanup:
            raise SchemaError(f"could not create the schema: {reason}; removing the tables it created failed "
                              f"too ({describe_database_error(cleanup)}): drop them, then start again") from None
        raise SchemaError(f"could not create the schema: {reason}; nothing was left behind") from None
    log.info("created the schema at revision %s", head)


def _remove_created(engine: Engine, existing: set[str]) -> None:
    if is_mysql(engine):
        drop_views(engine)
    version = naming.name("alembic_version")
    with engine.begin() as conn:
        if version not in existing:
            conn.execute(text(f"DROP TABLE IF EXISTS {version}"))
    for table in reversed(db.metadata.sorted_tables):
        if table.name not in existing:
            table.drop(engine, checkfirst=True)


def _reinstall_missing_views(engine: Engine) -> None:
    """Views dropped by hand or by an interrupted downgrade come back at start when the user may create them.

    A database with none of them is one a DBA built from sql/schema.sql without sql/reports.sql: the server
    adds nothing to it and says how to install them."""
    missing = missing_views(engine)
    if not missing:
        return
    if len(missing) == len(view_names()):
        log.info("the report views are not installed (a schema loaded by hand?): `python -m service db views` "
                 "installs them")
        return
    lacking = missing_privileges(engine, VIEWS)
    if lacking:
        log.warning("%d report views are missing (%s) and this database user lacks %s to reinstall them: "
                    "run `python -m service db views`", len(missing), ", ".join(missing), ", ".join(lacking))
        return
    try:
        install_views(engine)
    except SQLAlchemyError as exc:
        log.warning("%d report views are missing and reinstalling them failed: %s", len(missing),
                    describe_database_error(exc))
        return
    log.info("reinstalled %d missing report views", len(missing))


# -- report views ----------------------------------------------------------------------------------------

_VIEW = re.compile(r"^CREATE OR REPLACE VIEW\s+(\w+)", re.MULTILINE)


def _prefixed(sql: str) -> str:
    """sql/reports.sql with TABLE_PREFIX applied to every table and view name it mentions."""
    if not naming.prefix():
        return sql
    names = sorted({*BASE_NAMES.values(), *_VIEW.findall(REPORTS_SQL.read_text(encoding="utf-8"))}, key=len,
                   reverse=True)
    return re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b", lambda m: naming.name(m.group(1)), sql)


def view_statements() -> list[str]:
    """The CREATE OR REPLACE VIEW statements of sql/reports.sql, in file order (comments dropped)."""
    source = REPORTS_SQL.read_text(encoding="utf-8").splitlines()
    lines = [line for line in source if not line.lstrip().startswith("--")]
    return [_prefixed(s.strip()) for s in "\n".join(lines).split(";") if s.strip()]


def view_names() -> list[str]:
    return [naming.name(v) for v in _VIEW.findall(REPORTS_SQL.read_text(encoding="utf-8"))]


def missing_views(engine: Engine) -> list[str]:
    present = set(inspect(engine).get_view_names())
    return [name for name in view_names() if name not in present]


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
-- client_msg_id uses MariaDB's utf8mb4_nopad_bin (byte-exact); on MySQL 8 write utf8mb4_0900_bin instead.
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
    dialect.is_mariadb = True  # MariaDB's collation names (ExactString); the DDL is otherwise the same
    head = head_revision()
    version = naming.name("alembic_version")
    parts = [SCHEMA_HEADER.format(head=head)]
    for table in db.metadata.sorted_tables:
        parts.append(_create_table_with_keys(table, dialect))
    parts.append(
        f"CREATE TABLE IF NOT EXISTS {version} (\n\tversion_num VARCHAR(32) NOT NULL,\n"
        "\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n);\n"
        f"INSERT IGNORE INTO {version} (version_num) VALUES ('{head}');\n"
    )
    return "\n".join(line.rstrip() for line in "\n".join(parts).splitlines()) + "\n"
