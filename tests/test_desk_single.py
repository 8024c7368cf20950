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
