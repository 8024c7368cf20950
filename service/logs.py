"""One log line per event: readable text, or JSON lines with LOG_FORMAT=json.

Fields passed with `extra=` (connection_id, user_id, session_id...) appear in both. Message content is
never logged at INFO or above.
"""

from __future__ import annotations

import json
import logging
import time

from .config import Settings

CONTEXT_FIELDS = ("connection_id", "user_id", "session_id", "remote_addr", "origin", "path", "worker")


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
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, None) is not None
        )
        return f"{line} {context}" if context else line


def configure_logging(settings: Settings) -> None:
    """Configure the root logger once per process (gunicorn's own loggers keep their handlers)."""
    root = logging.getLogger()
    formatter = JsonFormatter() if settings.log_format == "json" else TextFormatter()
    handler = next((h for h in root.handlers if getattr(h, "chat_handler", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.chat_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(formatter)
    root.setLevel(settings.log_level.upper())
