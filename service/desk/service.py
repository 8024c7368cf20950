"""The desk's logic, one instance per worker.

Every worker answers its own agents' requests (status, claim, transfer) at once: claims and transfers are
atomic in the database (storage/desk.py), so any number of workers and hosts may make them together.
Exactly one process of the deployment, the leader (whoever holds storage.locks' lock), also runs the loop
that needs one view of the whole desk: automatic routing and queue positions (one sender, so a customer
sees positions in order, then the assignment), marking agents offline when their leases run out, the idle
sweeper and the load samples. Other workers wake it with a `kick` through the fan-out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import gevent
import gevent.event

from ..config import Settings
from ..errors import Problem, Refused
from ..storage import Storage, StorageError
from ..storage.desk import DeskAgent, DeskStorage, Outcome, Waiting
from ..storage.locks import LeaderLock
from ..storage.models import AGENT_STATUSES
from ..storage.records import SessionRecord, wire_time
from .leases import Leases

log = logging.getLogger(__name__)

TICK = 0.25  # seconds between the leader's rounds when nothing wakes it
LEADER_RETRY = 1.0  # seconds between attempts to become the leader (and checks that it still is)
SWEEP_EVERY = 1.0  # seconds between offline checks
IDLE_SWEEP_MAX = 10.0  # seconds between idle sweeps at most (a tenth of SESSION_IDLE_CLOSE, at least 1 s)
SAMPLE_EVERY = 60.0  # seconds between agent load samples


class Notifier(Protocol):
    """What the desk needs of the realtime core."""

    def to_user(self, user_id: int, frame: dict[str, Any], session_id: int = 0, room_copy: bool = False) -> None:
        """`frame` to every connection of the user on every worker (with `room_copy`: but those in the room)."""

    def to_session(self, session_id: int, frame: dict[str, Any]) -> None:
        """`frame` to the session's room on every worker."""

    def session_closed(self, session_id: int, reason: str) -> None:
        """A session was closed here: tell its room (and forget it in every worker's cache)."""

    def kick(self) -> None:
        """Wake the leader, wherever it runs."""

    def local_users(self) -> list[tuple[int, bool]]:
        """(user id, is agent) of every user with a connection on this worker."""


class Desk:
    def __init__(self, settings: Settings, storage: Storage, store: DeskStorage, leases: Leases,
                 lock: LeaderLock, node_id: str, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.storage = storage
        self.store = store
        self.leases = leases
        self.lock = lock
        self.node_id = node_id
        self.notifier: Notifier | None = notifier
        self.auto = settings.routing == "auto"
        self.grace = settings.agent_offline_grace
        self.refresh = max(0.1, min(self.grace / 3, 5.0))
        self.leading = False
        self._held: set[int] = set()
        self._positions: dict[int, int] = {}
        self._kicked = gevent.event.Event()
        self._greenlets: list[gevent.Greenlet] = []
        self._started_at = time.monotonic()
        self.counters = {"routed": 0, "claimed": 0, "transferred": 0, "requeued": 0, "idle_closed": 0,
                         "idle_warned": 0, "abandoned_closed": 0}

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the lease renewer and the leader loop (in the worker, after the fork); idempotent."""
        if self._greenlets or self.notifier is None:
            return
        self._started_at = time.monotonic()
        self._greenlets = [gevent.spawn(self._guard, self._renew_loop), gevent.spawn(self._guard, self._leader_loop)]

    def stop(self) -> None:
        """Stop leading and renewing; the lock goes at once, so another process leads without waiting."""
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []
        self.leading = False
        self.lock.release()

    def kicked(self) -> None:
        """Something changed the queue or an agent's room (any worker): the leader routes now."""
        if self.leading:
            self._kicked.set()

    def _kick(self) -> None:
        if self.notifier is not None:
            self.notifier.kick()

    def _guard(self, loop: Callable[[], None]) -> None:
        while True:
            try:
                loop()
                return
            except gevent.GreenletExit:
                raise
            except Exception:
                log.exception("desk: %s failed; restarting it", loop.__name__)
                self.leading = False
                gevent.sleep(LEADER_RETRY)

    # -- status and capacity ----------------------------------------------------------------------

    def agent(self, user_id: int) -> DeskAgent:
        found = self._call(self.store.agent, user_id)
        if found is None:
            raise Refused(Problem.AGENT_NOT_FOUND)
        return found

    def agents(self) -> list[DeskAgent]:
        return self._call(self.store.agents)

    def set_status(self, user_id: int, status: Any, connected_here: bool = False) -> DeskAgent:
        """The agent's own choice; every connection of the agent hears it (agent_status)."""
        if status not in AGENT_STATUSES:
            raise Refused(Problem.INVALID_STATUS)
        self._ensure_agent(user_id)
        if connected_here:
            self._call(self.leases.hold, [user_id], self.node_id, self.grace)
            self._held.add(user_id)
        self._call(self.store.set_status, user_id, status)
        if self.notifier is not None:
            self.notifier.to_user(user_id, {"type": "agent_status", "user_id": user_id, "status": status})
        if self.auto and status == "offline":
            self._requeue(user_id)
        if self.auto:
            self._kick()
        log.info("agent status", extra={"user_id": user_id, "status": status})
        return self.agent(user_id)

    def set_capacity(self, user_id: int, capacity: Any) -> DeskAgent:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 <= capacity <= 10_000:
            raise Refused(Problem.INVALID_CAPACITY)
        if not self._call(self.store.set_capacity, user_id, capacity):
            raise Refused(Problem.AGENT_NOT_FOUND)
        if self.auto:
            self._kick()
        return self.agent(user_id)

    def _ensure_agent(self, user_id: int) -> None:
        """An agent by token claim alone (AUTH_MODE=jwt) gets its desk row on first use."""
        if self._call(self.store.agent, user_id) is None:
            self._call(self.storage.add_agent, user_id)

    # -- the queue --------------------------------------------------------------------------------

    def queue(self) -> list[dict[str, Any]]:
        now = self.storage.now()
        return [{"session_id": w.session_id, "user_id": w.user_id, "created_at": wire_time(w.created_at),
                 "position": i, "waiting_seconds": max(0, int((now - w.created_at).total_seconds()))}
                for i, w in enumerate(self._call(self.store.queue), 1)]

    def session_opened(self, session: SessionRecord) -> None:
        if self.auto:
            self._kick()

    def session_closed(self, session_id: int) -> None:
        """A session closed (any reason): its agent has room again, the queue moved."""
        if self.auto:
            self._kick()

    # -- claim and transfer -----------------------------------------------------------------------

    def claim(self, agent_id: int, session: SessionRecord) -> bool:
        """Take a waiting session (both routing modes); session_assigned to the agent and the session.

        False (and nothing announced) when the session was the agent's already.
        """
        if session.agent_id == agent_id:
            return False
        outcome = self._call(self.store.assign, session.id, agent_id)
        if outcome is Outcome.NO_AGENT:
            self._ensure_agent(agent_id)
            outcome = self._call(self.store.assign, session.id, agent_id)
        self._refuse_unless_assigned(outcome)
        self.counters["claimed"] += 1
        log.info("session claimed", extra={"session_id": session.id, "user_id": agent_id})
        self._announce_assigned(session.id, session.user_id, agent_id)
        if self.auto:
            self._kick()  # the queue moved: positions
        return True

    def implicit_claim(self, agent_id: int, session: SessionRecord) -> bool:
        """ROUTING=auto: an agent who joins or answers a waiting session (a legacy console) takes it, room allowing."""
        try:
            outcome = self.store.assign(session.id, agent_id)
        except StorageError:
            log.warning("could not assign agent", extra={"session_id": session.id})
            return False
        if outcome is not Outcome.ASSIGNED:
            return False
        self._announce_assigned(session.id, session.user_id, agent_id)
        self._kick()
        return True

    def transfer(self, actor_id: int | None, session: SessionRecord, to_agent: Any) -> SessionRecord:
        """The session's agent (or the trusted backend, actor None) hands it to an online agent with room."""
        from ..auth import id_is_missing, parse_id

        if id_is_missing(to_agent):
            raise Refused(Problem.MISSING_AGENT_ID)
        target = parse_id(to_agent, Problem.MISSING_AGENT_ID, Problem.INVALID_AGENT_ID)
        if actor_id is not None and session.agent_id != actor_id:
            raise Refused(Problem.TRANSFER_FORBIDDEN)
        if session.agent_id is None or target == session.agent_id or not self._available(target):
            raise Refused(Problem.AGENT_UNAVAILABLE if session.agent_id is not None else Problem.TRANSFER_FORBIDDEN)
        outcome = self._call(self.store.transfer, session.id, session.agent_id, target)
        if outcome is Outcome.OVER_CAPACITY:
            raise Refused(Problem.OVER_CAPACITY)
        if outcome is Outcome.NO_AGENT:
            raise Refused(Problem.AGENT_UNAVAILABLE)
        if outcome is not Outcome.ASSIGNED:
            current = self._session(session.id)
            raise Refused(Problem.SESSION_CLOSED if not current.is_open else Problem.TRANSFER_FORBIDDEN)
        self.counters["transferred"] += 1
        frame = {"type": "session_transferred", "session_id": session.id, "from_agent_id": session.agent_id,
                 "to_agent_id": target}
        self._announce(session.id, frame, [session.user_id, session.agent_id, target])
        log.info("session transferred", extra={"session_id": session.id, "user_id": target})
        if self.auto:
            self._kick()
        return self._session(session.id)

    def _available(self, agent_id: int) -> bool:
        """Online (by choice) and connected somewhere."""
        agent = self._call(self.store.agent, agent_id)
        if agent is None or agent.status != "online":
            return False
        live = self._call(self.leases.live, [agent_id])
        return live is None or live.get(agent_id, False)

    @staticmethod
    def _refuse_unless_assigned(outcome: Outcome) -> None:
        if outcome is Outcome.ALREADY_ASSIGNED:
            raise Refused(Problem.ALREADY_ASSIGNED)
        if outcome is Outcome.OVER_CAPACITY:
            raise Refused(Problem.OVER_CAPACITY)
        if outcome is Outcome.NOT_WAITING:
            raise Refused(Problem.SESSION_CLOSED)
        if outcome is Outcome.NO_AGENT:
            raise Refused(Problem.AGENTS_ONLY)

    def _session(self, session_id: int) -> SessionRecord:
        record = self._call(self.storage.get_session, session_id)
        if record is None:
            raise Refused(Problem.SESSION_NOT_FOUND)
        return record

    def _announce_assigned(self, session_id: int, customer_id: int, agent_id: int) -> None:
        frame = {"type": "session_assigned", "session_id": session_id, "agent_id": agent_id}
        self._announce(session_id, frame, [customer_id, agent_id])

    def _announce(self, session_id: int, frame: dict[str, Any], users: list[int | None]) -> None:
        """To the room, and to each user's connections outside it: every connection gets it once."""
        if self.notifier is None:
            return
        self.notifier.to_session(session_id, frame)
        for user_id in dict.fromkeys(u for u in users if u is not None):
            self.notifier.to_user(user_id, frame, session_id, room_copy=True)

    def _requeue(self, agent_id: int) -> list[int]:
        ids = self._call(self.store.requeue_unanswered, agent_id)
        if ids:
            self.counters["requeued"] += len(ids)
            log.info("sessions back in the queue", extra={"user_id": agent_id, "sessions": len(ids)})
        return ids

    @staticmethod
    def _call(func: Callable[..., Any], *args: Any) -> Any:
        try:
            return func(*args)
        except StorageError:
            raise Refused(Problem.STORAGE_DOWN) from None

    # -- leases (every worker) --------------------------------------------------------------------

    def _renew_loop(self) -> None:
        """Renew the leases of the users connected here; a user who left gets one last lease of the grace."""
        customers_too = self.settings.session_idle_close > 0
        assert self.notifier is not None
        while True:
            users = [(uid, agent) for uid, agent in self.notifier.local_users() if agent or customers_too]
            here = {uid for uid, _agent in users}
            gone = self._held - here
            if here or gone:
                self.leases.hold(sorted(here | gone), self.node_id, self.grace)
            for uid, agent in users:
                if agent and uid not in self._held:
                    self._came_online(uid)
            self._held = here
            gevent.sleep(self.refresh)

    def _came_online(self, user_id: int) -> None:
        """An agent connected: an offline agent becomes online (a chosen `away` stays)."""
        try:
            if self.store.set_status(user_id, "online", only_from=("offline",)) and self.auto:
                self._kick()
        except StorageError:
            pass

    # -- the leader -------------------------------------------------------------------------------

    def _leader_loop(self) -> None:
        next_check = next_sweep = next_idle = next_sample = 0.0
        idle_every = max(SWEEP_EVERY, min(self.settings.session_idle_close / 10, IDLE_SWEEP_MAX))
        while True:
            now = time.monotonic()
            if not self.leading or now >= next_check:
                was = self.leading
                self.leading = self.lock.acquire()
                next_check = now + LEADER_RETRY
                if self.leading != was:
                    log.info("desk: %s the leader", "now" if self.leading else "no longer")
                    self._positions.clear()
            if not self.leading:
                gevent.sleep(LEADER_RETRY)
                continue
            try:
                if now >= next_sweep:
                    next_sweep = now + SWEEP_EVERY
                    self.check_offline()
                if self.settings.session_idle_close > 0 and now >= next_idle:
                    next_idle = now + idle_every
                    self.sweep_idle()
                if self.auto:
                    self.send_positions(self.route())
                if now >= next_sample:
                    next_sample = now + SAMPLE_EVERY
                    self.store.sample_load(self.storage.now().replace(second=0))
            except (StorageError, Refused) as exc:
                log.warning("desk: leader round failed (%s); next round soon", exc)
            self._kicked.wait(TICK)
            self._kicked.clear()

    def check_offline(self) -> None:
        """Agents online or away with no live lease anywhere are offline; auto: their unanswered sessions
        go back to the queue."""
        if time.monotonic() - self._started_at < self.grace:
            return  # just started: connections made before a restart are not known yet
        ids = self.store.agents_with_status(("online", "away"))
        live = self.leases.live(ids)
        if live is None:
            return  # Redis down: not knowing is not being gone
        for user_id in ids:
            if live.get(user_id):
                continue
            if self.store.set_status(user_id, "offline", only_from=("online", "away")):
                log.info("agent offline (no connection for %gs)", self.grace, extra={"user_id": user_id})
                if self.auto:
                    self._requeue(user_id)

    def route(self) -> list[Waiting]:
        """Assign waiting sessions, oldest first, while online agents have room; the queue left waiting."""
        queue = self.store.queue()
        if not queue:
            return queue
        online = self.store.agents(self.store.agents_with_status(("online",)))
        live = self.leases.live([a.user_id for a in online]) or {}
        room = {a.user_id: a for a in online if live.get(a.user_id, True) and a.load < a.capacity}
        load = {a.user_id: a.load for a in room.values()}
        idle_since = {a.user_id: a.last_assigned_at or datetime.min for a in room.values()}
        left: list[Waiting] = []
        for index, waiting in enumerate(queue):
            if not room:
                left.extend(queue[index:])
                break
            previous = self.store.previous_agent(waiting.user_id, waiting.session_id)
            assigned = False
            while room and not assigned:
                if previous in room:
                    agent_id = previous
                else:
                    agent_id = min(room, key=lambda uid: (load[uid], idle_since[uid], uid))
                previous = None
                outcome = self.store.assign(waiting.session_id, agent_id, "system")
                if outcome is Outcome.ASSIGNED:
                    assigned = True
                    load[agent_id] += 1
                    idle_since[agent_id] = self.storage.now()
                    if load[agent_id] >= room[agent_id].capacity:
                        del room[agent_id]
                    self.counters["routed"] += 1
                    self._positions.pop(waiting.session_id, None)
                    self._announce_assigned(waiting.session_id, waiting.user_id, agent_id)
                elif outcome in (Outcome.OVER_CAPACITY, Outcome.NO_AGENT):
                    del room[agent_id]  # filled by a claim meanwhile: try the next agent
                else:
                    assigned = True  # claimed by someone meanwhile, or closed: nothing to do
                    self._positions.pop(waiting.session_id, None)
            if not assigned:
                left.append(waiting)
        return left

    def position_frame(self, user_id: int, session: SessionRecord) -> dict[str, Any] | None:
        """ROUTING=auto: the `queue_position` a waiting customer joining its session gets at once (the leader
        sends positions only when they change, which a page opened later would never hear)."""
        if not self.auto or session.agent_id is not None or session.user_id != user_id:
            return None
        try:
            position = self.store.queue_position(session.id)
        except StorageError:
            return None  # the leader's next change tells it
        if position is None:
            return None
        return {"type": "queue_position", "session_id": session.id, "position": position}

    def send_positions(self, queue: list[Waiting]) -> None:
        """queue_position to each waiting customer whose position changed (the leader is the only sender)."""
        if self.notifier is None:
            return
        positions = {}
        for position, waiting in enumerate(queue, 1):
            positions[waiting.session_id] = position
            if self._positions.get(waiting.session_id) != position:
                self.notifier.to_user(waiting.user_id, {"type": "queue_position", "session_id": waiting.session_id,
                                                        "position": position}, waiting.session_id)
        self._positions = positions

    def sweep_idle(self) -> None:
        """Warn, then close (reason idle) sessions with no message for SESSION_IDLE_CLOSE seconds; close queued
        sessions whose customer left (no connection for the grace period, no message)."""
        close_after = self.settings.session_idle_close
        warn_before = min(self.settings.session_idle_warning, close_after)
        now = self.storage.now()
        for idle in self.store.idle_sessions(now - timedelta(seconds=close_after - warn_before)):
            quiet = (now - idle.last_activity).total_seconds()
            if quiet >= close_after:
                self._close_idle(idle.session_id, idle.user_id, idle.agent_id)
            elif warn_before > 0 and (idle.warned_at is None or idle.warned_at < idle.last_activity):
                if self.store.mark_warned(idle.session_id, idle.last_activity):
                    self.counters["idle_warned"] += 1
                    frame = {"type": "session_idle_warning", "session_id": idle.session_id,
                             "closes_in": max(1, round(close_after - quiet))}
                    self._announce(idle.session_id, frame, [idle.user_id, idle.agent_id])
        self._close_abandoned(now)

    def _close_abandoned(self, now: datetime) -> None:
        old = [w for w in self.store.queue() if (now - w.created_at).total_seconds() >= self.grace]
        if not old:
            return
        live = self.leases.live(sorted({w.user_id for w in old}))
        if live is None:
            return
        for waiting in old:
            if not live.get(waiting.user_id) and self.storage.count_messages(waiting.session_id) == 0:
                if self._close_idle(waiting.session_id, waiting.user_id, None):
                    self.counters["abandoned_closed"] += 1

    def _close_idle(self, session_id: int, customer_id: int, agent_id: int | None) -> bool:
        _record, closed = self.storage.close_session(session_id, None, "idle")
        if closed:
            self.counters["idle_closed"] += 1
            self._positions.pop(session_id, None)
            log.info("session closed: idle", extra={"session_id": session_id})
            if self.notifier is not None:
                self.notifier.session_closed(session_id, "idle")
                frame = {"type": "session_closed", "session_id": session_id, "reason": "idle"}
                for user_id in dict.fromkeys(u for u in (customer_id, agent_id) if u is not None):
                    self.notifier.to_user(user_id, frame, session_id, room_copy=True)
            if self.auto:
                self._kicked.set()
        return closed
