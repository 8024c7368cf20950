"""Idle auto-close with two instances (MariaDB, Redis): one sweeper, warning then close, once; reports count it."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from deskkit import Recorder, add_agents, deployment, poll, sql

from support import Server, fresh_id, run_cli

pytestmark = pytest.mark.timeout(240)

IDLE_CLOSE = 5
WARNING = 3
GRACE = 2


def test_idle_sessions_are_warned_then_closed_once_by_one_sweeper_and_reported(
        server_factory: Callable[..., Server], mariadb_url: str, redis_url: str) -> None:
    """No message for SESSION_IDLE_CLOSE: every member gets one session_idle_warning, then one session_closed
    (reason idle); a queued customer with no connection is closed too; reports count both as idle."""
    with deployment(server_factory, redis_url, instances=2, workers=1, SESSION_IDLE_CLOSE=IDLE_CLOSE,
                    SESSION_IDLE_WARNING=WARNING, AGENT_OFFLINE_GRACE=GRACE) as servers:
        agent_id = add_agents(servers[0], [fresh_id()])[0]
        customer_id = fresh_id()
        agent = Recorder(servers[0], agent_id)
        customer = Recorder(servers[1], customer_id)
        customer_phone = Recorder(servers[0], customer_id)  # not joined: hears it as the customer's
        members = [agent, customer, customer_phone]
        try:
            session_id = servers[1].open_session(customer_id)
            gone_customer = fresh_id()
            abandoned = servers[0].open_session(gone_customer)  # never connects
            customer.send({"type": "join_session", "session_id": session_id})
            customer.wait_type("joined_session")
            agent.send({"type": "join_session", "session_id": session_id})
            agent.wait_type("joined_session")
            agent.send({"type": "send_message", "session_id": session_id, "content": "在吗"})
            customer.wait_type("new_message")
            for member in members:
                warning = member.wait_type("session_idle_warning", timeout=IDLE_CLOSE + 10, session_id=session_id)
                assert 0 < warning["closes_in"] <= WARNING
            for member in members:
                closed = member.wait_type("session_closed", timeout=IDLE_CLOSE + 10, session_id=session_id)
                assert closed == {"type": "session_closed", "session_id": session_id, "reason": "idle"}
            for member in members:
                member.barrier()
                kinds = [f["type"] for f in (member.of_type("session_idle_warning") + member.of_type("session_closed"))]
                assert kinds == ["session_idle_warning", "session_closed"], kinds
            assert sql(servers[0], "SELECT status, close_reason FROM chat_sessions WHERE id = %s",
                       session_id) == [("closed", "idle")]
            assert sql(servers[0], "SELECT COUNT(*) FROM chat_session_events WHERE session_id = %s "
                       "AND event = 'closed'", session_id) == [(1,)]
            poll(lambda: sql(servers[0], "SELECT close_reason FROM chat_sessions WHERE id = %s", abandoned)
                 == [("idle",)], timeout=IDLE_CLOSE + GRACE + 10)
            leaders = [s.log().count("desk: now the leader") for s in servers]
            assert sum(leaders) == 1, leaders

            headers = {"X-User-Id": str(agent_id)}
            status, body = servers[1].http("GET", "/api/reports/desk", headers=headers)
            assert status == 200 and body["totals"]["idle_closes"] == 2
            status, body = servers[1].http("GET", "/api/reports/summary", headers=headers)
            assert body["totals"]["sessions_abandoned"] == 1  # the one nobody answered
            assert sql(servers[0], "SELECT SUM(idle_closes) FROM report_desk_daily") == [(2,)]
            result = run_cli(servers[0].env, "report", "--desk", "--format", "json")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["totals"]["idle_closes"] == 2
            result = run_cli(servers[0].env, "report", "--desk")
            assert result.returncode == 0 and "idle_closes" in result.stdout
        finally:
            for member in members:
                member.close()
