"""The message writer isolates a row the database or the driver refuses: its batch neighbours are stored.

These rows are made below the validators (straight into MessageWriter.store), as a value the validators do not
know about yet would reach the writer: on SQLite and on MariaDB (whose batch is one multi-statement query).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import gevent
import pytest
from flask import Flask
from sqlalchemy import text

from service.config import load_settings
from service.storage import MessageWriter, NewMessage, Storage, StorageError, init_storage
from service.storage.writer import DuplicateMessage
from support import ROOT, fresh_id

pytestmark = pytest.mark.timeout(120)

HOUR = datetime(2026, 11, 3, 10, 15, 0)


@pytest.fixture(params=["sqlite", "mariadb"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "mariadb":
        request.applymarker(pytest.mark.mariadb)
        url = request.getfixturevalue("mariadb_database")
    else:
        url = f"sqlite:///{tmp_path}/chat.db"
    settings = load_settings({"DATABASE_URL": url}, environ={"CHAT_ENV_FILE": str(ROOT / "tests" / "no.env")})
    storage = init_storage(Flask("t"), settings)
    yield storage
    storage.engine.dispose()


def store_together(writer: MessageWriter, messages: list[NewMessage]) -> list[object]:
    """Store every message from its own greenlet, all queued before the writer runs: one batch. Each result is
    the stored record or the exception its sender got."""

    def one(message: NewMessage) -> object:
        try:
            return writer.store(message)
        except Exception as exc:  # what the sender hears
            return exc

    greenlets = [gevent.spawn(one, m) for m in messages]
    gevent.joinall(greenlets, timeout=60, raise_error=True)
    return [g.value for g in greenlets]


def stored(storage: Storage, session_ids: list[int]) -> list[tuple[int, str]]:
    with storage.engine.connect() as conn:
        rows = conn.execute(text("SELECT session_id, content FROM chat_messages ORDER BY id")).all()
    return [(s, c) for s, c in rows if s in session_ids]


def hourly_total(storage: Storage, role: str) -> int:
    with storage.engine.connect() as conn:
        return int(conn.execute(text("SELECT COALESCE(SUM(messages), 0) FROM chat_message_hourly "
                                     "WHERE sender_role = :r AND day = :d"), {"r": role, "d": HOUR.date()}).scalar())


POISONS = {
    "content the driver cannot encode (lone surrogate)": {"content": "\ud800"},
    "client_msg_id the driver cannot encode": {"content": "ok", "client_msg_id": "key-\udfff"},
    "sender id out of the column's range": {"content": "ok", "sender_id": 2**64},
}


@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS.keys())
def test_a_refused_row_fails_alone_and_every_neighbour_in_its_batch_is_stored(
        storage: Storage, poison: dict, caplog: pytest.LogCaptureFixture) -> None:
    """30 senders and one poison row in one batch: the 30 are stored (ids, order, hourly counts and first
    responses as if alone), the poison row's sender alone hears it failed, and no traceback is logged."""
    sessions = [storage.open_session(fresh_id())[0].id for _ in range(30)]
    agent = fresh_id()
    poison_user = fresh_id()
    poison_session = storage.open_session(poison_user)[0].id
    messages = []
    for n, session_id in enumerate(sessions):
        if n % 3 == 0:  # agent replies: their sessions get a first response
            messages.append(NewMessage(session_id, agent, "agent", f"reply {n} 你好", HOUR))
        else:
            messages.append(NewMessage(session_id, fresh_id(), "customer", f"message {n} 😀", HOUR))
    bad = NewMessage(**{"session_id": poison_session, "sender_id": poison_user, "sender_role": "customer",
                        "created_at": HOUR, **poison})
    messages.insert(15, bad)
    writer = MessageWriter(storage, batch_size=200, concurrency=1)
    try:
        with caplog.at_level(logging.INFO):
            results = store_together(writer, messages)
        batches = []
        writer.observe = lambda seconds, rows: batches.append(rows)
        after = store_together(writer, [NewMessage(sessions[0], agent, "agent", "after", HOUR)])
    finally:
        writer.stop()
    assert isinstance(results.pop(15), StorageError)
    assert not isinstance(after[0], Exception) and batches == [1]
    assert [type(r).__name__ for r in results] == ["MessageRecord"] * 30
    ids = [r.id for r in results]
    assert ids == sorted(ids)  # FIFO: the halves were written in order
    good = [m for m in messages if m is not bad]
    assert stored(storage, sessions + [poison_session]) == [(m.session_id, m.content) for m in good] + [
        (sessions[0], "after")]
    assert hourly_total(storage, "agent") == 11 and hourly_total(storage, "customer") == 20
    with storage.engine.connect() as conn:
        answered = set(conn.execute(text("SELECT id FROM chat_sessions WHERE first_response_at IS NOT NULL")).scalars())
    assert [s in answered for s in sessions] == [n % 3 == 0 for n in range(30)]
    assert not [r for r in caplog.records if r.exc_info], "an expected row error must not log a traceback"
    assert any("message refused by the database" in r.getMessage() for r in caplog.records)


def test_a_repeated_client_msg_id_in_a_batch_is_a_duplicate_and_the_others_are_stored(storage: Storage) -> None:
    """Two sends of one client_msg_id land in one batch with others: one is stored, the other answered as its
    duplicate, the rest stored."""
    user = fresh_id()
    session_id = storage.open_session(user)[0].id
    others = [storage.open_session(fresh_id())[0].id for _ in range(6)]
    messages = [NewMessage(s, fresh_id(), "customer", f"other {n}", HOUR) for n, s in enumerate(others)]
    messages.insert(2, NewMessage(session_id, user, "customer", "once", HOUR, client_msg_id="k-1"))
    messages.insert(5, NewMessage(session_id, user, "customer", "once", HOUR, client_msg_id="k-1"))
    writer = MessageWriter(storage, batch_size=200, concurrency=1)
    try:
        results = store_together(writer, messages)
    finally:
        writer.stop()
    duplicate = results.pop(5)
    assert isinstance(duplicate, DuplicateMessage) and duplicate.original.id == results[2].id
    assert [type(r).__name__ for r in results] == ["MessageRecord"] * 7
    assert stored(storage, others + [session_id]) == [(m.session_id, m.content) for m in messages[:5] + messages[6:]]
