"""What a client that never reads may cost a worker: its queue is bounded in bytes (MAX_OUTBOUND_BYTES), and a
replay goes out at the client's pace instead of all at once (issue 13, item 5). No timing assertions: the
worker's memory is measured, and bystanders are awaited with receive timeouts."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from support import Client, Server, fresh_id

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

BUDGET = 1024 * 1024  # the default MAX_OUTBOUND_BYTES
CONTENT = "\U0001F600" * 5000  # the longest default message, 4 bytes a character
SEEDED = 400
SMALL_BUFFER = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]  # so the server's queue fills, not the kernel's


@pytest.fixture(scope="module")
def server(server_factory) -> Server:
    return server_factory(RATE_LIMIT=0)


@pytest.fixture(scope="module")
def big_session(server: Server) -> tuple[int, int]:
    """(owner, session) with SEEDED messages of CONTENT stored."""
    owner = fresh_id()
    session_id = server.open_session(owner)
    seeder = server.client(owner)
    for _ in range(SEEDED):  # one at a time: a sender that does not read its own echoes is a slow client too
        seeder.say(session_id, CONTENT)
        seeder.recv_type("new_message")
    seeder.close()
    return owner, session_id


@pytest.fixture
def opened() -> Iterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    for client in clients:
        client.close()


def worker_rss(server: Server) -> int:
    root = psutil.Process(server.proc.pid)
    return sum(p.memory_info().rss for p in root.children(recursive=True) or [root])


def read_replay(client: Client, session_id: int) -> int:
    client.send({"type": "join_session", "session_id": session_id, "last_message_id": 0})
    joined = client.recv_type("joined_session")
    for _ in range(joined["replayed"]):
        client.recv_type("new_message", timeout=30)
    return joined["replayed"]


def test_sockets_that_never_read_and_ask_for_replay_after_replay_stay_within_the_byte_budget(
        server: Server, big_session: tuple[int, int], opened: list[Client]) -> None:
    """3 sockets that never read each ask for 5 replays of 400 messages of 5,000 emoji (8 MB each): the worker
    grows by about the queues' budget, not by the replays, and a bystander in the same session and one in
    another keep sending and receiving meanwhile."""
    owner, session_id = big_session
    warm = server.client(owner)  # a reading client: warms the database's page cache and the allocator
    opened.append(warm)
    assert read_replay(warm, session_id) == SEEDED
    other_user = fresh_id()
    other_session = server.open_session(other_user)
    bystander = server.client(other_user)
    opened.append(bystander)
    bystander.join(other_session)
    member = server.client(owner)
    opened.append(member)
    member.join(session_id)
    before = worker_rss(server)

    hostiles = [server.client(owner, sockopt=SMALL_BUFFER) for _ in range(3)]
    opened.extend(hostiles)
    join = json.dumps({"type": "join_session", "session_id": session_id, "last_message_id": 0})
    for _ in range(5):
        for hostile in hostiles:
            hostile.send(join)  # and never reads again
    peak = before
    for n in range(30):  # meanwhile the others are served as usual
        bystander.say(other_session, f"bystander {n}")
        assert bystander.recv_type("new_message")["message"]["content"] == f"bystander {n}"
        member.say(session_id, f"member {n}")
        assert member.recv_type("new_message")["message"]["content"] == f"member {n}"
        assert bystander.request({"type": "ping"}) == {"type": "pong"}
        peak = max(peak, worker_rss(server))
        time.sleep(0.1)  # sampling the worker's memory over a few seconds, not waiting for an event
    grown = peak - before
    assert grown < len(hostiles) * 2 * BUDGET + 24 * 2**20, f"worker grew {grown / 2**20:.1f} MB"


def test_a_joined_socket_that_never_reads_is_closed_once_its_queue_passes_the_byte_budget(
        server: Server, opened: list[Client]) -> None:
    """Live traffic a client does not read: past MAX_OUTBOUND_BYTES queued it is closed 1008 (too slow), long
    before the 2000-frame bound, and the room's other members keep getting every message."""
    owner = fresh_id()
    session_id = server.open_session(owner)
    talker = server.client(owner)
    opened.append(talker)
    talker.join(session_id)
    slow = server.client(owner, sockopt=SMALL_BUFFER)
    opened.append(slow)
    slow.join(session_id)  # and never reads again
    for n in range(SEEDED):
        talker.say(session_id, f"{n:04}" + CONTENT[4:])
        assert talker.recv_type("new_message")["message"]["content"] == f"{n:04}" + CONTENT[4:]
    deadline = time.monotonic() + 30
    pattern = re.compile(r"client too slow, closing.*" + re.escape(slow.connection_id))
    while not pattern.search(server.log()) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the server's log: there is no event to wait on
    assert pattern.search(server.log()), "the slow socket was not closed for its queued bytes"
