"""One log line per event: readable text, or JSON lines with LOG_FORMAT=json.

Fields passed with `extra=` (connection_id, user_id, session_id...) appear in both. Message content is
never logged at INFO or above. gunicorn's own error and access logs go through the same formatters (see
`logconfig_dict` in gunicorn.conf.py), so a JSON deployment gets JSON lines only.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .config import Settings

CONTEXT_FIELDS = ("connection_id", "user_id", "session_id", "remote_addr", "origin", "path", "worker")

# gunicorn's access log passes its atoms as the record's args: (atom, field name in a JSON line).
ACCESS_FIELDS = (("h", "remote_addr"), ("m", "method"), ("U", "path"), ("q", "query"), ("s", "status"),
                 ("B", "bytes"), ("M", "duration_ms"), ("a", "user_agent"))


# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators, as \xNN / \uNNNN in text lines:
# a request line or header is the client's text, and raw ESC bytes in a log are terminal escape sequences.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {c: f"\\u{c:04x}" for c in (0x2028, 0x2029)}


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape, so one record stays one inert line."""
    return text.translate(_CONTROL)


def _access_fields(record: logging.LogRecord) -> dict[str, Any]:
    if record.name != "gunicorn.access" or not hasattr(record.args, "get"):
        return {}
    atoms: Any = record.args
    out: dict[str, Any] = {}
    for atom, name in ACCESS_FIELDS:
        value = atoms.get(atom)
        if value in (None, "-", ""):
            continue
        if name in ("status", "bytes", "duration_ms"):
            try:
                value = int(value)
            except (TypeError, ValueError):
                pass
        out[name] = value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        entry.update(_access_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # The message (with its args) and the context fields are escaped; a traceback keeps its lines.
        escaped = logging.makeLogRecord(record.__dict__)
        escaped.msg, escaped.args = escape_controls(record.getMessage()), None
        line = super().format(escaped)
        context = " ".join(
            f"{name}={escape_controls(str(getattr(record, name)))}" for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        )
        return f"{line} {context}" if context else line


class ChatStreamHandler(logging.StreamHandler):
    """The root handler of the service (stderr; the log file when daemonized), found again by class."""


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(settings: Settings) -> None:
    """Configure the root logger once per process (under gunicorn, logconfig_dict already did it)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, ChatStreamHandler)), None)
    if handler is None:
        handler = ChatStreamHandler()
        root.addHandler(handler)
    handler.setFormatter(formatter_for(settings.log_format))
    root.setLevel(settings.log_level.upper())


def gunicorn_logconfig(log_format: str, log_level: str) -> dict[str, Any]:
    """`logconfig_dict` for gunicorn: its error and access loggers and the root share one handler and format.

    Everything goes to stderr: the terminal in the foreground; with `--daemon --capture-output` gunicorn points
    stderr at the log file. Propagation is off so no line is written twice.
    """
    formatter = "service.logs.JsonFormatter" if log_format == "json" else "service.logs.TextFormatter"
    level = log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"chat": {"()": formatter}},
        "handlers": {
            "chat": {"class": "service.logs.ChatStreamHandler", "formatter": "chat", "stream": "ext://sys.stderr"},
        },
        "root": {"level": level, "handlers": ["chat"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["chat"], "propagate": False},
            # Access lines are INFO: LOG_LEVEL=warning silences them like every other routine line.
            "gunicorn.access": {"level": level, "handlers": ["chat"], "propagate": False},
            # gevent-websocket's debug chatter off; its warnings reach the root handler.
            "geventwebsocket.handler": {"level": "WARNING"},
        },
    }
