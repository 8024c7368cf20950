"""Group commit on MariaDB: a batch INSERT hands every sender the id its own row got."""

from __future__ import annotations

import pytest

from support import fresh_id


@pytest.mark.mariadb
def test_every_message_id_names_the_stored_row_under_concurrent_batches(server_factory, mariadb_database) -> None:
    """Messages stored in shared batches by several senders come back with the ids the database gave their rows."""
    server = server_factory(database_url=mariadb_database, RATE_LIMIT=0, WRITER_BATCH=50)
    senders = []
    for _ in range(8):
        user_id = fresh_id()
        session_id = server.open_session(user_id)
        client = server.client(user_id)
        senders.append((client, session_id))
    for n in range(25):  # pipelined: the writers see many senders' rows at once
        for i, (client, session_id) in enumerate(senders):
            client.say(session_id, f"sender {i} message {n} 你好")
    for i, (client, session_id) in enumerate(senders):
        seen = {}
        for _ in range(25):
            frame = client.recv_type("new_message")
            seen[frame["message"]["id"]] = frame["message"]["content"]
        status, body = server.http("GET", f"/api/sessions/{session_id}/messages?limit=100")
        assert status == 200, body
        stored = {m["id"]: m["content"] for m in body["messages"]}
        assert seen == stored
        assert list(seen.values()) == [f"sender {i} message {n} 你好" for n in range(25)]
        client.close()
