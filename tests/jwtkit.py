"""Tokens and keys for tests of AUTH_MODE=jwt, generated at test time (nothing secret is committed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "test-secret-0123456789abcdef-0123456789abcdef"
AUDIENCE = "chat-test"
ISSUER = "https://issuer.test"

JWT_SETTINGS = {"AUTH_MODE": "jwt", "JWT_SECRET": SECRET, "JWT_AUDIENCE": AUDIENCE, "JWT_ISSUER": ISSUER,
                "JWT_LEEWAY": 5}


def claims(user_id: Any, ttl: float = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": str(user_id), "iat": now, "exp": now + int(ttl), "aud": AUDIENCE, "iss": ISSUER}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs256(user_id: Any, secret: str = SECRET, **extra: Any) -> str:
    return jwt.encode(claims(user_id, **extra), secret, algorithm="HS256")


def unsigned(user_id: Any, **extra: Any) -> str:
    """An `alg: none` token: header and claims, empty signature."""
    return jwt.encode(claims(user_id, **extra), None, algorithm="none")


def write_keypair(directory: Path, kind: str) -> tuple[Path, Any]:
    """A fresh RSA or P-256 key pair: (public PEM path, private key)."""
    private = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    path = directory / f"{kind}-public.pem"
    path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, private
