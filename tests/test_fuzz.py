"""Property-based fuzzing of the protocol layer (no socket): arbitrary JSON values, protocol-shaped messages
with arbitrary field values, and arbitrary bytes go into `dispatch` on a hub over a temporary SQLite database.

Properties: nothing escapes `dispatch`, no input reaches the internal-error path, every reply is a frame with a
`type`, and a refused message changes neither the connection (identity, session, room) nor the database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwtkit import JWT_SETTINGS, hs256
from sqlalchemy import text

from service import create_app
from service.auth import Identity
from service.realtime.hub import ChatHub
from service.realtime.protocol import _HANDLERS, ConnectionState, dispatch

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CUSTOMER, STRANGER, AGENT = 101, 102, 103


class World:
    """A hub on its own SQLite file with an open and a closed session of CUSTOMER and one agent."""

    def __init__(self, directory: Path, mode: str) -> None:
        overrides: dict[str, Any] = {"DATABASE_URL": f"sqlite:///{directory}/fuzz-{mode}.db", "RATE_LIMIT": 0,
                                     "MAX_MESSAGE_LENGTH": 50}
        if mode == "jwt":
            overrides.update(JWT_SETTINGS)
        self.app = create_app(overrides)
        self.hub: ChatHub = self.app.extensions["chat_hub"]
        storage = self.hub.storage
        storage.add_agent(AGENT)
        closed, _ = storage.open_session(CUSTOMER)
        storage.close_session(closed.id, None)
        self.open, _ = storage.open_session(CUSTOMER)
        self.closed_id = closed.id
        self.count = 0

    def connection(self, who: str, joined: bool) -> ConnectionState:
        self.count += 1
        conn = ConnectionState(connection_id=f"fuzz-{self.count}")
        self.hub.registry.add(conn)
        if who != "anonymous":
            user = {"customer": CUSTOMER, "stranger": STRANGER, "agent": AGENT}[who]
            conn.identity = Identity(user_id=user, is_agent=who == "agent")
            if joined and who != "stranger":
                self.hub.registry.join(conn, self.open.id)
        return conn

    def snapshot(self, conn: ConnectionState) -> tuple:
        with self.hub.storage.engine.connect() as db:
            tables = tuple(tuple(db.execute(text(q)).all()) for q in (
                "SELECT COUNT(*), MAX(id) FROM chat_messages",
                "SELECT id, user_id, agent_id, status, closed_at FROM chat_sessions ORDER BY id",
                "SELECT user_id FROM agents ORDER BY user_id"))
        rooms = {sid: tuple(sorted(c.connection_id for c in self.hub.registry.members(sid)))
                 for sid in (self.open.id, self.closed_id)}
        return conn.identity, conn.session_id, rooms, tables


@pytest.fixture(scope="module", params=["trust", "jwt"])
def world(request, tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("fuzz"), request.param)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def mostly(good: list[Any], bad: list[Any]) -> st.SearchStrategy:
    """Good values half the time, so the fuzz reaches the handlers' success paths as well as every refusal."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad), json_values)


def ids(world_ids: list[Any]) -> st.SearchStrategy:
    return mostly(world_ids, [0, "0", "", None, -1, 1.5, True, "12a", 2**63, str(2**63 - 1)])


OMIT = object()


def message_strategy(world: World) -> st.SearchStrategy:
    """Messages shaped like the protocol (known types, known fields) with values good, bad and arbitrary."""
    known = sorted(_HANDLERS)
    users = [CUSTOMER, STRANGER, AGENT, str(CUSTOMER)]
    tokens = [hs256(CUSTOMER), hs256(AGENT, role="agent"), hs256(CUSTOMER, ttl=-60), "x.y.z", ""]
    fields = {
        "type": st.sampled_from(known),
        "user_id": ids(users) | st.just(OMIT),
        "session_id": ids([world.open.id, world.closed_id, world.open.id + 1000]) | st.just(OMIT),
        "content": mostly(["hello", "好"], ["  ", "", "x" * 51]) | st.just(OMIT),
        "client_msg_id": mostly([OMIT], ["m-1", "", "x" * 65, None]),
        "token": mostly(tokens[:2], tokens[2:]) | st.just(OMIT),
    }
    return st.fixed_dictionaries(fields).map(lambda m: {k: v for k, v in m.items() if v is not OMIT})


def run(world: World, conn: ConnectionState, raw: str | bytes) -> None:
    before = world.snapshot(conn)
    replies = dispatch(world.hub, conn, raw)
    assert isinstance(replies, list)
    for reply in replies:
        assert isinstance(reply, dict) and isinstance(reply.get("type"), str)
        json.dumps(reply, ensure_ascii=False, allow_nan=False)  # every reply can be sent as strict JSON
        assert reply.get("code") != "internal_error", (raw, reply)
    if any(r["type"] == "error" for r in replies):
        assert world.snapshot(conn) == before, (raw, replies)


states = st.sampled_from(["anonymous", "customer", "stranger", "agent"])


@FUZZ
@given(data=st.data(), who=states, joined=st.booleans())
def test_protocol_shaped_messages(world: World, data: st.DataObject, who: str, joined: bool) -> None:
    """Known message types with every kind of field value: answers are frames; refusals change nothing."""
    message = data.draw(message_strategy(world))
    run(world, world.connection(who, joined), json.dumps(message, ensure_ascii=False))


@FUZZ
@given(value=json_values, who=states, joined=st.booleans())
def test_arbitrary_json_values(world: World, value: Any, who: str, joined: bool) -> None:
    """Any JSON value at all (NaN and Infinity included, as Python's parser accepts them)."""
    run(world, world.connection(who, joined), json.dumps(value))


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200), who=states)
def test_arbitrary_bytes_and_text(world: World, raw: bytes | str, who: str) -> None:
    """Arbitrary binary frames and text frames: 消息格式错误 or 未知消息类型, never anything worse."""
    run(world, world.connection(who, True), raw)


def test_non_finite_numbers_are_not_ids(world: World) -> None:
    """NaN and Infinity parse in Python's json; as ids or content they are refused like any non-id."""
    conn = world.connection("customer", False)
    for raw in ('{"type":"join_session","session_id":NaN}', '{"type":"join_session","session_id":Infinity}',
                '{"type":"send_message","session_id":1,"content":-Infinity}'):
        replies = dispatch(world.hub, conn, raw)
        assert replies[0]["type"] == "error", replies
