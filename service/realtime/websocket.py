"""The socket edge: RFC 6455 framing and the handshake, on top of gevent-websocket's handler.

gevent-websocket 0.10.1 ignores close codes, accepts unmasked client frames, reads frames of any size
whole, closes invalid UTF-8 without 1007 and validates UTF-8 in pure Python. Rather than fork it, this
module subclasses its two classes in one place:

* `ChatWebSocket` reads and writes frames itself: masks checked (1002), size checked from the header
  before the payload is read (1009), UTF-8 checked incrementally in C (1007), close codes validated and
  echoed, and every write (data, pong, close) under one lock so frames never interleave.
* `ChatHandler` refuses a malformed upgrade, a disallowed Origin or too many connections per IP with a
  real HTTP status and body before the 101 (the per-IP count is released on every path), bounds the time
  a client may take to send its request, and serves plain HTTP requests that carry `Connection: upgrade`
  (the legacy nginx recipe) with a length-limited body.
"""

from __future__ import annotations

import base64
import codecs
import logging
import socket
import struct
from typing import Any

import gevent
from gevent.lock import RLock
from gevent.pywsgi import Input
from gevent.socket import socket as GeventSocket
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import WebSocket

try:
    from wsaccel.xormask import XorMaskerSimple as _CMasker
except ImportError:  # pragma: no cover - wsaccel is in requirements; keep working without it
    _CMasker = None

log = logging.getLogger(__name__)

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (OP_TEXT, OP_BINARY)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

# What pywsgi's handler keeps of a parsed request, not read again once a WebSocket is open (the access line
# reads the environ). "rfile" is the handshake's buffered reader (see ChatWebSocket.take_over_reads).
REQUEST_ATTRIBUTES = ("rfile", "headers", "requestline", "command", "path", "request_version", "content_length",
                      "result", "_deadline")

NO_BODY = Input(None, 0)  # a WebSocket handshake has no request body

# What gunicorn's access line reads from the environ of a WebSocket request (see ChatHandler._forget_request).
ACCESS_LOG_ENVIRON = ("REMOTE_ADDR", "REQUEST_METHOD", "RAW_URI", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
                      "HTTP_USER_AGENT", "HTTP_REFERER")

READ_BUFFER_BYTES = 1024  # per-connection read buffer while the request is read (see ChatHandler.__init__)
READ_CHUNK_BYTES = 4096  # what a WebSocket asks of the socket at a time (a frame and any behind it)


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR the payload with the 4-byte key, in C."""
    if _CMasker is not None:
        return _CMasker(key).process(payload)  # a fresh masker: it carries its offset from call to call
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def valid_close_code(code: int) -> bool:
    """Codes a peer may send in a close frame (RFC 6455 7.4)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def valid_key(key: str) -> bool:
    """A Sec-WebSocket-Key: 16 bytes in base64 (RFC 6455 4.1), nothing else."""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:  # binascii.Error, or text that is not ASCII
        return False


class FrameRefused(Exception):
    """The peer broke the protocol; close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ChatWebSocket(WebSocket):
    """A server-side WebSocket that enforces RFC 6455 and never interleaves frames."""

    __slots__ = ("max_message_bytes", "send_lock", "close_code", "close_reason", "_close_sent", "_socket", "_raw",
                 "_tail", "_rbuf", "_rpos")

    def __init__(self, environ: dict, handler: WebSocketHandler, max_message_bytes: int) -> None:
        # Not the library's __init__: its UTF-8 validator and stream object are not used here, yet every
        # open socket would keep them.
        self.environ = environ
        self.handler = handler
        self.closed = False
        self.raw_write = handler.socket.sendall
        self.max_message_bytes = max_message_bytes
        self.send_lock = RLock()
        self.close_code: int | None = None
        self.close_reason = ""
        self._close_sent = False
        self._socket = handler.socket
        # The OS socket under a plain (not TLS) gevent socket: gevent keeps it non-blocking, so a send on it
        # takes what fits in the kernel buffer and never waits.
        self._raw = handler.socket._sock if type(handler.socket) is GeventSocket else None
        self._tail = b""  # the unsent end of a frame written without waiting; goes out before anything else
        self._rbuf = b""  # received and not yet read, from _rpos on; empty between messages, as a rule
        self._rpos = 0

    # -- reading ----------------------------------------------------------------------------------

    def take_over_reads(self, rfile: Any) -> None:
        """Read from the socket directly from now on, starting with what the handshake's reader buffered.

        A buffered reader holds its buffer for as long as it lives; an idle socket read directly holds none.
        Only what `rfile` has already buffered is taken (a client may send frames right behind its request).
        """
        sock = self._socket
        timeout = sock.gettimeout()
        sock.settimeout(0.0)  # so the peek never waits on the socket
        try:
            self._rbuf = rfile.peek()
        except OSError:
            pass  # nothing buffered (TLS says "want read" rather than returning nothing)
        finally:
            sock.settimeout(timeout)

    def _read_exact(self, n: int) -> bytes:
        buffered, start = self._rbuf, self._rpos
        end = start + n
        if end < len(buffered):
            self._rpos = end
            return buffered[start:end]
        if end == len(buffered):
            self._rbuf, self._rpos = b"", 0
            return buffered[start:end]
        return self._receive(n)

    def _receive(self, n: int) -> bytes:
        """`n` bytes: what is buffered, then from the socket; keeps what arrived beyond them."""
        parts = [self._rbuf[self._rpos:]]
        have = len(parts[0])
        self._rbuf, self._rpos = b"", 0
        recv = self._socket.recv
        while have < n:
            chunk = recv(max(n - have, READ_CHUNK_BYTES))
            if not chunk:
                raise ConnectionResetError("peer closed the connection mid-frame")
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        if have > n:
            self._rbuf, self._rpos = data, n
            return data[:n]
        return data

    def _read_frame(self, budget: int) -> tuple[bool, int, bytes]:
        """One frame: (fin, opcode, payload). `budget` is how many payload bytes the message may still take."""
        b1, b2 = self._read_exact(2)
        fin, rsv, opcode = b1 & 0x80, b1 & 0x70, b1 & 0x0F
        masked, length = b2 & 0x80, b2 & 0x7F
        if rsv:
            raise FrameRefused(CLOSE_PROTOCOL_ERROR, "reserved bits set")
        if opcode >= 0x8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameRefused(CLOSE_PROTOCOL_ERROR, "reserved opcode")
            if not fin or length > 125:
                raise FrameRefused(CLOSE_PROTOCOL_ERROR, "invalid control frame")
        elif opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY):
            raise FrameRefused(CLOSE_PROTOCOL_ERROR, "reserved opcode")
        if not masked:
            raise FrameRefused(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
            if length >> 63:
                raise FrameRefused(CLOSE_PROTOCOL_ERROR, "invalid length")
        if opcode < 0x8 and length > budget:
            raise FrameRefused(CLOSE_TOO_BIG, "message too big")
        key = self._read_exact(4)
        payload = unmask(self._read_exact(length), key) if length else b""
        return bool(fin), opcode, payload

    def receive_message(self) -> str | bytes | None:
        """The next text (str) or binary (bytes) message; None once the connection is closed.

        Only the connection's reader greenlet may call this (and `close`). A socket timeout (the idle
        limit) propagates as TimeoutError so the caller can close with its own reason.
        """
        if self.closed:
            return None
        try:
            return self._read_message()
        except FrameRefused as refused:
            self.close(refused.code, refused.reason)
        except TimeoutError:
            raise
        except (OSError, ConnectionError, ValueError):
            self._abort()
        return None

    def _read_message(self) -> str | bytes | None:
        opcode = None
        parts: list[bytes] = []
        size = 0
        decoder = None
        while True:
            fin, frame_opcode, payload = self._read_frame(self.max_message_bytes - size)
            if frame_opcode >= 0x8:
                if self._control(frame_opcode, payload):
                    return None
                continue
            if frame_opcode == OP_CONTINUATION:
                if opcode is None:
                    raise FrameRefused(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            elif opcode is not None:
                raise FrameRefused(CLOSE_PROTOCOL_ERROR, "new message before the last one ended")
            else:
                opcode = frame_opcode
                if fin:  # the common case: one frame, one message
                    if opcode == OP_TEXT:
                        try:
                            return payload.decode("utf-8")
                        except UnicodeDecodeError:
                            raise FrameRefused(CLOSE_INVALID_DATA, "invalid UTF-8") from None
                    return payload
                if opcode == OP_TEXT:
                    decoder = codecs.getincrementaldecoder("utf-8")()
            size += len(payload)
            if decoder is not None:
                try:
                    parts.append(decoder.decode(payload, final=fin))
                except UnicodeDecodeError:
                    raise FrameRefused(CLOSE_INVALID_DATA, "invalid UTF-8") from None
            else:
                parts.append(payload)
            if fin:
                return "".join(parts) if decoder is not None else b"".join(parts)

    def _control(self, opcode: int, payload: bytes) -> bool:
        """Answer a control frame; True when it was a close (the connection is then closed)."""
        if opcode == OP_PING:
            self.send_frame(payload, OP_PONG)
            return False
        if opcode == OP_PONG:
            return False
        # The peer's close frame has arrived, valid or not: if ours now fails the connection (1002/1007),
        # there is no further close frame to wait for, and the TCP connection is dropped at once.
        self.close_code = 1005
        if not payload:
            code, reply = 1005, CLOSE_NORMAL
        else:
            if len(payload) < 2:
                raise FrameRefused(CLOSE_PROTOCOL_ERROR, "invalid close frame")
            (code,) = struct.unpack("!H", payload[:2])
            if not valid_close_code(code):
                raise FrameRefused(CLOSE_PROTOCOL_ERROR, "invalid close code")
            try:
                self.close_reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise FrameRefused(CLOSE_INVALID_DATA, "invalid UTF-8 in close reason") from None
            reply = code
        self.close_code = code
        self.send_close(reply)  # echo, unless ours went first and this is the answer
        self._finish()
        return True

    # -- writing ----------------------------------------------------------------------------------

    def send_frame(self, message: bytes | str, opcode: int) -> None:
        """Write one frame; the lock keeps frames from different greenlets whole."""
        if isinstance(message, str):
            message = message.encode("utf-8")
        frame = encode_frame(opcode, message)
        with self.send_lock:
            if self._close_sent:
                raise ConnectionResetError("connection is closing")
            if opcode == OP_CLOSE:
                self._close_sent = True
            if self._tail:
                frame, self._tail = self._tail + frame, b""
            if self._raw is not None:
                # Most frames fit in the socket buffer: one send, without sendall's timeout and wait machinery.
                try:
                    sent = self._raw.send(frame)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return
                frame = frame[sent:]
            self.raw_write(frame)

    def send_text_nowait(self, text: str) -> bool:
        """Write a text frame now if that needs no waiting; False when the caller must queue it instead.

        What the kernel does not take at once is kept in `pending_tail` and goes out first on the next
        write (`flush_tail` or any send), so frames stay whole and in order. Saves a writer greenlet per
        outbound burst on the common path, where the socket buffer has room.
        """
        if self._raw is None or self._tail or not self.send_lock.acquire(blocking=False):
            return False
        try:
            if self._close_sent:
                raise ConnectionResetError("connection is closing")
            frame = encode_frame(OP_TEXT, text.encode("utf-8"))
            try:
                sent = self._raw.send(frame)
            except BlockingIOError:
                sent = 0
            if sent < len(frame):
                self._tail = frame[sent:]
            return True
        finally:
            self.send_lock.release()

    @property
    def pending_tail(self) -> bool:
        return bool(self._tail)

    def flush_tail(self) -> None:
        """Write the rest of a frame `send_text_nowait` could not finish (may wait; the writer greenlet calls it)."""
        with self.send_lock:
            if self._tail:
                tail, self._tail = self._tail, b""
                self.raw_write(tail)

    def send_text(self, text: str) -> None:
        self.send_frame(text.encode("utf-8"), OP_TEXT)

    def send(self, message: bytes | str, binary: bool | None = None) -> None:
        if binary is None:
            binary = not isinstance(message, str)
        self.send_frame(message, OP_BINARY if binary else OP_TEXT)

    def send_close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bool:
        """Write our close frame once (any greenlet may); False if it was already sent."""
        payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
        try:
            self.send_frame(payload, OP_CLOSE)
        except (OSError, ConnectionError):
            return False
        return True

    def close(self, code: int = CLOSE_NORMAL, message: bytes | str = b"") -> None:
        """Reader-side close: send our close frame, end our side of TCP, let the peer answer, then stop.

        The peer's answer is read as bytes and discarded, not parsed: after a protocol error (a bad header,
        an oversize frame whose payload was never read) the stream is no longer at a frame boundary, and
        trying to parse it could wait on a bogus length. Ending our side at once (FIN right after the close
        frame) is what RFC 6455 7.1.1 prefers of a server.
        """
        if self.closed:
            return
        reason = message.decode("utf-8", "replace") if isinstance(message, bytes | bytearray) else message
        self.send_close(code, reason or "")
        self._finish()
        if self.close_code is None:
            with gevent.Timeout(1.0, False):
                try:
                    while self._socket.recv(65536):
                        pass
                except OSError:
                    pass

    def _finish(self) -> None:
        self.closed = True
        try:
            self._socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _abort(self) -> None:
        self.closed = True
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def unblock_reader(self) -> None:
        """Make a reader blocked on this socket return (used when another greenlet closes the connection)."""
        try:
            self._socket.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    # gevent-websocket API used by its handler and by generic code
    def receive(self) -> str | bytes | None:
        return self.receive_message()


class ChatHandler(WebSocketHandler):
    """The per-connection handler: handshake policy before the 101, then our WebSocket class.

    The policy is the application's `chat_handshake` attribute (see `service.realtime.HandshakePolicy`):
    `refusal(environ)` answers an (HTTP status, reason) or None; `max_message_bytes`; `handshake_timeout`.
    """

    _deadline: gevent.Timeout | None = None
    _counted_ip: str | None = None

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        # pywsgi's default read buffer is 8 KB per connection, most of an idle WebSocket's memory. A request's
        # headers and a chat frame fit in 1 KB; longer reads bypass the buffer, so only idle memory changes.
        if rfile is None:
            rfile = sock.makefile("rb", READ_BUFFER_BYTES)
        super().__init__(sock, address, server, rfile)

    def _policy(self) -> Any:
        return getattr(self.server.application, "chat_handshake", None)

    def handle(self) -> None:
        """Bound each read while a request is read (a WebSocket sets its own idle timeout later)."""
        policy = self._policy()
        if policy is not None and policy.handshake_timeout:
            self.socket.settimeout(policy.handshake_timeout)
        super().handle()

    def handle_one_request(self) -> Any:
        """Bound the whole request line and headers by HANDSHAKE_TIMEOUT, not each read (slowloris).

        The deadline ends when the application starts; a client that dribbles its request, or keeps an idle
        keep-alive connection, is dropped without a response when it expires.
        """
        policy = self._policy()
        if policy is None or not policy.handshake_timeout:
            return self._one_request()
        self._deadline = gevent.Timeout(policy.handshake_timeout, TimeoutError("handshake timeout"))
        self._deadline.start()
        try:
            return self._one_request()
        except TimeoutError:
            return None
        finally:
            if self._deadline is not None:
                self._deadline.close()
                self._deadline = None

    def _one_request(self) -> Any:
        result = super().handle_one_request()
        if isinstance(result, tuple) and self.environ is None:
            # pywsgi refused the request line (e.g. a \x0b in it, or too long) before building an environ,
            # and its access line would then raise: give it what the line reads.
            address = self.client_address
            self.environ = {"REMOTE_ADDR": address[0] if isinstance(address, tuple) else str(address or "-"),
                            "REQUEST_METHOD": "-", "RAW_URI": (self.requestline or "")[:256], "SERVER_PROTOCOL": "-"}
            self.response_headers = self.response_headers or ()
        return result

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        # pywsgi hands the raw socket file to any request that says `Connection: upgrade`, then, after the
        # response, discards the body a second time from its own reader: a plain POST through the legacy
        # nginx recipe (which sends that header on every request) blocked until the client gave up.
        # Only a real WebSocket upgrade gets the raw stream.
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            environ["wsgi.input"] = self.wsgi_input
            environ["wsgi.input_terminated"] = True
        return environ

    def run_application(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None  # a WebSocket runs inside this request: let its timer go now
        try:
            super().run_application()
        finally:
            # Whatever ended the request (an answered socket, a refusal, a 101 the peer reset before it was
            # written), the per-IP count it took is given back: a leak would lock the address out.
            self._release()

    def answer(self, status: str, text: str, headers: tuple[tuple[str, str], ...] = ()) -> list[bytes]:
        """A refused handshake: the status, a short text body of the length declared, and the connection closed."""
        body = f"{text}\n".encode()
        self.start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", str(len(body))), *headers])
        self.close_connection = True
        return [body]

    def upgrade_websocket(self) -> list[bytes] | None:
        """Check an upgrade request ourselves, answering every bad one with a 4xx and a body.

        The library's checks answer `402 Bad Request` to HTTP/1.0, send 400/426 with a Content-Length of
        a body they never write (py3 str bodies), and fail a key that is not base64 with a 500.
        """
        environ = self.environ
        if (environ.get("REQUEST_METHOD", "") != "GET" or environ.get("HTTP_UPGRADE", "").lower() != "websocket"
                or "upgrade" not in environ.get("HTTP_CONNECTION", "").lower()):
            return super().upgrade_websocket()  # not a WebSocket request: the application answers it
        if self.request_version != "HTTP/1.1":
            return self.answer("400 Bad Request", "WebSocket upgrade needs HTTP/1.1")
        supported = (("Sec-WebSocket-Version", ", ".join(self.SUPPORTED_VERSIONS)),)
        version = environ.get("HTTP_SEC_WEBSOCKET_VERSION")
        if not version:
            return self.answer("426 Upgrade Required", "Sec-WebSocket-Version is missing", supported)
        if version not in self.SUPPORTED_VERSIONS:
            return self.answer("400 Bad Request", "Unsupported Sec-WebSocket-Version", supported)
        if not valid_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")):
            return self.answer("400 Bad Request", "Sec-WebSocket-Key must be 16 bytes in base64")
        return self.upgrade_connection()

    def upgrade_connection(self) -> list[bytes] | None:
        policy = self._policy()
        refusal = policy.refusal(self.environ) if policy is not None else None
        if refusal is not None:
            status, reason = refusal
            return self.answer(f"{status} {reason}", reason)
        if policy is not None:
            self._counted_ip = policy.open(self.environ)  # counted from here, so concurrent handshakes count too
        result = super().upgrade_connection()
        if getattr(self, "websocket", None) is None:
            self._release()
        websocket = getattr(self, "websocket", None)
        if websocket is not None and not isinstance(websocket, ChatWebSocket):
            websocket.closed = True  # never let the library's instance write a frame (its __del__ closes)
            max_bytes = policy.max_message_bytes if policy is not None else 65536
            chat = ChatWebSocket(self.environ, self, max_bytes)
            self.websocket = chat
            self.environ["wsgi.websocket"] = chat
        return result

    def run_websocket(self) -> None:
        """Serve the open socket from here, with the policy's route for its path, not through the WSGI app.

        Through the app, every socket would keep a Flask request context and the whole call stack of the
        app alive for as long as it stays open, idle or not; served from here it blocks in `recv` a few
        frames above the handler. The access log line (101, time open) is still written when it ends.
        """
        policy = self._policy()
        path = self.environ.get("PATH_INFO", "")
        serve = policy.routes.get(path) if policy is not None else None
        try:
            if serve is None:
                super().run_websocket()
                return
            ws = self.websocket
            self._forget_request()
            try:
                serve(ws, self.environ.get("REMOTE_ADDR", ""))
            except Exception:
                log.exception("request failed", extra={"path": path})
            finally:
                if not ws.closed:
                    ws.close()
                self.websocket = None
        finally:
            self._release()

    def _forget_request(self) -> None:
        """Keep of the handshake request only what the access line reads when the socket ends; read directly.

        The parsed headers (an email Message) and the full environ would otherwise stay alive with every open
        socket. `ACCESS_LOG_ENVIRON` holds what gunicorn's access line takes from the environ for the service's
        text and JSON formats (client, request line, path and query, user agent, referer); request and response
        headers are not kept for it.
        """
        environ = self.environ
        self.environ = {key: environ[key] for key in ACCESS_LOG_ENVIRON if key in environ}
        self.response_headers = ()  # the 101's, sent
        self.websocket.environ = self.environ
        self.websocket.take_over_reads(self.rfile)
        self.wsgi_input = NO_BODY  # pywsgi discards the rest of the request body when the response ends
        # The request line and headers as parsed (class defaults take their place), and the handler's own
        # attribute dict rebuilt at the size of what is left: a dict does not shrink when entries go.
        attributes = self.__dict__
        for name in REQUEST_ATTRIBUTES:
            attributes.pop(name, None)
        self.__dict__ = dict(attributes)

    def _release(self) -> None:
        policy, ip = self._policy(), self._counted_ip
        if policy is not None and ip is not None:
            self._counted_ip = None
            policy.release(ip)


def timed_tls_server(server_class: type, handshake_timeout: float) -> type:
    """`server_class` with the TLS handshake bounded by HANDSHAKE_TIMEOUT.

    gevent wraps each accepted socket in TLS before any handler runs, with no timeout: a client that opens
    TCP and never sends a ClientHello would hold its socket and greenlet forever. A failed or timed-out
    handshake closes the socket quietly (it is the client's problem, not a server error worth a traceback).
    """

    class TimedTLSServer(server_class):
        def wrap_socket_and_handle(self, client_socket: socket.socket, address: Any) -> Any:
            try:
                with gevent.Timeout(handshake_timeout, TimeoutError("TLS handshake timeout")):
                    tls_socket = self.wrap_socket(client_socket, **self.ssl_args)
            except (OSError, ValueError):  # ssl.SSLError and TimeoutError are OSErrors
                client_socket.close()
                return None
            try:
                return self.handle(tls_socket, address)
            finally:
                tls_socket.close()

    TimedTLSServer.__name__ = f"TimedTLS{server_class.__name__}"
    return TimedTLSServer
