"""A blob store on S3-compatible object storage: AWS S3, Alibaba Cloud OSS, Ceph RADOS Gateway, MinIO.

Object layout under the configured bucket and prefix:

    <prefix>blobs/<algorithm>/<first two hex characters>/<hex>   content, written only after its digest matched
    <prefix>uploads/<upload id>/tail-<offset>-<length>           committed bytes not yet in a multipart part
    <prefix>uploads/<upload id>/data                             the multipart upload's target, once sealed
    <prefix>trash/<algorithm>-<hex>.<pid>.<random>               blobs garbage collection is about to delete

An upload streams into one S3 multipart upload in parts of `PART_BYTES`. Each request ends with fewer bytes
than a part left over, and S3 rejects parts under 5 MiB unless they are the last. Those bytes go to a tail
object named after its offset and length, so a failed request never overwrites a tail that the saved
state still names. The next request, on any node, reads the tail back and carries on. A small blob pushed
in one request never touches `uploads/` at all: its bytes go straight to their blob key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator, Iterator

import anyio
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from crpe.settings import StorageSettings
from crpe.storage.base import StorageError, trash_digest, trash_name

# Multipart part size; S3 allows at most 10,000 parts, so the size doubles every 1,000 parts and a single
# upload can reach far beyond any image layer.
PART_BYTES = 8 * 1024 * 1024
PARTS_PER_SIZE_STEP = 1000
READ_CHUNK_BYTES = 1024 * 1024
# Server-side copies below this size are one CopyObject request; S3 limits CopyObject to 5 GiB.
COPY_MULTIPART_THRESHOLD = 4 * 1024 ** 3
COPY_PART_BYTES = 512 * 1024 ** 2
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in NOT_FOUND_CODES


@functools.cache
def _shared_client(endpoint: str, region_name: str, access_key: str, secret_key: str, style: str):  # noqa: ANN202
    """Return one client per endpoint and credentials: the regions of a deployment usually share them all.

    A boto3 client costs tens of milliseconds and a few MiB to build, and clients are thread-safe.
    """
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint or None, region_name=region_name,
        aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None,
        config=Config(signature_version="s3v4", s3={"addressing_style": style},
                      retries={"max_attempts": 4, "mode": "standard"}, max_pool_connections=32))


def part_size(part_number: int) -> int:
    """Return the size of multipart part `part_number` (1-based)."""
    return PART_BYTES << ((part_number - 1) // PARTS_PER_SIZE_STEP)


class S3BlobStore:
    def __init__(self, config: StorageSettings) -> None:
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.client = self._client(config.endpoint)
        # Presigned URLs must name a host that clients can reach, which may differ from the one crpe uses.
        self.presign_client = (self._client(config.redirect_endpoint)
                               if config.redirect and config.redirect_endpoint else self.client)
        self.copy_config = TransferConfig(multipart_threshold=COPY_MULTIPART_THRESHOLD,
                                          multipart_chunksize=COPY_PART_BYTES, use_threads=False)

    def _client(self, endpoint: str):  # noqa: ANN202 (boto3 clients have no static type)
        style = self.config.addressing_style
        if style == "auto" and endpoint:
            style = "path"  # Self-hosted gateways rarely have wildcard DNS for bucket host names.
        return _shared_client(endpoint, self.config.region_name or "us-east-1", self.config.access_key,
                              self.config.secret_key, style)

    def blob_key(self, digest: str) -> str:
        algorithm, encoded = digest.split(":", 1)
        return f"{self.prefix}blobs/{algorithm}/{encoded[:2]}/{encoded}"

    def upload_prefix(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{upload_id}/"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.config.endpoint or 'the AWS default endpoint'}"

    # Uploads.

    def open_upload(self, upload_id: str, size: int, state: bytes | None) -> S3Upload:
        return S3Upload(self, upload_id, size, state)

    def list_blobs(self) -> Iterator[tuple[str, float, int]]:
        prefix = f"{self.prefix}blobs/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                algorithm, _, encoded = item["Key"][len(prefix):].split("/", 2)
                yield f"{algorithm}:{encoded}", item["LastModified"].timestamp(), int(item["Size"])

    def upload_leftovers(self) -> Iterator[tuple[str, float, int]]:
        prefix = f"{self.prefix}uploads/"
        found: dict[str, tuple[float, int]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                upload_id = item["Key"][len(prefix):].split("/", 1)[0]
                changed, size = found.get(upload_id, (0.0, 0))
                found[upload_id] = (max(changed, item["LastModified"].timestamp()), size + item["Size"])
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Uploads", []):
                upload_id = item["Key"][len(prefix):].split("/", 1)[0]
                changed, size = found.get(upload_id, (0.0, 0))
                found[upload_id] = (max(changed, item["Initiated"].timestamp()), size)
        for upload_id, (changed, size) in found.items():
            yield upload_id, changed, size

    def delete_upload_data(self, upload_id: str) -> None:
        prefix = self.upload_prefix(upload_id)
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Uploads", []):
                self.abort_multipart(item["Key"], item["UploadId"])
        keys = [item["Key"]
                for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
                for item in page.get("Contents", [])]
        self.delete_keys(keys)

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart_id)
        except ClientError as error:
            if not _missing(error):
                raise

    def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys.
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            if batch:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    # Blobs.

    def object_size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as error:
            if _missing(error):
                return None
            raise

    def blob_exists(self, digest: str) -> bool:
        return self.object_size(self.blob_key(digest)) is not None

    def copy(self, source: str, target: str) -> None:
        self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target, Config=self.copy_config)

    def local_path(self, digest: str) -> str | None:
        return None

    def redirect_url(self, digest: str) -> str | None:
        if not self.config.redirect:
            return None
        return self.presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.blob_key(digest)},
            ExpiresIn=self.config.redirect_seconds)

    async def read_range(self, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
        if end < start:
            return  # An empty blob: S3 rejects the range "bytes=0--1".
        response = await anyio.to_thread.run_sync(lambda: self.client.get_object(
            Bucket=self.bucket, Key=self.blob_key(digest), Range=f"bytes={start}-{end}"))
        body = response["Body"]
        try:
            while chunk := await anyio.to_thread.run_sync(body.read, READ_CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    def trash_blob(self, digest: str) -> str | None:
        # S3 has no rename: copy, then delete. A push that finds the blob missing in between places it again.
        trash = f"{self.prefix}trash/{trash_name(digest)}"
        try:
            self.copy(self.blob_key(digest), trash)
        except ClientError as error:
            if _missing(error):
                return None
            raise
        self.client.delete_object(Bucket=self.bucket, Key=self.blob_key(digest))
        return trash

    def restore_blob(self, trash: str, digest: str) -> None:
        if not self.blob_exists(digest):
            self.copy(trash, self.blob_key(digest))
        self.purge_trash(trash)

    def purge_trash(self, trash: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=trash)

    def trash_leftovers(self) -> Iterator[tuple[str, str, float]]:
        prefix = f"{self.prefix}trash/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"], trash_digest(item["Key"][len(prefix):]), item["LastModified"].timestamp()

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code"))
            if code in NOT_FOUND_CODES or code == "NoSuchBucket":
                advice = f"create the bucket {self.bucket}, or fix the bucket setting"
            elif code in ("403", "Forbidden", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
                advice = "check access_key and secret_key, and that this user may use the bucket"
            else:
                advice = "check the endpoint, the bucket and the credentials"
            raise StorageError(f"blob store {self.describe()} is not usable: {error}. Fix: {advice}") from None
        except BotoCoreError as error:
            raise StorageError(f"blob store {self.describe()} is not reachable: {error}. Fix: check the endpoint "
                               "URL and that the object store is running") from None


class S3Upload:
    """One request's view of an upload: the committed parts, plus a buffer of fewer than one part's bytes."""

    def __init__(self, store: S3BlobStore, upload_id: str, size: int, state: bytes | None) -> None:
        self.store = store
        self.client = store.client
        self.upload_id = upload_id
        self.size = size
        saved = json.loads(state) if state else {}
        self.multipart: str | None = saved.get("multipart")
        self.parts: list[tuple[int, str, int]] = [tuple(part) for part in saved.get("parts", [])]
        self.tail: str | None = saved.get("tail")
        self.replaced_tail: str | None = None
        self.sealed_key: str | None = None
        self.content: bytes | None = None
        self.buffer = bytearray()
        if self.tail:
            self.buffer += self.client.get_object(Bucket=store.bucket, Key=self.tail)["Body"].read()
        in_parts = sum(part[2] for part in self.parts)
        if in_parts + len(self.buffer) != size:
            raise StorageError(f"upload {upload_id} in {store.describe()} contains {in_parts + len(self.buffer)} "
                               f"bytes but its database record has {size}; cancel it and push the blob again")

    @property
    def data_key(self) -> str:
        return self.store.upload_prefix(self.upload_id) + "data"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buffer += data
        self.size += len(data)
        while len(self.buffer) >= part_size(len(self.parts) + 1):
            length = part_size(len(self.parts) + 1)
            self._upload_part(self.buffer[:length])
            del self.buffer[:length]

    def _upload_part(self, data: bytes | bytearray) -> None:
        if self.multipart is None:
            created = self.client.create_multipart_upload(Bucket=self.store.bucket, Key=self.data_key)
            self.multipart = created["UploadId"]
        number = len(self.parts) + 1
        # A part number past the saved state may hold a failed request's bytes; uploading it again replaces them.
        response = self.client.upload_part(Bucket=self.store.bucket, Key=self.data_key, UploadId=self.multipart,
                                           PartNumber=number, Body=bytes(data))
        self.parts.append((number, response["ETag"], len(data)))

    def commit(self) -> bytes | None:
        tail = None
        if self.buffer:
            tail = f"{self.store.upload_prefix(self.upload_id)}tail-{self.size - len(self.buffer)}-{len(self.buffer)}"
            if tail != self.tail:
                self.client.put_object(Bucket=self.store.bucket, Key=tail, Body=bytes(self.buffer))
        if self.tail and self.tail != tail:
            self.replaced_tail = self.tail
        self.tail = tail
        return json.dumps({"multipart": self.multipart, "parts": self.parts, "tail": self.tail}).encode()

    def release(self) -> None:
        if self.replaced_tail:
            self.client.delete_object(Bucket=self.store.bucket, Key=self.replaced_tail)
            self.replaced_tail = None

    def seal(self) -> None:
        if self.multipart is None:
            # Fewer bytes than one part: the blob is written from memory by `place`.
            self.content = bytes(self.buffer)
            return
        try:
            if self.buffer:
                self._upload_part(self.buffer)
            parts = [{"PartNumber": number, "ETag": etag} for number, etag, _ in self.parts]
            self.client.complete_multipart_upload(Bucket=self.store.bucket, Key=self.data_key,
                                                  UploadId=self.multipart, MultipartUpload={"Parts": parts})
        except ClientError as error:
            # A request that died after completing the upload leaves the finished object behind.
            if not _missing(error) or self.store.object_size(self.data_key) != self.size:
                raise
        self.buffer = bytearray()
        self.multipart = None
        self.sealed_key = self.data_key

    def hash(self, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        if self.content is not None:
            hasher.update(self.content)
        else:
            body = self.client.get_object(Bucket=self.store.bucket, Key=self.sealed_key)["Body"]
            while chunk := body.read(READ_CHUNK_BYTES):
                hasher.update(chunk)
        return f"{algorithm}:{hasher.hexdigest()}"

    def place(self, digest: str) -> None:
        if self.store.blob_exists(digest):
            return
        target = self.store.blob_key(digest)
        if self.content is not None:
            self.client.put_object(Bucket=self.store.bucket, Key=target, Body=self.content)
        else:
            self.store.copy(self.sealed_key, target)

    def discard(self) -> None:
        if self.multipart:
            self.store.abort_multipart(self.data_key, self.multipart)
        keys = [key for key in (self.tail, self.replaced_tail, self.sealed_key) if key]
        self.store.delete_keys(keys)
