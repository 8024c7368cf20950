"""ROUTING=auto on 2 instances x 2 workers (MariaDB, Redis): capacity, order, queue positions, offline rerouting."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from deskkit import Recorder, add_agents, agents_on_every_worker, deployment, poll, sql

from support import Server, fresh_id

pytestmark = pytest.mark.timeout(400)

AGENTS = 10
CAPACITY = 3
SESSIONS = 200
GRACE = 3


def go_online(agents: list[Recorder]) -> None:
    for agent in agents:
        agent.send({"type": "set_status", "status": "online"})
    for agent in agents:
        agent.wait_type("agent_status", status="online")


def test_two_hundred_sessions_fill_every_agent_exactly_to_capacity_then_flow_in_order(
        server_factory: Callable[..., Server], mariadb_url: str, redis_url: str) -> None:
    """200 sessions at once: exactly 30 assigned, none over capacity or twice; each freed seat goes to the head
    of the queue within 2 s; every customer's queue_position values are consistent."""
    with deployment(server_factory, redis_url, instances=2, workers=2, ROUTING="auto", AGENT_CAPACITY=CAPACITY,
                    AGENT_OFFLINE_GRACE=30) as servers:
        agents = agents_on_every_worker(servers, AGENTS, per_node=3)
        customers = [Recorder(servers[i % 2], fresh_id()) for i in range(SESSIONS)]
        try:
            assert len({a.node for a in agents}) == 4
            go_online(agents)
            with ThreadPoolExecutor(32) as pool:
                session_ids = list(pool.map(lambda c: servers[c.user_id % 2].open_session(c.user_id), customers))
            session_of = dict(zip([c.user_id for c in customers], session_ids, strict=True))
            by_session = {session_of[c.user_id]: c for c in customers}

            def assigned_frames() -> list[dict]:
                return [f for a in agents for f in a.of_type("session_assigned")]

            poll(lambda: len(assigned_frames()) >= AGENTS * CAPACITY, timeout=60)
            for agent in agents:
                agent.barrier()
            frames = assigned_frames()
            per_agent = Counter(f["agent_id"] for f in frames)
            per_session = Counter(f["session_id"] for f in frames)
            rows = sql(servers[0], "SELECT agent_id, COUNT(*) FROM chat_sessions WHERE status = 'active' "
                       "AND agent_id IS NOT NULL GROUP BY agent_id")
            duplicates = sum(n - 1 for n in per_session.values())
            over = sum(1 for n in per_agent.values() if n > CAPACITY)
            print(f"\nauto routing: {len(per_session)} assigned, {SESSIONS - len(per_session)} waiting, "
                  f"duplicates={duplicates}, over_capacity={over}")
            assert len(frames) == AGENTS * CAPACITY and len(per_session) == AGENTS * CAPACITY
            assert duplicates == 0 and over == 0
            assert sorted(per_agent.values()) == [CAPACITY] * AGENTS
            assert sorted(n for _a, n in rows) == [CAPACITY] * AGENTS
            for agent in agents:  # an agent hears only of its own sessions
                assert {f["agent_id"] for f in agent.of_type("session_assigned")} == {agent.user_id}

            # Every session opened concurrently is in the queue by now: positions settle to the queue's order.
            status, body = servers[1].http("GET", "/api/queue", headers={"X-User-Id": str(agents[0].user_id)})
            queue = [q["session_id"] for q in body["queue"]]
            assert len(queue) == SESSIONS - AGENTS * CAPACITY and queue == sorted(queue)
            for position, session_id in enumerate(queue, 1):
                by_session[session_id].wait_for(
                    lambda fs, p=position, s=session_id: [f for f in fs if f["type"] == "queue_position"
                                                         and f["session_id"] == s][-1:] == [
                        {"type": "queue_position", "session_id": s, "position": p}])

            # Agents close one session each: each freed seat goes to the head of the queue, in order.
            delays = []
            for agent in agents:
                mine = sorted(f["session_id"] for f in agent.of_type("session_assigned"))
                head = queue.pop(0)
                closed_at = time.monotonic()
                status, _ = servers[0].http("POST", f"/api/sessions/{mine[0]}/close",
                                            headers={"X-User-Id": str(agent.user_id)})
                assert status == 200
                frame = agent.wait_type("session_assigned", timeout=2.0, session_id=head)
                assert frame["agent_id"] == agent.user_id
                customer = by_session[head]
                customer.wait_type("session_assigned", timeout=2.0, session_id=head)
                delays.append(customer.first_time("session_assigned", session_id=head) - closed_at)
            print(f"routing delay after a close: median {sorted(delays)[len(delays) // 2] * 1000:.0f} ms, "
                  f"max {max(delays) * 1000:.0f} ms")
            assert max(delays) < 2.0

            for customer in customers:
                customer.barrier()
            for customer in customers:
                session_id = session_of[customer.user_id]
                positions = [f["position"] for f in customer.of_type("queue_position")]
                assigned = customer.of_type("session_assigned")
                assert all(p >= 1 for p in positions)
                assert len(assigned) <= 1
                if assigned:  # nothing about the queue after the assignment
                    kinds = [f["type"] for _t, f in customer.frames]
                    assert "queue_position" not in kinds[kinds.index("session_assigned"):]
                if session_id in queue:
                    assert positions[-1] == queue.index(session_id) + 1
                # After the burst (once every session was in), a position only ever goes down.
                settled = positions[positions.index(max(positions)):] if positions else []
                assert settled == sorted(settled, reverse=True), positions
        finally:
            for client in [*agents, *customers]:
                client.close()


def test_an_agent_gone_for_the_grace_period_loses_unanswered_sessions_but_a_second_device_keeps_them(
        server_factory: Callable[..., Server], mariadb_url: str, redis_url: str) -> None:
    """Agent A on two instances: closing one device changes nothing; closing both, after AGENT_OFFLINE_GRACE A is
    offline and its sessions with no agent reply go to agent B (the answered one stays)."""
    with deployment(server_factory, redis_url, instances=2, workers=2, ROUTING="auto", AGENT_CAPACITY=3,
                    AGENT_OFFLINE_GRACE=GRACE) as servers:
        a_id, b_id = add_agents(servers[0], [fresh_id(), fresh_id()])
        phone, laptop = Recorder(servers[0], a_id), Recorder(servers[1], a_id)
        customers = [Recorder(servers[i % 2], fresh_id()) for i in range(3)]
        b = None
        try:
            go_online([phone])
            sessions = [servers[0].open_session(c.user_id) for c in customers]
            for session_id in sessions:
                laptop.wait_type("session_assigned", session_id=session_id, agent_id=a_id)
            answered = sessions[2]
            laptop.send({"type": "send_message", "session_id": answered, "content": "您好"})
            laptop.wait_type("new_message")
            b = Recorder(servers[1], b_id)
            go_online([b])

            phone.close()
            # Longer than the grace period: A still has the laptop, so nothing moves.
            assert b.nothing_of("session_assigned", GRACE + 2)
            status, body = servers[0].http("GET", "/api/agents", headers={"X-User-Id": str(b_id)})
            assert {a["user_id"]: a["status"] for a in body["agents"]}[a_id] == "online"
            assert not b.of_type("session_assigned")

            gone_at = time.monotonic()
            laptop.close()
            for session_id in sessions[:2]:
                b.wait_type("session_assigned", timeout=GRACE + 10, session_id=session_id, agent_id=b_id)
            moved_after = b.first_time("session_assigned", session_id=sessions[0]) - gone_at
            print(f"\nrerouted {moved_after:.1f}s after the agent's last connection closed (grace {GRACE}s)")
            assert moved_after >= GRACE
            for customer, session_id in zip(customers[:2], sessions[:2], strict=True):
                customer.wait_type("session_assigned", session_id=session_id, agent_id=b_id)
            status, body = servers[1].http("GET", "/api/agents", headers={"X-User-Id": str(b_id)})
            assert {a["user_id"]: a["status"] for a in body["agents"]}[a_id] == "offline"
            assert sql(servers[0], "SELECT agent_id FROM chat_sessions WHERE id = %s", answered) == [(a_id,)]
            assert sql(servers[0], "SELECT COUNT(*) FROM chat_session_events WHERE event = 'requeued'") == [(2,)]
        finally:
            for client in [phone, laptop, *customers, *([b] if b else [])]:
                client.close()

