"""Fan-out: every event reaches this worker's connections directly and every other worker through a backplane.

The backplane does not care about sockets: it publishes an event once, on the channel of its session (or
of its user), and hands what it receives from other processes back to `Fanout.receive`. Events carry the
origin's node id, so a process never delivers its own event twice (once locally, once from the backplane).
With a backplane, every room event passes the catch-up's bookkeeping (catchup.py): what a lost
subscription hid is read back from the database, and nothing is handed to a room twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import orjson

from .catchup import DELIVER, DROP, CatchUp, History
from .registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """One frame for a session's room, or for every connection of one user.

    `user_id`: when set, the frame goes to every connection authenticated as that user, on every worker and
    host, instead of to a room (`session_id` is then the session it is about, or 0). With `room_copy`, the
    same frame was also published to the session's room: the user's connections in that room get it from
    there, once, and not a second time as the user's.
    `include`: a connection id that gets the frame even when not in the room (a sender not joined).
    `exclude`: a connection id that must not get it (a typing client's own notice).
    `stored_at`: when the message was stored (time.time()), so every process can measure delivery latency.
    """

    session_id: int
    text: str
    kind: str
    include: str | None = None
    exclude: str | None = None
    message_id: int | None = None
    origin: str = ""
    stored_at: float = 0.0  # wall-clock time the message was stored (delivery latency metric)
    user_id: int | None = None
    room_copy: bool = False

    def to_json(self) -> str:
        return self.to_json_bytes().decode()

    def to_json_bytes(self) -> bytes:
        """The event as compact JSON, for the backplane (orjson: several times faster than asdict + json)."""
        try:
            return orjson.dumps({name: getattr(self, name) for name in _FIELDS})
        except (TypeError, orjson.JSONEncodeError):  # e.g. an id beyond 64 bits
            return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Event:
        data: dict[str, Any] = json.loads(raw)
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


_FIELDS = tuple(Event.__dataclass_fields__)


class Backplane(Protocol):
    """Carries events between processes and hosts."""

    def start(self, fanout: Fanout) -> None: ...

    def publish(self, event: Event) -> bool: ...

    def hears(self, session_id: int) -> bool:
        """True while this process's subscription to the session's events is confirmed and up."""
        ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def presence(self, session_id: int) -> list[tuple[str, int]] | None:
        """(connection id, user id) of the session's members on every process; None when unknown."""
        ...


class Fanout:
    def __init__(self, registry: Registry, node_id: str, backplane: Backplane | None = None,
                 history: History | None = None) -> None:
        """`history` (the storage) lets a worker catch up from the database after a lost subscription."""
        self.registry = registry
        self.node_id = node_id
        self.backplane = backplane
        self.on_event = None  # optional callable(event), before delivery (cache invalidation)
        self.on_delivered = None  # optional callable(event, count) for metrics
        self._started = False
        self.catch_up = (
            CatchUp(history, self._hand_over, registry.has_room, backplane.hears) if backplane is not None else None
        )

    def start(self) -> None:
        """Start the backplane listener; called lazily in the worker, after the fork."""
        if not self._started and self.backplane is not None:
            self._started = True
            self.backplane.start(self)

    def publish(self, event: Event) -> int:
        """Deliver to local connections now, then to every other process. Returns local deliveries."""
        if event.origin != self.node_id:
            event = replace(event, origin=self.node_id)
        delivered = self._deliver(event)
        if self.backplane is not None:
            self.start()
            self.backplane.publish(event)
        return delivered

    def receive(self, event: Event) -> int:
        """An event from the backplane; our own were delivered when published."""
        if event.origin == self.node_id:
            return 0
        return self._deliver(event)

    def resync(self, session_id: int, since: float) -> None:
        """The backplane hears the session again after it could not: catch its room up from the database."""
        if self.catch_up is not None:
            self.catch_up.resync(session_id, since)

    def _deliver(self, event: Event) -> int:
        if event.user_id is not None:
            skip = event.session_id if event.room_copy else None
            return self.registry.deliver_to_user(event.user_id, event.text, skip_session=skip)
        if self.catch_up is not None:
            verdict = self.catch_up.admit(event)
            if verdict == DROP and event.include is not None:
                # A catch-up gave the room this message before its sender's greenlet published it: the room
                # has it, but a sender outside the room still needs its own copy.
                return self.registry.deliver_outside(event.session_id, event.include, event.text, event.message_id)
            if verdict != DELIVER:
                return 0
        return self._hand_over(event)

    def _hand_over(self, event: Event) -> int:
        if self.on_event is not None:
            self.on_event(event)
        count = self.registry.deliver(
            event.session_id, event.text, include=event.include, exclude=event.exclude, message_id=event.message_id
        )
        if self.on_delivered is not None:
            self.on_delivered(event, count)
        return count

    def stop(self) -> None:
        if self.backplane is not None:
            self.backplane.stop()
