"""Blob reads and deletes."""

from __future__ import annotations

import re

from starlette.responses import Response, StreamingResponse

from crpe import policy
from crpe.digests import parse_digest
from crpe.errors import BlobUnknown, RangeInvalid
from crpe.registry.access import Call, authorize, resolve_instance
from crpe.registry.names import validate_repository
from crpe.registry.responses import API_VERSION_HEADER, EmptyResponse, FileSendResponse

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


async def get_blob(call: Call, name: str, digest: str, head: bool) -> Response:
    validate_repository(name)
    parse_digest(digest)
    instance = resolve_instance(call, name)
    store = call.services.store
    repository = store.get_repository(instance.id, name)
    authorize(call, instance, name, policy.Action.PULL, repository, existence_check=head)
    size = store.linked_blob_size(repository.id, instance.region, digest) if repository else None
    if size is None:
        raise BlobUnknown(f"blob {digest} is not in repository {name}", detail={"digest": digest})
    blobs = call.services.blob_stores[instance.region]
    headers = {**API_VERSION_HEADER, "Content-Type": "application/octet-stream", "Docker-Content-Digest": digest,
               "ETag": f'"{digest}"', "Accept-Ranges": "bytes", "Cache-Control": "max-age=31536000"}

    range_header = call.request.headers.get("range")
    if range_header:
        start, end = _parse_range(range_header, size)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        if head:
            return EmptyResponse(206, headers)
        return StreamingResponse(blobs.read_range(digest, start, end), 206, headers)
    if head:
        return EmptyResponse(200, {**headers, "Content-Length": str(size)})
    redirect = blobs.redirect_url(digest)
    if redirect:
        # The object store serves the bytes; clients follow a 307 on blob GETs (distribution does the same).
        return EmptyResponse(307, {**API_VERSION_HEADER, "Location": redirect, "Docker-Content-Digest": digest})
    path = blobs.local_path(digest)
    if path is None and size == 0:
        return EmptyResponse(200, {**headers, "Content-Length": "0"})
    if path is None:
        return StreamingResponse(blobs.read_range(digest, 0, size - 1), 200,
                                 {**headers, "Content-Length": str(size)})
    return FileSendResponse(path, size, headers)


def _parse_range(value: str, size: int) -> tuple[int, int]:
    """Parse one `bytes=` range; raise 416 when it cannot be satisfied."""
    match = _RANGE.match(value.strip())
    unsatisfiable = RangeInvalid(f"range {value!r} cannot be satisfied for a blob of {size} bytes",
                                 headers={"Content-Range": f"bytes */{size}"})
    if not match or (not match[1] and not match[2]):
        raise unsatisfiable
    if match[1]:
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
    else:
        suffix = int(match[2])
        start, end = max(size - suffix, 0), size - 1
    if start >= size or start > end:
        raise unsatisfiable
    return start, end


async def delete_blob(call: Call, name: str, digest: str) -> Response:
    validate_repository(name)
    parse_digest(digest)
    instance = resolve_instance(call, name)
    store = call.services.store
    repository = store.get_repository(instance.id, name)
    authorize(call, instance, name, policy.Action.DELETE, repository)
    if repository is None or not store.unlink_blob(repository.id, digest):
        raise BlobUnknown(f"blob {digest} is not in repository {name}", detail={"digest": digest})
    return EmptyResponse(202, dict(API_VERSION_HEADER))
