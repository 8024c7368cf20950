"""Schema versions: `db upgrade` from empty and from the first release keeps data and builds the models' schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_mariadb
from flask import Flask
from sqlalchemy import Engine, create_engine, inspect, text

from service.config import load_settings
from service.storage import SchemaError, init_storage
from service.storage import schema as schema_module
from support import ROOT, base_env, create_mariadb_database, drop_mariadb_database, run_cli

pytestmark = pytest.mark.timeout(120)

HEAD = schema_module.head_revision()


@pytest.fixture(params=["sqlite", "mariadb"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """A factory of empty databases of one backend; every one is dropped afterwards."""
    created: list[str] = []
    files = iter(range(100))

    def make() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path}/chat-{next(files)}.db"
        need_mariadb()
        url, name = create_mariadb_database()
        created.append(name)
        return url

    make.backend = request.param  # type: ignore[attr-defined]
    yield make
    for name in created:
        drop_mariadb_database(name)


def cli(url: str, *args: str):
    result = run_cli(base_env(DATABASE_URL=url), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def engine_of(url: str) -> Engine:
    return create_engine(url)


def shape(engine: Engine) -> dict:
    """Tables, columns (type, nullability, generated expression), keys and indexes, comparable across builds."""
    insp = inspect(engine)
    result = {}
    for table in sorted(insp.get_table_names()):
        columns = {
            c["name"]: (
                str(c["type"]).split(" COLLATE")[0],
                c["nullable"],
                (c.get("computed") or {}).get("sqltext", "").replace("`", "").lower() or None,
            )
            for c in insp.get_columns(table)
        }
        indexes = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table))
        uniques = sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table))
        foreign = sorted(
            (f["name"], tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(table)
        )
        result[table] = {
            "columns": columns,
            "primary_key": tuple(insp.get_pk_constraint(table)["constrained_columns"]),
            "indexes": indexes,
            "uniques": uniques,
            "foreign_keys": foreign,
        }
    engine.dispose()
    return result


def build_from_models(url: str) -> None:
    """What a server does on an empty database (create_all, views, stamp)."""
    init_storage(Flask("t"), load_settings({"DATABASE_URL": url}, environ={}))


def build_from_schema_sql(url: str) -> None:
    engine = engine_of(url)
    with engine.begin() as conn:
        source = "\n".join(line for line in (ROOT / "sql" / "schema.sql").read_text().splitlines()
                           if not line.startswith("--"))
        for statement in source.split(";"):
            if statement.strip():
                conn.execute(text(statement))
    engine.dispose()


def test_upgrade_from_empty_builds_the_schema_of_the_models_and_schema_sql(new_database) -> None:
    """`db upgrade` on an empty database equals the models' create_all and (MariaDB) sql/schema.sql, at head."""
    upgraded, from_models = new_database(), new_database()
    assert f"upgraded database from revision empty to {HEAD}" in cli(upgraded, "db", "upgrade")
    build_from_models(from_models)
    assert shape(engine_of(upgraded)) == shape(engine_of(from_models))
    if new_database.backend == "mariadb":
        from_sql = new_database()
        build_from_schema_sql(from_sql)
        assert shape(engine_of(upgraded)) == shape(engine_of(from_sql))
    assert f"database: {HEAD}" in cli(upgraded, "db", "current")


def test_schema_sql_is_what_the_models_generate() -> None:
    """sql/schema.sql is the output of `python -m service db schema` (regenerate it after changing the models)."""
    assert (ROOT / "sql" / "schema.sql").read_text() == schema_module.schema_ddl()


FIRST_RELEASE_ROWS = [
    "INSERT INTO agents (user_id, display_name, created_at) VALUES (7, 'Ann', '2026-10-01 08:00:00')",
    "INSERT INTO chat_sessions (id, user_id, agent_id, status, open_flag, created_at, closed_at)"
    " VALUES (1, 100, 7, 'closed', NULL, '2026-10-01 09:00:00', '2026-10-01 09:30:00')",
    "INSERT INTO chat_sessions (id, user_id, agent_id, status, open_flag, created_at, closed_at)"
    " VALUES (2, 101, NULL, 'active', 1, '2026-10-01 10:00:00', NULL)",
    "INSERT INTO chat_messages (session_id, sender_id, sender_role, content, client_msg_id, created_at) VALUES"
    " (1, 100, 'customer', '你好', 'c-1', '2026-10-01 09:00:05'),"
    " (1, 7, 'agent', 'hello', NULL, '2026-10-01 09:00:45'),"
    " (1, 7, 'agent', 'bye', NULL, '2026-10-01 09:20:00'),"
    " (2, 101, 'customer', 'anyone?', NULL, '2026-10-01 10:00:03')",
]


def first_release_database(url: str, versioned: bool) -> None:
    """A database as the first release left it: revision 0001 with rows (unversioned = made by its create_all)."""
    engine = engine_of(url)
    schema_module.upgrade(engine, "0001")
    with engine.begin() as conn:
        for statement in FIRST_RELEASE_ROWS:
            conn.execute(text(statement))
        if not versioned:
            conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()


@pytest.mark.parametrize("versioned", [True, False], ids=["at-0001", "unversioned"])
def test_upgrade_from_the_first_release_keeps_every_row(new_database, versioned: bool) -> None:
    """Rows of revision 0001 survive `db upgrade`; first responses and message counts are back-filled."""
    url, from_models = new_database(), new_database()
    first_release_database(url, versioned)
    settings = load_settings({"DATABASE_URL": url}, environ={})
    with pytest.raises(SchemaError, match="db upgrade"):
        init_storage(Flask("t"), settings)  # the server refuses an old schema instead of half-working on it

    out = cli(url, "db", "upgrade")
    assert f"to {HEAD}" in out
    build_from_models(from_models)
    assert shape(engine_of(url)) == shape(engine_of(from_models))

    engine = engine_of(url)
    with engine.connect() as conn:
        sessions = conn.execute(text(
            "SELECT id, user_id, agent_id, status, created_at, closed_at, first_response_at, close_reason,"
            " created_day FROM chat_sessions ORDER BY id")).all()
        messages = conn.execute(text("SELECT session_id, sender_id, content, client_msg_id FROM chat_messages"
                                     " ORDER BY id")).all()
        hourly = conn.execute(text("SELECT day, hour, sender_role, sender_id, messages FROM chat_message_hourly"
                                   " ORDER BY hour, sender_role")).all()
        agents = conn.execute(text("SELECT user_id, display_name FROM agents")).all()
    engine.dispose()
    assert [tuple(r[:4]) for r in sessions] == [(1, 100, 7, "closed"), (2, 101, None, "active")]
    assert str(sessions[0].first_response_at)[:19] == "2026-10-01 09:00:45"
    assert sessions[1].first_response_at is None and sessions[0].close_reason is None
    assert str(sessions[0].created_day) == "2026-10-01"
    assert [tuple(m) for m in messages] == [(1, 100, "你好", "c-1"), (1, 7, "hello", None), (1, 7, "bye", None),
                                          (2, 101, "anyone?", None)]
    assert [(r.hour, r.sender_role, r.sender_id, r.messages) for r in hourly] == [
        (9, "agent", 7, 2), (9, "customer", 0, 1), (10, "customer", 0, 1)]
    assert [tuple(a) for a in agents] == [(7, "Ann")]
    init_storage(Flask("t"), settings)  # now at head: the server starts


def test_downgrade_to_the_first_release_and_back_keeps_its_rows(new_database) -> None:
    """`db downgrade 0001` then `db upgrade`: the first release's rows are still there."""
    url = new_database()
    first_release_database(url, versioned=True)
    engine = engine_of(url)
    assert schema_module.upgrade(engine) == ("0001", HEAD)
    assert schema_module.downgrade(engine, "0001") == (HEAD, "0001")
    assert schema_module.upgrade(engine) == ("0001", HEAD)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM chat_messages")).scalar() == 4
        assert conn.execute(text("SELECT COUNT(*) FROM chat_sessions")).scalar() == 2
    engine.dispose()


def test_downgrading_below_the_hourly_shards_sums_each_hours_shards_into_one_row(new_database) -> None:
    """Revision 0004 splits the hourly counts per writer; going back to 0003 adds the shards up, and the
    figures survive the round trip."""
    url = new_database()
    build_from_models(url)
    engine = engine_of(url)
    rows = [("2026-10-01", 9, "agent", 7, 0, 2), ("2026-10-01", 9, "agent", 7, 513, 3),
            ("2026-10-01", 9, "customer", 0, 513, 4), ("2026-10-01", 10, "customer", 0, 2, 1)]
    with engine.begin() as conn:
        for day, hour, role, sender, shard, n in rows:
            conn.execute(text("INSERT INTO chat_message_hourly (day, hour, sender_role, sender_id, shard, messages)"
                              " VALUES (:d, :h, :r, :s, :shard, :n)"),
                         {"d": day, "h": hour, "r": role, "s": sender, "shard": shard, "n": n})
    count = "SELECT hour, sender_role, sender_id, messages FROM chat_message_hourly ORDER BY hour, sender_role"
    assert schema_module.downgrade(engine, "0003") == (HEAD, "0003")
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(text(count))] == [
            (9, "agent", 7, 5), (9, "customer", 0, 4), (10, "customer", 0, 1)]
    assert schema_module.upgrade(engine) == ("0003", HEAD)
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(text(count))] == [
            (9, "agent", 7, 5), (9, "customer", 0, 4), (10, "customer", 0, 1)]
        assert {r[0] for r in conn.execute(text("SELECT shard FROM chat_message_hourly"))} == {0}
    engine.dispose()


def test_an_empty_database_is_created_at_head_by_the_server(new_database) -> None:
    """Start-up on an empty database creates the tables and stamps the newest revision (no upgrade needed)."""
    url = new_database()
    build_from_models(url)
    assert schema_module.current_revision(engine_of(url)) == schema_module.head_revision()
    build_from_models(url)  # a second start finds it at head
    if new_database.backend == "mariadb":
        engine = engine_of(url)
        with engine.connect() as conn:
            views = {r[0] for r in conn.execute(text("SHOW FULL TABLES WHERE Table_type = 'VIEW'"))}
        engine.dispose()
        assert views == set(schema_module.view_names())


def test_the_server_refuses_to_start_on_an_old_schema(server_factory, tmp_path: Path) -> None:
    """gunicorn exits (Worker failed to boot) saying to run `db upgrade` when the database is behind."""
    url = f"sqlite:///{tmp_path}/old.db"
    first_release_database(url, versioned=True)
    with pytest.raises(RuntimeError, match=rf"revision 0001 and this version needs {HEAD}: run `python -m service db "
                                           r"upgrade`") as failure:
        server_factory(database_url=url)
    assert "server exited with 3" in str(failure.value)


def test_workers_starting_together_on_an_empty_database_all_boot(server_factory, redis_url: str) -> None:
    """Several workers creating the schema at once: none sees tables without a version and refuses to boot."""
    for _ in range(3):
        url, name = create_mariadb_database()
        try:
            server = server_factory(database_url=url, workers=4, REDIS_URL=redis_url)
            status, body = server.readiness()
            assert status == 200, body
            server.stop()
            assert "refuses" not in server.log() and "Worker failed to boot" not in server.log()
        finally:
            drop_mariadb_database(name)
