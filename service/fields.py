"""Validators of client input that HTTP and WebSocket share: ids, cursors, message content, client_msg_id, and
the text of a whole decoded JSON document. One place, so a value is refused the same way on both.

Each raises Refused(Problem...) with the problem the spec gives for that field; the caller keeps the spec's
precedence by calling them in its order.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import Problem, Refused

MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")


def id_is_missing(value: Any) -> bool:
    """Missing, null, empty or zero: the legacy "missing" answer (a boolean is never missing, only invalid)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return value == "" or (_DIGITS.fullmatch(value) is not None and not value.strip("0"))
    return value is None or (isinstance(value, int | float) and value == 0)


def parse_id(value: Any, missing: Problem, invalid: Problem) -> int:
    """An id from JSON: an integer or a string of ASCII digits, from 1 to 2**63-1.

    Raises Refused(missing) for a missing id and Refused(invalid) for anything else that is not an id
    (negative, fractional, boolean, letters, objects).
    """
    if id_is_missing(value):
        raise Refused(missing)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value) and len(value.lstrip("0")) <= 19:
        number = int(value)
    else:
        raise Refused(invalid)
    if not 0 < number <= MAX_ID:
        raise Refused(invalid)
    return number


def cursor(value: Any, invalid: Problem) -> int:
    """A position from JSON (`last_message_id`): an integer or a string of ASCII digits, 0 to 2**63-1."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value.lstrip("0")) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise Refused(invalid)
    return value


def query_int(raw: str | None, default: int, lo: int, hi: int) -> int:
    """An integer query parameter (`limit`, `after_id`, `before_id`): ASCII digits within [lo, hi]."""
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not lo <= int(raw) <= hi:
        raise Refused(Problem.INVALID_PARAMETER)
    return int(raw)


def encodable(text: str) -> bool:
    """Whether `text` has a UTF-8 form. A lone surrogate escape ("\\ud800") is valid JSON and decodes to a str
    that has none: it could be neither stored nor sent to anyone."""
    if text.isascii():  # O(1) in CPython
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require_encodable(document: Any, raw: str | bytes | None = None) -> None:
    """Refuse (消息格式错误) a decoded JSON document with a key or string that has no UTF-8 form.

    `raw`, the text it was decoded from: without a `\\u` escape in it no string can hold a surrogate, and the
    walk is skipped (the common case).
    """
    if raw is not None and (b"\\u" if isinstance(raw, bytes | bytearray) else "\\u") not in raw:
        return
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not encodable(item):
                raise Refused(Problem.BAD_FORMAT)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def is_blank(value: Any) -> bool:
    """Absent, null or only whitespace: the "missing content" answer."""
    return value is None or (isinstance(value, str) and not value.strip())


def message_content(value: Any, limit: int) -> str:
    """Validated content: a string of at most `limit` characters that can be stored (UTF-8)."""
    if not isinstance(value, str):
        raise Refused(Problem.INVALID_CONTENT)
    if len(value) > limit:
        raise Refused(Problem.CONTENT_TOO_LONG)
    if not encodable(value):
        raise Refused(Problem.BAD_FORMAT)
    return value


def client_message_id(value: Any) -> str | None:
    """Validated client_msg_id: absent, or 1 to 64 characters that can be stored (UTF-8)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise Refused(Problem.INVALID_CLIENT_MSG_ID)
    if not encodable(value):
        raise Refused(Problem.BAD_FORMAT)
    return value
