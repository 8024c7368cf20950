"""Who is calling, and the one policy that says what they may do with a session.

Every WebSocket handler and HTTP endpoint asks `session_access` (never its own if-chain), so the answer
and the order of the answers (not found, then not allowed, then closed) are the same everywhere, and a
user never learns anything about a session they may not see beyond "not allowed".
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from .errors import Problem, Refused
from .storage import SessionRecord, Storage

log = logging.getLogger(__name__)

MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller. `backend` is the legacy PHP application calling without a user (trust mode)."""

    user_id: int
    is_agent: bool = False
    backend: bool = False

    @property
    def role(self) -> str:
        return "agent" if self.is_agent else "customer"


BACKEND = Identity(user_id=0, is_agent=True, backend=True)


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


def session_access(identity: Identity, session: SessionRecord | None, need_open: bool = True) -> None:
    """Raise Refused with the Problem that forbids `identity` this session (spec precedence); None = allowed."""
    if session is None:
        raise Refused(Problem.SESSION_NOT_FOUND)
    if not (identity.is_agent or identity.user_id == session.user_id):
        raise Refused(Problem.FORBIDDEN)
    if need_open and not session.is_open:
        raise Refused(Problem.SESSION_CLOSED)


class TrustAuthenticator:
    """AUTH_MODE=trust, the legacy behaviour: the client's word is its identity; agents are the agents table."""

    mode = "trust"

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def websocket_identity(self, message: dict[str, Any]) -> Identity:
        user_id = parse_id(message.get("user_id"), Problem.MISSING_USER_ID, Problem.INVALID_USER_ID)
        return Identity(user_id=user_id, is_agent=self.storage.is_agent(user_id))

    def http_identity(self, headers: Any) -> Identity:
        """X-User-Id names the user; no header means the trusted legacy backend."""
        raw = headers.get("X-User-Id")
        if raw is None:
            return BACKEND
        user_id = parse_id(raw.strip(), Problem.UNAUTHENTICATED, Problem.INVALID_USER_ID_HEADER)
        return Identity(user_id=user_id, is_agent=self.storage.is_agent(user_id))
