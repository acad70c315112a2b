"""Manifest reads, pushes and deletes."""

from __future__ import annotations

import json

from starlette.responses import Response

from crpe import policy
from crpe.digests import compute, is_digest, parse_digest
from crpe.errors import DigestInvalid, ManifestBlobUnknown, ManifestInvalid, ManifestTooLarge, ManifestUnknown
from crpe.metadata.store import BlobsMissing, Manifest, ManifestRecord
from crpe.registry.access import Call, authorize, resolve_instance
from crpe.registry.manifests import parse_manifest
from crpe.registry.names import TAG_PATTERN, validate_repository
from crpe.registry.repositories import ensure_repository
from crpe.registry.responses import API_VERSION_HEADER, EmptyResponse


def _check_reference(reference: str, name: str, writing: bool = False) -> bool:
    """Validate a tag or digest reference and tell whether it is a digest.

    An invalid tag names no manifest, so reads and deletes return 404 MANIFEST_UNKNOWN, and a push returns 400.
    """
    if is_digest(reference):
        parse_digest(reference)
        return True
    if not TAG_PATTERN.match(reference):
        message = (f"reference {reference!r} is neither a valid tag nor a digest; tags are up to 128 letters, "
                   "digits, '_', '.' or '-', not starting with '.' or '-'")
        if writing:
            raise ManifestInvalid(message, detail={"reference": reference})
        raise ManifestUnknown(message, detail={"name": name, "reference": reference})
    return False


async def get_manifest(call: Call, name: str, reference: str, head: bool) -> Response:
    validate_repository(name)
    by_digest = _check_reference(reference, name)
    instance = resolve_instance(call, name)
    repository, manifest = call.services.store.find_manifest(instance.id, name, reference, by_digest)
    authorize(call, instance, name, policy.Action.PULL, repository, existence_check=head)
    if manifest is None:
        raise ManifestUnknown(f"manifest {reference} is not in repository {name}",
                              detail={"name": name, "reference": reference})
    headers = {**API_VERSION_HEADER, "Content-Type": manifest.media_type, "Docker-Content-Digest": manifest.digest,
               "ETag": f'"{manifest.digest}"', "Content-Length": str(manifest.size)}
    if head:
        return EmptyResponse(200, headers)
    return Response(manifest.content, 200, headers)


async def _read_body(call: Call) -> bytes:
    limit = call.services.settings.max_manifest_bytes
    too_large = ManifestTooLarge(f"manifest exceeds the maximum of {limit} bytes ({limit // (1024 * 1024)} MiB); "
                                 "split it or move large content into blobs")
    length = call.request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in call.request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def put_manifest(call: Call, name: str, reference: str) -> Response:
    validate_repository(name)
    by_digest = _check_reference(reference, name, writing=True)
    instance = resolve_instance(call, name)
    store = call.services.store
    authorize(call, instance, name, policy.Action.PUSH, store.get_repository(instance.id, name))
    body = await _read_body(call)
    parsed = parse_manifest(body, call.request.headers.get("content-type"))

    algorithm = parse_digest(reference)[0] if by_digest else "sha256"
    digest = compute(body, algorithm)
    if by_digest and digest != reference:
        raise DigestInvalid(f"manifest digest is {digest}, not {reference}; push it by tag or by its digest",
                            detail={"digest": reference})
    repository = ensure_repository(call, instance, name)
    # Blob links are checked by put_manifest, inside the transaction that stores the manifest.
    missing = store.missing_manifests(repository.id, [child.digest for child in parsed.children])
    if missing:
        raise ManifestBlobUnknown(f"index references {len(missing)} manifest(s) not pushed to {name}: "
                                  f"{', '.join(missing)}; push them first", detail={"digests": missing})

    record = ManifestRecord(
        manifest=Manifest(digest, parsed.media_type, len(body), body, parsed.artifact_type,
                          parsed.subject.digest if parsed.subject else None,
                          json.dumps(parsed.annotations) if parsed.annotations else None),
        blob_digests=[blob.digest for blob in parsed.blobs],
        child_digests=[child.digest for child in parsed.children],
        tag=None if by_digest else reference,
    )
    try:
        store.put_manifest(instance.id, repository.id, record)
    except BlobsMissing as error:
        raise ManifestBlobUnknown(f"manifest references {len(error.digests)} blob(s) not pushed to {name}: "
                                  f"{error}; push the blobs first", detail={"digests": error.digests}) from None
    headers = {**API_VERSION_HEADER, "Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    if parsed.subject:
        headers["OCI-Subject"] = parsed.subject.digest
    return EmptyResponse(201, headers)


async def delete_manifest(call: Call, name: str, reference: str) -> Response:
    """Delete a manifest by digest (with its tags), or only a tag, keeping the manifest."""
    validate_repository(name)
    by_digest = _check_reference(reference, name)
    instance = resolve_instance(call, name)
    store = call.services.store
    repository = store.get_repository(instance.id, name)
    authorize(call, instance, name, policy.Action.DELETE, repository)
    deleted = False
    if repository is not None:
        deleted = (store.delete_manifest(repository.id, reference) if by_digest
                   else store.delete_tag(repository.id, reference))
    if not deleted:
        raise ManifestUnknown(f"manifest {reference} is not in repository {name}",
                              detail={"name": name, "reference": reference})
    return EmptyResponse(202, dict(API_VERSION_HEADER))
