"""Without sockets: user-addressed events, the registry's user index, and leases that run out by themselves."""

from __future__ import annotations

import time

from service.auth import Identity
from service.desk.leases import LocalLeases
from service.realtime.fanout import Event, Fanout
from service.realtime.registry import Registry


class Member:
    def __init__(self, connection_id: str, user_id: int | None) -> None:
        self.connection_id = connection_id
        self.session_id: int | None = None
        self.identity = Identity(user_id) if user_id is not None else None
        self.frames: list[str] = []

    @property
    def user_id(self) -> int | None:
        return self.identity.user_id if self.identity is not None else None

    def send_text(self, text: str) -> bool:
        self.frames.append(text)
        return True

    def send_event(self, text: str, message_id: int | None = None) -> bool:
        return self.send_text(text)

    def __hash__(self) -> int:
        return id(self)


def connected(registry: Registry, connection_id: str, user_id: int) -> Member:
    member = Member(connection_id, None)
    registry.add(member)
    registry.set_identity(member, Identity(user_id))
    return member


def test_an_event_for_a_user_reaches_each_of_its_connections_once_room_copy_or_not() -> None:
    """With room_copy, a connection joined to the room gets the room's copy only; the others the user's."""
    registry = Registry()
    fanout = Fanout(registry, "node-1")
    joined, console, other = connected(registry, "c1", 5), connected(registry, "c2", 5), connected(registry, "c3", 6)
    registry.join(joined, 9)
    registry.join(other, 9)
    fanout.publish(Event(session_id=9, text="room", kind="session_assigned"))
    fanout.publish(Event(session_id=9, text="room", kind="session_assigned", user_id=5, room_copy=True))
    assert (joined.frames, console.frames, other.frames) == (["room"], ["room"], ["room"])
    fanout.publish(Event(session_id=0, text="status", kind="agent_status", user_id=5))
    assert (joined.frames[-1], console.frames[-1], other.frames) == ("status", "status", ["room"])


def test_the_user_index_follows_auth_and_disconnect() -> None:
    """Re-auth moves a connection to its new user; a closed one leaves the index (no empty entries)."""
    registry = Registry()
    member = connected(registry, "c1", 5)
    assert registry.users() == [5]
    registry.set_identity(member, Identity(6))
    assert registry.users() == [6] and registry.deliver_to_user(5, "x") == 0
    registry.remove(member)
    assert registry.users() == [] and registry.deliver_to_user(6, "x") == 0


def test_local_leases_run_out_by_themselves() -> None:
    """A lease is live until its time passes; any node's lease keeps the user connected."""
    leases = LocalLeases()
    leases.hold([1, 2], "a", 0.05)
    leases.hold([2], "b", 60)
    assert leases.live([1, 2, 3]) == {1: True, 2: True, 3: False}
    deadline = time.monotonic() + 5
    while leases.live([1])[1] and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for time itself to pass: nothing to await
    assert leases.live([1, 2]) == {1: False, 2: True}


def test_redis_leases_expire_on_redis_clock_and_touch_one_key_each(redis_url: str) -> None:
    """RedisLeases: one sorted set per user; a lease from any node keeps the user live until it runs out."""
    import uuid

    import redis

    from service.desk.leases import RedisLeases

    client = redis.Redis.from_url(redis_url)
    leases = RedisLeases(client, f"test-leases-{uuid.uuid4().hex[:8]}")
    try:
        assert leases.hold([11, 12], "node-a", 0.2)
        assert leases.hold([12], "node-b", 30)
        assert leases.live([11, 12, 13]) == {11: True, 12: True, 13: False}
        deadline = time.monotonic() + 5
        while leases.live([11])[11] and time.monotonic() < deadline:
            time.sleep(0.02)  # waiting for time itself to pass: nothing to await
        assert leases.live([11, 12]) == {11: False, 12: True}
        assert 0 < client.pttl(leases.key(12)) <= 60_000  # the key itself goes away too
    finally:
        client.delete(leases.key(11), leases.key(12))


def test_load_samples_and_desk_figures_on_sqlite(tmp_path) -> None:
    """sample_load writes one row per agent and minute (once); the desk report reads load, queue times, transfers."""
    from flask import Flask

    from service.config import load_settings
    from service.storage import init_storage
    from service.storage.desk import DeskStorage, Outcome
    from service.storage.desk_reports import DeskReports
    from support import ROOT

    settings = load_settings({"DATABASE_URL": f"sqlite:///{tmp_path}/desk.db"},
                             environ={"CHAT_ENV_FILE": str(ROOT / "tests" / "no.env")})
    storage = init_storage(Flask("desk-unit"), settings)
    store = DeskStorage(storage, default_capacity=2)
    storage.add_agent(7)
    storage.add_agent(8)
    first, _ = storage.open_session(100)
    second, _ = storage.open_session(101)
    third, _ = storage.open_session(102)
    assert store.assign(first.id, 7) is Outcome.ASSIGNED
    assert store.assign(first.id, 8) is Outcome.ALREADY_ASSIGNED
    assert store.assign(second.id, 7) is Outcome.ASSIGNED
    assert store.assign(third.id, 7) is Outcome.OVER_CAPACITY
    assert store.assign(third.id, 99) is Outcome.NO_AGENT
    assert store.transfer(second.id, 7, 8) is Outcome.ASSIGNED
    assert store.transfer(second.id, 7, 8) is Outcome.NOT_WAITING  # no longer 7's
    minute = storage.now().replace(second=0)
    assert store.sample_load(minute) == 2 and store.sample_load(minute) == 0
    today = storage.now().date()
    report = DeskReports(storage).desk(today, today)
    assert report["totals"]["sessions_opened"] == 3 and report["totals"]["sessions_assigned"] == 2
    assert report["totals"]["transfers"] == 1 and report["totals"]["idle_closes"] == 0
    assert {a["agent_id"]: a["load_max"] for a in report["agents"]} == {7: 1, 8: 1}
    assert [w.session_id for w in store.queue()] == [third.id]


def test_redis_leases_work_on_a_redis_cluster(tmp_path) -> None:
    """REDIS_CLUSTER=true: each agent's lease key lives in one slot, so holding and reading leases of agents
    spread over every master of a real 3-master cluster works like on one Redis."""
    from types import SimpleNamespace

    from redis_servers import RedisCluster, need_redis_server

    from service.desk.leases import RedisLeases

    need_redis_server()
    cluster = RedisCluster(tmp_path / "cluster")
    try:
        cluster.start()
        settings = SimpleNamespace(redis_url=cluster.url, redis_cluster=True, redis_timeout=2.0,
                                   redis_channel_prefix="test-cluster-leases")
        leases = RedisLeases.from_settings(settings)
        agents = list(range(1, 31))  # enough ids for their keys to fall on every master
        assert len({leases.redis.keyslot(leases.key(a)) // 5462 for a in agents}) == 3
        assert leases.hold(agents, "node-a", 30)
        assert leases.live([*agents, 99]) == {**dict.fromkeys(agents, True), 99: False}
    finally:
        cluster.stop()
