"""Operations endpoints: liveness, readiness and metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from ..storage import StorageError

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers; says nothing about its dependencies (that is /readyz)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """200 when the database (and Redis, when configured) answer; 503 naming what is down."""
    hub = current_app.extensions["chat_hub"]
    checks: dict[str, str] = {}
    try:
        hub.storage.ping()
        checks["database"] = "ok"
    except StorageError:
        checks["database"] = "down"
    backplane = hub.fanout.backplane
    if backplane is not None:
        checks["backplane"] = "ok" if backplane.status().get("connected") else "degraded"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), 200 if ready else 503


@bp.get("/metrics")
def metrics():
    """Prometheus text format, summed over every worker of this server."""
    hub = current_app.extensions["chat_hub"]
    if hub.metrics is None:
        return Response("metrics are not enabled\n", status=404, mimetype="text/plain")
    from .metrics import CONTENT_TYPE

    return Response(hub.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})
