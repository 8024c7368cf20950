"""The desk on one worker with SQLite and no Redis: leases in memory, the flock leader, routing and claims."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from deskkit import Recorder

from support import Server, fresh_id

pytestmark = pytest.mark.timeout(120)


def test_one_worker_without_redis_routes_queues_and_claims(server_factory: Callable[..., Server]) -> None:
    """No Redis: a waiting customer hears its queue position, then session_assigned when an agent comes online."""
    server = server_factory(ROUTING="auto", AGENT_CAPACITY=1, RATE_LIMIT=0)
    agent_id = server.add_agent(fresh_id())
    customers = [Recorder(server, fresh_id()) for _ in range(2)]
    agent = Recorder(server, agent_id)
    try:
        agent.send({"type": "set_status", "status": "away"})
        agent.wait_type("agent_status", status="away")
        first, second = (server.open_session(c.user_id) for c in customers)
        customers[0].wait_type("queue_position", session_id=first, position=1)
        customers[1].wait_type("queue_position", session_id=second, position=2)
        agent.send({"type": "set_status", "status": "online"})
        agent.wait_type("session_assigned", session_id=first, agent_id=agent_id)
        customers[0].wait_type("session_assigned", session_id=first, agent_id=agent_id)
        customers[1].wait_type("queue_position", session_id=second, position=1)
        agent.send({"type": "claim_session", "session_id": second})
        assert agent.wait_type("error")["code"] == "over_capacity"
        status, _ = server.http("POST", f"/api/sessions/{first}/close", headers={"X-User-Id": str(agent_id)})
        assert status == 200
        agent.wait_type("session_assigned", session_id=second, agent_id=agent_id)
        customers[1].wait_type("session_assigned", session_id=second)
    finally:
        for client in [agent, *customers]:
            client.close()


def test_a_returning_customer_gets_the_previous_agent_first_else_the_least_loaded(
        server_factory: Callable[..., Server]) -> None:
    """Routing prefers the customer's previous agent (when online with room) over a less loaded one."""
    server = server_factory(ROUTING="auto", AGENT_CAPACITY=3, RATE_LIMIT=0)
    first_agent, second_agent = server.add_agent(fresh_id()), server.add_agent(fresh_id())
    agents = [Recorder(server, first_agent), Recorder(server, second_agent)]
    regular, other, newcomer = fresh_id(), fresh_id(), fresh_id()
    try:
        agents[0].send({"type": "set_status", "status": "online"})
        agents[0].wait_type("agent_status", status="online")
        earlier = server.open_session(regular)
        agents[0].wait_type("session_assigned", session_id=earlier)
        status, _ = server.http("POST", f"/api/sessions/{earlier}/close", headers={"X-User-Id": str(regular)})
        assert status == 200
        busy = server.open_session(other)
        agents[0].wait_type("session_assigned", session_id=busy)  # first_agent now carries one session
        agents[1].send({"type": "set_status", "status": "online"})
        agents[1].wait_type("agent_status", status="online")
        again = server.open_session(regular)
        agents[0].wait_type("session_assigned", session_id=again, agent_id=first_agent)
        fresh = server.open_session(newcomer)
        agents[1].wait_type("session_assigned", session_id=fresh, agent_id=second_agent)  # the least loaded
        status, body = server.http("GET", "/api/reports/desk", headers={"X-User-Id": str(first_agent)})
        assert status == 200 and body["totals"]["sessions_assigned"] == 4
        assert body["totals"]["queue_max_seconds"] is not None
    finally:
        for agent in agents:
            agent.close()
