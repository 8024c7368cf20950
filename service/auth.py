"""Who is calling, and the one policy that says what they may do with a session.

Every WebSocket handler and HTTP endpoint asks `session_access` (never its own if-chain), so the answer
and the order of the answers (not found, then not allowed, then closed) are the same everywhere, and a
user never learns anything about a session they may not see beyond "not allowed".
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import gevent
import jwt

from .config import ConfigError
from .errors import Problem, Refused
from .fields import MAX_ID, id_is_missing, parse_id  # noqa: F401 (the id validators live in fields.py)
from .storage import SessionRecord, Storage, StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller. `backend` is the legacy PHP application calling without a user (trust mode).

    `agent_claim` is an agent role the caller's signed token grants (jwt mode): the identity provider's word,
    which the agents table cannot take back before the token expires.
    """

    user_id: int
    is_agent: bool = False
    backend: bool = False
    agent_claim: bool = False

    @property
    def role(self) -> str:
        return "agent" if self.is_agent else "customer"


BACKEND = Identity(user_id=0, is_agent=True, backend=True)


def agent_in_table(storage: Storage, user_id: int) -> bool:
    """Whether the agents table lists `user_id`; a database outage is 服务暂时不可用, never an internal error."""
    try:
        return storage.is_agent(user_id)
    except StorageError:
        raise Refused(Problem.STORAGE_DOWN) from None


AGENT_RECHECK_SECONDS = 3.0


class AgentDirectory:
    """Who is an agent, as this worker last read the agents table: at most `ttl` seconds old.

    An open WebSocket was authenticated once; its agent rights must still follow the table (`agent remove`
    takes them away on every worker within `ttl`). One query reads the whole table per worker per `ttl`
    (lazily, when a frame needs it), not one per user: the table holds the few hundred agents, the
    connections are thousands. A fresh look at one user (every `auth` makes one) wins over an older read
    of the table. If the table cannot be read, the last read stands (retried a second later): with the
    database down nothing can be stored, joined or assigned anyway.
    """

    RETRY_SECONDS = 1.0

    def __init__(self, storage: Storage, ttl: float = AGENT_RECHECK_SECONDS) -> None:
        self.storage = storage
        self.ttl = ttl
        self._agents: frozenset[int] = frozenset()
        self._read_at = float("-inf")  # monotonic time the last good read started
        self._next_try = float("-inf")
        self._reading = False
        self._seen: dict[int, tuple[bool, float]] = {}  # user id -> (agent, when looked at alone)

    def saw(self, user_id: int, is_agent: bool) -> None:
        """Record a fresh look at one user (newer than the table read, it wins until the next read)."""
        self._seen[user_id] = (is_agent, time.monotonic())

    def is_agent(self, user_id: int) -> bool:
        now = time.monotonic()
        if now - self._read_at > self.ttl and now >= self._next_try and not self._reading:
            self._reading = True
            try:
                # In a short-lived greenlet: the caller's (a connection's) would keep the query's deep stack.
                gevent.spawn(self._read, now).join()
            finally:
                self._reading = False
        seen = self._seen.get(user_id)
        if seen is not None and seen[1] >= self._read_at:
            return seen[0]
        return user_id in self._agents

    def _read(self, started: float) -> None:
        try:
            agents = frozenset(record.user_id for record in self.storage.list_agents())
        except Exception as exc:  # in a greenlet of its own: nothing above would see it
            self._next_try = started + self.RETRY_SECONDS
            log.warning("agents table unreadable; agent rights as last read",
                        exc_info=not isinstance(exc, StorageError))
            return
        self._agents, self._read_at = agents, started
        self._seen = {uid: entry for uid, entry in self._seen.items() if entry[1] >= started}


def session_access(identity: Identity, session: SessionRecord | None, need_open: bool = True) -> None:
    """Raise Refused with the Problem that forbids `identity` this session (spec precedence); None = allowed."""
    if session is None:
        raise Refused(Problem.SESSION_NOT_FOUND)
    if not (identity.is_agent or identity.user_id == session.user_id):
        raise Refused(Problem.FORBIDDEN)
    if need_open and not session.is_open:
        raise Refused(Problem.SESSION_CLOSED)


def current_identity(agents: AgentDirectory, identity: Identity) -> Identity:
    """`identity` with its agent rights as the agents table says now (within the directory's ttl)."""
    if identity.backend:
        return identity
    is_agent = identity.agent_claim or agents.is_agent(identity.user_id)
    return identity if is_agent == identity.is_agent else replace(identity, is_agent=is_agent)


class TrustAuthenticator:
    """AUTH_MODE=trust, the legacy behaviour: the client's word is its identity; agents are the agents table."""

    mode = "trust"

    def __init__(
        self, storage: Storage, agent_recheck: float = AGENT_RECHECK_SECONDS, backend_api_key: str = ""
    ) -> None:
        self.storage = storage
        self.agents = AgentDirectory(storage, agent_recheck)
        self.backend_api_key = backend_api_key.encode("utf-8")

    def websocket_identity(self, message: dict[str, Any]) -> Identity:
        user_id = parse_id(message.get("user_id"), Problem.MISSING_USER_ID, Problem.INVALID_USER_ID)
        is_agent = agent_in_table(self.storage, user_id)
        self.agents.saw(user_id, is_agent)
        return Identity(user_id=user_id, is_agent=is_agent)

    def current(self, identity: Identity) -> Identity:
        return current_identity(self.agents, identity)

    def http_identity(self, headers: Any) -> Identity:
        """X-User-Id names the user; no header means the trusted legacy backend (with BACKEND_API_KEY, if set)."""
        raw = headers.get("X-User-Id")
        if raw is None:
            self._check_backend_key(headers)
            return BACKEND
        user_id = parse_id(raw.strip(), Problem.UNAUTHENTICATED, Problem.INVALID_USER_ID_HEADER)
        return Identity(user_id=user_id, is_agent=agent_in_table(self.storage, user_id))

    def _check_backend_key(self, headers: Any) -> None:
        """With BACKEND_API_KEY set, the backend proves it is the backend (`Authorization: Bearer KEY` or
        `X-Api-Key: KEY`): a cross-site page can make a browser send no X-User-Id, but not this header."""
        if not self.backend_api_key:
            return
        presented = headers.get("X-Api-Key")
        if presented is None:
            scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
        if not presented:
            raise Refused(Problem.UNAUTHENTICATED)
        # WSGI headers are latin-1 text: encoding back gives the bytes sent, compared in constant time.
        if not hmac.compare_digest(presented.strip().encode("latin-1", "replace"), self.backend_api_key):
            log.info("backend api key refused")
            raise Refused(Problem.AUTH_FAILED)


class JwtAuthenticator:
    """AUTH_MODE=jwt: the caller is the subject of a signed token; the client's own word is not taken.

    Algorithms are pinned by the configured keys, never by the token: HS256 only with JWT_SECRET, RS256 or
    ES256/384/512 only with a JWT_PUBLIC_KEY of the matching type; `none` and HS-with-a-public-key are
    impossible because each algorithm is tied to exactly one key. `exp` and `sub` are required: a token
    without an expiry would be a password that never changes.
    """

    mode = "jwt"

    def __init__(self, settings: Any, storage: Storage) -> None:
        self.storage = storage
        self.agents = AgentDirectory(storage, settings.agent_recheck_seconds)
        self.audience = settings.jwt_audience or None
        self.issuer = settings.jwt_issuer or None
        self.leeway = settings.jwt_leeway
        self.keys: dict[str, Any] = {}
        if settings.jwt_secret:
            self.keys["HS256"] = settings.jwt_secret.encode("utf-8")
        if settings.jwt_public_key:
            algorithm, key = load_public_key(settings.jwt_public_key)
            self.keys[algorithm] = key
        if not self.keys:
            raise ConfigError("AUTH_MODE=jwt needs JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256/ES256).")

    def verify(self, token: Any) -> tuple[int, bool]:
        """(user id, agent by claim) from a valid token; Refused(AUTH_FAILED) for anything else."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise Refused(Problem.AUTH_FAILED)
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            key = self.keys.get(algorithm) if isinstance(algorithm, str) else None
            if key is None:
                raise jwt.InvalidAlgorithmError(f"algorithm {algorithm!r} not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None, "verify_sub": False},
            )
        except jwt.PyJWTError as exc:
            log.info("token refused: %s", exc)
            raise Refused(Problem.AUTH_FAILED) from None
        try:
            user_id = parse_id(claims.get("sub"), Problem.AUTH_FAILED, Problem.AUTH_FAILED)
        except Refused:
            log.info("token refused: sub is not a user id")
            raise
        role = claims.get("role")
        return user_id, role == "agent" or (isinstance(role, list) and "agent" in role)

    def _identity(self, user_id: int, agent_claim: bool) -> Identity:
        if agent_claim:
            return Identity(user_id=user_id, is_agent=True, agent_claim=True)
        in_table = agent_in_table(self.storage, user_id)
        self.agents.saw(user_id, in_table)
        return Identity(user_id=user_id, is_agent=in_table)

    def current(self, identity: Identity) -> Identity:
        return current_identity(self.agents, identity)

    def websocket_identity(self, message: dict[str, Any]) -> Identity:
        """`token` is required; a `user_id` beside it must name the token's subject."""
        user_id, agent_claim = self.verify(message.get("token"))
        claimed = message.get("user_id")
        if claimed is not None:
            try:
                if parse_id(claimed, Problem.AUTH_FAILED, Problem.AUTH_FAILED) != user_id:
                    raise Refused(Problem.AUTH_FAILED)
            except Refused:
                log.info("token refused: user_id %r is not the token's subject", claimed)
                raise
        return self._identity(user_id, agent_claim)

    def http_identity(self, headers: Any) -> Identity:
        """`Authorization: Bearer TOKEN`; X-User-Id means nothing here and there is no backend exception."""
        raw = headers.get("Authorization")
        if raw is None or not raw.strip():
            raise Refused(Problem.UNAUTHENTICATED)
        scheme, _, token = raw.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Refused(Problem.AUTH_FAILED)
        return self._identity(*self.verify(token.strip()))


MAX_TOKEN_CHARS = 8192
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def load_public_key(path: str) -> tuple[str, Any]:
    """The algorithm a PEM public key (or certificate) verifies, and the key; ConfigError naming the file."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = open(path, "rb").read()
        key = x509.load_pem_x509_certificate(data).public_key() if b"CERTIFICATE" in data else load_pem_public_key(data)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY={path} is not a readable PEM public key ({type(exc).__name__})") from None
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        return _EC_ALGORITHMS[key.curve.name], key
    raise ConfigError(f"JWT_PUBLIC_KEY={path} must be an RSA or P-256/P-384/P-521 EC public key")


def mint_token(settings: Any, user_id: int, agent: bool = False, ttl: float = 3600) -> str:
    """An HS256 token for `user_id` with the configured secret, audience and issuer (tests, backends)."""
    if not settings.jwt_secret:
        raise ConfigError("minting tokens needs JWT_SECRET (HS256); RS256/ES256 tokens come from your identity "
                          "provider, which holds the private key")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": str(user_id), "iat": now, "exp": now + int(ttl)}
    if agent:
        claims["role"] = "agent"
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret.encode("utf-8"), algorithm="HS256")
