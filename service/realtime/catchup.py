"""What this worker's rooms missed while a subscription was down, read back from the database, once, in order.

Redis pub/sub is at-most-once: what is published while a subscriber is disconnected is gone. The database is
the source of truth, so when a session's channel is heard again (the listener reconnected, a cluster shard
came back, a join could not wait for its subscription, or a sender's sequence jumped) the fan-out catches up:

1. From the moment the channel is heard again, the session's events are *held* (in arrival order).
2. The session and its messages after the session's *floor* are read from the database.
3. Messages not delivered here yet are handed to the room (id order, which is each sender's order), then
   `session_closed` if the session was closed meanwhile, then the held events; repeats are dropped by id.

Every message handed to a room here is remembered by id for SAFE_SECONDS; the floor is the highest id
forgotten so far. Ids are allocated before commit, so a lower id can commit after a higher one was
delivered: only an id delivered SAFE_SECONDS ago is forgotten (every lower id was allocated earlier still,
and no transaction lives that long), and never while the channel is not heard (`hears`), so the floor
cannot move past a message the outage is hiding. A session with no floor yet (nothing forgotten) is read
from the time its channel was first wanted, less CREATED_MARGIN (created_at is stamped before the insert).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import gevent.event

from ..storage import MessageRecord, SessionRecord, StorageError
from .protocol import encode

if TYPE_CHECKING:
    from .fanout import Event

log = logging.getLogger(__name__)

SAFE_SECONDS = 30.0  # longer than any transaction plus the time a lost subscription takes to notice (10 s)
CREATED_MARGIN = 5.0  # seconds: a message stamped this long before its channel was wanted may still be owed
MAX_REMEMBERED = 20_000  # ids remembered per session at most (beyond: the oldest is forgotten early)
MAX_HELD = 20_000  # events held per session during a catch-up; beyond, they are dropped and read again
PAGE = 500  # messages per read
RETRY_AFTER = 1.0  # seconds before a catch-up that could not read the database is tried again
PRUNE_EVERY = 30.0

DELIVER, HOLD, DROP = 0, 1, 2


class History(Protocol):
    """What a catch-up reads (service.storage.Storage)."""

    def get_session(self, session_id: int) -> SessionRecord | None: ...

    def messages_for_catch_up(self, session_id: int, after_id: int, created_since: float | None,
                              limit: int) -> list[MessageRecord]: ...


class Feed:
    """One session's delivery record on this worker."""

    __slots__ = ("floor", "recent", "held", "overflow", "closed", "since")

    def __init__(self) -> None:
        self.floor: int | None = None
        self.recent: OrderedDict[int, float] = OrderedDict()  # message id -> when handed to the room here
        self.held: list[Event] | None = None
        self.overflow = False
        self.closed = False
        self.since = 0.0  # wall time the channel was first wanted (for a session with no floor yet)


class CatchUp:
    """The feeds of the sessions with a room here, and the one greenlet that catches them up."""

    def __init__(self, history: History | None, hand_over: Callable[[Event], int],
                 has_room: Callable[[int], bool], hears: Callable[[int], bool]) -> None:
        self.history = history
        self.hand_over = hand_over
        self.has_room = has_room
        self.hears = hears
        self.feeds: dict[int, Feed] = {}
        self._due: OrderedDict[int, float] = OrderedDict()  # session -> since
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._next_prune = time.monotonic() + PRUNE_EVERY
        self.counters = {"caught_up": 0, "repeats_dropped": 0, "catch_ups": 0, "catch_up_failures": 0}

    # -- the live path ----------------------------------------------------------------------------

    def admit(self, event: Event) -> int:
        """DELIVER, HOLD (a catch-up of its session is running) or DROP (a repeat) a room event."""
        session_id = event.session_id
        feed = self.feeds.get(session_id)
        if feed is None:
            if not self.has_room(session_id):
                return DELIVER  # nobody here (a sender not joined): nothing to remember
            feed = self.feeds[session_id] = Feed()
            self._prune_now_and_then()
        if feed.held is not None:
            if len(feed.held) >= MAX_HELD:
                feed.overflow = True  # read again once this catch-up ends; typing notices are simply lost
                return DROP
            feed.held.append(event)
            return HOLD
        return self._check(feed, event)

    def _check(self, feed: Feed, event: Event) -> int:
        kind = event.kind
        if kind == "new_message" and event.message_id is not None:
            if event.message_id in feed.recent:
                self.counters["repeats_dropped"] += 1
                return DROP
            self._remember(feed, event.session_id, event.message_id)
        elif kind == "session_closed":
            if feed.closed:
                return DROP
            feed.closed = True
        return DELIVER

    def _remember(self, feed: Feed, session_id: int, message_id: int) -> None:
        now = time.monotonic()
        recent = feed.recent
        recent[message_id] = now
        if len(recent) > MAX_REMEMBERED or next(iter(recent.values())) < now - SAFE_SECONDS:
            if not self.hears(session_id):
                return  # the channel is down: the floor must not move past what the outage hides
            floor = feed.floor or 0
            while recent and (len(recent) > MAX_REMEMBERED or next(iter(recent.values())) < now - SAFE_SECONDS):
                forgotten, _ = recent.popitem(last=False)
                floor = max(floor, forgotten)
            feed.floor = floor

    def _prune_now_and_then(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        for session_id in [s for s, f in self.feeds.items() if f.held is None and not self.has_room(s)]:
            del self.feeds[session_id]

    # -- catching up ------------------------------------------------------------------------------

    def resync(self, session_id: int, since: float) -> None:
        """The session's channel is heard again: hold its events from now on, and catch it up soon.

        Called by the backplane in its listener, before any event that arrived after the (re)subscription.
        """
        if self.history is None or not self.has_room(session_id):
            return
        feed = self.feeds.get(session_id)
        if feed is None:
            feed = self.feeds[session_id] = Feed()
        if feed.floor is None and (not feed.since or since < feed.since):
            feed.since = since
        if feed.held is None:
            feed.held = []
        self._due[session_id] = since
        self.counters["catch_ups"] += 1
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        self._wake.set()

    def pending(self) -> int:
        return len(self._due)

    def _run(self) -> None:
        while True:
            if not self._due:
                self._wake.clear()
                self._wake.wait()
                continue
            session_id, _since = self._due.popitem(last=False)
            try:
                self._catch_up(session_id)
            except Exception:  # a bug must not stop every later catch-up
                log.exception("catch-up failed", extra={"session_id": session_id})
                self._release(session_id)

    def _catch_up(self, session_id: int) -> None:
        feed = self.feeds.get(session_id)
        if feed is None or feed.held is None:
            return
        assert self.history is not None
        try:
            session = self.history.get_session(session_id)
            missed = self._read(session_id, feed)
        except StorageError:
            self.counters["catch_up_failures"] += 1
            log.warning("catch-up: database unavailable; trying again", extra={"session_id": session_id})
            self._release(session_id)  # live events go on meanwhile; repeats are dropped by id later
            gevent.spawn_later(RETRY_AFTER, self.resync, session_id, feed.since)
            return
        from .fanout import Event  # noqa: PLC0415  (fanout imports this module)

        # From here to the release nothing yields: the room gets the missed messages, then what was held.
        delivered = 0
        for message in missed:
            if message.id in feed.recent:
                continue
            self._remember(feed, session_id, message.id)
            frame = encode({"type": "new_message", "session_id": session_id, "message": message.to_wire()})
            self.hand_over(Event(session_id=session_id, text=frame, kind="new_message", message_id=message.id))
            delivered += 1
        if session is not None and not session.is_open and not feed.closed:
            feed.closed = True
            self.hand_over(Event(session_id=session_id, kind="session_closed",
                                 text=encode({"type": "session_closed", "session_id": session_id})))
        self.counters["caught_up"] += delivered
        if delivered:
            log.info("caught up %d messages", delivered, extra={"session_id": session_id})
        self._release(session_id)

    def _read(self, session_id: int, feed: Feed) -> list[MessageRecord]:
        assert self.history is not None
        after = feed.floor or 0
        since = None if feed.floor is not None else feed.since - CREATED_MARGIN
        out: list[MessageRecord] = []
        while True:
            page = self.history.messages_for_catch_up(session_id, after, since, PAGE)
            out.extend(page)
            if len(page) < PAGE:
                return out
            after = page[-1].id

    def _release(self, session_id: int) -> None:
        """Hand over what was held (repeats dropped); read again if some had to be dropped."""
        feed = self.feeds.get(session_id)
        if feed is None or feed.held is None:
            return
        held, overflow = feed.held, feed.overflow
        feed.held, feed.overflow = None, False
        for event in held:
            if self._check(feed, event) == DELIVER:
                self.hand_over(event)
        if overflow:
            self.resync(session_id, feed.since)

    def status(self) -> dict[str, Any]:
        return {"feeds": len(self.feeds), "catching_up": len(self._due), **self.counters}
