"""Who is connected anywhere: connection leases that expire by themselves, and the desk's one leader.

Each worker holds a lease for every user with an open connection on it, renewed a few times per grace
period; when the user's last connection there closes, the lease is left to run out. A user is connected
while any worker's lease is live, so a dead worker (or host) stops counting after the grace period with
nobody having to clean up. With Redis, one sorted set per user (worker -> expiry on Redis's clock, so
hosts' clocks never matter); every command names one key, so it works on Redis Cluster too. Without
Redis (one worker), the same in memory.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)

# KEYS[1] = the user's lease set; ARGV = node id, lease in ms. Expiry on Redis's clock.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""
# KEYS[1] = the user's lease set: how many leases are live (expired ones are dropped).
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


class Leases(Protocol):
    def hold(self, user_ids: list[int], node_id: str, seconds: float) -> bool: ...

    def live(self, user_ids: list[int]) -> dict[int, bool] | None:
        """Per user, whether any lease is live; None when that cannot be known now (Redis down)."""
        ...


class LocalLeases:
    """One worker, no Redis: the leases in memory."""

    def __init__(self) -> None:
        self._expiry: dict[int, dict[str, float]] = {}

    def hold(self, user_ids: list[int], node_id: str, seconds: float) -> bool:
        until = time.monotonic() + seconds
        for user_id in user_ids:
            self._expiry.setdefault(user_id, {})[node_id] = until
        return True

    def live(self, user_ids: list[int]) -> dict[int, bool]:
        now = time.monotonic()
        out = {}
        for user_id in user_ids:
            nodes = self._expiry.get(user_id, {})
            for node in [n for n, until in nodes.items() if until <= now]:
                del nodes[node]
            if not nodes:
                self._expiry.pop(user_id, None)
            out[user_id] = bool(nodes)
        return out


class RedisLeases:
    """The leases in Redis: `<prefix>:desk:lease:<user id>`, a sorted set of node id -> expiry (ms)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self._hold = client.register_script(_HOLD)
        self._live = client.register_script(_LIVE)

    @classmethod
    def from_settings(cls, settings: Any) -> RedisLeases:
        """A client for REDIS_URL: on a Redis Cluster (REDIS_CLUSTER) one that routes each key to its node."""
        import redis
        from redis.cluster import RedisCluster

        options = {"socket_timeout": settings.redis_timeout, "socket_connect_timeout": settings.redis_timeout}
        if settings.redis_cluster:
            return cls(RedisCluster.from_url(settings.redis_url, **options), settings.redis_channel_prefix)
        return cls(redis.Redis.from_url(settings.redis_url, **options), settings.redis_channel_prefix)

    def _each(self, user_ids: list[int], call: Any) -> list[Any]:
        """`call(user_id, client)` for every id: in one pipeline on a single Redis; one by one on a cluster,
        whose pipelines refuse scripts (each call then goes straight to the node of its key)."""
        from redis.cluster import RedisCluster

        if isinstance(self.redis, RedisCluster):
            return [call(user_id, self.redis) for user_id in user_ids]
        pipe = self.redis.pipeline(transaction=False)
        for user_id in user_ids:
            call(user_id, pipe)
        return pipe.execute()

    def key(self, user_id: int) -> str:
        """One key per agent, hash-tagged by agent (`{a42}`), so each script touches one slot of a cluster."""
        return f"{self.prefix}:desk:lease:{{a{user_id}}}"

    def hold(self, user_ids: list[int], node_id: str, seconds: float) -> bool:
        from redis.exceptions import RedisError

        if not user_ids:
            return True
        try:
            self._each(user_ids, lambda user_id, client: self._hold(
                keys=[self.key(user_id)], args=[node_id, int(seconds * 1000)], client=client))
        except RedisError as exc:
            log.warning("desk: leases not renewed: %s", exc)
            return False
        return True

    def live(self, user_ids: list[int]) -> dict[int, bool] | None:
        from redis.exceptions import RedisError

        if not user_ids:
            return {}
        try:
            counts = self._each(user_ids, lambda user_id, client: self._live(keys=[self.key(user_id)], client=client))
        except RedisError as exc:
            log.warning("desk: leases not readable: %s", exc)
            return None
        return {user_id: int(n) > 0 for user_id, n in zip(user_ids, counts, strict=True)}
