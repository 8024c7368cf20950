"""The database as an operator meets it: exact privileges, stuck and half-done schemas, mistyped revisions,
foreign tables, TABLE_PREFIX beside the PHP server's tables, the legacy import, byte-exact client_msg_id.

Every test drives the CLI as a subprocess and the server as a real gunicorn, on a real MariaDB (SQLite where
the behaviour is the same on both)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest
from conftest import need_mariadb
from sqlalchemy import create_engine, inspect, text

from service.storage import schema as schema_module
from support import (
    base_env,
    create_mariadb_database,
    drop_mariadb_database,
    fresh_id,
    run_cli,
)

pytestmark = pytest.mark.timeout(180)

HEAD = schema_module.head_revision()
# Exactly the privileges the README documents (section "Running on MySQL / MariaDB").
README_GRANTS = "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, REFERENCES, CREATE VIEW"
OLD_README_GRANTS = "SELECT, INSERT, UPDATE, DELETE, CREATE, INDEX, REFERENCES"
VIEWS = 12


def root() -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """An empty MariaDB database: (root url, name)."""
    need_mariadb()
    url, name = create_mariadb_database()
    yield url, name
    drop_mariadb_database(name)


@pytest.fixture
def user_with() -> Iterator[Callable[[str, str], str]]:
    """A MariaDB user with exactly the given privileges on one database (random name, dropped afterwards)."""
    made: list[str] = []

    def make(database: str, privileges: str) -> str:
        name, password = f"chat_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
        with root().cursor() as cur:
            cur.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'")
            cur.execute(f"CREATE USER '{name}'@'localhost' IDENTIFIED BY '{password}'")
            for host in ("%", "localhost"):
                cur.execute(f"GRANT {privileges} ON `{database}`.* TO '{name}'@'{host}'")
        made.append(name)
        return f"mysql+pymysql://{name}:{password}@127.0.0.1:3306/{database}?charset=utf8mb4"

    yield make
    with root().cursor() as cur:
        for name in made:
            for host in ("%", "localhost"):
                cur.execute(f"DROP USER IF EXISTS '{name}'@'{host}'")


def cli(url: str, *args: str, ok: bool = True, **env: str):
    result = run_cli(base_env(DATABASE_URL=url, **env), *args)
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def tables_and_views(url: str) -> tuple[set[str], set[str]]:
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        return set(insp.get_table_names()), set(insp.get_view_names())
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        return schema_module.current_revision(engine)
    finally:
        engine.dispose()


def sql(url: str, *statements: str) -> list:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = None
            for statement in statements:
                result = conn.execute(text(statement))
            return list(result) if result is not None and result.returns_rows else []
    finally:
        engine.dispose()


def one_line_error(result) -> str:
    """A refusal is one line on stderr, exit 1, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- issue 13 item 2: client_msg_id is byte-exact -------------------------------------------------------------


def test_client_msg_id_differing_in_case_accent_or_trailing_space_is_another_message_on_mariadb(
    server_factory, database
) -> None:
    """A database at 0004 upgraded with `db upgrade`, then over a real WebSocket: "Key-AbC", "key-abc",
    "key-abc " and "kéy-abc" from one user in one session are four messages; only the exact repeat is a
    duplicate (under utf8mb4_unicode_ci the last three were answered duplicate and dropped)."""
    url, _ = database
    engine = create_engine(url)
    schema_module.upgrade(engine, "0004")
    engine.dispose()
    assert f"from revision 0004 to {HEAD}" in cli(url, "db", "upgrade").stdout
    server = server_factory(database_url=url)
    customer = fresh_id()
    session_id = server.open_session(customer)
    client = server.client(customer)
    client.join(session_id)
    answers = {}
    for key in ("Key-AbC", "key-abc", "key-abc ", "kéy-abc", "Key-AbC"):
        client.say(session_id, f"text of {key!r}", client_msg_id=key)
        answer = client.recv_type("new_message")
        answers.setdefault(key, []).append(answer)
    ids = [a[0]["message"]["id"] for a in answers.values()]
    assert len(set(ids)) == 4, answers
    assert [a.get("duplicate", False) for a in answers["Key-AbC"]] == [False, True]
    assert answers["Key-AbC"][1]["message"]["id"] == answers["Key-AbC"][0]["message"]["id"]
    assert all(a[0].get("duplicate", False) is False for a in answers.values())
    stored = sql(url, f"SELECT client_msg_id FROM chat_messages WHERE session_id = {session_id} ORDER BY id")
    assert [r[0] for r in stored] == ["Key-AbC", "key-abc", "key-abc ", "kéy-abc"]


# -- issue 14 item 2: exact privileges, nothing stuck ----------------------------------------------------------


def test_the_readme_documents_exactly_the_privileges_the_code_needs() -> None:
    """The README's GRANT line is the one the privilege check asks for."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"GRANT {README_GRANTS} ON chat.* TO 'chat'@'%';" in readme
    assert ", ".join(dict.fromkeys(schema_module.MIGRATE)) == README_GRANTS


def test_with_exactly_the_readme_grants_the_server_creates_the_schema_and_every_db_command_works(
    server_factory, database, user_with
) -> None:
    """A user with exactly the documented privileges: first start creates tables and views at head (/readyz
    200); downgrade, upgrade, stamp and views all complete."""
    _, name = database
    url = user_with(name, README_GRANTS)
    server = server_factory(database_url=url)
    assert server.readiness()[0] == 200
    server.stop()
    tables, views = tables_and_views(url)
    assert len(views) == VIEWS and "chat_sessions" in tables
    assert revision(url) == HEAD
    cli(url, "db", "downgrade", "0001", "--yes")
    assert revision(url) == "0001"
    cli(url, "db", "upgrade")
    assert revision(url) == HEAD and len(tables_and_views(url)[1]) == VIEWS
    cli(url, "db", "stamp", HEAD)
    cli(url, "db", "views")


def test_with_the_old_readme_grants_the_server_refuses_in_one_line_and_leaves_nothing(
    server_factory, database, user_with
) -> None:
    """Without CREATE VIEW, DROP and ALTER the first start refused half-way (tables, no version, /readyz 500):
    now it names the missing privileges up front, creates nothing, and `db upgrade` does the same."""
    _, name = database
    url = user_with(name, OLD_README_GRANTS)
    with pytest.raises(RuntimeError) as failure:
        server_factory(database_url=url)
    log = str(failure.value)
    assert "lacks DROP, CREATE VIEW" in log and "Traceback" not in log, log
    assert [line for line in log.splitlines() if "lacks" in line][0].count("lacks") == 1
    assert tables_and_views(url) == (set(), set())
    line = one_line_error(cli(url, "db", "upgrade", ok=False))
    assert "lacks DROP, ALTER, CREATE VIEW" in line and f"GRANT {README_GRANTS}" in line
    assert tables_and_views(url) == (set(), set())


def test_a_downgrade_without_alter_is_refused_before_it_drops_anything(database, user_with) -> None:
    """`db downgrade` by a user without ALTER failed half-way with chat_message_hourly dropped: now it is
    refused first; tables, views and revision are untouched."""
    url, name = database
    cli(url, "db", "upgrade")
    before = tables_and_views(url)
    weak = user_with(name, "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, REFERENCES, CREATE VIEW")
    line = one_line_error(cli(weak, "db", "downgrade", "0003", "--yes", ok=False))
    assert "lacks ALTER" in line
    assert tables_and_views(url) == before and revision(url) == HEAD


def test_tables_left_without_a_version_by_a_failed_start_are_finished_by_db_upgrade(server_factory, database) -> None:
    """The stuck state of the old release (every table at head shape, no version, no views): `db upgrade` used
    to fail with `Duplicate column name 'first_response_at'`; now it completes and the server starts."""
    url, _ = database
    engine = create_engine(url)
    schema_module.db.metadata.create_all(engine)
    engine.dispose()
    result = cli(url, "db", "upgrade")
    assert f"to {HEAD}" in result.stdout
    assert revision(url) == HEAD and len(tables_and_views(url)[1]) == VIEWS
    assert server_factory(database_url=url).readiness()[0] == 200


def test_a_revision_that_failed_half_way_is_finished_by_running_db_upgrade_again(database) -> None:
    """MySQL commits each DDL statement: 0002 stopped after its first column leaves the revision at 0001 and
    the column there; the next `db upgrade` skips what is done and completes."""
    url, _ = database
    engine = create_engine(url)
    schema_module.upgrade(engine, "0001")
    engine.dispose()
    sql(url, "ALTER TABLE chat_sessions ADD COLUMN first_response_at DATETIME NULL",
        "ALTER TABLE chat_sessions ADD COLUMN closed_by BIGINT NULL")
    assert revision(url) == "0001"
    cli(url, "db", "upgrade")
    assert revision(url) == HEAD


def test_a_hourly_swap_stopped_between_drop_and_rename_is_completed(database) -> None:
    """0004's swap interrupted after DROP (only chat_message_hourly_next is left): the upgrade renames it."""
    url, _ = database
    engine = create_engine(url)
    schema_module.upgrade(engine, "0003")
    engine.dispose()
    sql(url, "INSERT INTO chat_message_hourly (day, hour, sender_role, sender_id, messages)"
             " VALUES ('2026-10-01', 9, 'agent', 7, 5)",
        "CREATE TABLE chat_message_hourly_next (day DATE NOT NULL, hour SMALLINT NOT NULL,"
        " sender_role VARCHAR(16) NOT NULL, sender_id BIGINT NOT NULL, shard SMALLINT NOT NULL DEFAULT 0,"
        " messages INTEGER NOT NULL, PRIMARY KEY (day, hour, sender_role, sender_id, shard))",
        "INSERT INTO chat_message_hourly_next (day, hour, sender_role, sender_id, messages)"
        " SELECT day, hour, sender_role, sender_id, messages FROM chat_message_hourly",
        "DROP TABLE chat_message_hourly")
    cli(url, "db", "upgrade")
    assert revision(url) == HEAD
    assert sql(url, "SELECT hour, sender_id, shard, messages FROM chat_message_hourly") == [(9, 7, 0, 5)]


# -- issue 14 item 3: downgrade checked first, confirmed, views come back ---------------------------------------


@pytest.mark.parametrize("target", ["9999", "head", "0005x", HEAD])
def test_a_mistyped_downgrade_changes_nothing_and_says_so_in_one_line(database, target: str) -> None:
    """`db downgrade 9999` dropped every report view and printed a 90-line traceback: now one line, exit 1,
    views and revision untouched."""
    url, _ = database
    cli(url, "db", "upgrade")
    before = tables_and_views(url)
    line = one_line_error(cli(url, "db", "downgrade", target, "--yes", ok=False))
    assert target in line or "head" in line
    assert tables_and_views(url) == before and revision(url) == HEAD


def test_a_downgrade_that_drops_data_needs_confirmation(database) -> None:
    """Without a terminal and without --yes a data-dropping downgrade is refused and lists what would go."""
    url, _ = database
    cli(url, "db", "upgrade")
    before = tables_and_views(url)
    result = cli(url, "db", "downgrade", "0001", ok=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "drops data" in result.stderr and "--yes" in result.stderr and "chat_read_states" in result.stderr
    assert tables_and_views(url) == before and revision(url) == HEAD
    assert "downgraded database from revision" in cli(url, "db", "downgrade", "0005", "--yes").stdout
    assert "downgraded database from revision" in cli(url, "db", "downgrade", "0004").stdout  # 0005 drops no data
    assert revision(url) == "0004"


def test_the_server_reinstalls_missing_report_views_at_start(server_factory, database) -> None:
    """Views dropped (by hand, or by an interrupted downgrade) come back when the server starts."""
    url, _ = database
    cli(url, "db", "upgrade")
    sql(url, "DROP VIEW report_sessions_daily", "DROP VIEW report_agent_workload")
    server = server_factory(database_url=url)
    assert server.readiness()[0] == 200
    assert len(tables_and_views(url)[1]) == VIEWS
    assert "reinstalled 2 missing report views" in server.log()


# -- issue 14 item 5: foreign tables -----------------------------------------------------------------------------


def test_a_database_with_other_applications_tables_gets_ours_beside_them(server_factory, database) -> None:
    """Foreign tables made the server refuse (`tables but no schema version`): now ours are created beside
    them at start, `db upgrade` agrees, and the foreign rows are untouched."""
    url, _ = database
    sql(url, "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))", "INSERT INTO users VALUES (1, 'ann')",
        "CREATE TABLE orders (id INT PRIMARY KEY)")
    server = server_factory(database_url=url)
    assert server.readiness()[0] == 200
    server.stop()
    assert revision(url) == HEAD
    assert "database already at revision" in cli(url, "db", "upgrade").stdout
    assert sql(url, "SELECT id, name FROM users") == [(1, "ann")]
    assert {"users", "orders", "chat_sessions"} <= tables_and_views(url)[0]


def test_db_upgrade_on_a_database_with_only_foreign_tables_creates_ours(database) -> None:
    url, _ = database
    sql(url, "CREATE TABLE wp_posts (id INT PRIMARY KEY)")
    assert f"upgraded database from revision empty to {HEAD}" in cli(url, "db", "upgrade").stdout
    assert "wp_posts" in tables_and_views(url)[0]


# -- issue 14 item 11 (database part): the commands ----------------------------------------------------------


def test_db_history_lists_every_revision_and_needs_no_database(tmp_path: Path) -> None:
    result = cli("mysql+pymysql://nobody:x@127.0.0.1:1/none", "db", "history")
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["0001", "0002", "0003", "0004", "0005", "0006"]


def test_db_upgrade_takes_the_revision_positionally_and_stamp_records_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    assert "from revision empty to 0003" in cli(url, "db", "upgrade", "0003").stdout
    assert revision(url) == "0003"
    assert "stamped database at revision 0002 (was 0003)" in cli(url, "db", "stamp", "0002").stdout
    line = one_line_error(cli(url, "db", "stamp", "12", ok=False))
    assert "unknown revision '12'" in line
    assert "upgraded database from revision 0002 to" in cli(url, "db", "upgrade").stdout


def test_db_help_lists_every_command_with_an_uncut_summary() -> None:
    """`db --help` summarises each command in a whole sentence (downgrade's was cut at "(e.g.")."""
    listing = cli("sqlite://", "db", "--help").stdout
    commands = listing.split("Commands:")[1].splitlines()
    summaries = {line.split()[0]: line.split(None, 1)[1] for line in commands if line.strip()}
    assert set(summaries) == {"upgrade", "downgrade", "current", "history", "stamp", "views", "schema"}
    assert all(not s.endswith(("(e.g.", "...")) for s in summaries.values()), summaries


@pytest.mark.parametrize("command", ["upgrade", "downgrade", "current", "history", "stamp", "views", "schema"])
def test_db_help_texts_are_complete(command: str) -> None:
    """Every db command's --help is whole sentences, ending with a full stop."""
    result = cli("sqlite://", "db", command, "--help")
    text_part = result.stdout.split("Options:")[0].strip()
    assert text_part.endswith((".", ")")), text_part


# -- issue 14 item 13 (database part): log noise -------------------------------------------------------------


def test_a_worker_boot_logs_no_alembic_lines_and_a_schema_error_is_one_line(server_factory, tmp_path: Path) -> None:
    """No `alembic.runtime.plugins` INFO lines per boot; an outdated schema is one log line, no traceback."""
    server = server_factory()
    assert server.readiness()[0] == 200
    server.stop()
    assert "alembic" not in server.log()
    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    schema_module.upgrade(engine, "0001")
    engine.dispose()
    with pytest.raises(RuntimeError) as failure:
        server_factory(database_url=url)
    log = str(failure.value)
    assert "Traceback" not in log and "alembic" not in log
    assert sum("needs " + HEAD in line for line in log.splitlines()) == 1, log


# -- issue 14 item 12: progress -------------------------------------------------------------------------------


def test_db_upgrade_back_fills_and_demo_data_report_progress_without_a_terminal(tmp_path: Path) -> None:
    """Not a TTY: plain lines with counts and rate on stderr (a bar on a terminal)."""
    url = f"sqlite:///{tmp_path}/chat.db"
    cli(url, "db", "upgrade", "0001")
    sql(url, "INSERT INTO chat_sessions (id, user_id, status, open_flag, created_at)"
             " VALUES (1, 100, 'active', 1, '2026-10-01 09:00:00')",
        "INSERT INTO chat_messages (session_id, sender_id, sender_role, content, created_at)"
        " VALUES (1, 100, 'customer', 'hi', '2026-10-01 09:00:05')")
    result = cli(url, "db", "upgrade")
    assert "back-filling first responses (sessions): 1/1 (" in result.stderr and "/s" in result.stderr
    assert "back-filling hourly message counts (messages): 1/1" in result.stderr
    demo = cli(url, "demo-data", "--sessions", "50", "--messages", "400", "--days", "3")
    assert "demo-data: messages: 400/400 (" in demo.stderr and " done" in demo.stderr
    report = cli(url, "report", "--from", "2026-01-01", "--to", "2026-12-31")
    assert "report over 365 days: queries: 4/4" in report.stderr


# -- issue 14 item 6: TABLE_PREFIX beside the PHP server's tables, and the legacy import ----------------------

LEGACY = (
    "CREATE TABLE chat_sessions (id INT AUTO_INCREMENT PRIMARY KEY, user_id INT NOT NULL, agent_id INT NULL,"
    " status VARCHAR(20) NOT NULL DEFAULT 'active', created_at DATETIME NOT NULL, closed_at DATETIME NULL)",
    "CREATE TABLE chat_messages (id INT AUTO_INCREMENT PRIMARY KEY, session_id INT NOT NULL, sender_id INT NOT NULL,"
    " content TEXT NOT NULL, created_at DATETIME NOT NULL)",
    "INSERT INTO chat_sessions VALUES (501, 100, 7, 'closed', '2026-10-01 09:00:00', '2026-10-01 09:30:00'),"
    " (502, 101, NULL, 'active', '2026-10-02 10:00:00', NULL)",
    "INSERT INTO chat_messages VALUES (9001, 501, 100, '你好', '2026-10-01 09:00:05'),"
    " (9002, 501, 7, 'hello 😀', '2026-10-01 09:00:45'), (9003, 501, 100, 'bye', '2026-10-01 09:20:00'),"
    " (9004, 502, 101, 'anyone?', '2026-10-02 10:00:03')",
)


def test_our_table_names_taken_by_the_php_server_are_refused_with_a_table_prefix_hint(
    server_factory, database
) -> None:
    """The legacy app's chat_sessions made `db upgrade` fail (`already exists`) or alter its tables: now both
    the server and `db upgrade` refuse in one line that says to set TABLE_PREFIX, and touch nothing."""
    url, _ = database
    sql(url, *LEGACY)
    line = one_line_error(cli(url, "db", "upgrade", ok=False))
    assert "chat_sessions exists but is not this service's" in line and "TABLE_PREFIX" in line
    with pytest.raises(RuntimeError, match="set TABLE_PREFIX"):
        server_factory(database_url=url)
    assert tables_and_views(url) == ({"chat_sessions", "chat_messages"}, set())


def test_with_a_table_prefix_the_legacy_history_is_imported_beside_the_php_tables_and_served(
    server_factory, database
) -> None:
    """TABLE_PREFIX=cs_ in the PHP server's database: `import-legacy` copies its sessions and messages keeping
    their ids (again: nothing twice), the server serves them (replay over WebSocket, the reports, the views
    under the prefix) and stores new messages in cs_ tables; the legacy tables are untouched."""
    url, _ = database
    sql(url, *LEGACY)
    prefix = {"TABLE_PREFIX": "cs_"}
    cli(url, "agent", "add", "7", **prefix)
    first = cli(url, "import-legacy", **prefix)
    assert "imported 2 sessions (0 already there" in first.stdout and "and 4 messages" in first.stdout
    again = cli(url, "import-legacy", **prefix)
    assert "imported 0 sessions (2 already there" in again.stdout and "and 0 messages (4 already" in again.stdout
    tables, views = tables_and_views(url)
    assert {"chat_sessions", "chat_messages", "cs_chat_sessions", "cs_chat_messages", "cs_alembic_version"} <= tables
    assert len(views) == VIEWS and all(v.startswith("cs_report_") for v in views)
    assert sql(url, "SELECT id, sender_id, sender_role, content FROM cs_chat_messages ORDER BY id") == [
        (9001, 100, "customer", "你好"), (9002, 7, "agent", "hello 😀"), (9003, 100, "customer", "bye"),
        (9004, 101, "customer", "anyone?")]
    assert sql(url, "SELECT id, status, open_flag, first_response_at FROM cs_chat_sessions ORDER BY id") == [
        (501, "closed", None, sql(url, "SELECT created_at FROM chat_messages WHERE id = 9002")[0][0]),
        (502, "active", 1, None)]

    server = server_factory(database_url=url, **prefix)
    assert server.readiness()[0] == 200
    customer = server.client(101)
    joined = customer.join(502, last_message_id=0)
    assert joined["replayed"] == 1
    assert customer.recv_type("new_message")["message"]["id"] == 9004
    customer.say(502, "still there?")
    new_id = customer.recv_type("new_message")["message"]["id"]
    assert new_id > 9004
    status, body = server.http("GET", "/api/reports/agents?from=2026-10-01&to=2026-10-02")
    assert status == 200 and [(a["agent_id"], a["messages"]) for a in body["agents"]] == [(7, 1)], body
    assert sql(url, "SELECT COUNT(*) FROM chat_messages")[0][0] == 4  # the PHP server's table, untouched
    assert sql(url, f"SELECT content FROM cs_chat_messages WHERE id = {new_id}") == [("still there?",)]
    assert sql(url, "SELECT sessions_opened FROM cs_report_sessions_daily WHERE day = '2026-10-01'") == [(1,)]
    report = cli(url, "report", "--from", "2026-10-01", "--to", "2026-10-02", "--format", "csv", **prefix)
    assert report.stdout.splitlines()[1].startswith("7,")


def test_import_legacy_names_a_missing_table_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    line = one_line_error(cli(url, "import-legacy", "--sessions-table", "php_sessions", ok=False))
    assert "no table 'php_sessions'" in line


def test_a_first_start_that_fails_part_way_leaves_nothing_behind(server_factory, database) -> None:
    """Creating the schema is all or nothing: when a view cannot be created (here a foreign table holds the
    name report_sessions), the start is refused in one line and the tables it had created are gone, so the
    database is never left with tables and no version."""
    url, _ = database
    sql(url, "CREATE TABLE report_sessions (id INT PRIMARY KEY)")
    with pytest.raises(RuntimeError) as failure:
        server_factory(database_url=url)
    log = str(failure.value)
    assert "could not create the schema" in log and "nothing was left behind" in log and "Traceback" not in log
    assert tables_and_views(url) == ({"report_sessions"}, set())


@pytest.mark.parametrize("build", ["upgrade", "models", "schema.sql"])
def test_client_msg_id_is_byte_exact_however_the_schema_was_built(database, build: str) -> None:
    """`db upgrade`, the server's create_all and sql/schema.sql all give client_msg_id the NO PAD binary
    collation (the shape comparison of test_migrations ignores collations)."""
    url, name = database
    if build == "upgrade":
        cli(url, "db", "upgrade")
    elif build == "models":
        from flask import Flask

        from service.config import load_settings
        from service.storage import init_storage

        init_storage(Flask("t"), load_settings({"DATABASE_URL": url}, environ={}))
    else:
        source = (Path(__file__).resolve().parent.parent / "sql" / "schema.sql").read_text()
        body = "\n".join(line for line in source.splitlines() if not line.startswith("--"))
        sql(url, *[s for s in body.split(";") if s.strip()])
    assert sql(url, "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
                    " AND TABLE_NAME = 'chat_messages' AND COLUMN_NAME = 'client_msg_id'") == [("utf8mb4_nopad_bin",)]
    rows = [f"(1, 100, 'customer', 'x', '{key}', '2026-10-01 09:00:00')"
            for key in ("Key-AbC", "key-abc", "key-abc ", "kéy-abc")]
    sql(url, "INSERT INTO chat_sessions (id, user_id, status, open_flag, created_at)"
             " VALUES (1, 100, 'active', 1, '2026-10-01 09:00:00')",
        "INSERT INTO chat_messages (session_id, sender_id, sender_role, content, client_msg_id, created_at) VALUES "
        + ", ".join(rows))


def test_progress_draws_a_bar_with_counts_and_rate_on_a_terminal() -> None:
    """On a TTY: a redrawn bar (carriage returns) with counts and rate; a newline when done."""
    import io

    from service.storage.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = Progress("copying", 10, stream=screen)
    bar.every = 0
    for _ in range(10):
        bar.advance()
    bar.done()
    out = screen.getvalue()
    assert out.count("\r") == 11 and out.endswith("\n")
    assert "copying: [##############################] 10/10 (" in out and "/s," in out
