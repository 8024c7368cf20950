"""One client connection at the socket edge: the read loop, and an outbound queue drained by one writer.

Broadcasters only append to a connection's queue, so a slow client never stalls a room; the queue is
bounded in frames and in bytes (MAX_OUTBOUND_BYTES), and a client that lets it overflow is closed (1008,
"too slow") rather than buffering without limit. A replay does not overflow it: it waits for room
(`wait_for_room`) and so goes out at the pace the client reads.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

from .protocol import ConnectionState, TokenBucket, dispatch, encode
from .websocket import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, ChatWebSocket

if TYPE_CHECKING:
    from .hub import ChatHub

log = logging.getLogger(__name__)

MAX_QUEUED_FRAMES = 2000


class Connection(ConnectionState):
    __slots__ = ("hub", "ws", "_outbox", "_writer", "_reader", "_close_args", "closing", "messages_in",
                 "messages_out", "queued_bytes", "_max_bytes", "_room")

    def __init__(self, hub: ChatHub, ws: ChatWebSocket, remote_addr: str) -> None:
        settings = hub.settings
        super().__init__(
            connection_id=hub.new_connection_id(),
            bucket=TokenBucket(settings.rate_limit, settings.rate_burst),
            remote_addr=remote_addr,
            frames=TokenBucket.for_frames(settings.rate_limit, settings.rate_burst),
            signals=TokenBucket(settings.rate_limit, settings.rate_burst),
        )
        self.hub = hub
        self.ws = ws
        self._outbox: deque[str] | None = None  # made when a frame must wait: most connections never need one
        self._writer: gevent.Greenlet | None = None
        self._reader: gevent.Greenlet | None = None
        self._close_args = (CLOSE_NORMAL, "")
        self.closing = False
        self.messages_in = 0
        self.messages_out = 0
        self.queued_bytes = 0  # memory of the frames in _outbox (sys.getsizeof: what the worker holds)
        self._max_bytes = settings.max_outbound_bytes
        self._room: Event | None = None  # set by the writer as frames go out, for wait_for_room

    def __hash__(self) -> int:
        return id(self)

    # -- outbound ---------------------------------------------------------------------------------

    def send_text(self, text: str) -> bool:
        """Queue a frame; never blocks. False when the connection is closing."""
        if self.closing:
            return False
        outbox = self._outbox
        if self._writer is None and not outbox:
            # Nothing queued: write now if the socket takes it without waiting (no greenlet per frame).
            try:
                written = self.ws.send_text_nowait(text)
            except (OSError, ConnectionError):
                self.closing = True
                return False
            if written:
                self.messages_out += 1
                self.hub.counters["messages_out"] += 1
                if self.ws.pending_tail:
                    self._writer = gevent.spawn(self._drain)
                return True
        size = sys.getsizeof(text)
        if outbox is None:
            outbox = self._outbox = deque()
        elif len(outbox) >= MAX_QUEUED_FRAMES or (outbox and self.queued_bytes + size > self._max_bytes):
            # (One frame larger than the whole budget still goes when nothing else waits.)
            log.warning("client too slow, closing", extra={"connection_id": self.connection_id,
                                                           "queued_bytes": self.queued_bytes})
            self.close(CLOSE_POLICY, "too slow")
            return False
        outbox.append(text)
        self.queued_bytes += size
        if self._writer is None:
            self._writer = gevent.spawn(self._drain)
        return True

    def send_json(self, obj: dict) -> bool:
        return self.send_text(encode(obj))

    def _drain(self) -> None:
        try:
            self.ws.flush_tail()
            while self._outbox:
                text = self._outbox.popleft()
                self.queued_bytes -= sys.getsizeof(text)
                self.ws.send_text(text)
                self.messages_out += 1
                self.hub.counters["messages_out"] += 1
                if self._room is not None:
                    self._room.set()
        except (TimeoutError, OSError, ConnectionError):
            self._discard_queue()
            self.closing = True
        finally:
            self._writer = None
            if not self._outbox:
                self._outbox = None  # drained: no queue until a frame must wait again
            if self._room is not None:
                self._room.set()

    def _discard_queue(self) -> None:
        if self._outbox is not None:
            self._outbox.clear()
        self.queued_bytes = 0

    def wait_for_room(self, queued_bytes: int) -> bool:
        """Wait until at most `queued_bytes` are queued (0: everything queued so far is written); False when the
        connection closes first, or after HEARTBEAT_TIMEOUT without a frame going out (closed 1008 then)."""
        timeout = self.hub.settings.heartbeat_timeout
        while not self.closing and self.queued_bytes > queued_bytes:
            room = self._room = self._room or Event()
            room.clear()
            if not room.wait(timeout):
                log.warning("client reads nothing, closing", extra={"connection_id": self.connection_id})
                self.close(CLOSE_POLICY, "too slow")
        return not self.closing

    def flush(self, timeout: float) -> None:
        """Wait until queued frames are written (or `timeout`)."""
        writer = self._writer
        if writer is not None:
            writer.join(timeout)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> gevent.Greenlet | None:
        """Close from any greenlet: flush what is queued, send the close frame, and let the reader finish.

        Returns the greenlet doing it (None when already closing), for callers that wait (shutdown).
        """
        if self.closing:
            return None
        self.closing = True
        self._close_args = (code, reason)
        if self._room is not None:
            self._room.set()  # a replay waiting for room gives up
        return gevent.spawn(self._close_from_outside, code, reason)

    def _close_from_outside(self, code: int, reason: str) -> None:
        self.flush(2.0)
        self.ws.send_close(code, reason)
        # The reader now gets the peer's answering close frame; if the peer never answers, unblock it.
        reader = self._reader
        if reader is not None and reader is not gevent.getcurrent():
            reader.join(2.0)
            if not reader.dead:
                self.ws.unblock_reader()

    # -- inbound ----------------------------------------------------------------------------------

    def serve(self) -> None:
        """Greet, then answer frames until the client goes away or idles past HEARTBEAT_TIMEOUT."""
        hub = self.hub
        self._reader = gevent.getcurrent()
        hub.fanout.start()  # idempotent; a worker that only receives must listen too
        hub.registry.add(self)
        if hub.metrics is not None:
            hub.metrics.connection_opened()
        try:
            self.ws._socket.settimeout(hub.settings.heartbeat_timeout)
            self.send_json({"type": "connected", "message": "WebSocket连接成功", "connection_id": self.connection_id})
            if hub.stopping:  # accepted just as the worker began to stop
                self.close(CLOSE_GOING_AWAY, "server shutting down")
            while True:
                try:
                    raw = self.ws.receive_message()
                except TimeoutError:
                    log.info("idle timeout", extra={"connection_id": self.connection_id, "user_id": self.user_id})
                    self._close_args = (CLOSE_NORMAL, "idle timeout")
                    break
                if raw is None:
                    break
                if self.closing or hub.stopping:
                    continue  # closing: read on until the peer's close frame, answer nothing
                self.messages_in += 1
                hub.counters["messages_in"] += 1
                hub.inflight += 1
                try:
                    replies = dispatch(hub, self, raw)
                finally:
                    hub.inflight -= 1
                for reply in replies:
                    self.send_json(reply)
                # A client whose next frame is already buffered would otherwise run on without yielding.
                gevent.sleep(0)
        finally:
            hub.registry.remove(self)
            hub.typing.connection_gone(self.connection_id)
            if hub.metrics is not None:
                hub.metrics.connection_closed()
            if not self.ws.closed:
                self.closing = True
                self.flush(2.0)
                self.ws.close(*self._close_args)
            self._discard_queue()
            log.info("disconnected", extra={"connection_id": self.connection_id, "user_id": self.user_id,
                                            "remote_addr": self.remote_addr})
