"""What the registry needs from a blob store, whichever backend stores the bytes.

An upload session's bytes are written through an `UploadWriter`. The writer's `commit` returns an opaque
store state, which the metadata database keeps beside the upload's size and SHA-256 state. A later request
on any node reopens the upload from that state, so no upload lives in one process's memory.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Protocol


class UploadWriter(Protocol):
    """The bytes of one upload session, opened by one request; its methods run on a worker thread."""

    size: int

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` to the upload."""

    def commit(self) -> bytes | None:
        """Make every byte written so far durable and return the store state to save with the upload."""

    def release(self) -> None:
        """Delete what the previous store state needed and the new one does not; call after saving it."""

    def seal(self) -> None:
        """Make the whole upload readable as one piece, for hashing and placing; the last step of a push."""

    def hash(self, algorithm: str) -> str:
        """Return `<algorithm>:<hex>` of the sealed upload, for digests other than the streamed SHA-256."""

    def place(self, digest: str) -> None:
        """Make blob `digest` exist from the sealed upload, unless it exists already; safe to call again."""

    def discard(self) -> None:
        """Delete every byte of the upload."""


class BlobStore(Protocol):
    """Content-addressed blobs and in-progress uploads of one region."""

    def open_upload(self, upload_id: str, size: int, state: bytes | None) -> UploadWriter:
        """Reopen upload `upload_id`, which contains `size` committed bytes, from its saved store state."""

    def blob_exists(self, digest: str) -> bool:
        """Return whether the bytes of blob `digest` are in the store."""

    def local_path(self, digest: str) -> str | None:
        """Return the blob's file, when the server can send it from a local file system."""

    def redirect_url(self, digest: str) -> str | None:
        """Return a URL that clients may download the blob from directly, when redirects are configured."""

    def read_range(self, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes `start` to `end` inclusive of blob `digest`."""

    def trash_blob(self, digest: str) -> str | None:
        """Move a blob out of reach before deleting it; return a trash handle, or None if it was gone."""

    def restore_blob(self, trash: str, digest: str) -> None:
        """Put a trashed blob back; a copy placed meanwhile by a push has the same bytes."""

    def purge_trash(self, trash: str) -> None:
        """Delete a trashed blob for good."""

    def trash_leftovers(self) -> Iterator[tuple[str, str, float]]:
        """List trashed blobs as (trash handle, digest, Unix seconds when trashed)."""

    def list_blobs(self) -> Iterator[tuple[str, float, int]]:
        """List every stored blob as (digest, last change in Unix seconds, bytes)."""

    def upload_leftovers(self) -> Iterator[tuple[str, float, int]]:
        """List upload data in the store as (upload id, last change in Unix seconds, bytes)."""

    def delete_upload_data(self, upload_id: str) -> None:
        """Delete every piece of upload `upload_id` in the store, whether or not its state is known."""

    def check(self) -> None:
        """Raise `StorageError` with a message naming the fix when the store cannot be used."""


class StorageError(RuntimeError):
    """A blob store is misconfigured or unreachable; the message names the store and the fix."""


def trash_name(digest: str) -> str:
    """Return a new, unique trash entry name for blob `digest`: `<algorithm>-<hex>.<pid>.<random>`."""
    return f"{digest.replace(':', '-')}.{os.getpid()}.{os.urandom(4).hex()}"


def trash_digest(name: str) -> str:
    """Return the digest of a trash entry named `<algorithm>-<hex>.<pid>.<random>`."""
    return name.split(".", 1)[0].replace("-", ":", 1)
