"""The chat context shared by the WebSocket handlers and the HTTP API of one worker.

It owns nothing the registry or storage own; it ties them together so that a message posted over HTTP and
one sent over a WebSocket take the same path: authorize, store, then publish.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from typing import Any

import gevent
import gevent.event

from ..auth import Identity, session_access
from ..config import Settings
from ..errors import Problem, Refused
from ..storage import DuplicateMessage, MessageRecord, MessageWriter, NewMessage, SessionRecord, Storage, StorageError
from .activity import TypingNotices
from .fanout import Event, Fanout
from .protocol import encode
from .registry import Registry
from .websocket import CLOSE_GOING_AWAY

log = logging.getLogger(__name__)

SESSION_CACHE_SECONDS = 2.0
SESSION_CACHE_SIZE = 50_000
RECENT_DELIVERIES = 10_000  # message ids this worker delivered lately (repeats wait for their original)
REPEAT_WAIT_SECONDS = 1.0
REPEAT_FRESH_SECONDS = 5.0  # an original older than this was delivered long ago: its repeat never waits


def make_node_id() -> str:
    """Unique per host and process: short host name, pid and randomness (pids repeat across hosts)."""
    host = socket.gethostname().split(".")[0][:16] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class ChatHub:
    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        authenticator: Any,
        registry: Registry,
        fanout: Fanout,
        writer: MessageWriter,
        metrics: Any = None,
        desk: Any = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.auth = authenticator
        self.registry = registry
        self.fanout = fanout
        self.writer = writer
        self.metrics = metrics
        self.desk = desk  # service.desk.Desk: status, claim, transfer, routing (None: not wired)
        self.node_id = fanout.node_id
        self.typing = TypingNotices(fanout, settings.typing_timeout)
        self._sequence = itertools.count(1)
        self._sessions: dict[int, tuple[SessionRecord, float]] = {}
        self.started_at = time.time()
        self.stopping = False
        self.inflight = 0  # client frames being handled right now (graceful shutdown waits for them)
        self.counters = {"messages_in": 0, "messages_out": 0, "stored": 0}
        self._delivered: OrderedDict[int, None] = OrderedDict()  # the oldest is dropped first, in O(1)
        self._awaited: dict[int, gevent.event.Event] = {}

    # -- identities and sessions ------------------------------------------------------------------

    def new_connection_id(self) -> str:
        return f"{self.node_id}-{next(self._sequence)}"

    def observe_error(self, problem: Problem) -> None:
        if self.metrics is not None:
            self.metrics.error(problem.code)

    def session(self, session_id: int) -> SessionRecord | None:
        """The session, from a short-lived cache; closing a session anywhere evicts it everywhere."""
        cached = self._sessions.get(session_id)
        now = time.monotonic()
        if cached is not None and (cached[1] > now or not cached[0].is_open):
            return cached[0]
        try:
            record = self.storage.get_session(session_id)
        except StorageError:
            raise Refused(Problem.STORAGE_DOWN) from None
        if record is not None:
            if len(self._sessions) >= SESSION_CACHE_SIZE:
                self._sessions.clear()
            self._sessions[session_id] = (record, now + SESSION_CACHE_SECONDS)
        return record

    def forget_session(self, session_id: int) -> None:
        self._sessions.pop(session_id, None)

    def authorize(self, identity: Identity, session_id: int, need_open: bool = True) -> SessionRecord:
        session = self.session(session_id)
        session_access(identity, session, need_open=need_open)
        assert session is not None
        return session

    def authorize_to_post(self, identity: Identity, session_id: int) -> SessionRecord:
        """`authorize` for a message: a database that cannot be read cannot store it either (spec: 消息发送失败)."""
        try:
            return self.authorize(identity, session_id)
        except Refused as refused:
            if refused.problem is Problem.STORAGE_DOWN:
                raise Refused(Problem.SEND_FAILED) from None
            raise

    def claim_for_agent(self, identity: Identity, session: SessionRecord) -> None:
        """The first agent to join or answer a session becomes its agent (ROUTING=auto: room allowing)."""
        if identity.is_agent and not identity.backend and session.agent_id is None:
            if self.desk is not None and self.desk.auto:
                self.desk.implicit_claim(identity.user_id, session)
                self.forget_session(session.id)
                return
            try:
                if self.storage.assign_agent(session.id, identity.user_id):
                    log.info("agent assigned", extra={"session_id": session.id, "user_id": identity.user_id})
            except StorageError:
                log.warning("could not assign agent", extra={"session_id": session.id})
            self.forget_session(session.id)

    # -- messages ---------------------------------------------------------------------------------

    def post_message(
        self,
        identity: Identity,
        session: SessionRecord,
        content: str,
        sender_connection: str | None = None,
        client_msg_id: str | None = None,
    ) -> tuple[MessageRecord, bool]:
        """Store, then publish to the room and the sender; (message, duplicate).

        A duplicate client_msg_id stores nothing and publishes nothing: the caller answers its sender alone.
        """
        if self.metrics is not None:
            self.metrics.message_received()
        message = NewMessage(
            session_id=session.id,
            sender_id=identity.user_id,
            sender_role=identity.role,
            content=content,
            created_at=self.storage.now(),
            client_msg_id=client_msg_id,
        )
        started = time.perf_counter()
        try:
            stored = self.writer.store(message)
        except DuplicateMessage as duplicate:
            if duplicate.original is None:
                raise Refused(Problem.SEND_FAILED) from None
            self._await_delivery(duplicate.original)
            return duplicate.original, True
        except StorageError:
            log.warning("message not stored", extra={"session_id": session.id, "user_id": identity.user_id})
            raise Refused(Problem.SEND_FAILED) from None
        self.counters["stored"] += 1
        if self.metrics is not None:
            self.metrics.stored(time.perf_counter() - started)
        self.claim_for_agent(identity, session)
        frame = encode({"type": "new_message", "session_id": session.id, "message": stored.to_wire()})
        self.fanout.publish(
            Event(
                session_id=session.id,
                text=frame,
                kind="new_message",
                include=sender_connection,
                message_id=stored.id,
                stored_at=time.time(),
            )
        )
        return stored, False

    def publish_session_closed(self, session_id: int, reason: str | None = None) -> None:
        """`session_closed` to the room; `reason` (additive) only for the desk's closes (idle)."""
        self.forget_session(session_id)
        frame: dict[str, Any] = {"type": "session_closed", "session_id": session_id}
        if reason is not None:
            frame["reason"] = reason
        self.fanout.publish(Event(session_id=session_id, text=encode(frame), kind="session_closed"))
        if self.desk is not None:
            self.desk.session_closed(session_id)

    def on_event(self, event: Event) -> None:
        """Every event, local or from another process, passes here before delivery."""
        if event.kind == "new_message" and event.message_id is not None:
            self._note_delivery(event.message_id)
        elif event.kind == "session_closed":
            self.forget_session(event.session_id)
        elif event.kind in ("session_assigned", "session_transferred") and event.user_id is None:
            self.forget_session(event.session_id)  # the cached agent_id changed
        elif event.kind == "desk_kick" and self.desk is not None:
            self.desk.kicked()

    def _note_delivery(self, message_id: int) -> None:
        delivered = self._delivered
        delivered[message_id] = None
        if len(delivered) > RECENT_DELIVERIES:
            delivered.popitem(last=False)  # (a plain dict's first key is O(n) to find after many deletions)
        waiter = self._awaited.pop(message_id, None)
        if waiter is not None:
            waiter.set()  # the waiting greenlet runs after this delivery has been handed to the room

    def _await_delivery(self, original: MessageRecord) -> None:
        """Answer a repeated client_msg_id only once the room here has the original.

        The repeat's sender may send its next message as soon as it has the answer; when the original was
        stored on another worker and is still on its way through Redis, that next message would otherwise
        reach this worker's room members before the original (bounded wait; old originals never wait).
        """
        if original.id in self._delivered:
            return
        if (self.storage.now() - original.created_at).total_seconds() > REPEAT_FRESH_SECONDS:
            return
        waiter = self._awaited.setdefault(original.id, gevent.event.Event())
        waiter.wait(REPEAT_WAIT_SECONDS)
        self._awaited.pop(original.id, None)

    def presence(self, session_id: int) -> dict[str, Any]:
        """Who is joined to the session on every worker and host: user ids with their connection counts.

        This worker's members come from its registry (exact, now); other workers' from the backplane's
        Redis mirror (refreshed within a fraction of a second). `complete` is false when Redis could not
        be read and only this worker's members are counted.
        """
        local = [(conn.connection_id, conn.user_id) for conn in self.registry.members(session_id)]
        members = {cid: uid for cid, uid in local if uid is not None}
        complete = True
        backplane = self.fanout.backplane
        if backplane is not None:
            remote = backplane.presence(session_id)
            if remote is None:
                complete = False
            else:
                own = self.node_id + "-"
                members.update((cid, uid) for cid, uid in remote if not cid.startswith(own))
        per_user: dict[int, int] = {}
        for uid in members.values():
            per_user[uid] = per_user.get(uid, 0) + 1
        return {
            "session_id": session_id,
            "connections": len(members),
            "users": [{"user_id": uid, "connections": n} for uid, n in sorted(per_user.items())],
            "complete": complete,
        }

    def shutdown(self, reason: str = "server shutting down", timeout: float | None = None) -> None:
        """Graceful stop, in order: take no new frames; let the handlers in flight store and publish; flush
        every connection's queue and close it with 1001 (going away), so clients reconnect elsewhere.

        A frame that arrives after this point is not processed: its client is told to reconnect.
        """
        if self.stopping:
            return
        self.stopping = True
        budget = self.settings.graceful_timeout * 0.8 if timeout is None else timeout
        deadline = time.monotonic() + budget
        while self.inflight and time.monotonic() < deadline:
            gevent.sleep(0.005)
        if self.inflight:
            log.warning("%d handlers still running at shutdown", self.inflight)
        self.writer.stop(max(0.1, deadline - time.monotonic()))
        connections = self.registry.connections()
        log.info("closing %d connections", len(connections))
        closers = [conn.close(CLOSE_GOING_AWAY, reason) for conn in connections]
        gevent.joinall([c for c in closers if c is not None], timeout=max(0.1, deadline - time.monotonic()))
        if self.desk is not None:
            self.desk.stop()  # after the closes: the next leader takes over at once
        self.fanout.stop()
