"""The one owner of this worker's connections and rooms (a room = the connections joined to a session).

Only the registry mutates these maps; join, leave and disconnect keep them tidy (an empty room goes
away), and readers get copies, so a broadcast never iterates a set another greenlet is changing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Member(Protocol):
    """What the registry needs of a connection."""

    connection_id: str
    session_id: int | None
    user_id: int | None

    def send_text(self, text: str) -> bool: ...

    def send_event(self, text: str, message_id: int | None = None) -> bool: ...


class Registry:
    def __init__(self) -> None:
        self._connections: dict[str, Member] = {}
        self._rooms: dict[int, set[Member]] = {}
        self._users: dict[int, set[Member]] = {}  # user id -> this worker's connections authenticated as it
        self.revision = 0  # bumped on every join and leave: presence mirrors rooms when it changes

    def add(self, conn: Member) -> None:
        self._connections[conn.connection_id] = conn

    def remove(self, conn: Member) -> None:
        """Forget a closed connection and leave its room."""
        self.leave(conn)
        self._unbind(conn, conn.user_id)
        self._connections.pop(conn.connection_id, None)

    def user_changed(self, conn: Member, previous_user_id: int | None) -> None:
        """Index `conn` under its (new) user after an auth; `previous_user_id` is who it was before."""
        if previous_user_id == conn.user_id:
            return
        self._unbind(conn, previous_user_id)
        if conn.user_id is not None:
            self._users.setdefault(conn.user_id, set()).add(conn)

    def _unbind(self, conn: Member, user_id: int | None) -> None:
        if user_id is None:
            return
        conns = self._users.get(user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._users[user_id]

    def of_user(self, user_id: int) -> tuple[Member, ...]:
        """A copy of this worker's connections authenticated as `user_id`."""
        conns = self._users.get(user_id)
        return tuple(conns) if conns else ()

    def users(self) -> list[int]:
        """The users with at least one connection on this worker."""
        return list(self._users)

    def deliver_to_user(self, user_id: int, text: str, skip_session: int | None = None) -> int:
        """Send `text` to every connection of `user_id` here (but those joined to `skip_session`, if given)."""
        sent = 0
        for conn in self.of_user(user_id):
            if skip_session is not None and conn.session_id == skip_session:
                continue
            sent += conn.send_event(text)
        return sent

    def join(self, conn: Member, session_id: int) -> None:
        """Put `conn` in the session's room, leaving the room it was in (a connection is in at most one)."""
        if conn.session_id == session_id:
            return
        self.leave(conn)
        self._rooms.setdefault(session_id, set()).add(conn)
        conn.session_id = session_id
        self.revision += 1

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
