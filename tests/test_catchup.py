"""The catch-up and user routing without sockets: held events, repeats dropped by id, closes once, a floor that
never passes what an outage hides, and user-addressed events on a user's channel."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from service.config import load_settings
from service.realtime import catchup
from service.realtime.backplane import RedisBackplane, decode_envelope, session_of_channel
from service.realtime.catchup import CatchUp
from service.realtime.fanout import Event, Fanout
from service.realtime.registry import Registry
from service.storage import MessageRecord, SessionRecord
from support import ROOT

NO_ENV = ROOT / "tests" / "no.env"


class Member:
    def __init__(self, connection_id: str, user_id: int | None = 1) -> None:
        self.connection_id = connection_id
        self.session_id: int | None = None
        self.identity = None
        self._user_id = user_id
        self.frames: list[str] = []

    @property
    def user_id(self) -> int | None:
        return self._user_id if self.identity is not None else None

    def send_text(self, text: str) -> bool:
        self.frames.append(text)
        return True

    def send_event(self, text: str, message_id: int | None = None) -> bool:
        return self.send_text(text)

    def __hash__(self) -> int:
        return id(self)


class History:
    def __init__(self, ids: list[int], closed: bool = False) -> None:
        self.ids = ids
        self.closed = closed
        self.reads: list[tuple[int, float | None]] = []

    def get_session(self, session_id: int) -> SessionRecord:
        return SessionRecord(id=session_id, user_id=1, agent_id=None, status="closed" if self.closed else "active",
                             created_at=datetime(2026, 1, 1), closed_at=None)

    def messages_for_catch_up(self, session_id: int, after_id: int, created_since: float | None, limit: int):
        self.reads.append((after_id, created_since))
        return [MessageRecord(i, session_id, 1, "customer", f"m{i}", datetime(2026, 1, 1))
                for i in self.ids if i > after_id][:limit]


class Watcher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def room_joined(self, session_id: int) -> None:
        self.calls.append(("joined", session_id))

    def room_emptied(self, session_id: int) -> None:
        self.calls.append(("emptied", session_id))

    def user_arrived(self, user_id: int) -> None:
        self.calls.append(("arrived", user_id))

    def user_gone(self, user_id: int) -> None:
        self.calls.append(("gone", user_id))


def new_message(message_id: int) -> Event:
    return Event(session_id=7, text=f"live {message_id}", kind="new_message", message_id=message_id, origin="x")


@pytest.fixture
def room() -> tuple[CatchUp, Member, History]:
    registry = Registry()
    member = Member("c1")
    registry.add(member)
    registry.join(member, 7)
    history = History([11, 12, 13])
    delivered: list[Event] = []

    def hand_over(event: Event) -> int:
        delivered.append(event)
        return registry.deliver(event.session_id, event.text, message_id=event.message_id)

    return CatchUp(history, hand_over, registry.has_room, lambda sid: True), member, history


def ids(member: Member) -> list[str]:
    out = []
    for frame in member.frames:
        if frame.startswith("{"):
            data = json.loads(frame)
            out.append(f"{data['type']} {data.get('message', {}).get('id', '')}".strip())
        else:
            out.append(frame)
    return out


def test_live_events_wait_for_the_catch_up_and_repeats_are_dropped(room) -> None:
    """Held while reading; the missed messages first (id order), then what was held, each id once."""
    up, member, _ = room
    assert up.admit(new_message(11)) == catchup.DELIVER
    up.hand_over(new_message(11))
    up.resync(7, since=0.0)
    assert up.admit(new_message(13)) == catchup.HOLD
    assert up.admit(new_message(14)) == catchup.HOLD
    up._catch_up(7)
    assert ids(member) == ["live 11", "new_message 12", "new_message 13", "live 14"]
    assert up.admit(new_message(13)) == catchup.DROP


def test_a_session_closed_meanwhile_is_told_once(room) -> None:
    """Closed while the subscription was down: session_closed after the missed messages, and never twice."""
    up, member, history = room
    history.closed = True
    up.resync(7, since=0.0)
    up._catch_up(7)
    assert ids(member)[-1] == "session_closed"
    assert up.admit(Event(session_id=7, text="again", kind="session_closed")) == catchup.DROP


def test_without_a_floor_the_read_starts_where_the_channel_was_first_wanted(room) -> None:
    """A session whose ids are all remembered is read from the time it was wanted (less a margin)."""
    up, _, history = room
    up.resync(7, since=1000.0)
    up._catch_up(7)
    assert history.reads == [(0, 1000.0 - catchup.CREATED_MARGIN)]


def test_the_floor_moves_only_while_the_session_is_heard(monkeypatch) -> None:
    """Ids older than SAFE_SECONDS are forgotten into the floor, but never while the channel is down."""
    monkeypatch.setattr(catchup, "SAFE_SECONDS", -1.0)
    registry = Registry()
    member = Member("c1")
    registry.add(member)
    registry.join(member, 7)
    heard = [False]
    up = CatchUp(History([]), lambda e: 1, registry.has_room, lambda sid: heard[0])
    for i in (5, 6):
        up.admit(new_message(i))
    assert up.feeds[7].floor is None
    heard[0] = True
    up.admit(new_message(7))
    assert up.feeds[7].floor == 7 and not up.feeds[7].recent


def test_the_registry_tells_its_watcher_about_rooms_and_users() -> None:
    """First join and last leave of a room, first and last connection of a user, reach the watcher."""
    watcher = Watcher()
    registry = Registry(watcher=watcher)
    a, b = Member("a", user_id=5), Member("b", user_id=5)
    for conn in (a, b):
        registry.add(conn)
        registry.set_identity(conn, object())
    registry.join(a, 7)
    registry.join(b, 7)
    registry.remove(a)
    registry.remove(b)
    assert watcher.calls == [("arrived", 5), ("joined", 7), ("joined", 7), ("emptied", 7), ("gone", 5)]


def test_user_events_reach_every_connection_of_the_user_and_travel_on_its_channel() -> None:
    """Event.user_id: delivered to the user's connections here, published on `<prefix>:u:{uN}`."""
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_CHANNEL_PREFIX": "p"},
                             environ={"CHAT_ENV_FILE": str(NO_ENV)})
    backplane = RedisBackplane(settings)
    registry = Registry()
    mine, other = Member("a", user_id=5), Member("b", user_id=6)
    for conn in (mine, other):
        registry.add(conn)
        registry.set_identity(conn, object())
    fanout = Fanout(registry, "here", backplane)
    backplane.node_id = "here"
    assert fanout.publish(Event(session_id=0, text="hi 5", kind="agent_status", user_id=5)) == 1
    assert mine.frames == ["hi 5"] and other.frames == []
    node, channel, payload = backplane._queue[0]
    assert channel == "p:u:{u5}" and decode_envelope(payload)[:2] == ("here", 1)
    assert backplane.session_channel(42) == "p:s:{42}" and session_of_channel("p:s:{42}") == 42
    assert backplane._presence_key(42) == "p:presence:{42}"


def test_a_sender_outside_the_room_gets_its_copy_even_when_a_catch_up_gave_the_room_the_message() -> None:
    """The room had the message from the database first; the publish that follows still reaches its sender."""
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"}, environ={"CHAT_ENV_FILE": str(NO_ENV)})
    registry = Registry()
    member, sender = Member("here-1"), Member("here-2")
    for conn in (member, sender):
        registry.add(conn)
    registry.join(member, 7)
    fanout = Fanout(registry, "here", RedisBackplane(settings), History([21]))
    fanout.resync(7, since=0.0)
    fanout.catch_up._catch_up(7)
    fanout._deliver(Event(session_id=7, text="own 21", kind="new_message", message_id=21, include="here-2"))
    assert len(member.frames) == 1 and sender.frames == ["own 21"]
