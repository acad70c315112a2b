"""Blob upload sessions: POST to start (or mount, or upload whole), PATCH chunks, PUT to finish."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from starlette.responses import Response

from crpe import policy
from crpe.digests import ResumableHash, parse_digest
from crpe.errors import BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, RangeInvalid, SizeInvalid
from crpe.metadata.store import Instance, Repository, Upload
from crpe.registry.access import Call, authorize, resolve_instance
from crpe.registry.names import validate_repository
from crpe.registry.repositories import ensure_repository
from crpe.registry.responses import API_VERSION_HEADER, EmptyResponse
from crpe.storage import FilesystemBlobStore

# Request bodies are written and hashed in pieces of this size on a worker thread, so a 1 GiB layer needs
# 1 MiB of memory and the event loop never hashes.
FLUSH_BYTES = 1024 * 1024
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/\d+|/\*)?$")


def _upload_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    # distribution reports an empty upload as "0-0"; clients only read the end offset.
    return {**API_VERSION_HEADER, "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
            "Range": f"0-{max(size - 1, 0)}", "Docker-Upload-UUID": upload_id}


def _created_headers(name: str, digest: str) -> dict[str, str]:
    return {**API_VERSION_HEADER, "Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}


def _blob_store(call: Call, instance: Instance) -> FilesystemBlobStore:
    return call.services.blob_stores[instance.region]


async def start_upload(call: Call, name: str) -> Response:
    validate_repository(name)
    instance = resolve_instance(call, name)
    repository = call.services.store.get_repository(instance.id, name)
    authorize(call, instance, name, policy.Action.PUSH, repository)
    repository = ensure_repository(call, instance, name)
    params = call.request.query_params
    store = call.services.store
    blobs = _blob_store(call, instance)

    mount, source = params.get("mount"), params.get("from")
    if mount:
        parse_digest(mount)
        if source and _can_mount(call, instance, source, mount):
            store.link_blob(repository.id, mount)
            return EmptyResponse(201, _created_headers(name, mount))
        # Without a readable source the spec requires an ordinary upload session instead.

    digest = params.get("digest")
    upload = store.create_upload(repository.id, instance.region)
    blobs.create_upload(upload.id)
    if digest is None or mount:
        return EmptyResponse(202, _upload_headers(name, upload.id, 0))
    # A monolithic upload: the whole blob in the POST body.
    with _locked(blobs, upload.id):
        size, hasher = await _receive(call, blobs, upload, content_range=None)
        return await _finish(call, instance, repository, upload, size, hasher, digest)


def _can_mount(call: Call, instance: Instance, source: str, digest: str) -> bool:
    try:
        validate_repository(source)
    except Exception:
        return False
    if call.claims is None or not call.claims.allows("repository", source, "pull"):
        return False
    if call.endpoint.instance_id is None:
        # On legacy endpoints the namespace picks the instance; mount only inside the same instance.
        owner = call.services.store.find_legacy_instance(instance.region, source.split("/", 1)[0])
        if owner is None or owner.id != instance.id:
            return False
    source_repository = call.services.store.get_repository(instance.id, source)
    if source_repository is None:
        return False
    return call.services.store.linked_blob_size(source_repository.id, instance.region, digest) is not None


def _find_upload(call: Call, name: str, upload_id: str, action: policy.Action = policy.Action.PUSH
                 ) -> tuple[Instance, Repository, Upload]:
    validate_repository(name)
    instance = resolve_instance(call, name)
    repository = call.services.store.get_repository(instance.id, name)
    authorize(call, instance, name, action, repository)
    upload = call.services.store.get_upload(upload_id, repository.id) if repository else None
    if upload is None or repository is None:
        raise BlobUploadUnknown(f"upload {upload_id!r} is not in progress for {name}; start a new one with "
                                f"POST /v2/{name}/blobs/uploads/", detail={"upload": upload_id})
    return instance, repository, upload


@contextmanager
def _locked(blobs: FilesystemBlobStore, upload_id: str) -> Iterator[None]:
    """Hold an exclusive lock on the upload file, so two requests never write one upload at once."""
    try:
        fd = os.open(blobs.upload_path(upload_id), os.O_RDONLY)
    except FileNotFoundError:
        raise BlobUploadUnknown(f"upload {upload_id!r} is no longer in progress") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RangeInvalid("another request is writing to this upload; send chunks one at a time") from None
        yield
    finally:
        os.close(fd)


async def upload_status(call: Call, name: str, upload_id: str) -> Response:
    _, _, upload = _find_upload(call, name, upload_id)
    return EmptyResponse(204, _upload_headers(name, upload.id, upload.size))


async def cancel_upload(call: Call, name: str, upload_id: str) -> Response:
    instance, _, upload = _find_upload(call, name, upload_id)
    call.services.store.delete_upload(upload.id)
    _blob_store(call, instance).delete_upload(upload.id)
    return EmptyResponse(204, dict(API_VERSION_HEADER))


def _parse_content_range(call: Call, name: str, upload: Upload) -> tuple[int, int] | None:
    value = call.request.headers.get("content-range")
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        raise BlobUploadInvalid(f"Content-Range {value!r} is invalid: expected <start>-<end>")
    start, end = int(match[1]), int(match[2])
    if start != upload.size or end < start:
        raise RangeInvalid(f"chunk {start}-{end} does not continue the upload, which has {upload.size} bytes; "
                           f"send the chunk starting at byte {upload.size}",
                           headers=_upload_headers(name, upload.id, upload.size))
    length = call.request.headers.get("content-length")
    if length is not None and int(length) != end - start + 1:
        raise RangeInvalid(f"Content-Length {length} does not match Content-Range {value}",
                           headers=_upload_headers(name, upload.id, upload.size))
    return start, end


async def _receive(call: Call, blobs: FilesystemBlobStore, upload: Upload,
                   content_range: tuple[int, int] | None) -> tuple[int, ResumableHash]:
    """Append the request body to the upload while hashing it; return the new size and hash state."""
    hasher = ResumableHash(upload.hash_state)
    offset = upload.size
    pending = bytearray()

    def flush(data: bytes | bytearray, at: int) -> None:
        blobs.write_upload(upload.id, at, data)
        hasher.update(data)

    async for chunk in call.request.stream():
        pending += chunk
        if len(pending) >= FLUSH_BYTES:
            data, pending = pending, bytearray()
            await anyio.to_thread.run_sync(flush, data, offset)
            offset += len(data)
    if pending:
        await anyio.to_thread.run_sync(flush, pending, offset)
        offset += len(pending)
    received = offset - upload.size
    if content_range is not None and received != content_range[1] - content_range[0] + 1:
        raise SizeInvalid(f"received {received} bytes but Content-Range announced "
                          f"{content_range[1] - content_range[0] + 1}")
    return offset, hasher


def _reread(call: Call, name: str, upload: Upload) -> Upload:
    """Read the upload again under its lock: another request may have advanced it since the first read."""
    current = call.services.store.get_upload(upload.id, upload.repository_id)
    if current is None:
        raise BlobUploadUnknown(f"upload {upload.id!r} is no longer in progress for {name}; start a new one with "
                                f"POST /v2/{name}/blobs/uploads/", detail={"upload": upload.id})
    return current


async def append_chunk(call: Call, name: str, upload_id: str) -> Response:
    instance, _, upload = _find_upload(call, name, upload_id)
    blobs = _blob_store(call, instance)
    with _locked(blobs, upload.id):
        upload = _reread(call, name, upload)
        content_range = _parse_content_range(call, name, upload)
        size, hasher = await _receive(call, blobs, upload, content_range)
        await anyio.to_thread.run_sync(blobs.sync_upload, upload.id, size)
        if not call.services.store.advance_upload(upload.id, upload.size, size, hasher.state()):
            raise RangeInvalid("the upload changed while this chunk was written; check its status and resend",
                               headers=_upload_headers(name, upload.id, upload.size))
    return EmptyResponse(202, _upload_headers(name, upload.id, size))


async def complete_upload(call: Call, name: str, upload_id: str) -> Response:
    instance, repository, upload = _find_upload(call, name, upload_id)
    digest = call.request.query_params.get("digest")
    if not digest:
        raise DigestInvalid("the digest query parameter is required to finish an upload: "
                            f"PUT /v2/{name}/blobs/uploads/<id>?digest=sha256:<hex>")
    parse_digest(digest)
    blobs = _blob_store(call, instance)
    with _locked(blobs, upload.id):
        upload = _reread(call, name, upload)
        content_range = _parse_content_range(call, name, upload)
        size, hasher = await _receive(call, blobs, upload, content_range)
        return await _finish(call, instance, repository, upload, size, hasher, digest)


async def _finish(call: Call, instance: Instance, repository: Repository, upload: Upload, size: int,
                  hasher: ResumableHash, digest: str) -> Response:
    """Verify the digest, then make the blob durable and visible in this repository."""
    algorithm, _ = parse_digest(digest)
    blobs = _blob_store(call, instance)
    store = call.services.store
    await anyio.to_thread.run_sync(blobs.sync_upload, upload.id, size)
    if algorithm == "sha256":
        actual = hasher.digest()
    else:
        actual = await anyio.to_thread.run_sync(blobs.hash_upload, upload.id, algorithm)
    if actual != digest:
        store.delete_upload(upload.id)
        blobs.delete_upload(upload.id)
        raise DigestInvalid(f"digest {digest} does not match the uploaded content ({size} bytes hash to "
                            f"{actual}); the upload was discarded, push the blob again",
                            detail={"digest": digest})
    # File, then database row and link, then the file again: garbage collection may have moved an unlinked
    # older copy of these bytes away in between, and the second placement puts the blob back.
    await anyio.to_thread.run_sync(blobs.place_blob, upload.id, digest)
    store.add_blob(instance.region, digest, size, repository.id, upload_id=upload.id)
    await anyio.to_thread.run_sync(blobs.place_blob, upload.id, digest)
    blobs.delete_upload(upload.id)
    return EmptyResponse(201, _created_headers(repository.name, digest))
