"""A message that cannot be stored (a lone surrogate escape: valid JSON, no UTF-8 form) is refused on its own,
over WebSocket and HTTP, and costs none of the senders beside it their message (issue 13, item 1)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import Client, Server, fresh_id

pytestmark = pytest.mark.timeout(180)

SENDERS = 30
BAD_FORMAT = {"type": "error", "error": "消息格式错误", "code": "bad_format"}

# The poison as JSON text: json.dumps writes a lone surrogate as the escape a hostile client would send.
POISONS = {
    "content": lambda session_id: {"type": "send_message", "session_id": session_id, "content": "\ud800"},
    "client_msg_id": lambda session_id: {"type": "send_message", "session_id": session_id, "content": "hi",
                                         "client_msg_id": "k\udfff"},
}


def poison_text(field: str, session_id: int) -> str:
    text = json.dumps(POISONS[field](session_id))
    assert "\\ud" in text
    return text


def stored_contents(server: Server, session_id: int) -> list[str]:
    status, body = server.http("GET", f"/api/sessions/{session_id}/messages?limit=100")
    assert status == 200, body
    return [m["content"] for m in body["messages"]]


@pytest.fixture
def innocents(chat_server: Server):
    """SENDERS customers, each authenticated and joined to a session of their own."""
    opened: list[tuple[Client, int, int]] = []
    for _ in range(SENDERS):
        user_id = fresh_id()
        session_id = chat_server.open_session(user_id)
        client = chat_server.client(user_id)
        client.join(session_id)
        opened.append((client, user_id, session_id))
    yield opened
    for client, _, _ in opened:
        client.close()


@pytest.mark.parametrize("field", POISONS)
def test_a_poison_frame_is_a_format_error_and_every_concurrent_sender_is_stored_and_delivered(
        chat_server: Server, innocents, field: str) -> None:
    """30 senders and one poison sender at once over WebSocket: the poison frames are answered 消息格式错误,
    the 30 messages are stored and delivered, and nothing is stored for the poison sender."""
    poisoner_id = fresh_id()
    poison_session = chat_server.open_session(poisoner_id)
    poisoner = chat_server.client(poisoner_id)
    try:
        poisoner.join(poison_session)
        for n, (client, _, session_id) in enumerate(innocents):
            if n % 10 == 5:  # interleaved, so the poison lands in the writers' batches with the others
                poisoner.send(poison_text(field, poison_session))
            client.say(session_id, f"innocent {n} 你好")
        answers = [client.recv() for client, _, _ in innocents]  # each sender's answer: its new_message or an error
        stored = [stored_contents(chat_server, s) for _, _, s in innocents]
        assert sum(len(c) for c in stored) == SENDERS, f"{sum(len(c) for c in stored)} of {SENDERS} stored"
        assert stored == [[f"innocent {n} 你好"] for n in range(SENDERS)]
        assert [a.get("message", {}).get("content") for a in answers] == [f"innocent {n} 你好" for n in range(SENDERS)]
        assert [poisoner.recv() for _ in range(3)] == [BAD_FORMAT] * 3
        assert poisoner.barrier() == []
        assert stored_contents(chat_server, poison_session) == []
        poisoner.say(poison_session, "after the poison")  # the poisoner's connection and the writers still work
        assert poisoner.recv_type("new_message")["message"]["content"] == "after the poison"
    finally:
        poisoner.close()
    assert "Traceback" not in chat_server.log()


@pytest.mark.parametrize("field", POISONS)
def test_a_poison_post_is_a_400_and_every_concurrent_post_is_stored_and_delivered(
        chat_server: Server, innocents, field: str) -> None:
    """The same over POST /api/sessions/<id>/messages, all 31 posts at once: the poison answers 400 bad_format,
    the 30 others 201, each stored once and delivered to its session's connection."""
    poisoner_id = fresh_id()
    poison_session = chat_server.open_session(poisoner_id)

    def post(job: tuple[int, int, bytes]) -> tuple[int, object]:
        user_id, session_id, body = job
        return chat_server.http("POST", f"/api/sessions/{session_id}/messages", raw=body,
                                headers={"X-User-Id": str(user_id)})

    jobs = []
    for n, (_, user_id, session_id) in enumerate(innocents):
        if n % 10 == 5:
            poison = {k: v for k, v in POISONS[field](poison_session).items() if k not in ("type", "session_id")}
            jobs.append((poisoner_id, poison_session, json.dumps(poison).encode()))
        jobs.append((user_id, session_id, json.dumps({"content": f"innocent {n} 你好"}).encode()))
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(post, jobs))
    refused = [a for job, a in zip(jobs, answers, strict=True) if job[0] == poisoner_id]
    accepted = [a for job, a in zip(jobs, answers, strict=True) if job[0] != poisoner_id]
    stored = [stored_contents(chat_server, s) for _, _, s in innocents]
    assert sum(len(c) for c in stored) == SENDERS, f"{sum(len(c) for c in stored)} of {SENDERS} stored"
    assert stored == [[f"innocent {n} 你好"] for n in range(SENDERS)]
    assert refused == [(400, {"error": "消息格式错误", "code": "bad_format"})] * 3
    assert [status for status, _ in accepted] == [201] * SENDERS, accepted
    for n, (client, _, _) in enumerate(innocents):
        assert client.recv_type("new_message")["message"]["content"] == f"innocent {n} 你好"
    assert stored_contents(chat_server, poison_session) == []
    assert "Traceback" not in chat_server.log()
