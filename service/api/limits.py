"""What every API call passes before its endpoint: JSON bodies only, bounded nesting, and the post rate limit."""

from __future__ import annotations

import time

from flask import request

from ..auth import Identity
from ..config import Settings
from ..errors import Problem, Refused
from ..realtime.protocol import TokenBucket, _depth

BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def check_body(max_depth: int) -> None:
    """An API call that carries a body must say it is JSON, and its JSON must nest no deeper than MAX_JSON_DEPTH.

    The content type is what stops a web page an internal user visits from posting to the API: a browser
    sends `text/plain` or a form cross-site without asking first (no CORS preflight), never `application/json`.
    The body is parsed here once (Flask keeps the result for the endpoint); a nesting too deep for the parser
    (`"[" * 100000`) is 400 like any other malformed body, not a RecursionError.
    """
    if request.method not in BODY_METHODS or not has_body():
        return
    if not request.is_json:
        raise Refused(Problem.UNSUPPORTED_MEDIA_TYPE)
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:
        raise Refused(Problem.BAD_FORMAT) from None
    if body is not None and not _depth(body, max_depth):
        raise Refused(Problem.BAD_FORMAT)


class PostRateLimit:
    """RATE_LIMIT / RATE_BURST for `POST /api/sessions/<id>/messages`, per user and worker.

    The WebSocket limit is per connection (each socket its own bucket); HTTP has no connection to key on, so
    each user gets one bucket per worker for all their HTTP posts. The budgets are not shared: a user's HTTP
    posts do not spend their sockets' tokens. The trusted backend (trust mode, no X-User-Id) is not limited:
    it posts for every user.
    """

    MAX_USERS = 100_000

    def __init__(self, settings: Settings) -> None:
        self.rate = settings.rate_limit
        self.burst = settings.rate_burst
        self._buckets: dict[int, TokenBucket] = {}

    def take(self, identity: Identity) -> None:
        if identity.backend or self.rate <= 0:
            return
        bucket = self._buckets.get(identity.user_id)
        if bucket is None:
            if len(self._buckets) >= self.MAX_USERS:
                self._forget_full()
            bucket = self._buckets[identity.user_id] = TokenBucket(self.rate, self.burst)
        if not bucket.take():
            raise Refused(Problem.RATE_LIMITED)

    def _forget_full(self) -> None:
        """Drop the buckets that have refilled (a new bucket is full: forgetting them changes nothing)."""
        refill = self.burst / self.rate
        now = time.monotonic()
        self._buckets = {uid: b for uid, b in self._buckets.items() if now - b.updated < refill}
