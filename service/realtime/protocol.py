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
from array import array
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import Problem, Refused
from ..fields import require_encodable
from ..storage.queries import StorageError

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
    require_encodable(message, text)  # a lone surrogate escape: valid JSON, but no text to store or send
    return message


FRAME_ALLOWANCE = 5  # frames of any type a connection may send, as a multiple of RATE_LIMIT / RATE_BURST


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; rate 0 means unlimited."""

    @classmethod
    def for_frames(cls, rate: float, burst: int) -> TokenBucket:
        """The flood guard: every frame (ping, garbage, unknown types) takes a token, FRAME_ALLOWANCE x looser."""
        return cls(rate * FRAME_ALLOWANCE, burst * FRAME_ALLOWANCE)

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


MAX_HELD_EVENTS = 2000


@dataclass(eq=False, slots=True)
class ConnectionState:
    """What the protocol knows about one connection; the socket edge (Connection) extends it.

    `bucket` limits sends; `signals` limits typing and read notices, so they never eat the send budget.
    `held` is not None while a join replays history: room events wait there, in order, until the
    replayed frames are queued (see recovery.py).
    """

    connection_id: str
    identity: Identity | None = None
    session_id: int | None = None
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(0, 1))
    remote_addr: str = ""
    frames: TokenBucket = field(default_factory=lambda: TokenBucket(0, 1))
    signals: TokenBucket = field(default_factory=lambda: TokenBucket(0, 1))
    held: list[tuple[str, int | None]] | None = None
    held_overflow: bool = False
    replayed: array[int] | None = None
    replayed_until: float = 0.0

    @property
    def user_id(self) -> int | None:
        return self.identity.user_id if self.identity is not None else None

    def send_text(self, text: str) -> bool:  # overridden by the socket edge
        return False

    def close(self, code: int = 1000, reason: str = "") -> None:  # overridden by the socket edge
        pass

    def wait_for_room(self, queued_bytes: int) -> bool:  # overridden by the socket edge
        """Block until at most `queued_bytes` of frames wait to be written; False when the connection closed."""
        return True

    def send_event(self, text: str, message_id: int | None = None) -> bool:
        """A frame for this connection's room (`message_id` for new_message): queued, or held during a replay.

        A message this connection was just sent by a replay is dropped: it may be published after the replay
        read it from the table (its sender had stored it but not yet published it).
        """
        if message_id is not None and self.replayed is not None and self._was_replayed(message_id):
            return True
        held = self.held
        if held is None:
            return self.send_text(text)
        if len(held) >= MAX_HELD_EVENTS:
            self.held_overflow = True
            return False
        held.append((text, message_id))
        return True

    def hold_events(self) -> None:
        """From now on room events wait in `held` until `release_events`."""
        self.held = []
        self.held_overflow = False

    def remember_replayed(self, ids: list[int], seconds: float) -> None:
        """Drop live copies of these (ascending) message ids for the next `seconds`."""
        self.replayed = array("q", ids) if ids else None
        self.replayed_until = time.monotonic() + seconds

    def _was_replayed(self, message_id: int) -> bool:
        replayed = self.replayed
        assert replayed is not None
        if time.monotonic() > self.replayed_until:
            self.replayed = None
            return False
        index = bisect_left(replayed, message_id)
        return index < len(replayed) and replayed[index] == message_id

    def release_events(self) -> tuple[list[tuple[str, int | None]], bool]:
        """Stop holding; (the held events in arrival order, whether some were dropped for lack of room)."""
        held, overflow = self.held or [], self.held_overflow
        self.held = None
        self.held_overflow = False
        return held, overflow


def dispatch(ctx: ChatHub, conn: ConnectionState, raw: str | bytes) -> list[Reply]:
    """Run one client frame through the table; always returns the replies, never raises."""
    try:
        if not conn.frames.take():
            raise Refused(Problem.RATE_LIMITED)  # a flood of any frame is refused before it is even parsed
        message = decode(raw, ctx.settings.max_json_depth)
        func = handler_for(message.get("type"))
        if func is None:
            raise Refused(Problem.UNKNOWN_TYPE)
        if conn.identity is not None:
            follow_agents_table(ctx, conn)
        return func(ctx, conn, message)
    except Refused as refused:
        ctx.observe_error(refused.problem)
        return [refused.problem.frame()]
    except StorageError:
        log.warning("storage unavailable", extra={"connection_id": conn.connection_id, "user_id": conn.user_id},
                    exc_info=True)
        ctx.observe_error(Problem.STORAGE_DOWN)
        return [Problem.STORAGE_DOWN.frame()]
    except Exception:
        log.exception("handler failed", extra={"connection_id": conn.connection_id, "user_id": conn.user_id})
        ctx.observe_error(Problem.INTERNAL)
        return [Problem.INTERNAL.frame()]


def follow_agents_table(ctx: ChatHub, conn: ConnectionState) -> None:
    """Give an authenticated connection the agent rights the agents table grants now (AGENT_RECHECK_SECONDS).

    Runs before every handler, so joins, sends, reads, typing and anything added later are decided with
    today's rights, not those of the `auth`. A connection that lost them also leaves a room it may no longer
    see, and is told so with `left_session` (`"reason":"forbidden"`).
    """
    identity = conn.identity
    assert identity is not None
    current = ctx.auth.current(identity)
    if current is identity:
        return
    session_id = conn.session_id
    evict = False
    if not current.is_agent and session_id is not None:
        session = ctx.session(session_id)  # first: if it cannot be read, nothing changed and the next frame retries
        evict = session is None or session.user_id != current.user_id
    conn.identity = current
    log.info("agent rights %s", "granted" if current.is_agent else "revoked",
             extra={"connection_id": conn.connection_id, "user_id": current.user_id})
    if evict:
        ctx.registry.leave(conn)
        conn.send_text(encode({"type": "left_session", "session_id": session_id, "reason": "forbidden"}))


def require_identity(conn: ConnectionState) -> Identity:
    if conn.identity is None:
        raise Refused(Problem.UNAUTHENTICATED)
    return conn.identity


def take_token(conn: ConnectionState) -> None:
    if not conn.bucket.take():
        raise Refused(Problem.RATE_LIMITED)
