"""The backplane's receive path without sockets: own events skipped, repeats dropped, gaps and junk counted."""

from __future__ import annotations

import pytest

from service.config import load_settings
from service.realtime.backplane import Backoff, RedisBackplane, encode_envelope
from service.realtime.fanout import Event, Fanout
from service.realtime.registry import Registry
from support import ROOT

NO_ENV = ROOT / "tests" / "no.env"


class Member:
    def __init__(self, connection_id: str, session_id: int | None = None, user_id: int | None = 1) -> None:
        self.connection_id = connection_id
        self.session_id = session_id
        self.user_id = user_id
        self.frames: list[str] = []

    def send_text(self, text: str) -> bool:
        self.frames.append(text)
        return True

    def send_event(self, text: str, message_id: int | None = None) -> bool:
        return self.send_text(text)

    def __hash__(self) -> int:
        return id(self)


@pytest.fixture
def node() -> tuple[RedisBackplane, Member]:
    """A backplane bound to a fan-out whose registry has one member in session 7 (no Redis is contacted)."""
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"}, environ={"CHAT_ENV_FILE": str(NO_ENV)})
    registry = Registry()
    member = Member("here-1-aa-1")
    registry.add(member)
    registry.join(member, 7)
    backplane = RedisBackplane(settings)
    fanout = Fanout(registry, "here-1-aa", backplane)
    backplane.fanout, backplane.node_id = fanout, fanout.node_id
    return backplane, member


def event(text: str, **fields) -> Event:
    return Event(session_id=7, text=text, kind="new_message", origin="there-2-bb", **fields)


def test_events_from_another_node_reach_local_members_once(node) -> None:
    """An event from elsewhere is delivered to the local room; the same sequence number again is dropped."""
    backplane, member = node
    backplane._receive(encode_envelope("there-2-bb", 1, event("a")), 0.0)
    backplane._receive(encode_envelope("there-2-bb", 1, event("a")), 0.0)
    backplane._receive(encode_envelope("there-2-bb", 2, event("b")), 0.0)
    assert member.frames == ["a", "b"]
    assert backplane.counters["duplicates_dropped"] == 1 and backplane.counters["gaps"] == 0


def test_own_events_are_skipped(node) -> None:
    """This node delivered its own event when publishing; the copy from Redis is ignored."""
    backplane, member = node
    backplane._receive(encode_envelope("here-1-aa", 1, event("mine")), 0.0)
    assert member.frames == [] and backplane.counters["received"] == 0


def test_a_jump_in_sequence_is_counted_as_a_gap(node) -> None:
    """Events another node could not publish (Redis down) show up as a gap, and later ones still arrive."""
    backplane, member = node
    backplane._receive(encode_envelope("there-2-bb", 1, event("a")), 0.0)
    backplane._receive(encode_envelope("there-2-bb", 5, event("e")), 0.0)
    assert member.frames == ["a", "e"] and backplane.counters["gaps"] == 3


def test_the_sender_copy_is_never_delivered_on_another_node(node) -> None:
    """`include` names a connection of the origin node: a remote node has no such connection."""
    backplane, member = node
    backplane._receive(encode_envelope("there-2-bb", 1, event("x", include="there-2-bb-9")), 0.0)
    assert member.frames == ["x"]


@pytest.mark.parametrize("raw", [b"", b"garbage", b"there-2-bb x {}", b"there-2-bb 1 not-json", b"there-2-bb 1 []",
                                 b"there-2-bb 1 {\"text\": \"no session\"}", b"\xff\xfe 1 {}"])
def test_malformed_payloads_are_counted_and_ignored(node, raw: bytes) -> None:
    """Junk on the channel never reaches a client and never stops the listener."""
    backplane, member = node
    backplane._receive(raw, 0.0)
    assert member.frames == [] and backplane.counters["malformed"] == 1


def test_fields_from_a_newer_node_are_ignored(node) -> None:
    """A newer version may add event fields; this one delivers what it understands."""
    backplane, member = node
    body = '{"session_id":7,"text":"new","kind":"new_message","origin":"there-2-bb","priority":"high"}'
    backplane._receive(b"there-2-bb 1 " + body.encode(), 0.0)
    assert member.frames == ["new"]


def test_publish_refuses_at_once_when_redis_is_known_down(node) -> None:
    """publish() never waits: with the publisher down it answers False and counts the failure."""
    backplane, _ = node
    backplane._publisher_up = False
    assert backplane.publish(event("y")) is False
    assert backplane.counters["publish_failures"] == 1 and backplane.status()["connected"] is False


def test_backoff_doubles_up_to_its_cap() -> None:
    """Reconnect attempts back off exponentially, capped, and start over after a success."""
    backoff = Backoff(0.1, 1.0)
    assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.1
