"""The Redis backplane: carries fan-out events to the workers and hosts that need them, and keeps presence.

Modelled on python-socketio's `pubsub_manager` / `redis_manager`, with Centrifugo's per-channel routing: the
registry stays the only owner of this worker's connections; this class only publishes and listens.

Routing. Every event goes to the channel of its session, `<prefix>:s:{N}` (or of its user,
`<prefix>:u:{uN}`), with sharded pub/sub (SPUBLISH / SSUBSCRIBE, Redis 7): on a Redis Cluster a channel
lives on the shard of its hash slot, and the braces put a session's channel and presence key in one slot.
The registry tells this class (as its `RoomWatcher`) when a room here gains its first member and loses its
last, and when a user arrives or leaves: a worker subscribes to exactly the sessions and users it has
connections for, so it never receives, let alone decodes, traffic of sessions it has nobody in.

Greenlets, started after the fork:

- the **publisher** drains one FIFO queue, a pipeline per node per batch, so a session's events reach its
  shard in the order they were published (per-sender order) and a sender never waits on Redis;
- one **subscriber** per node holds that node's subscriptions on a connection of its own. A join returns
  only once its channel's subscription is confirmed (`room_joined`), so every message stored after the
  `joined_session` frame is heard. When a subscription is lost (connection, shard restart, slot moved) or a
  join could not wait for it, its confirmation starts a catch-up from the database (catchup.py);
- the **presence** greenlet mirrors this worker's rooms into Redis sorted sets whose scores are expiry
  times on Redis's clock, refreshed by heartbeat, so a crashed worker's entries vanish by themselves; it
  also drops subscriptions a while after their last member left (re-joins in between cost nothing).

Wire format: `<origin> <seq> <event json>`, `seq` counting the origin's events on that channel: the
header lets a process skip its own events and repeats without parsing JSON, and a jump in `seq` (events
an origin could not publish) starts a catch-up of that session. Nothing is ever retried on publish, so
Redis cannot deliver an event twice. See the README, "Several workers and hosts".
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.lock
import orjson
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from ..config import Settings
from .fanout import Event
from .redis_nodes import RedisNodes

if TYPE_CHECKING:
    from .fanout import Fanout

log = logging.getLogger(__name__)

PUBLISH_QUEUE_LIMIT = 20_000  # events waiting for Redis; beyond this, publish() refuses (counted)
PUBLISH_BATCH = 500  # SPUBLISH commands per pipeline round trip
SUBSCRIBE_CHUNK = 500  # channels per SSUBSCRIBE command when (re)subscribing many
RECONNECT_FIRST = 0.1  # seconds before the first reconnect attempt; doubles up to RECONNECT_MAX
RECONNECT_MAX = 5.0
LISTEN_POLL = 1.0  # seconds a subscriber waits for a message before checking liveness
LISTEN_PING_AFTER = 3.0  # idle seconds before a subscriber pings its connection
LISTEN_DEAD_AFTER = 10.0  # idle seconds (no message, no pong) after which the connection is presumed dead
YIELD_EVERY = 100  # messages a subscriber delivers before letting other greenlets run
PRESENCE_CHECK = 0.25  # seconds between checks for room changes to mirror
UNSUBSCRIBE_AFTER = 2.0  # seconds a channel nobody here needs stays subscribed (a quick re-join is free)
ORIGIN_FORGET_AFTER = 600.0  # seconds after which a receiver forgets an origin's sequence on a channel
SEQ_FORGET_AFTER = 1200.0  # seconds after which a publisher forgets a channel's sequence (after receivers)
POOL_SIZE = 16

IDLE, SUBSCRIBING, SUBSCRIBED, UNSUBSCRIBING = "idle", "subscribing", "subscribed", "unsubscribing"

_EVENT_FIELDS = frozenset(Event.__dataclass_fields__)
RESYNC = "resync"  # a marker event, never delivered: "some of my events on this channel were not published"


def session_of_channel(channel: str) -> int | None:
    """The session of a session channel (`<prefix>:s:{N}`), None for any other channel."""
    head, _, tail = channel.rpartition(":s:{")
    if not head or not tail.endswith("}") or not tail[:-1].isdigit():
        return None
    return int(tail[:-1])

# Members whose expiry (score, ms on Redis's clock) is still ahead; read-only, one clock for every host.
_LIVE_MEMBERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""


class Backoff:
    """Capped exponential backoff between reconnect attempts."""

    def __init__(self, first: float = RECONNECT_FIRST, cap: float = RECONNECT_MAX) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first


def encode_envelope(origin: str, seq: int, event: Event) -> bytes:
    return b"%s %d %s" % (origin.encode(), seq, event.to_json_bytes())


def decode_envelope(raw: bytes) -> tuple[str, int, bytes]:
    """(origin, seq, event json); ValueError on anything else."""
    origin, seq, body = raw.split(b" ", 2)
    return origin.decode("ascii"), int(seq), body


def event_from_json(body: bytes) -> Event:
    """An Event from the wire, ignoring fields a newer node may add."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError("event is not an object")
    return Event(**{k: v for k, v in data.items() if k in _EVENT_FIELDS})


class Channel:
    """One channel this worker wants (or is leaving): where it lives and how far its subscription got."""

    __slots__ = ("name", "session_id", "node", "wanted", "state", "ready", "catch_up", "since")

    def __init__(self, name: str, session_id: int | None, node: str) -> None:
        self.name = name
        self.session_id = session_id
        self.node = node
        self.wanted = True
        self.state = IDLE
        self.ready = gevent.event.Event()  # set while SUBSCRIBED
        self.catch_up = False  # on the next confirmation, catch the session up from the database
        self.since = time.time()  # when this worker started wanting it (the catch-up's lower bound)


class Subscriber:
    """The connection holding this worker's subscriptions on one Redis node, and the greenlet reading it."""

    def __init__(self, backplane: RedisBackplane, node: str) -> None:
        self.backplane = backplane
        self.node = node
        self.connection: Any = None
        self.up = False
        self._lock = gevent.lock.Semaphore()  # one writer at a time; the reader is this greenlet
        self.greenlet: gevent.Greenlet | None = None

    def send(self, *args: Any) -> bool:
        """Write one command (SSUBSCRIBE, SUNSUBSCRIBE, PING) from any greenlet; replies come to the reader."""
        connection = self.connection
        if connection is None or not self.up:
            return False
        with self._lock:
            try:
                connection.send_command(*args)
            except (RedisError, OSError) as exc:
                log.info("backplane: write to %s failed: %s", self.node, exc)
                return False
        return True

    def run(self) -> None:
        """Connect, (re)subscribe what is wanted here, read; on any failure reconnect with backoff."""
        bp = self.backplane
        backoff = Backoff()
        first = True
        while not bp._stopping:
            connection = None
            try:
                connection = bp.nodes.connection(self.node)
                connection.connect()
                self.connection, self.up = connection, True
                bp._connected(self, first)
                backoff.reset()
                self._read(connection)
            except (RedisError, OSError) as exc:
                if first or bp._listening_nodes.get(self.node, False):
                    log.warning("backplane: subscription connection to %s lost (%s); reconnecting", self.node, exc)
            finally:
                self.up, self.connection = False, None
                bp._lost(self)
                first = False
                if connection is not None:
                    try:
                        connection.disconnect()
                    except Exception:  # closing a broken connection must not stop the loop
                        pass
            if not bp._stopping:
                gevent.sleep(backoff.next())
                bp._reroute()

    def _read(self, connection: Any) -> None:
        bp = self.backplane
        last_seen = time.monotonic()
        pinged = False
        since_yield = 0
        while not bp._stopping:
            if not connection.can_read(timeout=LISTEN_POLL):
                now = time.monotonic()
                idle = now - last_seen
                if idle > LISTEN_DEAD_AFTER:
                    raise ConnectionError(f"no answer from Redis for {idle:.0f}s")
                if idle > LISTEN_PING_AFTER and not pinged:
                    self.send("PING")
                    pinged = True
                bp._forget_old_origins(now)
                continue
            try:
                reply = connection.read_response(disconnect_on_error=False, push_request=True)
            except ResponseError as exc:  # a refused SSUBSCRIBE: MOVED on a cluster whose map changed
                bp._refused(self, str(exc))
                continue
            last_seen, pinged = time.monotonic(), False
            if not isinstance(reply, list) or len(reply) < 3:
                continue  # PONG
            kind = reply[0]
            if kind == b"smessage":
                bp._receive(reply[2], last_seen, reply[1].decode())
                since_yield += 1
                if since_yield >= YIELD_EVERY:
                    since_yield = 0
                    gevent.sleep(0)
            elif kind == b"ssubscribe":
                bp._confirmed(reply[1].decode())
            elif kind == b"sunsubscribe":
                bp._unsubscribed(reply[1].decode())


class RedisBackplane:
    """Fan-out between processes over one sharded channel per session and per user, plus presence in Redis."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.redis_url
        self.prefix = settings.redis_channel_prefix
        self.cluster = settings.redis_cluster
        self.timeout = settings.redis_timeout
        self.presence_ttl = settings.presence_ttl
        # No library retries: a failed command is counted and reported at once, never repeated (a repeated
        # SPUBLISH whose first reply was lost would deliver twice). Our greenlets reconnect themselves.
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
        }
        self.nodes = RedisNodes(self.url, self.cluster, options, POOL_SIZE, self.timeout)
        self.fanout: Fanout | None = None
        self.node_id = ""
        self._queue: deque[tuple[str, str, bytes]] = deque()  # (node, channel, payload)
        self._wake = gevent.event.Event()
        self._drained = gevent.event.Event()  # set while nothing is queued or in flight
        self._drained.set()
        self._seqs: dict[str, list] = {}  # channel -> [last seq published, when]
        self._greenlets: list[gevent.Greenlet] = []
        self._stopping = False
        self._started = False
        self._publisher_up = True  # optimistic until a command fails
        self._down: set[str] = set()  # nodes the publisher cannot reach now
        self._retry_now = False
        self._publishers: dict[str, Any] = {}  # node -> the publisher's connection there
        self._behind: set[str] = set()  # channels with events not published: a marker follows on recovery
        self._channels: dict[str, Channel] = {}
        self._sessions: dict[int, Channel] = {}
        self._unwanted: dict[str, float] = {}  # channel -> when its last member left
        self._subscribers: dict[str, Subscriber] = {}
        self._listening_nodes: dict[str, bool] = {}
        self._last_seq: dict[str, dict[str, tuple[int, float]]] = {}  # channel -> origin -> (seq, seen)
        self._next_forget = 0.0
        self._own: tuple[str, bytes] = ("", b"")
        self._scripts: dict[str, Any] = {}
        self._presence_synced: dict[int, set[str]] = {}
        self._presence_full = True
        self._presence_ok = True
        self.metrics: Any = None  # optional: backplane_publish(ok, count), backplane_receive(), redis_reconnect()
        self.counters = {
            "published": 0,
            "publish_failures": 0,
            "received": 0,
            "delivered": 0,
            "duplicates_dropped": 0,
            "gaps": 0,
            "malformed": 0,
            "reconnects": 0,
            "subscribes": 0,
            "unsubscribes": 0,
            "join_waits_timed_out": 0,
        }

    # -- names --------------------------------------------------------------------------------------

    def session_channel(self, session_id: int) -> str:
        return f"{self.prefix}:s:{{{session_id}}}"

    def user_channel(self, user_id: int) -> str:
        return f"{self.prefix}:u:{{u{user_id}}}"

    def _presence_key(self, session_id: int) -> str:
        return f"{self.prefix}:presence:{{{session_id}}}"

    # -- Backplane protocol -----------------------------------------------------------------------

    def start(self, fanout: Fanout) -> None:
        """Spawn the publisher, presence and one subscriber per node (in the worker, after the fork)."""
        self.fanout = fanout
        self.node_id = fanout.node_id
        self._started = True
        mode = "Redis Cluster" if self.cluster else "Redis"
        log.info("backplane: node %s, %s, channels %s", self.node_id, mode, self.session_channel(0).replace("0", "N"))
        self._greenlets = [
            gevent.spawn(self._guard, self._publish_loop),
            gevent.spawn(self._guard, self._presence_loop),
        ]
        for node in self.nodes.nodes():
            self._subscriber(node)

    def publish(self, event: Event) -> bool:
        """Queue the event for the other processes; never blocks, never raises.

        False (counted) when its node is known down or Redis is too far behind: the event was already
        delivered locally and the message is stored, so other workers catch it up when they hear the
        session again (their subscription on that node is down too).
        """
        if self._stopping or len(self._queue) >= PUBLISH_QUEUE_LIMIT:
            self._publish_failed()
            return False
        try:
            channel = self.user_channel(event.user_id) if event.user_id is not None else \
                self.session_channel(event.session_id)
            node = self.nodes.node_of(channel)
            entry = self._seqs.get(channel)
            if entry is None:
                entry = self._seqs[channel] = [0, 0.0]
            entry[0] += 1  # a refused event still takes its number: receivers see the jump and catch up
            entry[1] = time.monotonic()
            if not self._publisher_up and (node in self._down or not self._down):
                self._behind.add(channel)
                self._publish_failed()
                return False
            if channel in self._behind and event.kind != RESYNC and event.user_id is None:
                # Events of this channel were refused: the marker goes first, so that receivers catch the
                # session up (in order) before this event reaches them, not after.
                self._behind.discard(channel)
                marker = Event(session_id=event.session_id, text="", kind=RESYNC)
                self._queue.append((node, channel, encode_envelope(self.node_id, entry[0], marker)))
                entry[0] += 1
            payload = encode_envelope(self.node_id, entry[0], event)
        except Exception:  # an event that cannot be encoded must not break the sender's reply
            log.exception("backplane: could not encode event")
            self._publish_failed()
            return False
        self._queue.append((node, channel, payload))
        self._drained.clear()
        self._wake.set()
        return True

    def _publish_failed(self, count: int = 1) -> None:
        self.counters["publish_failures"] += count
        if self.metrics is not None:
            self.metrics.backplane_publish(False, count)

    def stop(self) -> None:
        """Publish what is queued (briefly), withdraw this worker's presence, close the connections."""
        if self._stopping:
            return
        if self._publisher_up:
            self._drained.wait(min(2.0, self.timeout * 2))
        self._stopping = True
        self._wake.set()
        gevent.killall([*self._greenlets, *(s.greenlet for s in self._subscribers.values() if s.greenlet)],
                       timeout=1.0)
        self._withdraw_presence()
        for connection in self._publishers.values():
            connection.disconnect()
        self.nodes.disconnect()

    @property
    def _own_prefix(self) -> bytes:
        prefix = self._own
        if prefix[0] != self.node_id:
            prefix = self._own = (self.node_id, f"{self.node_id} ".encode())
        return prefix[1]

    @property
    def _listening(self) -> bool:
        return bool(self._subscribers) and all(s.up for s in self._subscribers.values())

    def hears(self, session_id: int) -> bool:
        channel = self._sessions.get(session_id)
        return channel is not None and channel.state == SUBSCRIBED

    def status(self) -> dict[str, Any]:
        """For /readyz and the ops `status`: connected means both publishing and subscribed work."""
        catch_up = self.fanout.catch_up.status() if self.fanout is not None and self.fanout.catch_up else {}
        return {
            "connected": self._listening and self._publisher_up,
            "listening": self._listening,
            "publishing": self._publisher_up,
            "presence": "ok" if self._presence_ok else "degraded",
            "mode": "cluster" if self.cluster else "redis",
            "nodes": len(self._subscribers),
            "channels": sum(1 for c in self._channels.values() if c.state == SUBSCRIBED),
            "node_id": self.node_id,
            "queued": len(self._queue),
            **self.counters,
            **catch_up,
        }

    # -- RoomWatcher: what this worker needs to hear ------------------------------------------------

    def room_joined(self, session_id: int) -> None:
        """Subscribe to the session if needed; return once the subscription is confirmed.

        When Redis is known down, or the confirmation takes longer than REDIS_TIMEOUT, return anyway: the
        session is caught up from the database when its subscription is confirmed, so the join loses nothing.
        """
        channel = self._want(self.session_channel(session_id), session_id)
        if channel.state == SUBSCRIBED:
            return
        subscriber = self._subscribers.get(channel.node)
        if subscriber is None or not subscriber.up or not channel.ready.wait(self.timeout):
            if self._started:
                channel.catch_up = True
                self.counters["join_waits_timed_out"] += 1

    def room_emptied(self, session_id: int) -> None:
        self._unwant(self.session_channel(session_id))

    def user_arrived(self, user_id: int) -> None:
        self._want(self.user_channel(user_id), None)

    def user_gone(self, user_id: int) -> None:
        self._unwant(self.user_channel(user_id))

    def _want(self, name: str, session_id: int | None) -> Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = Channel(name, session_id, self.nodes.node_of(name))
            if session_id is not None:
                self._sessions[session_id] = channel
        elif not channel.wanted:
            channel.wanted = True
            self._unwanted.pop(name, None)
        if channel.state == IDLE:
            self._subscribe(channel)
        return channel

    def _unwant(self, name: str) -> None:
        channel = self._channels.get(name)
        if channel is not None and channel.wanted:
            channel.wanted = False
            self._unwanted[name] = time.monotonic()

    def _subscribe(self, channel: Channel) -> None:
        subscriber = self._subscriber(channel.node) if self._started else None
        if subscriber is not None and subscriber.up:
            self._last_seq.pop(channel.name, None)  # a new subscription: sequences start over
            if subscriber.send("SSUBSCRIBE", channel.name):
                channel.state = SUBSCRIBING
                self.counters["subscribes"] += 1
        # otherwise the subscriber subscribes it when it (re)connects

    def _drop(self, channel: Channel) -> None:
        del self._channels[channel.name]
        self._unwanted.pop(channel.name, None)
        self._last_seq.pop(channel.name, None)
        if channel.session_id is not None and self._sessions.get(channel.session_id) is channel:
            del self._sessions[channel.session_id]

    def _unsubscribe_unwanted(self) -> None:
        """Leave the channels whose last member left UNSUBSCRIBE_AFTER ago (and not come back)."""
        if not self._unwanted:
            return
        cutoff = time.monotonic() - UNSUBSCRIBE_AFTER
        for name, since in list(self._unwanted.items()):
            if since > cutoff:
                continue
            channel = self._channels.get(name)
            if channel is None or channel.wanted:
                self._unwanted.pop(name, None)
                continue
            if channel.state == IDLE:
                self._drop(channel)
            elif channel.state == SUBSCRIBED:
                subscriber = self._subscribers.get(channel.node)
                if subscriber is not None and subscriber.send("SUNSUBSCRIBE", name):
                    channel.state = UNSUBSCRIBING
                    channel.ready.clear()
                    self._unwanted.pop(name, None)
                    self.counters["unsubscribes"] += 1

    # -- subscribers' events (each in its subscriber's greenlet) ------------------------------------

    def _subscriber(self, node: str) -> Subscriber:
        subscriber = self._subscribers.get(node)
        if subscriber is None:
            subscriber = self._subscribers[node] = Subscriber(self, node)
            subscriber.greenlet = gevent.spawn(self._guard, subscriber.run)
        return subscriber

    def _connected(self, subscriber: Subscriber, first: bool) -> None:
        """A subscriber (re)connected: subscribe everything wanted on its node."""
        names = []
        for channel in self._channels.values():
            if channel.node == subscriber.node and channel.wanted and channel.state == IDLE:
                channel.state = SUBSCRIBING
                self._last_seq.pop(channel.name, None)
                names.append(channel.name)
        for group in self.nodes.same_slot_groups(names, SUBSCRIBE_CHUNK):
            subscriber.send("SSUBSCRIBE", *group)
        self.counters["subscribes"] += len(names)
        self._listening_nodes[subscriber.node] = True
        if subscriber.node in self._down:
            self._retry_now = True  # the publisher retries it now rather than after its backoff
            self._wake.set()
        if not first:
            self.counters["reconnects"] += 1
            if self.metrics is not None:
                self.metrics.redis_reconnect()
            self._presence_full = True  # Redis may have restarted empty
            log.info("backplane: connected to %s again; subscribing %d channels", subscriber.node, len(names))

    def _lost(self, subscriber: Subscriber) -> None:
        """Every subscription on the node is gone: what was heard must be caught up when it comes back."""
        self._listening_nodes[subscriber.node] = False
        for channel in list(self._channels.values()):
            if channel.node != subscriber.node:
                continue
            if channel.state == SUBSCRIBED and channel.wanted:
                channel.catch_up = True
            channel.state = IDLE
            channel.ready.clear()
            if not channel.wanted:
                self._drop(channel)

    def _confirmed(self, name: str) -> None:
        channel = self._channels.get(name)
        if channel is None or channel.state != SUBSCRIBING:
            return  # an earlier request whose SUNSUBSCRIBE follows
        channel.state = SUBSCRIBED
        channel.ready.set()
        if channel.catch_up:
            channel.catch_up = False
            if channel.session_id is not None and self.fanout is not None:
                self.fanout.resync(channel.session_id, channel.since)

    def _unsubscribed(self, name: str) -> None:
        channel = self._channels.get(name)
        if channel is None:
            return
        if channel.state == UNSUBSCRIBING:
            channel.state = IDLE
            if channel.wanted:
                self._subscribe(channel)  # wanted again meanwhile
            else:
                self._drop(channel)
            return
        # Not asked for: the server dropped it (its slot moved to another shard). Subscribe where it is now.
        if channel.state == SUBSCRIBED and channel.wanted:
            channel.catch_up = True
        channel.state = IDLE
        channel.ready.clear()
        if not channel.wanted:
            self._drop(channel)
            return
        self.nodes.refresh()
        channel.node = self.nodes.node_of(name)
        self._subscribe(channel)

    def _refused(self, subscriber: Subscriber, error: str) -> None:
        """An SSUBSCRIBE the node refused (MOVED: the slot is elsewhere): route its slot's channels again."""
        log.info("backplane: %s refused a subscription: %s", subscriber.node, error)
        if self.cluster and error.startswith("MOVED"):
            self.nodes.refresh()
        for channel in list(self._channels.values()):
            if channel.node == subscriber.node and channel.state == SUBSCRIBING:
                node = self.nodes.node_of(channel.name)
                if node != channel.node:
                    channel.state, channel.node = IDLE, node
                    self._subscribe(channel)

    def _reroute(self) -> None:
        """After a failed connection on a cluster: read the slot map, move idle channels to their new masters."""
        if not self.cluster or self._stopping:
            return
        self.nodes.refresh()
        for node in self.nodes.nodes():
            self._subscriber(node)
        for channel in list(self._channels.values()):
            if channel.state == IDLE and channel.wanted:
                node = self.nodes.node_of(channel.name)
                if node != channel.node:
                    channel.node = node
                    self._subscribe(channel)

    def _receive(self, raw: bytes, now: float, channel: str = "") -> None:
        """One event from a channel: skip our own, drop repeats, catch up after a gap, deliver locally."""
        if raw.startswith(self._own_prefix):
            return  # our own event, delivered here when it was published (every member's worker hears it)
        try:
            origin, seq, body = decode_envelope(raw)
        except (ValueError, UnicodeDecodeError):
            self.counters["malformed"] += 1
            return
        if origin == self.node_id:
            return
        self.counters["received"] += 1
        if self.metrics is not None:
            self.metrics.backplane_receive()
        seqs = self._last_seq.get(channel)
        if seqs is None:
            seqs = self._last_seq[channel] = {}
        last = seqs.get(origin)
        gap = False
        if last is not None:
            if seq <= last[0]:
                self.counters["duplicates_dropped"] += 1
                return
            if seq > last[0] + 1:
                self.counters["gaps"] += seq - last[0] - 1
                gap = True
        seqs[origin] = (seq, now)
        try:
            event = event_from_json(body)
        except (ValueError, TypeError):
            self.counters["malformed"] += 1
            return
        assert self.fanout is not None
        if (gap or event.kind == RESYNC) and event.user_id is None and event.session_id:
            # The origin could not publish some events here (its Redis connection failed): read them back. A
            # marker says so by itself: it may be the first event heard on a fresh subscription, with no
            # sequence number before it to show the jump (the refused events fell between this worker's
            # catch-up read and the origin's publisher coming back).
            known = self._sessions.get(event.session_id)
            self.fanout.resync(event.session_id, known.since if known is not None else time.time())
        if event.kind == RESYNC:
            return
        try:
            self.counters["delivered"] += self.fanout.receive(event)
        except Exception:
            log.exception("backplane: delivering an event failed", extra={"session_id": event.session_id})

    def _forget_old_origins(self, now: float) -> None:
        if now < self._next_forget:
            return
        self._next_forget = now + 60.0
        for seqs in self._last_seq.values():
            for origin in [o for o, (_, seen) in seqs.items() if now - seen > ORIGIN_FORGET_AFTER]:
                del seqs[origin]

    # -- presence ---------------------------------------------------------------------------------

    def presence(self, session_id: int) -> list[tuple[str, int]] | None:
        """(connection id, user id) of every live member of the session on any worker; None if Redis fails."""
        key = self._presence_key(session_id)
        node = self.nodes.node_of(key)
        if not self._listening_nodes.get(node, False):  # known down: answer at once rather than after REDIS_TIMEOUT
            return None
        try:
            script = self._scripts.get(node)
            if script is None:
                script = self._scripts[node] = self.nodes.client(node).register_script(_LIVE_MEMBERS)
            members = script(keys=[key])
        except RedisError as exc:
            log.warning("backplane: presence read failed: %s", exc)
            return None
        out = []
        for member in members:
            connection_id, _, user = member.decode().rpartition(" ")
            if connection_id and user.isdigit():
                out.append((connection_id, int(user)))
        return out

    def _local_presence(self) -> dict[int, set[str]]:
        assert self.fanout is not None
        return {
            sid: {f"{conn_id} {user_id}" for conn_id, user_id in members if user_id is not None}
            for sid, members in self.fanout.registry.presence().items()
        }

    def _presence_loop(self) -> None:
        """Mirror this worker's rooms into Redis: changes within PRESENCE_CHECK, everything every TTL/3."""
        registry = self.fanout.registry if self.fanout is not None else None
        assert registry is not None
        refresh_every = self.presence_ttl / 3
        seen_revision = -1
        next_full = 0.0
        while not self._stopping:
            self._unsubscribe_unwanted()
            now = time.monotonic()
            full = self._presence_full or now >= next_full
            if full or registry.revision != seen_revision:
                revision = registry.revision
                self._presence_full = False  # a request made during the sync below is kept for the next turn
                if self._sync_presence(full):
                    seen_revision = revision
                    if full:
                        next_full = now + refresh_every
                else:
                    self._presence_full = True
            gevent.sleep(PRESENCE_CHECK)

    def _pipelines(self) -> Callable[[str], Any]:
        """A pipeline per node, made on first use: `pipe(key)` is the pipeline of the key's node."""
        pipes: dict[str, Any] = {}

        def pipe(key: str) -> Any:
            node = self.nodes.node_of(key)
            found = pipes.get(node)
            if found is None:
                found = pipes[node] = self.nodes.client(node).pipeline(transaction=False)
            return found

        pipe.all = pipes  # type: ignore[attr-defined]
        return pipe

    def _sync_presence(self, full: bool) -> bool:
        """Write the difference (or, when `full`, every entry with a fresh expiry), one pipeline per node."""
        current = self._local_presence()
        synced = self._presence_synced
        ttl_ms = int(self.presence_ttl * 1000)
        try:
            pipe = self._pipelines()
            gone_any = False
            for sid, members in synced.items():
                gone = members - current.get(sid, set())
                if gone:
                    pipe(self._presence_key(sid)).zrem(self._presence_key(sid), *gone)
                    gone_any = True
            fresh_any = {sid: (members if full else members - synced.get(sid, set()))
                         for sid, members in current.items()}
            if any(fresh_any.values()):
                # Expiry on Redis's clock: every node of a cluster keeps time alike enough for a TTL.
                seconds, micros = self.nodes.client(self.nodes.nodes()[0]).time()
                now_ms = seconds * 1000 + micros // 1000
                expiry = now_ms + ttl_ms
                for sid, fresh in fresh_any.items():
                    if fresh:
                        key = self._presence_key(sid)
                        p = pipe(key)
                        p.zadd(key, dict.fromkeys(fresh, expiry))
                        p.pexpire(key, ttl_ms * 2)
                        if full:
                            p.zremrangebyscore(key, "-inf", now_ms)
            if gone_any or any(fresh_any.values()):
                for p in pipe.all.values():  # type: ignore[attr-defined]
                    p.execute()
        except RedisError as exc:
            if self._presence_ok:
                log.warning("backplane: presence not written: %s", exc)
            self._presence_ok = False
            return False
        self._presence_synced = current
        self._presence_ok = True
        return True

    def _withdraw_presence(self) -> None:
        """On a graceful stop, remove this worker's entries now rather than at expiry."""
        if not self._presence_synced:
            return
        try:
            pipe = self._pipelines()
            for sid, members in self._presence_synced.items():
                if members:
                    pipe(self._presence_key(sid)).zrem(self._presence_key(sid), *members)
            for p in pipe.all.values():  # type: ignore[attr-defined]
                p.execute()
            self._presence_synced = {}
        except RedisError as exc:
            log.warning("backplane: presence not withdrawn (it expires in %gs): %s", self.presence_ttl, exc)

    # -- publisher --------------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        """One queue, one pipeline per node at a time: a channel's events reach Redis in publication order."""
        backoff = Backoff()
        next_forget = time.monotonic() + 60.0
        next_retry = 0.0
        self._connect_publishers()
        while not self._stopping:
            now = time.monotonic()
            if self._down and (now >= next_retry or self._retry_now):
                self._retry_now = False
                self._retry_down_nodes()
                if self._down:
                    next_retry = now + backoff.next()
                else:
                    backoff.reset()
            if not self._queue:
                self._drained.set()
                self._wake.clear()
                self._wake.wait(max(0.01, next_retry - now) if self._down else 60.0)
                if time.monotonic() > next_forget:
                    next_forget = time.monotonic() + 60.0
                    self._forget_old_seqs()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), PUBLISH_BATCH))]
            by_node: dict[str, list[tuple[str, bytes]]] = {}
            for node, channel, payload in batch:
                by_node.setdefault(node, []).append((channel, payload))
            for node, items in by_node.items():
                self._publish_to(node, items)

    def _connect_publishers(self) -> None:
        """Open the publisher's connections before the first event: a first publish that had to connect
        (several round trips) could be overtaken by the next message of an HTTP client posting elsewhere."""
        for node in self.nodes.nodes():
            if node in self._publishers:
                continue
            connection = self.nodes.connection(node)
            try:
                connection.connect()
            except (RedisError, OSError):
                continue  # connected on first use instead
            self._publishers[node] = connection

    def _publish_to(self, node: str, items: list[tuple[str, bytes]]) -> None:
        if node in self._down:
            self._publish_failed(len(items))
            return
        try:
            # One connection per node of the publisher's own (no pool, no pipeline object): one write and
            # the replies read back, per node per batch.
            connection = self._publishers.get(node)
            if connection is None:
                connection = self._publishers[node] = self.nodes.connection(node)
            connection.send_packed_command(
                connection.pack_commands([("SPUBLISH", channel, payload) for channel, payload in items]),
                check_health=False,
            )
            for _ in items:
                connection.read_response()  # an error reply (MOVED, CLUSTERDOWN) raises ResponseError
        except (RedisError, OSError) as exc:
            broken = self._publishers.pop(node, None)
            if broken is not None:
                broken.disconnect()
            # Never retried: Redis may have published part of the batch, and a retry would repeat it.
            # Receivers on this node lost their subscriptions too, or see the sequence jump: they catch up.
            lost = [*(channel for channel, _ in items), *(c for n, c, _ in self._queue if n == node)]
            dropped = len(lost)
            self._behind.update(lost)
            self._queue = deque(item for item in self._queue if item[0] != node)
            self._down.add(node)
            self._publisher_up = False
            self._publish_failed(dropped)
            log.warning("backplane: Redis %s unavailable for publishing (%s); %d events not sent to other "
                        "workers (they are stored, and caught up from the database)", node, exc, dropped)
            return
        self.counters["published"] += len(items)
        if self.metrics is not None:
            self.metrics.backplane_publish(True, len(items))

    def _retry_down_nodes(self) -> None:
        if self.cluster:
            self.nodes.refresh()
        known = set(self.nodes.nodes())
        for node in list(self._down):
            if node not in known:
                self._down.discard(node)  # no longer a master: its slots are routed elsewhere now
                continue
            try:
                self.nodes.client(node).ping()
            except RedisError:
                continue
            log.info("backplane: publishing to Redis %s again", node)
            self._down.discard(node)
        self._publisher_up = not self._down
        self._connect_publishers()
        self._mark_gaps()

    def _mark_gaps(self) -> None:
        """After an outage, one marker per channel whose events were not published, on the nodes that are
        back: its sequence number shows receivers the jump at once (they catch up), even if the session
        stays quiet from now on."""
        for channel in [c for c in self._behind if self.nodes.node_of(c) not in self._down]:
            self._behind.discard(channel)
            session_id = session_of_channel(channel)
            if session_id is not None:
                self.publish(Event(session_id=session_id, text="", kind=RESYNC))

    def _forget_old_seqs(self) -> None:
        cutoff = time.monotonic() - SEQ_FORGET_AFTER
        for channel in [c for c, (_, used) in self._seqs.items() if used < cutoff]:
            del self._seqs[channel]

    # -- supervision ------------------------------------------------------------------------------

    def _guard(self, loop: Callable[[], None]) -> None:
        """Keep a loop alive through a bug: log it and start the loop again after a pause."""
        while not self._stopping:
            try:
                loop()
            except gevent.GreenletExit:
                raise
            except Exception:
                log.exception("backplane: %s failed; restarting it", getattr(loop, "__name__", loop))
                gevent.sleep(RECONNECT_MAX)
