"""Nothing lost on reconnect: history replay on join (with the live hand-over under load) and idempotent send.

Over real sockets against real servers: one worker on SQLite and on MariaDB; the two-worker variants need
the Redis backplane and are skipped on a build whose /readyz reports none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import websocket

from support import Client, Server, client_elsewhere, fresh_id, node_of

REPLAY_LIMIT = 200  # above the 50 missed plus what the background sender adds meanwhile
MISSED_PER_ITERATION = 50
HANDOVER_ITERATIONS = 30
HANDOVER_BUDGET_SECONDS = 25.0
SERVER_SETTINGS = {"REPLAY_LIMIT": REPLAY_LIMIT, "RATE_LIMIT": 0}


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def chat_server(request: pytest.FixtureRequest, server_factory: Callable[..., Server]) -> Server:
    """One worker, a small REPLAY_LIMIT, no rate limit (the tests send in bursts)."""
    if request.param == "mariadb":
        return server_factory(database_url=request.getfixturevalue("mariadb_url"), **SERVER_SETTINGS)
    return server_factory(**SERVER_SETTINGS)


@pytest.fixture(scope="module")
def agent_id(chat_server: Server) -> int:
    return chat_server.add_agent(fresh_id())


@pytest.fixture(scope="module")
def two_worker_server(server_factory: Callable[..., Server], mariadb_url: str, redis_url: str) -> Server:
    """Two workers on MariaDB with the Redis backplane (skipped where this build has no backplane)."""
    server = server_factory(database_url=mariadb_url, workers=2, REDIS_URL=redis_url, **SERVER_SETTINGS)
    status, body = server.http("GET", "/readyz")
    if not isinstance(body, dict) or "backplane" not in body.get("checks", {}):
        pytest.skip("this build has no cross-worker backplane yet (/readyz reports none): run after merging it")
    return server


# -- helpers ---------------------------------------------------------------------------------------


def stored_ids(server: Server, session_id: int, after_id: int = 0) -> list[int]:
    """Every stored message id of the session after `after_id`, oldest first (paged as the trusted backend)."""
    ids: list[int] = []
    while True:
        status, body = server.http("GET", f"/api/sessions/{session_id}/messages?after_id={after_id}&limit=500")
        assert status == 200, body
        page = [m["id"] for m in body["messages"]]
        ids.extend(page)
        if len(page) < 500:
            return ids
        after_id = page[-1]


def send_burst(client: Client, session_id: int, count: int, label: str) -> list[int]:
    """Send `count` messages back to back (the client has not joined); the ids of its own echoes, in order."""
    for n in range(count):
        client.say(session_id, f"{label} {n}")
    ids = []
    while len(ids) < count:
        frame = client.recv_type("new_message")
        ids.append(frame["message"]["id"])
    return ids


def join_replaying(client: Client, session_id: int, last_message_id: int) -> tuple[dict[str, Any], list[int]]:
    """Join with last_message_id; (the joined_session reply, the ids of the replayed frames)."""
    reply = client.request({"type": "join_session", "session_id": session_id, "last_message_id": last_message_id})
    assert reply["type"] == "joined_session", reply
    ids = []
    for _ in range(reply["replayed"]):
        frame = client.recv_type("new_message")
        assert frame["session_id"] == session_id
        ids.append(frame["message"]["id"])
    return reply, ids


class ContinuousSender(threading.Thread):
    """Sends into the session all along (not joined, so it only hears its own echoes), paced at ~250/s."""

    def __init__(self, client: Client, session_id: int) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.session_id = session_id
        self.done = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                self.client.say(self.session_id, f"background {self.sent}")
                self.client.recv_type("new_message")
                self.sent += 1
                self.done.wait(0.004)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def finish(self) -> int:
        self.done.set()
        self.join(15)
        assert not self.is_alive(), "background sender did not stop"
        assert self.error is None, repr(self.error)
        return self.sent


@dataclass
class Receiver:
    """The recovering client's side: every id it received, across all its connections."""

    received: list[int] = field(default_factory=list)

    @property
    def last(self) -> int:
        return max(self.received, default=0)

    def read_live(self, client: Client, count: int) -> None:
        """Read until `count` more new_message frames arrived (nothing else may arrive)."""
        for _ in range(count):
            frame = client.recv_type("new_message")
            self.received.append(frame["message"]["id"])

    def read_until(self, client: Client, wanted: set[int], timeout: float = 10.0) -> None:
        """Read until every id of `wanted` arrived or `timeout` passed (what is missing is then a gap)."""
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.received) and time.monotonic() < deadline:
            try:
                frame = client.recv_type("new_message", timeout=max(0.1, deadline - time.monotonic()))
            except websocket.WebSocketTimeoutException:
                return
            self.received.append(frame["message"]["id"])


@dataclass
class HandOverFigures:
    iterations: int = 0
    missed: int = 0
    replayed: int = 0
    most_replayed: int = 0
    background: int = 0
    stored: int = 0
    received: int = 0
    gaps: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    def line(self, label: str) -> str:
        return (
            f"hand-over [{label}]: {self.iterations} iterations in {self.seconds:.1f}s, "
            f"{self.missed} sent while away, {self.replayed} replayed (at most {self.most_replayed} at once), "
            f"{self.background} sent by the background "
            f"sender, {self.stored} stored, {self.received} received, gaps {self.gaps}, duplicates {self.duplicates}"
        )


def run_hand_over(
    server: Server, agent_id: int, connect_recovering: Callable[[str | None], Client], label: str
) -> HandOverFigures:
    """Disconnect, miss 50, reconnect with last_message_id, while a sender never stops; count gaps and repeats."""
    customer = fresh_id()
    session_id = server.open_session(customer)
    burst = server.client(customer)
    background = ContinuousSender(server.client(customer), session_id)
    receiver = Receiver()
    figures = HandOverFigures()
    started = time.monotonic()
    recovering = connect_recovering(None)
    join_replaying(recovering, session_id, 0)
    background.start()
    try:
        while figures.iterations < HANDOVER_ITERATIONS and time.monotonic() - started < HANDOVER_BUDGET_SECONDS:
            receiver.read_live(recovering, 3)  # live again before the next drop
            last_seen = receiver.last
            previous_node = node_of(recovering)
            recovering.close()

            missed = send_burst(burst, session_id, MISSED_PER_ITERATION, f"missed {figures.iterations}")
            figures.missed += len(missed)

            recovering = connect_recovering(previous_node)
            reply, replayed = join_replaying(recovering, session_id, last_seen)
            assert reply["recovered"] is True and "truncated" not in reply, reply
            figures.most_replayed = max(figures.most_replayed, len(replayed))
            # The replay is exactly the stored history after last_seen, in id order, the 50 among it.
            assert replayed == sorted(set(replayed)) and replayed[0] > last_seen
            assert replayed == [i for i in stored_ids(server, session_id, last_seen) if i <= replayed[-1]]
            assert set(missed) <= set(replayed)
            receiver.received.extend(replayed)
            figures.replayed += len(replayed)
            figures.iterations += 1
    finally:
        figures.background = background.finish()
    marker = send_burst(burst, session_id, 1, "marker")
    stored = stored_ids(server, session_id)
    receiver.read_until(recovering, set(stored) | set(marker))
    figures.seconds = time.monotonic() - started
    figures.stored = len(stored)
    figures.received = len(receiver.received)
    figures.gaps = len(set(stored) - set(receiver.received))
    figures.duplicates = len(receiver.received) - len(set(receiver.received))
    print("\n" + figures.line(label))
    for c in (burst, background.client, recovering):
        c.close()
    return figures


# -- replay on join --------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"last_message_id": None}])
def test_join_without_last_message_id_is_the_legacy_join(chat_server: Server, extra: dict[str, Any]) -> None:
    """Without last_message_id (or with null) the reply is exactly the legacy one and nothing is replayed."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    sender = chat_server.client(customer)
    send_burst(sender, session_id, 3, "before")
    client = chat_server.client(customer)
    assert client.request({"type": "join_session", "session_id": session_id, **extra}) == {
        "type": "joined_session", "session_id": session_id}
    assert client.barrier() == []


def test_reconnect_replays_the_missed_messages_then_live_ones(chat_server: Server, agent_id: int) -> None:
    """joined_session comes first (recovered, replayed count), then the missed messages in order, then live ones."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    sender = chat_server.client(customer)
    agent = chat_server.client(agent_id)
    agent.join(session_id)
    seen = send_burst(sender, session_id, 2, "seen")
    assert [agent.recv_type("new_message")["message"]["id"] for _ in seen] == seen
    agent.close()

    missed = send_burst(sender, session_id, 5, "missed")
    agent = chat_server.client(agent_id)
    reply, replayed = join_replaying(agent, session_id, seen[-1])
    assert reply == {"type": "joined_session", "session_id": session_id, "recovered": True, "replayed": 5}
    assert replayed == missed
    live = send_burst(sender, session_id, 1, "live")
    assert agent.recv_type("new_message")["message"]["id"] == live[0]
    assert agent.barrier() == []


def test_replay_from_zero_sends_the_whole_history(chat_server: Server) -> None:
    """last_message_id 0 (or "0") means "I have nothing": every stored message is replayed."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    sender = chat_server.client(customer)
    sent = send_burst(sender, session_id, 4, "all")
    reply, replayed = join_replaying(chat_server.client(customer), session_id, "0")  # type: ignore[arg-type]
    assert reply["recovered"] is True and replayed == sent


def test_replay_with_nothing_missed_replays_nothing(chat_server: Server) -> None:
    """A client that has everything gets recovered true, replayed 0, and then live messages."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    sender = chat_server.client(customer)
    sent = send_burst(sender, session_id, 2, "had")
    client = chat_server.client(customer)
    reply, replayed = join_replaying(client, session_id, sent[-1])
    assert (reply["recovered"], reply["replayed"], replayed) == (True, 0, [])
    assert client.barrier() == []


def test_more_missed_than_replay_limit_is_truncated_and_pages_without_gap(chat_server: Server) -> None:
    """Over REPLAY_LIMIT: the oldest REPLAY_LIMIT are replayed, truncated with resume_after_id; HTTP pages the rest."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    sender = chat_server.client(customer)
    seen = send_burst(sender, session_id, 1, "seen")
    missed = send_burst(sender, session_id, REPLAY_LIMIT + 15, "missed")
    client = chat_server.client(customer)
    reply, replayed = join_replaying(client, session_id, seen[0])
    assert reply == {"type": "joined_session", "session_id": session_id, "recovered": False, "replayed": REPLAY_LIMIT,
                     "truncated": True, "resume_after_id": missed[REPLAY_LIMIT - 1]}
    assert replayed == missed[:REPLAY_LIMIT]
    live = send_burst(sender, session_id, 1, "live")
    assert client.recv_type("new_message")["message"]["id"] == live[0]
    paged = stored_ids(chat_server, session_id, reply["resume_after_id"])
    assert replayed + paged == missed + live


@pytest.mark.parametrize("value", [-1, 1.5, True, "abc", "", {"id": 1}, [3], "１２"])
def test_invalid_last_message_id_is_refused_and_changes_nothing(chat_server: Server, value: Any) -> None:
    """A last_message_id that is not an id answers 消息ID无效; the connection stays where it was."""
    customer = fresh_id()
    first = chat_server.open_session(customer)
    client = chat_server.client(customer)
    client.join(first)
    chat_server.http("POST", f"/api/sessions/{first}/close")
    client.recv_type("session_closed")
    second = chat_server.open_session(customer)
    reply = client.request({"type": "join_session", "session_id": second, "last_message_id": value})
    assert reply == {"type": "error", "error": "消息ID无效", "code": "invalid_message_id"}
    assert client.request({"type": "leave_session"}) == {"type": "left_session", "session_id": first}


def test_replaying_join_moves_the_connection_out_of_its_previous_session(chat_server: Server, agent_id: int) -> None:
    """Joining another session with replay leaves the first: its messages no longer arrive."""
    customer, other = fresh_id(), fresh_id()
    mine, theirs = chat_server.open_session(customer), chat_server.open_session(other)
    agent = chat_server.client(agent_id)
    agent.join(theirs)
    reply, _ = join_replaying(agent, mine, 0)
    assert reply["recovered"] is True
    send_burst(chat_server.client(other), theirs, 1, "elsewhere")
    here = send_burst(chat_server.client(customer), mine, 1, "here")
    assert agent.recv_type("new_message")["message"]["id"] == here[0]
    assert agent.barrier() == []


def test_hand_over_under_continuous_sending_has_no_gap_or_duplicate(chat_server: Server, agent_id: int) -> None:
    """30 x (drop, 50 missed, rejoin with last_message_id) while another sender never stops: 0 gaps, 0 repeats."""
    figures = run_hand_over(chat_server, agent_id, lambda _previous: chat_server.client(agent_id), "1 worker")
    assert figures.iterations >= 10, figures
    assert (figures.gaps, figures.duplicates) == (0, 0), figures


@pytest.mark.redis
def test_hand_over_to_the_other_worker_has_no_gap_or_duplicate(two_worker_server: Server) -> None:
    """Two workers + Redis: each reconnect lands on the other worker; still 0 gaps and 0 repeats."""
    server = two_worker_server
    agent_id = server.add_agent(fresh_id())

    def on_other_worker(previous: str | None) -> Client:
        return client_elsewhere(lambda: server.client(agent_id), previous)

    figures = run_hand_over(server, agent_id, on_other_worker, "2 workers + Redis")
    assert figures.iterations >= 10, figures
    assert (figures.gaps, figures.duplicates) == (0, 0), figures


# -- idempotent send -------------------------------------------------------------------------------


def race_same_client_msg_id(first: Client, second: Client, session_id: int, rounds: int) -> list[tuple[dict, dict]]:
    """Send the same client_msg_id from both connections at once, `rounds` times; each one's answer per round."""
    answers = []
    for n in range(rounds):
        key = f"race-{n}-{fresh_id()}"
        first.say(session_id, f"hello {n}", client_msg_id=key)
        second.say(session_id, f"hello {n}", client_msg_id=key)
        answers.append((first.recv_type("new_message"), second.recv_type("new_message")))
    return answers


def check_race(server: Server, session_id: int, answers: list[tuple[dict, dict]], observer: Client) -> None:
    for a, b in answers:
        assert a["message"] == b["message"], (a, b)  # both get the original
        assert sorted([a.get("duplicate", False), b.get("duplicate", False)]) == [False, True], (a, b)
    winners = [a["message"]["id"] for a, _ in answers]
    assert [observer.recv_type("new_message")["message"]["id"] for _ in winners] == winners
    assert observer.barrier() == []
    stored = stored_ids(server, session_id)
    assert stored == winners  # one row per client_msg_id


def test_same_client_msg_id_raced_from_two_connections_stores_one_row(chat_server: Server, agent_id: int) -> None:
    """Two connections of one user race one client_msg_id: one row; both get it; the room gets it once."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    observer = chat_server.client(agent_id)
    observer.join(session_id)
    answers = race_same_client_msg_id(chat_server.client(customer), chat_server.client(customer), session_id, 20)
    check_race(chat_server, session_id, answers, observer)


@pytest.mark.redis
def test_same_client_msg_id_raced_across_workers_stores_one_row(two_worker_server: Server) -> None:
    """The race from connections on two different workers: still one row, both get the original, room once."""
    server = two_worker_server
    customer = fresh_id()
    session_id = server.open_session(customer)
    first = server.client(customer)
    second = client_elsewhere(lambda: server.client(customer), node_of(first))
    observer = server.client(server.add_agent(fresh_id()))
    observer.join(session_id)
    check_race(server, session_id, race_same_client_msg_id(first, second, session_id, 20), observer)


def test_repeated_client_msg_id_answers_only_the_sender_with_the_original(chat_server: Server, agent_id: int) -> None:
    """A resend stores nothing, the sender gets the original marked duplicate, the room gets nothing."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    observer = chat_server.client(agent_id)
    observer.join(session_id)
    sender = chat_server.client(customer)
    sender.say(session_id, "once", client_msg_id="k-1")
    original = sender.recv_type("new_message")
    assert original["message"]["client_msg_id"] == "k-1" and "duplicate" not in original
    assert observer.recv_type("new_message") == original  # the echo of client_msg_id reaches everyone
    sender.say(session_id, "once (resent)", client_msg_id="k-1")
    again = sender.recv_type("new_message")
    assert again == {**original, "duplicate": True}
    assert observer.barrier() == []  # one worker: a broadcast would be queued before the sender's answer
    assert stored_ids(chat_server, session_id) == [original["message"]["id"]]


def test_the_same_client_msg_id_in_another_session_is_a_new_message(chat_server: Server) -> None:
    """Idempotency is per user and session: the key may repeat elsewhere."""
    customer = fresh_id()
    first = chat_server.open_session(customer)
    sender = chat_server.client(customer)
    sender.say(first, "a", client_msg_id="same")
    one = sender.recv_type("new_message")
    chat_server.http("POST", f"/api/sessions/{first}/close")
    second = chat_server.open_session(customer)
    sender.say(second, "b", client_msg_id="same")
    two = sender.recv_type("new_message")
    assert "duplicate" not in two and two["message"]["id"] != one["message"]["id"]


@pytest.mark.parametrize("value", ["", "x" * 65, 12, ["a"], {"a": 1}, True])
def test_invalid_client_msg_id_is_refused(chat_server: Server, value: Any) -> None:
    """client_msg_id must be a string of 1 to 64 characters; otherwise client_msg_id无效 and nothing is stored."""
    customer = fresh_id()
    session_id = chat_server.open_session(customer)
    sender = chat_server.client(customer)
    sender.say(session_id, "hi", client_msg_id=value)
    assert sender.recv() == {"type": "error", "error": "client_msg_id无效", "code": "invalid_client_msg_id"}
    assert stored_ids(chat_server, session_id) == []
