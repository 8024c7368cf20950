"""Prometheus metrics for `/metrics`, correct with any number of gunicorn workers.

Under gunicorn the master sets PROMETHEUS_MULTIPROC_DIR (STATE_DIR/metrics) before forking, so every
worker writes its values to files there and `/metrics`, whichever worker answers, adds them up. Without it
(a test app, a single process) the values live in this object's own registry.

The rest of the service reports through one `Metrics` object (`hub.metrics`): plain methods, so the hub,
the writer, fan-out and the Redis backplane never import prometheus-client themselves.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from ..config import service_version

if TYPE_CHECKING:
    from ..realtime.fanout import Event

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Refusals that mean "this client could not prove who it is".
AUTH_FAILURE_CODES = frozenset({"auth_failed", "missing_user_id", "invalid_user_id"})

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BuildInfo:
    """`chat_build_info{version,python} 1`: which release answers (the usual *_build_info convention)."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("chat_build_info", "The running release of the chat service.",
                                   labels=["version", "python"])
        family.add_metric([service_version(), platform.python_version()], 1)
        yield family


class ServerProcesses:
    """The standard `process_*` metrics for the whole server: the gunicorn master and all its workers.

    prometheus-client's ProcessCollector describes one process and does not work in multiprocess mode, so
    this one runs it for every pid of the server and adds the figures up (start time and fd limit: the
    master's, the process that lives as long as the server)."""

    SUMMED = {"process_cpu_seconds", "process_virtual_memory_bytes", "process_resident_memory_bytes",
              "process_open_fds"}

    def __init__(self, master: int) -> None:
        self.master = master

    def pids(self) -> list[int]:
        children: list[int] = []
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{self.master}/task").iterdir():
                children += [int(p) for p in (task / "children").read_text().split()]
        return [self.master, *children]

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self.pids():
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                if family.name not in merged:
                    merged[family.name] = family
                elif family.name in self.SUMMED:
                    total = merged[family.name]
                    total.samples = [s._replace(value=s.value + o.value)
                                     for s, o in zip(total.samples, family.samples, strict=False)]
        yield from merged.values()


class Metrics:
    """Every metric of the service, registered in a registry of its own (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(BuildInfo())
        r.register(ServerProcesses(os.getpid()))
        self.connections_open = Gauge(
            "chat_connections_open", "WebSocket connections open now.", registry=r, multiprocess_mode="livesum"
        )
        self.connections = Counter("chat_connections", "WebSocket connections accepted.", registry=r)
        self.auth_failures = Counter("chat_auth_failures", "Authentications refused.", registry=r)
        self.received = Counter(
            "chat_messages_received", "Chat messages received for storing (WebSocket and HTTP).", registry=r
        )
        self.stored_total = Counter("chat_messages_stored", "Chat messages stored.", registry=r)
        self.delivered_total = Counter(
            "chat_messages_delivered", "new_message frames handed to client connections.", registry=r
        )
        self.errors = Counter("chat_errors", "Error replies sent, by code.", ["code"], registry=r)
        self.store_seconds = Histogram(
            "chat_store_seconds", "Time for a message to be stored, as its sender waits.", registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.delivery_seconds = Histogram(
            "chat_delivery_latency_seconds", "Time from a message stored to its frame handed to a connection.",
            registry=r, buckets=LATENCY_BUCKETS,
        )
        self.db_write_seconds = Histogram(
            "chat_db_write_seconds", "Duration of one message-batch INSERT transaction.", registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.db_write_rows = Counter("chat_db_write_rows", "Message rows written by batch INSERTs.", registry=r)
        self.backplane_published = Counter(
            "chat_backplane_published", "Events published to the backplane.", registry=r
        )
        self.backplane_received = Counter(
            "chat_backplane_received", "Events received from other processes.", registry=r
        )
        self.backplane_failures = Counter(
            "chat_backplane_publish_failures", "Events the backplane failed to publish.", registry=r
        )
        self.redis_reconnects = Counter("chat_redis_reconnects", "Reconnections to Redis.", registry=r)

    # -- what the service reports -------------------------------------------------------------------

    def connection_opened(self) -> None:
        self.connections.inc()
        self.connections_open.inc()

    def connection_closed(self) -> None:
        self.connections_open.dec()

    def error(self, code: str) -> None:
        self.errors.labels(code=code).inc()
        if code in AUTH_FAILURE_CODES:
            self.auth_failures.inc()

    def message_received(self) -> None:
        self.received.inc()

    def stored(self, seconds: float) -> None:
        self.stored_total.inc()
        self.store_seconds.observe(seconds)

    def delivered(self, event: Event, count: int) -> None:
        """Fanout.on_delivered: a new_message handed to `count` local connections."""
        if event.kind != "new_message" or count <= 0:
            return
        self.delivered_total.inc(count)
        stored_at = getattr(event, "stored_at", 0.0)
        if stored_at:
            self.delivery_seconds.observe(max(0.0, time.time() - stored_at))

    def db_write(self, seconds: float, rows: int) -> None:
        """MessageWriter.observe: one committed batch."""
        self.db_write_seconds.observe(seconds)
        self.db_write_rows.inc(rows)

    def backplane_publish(self, ok: bool = True, count: int = 1) -> None:
        (self.backplane_published if ok else self.backplane_failures).inc(count)

    def backplane_receive(self) -> None:
        self.backplane_received.inc()

    def redis_reconnect(self) -> None:
        self.redis_reconnects.inc()

    # -- exposition ---------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format: every worker's values when in multiprocess mode, else this process's."""
        path = os.environ.get(MULTIPROC_ENV)
        if path and os.path.isdir(path):
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=path)
            registry.register(BuildInfo())
            registry.register(ServerProcesses(os.getppid()))  # in a gunicorn worker: the master
            return generate_latest(registry)
        return generate_latest(self.registry)
