"""Every row and decision of shared/spec/protocol.md over real sockets, on SQLite and on MariaDB.

One server per backend for the whole module; every test uses fresh user ids so tests never see each other.
`barrier()` (a ping answered after everything queued before it) proves that nothing else arrived.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from support import Client, Server, fresh_id

UNKNOWN_SESSION = 9_000_000_000_000_000
WIRE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")



def error_of(client: Client, message: Any) -> str:
    reply = client.request(message)
    assert reply["type"] == "error", reply
    assert set(reply) == {"type", "error", "code"}, reply
    return reply["error"]


def closed_session(server: Server, customer_id: int) -> int:
    session_id = server.open_session(customer_id)
    status, _ = server.http("POST", f"/api/sessions/{session_id}/close")
    assert status == 200
    return session_id


# -- connect ------------------------------------------------------------------------------------------------


def test_connected_frame_is_the_legacy_greeting(chat_server: Server, clients) -> None:
    """The first frame is exactly the legacy greeting, compact, with a string connection_id unique per connection."""
    first, second = clients(), clients()
    for client in (first, second):
        assert client.connected == {
            "type": "connected", "message": "WebSocket连接成功", "connection_id": client.connection_id
        }
        assert isinstance(client.connection_id, str) and client.connection_id
    assert first.connection_id != second.connection_id


def test_connected_frame_raw_text(chat_server: Server) -> None:
    """On the wire: compact JSON, Chinese unescaped, fields in the legacy order."""
    import websocket

    ws = websocket.create_connection(chat_server.ws_url, timeout=10)
    try:
        raw = ws.recv()
        connection_id = json.loads(raw)["connection_id"]
        assert raw == '{"type":"connected","message":"WebSocket连接成功","connection_id":' + json.dumps(
            connection_id) + "}"
    finally:
        ws.close()


@pytest.mark.parametrize("path", ["ws", "chat/", "api/sessions"])
def test_websocket_on_another_path_is_refused_before_the_upgrade(chat_server: Server, path: str) -> None:
    """Only path / speaks the protocol: elsewhere the handshake is answered 404, not a 101 and a silent close."""
    import websocket

    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(chat_server.ws_url + path, timeout=10)
    assert refused.value.status_code == 404


# -- auth ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_text", [False, True], ids=["int", "digit-string"])
def test_auth_success_carries_the_integer_id(clients, as_text: bool) -> None:
    """auth with an integer or a digit string answers auth_success with the integer."""
    user_id = fresh_id()
    client = clients()
    assert client.request({"type": "auth", "user_id": str(user_id) if as_text else user_id}) == {
        "type": "auth_success", "user_id": user_id}


@pytest.mark.parametrize("value", ["absent", None, "", 0, "0"])
def test_auth_missing_user_id(clients, value: Any) -> None:
    """Missing, null, empty and zero user ids get 缺少用户ID and the connection stays unauthenticated."""
    client = clients()
    message = {"type": "auth"} if value == "absent" else {"type": "auth", "user_id": value}
    assert error_of(client, message) == "缺少用户ID"
    assert error_of(client, {"type": "leave_session"}) == "未认证"


@pytest.mark.parametrize("value", [-7, "-7", 1.5, True, False, "abc", {"id": 1}, [5]])
def test_auth_invalid_user_id(clients, value: Any) -> None:
    """Negative, fractional, boolean, lettered and structured user ids get 用户ID无效."""
    client = clients()
    assert error_of(client, {"type": "auth", "user_id": value}) == "用户ID无效"
    assert error_of(client, {"type": "leave_session"}) == "未认证"


# -- join / leave -------------------------------------------------------------------------------------------


def test_join_and_leave_answer_the_session(chat_server: Server, clients) -> None:
    """join_session (id as string or int) answers joined_session with the integer; leave answers left_session."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    assert client.request({"type": "join_session", "session_id": str(session_id)}) == {
        "type": "joined_session", "session_id": session_id}
    assert client.request({"type": "leave_session"}) == {"type": "left_session", "session_id": session_id}
    assert error_of(client, {"type": "leave_session"}) == "未加入会话"


@pytest.mark.parametrize("value", ["absent", None, "", 0, "0"])
def test_join_missing_session_id(clients, value: Any) -> None:
    """A missing, null, empty or zero session id gets 缺少会话ID."""
    client = clients(fresh_id())
    message = {"type": "join_session"} if value == "absent" else {"type": "join_session", "session_id": value}
    assert error_of(client, message) == "缺少会话ID"


@pytest.mark.parametrize("value", [-1, 2.5, True, "abc", {"id": 1}])
def test_join_invalid_session_id(clients, value: Any) -> None:
    """A session id that is not an id gets 会话ID无效."""
    assert error_of(clients(fresh_id()), {"type": "join_session", "session_id": value}) == "会话ID无效"


def test_join_refusals(chat_server: Server, clients) -> None:
    """Unknown → 会话不存在; another customer's (open or closed) → 无权访问该会话; own closed → 会话已关闭."""
    owner, stranger = fresh_id(), fresh_id()
    open_id = chat_server.open_session(owner)
    closed_id = closed_session(chat_server, fresh_id())
    client = clients(stranger)
    assert error_of(client, {"type": "join_session", "session_id": UNKNOWN_SESSION}) == "会话不存在"
    assert error_of(client, {"type": "join_session", "session_id": open_id}) == "无权访问该会话"
    assert error_of(client, {"type": "join_session", "session_id": closed_id}) == "无权访问该会话"
    own_closed = closed_session(chat_server, owner)
    assert error_of(clients(owner), {"type": "join_session", "session_id": own_closed}) == "会话已关闭"
    assert error_of(client, {"type": "leave_session"}) == "未加入会话"


def test_unauthenticated_join_and_leave(clients) -> None:
    """join_session and leave_session before auth get 未认证, whatever the fields."""
    client = clients()
    assert error_of(client, {"type": "join_session", "session_id": 1}) == "未认证"
    assert error_of(client, {"type": "join_session"}) == "未认证"
    assert error_of(client, {"type": "leave_session"}) == "未认证"


def test_join_while_in_another_session_moves_silently(chat_server: Server, clients, agent_id: int) -> None:
    """Joining a second session answers only joined_session (no left_session) and stops the first's messages."""
    first_customer, second_customer = fresh_id(), fresh_id()
    first, second = chat_server.open_session(first_customer), chat_server.open_session(second_customer)
    agent = clients(agent_id)
    agent.join(first)
    assert agent.request({"type": "join_session", "session_id": second}) == {
        "type": "joined_session", "session_id": second}
    clients(first_customer).say(first, "to the first")
    clients(second_customer).say(second, "to the second")
    frame = agent.recv_type("new_message")
    assert frame["message"]["content"] == "to the second"
    assert agent.barrier() == []
    assert agent.request({"type": "leave_session"}) == {"type": "left_session", "session_id": second}


def test_agent_may_join_any_session_and_is_assigned(chat_server: Server, clients, agent_id: int) -> None:
    """An agent joins any customer's session, and joining assigns it as the session's agent_id."""
    session_id = chat_server.open_session(fresh_id())
    assert chat_server.http("GET", f"/api/sessions/{session_id}")[1]["agent_id"] is None
    clients(agent_id).join(session_id)
    status, body = chat_server.http("GET", f"/api/sessions/{session_id}")
    assert status == 200 and body["agent_id"] == agent_id


# -- send_message -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"type": "send_message", "session_id": 1, "content": "hi"},
        {"type": "send_message"},
        {"type": "send_message", "session_id": "abc", "content": 5},
    ],
    ids=["complete", "empty", "invalid"],
)
def test_send_before_auth_is_unauthenticated(clients, message: dict) -> None:
    """send_message before auth gets 未认证, before any field is looked at."""
    assert error_of(clients(), message) == "未认证"


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": "S"},
        {"session_id": "S", "content": None},
        {"session_id": "S", "content": ""},
        {"session_id": "S", "content": "  \n\t"},
        {"content": "hi"},
        {"session_id": None, "content": "hi"},
        {"session_id": "", "content": "hi"},
        {"session_id": 0, "content": "hi"},
        {"session_id": "0", "content": "hi"},
    ],
)
def test_send_missing_session_or_content(chat_server: Server, clients, fields: dict) -> None:
    """Missing or blank content, or a missing session id, gets 缺少会话ID或消息内容 and stores nothing."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    fields = {k: (session_id if v == "S" else v) for k, v in fields.items()}
    assert error_of(client, {"type": "send_message", **fields}) == "缺少会话ID或消息内容"
    assert client.barrier() == []
    assert chat_server.http("GET", f"/api/sessions/{session_id}/messages")[1] == {"messages": []}


@pytest.mark.parametrize("value", [-1, 1.5, True, "abc"])
def test_send_invalid_session_id(clients, value: Any) -> None:
    """A present session id that is not an id gets 会话ID无效."""
    assert error_of(clients(fresh_id()), {"type": "send_message", "session_id": value, "content": "hi"}) == "会话ID无效"


@pytest.mark.parametrize("content", [42, 1.5, True, {"text": "hi"}, ["hi"]])
def test_send_non_string_content(chat_server: Server, clients, content: Any) -> None:
    """Content present but not a string gets 消息内容无效."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    assert error_of(clients(customer), {"type": "send_message", "session_id": session_id,
                                        "content": content}) == "消息内容无效"


def test_send_content_limit_default_5000(chat_server: Server, clients) -> None:
    """5000 characters (emoji count one) are accepted; 5001 get 消息内容过长 and are not stored."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    client.say(session_id, "😀" * 5000)
    assert client.recv_type("new_message")["message"]["content"] == "😀" * 5000
    assert error_of(client, {"type": "send_message", "session_id": session_id, "content": "x" * 5001}) == "消息内容过长"
    assert len(chat_server.http("GET", f"/api/sessions/{session_id}/messages")[1]["messages"]) == 1


def test_unjoined_sender_gets_its_message_exactly_once(chat_server: Server, clients) -> None:
    """A sender who never joined receives its own new_message once."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    client.say(session_id, "not joined")
    frame = client.recv_type("new_message")
    assert frame["session_id"] == session_id and frame["message"]["sender_id"] == customer
    assert client.barrier() == []


def test_joined_sender_gets_its_message_exactly_once(chat_server: Server, clients) -> None:
    """A sender in the room receives its own new_message once, not twice."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    client.join(session_id)
    client.say(session_id, "joined")
    assert client.recv_type("new_message")["message"]["content"] == "joined"
    assert client.barrier() == []


def test_everyone_in_the_room_gets_each_message_once(chat_server: Server, clients, agent_id: int) -> None:
    """Customer tabs and agent in the room each get every message once, each sender's in order; outsiders nothing."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    tab1, tab2, agent = clients(customer), clients(customer), clients(agent_id)
    outsider, unjoined_tab = clients(fresh_id()), clients(customer)
    for client in (tab1, tab2, agent):
        client.join(session_id)
    tab1.say(session_id, "一")
    agent.say(session_id, "二")
    tab1.say(session_id, "三")
    for client in (tab1, tab2, agent):
        frames = [client.recv_type("new_message") for _ in range(3)]
        by_sender = [(f["message"]["sender_id"], f["message"]["content"]) for f in frames]
        assert [c for s, c in by_sender if s == customer] == ["一", "三"]  # one sender's order is kept
        assert [c for s, c in by_sender if s == agent_id] == ["二"]
        assert client.barrier() == []
    assert outsider.barrier() == [] and unjoined_tab.barrier() == []


def test_one_senders_messages_arrive_in_order(chat_server: Server, clients, agent_id: int) -> None:
    """Thirty messages sent back to back reach the sender and a room member once each, in the order sent."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    sender, agent = clients(customer), clients(agent_id)
    agent.join(session_id)
    sent = [f"#{n}" for n in range(30)]
    for content in sent:
        sender.say(session_id, content)
    for client in (sender, agent):
        assert [client.recv_type("new_message")["message"]["content"] for _ in sent] == sent
        assert client.barrier() == []
    stored = chat_server.http("GET", f"/api/sessions/{session_id}/messages")[1]["messages"]
    assert [m["content"] for m in stored] == sent


def test_left_connection_gets_no_more_messages(chat_server: Server, clients) -> None:
    """After leave_session nothing of the session arrives."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    listener, sender = clients(customer), clients(customer)
    listener.join(session_id)
    listener.request({"type": "leave_session"})
    sender.say(session_id, "after leave")
    sender.recv_type("new_message")
    assert listener.barrier() == []


def test_foreign_session_refused_and_nothing_delivered(chat_server: Server, clients) -> None:
    """A customer sending to another's session gets 无权访问该会话; the room gets nothing, nothing is stored."""
    owner = fresh_id()
    session_id = chat_server.open_session(owner)
    member = clients(owner)
    member.join(session_id)
    intruder = clients(fresh_id())
    assert error_of(intruder, {"type": "send_message", "session_id": session_id, "content": "hi"}) == "无权访问该会话"
    assert member.barrier() == []
    assert chat_server.http("GET", f"/api/sessions/{session_id}/messages")[1] == {"messages": []}


def test_closed_session_refused(chat_server: Server, clients, agent_id: int) -> None:
    """Sending to a closed session (owner or agent) gets 会话已关闭; unknown gets 会话不存在."""
    owner = fresh_id()
    session_id = closed_session(chat_server, owner)
    for client in (clients(owner), clients(agent_id)):
        assert error_of(client, {"type": "send_message", "session_id": session_id, "content": "hi"}) == "会话已关闭"
        unknown = {"type": "send_message", "session_id": UNKNOWN_SESSION, "content": "hi"}
        assert error_of(client, unknown) == "会话不存在"


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({"type": "send_message", "session_id": "abc"}, "缺少会话ID或消息内容"),
        ({"type": "send_message", "session_id": "FOREIGN_CLOSED", "content": 7}, "消息内容无效"),
        ({"type": "send_message", "session_id": UNKNOWN_SESSION, "content": "x" * 5001}, "消息内容过长"),
        ({"type": "send_message", "session_id": "FOREIGN_CLOSED", "content": "x" * 5001}, "消息内容过长"),
        ({"type": "send_message", "session_id": "FOREIGN_CLOSED", "content": "hi"}, "无权访问该会话"),
        ({"type": "join_session", "session_id": "FOREIGN_CLOSED"}, "无权访问该会话"),
        ({"type": "nope", "session_id": "abc"}, "未知消息类型"),
    ],
    ids=["missing>invalid", "content>session", "long>unknown", "long>foreign", "foreign>closed", "join-foreign>closed",
         "type>fields"],
)
def test_error_precedence(chat_server: Server, clients, message: dict, text: str) -> None:
    """When several refusals apply, the spec's order decides (format, auth, missing, invalid, found, allowed, open)."""
    foreign_closed = closed_session(chat_server, fresh_id())
    message = {k: (foreign_closed if v == "FOREIGN_CLOSED" else v) for k, v in message.items()}
    assert error_of(clients(fresh_id()), message) == text


@pytest.mark.parametrize(("raw", "text"), [("garbage", "消息格式错误"), ('{"type":"zzz"}', "未知消息类型")])
def test_format_errors_come_before_authentication(clients, raw: str, text: str) -> None:
    """An unauthenticated connection sending a bad frame gets the format error, not 未认证."""
    assert error_of(clients(), raw) == text


# -- re-auth ------------------------------------------------------------------------------------------------


def test_reauth_rebinds_and_leaves_the_session(chat_server: Server, clients) -> None:
    """A second auth answers only auth_success, leaves the session, and acts as the new user."""
    first_user, second_user = fresh_id(), fresh_id()
    session_id = chat_server.open_session(first_user)
    client, sender = clients(first_user), clients(first_user)
    client.join(session_id)
    assert client.request({"type": "auth", "user_id": second_user}) == {"type": "auth_success", "user_id": second_user}
    assert client.barrier() == []
    sender.say(session_id, "old room")
    sender.recv_type("new_message")
    assert client.barrier() == []
    assert error_of(client, {"type": "leave_session"}) == "未加入会话"
    assert error_of(client, {"type": "join_session", "session_id": session_id}) == "无权访问该会话"


def test_refused_reauth_changes_nothing(chat_server: Server, clients) -> None:
    """A second auth with a bad id is refused and the connection keeps its user and session."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    client.join(session_id)
    assert error_of(client, {"type": "auth", "user_id": "bad"}) == "用户ID无效"
    assert error_of(client, {"type": "auth"}) == "缺少用户ID"
    client.say(session_id, "still me")
    assert client.recv_type("new_message")["message"]["sender_id"] == customer
    assert client.request({"type": "leave_session"}) == {"type": "left_session", "session_id": session_id}


# -- ping and bad frames ------------------------------------------------------------------------------------


def test_ping_without_auth_answers_pong_raw(chat_server: Server) -> None:
    """ping needs no auth and the answer is exactly {"type":"pong"}."""
    client = Client(chat_server.ws_url)
    try:
        client.send({"type": "ping"})
        client.ws.settimeout(10)
        assert client.ws.recv() == '{"type":"pong"}'
    finally:
        client.close()


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        ("not json", "消息格式错误"),
        ("[1,2,3]", "消息格式错误"),
        ('"a string"', "消息格式错误"),
        ("123", "消息格式错误"),
        ("null", "消息格式错误"),
        ('{"type":"ping"', "消息格式错误"),
        (b"\x00\xff\x10binary", "消息格式错误"),
        ('{"session_id":1}', "未知消息类型"),
        ('{"type":"unknown_kind"}', "未知消息类型"),
        ('{"type":42}', "未知消息类型"),
    ],
    ids=["non-json", "array", "string", "number", "null", "truncated", "binary", "missing-type", "unknown-type",
         "type-not-string"],
)
def test_bad_frame_answered_and_state_kept(chat_server: Server, clients, frame: str | bytes, text: str) -> None:
    """Each kind of bad frame gets its error; the connection stays open, authenticated and in its session."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    client.join(session_id)
    if isinstance(frame, bytes):
        client.ws.send_binary(frame)
    else:
        client.ws.send(frame)
    reply = client.recv()
    assert reply["type"] == "error" and reply["error"] == text
    client.say(session_id, "still here")
    assert client.recv_type("new_message")["message"]["content"] == "still here"
    assert client.request({"type": "leave_session"}) == {"type": "left_session", "session_id": session_id}


# -- wire format, time, unicode ----------------------------------------------------------------------------


def test_new_message_raw_wire_format(chat_server: Server, clients) -> None:
    """new_message on the wire: compact JSON, unicode unescaped, legacy field order, integer ids."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    content = '你好 "quoted" 😀 \\ é'
    client.say(session_id, content)
    client.ws.settimeout(10)
    raw = client.ws.recv()
    frame = json.loads(raw)
    message = frame["message"]
    expected = (
        f'{{"type":"new_message","session_id":{session_id},"message":{{"id":{message["id"]},'
        f'"session_id":{session_id},"sender_id":{customer},"content":'
        + json.dumps(content, ensure_ascii=False)
        + f',"created_at":"{message["created_at"]}"}}}}'
    )
    assert raw == expected
    assert "\\u" not in raw and "😀" in raw
    assert all(isinstance(message[k], int) for k in ("id", "session_id", "sender_id"))


def test_created_at_is_local_time_of_app_timezone(chat_server: Server, clients) -> None:
    """created_at is "YYYY-MM-DD HH:MM:SS" in APP_TIMEZONE (default Asia/Shanghai)."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    client.say(session_id, "time")
    created_at = client.recv_type("new_message")["message"]["created_at"]
    assert WIRE_TIME.fullmatch(created_at)
    now = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
    assert abs(datetime.strptime(created_at, "%Y-%m-%d %H:%M:%S") - now) < timedelta(seconds=60)


UNICODE_CONTENTS = [
    "你好，世界",
    "😀🎉👍🏽",
    "👨‍👩‍👧‍👦 family",
    "𠀋𡈽 (CJK extension B)",
    "日本語のテキスト、한국어",
    "e\u0301 combining",
    "mixed 中文 emoji 🚀 and ASCII",
]


@pytest.mark.parametrize("content", UNICODE_CONTENTS)
def test_unicode_round_trips_through_storage(chat_server: Server, clients, content: str) -> None:
    """Emoji (4-byte UTF-8) and CJK come back identical live and from the database."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    client = clients(customer)
    client.say(session_id, content)
    live = client.recv_type("new_message")["message"]
    assert live["content"] == content
    status, body = chat_server.http("GET", f"/api/sessions/{session_id}/messages")
    assert status == 200 and body["messages"] == [live]
