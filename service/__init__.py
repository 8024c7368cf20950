"""Customer-service chat server: the legacy Workerman WebSocket protocol on gunicorn + gevent-websocket.

`create_app` lives in `service.app` and is imported on first use, so that `gunicorn.conf.py` and the CLI
can read the configuration (`service.config`) in the gunicorn master without importing the database,
Redis or socket libraries before the workers fork and monkey-patch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    from .app import create_app as _create_app

    return _create_app(overrides)
