"""Signed JWTs for the Docker token flow: short-lived access tokens and long-lived refresh tokens.

Tokens are ES256-signed with a key kept in the data directory. Access tokens carry the spec's `access`
claim and are verified in-process without a database round trip; verified tokens are cached until expiry.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crpe.auth.scopes import Scope

log = logging.getLogger("crpe.auth.tokens")

ISSUER = "crpe"
_ALGORITHM = "ES256"
_CACHE_MAX_ENTRIES = 50_000


@dataclass(frozen=True)
class AccessClaims:
    subject: str  # Login name of the principal, "" for an anonymous token.
    account_id: str
    sub_user_id: str
    instance_id: str
    audience: str
    expires_at: float
    access: tuple[Scope, ...]

    @property
    def anonymous(self) -> bool:
        return not self.subject

    def allows(self, resource_type: str, name: str, action: str) -> bool:
        return any(scope.type == resource_type and scope.name == name and action in scope.actions
                   for scope in self.access)


@dataclass(frozen=True)
class RefreshClaims:
    subject: str
    account_id: str
    sub_user_id: str
    instance_id: str
    audience: str
    password_generation: int


@dataclass(frozen=True)
class TemporaryClaims:
    account_id: str
    sub_user_id: str
    instance_id: str
    expires_at: int


# Audience of temporary credentials: they are passwords for the token endpoint, never bearer tokens.
TEMPORARY_AUDIENCE = "crpe-temporary-credential"
TEMPORARY_CREDENTIAL_SECONDS = 3600


class InvalidToken(Exception):
    """A token failed verification; the message gives the reason without echoing the token."""


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} does not contain an EC private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return key


class TokenService:
    def __init__(self, key: ec.EllipticCurvePrivateKey, ttl_seconds: int, refresh_ttl_seconds: int) -> None:
        self._key = key
        self._public_key = key.public_key()
        der = self._public_key.public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = base64.b32encode(hashlib.sha256(der).digest()[:15]).decode()
        self.ttl_seconds = ttl_seconds
        self.refresh_ttl_seconds = refresh_ttl_seconds
        self._verified: dict[str, AccessClaims] = {}
        self._foreign_key_ids: set[str] = set()

    def issue_access(self, subject: str, account_id: str, sub_user_id: str, instance_id: str, audience: str,
                     access: list[Scope]) -> tuple[str, int]:
        issued = int(time.time())
        claims = {
            "iss": ISSUER, "sub": subject, "aud": audience, "iat": issued, "nbf": issued - 5,
            "exp": issued + self.ttl_seconds, "jti": secrets.token_urlsafe(12),
            "access": [scope.claim() for scope in access],
            "crpe": {"account": account_id, "sub_user": sub_user_id, "instance": instance_id},
        }
        return self._sign(claims), issued

    def issue_refresh(self, subject: str, account_id: str, sub_user_id: str, instance_id: str, audience: str,
                      password_generation: int) -> str:
        issued = int(time.time())
        claims = {
            "iss": ISSUER, "sub": subject, "aud": audience, "iat": issued,
            "exp": issued + self.refresh_ttl_seconds, "jti": secrets.token_urlsafe(12), "typ": "refresh",
            "crpe": {"account": account_id, "sub_user": sub_user_id, "instance": instance_id,
                     "generation": password_generation},
        }
        return self._sign(claims)

    def issue_temporary(self, subject: str, account_id: str, sub_user_id: str, instance_id: str
                        ) -> tuple[str, int]:
        """Issue a one-hour registry password that carries the caller's identity, not a copy of its rights."""
        issued = int(time.time())
        expires = issued + TEMPORARY_CREDENTIAL_SECONDS
        claims = {
            "iss": ISSUER, "sub": subject, "aud": TEMPORARY_AUDIENCE, "iat": issued, "exp": expires,
            "jti": secrets.token_urlsafe(12), "typ": "temporary",
            "crpe": {"account": account_id, "sub_user": sub_user_id, "instance": instance_id},
        }
        return self._sign(claims), expires

    def verify_temporary(self, token: str) -> TemporaryClaims:
        payload = self._decode(token, TEMPORARY_AUDIENCE)
        if payload.get("typ") != "temporary":
            raise InvalidToken("not a temporary credential")
        extra = payload.get("crpe") or {}
        return TemporaryClaims(str(extra.get("account", "")), str(extra.get("sub_user", "")),
                               str(extra.get("instance", "")), int(payload["exp"]))

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM, headers={"kid": self.key_id})

    def _decode(self, token: str, audience: str) -> dict[str, Any]:
        try:
            return jwt.decode(token, self._public_key, algorithms=[_ALGORITHM], audience=audience,
                              issuer=ISSUER, leeway=5, options={"require": ["exp", "aud", "sub", "iss"]})
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired; request a new one") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token was issued for another registry endpoint") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken(self._signature_problem(token)) from None
        except jwt.PyJWTError as error:
            raise InvalidToken(f"the token is invalid: {error}") from None

    def _signature_problem(self, token: str) -> str:
        try:
            key_id = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            key_id = None
        if key_id and key_id != self.key_id:
            if len(self._foreign_key_ids) < 100 and key_id not in self._foreign_key_ids:
                self._foreign_key_ids.add(key_id)  # Logged once per key, not once per request.
                log.warning("token signed by another key", extra={"auth.token.kid": str(key_id)[:64],
                                                                   "auth.key.id": self.key_id})
            return (f"the token was signed with key {str(key_id)[:64]}, but this server verifies with key "
                    f"{self.key_id}; every node of a deployment must use the same token_key_file")
        return "the token's signature is invalid; request a new token"

    def verify_access(self, token: str, audience: str) -> AccessClaims:
        cached = self._verified.get(token)
        if cached is not None:
            if cached.audience != audience:
                raise InvalidToken("the token was issued for another registry endpoint")
            if cached.expires_at > time.time():
                return cached
            del self._verified[token]
            raise InvalidToken("the token has expired; request a new one")
        payload = self._decode(token, audience)
        if payload.get("typ") == "refresh":
            raise InvalidToken("a refresh token cannot authorize registry requests; exchange it for an "
                               "access token at the token endpoint")
        extra = payload.get("crpe") or {}
        access = tuple(Scope(str(item.get("type")), str(item.get("name")), frozenset(item.get("actions") or ()))
                       for item in payload.get("access") or [] if isinstance(item, dict))
        claims = AccessClaims(str(payload["sub"]), str(extra.get("account", "")), str(extra.get("sub_user", "")),
                              str(extra.get("instance", "")), audience, float(payload["exp"]), access)
        if len(self._verified) >= _CACHE_MAX_ENTRIES:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def verify_refresh(self, token: str, audience: str) -> RefreshClaims:
        payload = self._decode(token, audience)
        if payload.get("typ") != "refresh":
            raise InvalidToken("the refresh_token is not a refresh token")
        extra = payload.get("crpe") or {}
        return RefreshClaims(str(payload["sub"]), str(extra.get("account", "")), str(extra.get("sub_user", "")),
                             str(extra.get("instance", "")), audience, int(extra.get("generation", 0)))
