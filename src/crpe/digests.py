"""Content digests (`algorithm:encoded`) as the OCI image spec defines them: sha256 and sha512."""

from __future__ import annotations

import hashlib
import pickle
import re
from typing import Any

import rehash

from crpe.errors import DigestInvalid

# Hex lengths fixed by the OCI image spec's registered algorithms.
ENCODED_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_PATTERN = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def is_digest(value: str) -> bool:
    """Tell a digest reference from a tag: only digests contain a colon."""
    return ":" in value


def parse_digest(value: str) -> tuple[str, str]:
    """Split and validate a digest; raise DIGEST_INVALID naming what is wrong."""
    if not _DIGEST_PATTERN.match(value):
        raise DigestInvalid(f"{value!r} is not a digest: expected algorithm:hex, for example sha256:<64 hex>",
                            detail={"digest": value})
    algorithm, encoded = value.split(":", 1)
    if algorithm not in ENCODED_LENGTH:
        raise DigestInvalid(f"digest algorithm {algorithm!r} is not supported: use sha256 or sha512",
                            detail={"digest": value})
    if len(encoded) != ENCODED_LENGTH[algorithm] or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise DigestInvalid(f"digest {value!r} is invalid: {algorithm} takes {ENCODED_LENGTH[algorithm]} "
                            "lower-case hex characters", detail={"digest": value})
    return algorithm, encoded


def compute(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class ResumableHash:
    """A SHA-256 whose state survives between requests and processes (pickled with `rehash`)."""

    def __init__(self, state: bytes | None = None) -> None:
        self._hash: Any = pickle.loads(state) if state else rehash.sha256()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def state(self) -> bytes:
        return pickle.dumps(self._hash)

    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"
