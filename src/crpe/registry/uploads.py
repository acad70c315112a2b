"""Blob upload sessions: POST to start (or mount, or upload whole), PATCH chunks, PUT to finish."""

from __future__ import annotations

import re

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
from crpe.registry.upload_lease import Lease, expiry, new_owner
from crpe.storage import BlobStore, UploadWriter

# Request bodies are written and hashed in pieces of this size on a worker thread, so a 1 GiB layer needs
# 1 MiB of memory here (plus the blob store's own buffer) and the event loop never hashes.
FLUSH_BYTES = 1024 * 1024
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/\d+|/\*)?$")


def _upload_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    # distribution reports an empty upload as "0-0"; clients only read the end offset.
    return {**API_VERSION_HEADER, "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
            "Range": f"0-{max(size - 1, 0)}", "Docker-Upload-UUID": upload_id}


def _created_headers(name: str, digest: str) -> dict[str, str]:
    return {**API_VERSION_HEADER, "Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}


def _blob_store(call: Call, instance: Instance) -> BlobStore:
    return call.services.blob_stores[instance.region]


async def start_upload(call: Call, name: str) -> Response:
    validate_repository(name)
    instance = resolve_instance(call, name)
    repository = call.services.store.get_repository(instance.id, name)
    authorize(call, instance, name, policy.Action.PUSH, repository)
    repository = ensure_repository(call, instance, name)
    params = call.request.query_params
    store = call.services.store

    mount, source = params.get("mount"), params.get("from")
    if mount:
        parse_digest(mount)
        if source and _can_mount(call, instance, source, mount):
            store.link_blob(repository.id, mount)
            return EmptyResponse(201, _created_headers(name, mount))
        # Without a readable source the spec requires an ordinary upload session instead.

    digest = params.get("digest")
    if digest is None or mount:
        upload = store.create_upload(repository.id, instance.region)
        return EmptyResponse(202, _upload_headers(name, upload.id, 0))
    # A monolithic upload: the whole blob in the POST body, written under a lease taken with the row.
    parse_digest(digest)
    owner = new_owner()
    upload = store.create_upload(repository.id, instance.region, owner, expiry())
    lease = Lease(store, upload.id, owner)
    try:
        writer = await anyio.to_thread.run_sync(_blob_store(call, instance).open_upload, upload.id, 0, None)
        size, hasher = await _receive(call, writer, lease, upload, content_range=None)
        return await _finish(call, instance, repository, upload, writer, size, hasher, digest)
    finally:
        lease.release()


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


def _unknown_upload(name: str, upload_id: str) -> BlobUploadUnknown:
    return BlobUploadUnknown(f"upload {upload_id!r} is not in progress for {name}; start a new one with "
                             f"POST /v2/{name}/blobs/uploads/", detail={"upload": upload_id})


def _authorize_upload(call: Call, name: str, upload_id: str) -> tuple[Instance, Repository]:
    validate_repository(name)
    instance = resolve_instance(call, name)
    repository = call.services.store.get_repository(instance.id, name)
    authorize(call, instance, name, policy.Action.PUSH, repository)
    if repository is None:
        raise _unknown_upload(name, upload_id)
    return instance, repository


def _find_upload(call: Call, name: str, upload_id: str) -> tuple[Instance, Upload]:
    instance, repository = _authorize_upload(call, name, upload_id)
    upload = call.services.store.get_upload(upload_id, repository.id)
    if upload is None:
        raise _unknown_upload(name, upload_id)
    return instance, upload


def _claim_upload(call: Call, name: str, upload_id: str) -> tuple[Instance, Repository, Upload, Lease]:
    instance, repository = _authorize_upload(call, name, upload_id)
    claimed = Lease.claim(call.services.store, upload_id, repository.id)
    if claimed is None:
        raise _unknown_upload(name, upload_id)
    lease, upload = claimed
    return instance, repository, upload, lease


async def upload_status(call: Call, name: str, upload_id: str) -> Response:
    _, upload = _find_upload(call, name, upload_id)
    return EmptyResponse(204, _upload_headers(name, upload.id, upload.size))


async def cancel_upload(call: Call, name: str, upload_id: str) -> Response:
    instance, upload = _find_upload(call, name, upload_id)
    call.services.store.delete_upload(upload.id)
    await anyio.to_thread.run_sync(_blob_store(call, instance).delete_upload_data, upload.id)
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


async def _receive(call: Call, writer: UploadWriter, lease: Lease, upload: Upload,
                   content_range: tuple[int, int] | None) -> tuple[int, ResumableHash]:
    """Append the request body to the upload while hashing it; return the new size and hash state."""
    hasher = ResumableHash(upload.hash_state)
    pending = bytearray()

    def flush(data: bytes | bytearray) -> None:
        writer.write(data)
        hasher.update(data)

    async for chunk in call.request.stream():
        pending += chunk
        if len(pending) >= FLUSH_BYTES:
            lease.keep()
            data, pending = pending, bytearray()
            await anyio.to_thread.run_sync(flush, data)
    if pending:
        lease.keep()
        await anyio.to_thread.run_sync(flush, pending)
    received = writer.size - upload.size
    if content_range is not None and received != content_range[1] - content_range[0] + 1:
        raise SizeInvalid(f"received {received} bytes but Content-Range announced "
                          f"{content_range[1] - content_range[0] + 1}")
    return writer.size, hasher


async def _open_writer(call: Call, instance: Instance, upload: Upload) -> UploadWriter:
    return await anyio.to_thread.run_sync(_blob_store(call, instance).open_upload, upload.id, upload.size,
                                          upload.storage_state)


async def append_chunk(call: Call, name: str, upload_id: str) -> Response:
    instance, _, upload, lease = _claim_upload(call, name, upload_id)
    try:
        content_range = _parse_content_range(call, name, upload)
        writer = await _open_writer(call, instance, upload)
        size, hasher = await _receive(call, writer, lease, upload, content_range)
        lease.keep()
        storage_state = await anyio.to_thread.run_sync(writer.commit)
        if not call.services.store.advance_upload(upload.id, lease.owner, upload.size, size, hasher.state(),
                                                  storage_state):
            raise RangeInvalid("the upload changed while this chunk was written; check its status and resend",
                               headers=_upload_headers(name, upload.id, upload.size))
    finally:
        lease.release()
    await anyio.to_thread.run_sync(writer.release)
    return EmptyResponse(202, _upload_headers(name, upload.id, size))


async def complete_upload(call: Call, name: str, upload_id: str) -> Response:
    digest = call.request.query_params.get("digest")
    if not digest:
        raise DigestInvalid("the digest query parameter is required to finish an upload: "
                            f"PUT /v2/{name}/blobs/uploads/<id>?digest=sha256:<hex>")
    parse_digest(digest)
    instance, repository, upload, lease = _claim_upload(call, name, upload_id)
    try:
        content_range = _parse_content_range(call, name, upload)
        writer = await _open_writer(call, instance, upload)
        size, hasher = await _receive(call, writer, lease, upload, content_range)
        lease.keep()
        return await _finish(call, instance, repository, upload, writer, size, hasher, digest)
    finally:
        lease.release()


async def _finish(call: Call, instance: Instance, repository: Repository, upload: Upload, writer: UploadWriter,
                  size: int, hasher: ResumableHash, digest: str) -> Response:
    """Verify the digest, then make the blob durable and visible in this repository."""
    algorithm, _ = parse_digest(digest)
    store = call.services.store
    await anyio.to_thread.run_sync(writer.seal)
    if algorithm == "sha256":
        actual = hasher.digest()
    else:
        actual = await anyio.to_thread.run_sync(writer.hash, algorithm)
    if actual != digest:
        store.delete_upload(upload.id)
        await anyio.to_thread.run_sync(writer.discard)
        raise DigestInvalid(f"digest {digest} does not match the uploaded content ({size} bytes hash to "
                            f"{actual}); the upload was discarded, push the blob again",
                            detail={"digest": digest})
    # Bytes, then database row and link, then the bytes again: garbage collection may have moved an unlinked
    # older copy of these bytes away in between, and the second placement puts the blob back.
    await anyio.to_thread.run_sync(writer.place, digest)
    store.add_blob(instance.region, digest, size, repository.id, upload_id=upload.id)
    await anyio.to_thread.run_sync(writer.place, digest)
    await anyio.to_thread.run_sync(writer.discard)
    return EmptyResponse(201, _created_headers(repository.name, digest))
