"""Cross-worker chat traffic for tests: place customer and agent on different processes, exchange, count.

Every delivery is counted per receiving connection: lost (expected, never came), duplicated (came more than
once), out of order (a sender's sequence number went backwards). A node is a worker process: the part of a
`connection_id` before its last dash (`host-pid-random`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import websocket

from support import Client, Server, fresh_id


def node_of(connection_id: str) -> str:
    return connection_id.rsplit("-", 1)[0]


def clients_per_node(open_client: Callable[[], Client], nodes: int, per_node: int, attempts: int = 200
                     ) -> dict[str, list[Client]]:
    """Open connections until `nodes` different processes each hold `per_node`; the surplus is closed."""
    found: dict[str, list[Client]] = {}
    spare: list[Client] = []
    for _ in range(attempts):
        client = open_client()
        owned = found.setdefault(node_of(client.connection_id), [])
        (owned if len(owned) < per_node else spare).append(client)
        if len(found) >= nodes and sum(len(v) >= per_node for v in found.values()) >= nodes:
            break
    for client in spare:
        client.close()
    chosen = dict([(n, cs) for n, cs in found.items() if len(cs) >= per_node][:nodes])
    for node, owned in found.items():
        if node not in chosen:
            for client in owned:
                client.close()
    assert len(chosen) == nodes, f"connections landed on {({n: len(c) for n, c in found.items()})}"
    return chosen


@dataclass
class Pair:
    session_id: int
    customer: Client
    agent: Client
    customer_id: int

    @property
    def clients(self) -> tuple[Client, Client]:
        return (self.customer, self.agent)


def make_pair(server: Server, agent_id: int, customer: Client, agent: Client) -> Pair:
    """A new session of a new customer, joined by `customer` and by `agent` (as the agent)."""
    customer_id = fresh_id()
    session_id = server.open_session(customer_id)
    customer.auth(customer_id)
    agent.auth(agent_id)
    customer.join(session_id)
    agent.join(session_id)
    return Pair(session_id, customer, agent, customer_id)


def split_pairs(open_session: Callable[[int], int], agent_id: int, by_node: dict[str, list[Client]]) -> list[Pair]:
    """Sessions whose customer and agent are on different nodes (alternating which side is where); joined."""
    first, second = list(by_node.values())[:2]
    pairs = []
    for i, (a, b) in enumerate(zip(first, second, strict=False)):
        customer, agent = (a, b) if i % 2 == 0 else (b, a)
        customer_id = fresh_id()
        session_id = open_session(customer_id)
        customer.auth(customer_id)
        agent.auth(agent_id)
        customer.join(session_id)
        agent.join(session_id)
        assert node_of(customer.connection_id) != node_of(agent.connection_id)
        pairs.append(Pair(session_id, customer, agent, customer_id))
    return pairs


@dataclass
class Tally:
    """What every receiving connection got, per sender."""

    sent: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    per_connection: dict[str, Counter] = field(default_factory=dict)

    def line(self) -> str:
        return (f"sent={self.sent} expected={self.expected} delivered={self.delivered} lost={self.lost} "
                f"duplicated={self.duplicated} out_of_order={self.out_of_order} unexpected={self.unexpected}")

    @property
    def perfect(self) -> bool:
        return self.delivered == self.expected and not (
            self.lost or self.duplicated or self.out_of_order or self.unexpected
        )


END = -1  # sequence number of a sender's last frame: once a receiver has it, the sender's earlier ones came


def _content(tag: str, sender: Client, seq: int) -> str:
    return f"{tag}|{sender.connection_id}|{seq}"


def _parse(frame: dict, tag: str) -> tuple[str, int] | None:
    if frame.get("type") != "new_message":
        return None
    parts = frame["message"]["content"].split("|")
    if len(parts) == 3 and parts[0] == tag:
        return parts[1], int(parts[2])
    return None


def _collect(client: Client, senders: int, deadline: float, tag: str, into: list[tuple[str, int]]) -> None:
    """Receive this run's `new_message` frames until every sender's end marker came (or the deadline)."""
    ended = 0
    while ended < senders and time.monotonic() < deadline:
        try:
            frame = client.recv(max(0.05, deadline - time.monotonic()))
        except (websocket.WebSocketTimeoutException, TimeoutError):
            return
        item = _parse(frame, tag)
        if item is None:
            continue
        if item[1] == END:
            ended += 1
        else:
            into.append(item)


def exchange(pairs: Sequence[Pair], per_sender: int, timeout: float = 60.0, tag: str | None = None) -> Tally:
    """Every client of every pair sends `per_sender` messages at once; every client must get its session's all."""
    tag = tag or f"x{fresh_id()}"
    clients = [c for p in pairs for c in p.clients]
    received: dict[str, list[tuple[str, int]]] = {c.connection_id: [] for c in clients}
    deadline = time.monotonic() + timeout
    receivers = [threading.Thread(target=_collect, args=(c, 2, deadline, tag, received[c.connection_id]))
                 for c in clients]
    for t in receivers:
        t.start()

    def send_all(pair: Pair, client: Client) -> None:
        for seq in [*range(per_sender), END]:
            client.say(pair.session_id, _content(tag, client, seq))

    senders = [threading.Thread(target=send_all, args=(p, c)) for p in pairs for c in p.clients]
    for t in senders:
        t.start()
    for t in senders + receivers:
        t.join()
    for client in clients:  # anything else queued for a client arrives before the pong
        for frame in client.barrier():
            item = _parse(frame, tag)
            if item is not None and item[1] != END:
                received[client.connection_id].append(item)
    return tally(pairs, per_sender, received)


def tally(pairs: Sequence[Pair], per_sender: int, received: dict[str, list[tuple[str, int]]]) -> Tally:
    result = Tally(sent=per_sender * 2 * len(pairs))
    for pair in pairs:
        senders = {c.connection_id for c in pair.clients}
        for client in pair.clients:
            got = received[client.connection_id]
            counts: Counter = Counter(got)
            result.per_connection[client.connection_id] = Counter(sender for sender, _ in got)
            result.expected += per_sender * len(senders)
            result.delivered += len(got)
            last: dict[str, int] = {}
            for sender, seq in got:
                if sender not in senders or not 0 <= seq < per_sender:
                    result.unexpected += 1
                    continue
                if seq < last.get(sender, -1):
                    result.out_of_order += 1
                last[sender] = max(seq, last.get(sender, -1))
            for sender in senders:
                for seq in range(per_sender):
                    n = counts[(sender, seq)]
                    if n == 0:
                        result.lost += 1
                    elif n > 1:
                        result.duplicated += n - 1
    return result


def wait_for_presence(server: Server, session_id: int, expected: dict[int, int], timeout: float = 10.0) -> dict:
    """Poll GET .../presence until it is complete and says `expected` (user id -> connections)."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        status, body = server.http("GET", f"/api/sessions/{session_id}/presence")
        assert status == 200, body
        if {u["user_id"]: u["connections"] for u in body["users"]} == expected and body["complete"]:
            assert body["connections"] == sum(expected.values())
            return body
        time.sleep(0.05)  # polling interval against the deadline
    raise AssertionError(f"presence never became {expected}: {body}")


def stop_all(servers: Sequence[Server]) -> None:
    """Tell every server to stop at once, then wait for each (one by one costs each one's grace period)."""
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            try:
                os.killpg(server.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for server in servers:
        server.stop()


def paced_exchange(pairs: Sequence[Pair], per_sender: int, interval: float, meanwhile: Callable[[], None],
                   timeout: float = 90.0, tag: str | None = None) -> Tally:
    """Like `exchange`, but every client sends one message each `interval` seconds while `meanwhile()` runs
    (an outage, a restart); receivers then collect until every sender's end marker has come."""
    tag = tag or f"p{fresh_id()}"
    clients = [c for p in pairs for c in p.clients]
    received: dict[str, list[tuple[str, int]]] = {c.connection_id: [] for c in clients}
    deadline = time.monotonic() + timeout
    receivers = [threading.Thread(target=_collect, args=(c, 2, deadline, tag, received[c.connection_id]))
                 for c in clients]
    for t in receivers:
        t.start()

    def send_all(pair: Pair, client: Client) -> None:
        for seq in [*range(per_sender), END]:
            client.say(pair.session_id, _content(tag, client, seq))
            time.sleep(interval)  # pacing the load generator, not waiting for a result

    senders = [threading.Thread(target=send_all, args=(p, c)) for p in pairs for c in p.clients]
    for t in senders:
        t.start()
    meanwhile()
    for t in senders + receivers:
        t.join()
    for client in clients:
        for frame in client.barrier():
            item = _parse(frame, tag)
            if item is not None and item[1] != END:
                received[client.connection_id].append(item)
    return tally(pairs, per_sender, received)
