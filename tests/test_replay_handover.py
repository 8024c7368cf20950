"""The replay hand-over without sockets: events arriving while history is read, and a database failing mid-join.

The storage here is a stand-in whose read delivers events "during" the query, to place them exactly in the
windows that matter; the real database paths are covered over sockets in test_recovery.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest

from service.config import load_settings
from service.errors import Refused
from service.realtime.protocol import MAX_HELD_EVENTS, ConnectionState, encode
from service.realtime.recovery import join_with_replay, replay_after
from service.realtime.registry import Registry
from service.storage import MessageRecord, SessionRecord, StorageError

SESSION = SessionRecord(
    id=7, user_id=1, agent_id=None, status="active", created_at=datetime(2024, 1, 1), closed_at=None
)


def message(message_id: int) -> MessageRecord:
    return MessageRecord(message_id, SESSION.id, 1, "customer", f"m{message_id}", datetime(2024, 1, 1))


def frame(message_id: int) -> str:
    return encode({"type": "new_message", "session_id": SESSION.id, "message": message(message_id).to_wire()})


@dataclass(eq=False)
class Recorder(ConnectionState):
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: tuple[int, str] | None = None

    def __hash__(self) -> int:
        return id(self)

    def send_text(self, text: str) -> bool:
        self.sent.append(json.loads(text))
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def message_ids(self) -> list[int]:
        return [f["message"]["id"] for f in self.sent if f["type"] == "new_message"]


class History:
    """Stored messages, and what other senders publish while the replay's query runs."""

    def __init__(self, stored: list[int], during_read: Callable[[], None] = lambda: None, fail: bool = False) -> None:
        self.stored = stored
        self.during_read = during_read
        self.fail = fail

    def list_message_ids(self, session_id: int, after_id: int, limit: int) -> list[int]:
        self.during_read()
        if self.fail:
            raise StorageError("OperationalError")
        return [i for i in self.stored if i > after_id][:limit]

    def messages_by_ids(self, session_id: int, ids: list[int]) -> list[MessageRecord]:
        return [message(i) for i in self.stored if i in ids]


def context(history: History, replay_limit: int = 1000) -> SimpleNamespace:
    settings = load_settings({"REPLAY_LIMIT": replay_limit}, environ={"CHAT_ENV_FILE": "/nonexistent"})
    return SimpleNamespace(settings=settings, registry=Registry(), storage=history)


def publish(ctx: SimpleNamespace, *ids: int) -> None:
    for i in ids:
        ctx.registry.deliver(SESSION.id, frame(i), message_id=i)


def test_events_during_the_read_follow_the_replay_without_repeats() -> None:
    """Published during the read: already-read ids are dropped, later ones follow the replay in arrival order."""
    history = History([11, 12, 13])
    ctx = context(history)
    history.during_read = lambda: publish(ctx, 12, 13, 14, 15)
    conn = Recorder("c1")
    assert join_with_replay(ctx, conn, SESSION, 10) == []
    assert conn.sent[0] == {"type": "joined_session", "session_id": 7, "recovered": True, "replayed": 3}
    assert conn.message_ids() == [11, 12, 13, 14, 15]
    publish(ctx, 16)
    assert conn.message_ids()[-1] == 16 and conn.held is None


def test_a_lower_id_committed_late_is_delivered_not_dropped() -> None:
    """Ids are allocated before commit: 12 missing from the read but published later still arrives."""
    history = History([11, 13])
    ctx = context(history)
    conn = Recorder("c1")
    join_with_replay(ctx, conn, SESSION, 10)
    publish(ctx, 13, 12)
    assert conn.message_ids() == [11, 13, 12]


def test_a_replayed_message_published_after_going_live_is_dropped() -> None:
    """Stored before the read but published after the switch to live (its sender had not run yet): dropped."""
    ctx = context(History([11, 12]))
    conn = Recorder("c1")
    join_with_replay(ctx, conn, SESSION, 10)
    publish(ctx, 12, 13)
    assert conn.message_ids() == [11, 12, 13]


def test_the_replayed_ids_are_forgotten_after_the_window() -> None:
    """The memory of replayed ids is bounded in time."""
    conn = Recorder("c1")
    conn.remember_replayed([5, 6], seconds=-1.0)
    assert conn.send_event(frame(6), 6) and conn.message_ids() == [6]
    assert conn.replayed is None


def test_truncated_replay_sends_the_oldest_and_says_where_to_page_from() -> None:
    """More than REPLAY_LIMIT missing: the oldest REPLAY_LIMIT, recovered false, truncated, resume_after_id."""
    ctx = context(History(list(range(11, 31))), replay_limit=5)
    conn = Recorder("c1")
    join_with_replay(ctx, conn, SESSION, 10)
    assert conn.sent[0] == {"type": "joined_session", "session_id": 7, "recovered": False, "replayed": 5,
                            "truncated": True, "resume_after_id": 15}
    assert conn.message_ids() == [11, 12, 13, 14, 15]


def test_too_many_events_while_holding_closes_the_connection() -> None:
    """Events beyond the hold's bound would be a silent gap: the connection is closed (1008) instead."""
    history = History([11])
    ctx = context(history)
    history.during_read = lambda: publish(ctx, *range(100, 100 + MAX_HELD_EVENTS + 5))
    conn = Recorder("c1")
    join_with_replay(ctx, conn, SESSION, 10)
    assert conn.closed == (1008, "too slow")


def test_a_database_failure_puts_the_connection_back_in_its_room() -> None:
    """The read fails: 服务暂时不可用, the connection is back in its previous room, nothing was sent."""
    ctx = context(History([11], fail=True))
    conn = Recorder("c1")
    ctx.registry.join(conn, 3)
    with pytest.raises(Refused) as refused:
        join_with_replay(ctx, conn, SESSION, 10)
    assert refused.value.problem.text == "服务暂时不可用"
    assert conn.session_id == 3 and ctx.registry.members(SESSION.id) == () and conn.sent == []
    assert conn.held is None
    publish(ctx, 12)
    assert conn.sent == []


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (0, 0), ("0", 0), (5, 5), ("42", 42), (2**63 - 1, 2**63 - 1)]
)
def test_last_message_id_accepts_ids_and_zero(value: Any, expected: int | None) -> None:
    """null/absent means a legacy join; 0 means "from the start"; ids as integers or digit strings."""
    assert replay_after(value) == expected


@pytest.mark.parametrize("value", [-1, 2**63, 1.5, True, False, "", " 1", "１", "1e3", [], {}])
def test_last_message_id_refuses_anything_else(value: Any) -> None:
    with pytest.raises(Refused) as refused:
        replay_after(value)
    assert refused.value.problem.text == "消息ID无效"


@dataclass(eq=False)
class PacedReader(Recorder):
    """A connection whose queue drains only when the replay waits for room; `reads` = how many waits it serves."""

    waits: list[tuple[int, int]] = field(default_factory=list)  # (room asked for, frames sent before)
    reads: int = 10**9

    def wait_for_room(self, queued_bytes: int) -> bool:
        self.waits.append((queued_bytes, len(self.sent)))
        self.reads -= 1
        return self.reads >= 0


def test_a_replay_waits_for_the_previous_one_and_for_room_before_every_frame() -> None:
    """The first wait is for an empty queue (an earlier replay written); then one wait per replayed frame, for
    half of MAX_OUTBOUND_BYTES: the history goes out at the client's pace, never all at once."""
    ctx = context(History(list(range(11, 141))))  # 130 messages: several pages
    conn = PacedReader("c1")
    join_with_replay(ctx, conn, SESSION, 10)
    room = ctx.settings.max_outbound_bytes // 2
    assert conn.waits[0] == (0, 0)
    assert conn.waits[1:] == [(room, 1 + n) for n in range(130)]
    assert conn.message_ids() == list(range(11, 141))


def test_a_connection_that_closes_mid_replay_gets_nothing_more_and_its_events_are_released() -> None:
    """The client stopped reading and was closed while the replay waited: no further frames, nothing held."""
    history = History(list(range(11, 61)))
    ctx = context(history)
    conn = PacedReader("c1", reads=6)  # the first wait, then 5 frames, then the connection is gone
    assert join_with_replay(ctx, conn, SESSION, 10) == []
    assert conn.message_ids() == [11, 12, 13, 14, 15]
    assert conn.held is None
