"""The Redis backplane: carries every fan-out event to the other workers and hosts, and keeps presence.

Modelled on python-socketio's `pubsub_manager` / `redis_manager`: the registry stays the only owner of this
worker's connections; this class only publishes and listens. Three greenlets per worker, started after
the fork:

- the **publisher** drains one FIFO queue over one connection at a time, a pipeline per batch, so events
  leave in the order they were published (per-sender order) and a sender never waits on Redis;
- the **listener** holds the subscription, skips its own events (origin id), drops anything already
  seen (per-origin sequence numbers), and reconnects and resubscribes with capped exponential backoff;
- the **presence** greenlet mirrors this worker's rooms into Redis sorted sets whose scores are expiry
  times on Redis's clock, refreshed by heartbeat, so a crashed worker's entries vanish by themselves.

Wire format on `<prefix>:events`: `<origin> <seq> <event json>`; the header lets a process skip its own
events without parsing JSON. Redis pub/sub is at-most-once: nothing is ever replayed or retried, so a
reconnect cannot duplicate; what an outage drops is counted (`publish_failures`, `gaps`) and stays in
the message history. See the README, "Several workers and hosts".
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..config import Settings
from .fanout import Event

if TYPE_CHECKING:
    from .fanout import Fanout

log = logging.getLogger(__name__)

PUBLISH_QUEUE_LIMIT = 20_000  # events waiting for Redis; beyond this, publish() refuses (counted)
PUBLISH_BATCH = 500  # PUBLISH commands per pipeline round trip
RECONNECT_FIRST = 0.1  # seconds before the first reconnect attempt; doubles up to RECONNECT_MAX
RECONNECT_MAX = 5.0
LISTEN_POLL = 1.0  # seconds the listener waits for a message before checking liveness
LISTEN_PING_AFTER = 3.0  # idle seconds before the listener pings its subscription connection
LISTEN_DEAD_AFTER = 10.0  # idle seconds (no message, no pong) after which the subscription is presumed dead
YIELD_EVERY = 100  # messages the listener delivers before letting other greenlets run
PRESENCE_CHECK = 0.25  # seconds between checks for room changes to mirror
ORIGIN_FORGET_AFTER = 600.0  # seconds after which an origin's sequence number is forgotten
POOL_SIZE = 16

_EVENT_FIELDS = frozenset(Event.__dataclass_fields__)

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
    return f"{origin} {seq} {event.to_json()}".encode()


def decode_envelope(raw: bytes) -> tuple[str, int, bytes]:
    """(origin, seq, event json); ValueError on anything else."""
    origin, seq, body = raw.split(b" ", 2)
    return origin.decode("ascii"), int(seq), body


def event_from_json(body: bytes) -> Event:
    """An Event from the wire, ignoring fields a newer node may add."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("event is not an object")
    return Event(**{k: v for k, v in data.items() if k in _EVENT_FIELDS})


class RedisBackplane:
    """Fan-out between processes over one Redis channel per deployment, plus presence in Redis."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.redis_url
        self.prefix = settings.redis_channel_prefix
        self.channel = f"{self.prefix}:events"
        self.timeout = settings.redis_timeout
        self.presence_ttl = settings.presence_ttl
        # No library retries: a failed command is counted and reported at once, never repeated (a repeated
        # PUBLISH whose first reply was lost would deliver twice). Our greenlets reconnect themselves.
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
        }
        self._options = options
        pool = redis.BlockingConnectionPool.from_url(
            self.url, max_connections=POOL_SIZE, timeout=self.timeout, **options
        )
        self.redis = redis.Redis(connection_pool=pool)
        self._live_members = self.redis.register_script(_LIVE_MEMBERS)
        self.fanout: Fanout | None = None
        self.node_id = ""
        self._queue: deque[bytes] = deque()
        self._wake = gevent.event.Event()
        self._drained = gevent.event.Event()  # set while nothing is queued or in flight
        self._drained.set()
        self._seq = 0
        self._greenlets: list[gevent.Greenlet] = []
        self._stopping = False
        self._publisher_up = True  # optimistic until a command fails
        self._listening = False
        self._last_seq: dict[str, tuple[int, float]] = {}
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
        }

    # -- Backplane protocol -----------------------------------------------------------------------

    def start(self, fanout: Fanout) -> None:
        """Spawn the publisher, listener and presence greenlets (in the worker, after the fork)."""
        self.fanout = fanout
        self.node_id = fanout.node_id
        log.info("backplane: node %s on channel %s", self.node_id, self.channel)
        self._greenlets = [
            gevent.spawn(self._guard, self._publish_loop),
            gevent.spawn(self._guard, self._listen_loop),
            gevent.spawn(self._guard, self._presence_loop),
        ]

    def publish(self, event: Event) -> bool:
        """Queue the event for the other processes; never blocks, never raises.

        False (counted) when Redis is known to be down or too far behind: the event was already delivered
        locally and the message is stored, so other workers' clients find it in the history.
        """
        if self._stopping or not self._publisher_up or len(self._queue) >= PUBLISH_QUEUE_LIMIT:
            self._publish_failed()
            return False
        try:
            payload = encode_envelope(self.node_id, self._seq + 1, event)
        except Exception:  # an event that cannot be encoded must not break the sender's reply
            log.exception("backplane: could not encode event")
            self._publish_failed()
            return False
        self._seq += 1
        self._queue.append(payload)
        self._drained.clear()
        self._wake.set()
        return True

    def _publish_failed(self) -> None:
        self.counters["publish_failures"] += 1
        if self.metrics is not None:
            self.metrics.backplane_publish(False)

    def stop(self) -> None:
        """Publish what is queued (briefly), withdraw this worker's presence, close the connections."""
        if self._stopping:
            return
        if self._publisher_up:
            self._drained.wait(min(2.0, self.timeout * 2))
        self._stopping = True
        self._wake.set()
        gevent.killall(self._greenlets, timeout=1.0)
        self._withdraw_presence()
        self.redis.connection_pool.disconnect()

    def status(self) -> dict[str, Any]:
        """For /readyz and the ops `status`: connected means both publishing and subscribed work."""
        return {
            "connected": self._listening and self._publisher_up,
            "listening": self._listening,
            "publishing": self._publisher_up,
            "presence": "ok" if self._presence_ok else "degraded",
            "channel": self.channel,
            "node_id": self.node_id,
            "queued": len(self._queue),
            **self.counters,
        }

    # -- presence ---------------------------------------------------------------------------------

    def presence(self, session_id: int) -> list[tuple[str, int]] | None:
        """(connection id, user id) of every live member of the session on any worker; None if Redis fails."""
        if not self._listening:  # known down: answer at once rather than after REDIS_TIMEOUT
            return None
        try:
            members = self._live_members(keys=[self._presence_key(session_id)])
        except RedisError as exc:
            log.warning("backplane: presence read failed: %s", exc)
            return None
        out = []
        for member in members:
            connection_id, _, user = member.decode().rpartition(" ")
            if connection_id and user.isdigit():
                out.append((connection_id, int(user)))
        return out

    def _presence_key(self, session_id: int) -> str:
        return f"{self.prefix}:presence:{session_id}"

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

    def _sync_presence(self, full: bool) -> bool:
        """Write the difference (or, when `full`, every entry with a fresh expiry) in one pipeline."""
        current = self._local_presence()
        synced = self._presence_synced
        ttl_ms = int(self.presence_ttl * 1000)
        try:
            seconds, micros = self.redis.time()
            now_ms = seconds * 1000 + micros // 1000
            expiry = now_ms + ttl_ms
            pipe = self.redis.pipeline(transaction=False)
            for sid, members in synced.items():
                gone = members - current.get(sid, set())
                if gone:
                    pipe.zrem(self._presence_key(sid), *gone)
            for sid, members in current.items():
                fresh = members if full else members - synced.get(sid, set())
                if fresh:
                    key = self._presence_key(sid)
                    pipe.zadd(key, dict.fromkeys(fresh, expiry))
                    pipe.pexpire(key, ttl_ms * 2)
                    if full:
                        pipe.zremrangebyscore(key, "-inf", now_ms)
            pipe.execute()
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
            pipe = self.redis.pipeline(transaction=False)
            for sid, members in self._presence_synced.items():
                if members:
                    pipe.zrem(self._presence_key(sid), *members)
            pipe.execute()
            self._presence_synced = {}
        except RedisError as exc:
            log.warning("backplane: presence not withdrawn (it expires in %gs): %s", self.presence_ttl, exc)

    # -- publisher --------------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        """One queue, one pipeline at a time: events reach Redis in the order they were published."""
        backoff = Backoff()
        while not self._stopping:
            if not self._publisher_up:
                gevent.sleep(backoff.next())
                try:
                    self.redis.ping()
                except RedisError:
                    continue
                log.info("backplane: publishing to Redis again")
                self._publisher_up = True
                backoff.reset()
            if not self._queue:
                self._drained.set()
                self._wake.clear()
                self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), PUBLISH_BATCH))]
            try:
                pipe = self.redis.pipeline(transaction=False)
                for payload in batch:
                    pipe.publish(self.channel, payload)
                pipe.execute()
            except RedisError as exc:
                # Never retried: Redis may have published part of the batch, and a retry would repeat it.
                dropped = len(batch) + len(self._queue)
                self._queue.clear()
                self._drained.set()
                self._publisher_up = False
                self.counters["publish_failures"] += dropped
                if self.metrics is not None:
                    self.metrics.backplane_publish(False, dropped)
                log.warning("backplane: Redis unavailable for publishing (%s); %d events not sent to other "
                            "workers (they are stored and in the history)", exc, dropped)
                continue
            self.counters["published"] += len(batch)
            if self.metrics is not None:
                self.metrics.backplane_publish(True, len(batch))

    # -- listener ---------------------------------------------------------------------------------

    def _listen_loop(self) -> None:
        """Subscribe, deliver, and on any failure reconnect with backoff and subscribe again."""
        backoff = Backoff()
        first = True
        while not self._stopping:
            pubsub = None
            try:
                client = redis.Redis.from_url(self.url, **self._options)
                pubsub = client.pubsub()
                pubsub.subscribe(self.channel)
                self._consume(pubsub, backoff, first)
            except RedisError as exc:
                if self._listening or first:
                    log.warning("backplane: Redis subscription lost (%s); reconnecting", exc)
            finally:
                self._listening = False
                first = False
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # closing a broken connection must not stop the loop
                        pass
            if not self._stopping:
                gevent.sleep(backoff.next())

    def _consume(self, pubsub: Any, backoff: Backoff, first: bool) -> None:
        last_seen = time.monotonic()
        pinged = False
        delivered_since_yield = 0
        while not self._stopping:
            message = pubsub.get_message(timeout=LISTEN_POLL)
            now = time.monotonic()
            if message is None:
                idle = now - last_seen
                if idle > LISTEN_DEAD_AFTER:
                    raise redis.ConnectionError(f"no answer from Redis for {idle:.0f}s")
                if idle > LISTEN_PING_AFTER and not pinged:
                    pubsub.ping()
                    pinged = True
                self._forget_old_origins(now)
                continue
            last_seen, pinged = now, False
            kind = message.get("type")
            if kind == "subscribe":
                self._listening = True
                backoff.reset()
                if not first:
                    self.counters["reconnects"] += 1
                    if self.metrics is not None:
                        self.metrics.redis_reconnect()
                    self._presence_full = True  # Redis may have restarted empty
                    log.info("backplane: subscribed to %s again", self.channel)
                continue
            if kind != "message":
                continue
            self._receive(message["data"], now)
            delivered_since_yield += 1
            if delivered_since_yield >= YIELD_EVERY:
                delivered_since_yield = 0
                gevent.sleep(0)

    def _receive(self, raw: bytes, now: float) -> None:
        """One event from the channel: skip our own, drop repeats, count gaps, deliver locally."""
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
        last = self._last_seq.get(origin)
        if last is not None:
            if seq <= last[0]:
                self.counters["duplicates_dropped"] += 1
                return
            if seq > last[0] + 1:
                self.counters["gaps"] += seq - last[0] - 1
        self._last_seq[origin] = (seq, now)
        try:
            event = event_from_json(body)
        except (ValueError, TypeError):
            self.counters["malformed"] += 1
            return
        assert self.fanout is not None
        try:
            self.counters["delivered"] += self.fanout.receive(event)
        except Exception:
            log.exception("backplane: delivering an event failed", extra={"session_id": event.session_id})

    def _forget_old_origins(self, now: float) -> None:
        stale = [o for o, (_, seen) in self._last_seq.items() if now - seen > ORIGIN_FORGET_AFTER]
        for origin in stale:
            del self._last_seq[origin]

    # -- supervision ------------------------------------------------------------------------------

    def _guard(self, loop: Callable[[], None]) -> None:
        """Keep a loop alive through a bug: log it and start the loop again after a pause."""
        while not self._stopping:
            try:
                loop()
            except gevent.GreenletExit:
                raise
            except Exception:
                log.exception("backplane: %s failed; restarting it", loop.__name__)
                gevent.sleep(RECONNECT_MAX)
