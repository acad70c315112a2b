"""Blob stores, one per region: the local filesystem or S3-compatible object storage."""

from __future__ import annotations

from crpe.settings import Region, Settings
from crpe.storage.base import BlobStore, StorageError, UploadWriter
from crpe.storage.filesystem import FilesystemBlobStore

__all__ = ["BlobStore", "FilesystemBlobStore", "StorageError", "UploadWriter", "open_blob_store", "open_blob_stores"]


def open_blob_store(settings: Settings, region: Region) -> BlobStore:
    storage = region.storage
    if storage.type == "s3":
        # boto3 costs about 20 MiB per process, so only deployments that use S3 import it.
        try:
            from crpe.storage.s3 import S3BlobStore
        except ImportError as error:
            raise StorageError(f"region {region.id} stores blobs on S3, which needs boto3 ({error}); install it "
                               "with pip install 'crpe[s3]'") from None

        return S3BlobStore(storage)
    return FilesystemBlobStore(settings.storage_path(region))


def open_blob_stores(settings: Settings) -> dict[str, BlobStore]:
    return {region.id: open_blob_store(settings, region) for region in settings.regions}
