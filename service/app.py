"""The application factory: configuration, storage, realtime core, HTTP API and operations, wired once."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from .api import init_api
from .auth import TrustAuthenticator
from .config import Settings, load_settings
from .desk import Desk
from .logs import configure_logging
from .ops import init_ops
from .ops.metrics import Metrics
from .realtime import init_realtime
from .realtime.desk import FanoutNotifier
from .realtime.fanout import Fanout
from .realtime.hub import ChatHub, make_node_id
from .realtime.registry import Registry
from .storage import MessageWriter, init_storage
from .storage.desk import DeskStorage
from .storage.locks import leader_lock
from .web import bp as web_bp

log = logging.getLogger(__name__)


def make_authenticator(settings: Settings, storage) -> Any:
    if settings.auth_mode == "trust":
        log.warning("AUTH_MODE=trust: user ids are taken from clients as given and are not verified")
        return TrustAuthenticator(storage, settings.agent_recheck_seconds, settings.backend_api_key)
    from .auth import JwtAuthenticator  # noqa: PLC0415

    return JwtAuthenticator(settings, storage)


def make_desk(settings: Settings, storage, node_id: str) -> Desk:
    """The agent desk: leases in Redis when configured (several workers), else in memory (one worker)."""
    from .desk.leases import LocalLeases, RedisLeases  # noqa: PLC0415

    leases = RedisLeases.from_settings(settings) if settings.redis_url else LocalLeases()
    lock = leader_lock(storage.engine, storage.writer_engine)
    return Desk(settings, storage, DeskStorage(storage, settings.agent_capacity), leases, lock, node_id)


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the WSGI app; `overrides` (variable name -> value) win over the environment (tests)."""
    settings = load_settings(overrides)
    configure_logging(settings)
    app = Flask("service")
    app.config["CHAT_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = max(1024 * 1024, settings.max_frame_bytes)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]

    storage = init_storage(app, settings)
    backplane = None
    if settings.redis_url:
        from .realtime.backplane import RedisBackplane  # noqa: PLC0415  (redis only when configured)

        backplane = RedisBackplane(settings)
    # The backplane hears the registry's room changes: it subscribes to exactly the sessions and users here.
    registry = Registry(watcher=backplane)
    fanout = Fanout(registry, make_node_id(), backplane=backplane, history=storage)
    writer = MessageWriter(storage, settings.writer_batch, settings.writer_concurrency)
    metrics = Metrics()
    if backplane is not None:
        backplane.metrics = metrics
    writer.observe = metrics.db_write
    fanout.on_delivered = metrics.delivered
    desk = make_desk(settings, storage, fanout.node_id)
    hub = ChatHub(settings, storage, make_authenticator(settings, storage), registry, fanout, writer, metrics,
                  desk=desk)
    desk.notifier = FanoutNotifier(fanout, hub.publish_session_closed)
    fanout.on_event = hub.on_event

    init_realtime(app, hub)
    init_api(app)
    init_ops(app)
    app.register_blueprint(web_bp)  # /console/, /chat/ and their files
    return app
