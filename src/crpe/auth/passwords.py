"""Argon2 hashing for login passwords and access key secrets, with a short-lived cache of successes.

An argon2 verification costs tens of milliseconds by design. Clients such as skopeo send Basic credentials
on every token request, so a success is remembered for `CACHE_SECONDS`, keyed by an HMAC of the hash and the
password under a per-process random key. The cache contains no password, and a changed hash misses it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

CACHE_SECONDS = 60
_CACHE_MAX_ENTRIES = 10_000

# argon2id with OWASP's recommended minimum (19 MiB, 2 iterations, 1 lane). The library default takes 64 MiB
# per verification, which would dominate a worker's peak memory during login bursts. Hashes encode their
# own parameters, so older hashes still verify.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_cache_key = secrets.token_bytes(32)
_verified: dict[bytes, float] = {}


def new_access_key() -> tuple[str, str]:
    """Return a new access key id and secret (240 random bits)."""
    return "CRPE" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(secret_hash: str, secret: str) -> bool:
    key = hmac.new(_cache_key, f"{secret_hash}\0{secret}".encode(), hashlib.sha256).digest()
    expires = _verified.get(key)
    if expires is not None and expires > time.monotonic():
        return True
    try:
        _hasher.verify(secret_hash, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    if len(_verified) >= _CACHE_MAX_ENTRIES:
        _verified.clear()
    _verified[key] = time.monotonic() + CACHE_SECONDS
    return True
