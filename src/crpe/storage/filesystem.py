"""The local filesystem blob store.

Layout under a region's root, computed by `FilesystemBlobStore.blob_path`:

    <root>/
      blobs/<algorithm>/<first two hex characters>/<hex>   content, immutable once renamed into place
      uploads/<upload id>                                  bytes received so far for one upload session
      trash/<algorithm>-<hex>.<pid>.<random>               blobs garbage collection is about to delete

A blob file appears under `blobs/` only as a hard link to an upload file whose bytes are fsynced and whose
digest is verified, so a crash leaves at most an orphaned upload file, never a partial blob.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio

from crpe.storage.base import StorageError, trash_digest, trash_name

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

    def open_upload(self, upload_id: str, size: int, state: bytes | None) -> FilesystemUpload:
        return FilesystemUpload(self, upload_id, size)

    def blob_exists(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def local_path(self, digest: str) -> str | None:
        return str(self.blob_path(digest))

    def redirect_url(self, digest: str) -> str | None:
        return None

    def trash_blob(self, digest: str) -> str | None:
        trash = self.root / "trash" / trash_name(digest)
        try:
            os.rename(self.blob_path(digest), trash)
        except FileNotFoundError:
            return None
        return str(trash)

    def restore_blob(self, trash: str, digest: str) -> None:
        target = self.blob_path(digest)
        try:
            os.link(trash, target)
        except FileExistsError:
            pass
        os.unlink(trash)

    def purge_trash(self, trash: str) -> None:
        Path(trash).unlink(missing_ok=True)

    def trash_leftovers(self) -> Iterator[tuple[str, str, float]]:
        for entry in os.scandir(self.root / "trash"):
            try:
                trashed = entry.stat().st_ctime  # The rename into trash/ sets ctime, not mtime.
            except FileNotFoundError:
                continue
            yield entry.path, trash_digest(entry.name), trashed

    def list_blobs(self) -> Iterator[tuple[str, float, int]]:
        for algorithm in os.scandir(self.root / "blobs"):
            for folder in os.scandir(algorithm.path):
                for entry in os.scandir(folder.path):
                    try:
                        status = entry.stat()
                    except FileNotFoundError:
                        continue
                    yield f"{algorithm.name}:{entry.name}", status.st_mtime, status.st_size

    def upload_leftovers(self) -> Iterator[tuple[str, float, int]]:
        for entry in os.scandir(self.root / "uploads"):
            try:
                status = entry.stat()
            except FileNotFoundError:
                continue
            yield entry.name, status.st_mtime, status.st_size

    def delete_upload_data(self, upload_id: str) -> None:
        self.upload_path(upload_id).unlink(missing_ok=True)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"blob store directory {self.root} is not writable by this user; fix its owner "
                               "or set the region's storage to another directory")

    async def read_range(self, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
        with open(self.blob_path(digest), "rb") as file:
            position = start
            while position <= end:
                length = min(READ_CHUNK_BYTES, end - position + 1)
                chunk = await anyio.to_thread.run_sync(os.pread, file.fileno(), length, position)
                if not chunk:
                    return
                position += len(chunk)
                yield chunk


class FilesystemUpload:
    """An upload file written at explicit offsets; bytes past the committed size are a failed request's."""

    def __init__(self, store: FilesystemBlobStore, upload_id: str, size: int) -> None:
        self.store = store
        self.upload_id = upload_id
        self.size = size
        self.path = store.upload_path(upload_id)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, self.size)
                view = view[written:]
                self.size += written
        finally:
            os.close(fd)

    def commit(self) -> bytes | None:
        # Truncating drops anything a failed request wrote past the committed size.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != self.size:
                os.ftruncate(fd, self.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        pass

    def seal(self) -> None:
        self.commit()

    def hash(self, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        with open(self.path, "rb") as file:
            while chunk := file.read(READ_CHUNK_BYTES):
                hasher.update(chunk)
        return f"{algorithm}:{hasher.hexdigest()}"

    def place(self, digest: str) -> None:
        # The upload file stays until `discard`, so the caller can place the blob again after recording it,
        # in case garbage collection moved an older copy away in between.
        target = self.store.blob_path(digest)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.path, target)
        except FileExistsError:
            return  # Another push of the same content placed it first.
        _fsync_directory(target.parent)

    def discard(self) -> None:
        self.store.delete_upload_data(self.upload_id)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
