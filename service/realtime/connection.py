"""One client connection at the socket edge: the read loop, and an outbound queue drained by one writer.

Broadcasters only append to a connection's queue, so a slow client never stalls a room; the queue is
bounded, and a client that lets it overflow is closed (1008) rather than buffering without limit.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import gevent

from .protocol import ConnectionState, TokenBucket, dispatch, encode
from .websocket import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, ChatWebSocket

if TYPE_CHECKING:
    from .hub import ChatHub

log = logging.getLogger(__name__)

MAX_QUEUED_FRAMES = 2000


class Connection(ConnectionState):
    __slots__ = ("hub", "ws", "_outbox", "_writer", "_reader", "_close_args", "closing", "messages_in",
                 "messages_out")

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
        if outbox is None:
            outbox = self._outbox = deque()
        elif len(outbox) >= MAX_QUEUED_FRAMES:
            log.warning("client too slow, closing", extra={"connection_id": self.connection_id})
            self.close(CLOSE_POLICY, "too slow")
            return False
        outbox.append(text)
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
                self.ws.send_text(text)
                self.messages_out += 1
                self.hub.counters["messages_out"] += 1
        except (TimeoutError, OSError, ConnectionError):
            if self._outbox is not None:
                self._outbox.clear()
            self.closing = True
        finally:
            self._writer = None
            if not self._outbox:
                self._outbox = None  # drained: no queue until a frame must wait again

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
            if self._outbox is not None:
                self._outbox.clear()
            log.info("disconnected", extra={"connection_id": self.connection_id, "user_id": self.user_id,
                                            "remote_addr": self.remote_addr})
