"""Blob stores, one per region."""

from crpe.storage.filesystem import FilesystemBlobStore

__all__ = ["FilesystemBlobStore"]
