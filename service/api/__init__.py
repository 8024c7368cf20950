"""The HTTP API under /api, and JSON errors for every HTTP failure (never an HTML page or a traceback)."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import Problem, Refused
from ..storage import StorageError
from .agents import bp as agents_bp
from .limits import PostRateLimit, check_body
from .openapi import bp as openapi_bp
from .reports import bp as reports_bp
from .sessions import bp as sessions_bp

log = logging.getLogger(__name__)

_HTTP_PROBLEMS = {
    404: Problem.NOT_FOUND,
    405: Problem.METHOD_NOT_ALLOWED,
    413: Problem.PAYLOAD_TOO_LARGE,
}


def init_api(app: Flask) -> None:
    app.register_blueprint(sessions_bp, url_prefix="/api")
    app.register_blueprint(openapi_bp, url_prefix="/api")
    app.register_blueprint(reports_bp, url_prefix="/api")
    settings = app.config["CHAT_SETTINGS"]
    app.extensions["chat_post_limit"] = PostRateLimit(settings)

    @app.before_request
    def api_body():
        if request.path.startswith("/api/"):
            check_body(settings.max_json_depth)
    app.register_blueprint(agents_bp, url_prefix="/api")

    @app.errorhandler(Refused)
    def refused(exc: Refused):
        hub = app.extensions.get("chat_hub")
        if hub is not None:
            hub.observe_error(exc.problem)
        return jsonify(exc.problem.body()), exc.problem.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        problem = _HTTP_PROBLEMS.get(exc.code or 500)
        if problem is None:
            problem = Problem.BAD_FORMAT if (exc.code or 500) < 500 else Problem.INTERNAL
            return jsonify(problem.body()), exc.code or 500
        return jsonify(problem.body()), problem.status

    @app.errorhandler(StorageError)
    def storage_down(exc: StorageError):
        log.warning("storage unavailable", extra={"path": request.path}, exc_info=True)
        return jsonify(Problem.STORAGE_DOWN.body()), Problem.STORAGE_DOWN.status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("request failed", extra={"path": request.path})
        return jsonify(Problem.INTERNAL.body()), 500
