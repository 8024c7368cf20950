"""The agent desk on 2 instances x 2 workers (MariaDB, Redis), ROUTING=manual: status, claim, transfer, HTTP API."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from deskkit import Recorder, add_agents, agents_on_every_worker, deployment, poll, sql

from support import Server, fresh_id, run_cli

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def desk(server_factory: Callable[..., Server], mariadb_url: str, redis_url: str) -> Iterator[list[Server]]:
    with deployment(server_factory, redis_url, instances=2, workers=2, AGENT_CAPACITY=3) as servers:
        yield servers


def agent_header(agent_id: int) -> dict[str, str]:
    return {"X-User-Id": str(agent_id)}


def test_set_status_reaches_every_connection_of_the_agent_once(desk: list[Server]) -> None:
    """agent_status goes to each of the agent's connections, on every instance, the sender's included."""
    agent_id = add_agents(desk[0], [fresh_id()])[0]
    devices = [Recorder(desk[0], agent_id), Recorder(desk[1], agent_id)]
    try:
        devices[0].send({"type": "set_status", "status": "away"})
        for device in devices:
            device.wait_type("agent_status", user_id=agent_id, status="away")
        for device in devices:
            device.barrier()
            assert device.of_type("agent_status") == [{"type": "agent_status", "user_id": agent_id, "status": "away"}]
        status, body = desk[1].http("GET", "/api/agents", headers=agent_header(agent_id))
        assert status == 200
        (mine,) = [a for a in body["agents"] if a["user_id"] == agent_id]
        assert mine == {"user_id": agent_id, "display_name": None, "status": "away", "capacity": 3, "load": 0}
    finally:
        for device in devices:
            device.close()


@pytest.mark.parametrize("frame, code", [
    ({"type": "set_status", "status": "busy"}, "invalid_status"),
    ({"type": "set_status"}, "invalid_status"),
    ({"type": "claim_session"}, "missing_session_id"),
    ({"type": "claim_session", "session_id": "x"}, "invalid_session_id"),
    ({"type": "claim_session", "session_id": 99999999}, "session_not_found"),
    ({"type": "transfer_session", "session_id": 99999999, "agent_id": 1}, "session_not_found"),
])
def test_bad_desk_frames_get_an_error_and_change_nothing(desk: list[Server], frame: dict, code: str) -> None:
    """Every bad desk frame is answered with its error code; the connection keeps working."""
    agent_id = add_agents(desk[0], [fresh_id()])[0]
    agent = Recorder(desk[0], agent_id)
    try:
        agent.send(frame)
        error = agent.wait_type("error")
        assert error["code"] == code and error["error"]
        agent.barrier()
    finally:
        agent.close()


def test_customers_may_not_use_the_desk(desk: list[Server]) -> None:
    """A customer's set_status / claim / transfer is 仅限客服; over HTTP too."""
    customer = Recorder(desk[0], fresh_id())
    try:
        for frame in ({"type": "set_status", "status": "online"}, {"type": "claim_session", "session_id": 1},
                      {"type": "transfer_session", "session_id": 1, "agent_id": 2}):
            customer.send(frame)
        customer.wait_for(lambda frames: len([f for f in frames if f["type"] == "error"]) == 3)
        assert {f["code"] for f in customer.of_type("error")} == {"agents_only"}
        assert {f["error"] for f in customer.of_type("error")} == {"仅限客服"}
    finally:
        customer.close()
    headers = {"X-User-Id": str(fresh_id())}
    for method, path in (("GET", "/api/agents"), ("GET", "/api/queue"), ("POST", "/api/sessions/1/claim")):
        status, body = desk[0].http(method, path, {} if method == "POST" else None, headers=headers)
        assert (status, body["code"]) == (403, "agents_only")


def test_ten_agents_claim_one_session_at_the_same_instant_one_wins(desk: list[Server]) -> None:
    """10 agents on 4 workers claim one session at once: one session_assigned, nine already_assigned."""
    agents = agents_on_every_worker(desk, 10, per_node=3)
    customer = Recorder(desk[1], fresh_id())
    try:
        assert len({a.node for a in agents}) == 4
        session_id = desk[0].open_session(customer.user_id)
        customer.send({"type": "join_session", "session_id": session_id})
        customer.wait_type("joined_session")
        start = threading.Barrier(len(agents))

        def claim(agent: Recorder) -> None:
            start.wait()
            agent.send({"type": "claim_session", "session_id": session_id})

        threads = [threading.Thread(target=claim, args=(a,)) for a in agents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for agent in agents:
            agent.wait_for(lambda frames: any(f["type"] in ("session_assigned", "error") for f in frames))
        for agent in agents:
            agent.barrier()
        winners = [a for a in agents if a.of_type("session_assigned")]
        refused = [e for a in agents for e in a.of_type("error")]
        print(f"\nclaim race: {len(winners)} assigned, {len(refused)} already_assigned, "
              f"workers {len({a.node for a in agents})}")
        assert len(winners) == 1
        assert [f["code"] for f in refused] == ["already_assigned"] * 9
        assert {f["error"] for f in refused} == {"会话已被其他客服接入"}
        (winner,) = winners
        assert winner.of_type("session_assigned") == [
            {"type": "session_assigned", "session_id": session_id, "agent_id": winner.user_id}]
        customer.wait_type("session_assigned")
        customer.barrier()
        assert customer.of_type("session_assigned") == [
            {"type": "session_assigned", "session_id": session_id, "agent_id": winner.user_id}]
        assert sql(desk[0], "SELECT agent_id FROM chat_sessions WHERE id = %s", session_id) == [(winner.user_id,)]
        winner.send({"type": "claim_session", "session_id": session_id})  # claiming one's own: only the caller hears
        winner.wait_for(lambda frames: len([f for f in frames if f["type"] == "session_assigned"]) == 2)
        customer.barrier()
        assert len(customer.of_type("session_assigned")) == 1
    finally:
        for client in [*agents, customer]:
            client.close()


def test_claims_from_every_worker_never_push_an_agent_over_capacity(desk: list[Server]) -> None:
    """One agent (capacity 3) claims 8 sessions at once from 4 workers: 3 taken, 5 over_capacity."""
    agent_id = add_agents(desk[0], [fresh_id()])[0]
    devices = [r for server in desk for r in (Recorder(server, agent_id), Recorder(server, agent_id))]
    sessions = [desk[i % 2].open_session(fresh_id()) for i in range(8)]
    try:
        start = threading.Barrier(len(sessions))

        def claim(device: Recorder, session_id: int) -> None:
            start.wait()
            device.send({"type": "claim_session", "session_id": session_id})

        threads = [threading.Thread(target=claim, args=(devices[i % len(devices)], sid))
                   for i, sid in enumerate(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        device = devices[0]
        for d in devices:  # each device hears of every assignment, whichever worker made it
            d.wait_for(lambda frames: len([f for f in frames if f["type"] == "session_assigned"]) >= 3)
        errors = poll(lambda: [e for d in devices for e in d.of_type("error")]
                      if sum(len(d.of_type("error")) for d in devices) >= 5 else None)
        for d in devices:
            d.barrier()
        assigned = {f["session_id"] for f in device.of_type("session_assigned")}
        print(f"\ncapacity race: {len(assigned)} assigned, {len(errors)} over_capacity")
        assert len(assigned) == 3 and len(device.of_type("session_assigned")) == 3
        assert sorted(e["code"] for e in errors) == ["over_capacity"] * 5
        assert sql(desk[0], "SELECT COUNT(*) FROM chat_sessions WHERE agent_id = %s AND status = 'active'",
                   agent_id) == [(3,)]
        for d in devices:  # every device of the agent heard of each assignment once
            assert sorted(f["session_id"] for f in d.of_type("session_assigned")) == sorted(assigned)
    finally:
        for d in devices:
            d.close()


def online_agent(server: Server, agent_id: int | None = None) -> Recorder:
    agent = Recorder(server, agent_id or add_agents(server, [fresh_id()])[0])
    agent.send({"type": "set_status", "status": "online"})
    agent.wait_type("agent_status", status="online")
    return agent


def test_transfer_to_an_offline_or_full_agent_is_refused(desk: list[Server]) -> None:
    """Transfer refusals: target offline/away/unknown (agent_unavailable), full (over_capacity), not mine."""
    owner = online_agent(desk[0])
    full = online_agent(desk[1])
    away = online_agent(desk[1])
    away.send({"type": "set_status", "status": "away"})
    away.wait_type("agent_status", status="away")
    offline_id = add_agents(desk[0], [fresh_id()])[0]
    stranger = online_agent(desk[0])
    try:
        session_id = desk[0].open_session(fresh_id())
        owner.send({"type": "claim_session", "session_id": session_id})
        owner.wait_type("session_assigned", session_id=session_id)
        for _ in range(3):
            sid = desk[1].open_session(fresh_id())
            full.send({"type": "claim_session", "session_id": sid})
            full.wait_type("session_assigned", session_id=sid)
        cases = [(full.user_id, "over_capacity"), (away.user_id, "agent_unavailable"),
                 (offline_id, "agent_unavailable"), (fresh_id(), "agent_unavailable"),
                 (owner.user_id, "agent_unavailable")]
        for target, _code in cases:
            owner.send({"type": "transfer_session", "session_id": session_id, "agent_id": target})
        owner.wait_for(lambda frames: len([f for f in frames if f["type"] == "error"]) == len(cases))
        assert [e["code"] for e in owner.of_type("error")] == [code for _t, code in cases]
        stranger.send({"type": "transfer_session", "session_id": session_id, "agent_id": full.user_id})
        assert stranger.wait_type("error")["code"] == "forbidden"
        status, body = desk[1].http("POST", f"/api/sessions/{session_id}/transfer", {"agent_id": full.user_id},
                                    headers=agent_header(owner.user_id))
        assert (status, body["code"]) == (409, "over_capacity")
        status, body = desk[1].http("POST", f"/api/sessions/{session_id}/transfer", {},
                                    headers=agent_header(owner.user_id))
        assert (status, body["code"]) == (400, "missing_agent_id")
        assert sql(desk[0], "SELECT agent_id FROM chat_sessions WHERE id = %s", session_id) == [(owner.user_id,)]
        for agent in (owner, full, away, stranger):
            agent.barrier()
            assert not agent.of_type("session_transferred")
    finally:
        for agent in (owner, full, away, stranger):
            agent.close()


def test_a_transfer_reaches_both_agents_and_the_customer_once(desk: list[Server]) -> None:
    """session_transferred once to every connection of both agents and the customer (joined or not)."""
    owner = online_agent(desk[0])
    target = online_agent(desk[1])
    target_console = Recorder(desk[0], target.user_id)
    customer_id = fresh_id()
    session_id = desk[0].open_session(customer_id)
    customer = Recorder(desk[1], customer_id)
    customer_phone = Recorder(desk[0], customer_id)
    everyone = [owner, target, target_console, customer, customer_phone]
    try:
        customer.send({"type": "join_session", "session_id": session_id})
        customer.wait_type("joined_session")
        owner.send({"type": "claim_session", "session_id": session_id})
        owner.wait_type("session_assigned")
        owner.send({"type": "join_session", "session_id": session_id})
        owner.wait_type("joined_session")
        owner.send({"type": "send_message", "session_id": session_id, "content": "你好"})
        customer.wait_type("new_message")
        status, body = desk[1].http("POST", f"/api/sessions/{session_id}/transfer", {"agent_id": target.user_id},
                                    headers=agent_header(owner.user_id))
        assert status == 200 and body["agent_id"] == target.user_id and body["id"] == session_id
        expected = {"type": "session_transferred", "session_id": session_id, "from_agent_id": owner.user_id,
                    "to_agent_id": target.user_id}
        for client in everyone:
            client.wait_type("session_transferred")
        for client in everyone:
            client.barrier()
            assert client.of_type("session_transferred") == [expected]
        status, body = desk[0].http("GET", f"/api/sessions/{session_id}/messages",
                                    headers=agent_header(target.user_id))
        assert [m["content"] for m in body["messages"]] == ["你好"]  # the history stays with the session
        assert sql(desk[0], "SELECT COUNT(*) FROM chat_session_events WHERE session_id = %s AND event = 'transferred'",
                   session_id) == [(1,)]
    finally:
        for client in everyone:
            client.close()


def test_http_desk_api(desk: list[Server]) -> None:
    """PUT status, PATCH capacity, GET queue, POST claim: the console's calls and their refusals."""
    agent_id = add_agents(desk[0], [fresh_id()])[0]
    other_id = add_agents(desk[0], [fresh_id()])[0]
    me = agent_header(agent_id)
    status, body = desk[0].http("PUT", f"/api/agents/{agent_id}/status", {"status": "away"}, headers=me)
    assert status == 200 and body["status"] == "away" and body["user_id"] == agent_id
    status, body = desk[0].http("PUT", f"/api/agents/{other_id}/status", {"status": "away"}, headers=me)
    assert (status, body["code"]) == (403, "forbidden")
    status, body = desk[0].http("PUT", f"/api/agents/{agent_id}/status", {"status": "busy"}, headers=me)
    assert (status, body["code"]) == (400, "invalid_status")
    for bad in (-1, "3", 1.5, True, None):
        status, body = desk[1].http("PATCH", f"/api/agents/{agent_id}", {"capacity": bad}, headers=me)
        assert (status, body["code"]) == (400, "invalid_capacity"), bad
    status, body = desk[1].http("PATCH", f"/api/agents/{agent_id}", {"capacity": 1}, headers=me)
    assert status == 200 and body["capacity"] == 1
    status, body = desk[1].http("PATCH", f"/api/agents/{fresh_id()}", {"capacity": 1}, headers=me)
    assert (status, body["code"]) == (404, "agent_not_found")
    first = desk[0].open_session(fresh_id())
    second = desk[0].open_session(fresh_id())
    status, body = desk[0].http("GET", "/api/queue", headers=me)
    assert status == 200
    queued = {q["session_id"]: q for q in body["queue"]}
    assert queued[first]["position"] < queued[second]["position"]
    assert set(queued[first]) == {"session_id", "user_id", "created_at", "position", "waiting_seconds"}
    status, body = desk[0].http("POST", f"/api/sessions/{first}/claim", headers=me)
    assert status == 200 and body["agent_id"] == agent_id and body["assigned_at"]
    status, body = desk[1].http("POST", f"/api/sessions/{second}/claim", headers=me)
    assert (status, body["code"], body["error"]) == (409, "over_capacity", "客服接待已满")
    status, body = desk[1].http("POST", f"/api/sessions/{first}/claim", headers=agent_header(other_id))
    assert (status, body["code"]) == (409, "already_assigned")
    status, body = desk[1].http("GET", "/api/queue", headers=me)
    assert first not in {q["session_id"] for q in body["queue"]}
    status, body = desk[0].http("GET", "/api/agents", headers=me)
    (mine,) = [a for a in body["agents"] if a["user_id"] == agent_id]
    assert mine["load"] == 1 and mine["capacity"] == 1


def test_agent_add_with_capacity(desk: list[Server]) -> None:
    """`python -m service agent add N --capacity C` sets the agent's capacity (GET /api/agents shows it)."""
    agent_id = fresh_id()
    result = run_cli(desk[0].env, "agent", "add", str(agent_id), "--capacity", "7")
    assert result.returncode == 0, result.stderr
    status, body = desk[0].http("GET", "/api/agents", headers=agent_header(agent_id))
    (mine,) = [a for a in body["agents"] if a["user_id"] == agent_id]
    assert mine["capacity"] == 7
    result = run_cli(desk[0].env, "agent", "add", str(agent_id), "--capacity", "-2")
    assert result.returncode != 0
