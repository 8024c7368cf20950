"""What the realtime core needs from the gunicorn worker it runs in (called from gunicorn.conf.py)."""

from __future__ import annotations

import logging
from typing import Any

import gevent
from gunicorn.workers.ggevent import PyWSGIHandler

from .websocket import ChatHandler, timed_tls_server

log = logging.getLogger(__name__)


class LoggedChatHandler(ChatHandler, PyWSGIHandler):
    """ChatHandler with gunicorn's request environ (RAW_URI...) and access log, like gunicorn's own handler.

    gevent-websocket's handler would log through a logger of its own instead. A WebSocket is logged when it
    ends, with status 101 and how long it stayed open.
    """

    log_request = PyWSGIHandler.log_request


def install(worker: Any) -> None:
    """Use our handler for every connection, report this worker's figures, and stop gracefully.

    gunicorn's gevent worker waits up to graceful_timeout for open requests after TERM; an open WebSocket is
    one that never ends by itself, so the worker would wait the whole timeout. Watching `worker.alive`
    lets the hub finish what is in flight and close them at once (1001).
    """
    worker.wsgi_handler = LoggedChatHandler
    # Every connection is a greenlet; recording the stack and tree each was spawned from (debugging aids of
    # gevent, not used here) would cost every open socket memory.
    gevent.config.track_greenlet_tree = False
    app = worker.wsgi
    hub = getattr(app, "extensions", {}).get("chat_hub")
    if hub is None:
        return
    if worker.cfg.is_ssl and worker.server_class is not None:
        worker.server_class = timed_tls_server(worker.server_class, hub.settings.handshake_timeout)

    from ..ops.stats import StatsReporter

    reporter = StatsReporter(hub, hub.settings.state_dir)
    reporter.start()
    hub.fanout.start()  # the backplane listens from boot, even in a worker that never publishes
    if hub.desk is not None:
        hub.desk.start()  # leases and the leader loop, after the fork

    def watch() -> None:
        while worker.alive:
            gevent.sleep(0.1)
        log.info("worker stopping: finishing messages in flight, closing connections (1001)")
        hub.shutdown()
        reporter.write()

    gevent.spawn(watch)


def quick_shutdown(worker: Any) -> None:
    """INT/QUIT (Ctrl-C in the foreground): gunicorn exits the worker right after this; say 1001 first."""
    hub = getattr(worker.wsgi, "extensions", {}).get("chat_hub")
    if hub is not None:
        hub.shutdown(reason="server shutting down", timeout=1.0)
