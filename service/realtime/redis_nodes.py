"""Which Redis server holds a channel or key: the one server of plain Redis, or a master of a Redis Cluster.

The backplane routes every channel and key itself (SPUBLISH, SSUBSCRIBE, presence keys) instead of through
redis-py's cluster client, so that one object decides where a session's traffic lives and the backplane
keeps full control of its subscriber connections (what was confirmed, what was lost, what to catch up).
Keys and channels are hash-tagged by session (`chat:s:{42}`, `chat:presence:{42}`): one session, one slot.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.connection import parse_url
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

STANDALONE = "redis"  # the name of the one node of plain Redis


class RedisNodes:
    """The node of every channel and key, and one connection pool per node (created on first use)."""

    def __init__(self, url: str, cluster: bool, options: dict[str, Any], pool_size: int, timeout: float) -> None:
        self.url = url
        self.cluster = cluster
        base = parse_url(url)
        if cluster:
            base.pop("db", None)  # a cluster has database 0 only
        self._base = {**base, **options}
        self._pool_size = pool_size
        self._timeout = timeout
        self._clients: dict[str, redis.Redis] = {}
        self._slots: list[str] = []  # slot -> node name (cluster), filled by refresh()
        self._known: list[str] = [self._name(base.get("host", "localhost"), base.get("port", 6379))] if cluster else []

    @staticmethod
    def _name(host: Any, port: Any) -> str:
        host = host.decode() if isinstance(host, bytes) else str(host)
        return f"{host}:{int(port)}"

    # -- routing ----------------------------------------------------------------------------------

    def node_of(self, key: str) -> str:
        """The node that holds `key` (a channel or a key): by hash slot on a cluster."""
        if not self.cluster:
            return STANDALONE
        if not self._slots:
            self.refresh()
        return self._slots[key_slot(key.encode())]

    def same_slot_groups(self, names: list[str], size: int) -> list[list[str]]:
        """`names` in groups of at most `size` that one SSUBSCRIBE may carry (a cluster wants one slot each)."""
        if not self.cluster:
            return [names[i:i + size] for i in range(0, len(names), size)]
        by_slot: dict[int, list[str]] = {}
        for name in names:
            by_slot.setdefault(key_slot(name.encode()), []).append(name)
        return [group[i:i + size] for group in by_slot.values() for i in range(0, len(group), size)]

    def nodes(self) -> list[str]:
        """Every node this backplane talks to (the masters of a cluster)."""
        if not self.cluster:
            return [STANDALONE]
        if not self._slots:
            self.refresh()
        return sorted(set(self._slots))

    def refresh(self) -> bool:
        """Read the slot map from any node that answers (CLUSTER SLOTS); False when none does.

        Until a first map is read, every slot is routed to the node REDIS_URL names (a cluster node answers
        MOVED for slots it does not hold, and the subscriber refreshes the map then).
        """
        if not self.cluster:
            return True
        for name in [*self._known, *sorted(set(self._slots))]:
            try:
                answer = self.client(name).execute_command("CLUSTER", "SLOTS")
            except RedisError as exc:
                log.info("backplane: cluster node %s did not give the slot map: %s", name, exc)
                continue
            slots = [""] * REDIS_CLUSTER_HASH_SLOTS
            seed_host = name.rsplit(":", 1)[0]
            for start, end, master, *_replicas in answer:
                host = master[0].decode() if isinstance(master[0], bytes) else master[0]
                node = self._name(host or seed_host, master[1])
                for slot in range(int(start), int(end) + 1):
                    slots[slot] = node
            missing = slots.count("")
            if missing:
                log.warning("backplane: %d hash slots have no master; their sessions wait for one", missing)
                fallback = next((s for s in slots if s), name)
                slots = [s or fallback for s in slots]
            self._slots = slots
            self._known = sorted(set(slots) | set(self._known))
            return True
        if not self._slots:
            self._slots = [self._known[0]] * REDIS_CLUSTER_HASH_SLOTS
        return False

    # -- connections ------------------------------------------------------------------------------

    def _node_options(self, name: str) -> dict[str, Any]:
        options = dict(self._base)
        if name != STANDALONE:
            host, port = name.rsplit(":", 1)
            options.update(host=host, port=int(port))
        return options

    def client(self, name: str) -> redis.Redis:
        """A pooled client of one node (publishing, presence)."""
        client = self._clients.get(name)
        if client is None:
            pool = redis.BlockingConnectionPool(max_connections=self._pool_size, timeout=self._timeout,
                                                **self._node_options(name))
            client = self._clients[name] = redis.Redis(connection_pool=pool)
        return client

    def connection(self, name: str) -> redis.connection.AbstractConnection:
        """A connection of its own (not pooled) to one node, for a subscriber that holds it for long."""
        options = self._node_options(name)
        connection_class = options.pop("connection_class", redis.Connection)
        return connection_class(**options)

    def disconnect(self) -> None:
        for client in self._clients.values():
            client.connection_pool.disconnect()
