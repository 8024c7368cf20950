"""What the realtime core needs from the gunicorn worker it runs in (called from gunicorn.conf.py)."""

from __future__ import annotations

from typing import Any

import gevent

from .websocket import ChatHandler, timed_tls_server


def install(worker: Any) -> None:
    """Use ChatHandler for every connection, and close WebSockets with 1001 when the worker is told to stop.

    gunicorn's gevent worker waits up to graceful_timeout for open requests after TERM; an open WebSocket is
    one that never ends by itself, so the worker would wait the whole timeout. Watching `worker.alive`
    lets the hub close them at once.
    """
    worker.wsgi_handler = ChatHandler
    app = worker.wsgi
    hub = getattr(app, "extensions", {}).get("chat_hub")
    if hub is None:
        return
    if worker.cfg.is_ssl and worker.server_class is not None:
        worker.server_class = timed_tls_server(worker.server_class, hub.settings.handshake_timeout)

    def watch() -> None:
        while worker.alive:
            gevent.sleep(0.2)
        hub.shutdown()

    gevent.spawn(watch)
