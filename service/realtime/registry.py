"""The one owner of this worker's connections and rooms (a room = the connections joined to a session).

Only the registry mutates these maps; join, leave and disconnect keep them tidy (an empty room goes
away), and readers get copies, so a broadcast never iterates a set another greenlet is changing. It also
indexes connections by authenticated user, for events addressed to a user rather than a session.

A `RoomWatcher` given at construction hears every change that decides what this worker must receive
from the others: the backplane subscribes to a session's channel while its room here is not empty, and to a
user's channel while that user has a connection here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class Member(Protocol):
    """What the registry needs of a connection."""

    connection_id: str
    session_id: int | None
    user_id: int | None

    def send_text(self, text: str) -> bool: ...

    def send_event(self, text: str, message_id: int | None = None) -> bool: ...


class RoomWatcher(Protocol):
    """Told of the room and user changes that decide which events this worker needs."""

    def room_joined(self, session_id: int) -> None:
        """A connection joined the session's room here; returns once the session's events are heard here.

        Called on every join (not only the first), so that no join is answered before its room is live.
        """
        ...

    def room_emptied(self, session_id: int) -> None: ...

    def user_arrived(self, user_id: int) -> None: ...

    def user_gone(self, user_id: int) -> None: ...


class Registry:
    def __init__(self, watcher: RoomWatcher | None = None) -> None:
        self._connections: dict[str, Member] = {}
        self._rooms: dict[int, set[Member]] = {}
        self._users: dict[int, set[Member]] = {}
        self.watcher = watcher
        self.revision = 0  # bumped on every join and leave: presence mirrors rooms when it changes

    def add(self, conn: Member) -> None:
        self._connections[conn.connection_id] = conn

    def remove(self, conn: Member) -> None:
        """Forget a closed connection and leave its room."""
        self.leave(conn)
        self._forget_user(conn)
        self._connections.pop(conn.connection_id, None)

    def set_identity(self, conn: Any, identity: Any) -> None:
        """Bind `conn` to a user (auth, or a second auth re-binding it): it leaves its room and its old user."""
        self.leave(conn)
        self._forget_user(conn)
        conn.identity = identity
        user_id = conn.user_id
        if user_id is None:
            return
        users = self._users.get(user_id)
        if users is None:
            users = self._users[user_id] = set()
            users.add(conn)
            if self.watcher is not None:
                self.watcher.user_arrived(user_id)
        else:
            users.add(conn)

    def _forget_user(self, conn: Member) -> None:
        user_id = conn.user_id
        users = self._users.get(user_id) if user_id is not None else None
        if users is None or conn not in users:
            return
        users.discard(conn)
        if not users:
            del self._users[user_id]
            if self.watcher is not None:
                self.watcher.user_gone(user_id)

    def join(self, conn: Member, session_id: int) -> None:
        """Put `conn` in the session's room, leaving the room it was in (a connection is in at most one).

        Returns once the watcher hears the session (the backplane's subscription is confirmed, or it gave
        up waiting and will catch up instead): the caller may then answer the join.
        """
        if conn.session_id != session_id:
            self.leave(conn)
            self._rooms.setdefault(session_id, set()).add(conn)
            conn.session_id = session_id
            self.revision += 1
        if self.watcher is not None:
            self.watcher.room_joined(session_id)

    def leave(self, conn: Member) -> int | None:
        """Take `conn` out of its room; returns the session it left, or None."""
        session_id = conn.session_id
        if session_id is None:
            return None
        room = self._rooms.get(session_id)
        if room is not None:
            room.discard(conn)
            if not room:
                del self._rooms[session_id]
                if self.watcher is not None:
                    self.watcher.room_emptied(session_id)
        conn.session_id = None
        self.revision += 1
        return session_id

    def members(self, session_id: int) -> tuple[Member, ...]:
        """A copy of the room, safe to iterate while others join and leave."""
        room = self._rooms.get(session_id)
        return tuple(room) if room else ()

    def connections(self) -> tuple[Member, ...]:
        return tuple(self._connections.values())

    def deliver(
        self,
        session_id: int,
        text: str,
        include: str | None = None,
        exclude: str | None = None,
        message_id: int | None = None,
    ) -> int:
        """Send `text` to the room, plus connection `include` if it lives here and is not in the room.

        `message_id` (a new_message's id) lets a connection that is replaying history skip what it replayed.
        Returns how many connections were handed the frame.
        """
        targets: Iterable[Member] = self.members(session_id)
        sent = 0
        included_in_room = False
        for conn in targets:
            if conn.connection_id == exclude:
                continue
            if conn.connection_id == include:
                included_in_room = True
            sent += conn.send_event(text, message_id)
        if include is not None and not included_in_room:
            extra = self._connections.get(include)
            if extra is not None and extra.connection_id != exclude:
                sent += extra.send_event(text, message_id)
        return sent

    def deliver_outside(self, session_id: int, connection_id: str, text: str, message_id: int | None = None) -> int:
        """Send `text` to one connection here unless it is in the session's room (which had it already)."""
        conn = self._connections.get(connection_id)
        if conn is None or conn.session_id == session_id:
            return 0
        return int(conn.send_event(text, message_id))

    def has_room(self, session_id: int) -> bool:
        return session_id in self._rooms

    def of_user(self, user_id: int) -> tuple[Member, ...]:
        """A copy of this worker's connections authenticated as `user_id`."""
        users = self._users.get(user_id)
        return tuple(users) if users else ()

    def users(self) -> list[int]:
        """The users with at least one connection on this worker."""
        return list(self._users)

    def deliver_to_user(self, user_id: int, text: str, skip_session: int | None = None) -> int:
        """Send `text` to every connection authenticated as `user_id` here, but those joined to `skip_session`
        (which get the room's copy of the same frame); how many were handed it."""
        return sum(conn.send_text(text) for conn in self.of_user(user_id)
                   if skip_session is None or conn.session_id != skip_session)

    def stats(self) -> dict[str, int]:
        conns = self._connections.values()
        return {
            "connections": len(self._connections),
            "authenticated": sum(1 for c in conns if c.user_id is not None),
            "users": len({c.user_id for c in conns if c.user_id is not None}),
            "joined": sum(1 for c in conns if c.session_id is not None),
            "rooms": len(self._rooms),
        }

    def presence(self) -> dict[int, list[tuple[str, int | None]]]:
        """session id -> (connection id, user id) of each member here (mirrored to Redis across workers)."""
        return {sid: [(c.connection_id, c.user_id) for c in room] for sid, room in self._rooms.items()}
