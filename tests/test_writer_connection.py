"""The message writer's own connections on MariaDB: reconnects, shards of the hourly counts, deadlock retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime

import pymysql
import pytest
from flask import Flask
from sqlalchemy import text

from service.config import load_settings
from service.storage import MessageWriter, NewMessage, Storage, StorageError, init_storage
from service.storage import writer as writer_module
from support import ROOT, fresh_id

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(120)]


@pytest.fixture
def storage(mariadb_database: str) -> Iterator[Storage]:
    settings = load_settings({"DATABASE_URL": mariadb_database},
                             environ={"CHAT_ENV_FILE": str(ROOT / "tests" / "no.env")})
    storage = init_storage(Flask("t"), settings)
    yield storage
    storage.engine.dispose()


def kill(connection_id: int) -> None:
    """What a MariaDB restart or wait_timeout does to an idle client connection."""
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with admin.cursor() as cursor:
        cursor.execute(f"KILL {int(connection_id)}")
    admin.close()


def writer_connection_ids(writer: MessageWriter) -> list[int]:
    ids = []
    for link in writer._connections:
        if link.conn is not None:
            ids.append(link.conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar())
            link.conn.commit()
    return ids


def say(storage: Storage, session_id: int, user_id: int, content: str, role: str = "customer") -> NewMessage:
    return NewMessage(session_id, user_id, role, content, storage.now())


def stored_contents(storage: Storage, session_id: int) -> list[str]:
    with storage.engine.connect() as conn:
        return list(conn.execute(text("SELECT content FROM chat_messages WHERE session_id = :s ORDER BY id"),
                                 {"s": session_id}).scalars())


def test_a_writer_whose_idle_connection_was_closed_reconnects_before_its_next_batch(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection idle past IDLE_PING_SECONDS is pinged first: the message after a kill is stored, not lost."""
    monkeypatch.setattr(writer_module, "IDLE_PING_SECONDS", 0.0)
    user = fresh_id()
    session_id = storage.open_session(user)[0].id
    writer = MessageWriter(storage, concurrency=1)
    try:
        writer.store(say(storage, session_id, user, "before"))
        (connection_id,) = writer_connection_ids(writer)
        kill(connection_id)
        stored = writer.store(say(storage, session_id, user, "after"))
        assert stored.id > 0
        assert writer_connection_ids(writer) != [connection_id]
    finally:
        writer.stop()
    assert stored_contents(storage, session_id) == ["before", "after"]


def test_a_batch_whose_connection_died_in_flight_fails_and_the_next_one_is_stored(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the ping (busy writer), the lost connection fails that batch only: never retried blindly, since
    a COMMIT lost in flight may have been applied; the next batch gets a new connection."""
    monkeypatch.setattr(writer_module, "IDLE_PING_SECONDS", 3600.0)
    user = fresh_id()
    session_id = storage.open_session(user)[0].id
    writer = MessageWriter(storage, concurrency=1)
    try:
        writer.store(say(storage, session_id, user, "first"))
        (connection_id,) = writer_connection_ids(writer)
        kill(connection_id)
        with pytest.raises(StorageError):
            writer.store(say(storage, session_id, user, "lost with its connection"))
        writer.store(say(storage, session_id, user, "third"))
    finally:
        writer.stop()
    assert stored_contents(storage, session_id) == ["first", "third"]


def test_writers_count_in_shards_of_their_own_and_the_sums_are_exact(storage: Storage) -> None:
    """Two writers (two connections) add to different rows of the same hour; summed, they count every message."""
    agent = fresh_id()
    sessions = [storage.open_session(fresh_id())[0].id for _ in range(2)]
    writer = MessageWriter(storage, concurrency=2)
    writer._ensure_started()
    hour = datetime(2026, 11, 2, 15, 30, 0)
    try:
        for n, link in enumerate(writer._connections):  # each writer writes a batch of its own
            message = NewMessage(sessions[n], agent, "agent", f"reply {n}", hour)
            writer._insert(link, [message, message])
        shards = [link.shard for link in writer._connections]
    finally:
        writer.stop()
    assert len(set(shards)) == 2
    with storage.engine.connect() as conn:
        rows = conn.execute(text("SELECT shard, messages FROM chat_message_hourly WHERE sender_id = :a"),
                            {"a": agent}).all()
    assert sorted(rows) == sorted((shard, 2) for shard in shards)


def test_a_batch_the_database_rolls_back_on_a_deadlock_is_written_again(storage: Storage) -> None:
    """InnoDB picks a victim when two transactions wait on each other's session rows (foreign-key checks take
    shared locks, first-response and agent updates exclusive ones): nothing of the victim is stored, so the
    writer writes the batch again instead of answering 消息发送失败."""
    first, second = (storage.open_session(fresh_id())[0] for _ in range(2))
    url = storage.engine.url
    locked, done = threading.Event(), threading.Event()
    outcome: list[str] = []

    def other_transaction() -> None:
        """Heavier than the writer's (so InnoDB rolls the writer back): holds `second`, then asks for `first`."""
        other = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=url.database)
        try:
            with other.cursor() as cursor:
                cursor.executemany("INSERT INTO chat_session_events (session_id, event, created_at)"
                                   " VALUES (%s, 'opened', NOW())", [(second.id,)] * 200)
                cursor.execute("UPDATE chat_sessions SET closed_by = 1 WHERE id = %s", (second.id,))
                locked.set()
                time.sleep(0.5)  # the writer is now waiting for `second`
                cursor.execute("UPDATE chat_sessions SET closed_by = 1 WHERE id = %s", (first.id,))
            other.commit()
            outcome.append("committed")
        except pymysql.err.OperationalError as exc:
            outcome.append(f"rolled back {exc.args[0]}")
        finally:
            other.close()
            done.set()

    writer = MessageWriter(storage, concurrency=1)
    writer._ensure_started()
    link = writer._connections[0]
    batch = [writer_module._Pending(say(storage, s.id, s.user_id, f"to {s.id}")) for s in (first, second)]
    thread = threading.Thread(target=other_transaction)
    thread.start()
    assert locked.wait(10)
    writer._write(link, batch)  # blocks on `second` until InnoDB resolves the deadlock
    thread.join(10)
    writer.stop()
    assert outcome == ["committed"]
    assert [p.result.get(timeout=0).content for p in batch] == [f"to {first.id}", f"to {second.id}"]
    assert stored_contents(storage, first.id) == [f"to {first.id}"]
    assert stored_contents(storage, second.id) == [f"to {second.id}"]


def test_on_mariadb_a_batch_is_one_query_and_all_or_nothing(storage: Storage) -> None:
    """The batch travels as one multi-statement query; when a later statement fails (here the count upsert,
    its table gone), the messages inserted before it are rolled back and the senders hear so."""
    user = fresh_id()
    session_id = storage.open_session(user)[0].id
    writer = MessageWriter(storage, concurrency=1)
    try:
        writer.store(say(storage, session_id, user, "counted"))
        assert writer._connections[0].one_trip
        with storage.engine.begin() as conn:
            conn.execute(text("RENAME TABLE chat_message_hourly TO chat_message_hourly_away"))
        with pytest.raises(StorageError):
            writer.store(say(storage, session_id, user, "not counted, so not stored"))
        with storage.engine.begin() as conn:
            conn.execute(text("RENAME TABLE chat_message_hourly_away TO chat_message_hourly"))
        writer.store(say(storage, session_id, user, "counted again"))
    finally:
        writer.stop()
    assert stored_contents(storage, session_id) == ["counted", "counted again"]


def test_a_message_queued_past_the_timeout_is_refused_and_never_written(storage: Storage) -> None:
    """Its sender has been told 消息发送失败 by then, so writing it later would make a resend a duplicate."""
    user = fresh_id()
    session_id = storage.open_session(user)[0].id
    writer = MessageWriter(storage, concurrency=1, timeout=0.0)  # everything is already too old
    try:
        with pytest.raises(StorageError, match="timed out"):
            writer.store(say(storage, session_id, user, "too late"))
    finally:
        writer.stop()
    assert stored_contents(storage, session_id) == []
