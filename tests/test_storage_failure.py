"""The database going away under a running server: the sender is told, nobody else gets anything, nothing crashes.

The database is made unavailable by dropping the test's own MariaDB database (the shared MariaDB server
keeps running for everyone else), which is what the service sees when its schema is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from support import Server, drop_mariadb_database, fresh_id

pytestmark = pytest.mark.mariadb


def test_database_down_answers_send_failed_and_delivers_nothing(
    mariadb_database: str, server_factory: Callable[..., Server]
) -> None:
    """send_message with the database gone gets 消息发送失败; the room gets nothing; the connection stays usable."""
    server = server_factory(database_url=mariadb_database)
    try:
        customer = fresh_id()
        session_id = server.open_session(customer)
        other_session = server.open_session(fresh_id())
        member, sender = server.client(customer), server.client(customer)
        member.join(session_id)
        drop_mariadb_database(urlsplit(mariadb_database).path.lstrip("/"))

        failed = {"type": "error", "error": "消息发送失败", "code": "send_failed"}
        sender.say(session_id, "lost")  # the session is cached from the join: the INSERT fails
        assert sender.recv() == failed
        sender.say(other_session, "lost too")  # not cached: the session lookup fails
        assert sender.recv() == failed
        assert member.barrier() == [] and sender.barrier() == []

        status, body = server.http("POST", f"/api/sessions/{session_id}/messages", {"content": "x"},
                                   {"X-User-Id": str(customer)})
        assert status == 503 and body["error"] in ("消息发送失败", "服务暂时不可用")
        assert server.http("GET", f"/api/sessions/{session_id}/messages")[0] == 503
        assert server.http("GET", "/readyz")[0] == 503
        reply = server.client().request({"type": "auth", "user_id": fresh_id()})
        assert reply == {"type": "error", "error": "服务暂时不可用", "code": "storage_unavailable"}
        assert "Traceback" not in server.log()
    finally:
        server.stop()
