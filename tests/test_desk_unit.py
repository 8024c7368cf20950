"""Without sockets: user-addressed events, the registry's user index, and leases that run out by themselves."""

from __future__ import annotations

import time

from service.desk.leases import LocalLeases
from service.realtime.fanout import Event, Fanout
from service.realtime.registry import Registry


class Member:
    def __init__(self, connection_id: str, user_id: int | None) -> None:
        self.connection_id = connection_id
        self.session_id: int | None = None
        self.user_id = user_id
        self.frames: list[str] = []

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
    member.user_id = user_id
    registry.user_changed(member, None)
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
    member.user_id = 6
    registry.user_changed(member, 5)
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
