"""The local filesystem blob store.

Layout under a region's root, computed by `FilesystemBlobStore.blob_path`:

    <root>/
      blobs/<algorithm>/<first two hex characters>/<hex>   content, immutable once renamed into place
      uploads/<upload id>                                  bytes received so far for one upload session
      trash/<random>                                       blobs garbage collection is about to delete

A blob file appears under `blobs/` only as a hard link to an upload file whose bytes are fsynced and whose
digest is verified, so a crash leaves at most an orphaned upload file, never a partial blob.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

# Reads of a blob range are sent in pieces of this size, so memory stays flat for any blob.
READ_CHUNK_BYTES = 1024 * 1024


class FilesystemBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "uploads").mkdir(parents=True, exist_ok=True)
        (root / "trash").mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        algorithm, encoded = digest.split(":", 1)
        return self.root / "blobs" / algorithm / encoded[:2] / encoded

    def upload_path(self, upload_id: str) -> Path:
        return self.root / "uploads" / upload_id

    def create_upload(self, upload_id: str) -> None:
        self.upload_path(upload_id).touch(exist_ok=False)

    def upload_size(self, upload_id: str) -> int | None:
        try:
            return self.upload_path(upload_id).stat().st_size
        except FileNotFoundError:
            return None

    def write_upload(self, upload_id: str, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `offset` of the upload file; called from a worker thread."""
        fd = os.open(self.upload_path(upload_id), os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
        finally:
            os.close(fd)

    def sync_upload(self, upload_id: str, size: int) -> None:
        """Make the first `size` bytes durable and drop anything a failed request wrote past them."""
        fd = os.open(self.upload_path(upload_id), os.O_WRONLY)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def hash_upload(self, upload_id: str, algorithm: str) -> str:
        """Hash the upload file from disk, for digests other than the streamed SHA-256."""
        hasher = hashlib.new(algorithm)
        with open(self.upload_path(upload_id), "rb") as file:
            while chunk := file.read(READ_CHUNK_BYTES):
                hasher.update(chunk)
        return f"{algorithm}:{hasher.hexdigest()}"

    def place_blob(self, upload_id: str, digest: str) -> None:
        """Make blob `digest` exist, hard-linking the verified, fsynced upload file if it is missing.

        The upload file stays until the caller deletes it, so the caller can place the blob again after
        recording it, in case garbage collection moved an older copy away in between.
        """
        target = self.blob_path(digest)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.upload_path(upload_id), target)
        except FileExistsError:
            return  # Another push of the same content placed it first.
        _fsync_directory(target.parent)

    def trash_blob(self, digest: str) -> Path | None:
        """Move a blob out of reach before deleting it; return where it went, or None if it was gone."""
        trash = self.root / "trash" / f"{digest.replace(':', '-')}.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            os.rename(self.blob_path(digest), trash)
        except FileNotFoundError:
            return None
        return trash

    def restore_blob(self, trash: Path, digest: str) -> None:
        """Put a trashed blob back; a copy placed meanwhile by a push has the same bytes."""
        target = self.blob_path(digest)
        try:
            os.link(trash, target)
        except FileExistsError:
            pass
        trash.unlink()

    def upload_ids(self) -> list[str]:
        return [entry.name for entry in os.scandir(self.root / "uploads")]

    def upload_mtime(self, upload_id: str) -> float | None:
        try:
            return self.upload_path(upload_id).stat().st_mtime
        except FileNotFoundError:
            return None

    def delete_upload(self, upload_id: str) -> None:
        self.upload_path(upload_id).unlink(missing_ok=True)

    def delete_blob(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)

    async def read_range(self, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes `start` to `end` inclusive of a blob."""
        with open(self.blob_path(digest), "rb") as file:
            position = start
            while position <= end:
                length = min(READ_CHUNK_BYTES, end - position + 1)
                chunk = await anyio.to_thread.run_sync(os.pread, file.fileno(), length, position)
                if not chunk:
                    return
                position += len(chunk)
                yield chunk


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
