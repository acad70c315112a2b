"""Content digests (`algorithm:encoded`) as the OCI image spec defines them: sha256 and sha512."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import re

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
    """A SHA-256 whose state survives between requests and processes.

    OpenSSL's low-level SHA256_Init/Update/Final keep their whole state in a plain SHA256_CTX struct (112
    bytes in OpenSSL 1.1 and 3.x), so the state is saved as those raw bytes and resumed in any process, at
    the same speed as hashlib. ctypes releases the GIL during each update.
    """

    def __init__(self, state: bytes | None = None) -> None:
        library = _libcrypto()
        self._context = ctypes.create_string_buffer(_CONTEXT_BYTES)
        if state:
            if len(state) != _CONTEXT_BYTES:
                raise ValueError("saved SHA-256 state has the wrong size")
            ctypes.memmove(self._context, state, _CONTEXT_BYTES)
        else:
            library.SHA256_Init(self._context)

    def update(self, data: bytes | bytearray) -> None:
        if not data:
            return
        buffer = data if isinstance(data, bytes) else (ctypes.c_char * len(data)).from_buffer(data)
        _libcrypto().SHA256_Update(self._context, buffer, ctypes.c_size_t(len(data)))

    def state(self) -> bytes:
        return self._context.raw

    def digest(self) -> str:
        copy = ctypes.create_string_buffer(self._context.raw, _CONTEXT_BYTES)
        output = ctypes.create_string_buffer(32)
        _libcrypto().SHA256_Final(output, copy)
        return f"sha256:{output.raw.hex()}"


# sizeof(SHA256_CTX) is 112 bytes; 128 leaves headroom should a build pad the struct.
_CONTEXT_BYTES = 128


@functools.cache
def _libcrypto() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypto")
    if name is None:
        raise RuntimeError("libcrypto (OpenSSL) was not found; install the libssl3 package")
    library = ctypes.CDLL(name)
    for symbol in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
        if not hasattr(library, symbol):
            raise RuntimeError(f"{name} does not export {symbol}; crpe needs OpenSSL 1.1 or 3.x")
    return library
