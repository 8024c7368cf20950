"""Frames to messages and back, and the handler table. No sockets here: tests drive it directly.

A handler is registered with `@handler("type")`, receives the chat context, the connection state and the
decoded message, and returns the replies for that connection (one request, one reply). Anything that must
reach other connections goes through `ctx.fanout`. A handler refuses by raising `Refused(Problem...)`;
`dispatch` turns that into the error frame and guarantees the connection's state is unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import Problem, Refused

if TYPE_CHECKING:
    from ..auth import Identity
    from .hub import ChatHub

log = logging.getLogger(__name__)

Reply = dict[str, Any]
Handler = Callable[["ChatHub", "ConnectionState", dict[str, Any]], list[Reply]]

_HANDLERS: dict[str, Handler] = {}


def handler(message_type: str) -> Callable[[Handler], Handler]:
    """Register the function that answers `message_type`."""

    def register(func: Handler) -> Handler:
        _HANDLERS[message_type] = func
        return func

    return register


def handler_for(message_type: Any) -> Handler | None:
    return _HANDLERS.get(message_type) if isinstance(message_type, str) else None


def encode(obj: dict[str, Any]) -> str:
    """Compact JSON with non-ASCII unescaped (PHP's JSON_UNESCAPED_UNICODE).

    orjson writes the same bytes as `json.dumps(ensure_ascii=False, separators=(",", ":"))` for what
    server frames hold (strings, integers, booleans, null; no floats) several times faster; what it
    refuses (integers beyond 64 bits, lone surrogates, non-string keys) goes through the json module.
    """
    try:
        return orjson.dumps(obj).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _depth(value: Any, limit: int) -> bool:
    """True when `value` nests no deeper than `limit` containers."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item)
    return True


def decode(text: str | bytes, max_depth: int = 16) -> dict[str, Any]:
    """A client frame as a JSON object, or Refused(BAD_FORMAT)."""
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(Problem.BAD_FORMAT) from None
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise Refused(Problem.BAD_FORMAT) from None
    if not isinstance(message, dict) or not _depth(message, max_depth):
        raise Refused(Problem.BAD_FORMAT)
    return message


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; rate 0 means unlimited."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    updated: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(eq=False)
class ConnectionState:
    """What the protocol knows about one connection; the socket edge (Connection) extends it."""

    connection_id: str
    identity: Identity | None = None
    session_id: int | None = None
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(0, 1))
    remote_addr: str = ""

    @property
    def user_id(self) -> int | None:
        return self.identity.user_id if self.identity is not None else None

    def send_text(self, text: str) -> bool:  # overridden by the socket edge
        return False


def dispatch(ctx: ChatHub, conn: ConnectionState, raw: str | bytes) -> list[Reply]:
    """Run one client frame through the table; always returns the replies, never raises."""
    try:
        message = decode(raw, ctx.settings.max_json_depth)
        func = handler_for(message.get("type"))
        if func is None:
            raise Refused(Problem.UNKNOWN_TYPE)
        return func(ctx, conn, message)
    except Refused as refused:
        ctx.observe_error(refused.problem)
        return [refused.problem.frame()]
    except Exception:
        log.exception("handler failed", extra={"connection_id": conn.connection_id, "user_id": conn.user_id})
        ctx.observe_error(Problem.INTERNAL)
        return [Problem.INTERNAL.frame()]


def require_identity(conn: ConnectionState) -> Identity:
    if conn.identity is None:
        raise Refused(Problem.UNAUTHENTICATED)
    return conn.identity


def take_token(conn: ConnectionState) -> None:
    if not conn.bucket.take():
        raise Refused(Problem.RATE_LIMITED)
