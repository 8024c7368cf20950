"""sql/schema.sql and the models are one schema: a DBA's database and the service's own agree exactly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pymysql
import pytest
from pymysql.constants import CLIENT

from support import ROOT, Server, create_mariadb_database, drop_mariadb_database, fresh_id

SCHEMA_SQL = ROOT / "sql" / "schema.sql"

pytestmark = pytest.mark.mariadb


def _connect(url: str, multi: bool = False) -> pymysql.Connection:
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname, port=parts.port or 3306, user=parts.username or "root", password=parts.password or "",
        database=parts.path.lstrip("/"), charset="utf8mb4", client_flag=CLIENT.MULTI_STATEMENTS if multi else 0,
    )


def load_schema_sql(url: str, path: Path = SCHEMA_SQL) -> None:
    """Run the file as a DBA would (`mysql db < schema.sql`): all statements, in order."""
    conn = _connect(url, multi=True)
    try:
        with conn.cursor() as cur:
            cur.execute(path.read_text(encoding="utf-8"))
            while cur.nextset():
                pass
        conn.commit()
    finally:
        conn.close()


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Everything about the tables that matters to the service and to reporting, from information_schema."""
    queries = {
        "tables": "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME",
        "columns": "SELECT TABLE_NAME, ORDINAL_POSITION, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, "
        "EXTRA, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION",
        "indexes": "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE "
        "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
        "ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
        "constraints": "SELECT TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE FROM information_schema.TABLE_CONSTRAINTS "
        "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, CONSTRAINT_NAME",
        "foreign_keys": "SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_TABLE_NAME, "
        "REFERENCED_COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
        "WHERE TABLE_SCHEMA = DATABASE() AND REFERENCED_TABLE_NAME IS NOT NULL "
        "ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION",
    }
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            result = {}
            for name, sql in queries.items():
                cur.execute(sql)
                result[name] = list(cur.fetchall())
            return result
    finally:
        conn.close()


def create_from_models(url: str) -> None:
    """The tables exactly as the service creates them on start (an empty database: create, then stamp)."""
    from sqlalchemy import create_engine

    from service.storage import prepare_for_serving
    from service.storage.schema import drop_views

    engine = create_engine(url)
    try:
        prepare_for_serving(engine)
        drop_views(engine)  # the report views are reports.sql's, not schema.sql's
    finally:
        engine.dispose()


def test_schema_sql_equals_the_models(mariadb_database: str) -> None:
    """Columns, types, nullability, defaults, indexes, unique keys, foreign keys and table options all agree."""
    load_schema_sql(mariadb_database)
    from_file = snapshot(mariadb_database)
    models_url, name = create_mariadb_database()
    try:
        create_from_models(models_url)
        from_models = snapshot(models_url)
    finally:
        drop_mariadb_database(name)
    assert {"agents", "chat_sessions", "chat_messages", "alembic_version"} <= {t[0] for t in from_file["tables"]}
    for part in from_models:
        assert from_file[part] == from_models[part], f"sql/schema.sql and the models differ in {part}"


def test_schema_sql_loads_twice_without_error(mariadb_database: str) -> None:
    """Loading the file into a database that already has the tables changes nothing and does not fail."""
    load_schema_sql(mariadb_database)
    before = snapshot(mariadb_database)
    load_schema_sql(mariadb_database)
    assert snapshot(mariadb_database) == before


def test_service_runs_on_a_schema_sql_database(mariadb_database: str, server_factory: Callable[..., Server]) -> None:
    """The real server starts on a database made from schema.sql, adds nothing to it, and carries a message."""
    load_schema_sql(mariadb_database)
    before = snapshot(mariadb_database)
    server = server_factory(database_url=mariadb_database)
    try:
        assert snapshot(mariadb_database) == before
        customer_id = fresh_id()
        session_id = server.open_session(customer_id)
        client = server.client(customer_id)
        client.join(session_id)
        client.say(session_id, "schema 😀 测试")
        frame = client.recv_type("new_message")
        assert frame["message"]["content"] == "schema 😀 测试"
        status, body = server.http("GET", f"/api/sessions/{session_id}/messages")
        assert status == 200 and body["messages"] == [frame["message"]]
        client.close()
    finally:
        server.stop()
