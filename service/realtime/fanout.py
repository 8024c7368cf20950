"""Fan-out: every event reaches this worker's connections directly and every other worker through a backplane.

The backplane does not care about sockets: it publishes an event once and hands what it receives from
other processes back to `Fanout.receive`. Events carry the origin's node id, so a process never delivers
its own event twice (once locally, once from the backplane).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from .registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """One frame for a session's room.

    `include`: a connection id that gets the frame even when not in the room (a sender not joined).
    `exclude`: a connection id that must not get it (a typing client's own notice).
    `stored_at`: when the message was stored (time.time()), so every process can measure delivery latency.
    `user_id`: when set, the frame goes to every connection authenticated as that user, on every worker and
    host, instead of to the room (`session_id` is then the session it is about, or 0). With `room_copy`, the
    same frame was also published to the session's room: the user's connections in that room get it from
    there, once, and not a second time as the user's.
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
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Event:
        data: dict[str, Any] = json.loads(raw)
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


class Backplane(Protocol):
    """Carries events between processes and hosts."""

    def start(self, fanout: Fanout) -> None: ...

    def publish(self, event: Event) -> bool: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def presence(self, session_id: int) -> list[tuple[str, int]] | None:
        """(connection id, user id) of the session's members on every process; None when unknown."""
        ...


class Fanout:
    def __init__(self, registry: Registry, node_id: str, backplane: Backplane | None = None) -> None:
        self.registry = registry
        self.node_id = node_id
        self.backplane = backplane
        self.on_event = None  # optional callable(event), before delivery (cache invalidation)
        self.on_delivered = None  # optional callable(event, count) for metrics
        self._started = False

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

    def _deliver(self, event: Event) -> int:
        if self.on_event is not None:
            self.on_event(event)
        if event.user_id is not None:
            skip = event.session_id if event.room_copy else None
            count = self.registry.deliver_to_user(event.user_id, event.text, skip_session=skip)
        else:
            count = self.registry.deliver(
                event.session_id, event.text, include=event.include, exclude=event.exclude,
                message_id=event.message_id
            )
        if self.on_delivered is not None:
            self.on_delivered(event, count)
        return count

    def stop(self) -> None:
        if self.backplane is not None:
            self.backplane.stop()
