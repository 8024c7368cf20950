"""Each worker's figures for `python -m service status`, written to STATE_DIR/workers/<pid>.json.

A greenlet in the worker (started after the fork) rewrites the file atomically every STATS_INTERVAL
seconds; the master removes it when the worker exits, and readers ignore files of dead pids.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import gevent

from .state import STATS_INTERVAL, rss_bytes, workers_dir, write_json_atomic

if TYPE_CHECKING:
    from ..realtime.hub import ChatHub

log = logging.getLogger(__name__)


def worker_figures(hub: ChatHub) -> dict[str, Any]:
    """This worker's live figures: connections, users, joined sessions, messages, memory, uptime."""
    registry = hub.registry.stats()
    return {
        "pid": os.getpid(),
        "master": os.getppid(),
        "node_id": hub.node_id,
        "started_at": hub.started_at,
        "updated_at": time.time(),
        "connections": registry["connections"],
        "authenticated": registry["authenticated"],
        "users": registry["users"],
        "joined": registry["joined"],
        "rooms": registry["rooms"],
        "messages_in": hub.counters["messages_in"],
        "messages_out": hub.counters["messages_out"],
        "stored": hub.counters["stored"],
        "writer_queue": hub.writer.pending(),
        "rss_bytes": rss_bytes(),
        "stopping": hub.stopping,
    }


class StatsReporter:
    """Writes this worker's figures every `interval` seconds until the process ends."""

    def __init__(self, hub: ChatHub, state_dir: str, interval: float = STATS_INTERVAL) -> None:
        self.hub = hub
        self.path = workers_dir(state_dir) / f"{os.getpid()}.json"
        self.interval = interval
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self.write()
        self._greenlet = gevent.spawn(self._run)

    def write(self) -> None:
        try:
            write_json_atomic(self.path, worker_figures(self.hub))
        except OSError as exc:
            log.warning("could not write worker stats to %s: %s", self.path, exc)

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self.write()
