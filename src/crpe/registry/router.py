"""Route `/v2/` and `/auth/token` requests of a registry host to their handlers."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from crpe.endpoints import RegistryEndpoint
from crpe.errors import NameInvalid, RegistryError, Unauthorized, Unsupported
from crpe.registry import blobs, listing_routes, manifest_routes, token_routes, uploads
from crpe.registry.access import Call, basic_identity, check_network_and_client, open_call, resolve_instance
from crpe.registry.responses import API_VERSION_HEADER, error_response, json_response
from crpe.services import Services

log = logging.getLogger("crpe.registry")

Handler = Callable[..., Awaitable[Response]]

_NAME = r"(?P<name>.+?)"
# Checked in order: "blobs/uploads/" must win over "blobs/<digest>".
_ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
    (re.compile(rf"^/v2/{_NAME}/manifests/(?P<reference>[^/]+)$"), {
        "GET": lambda call, name, reference: manifest_routes.get_manifest(call, name, reference, head=False),
        "HEAD": lambda call, name, reference: manifest_routes.get_manifest(call, name, reference, head=True),
        "PUT": manifest_routes.put_manifest,
        "DELETE": manifest_routes.delete_manifest,
    }),
    (re.compile(rf"^/v2/{_NAME}/blobs/uploads/?$"), {"POST": uploads.start_upload}),
    (re.compile(rf"^/v2/{_NAME}/blobs/uploads/(?P<upload_id>[^/]+)$"), {
        "GET": uploads.upload_status,
        "PATCH": uploads.append_chunk,
        "PUT": uploads.complete_upload,
        "DELETE": uploads.cancel_upload,
    }),
    (re.compile(rf"^/v2/{_NAME}/blobs/(?P<digest>[^/]+)$"), {
        "GET": lambda call, name, digest: blobs.get_blob(call, name, digest, head=False),
        "HEAD": lambda call, name, digest: blobs.get_blob(call, name, digest, head=True),
        "DELETE": blobs.delete_blob,
    }),
    (re.compile(rf"^/v2/{_NAME}/tags/list$"), {"GET": listing_routes.list_tags}),
    (re.compile(rf"^/v2/{_NAME}/referrers/(?P<digest>[^/]+)$"), {"GET": listing_routes.list_referrers}),
]


async def handle(request: Request, services: Services, endpoint: RegistryEndpoint, host: str) -> Response:
    """Serve one request of a registry host; every failure leaves as the spec's error body."""
    head = request.method == "HEAD"
    try:
        call = open_call(request, services, endpoint, host)
        return await _dispatch(call)
    except RegistryError as error:
        return error_response(error, head)
    except Exception:
        request_id = uuid.uuid4().hex[:12]
        log.exception("request failed", extra={"http.request.id": request_id,
                                               "http.request.method": request.method,
                                               "http.request.uri": request.scope["path"]})
        return error_response(RegistryError(f"internal error; the server log has details under request id "
                                            f"{request_id}"), head)


async def _dispatch(call: Call) -> Response:
    method, path = call.request.method, call.request.scope["path"]
    if path == "/auth/token":
        _require_method(method, path, ("GET", "POST"))
        return await token_routes.token(call)
    if path in ("/v2", "/v2/"):
        _require_method(method, path, ("GET", "HEAD"))
        return _base(call)
    if path == "/v2/_catalog":
        _require_method(method, path, ("GET",))
        return await listing_routes.catalog(call)
    for pattern, handlers in _ROUTES:
        match = pattern.match(path)
        if match:
            _require_method(method, path, tuple(handlers))
            return await handlers[method](call, **match.groupdict())
    if path.startswith("/v2/"):
        raise NameInvalid(f"{path} is not a registry API path; expected /v2/<namespace>/<repository>/"
                          "(manifests|blobs|tags|referrers)/...")
    raise Unsupported(f"{path} is not served on registry hosts; registry requests start with /v2/")


def _require_method(method: str, path: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise Unsupported(f"{method} is not supported on {path}; use {', '.join(allowed)}",
                          headers={"Allow": ", ".join(allowed)})


def _base(call: Call) -> Response:
    """Respond to the API version check, which is also how clients discover the token realm."""
    ok = json_response({}, headers=dict(API_VERSION_HEADER))
    exclusive = call.endpoint.instance_id is not None
    check_network_and_client(call, legacy=not exclusive or resolve_instance(call, None).legacy)
    if call.claims is None:
        if exclusive and basic_identity(call, resolve_instance(call, None)) is not None:
            return ok
        raise Unauthorized(f"authentication required; run docker login {call.host}", headers=call.challenge())
    if exclusive:
        resolve_instance(call, None)
        if call.claims.anonymous:
            raise Unauthorized(f"authentication required; run docker login {call.host}", headers=call.challenge())
    # On legacy endpoints an anonymous token is valid too: it reads public repositories.
    return ok
