"""Operations endpoints: liveness, readiness and metrics."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify

from ..storage import StorageError
from ..storage.diagnostics import describe_database_error

log = logging.getLogger(__name__)

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers; says nothing about its dependencies (that is /readyz)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """200 when the database (and Redis, when configured) answer; 503 naming what is down and why.

    Never 500: whatever stops the database from serving (unreachable, no such database, a privilege or schema
    problem) is a reason not to send traffic here, and the answer says which, for `start -d` and `status`."""
    hub = current_app.extensions["chat_hub"]
    checks: dict[str, str] = {}
    reasons: dict[str, str] = {}
    try:
        hub.storage.ping()
        checks["database"] = "ok"
    except StorageError as exc:
        checks["database"] = "down"
        reasons["database"] = str(exc)
    except Exception as exc:  # a schema the server cannot use (SchemaError, a refused CREATE...)
        log.warning("database not ready: %s", describe_database_error(exc))
        checks["database"] = "down"
        reasons["database"] = describe_database_error(exc)
    backplane = hub.fanout.backplane
    if backplane is not None:
        status = backplane.status()
        checks["backplane"] = "ok" if status.get("connected") else "degraded"
        if not status.get("connected"):
            reasons["backplane"] = ("Redis is not answering" if not status.get("publishing")
                                    else "not subscribed to Redis yet")
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    if reasons:
        body["reasons"] = reasons
    return jsonify(body), 200 if ready else 503


@bp.get("/metrics")
def metrics():
    """Prometheus text format, summed over every worker of this server."""
    hub = current_app.extensions["chat_hub"]
    if hub.metrics is None:
        return Response("metrics are not enabled\n", status=404, mimetype="text/plain")
    from .metrics import CONTENT_TYPE

    return Response(hub.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})
