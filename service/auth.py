"""Who is calling, and the one policy that says what they may do with a session.

Every WebSocket handler and HTTP endpoint asks `session_access` (never its own if-chain), so the answer
and the order of the answers (not found, then not allowed, then closed) are the same everywhere, and a
user never learns anything about a session they may not see beyond "not allowed".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import jwt

from .config import ConfigError
from .errors import Problem, Refused
from .fields import MAX_ID, id_is_missing, parse_id  # noqa: F401 (the id validators live in fields.py)
from .storage import SessionRecord, Storage, StorageError

log = logging.getLogger(__name__)


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


def agent_in_table(storage: Storage, user_id: int) -> bool:
    """Whether the agents table lists `user_id`; a database outage is 服务暂时不可用, never an internal error."""
    try:
        return storage.is_agent(user_id)
    except StorageError:
        raise Refused(Problem.STORAGE_DOWN) from None


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
        return Identity(user_id=user_id, is_agent=agent_in_table(self.storage, user_id))

    def http_identity(self, headers: Any) -> Identity:
        """X-User-Id names the user; no header means the trusted legacy backend."""
        raw = headers.get("X-User-Id")
        if raw is None:
            return BACKEND
        user_id = parse_id(raw.strip(), Problem.UNAUTHENTICATED, Problem.INVALID_USER_ID_HEADER)
        return Identity(user_id=user_id, is_agent=agent_in_table(self.storage, user_id))


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
        return Identity(user_id=user_id, is_agent=agent_claim or agent_in_table(self.storage, user_id))

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
