"""Operations: health and readiness, Prometheus metrics, and the files `status` reads.

This package's `__init__` imports nothing heavy: the gunicorn master and the CLI use `service.ops.state`
without pulling in Flask or the database libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_ops(app: Flask) -> None:
    from .health import bp

    app.register_blueprint(bp)
