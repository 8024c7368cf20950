"""The protocol layer without sockets: `dispatch` over a real ChatHub (temporary SQLite) and in-memory members.

The members here are not sockets, by design: this is the no-I/O layer (frames in, replies and deliveries
out). The same decisions are proven over real sockets and both databases in test_protocol.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from service.auth import TrustAuthenticator
from service.config import load_settings
from service.realtime import handlers as _handlers  # noqa: F401  (fills the handler table)
from service.realtime.fanout import Fanout
from service.realtime.hub import ChatHub
from service.realtime.protocol import ConnectionState, TokenBucket, dispatch
from service.realtime.registry import Registry
from service.storage import MessageWriter, Storage
from service.storage import prepare_for_serving as _create_tables
from support import ROOT, fresh_id

MISSING_USER, INVALID_USER = "缺少用户ID", "用户ID无效"
MISSING_SESSION, INVALID_SESSION = "缺少会话ID", "会话ID无效"
MISSING_FIELDS, INVALID_CONTENT, TOO_LONG = "缺少会话ID或消息内容", "消息内容无效", "消息内容过长"
UNAUTHENTICATED, NOT_FOUND, FORBIDDEN, CLOSED = "未认证", "会话不存在", "无权访问该会话", "会话已关闭"
BAD_FORMAT, UNKNOWN_TYPE, NOT_IN_SESSION = "消息格式错误", "未知消息类型", "未加入会话"
UNKNOWN_SESSION = 9_000_000_000_000_000


@dataclass(eq=False)
class Member(ConnectionState):
    """An in-memory connection: what the registry hands it is kept in `received`."""

    received: list[dict[str, Any]] = field(default_factory=list)

    def send_text(self, text: str) -> bool:
        self.received.append(json.loads(text))
        return True


@dataclass
class World:
    hub: ChatHub
    storage: Storage
    agent_id: int
    members: int = 0

    def member(self, user_id: int | None = None) -> Member:
        self.members += 1
        conn = Member(connection_id=f"test-{self.members}")
        self.hub.registry.add(conn)
        if user_id is not None:
            assert self.send(conn, {"type": "auth", "user_id": user_id}) == [
                {"type": "auth_success", "user_id": user_id}
            ]
        return conn

    def send(self, conn: Member, message: Any) -> list[dict[str, Any]]:
        raw = message if isinstance(message, str | bytes) else json.dumps(message, ensure_ascii=False)
        return dispatch(self.hub, conn, raw)

    def error(self, conn: Member, message: Any) -> str:
        (reply,) = self.send(conn, message)
        assert reply["type"] == "error", reply
        return reply["error"]

    def session(self, customer_id: int) -> int:
        return self.storage.open_session(customer_id)[0].id

    def close(self, session_id: int) -> None:
        self.storage.close_session(session_id, None)
        self.hub.publish_session_closed(session_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    path = Path(tmp_path_factory.mktemp("unit")) / "chat.db"
    settings = load_settings(
        {"DATABASE_URL": f"sqlite:///{path}", "MAX_MESSAGE_LENGTH": 20, "RATE_LIMIT": 0},
        environ={"CHAT_ENV_FILE": str(ROOT / "tests" / "no.env")},
    )
    engine = create_engine(settings.database_url)
    _create_tables(engine)
    storage = Storage(engine, settings.tz)
    registry = Registry()
    fanout = Fanout(registry, "unit-node")
    writer = MessageWriter(storage, batch_size=50, concurrency=1)
    hub = ChatHub(settings, storage, TrustAuthenticator(storage), registry, fanout, writer)
    fanout.on_event = hub.on_event
    agent_id = fresh_id()
    storage.add_agent(agent_id, "unit agent")
    yield World(hub, storage, agent_id)
    writer.stop()
    engine.dispose()


def state_of(conn: Member) -> tuple:
    return (conn.identity, conn.session_id)


# -- auth ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_text", [False, True], ids=["int", "digit-string"])
def test_auth_answers_the_integer_id(world: World, as_text: bool) -> None:
    """An id given as an integer or a string of digits authenticates as the integer."""
    user_id = fresh_id()
    conn = world.member()
    assert world.send(conn, {"type": "auth", "user_id": str(user_id) if as_text else user_id}) == [
        {"type": "auth_success", "user_id": user_id}
    ]
    assert conn.user_id == user_id


@pytest.mark.parametrize("value", [None, "", 0, "0", "000", 0.0, "absent"])
def test_auth_without_an_id_is_missing(world: World, value: Any) -> None:
    """Missing, null, empty and zero ids get the legacy missing text and leave the connection unauthenticated."""
    conn = world.member()
    message = {"type": "auth"} if value == "absent" else {"type": "auth", "user_id": value}
    assert world.error(conn, message) == MISSING_USER
    assert conn.identity is None


@pytest.mark.parametrize(
    "value", [-1, "-1", 1.5, "1.5", True, False, "abc", "12a", " 12", {"id": 1}, [1], 2**63, "99999999999999999999"]
)
def test_auth_with_a_non_id_is_invalid(world: World, value: Any) -> None:
    """Negative, fractional, boolean, lettered, structured and out-of-range ids are invalid."""
    conn = world.member()
    assert world.error(conn, {"type": "auth", "user_id": value}) == INVALID_USER
    assert conn.identity is None


def test_failed_reauth_keeps_identity_and_session(world: World) -> None:
    """A refused second auth changes nothing: same user, same session."""
    customer = fresh_id()
    session_id = world.session(customer)
    conn = world.member(customer)
    world.send(conn, {"type": "join_session", "session_id": session_id})
    before = state_of(conn)
    assert world.error(conn, {"type": "auth", "user_id": "nope"}) == INVALID_USER
    assert state_of(conn) == before


def test_reauth_rebinds_and_leaves_the_session_silently(world: World) -> None:
    """auth again answers only auth_success, re-binds the user and takes the connection out of its room."""
    customer = fresh_id()
    session_id = world.session(customer)
    conn = world.member(customer)
    world.send(conn, {"type": "join_session", "session_id": session_id})
    other = fresh_id()
    assert world.send(conn, {"type": "auth", "user_id": other}) == [{"type": "auth_success", "user_id": other}]
    assert conn.user_id == other and conn.session_id is None
    assert world.hub.registry.members(session_id) == ()
    assert world.error(conn, {"type": "leave_session"}) == NOT_IN_SESSION


# -- join / leave -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", 0, "0", "absent"])
def test_join_without_a_session_id_is_missing(world: World, value: Any) -> None:
    """A missing session id gets 缺少会话ID."""
    conn = world.member(fresh_id())
    message = {"type": "join_session"} if value == "absent" else {"type": "join_session", "session_id": value}
    assert world.error(conn, message) == MISSING_SESSION


@pytest.mark.parametrize("value", [-3, 2.5, True, "x", {"id": 1}, [1]])
def test_join_with_a_non_id_is_invalid(world: World, value: Any) -> None:
    """A session id that is not an id gets 会话ID无效."""
    conn = world.member(fresh_id())
    assert world.error(conn, {"type": "join_session", "session_id": value}) == INVALID_SESSION


def test_join_refusals_follow_the_spec_precedence(world: World) -> None:
    """Unknown session, foreign session (open or closed), own closed session: each its own text, state unchanged."""
    owner, stranger = fresh_id(), fresh_id()
    session_id = world.session(owner)
    conn = world.member(stranger)
    assert world.error(conn, {"type": "join_session", "session_id": UNKNOWN_SESSION}) == NOT_FOUND
    assert world.error(conn, {"type": "join_session", "session_id": session_id}) == FORBIDDEN
    world.close(session_id)
    assert world.error(conn, {"type": "join_session", "session_id": session_id}) == FORBIDDEN
    assert world.error(world.member(owner), {"type": "join_session", "session_id": session_id}) == CLOSED
    assert conn.session_id is None


def test_join_while_in_another_session_moves_without_left_session(world: World) -> None:
    """An agent joining a second session gets only joined_session and leaves the first room."""
    first, second = world.session(fresh_id()), world.session(fresh_id())
    agent = world.member(world.agent_id)
    assert world.send(agent, {"type": "join_session", "session_id": first}) == [
        {"type": "joined_session", "session_id": first}
    ]
    assert world.send(agent, {"type": "join_session", "session_id": str(second)}) == [
        {"type": "joined_session", "session_id": second}
    ]
    assert agent not in world.hub.registry.members(first) and agent in world.hub.registry.members(second)
    assert agent.received == []


def test_leave_answers_the_session_left_then_not_in_session(world: World) -> None:
    """leave_session names the session it left; a second leave gets 未加入会话."""
    customer = fresh_id()
    session_id = world.session(customer)
    conn = world.member(customer)
    world.send(conn, {"type": "join_session", "session_id": session_id})
    assert world.send(conn, {"type": "leave_session"}) == [{"type": "left_session", "session_id": session_id}]
    assert world.error(conn, {"type": "leave_session"}) == NOT_IN_SESSION


# -- send_message -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"type": "join_session", "session_id": 1},
        {"type": "leave_session"},
        {"type": "send_message", "session_id": 1, "content": "hi"},
        {"type": "send_message"},
    ],
    ids=["join", "leave", "send", "send-empty"],
)
def test_everything_but_ping_and_auth_needs_auth(world: World, message: dict) -> None:
    """Before auth, every type but ping and auth gets 未认证 (before any field check)."""
    conn = world.member()
    assert world.error(conn, message) == UNAUTHENTICATED
    assert world.send(conn, {"type": "ping"}) == [{"type": "pong"}]


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": "S"},
        {"session_id": "S", "content": None},
        {"session_id": "S", "content": ""},
        {"session_id": "S", "content": "   "},
        {"session_id": "S", "content": "\n\t "},
        {"content": "hi"},
        {"session_id": None, "content": "hi"},
        {"session_id": "", "content": "hi"},
        {"session_id": 0, "content": "hi"},
        {"session_id": "0", "content": "hi"},
        {"session_id": "abc"},
        {"session_id": -1, "content": ""},
    ],
)
def test_send_missing_session_or_content(world: World, fields: dict) -> None:
    """Missing or blank content, or a missing session id, gets 缺少会话ID或消息内容 (missing beats invalid)."""
    customer = fresh_id()
    session_id = world.session(customer)
    conn = world.member(customer)
    fields = {k: (session_id if v == "S" else v) for k, v in fields.items()}
    assert world.error(conn, {"type": "send_message", **fields}) == MISSING_FIELDS
    assert world.storage.count_messages(session_id) == 0


@pytest.mark.parametrize("value", [-1, "-1", 1.5, True, "abc", {"id": 1}])
def test_send_to_a_non_id_is_invalid(world: World, value: Any) -> None:
    """A present session id that is not an id gets 会话ID无效."""
    conn = world.member(fresh_id())
    assert world.error(conn, {"type": "send_message", "session_id": value, "content": "hi"}) == INVALID_SESSION


@pytest.mark.parametrize("content", [123, 0, 1.5, True, {"text": "hi"}, ["hi"], []])
def test_send_non_string_content_is_invalid(world: World, content: Any) -> None:
    """Content that is present but not a string gets 消息内容无效, even for an unknown session."""
    conn = world.member(fresh_id())
    message = {"type": "send_message", "session_id": UNKNOWN_SESSION, "content": content}
    assert world.error(conn, message) == INVALID_CONTENT


def test_send_content_length_limit_counts_characters(world: World) -> None:
    """MAX_MESSAGE_LENGTH (20 here) characters pass, emoji counting one each; one more gets 消息内容过长."""
    customer = fresh_id()
    session_id = world.session(customer)
    conn = world.member(customer)
    (frame,) = [*world.send(conn, {"type": "send_message", "session_id": session_id, "content": "😀" * 20}),
                *conn.received]
    assert frame["message"]["content"] == "😀" * 20
    assert world.error(conn, {"type": "send_message", "session_id": session_id, "content": "x" * 21}) == TOO_LONG


def test_send_precedence_invalid_value_before_session_checks(world: World) -> None:
    """Too long beats not found, not allowed and closed; not allowed beats closed (no leak about foreign sessions)."""
    owner = fresh_id()
    session_id = world.session(owner)
    world.close(session_id)
    stranger = world.member(fresh_id())
    long = "x" * 21
    assert world.error(stranger, {"type": "send_message", "session_id": UNKNOWN_SESSION, "content": long}) == TOO_LONG
    assert world.error(stranger, {"type": "send_message", "session_id": session_id, "content": long}) == TOO_LONG
    assert world.error(stranger, {"type": "send_message", "session_id": UNKNOWN_SESSION, "content": "a"}) == NOT_FOUND
    assert world.error(stranger, {"type": "send_message", "session_id": session_id, "content": "a"}) == FORBIDDEN
    assert world.error(world.member(owner), {"type": "send_message", "session_id": session_id,
                                             "content": "a"}) == CLOSED
    assert world.storage.count_messages(session_id) == 0


def test_new_message_reaches_room_and_unjoined_sender_once(world: World) -> None:
    """Every room member and the (unjoined) sender get new_message exactly once; others get nothing."""
    customer = fresh_id()
    session_id = world.session(customer)
    tab1, tab2 = world.member(customer), world.member(customer)
    agent, bystander = world.member(world.agent_id), world.member(fresh_id())
    for conn in (tab1, agent):
        world.send(conn, {"type": "join_session", "session_id": session_id})
    assert world.send(tab2, {"type": "send_message", "session_id": session_id, "content": "你好"}) == []
    for conn in (tab1, tab2, agent):
        assert len(conn.received) == 1 and conn.received[0]["type"] == "new_message"
        assert conn.received[0]["message"]["content"] == "你好"
        assert conn.received[0]["message"]["sender_id"] == customer
    assert bystander.received == []


def test_joined_sender_gets_its_message_once(world: World) -> None:
    """A sender in the room (joined twice, even) is delivered its own message once."""
    customer = fresh_id()
    session_id = world.session(customer)
    conn = world.member(customer)
    for _ in range(2):
        assert world.send(conn, {"type": "join_session", "session_id": session_id}) == [
            {"type": "joined_session", "session_id": session_id}
        ]
    world.send(conn, {"type": "send_message", "session_id": session_id, "content": "once"})
    assert [f["message"]["content"] for f in conn.received] == ["once"]


def test_left_member_gets_no_more_messages(world: World) -> None:
    """After leave_session a connection receives nothing of the session."""
    customer = fresh_id()
    session_id = world.session(customer)
    conn, agent = world.member(customer), world.member(world.agent_id)
    world.send(conn, {"type": "join_session", "session_id": session_id})
    world.send(conn, {"type": "leave_session"})
    world.send(agent, {"type": "send_message", "session_id": session_id, "content": "after"})
    assert conn.received == []
    assert [f["message"]["content"] for f in agent.received] == ["after"]


def test_first_agent_to_join_is_assigned(world: World) -> None:
    """An agent may join any customer's session, and the first one to join becomes its agent."""
    session_id = world.session(fresh_id())
    other_agent = fresh_id()
    world.storage.add_agent(other_agent)
    world.send(world.member(world.agent_id), {"type": "join_session", "session_id": session_id})
    world.send(world.member(other_agent), {"type": "join_session", "session_id": session_id})
    assert world.storage.get_session(session_id).agent_id == world.agent_id


# -- frames -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("not json", BAD_FORMAT),
        ("", BAD_FORMAT),
        ("[1, 2]", BAD_FORMAT),
        ('"auth"', BAD_FORMAT),
        ("42", BAD_FORMAT),
        ("null", BAD_FORMAT),
        ('{"type": "ping"', BAD_FORMAT),
        (b"\xff\xfe", BAD_FORMAT),
        ('{"a":' * 20 + "1" + "}" * 20, BAD_FORMAT),
        ("{}", UNKNOWN_TYPE),
        ('{"user_id": 1}', UNKNOWN_TYPE),
        ('{"type": "nope"}', UNKNOWN_TYPE),
        ('{"type": 5}', UNKNOWN_TYPE),
        ('{"type": null}', UNKNOWN_TYPE),
        ('{"type": ["ping"]}', UNKNOWN_TYPE),
    ],
)
def test_bad_frames_are_answered_and_change_nothing(world: World, raw: str | bytes, text: str) -> None:
    """A frame that is not a JSON object, or has no known type, gets its error and leaves the state as it was."""
    customer = fresh_id()
    session_id = world.session(customer)
    conn = world.member(customer)
    world.send(conn, {"type": "join_session", "session_id": session_id})
    before = state_of(conn)
    assert world.error(conn, raw) == text
    assert state_of(conn) == before and conn.received == []


def test_error_frames_carry_a_stable_code(world: World) -> None:
    """Errors have the legacy text plus an additive machine-readable code."""
    (reply,) = world.send(world.member(), {"type": "join_session"})
    assert reply == {"type": "error", "error": UNAUTHENTICATED, "code": "unauthenticated"}


def test_ping_needs_no_auth(world: World) -> None:
    """ping answers pong on a fresh connection, extra fields ignored."""
    assert world.send(world.member(), {"type": "ping", "token": "x"}) == [{"type": "pong"}]


def test_rate_limit_refuses_without_storing(world: World) -> None:
    """A connection over its bucket gets 发送过于频繁 and the message is not stored."""
    customer = fresh_id()
    session_id = world.session(customer)
    conn = world.member(customer)
    conn.bucket = TokenBucket(rate=0.001, burst=1)
    world.send(conn, {"type": "send_message", "session_id": session_id, "content": "first"})
    assert world.error(conn, {"type": "send_message", "session_id": session_id, "content": "second"}) == "发送过于频繁"
    assert world.storage.count_messages(session_id) == 1
