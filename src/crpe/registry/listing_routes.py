"""Tag lists, the catalog and the referrers API."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.responses import Response

from crpe import policy
from crpe.auth.identity import principal_for
from crpe.auth.permissions import permitted_actions
from crpe.digests import parse_digest
from crpe.errors import NameUnknown, RegistryError
from crpe.registry.access import Call, authorize, require_authenticated, resolve_instance
from crpe.registry.manifests import OCI_INDEX
from crpe.registry.names import validate_repository
from crpe.registry.responses import json_response

# Upper bound of one page, so a request cannot ask the database for an unbounded list.
MAX_PAGE_SIZE = 10_000


class PaginationNumberInvalid(RegistryError):
    code = "PAGINATION_NUMBER_INVALID"
    status = 400
    default_message = "invalid number of results requested"


def _page_size(call: Call) -> int | None:
    value = call.request.query_params.get("n")
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise PaginationNumberInvalid(f"n={value!r} must be a non-negative integer")
    return min(int(value), MAX_PAGE_SIZE)


def _next_link(path: str, n: int, last: str) -> dict[str, str]:
    return {"Link": f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'}


async def list_tags(call: Call, name: str) -> Response:
    validate_repository(name)
    instance = resolve_instance(call, name)
    store = call.services.store
    repository = store.get_repository(instance.id, name)
    authorize(call, instance, name, policy.Action.PULL, repository)
    if repository is None:
        raise NameUnknown(f"repository {name} is not known to this registry", detail={"name": name})
    n = _page_size(call)
    last = call.request.query_params.get("last", "")
    if n == 0:
        return json_response({"name": name, "tags": []})
    tags = store.list_tags(repository.id, last, None if n is None else n + 1)
    headers: dict[str, str] = {}
    if n is not None and len(tags) > n:
        tags = tags[:n]
        headers = _next_link(f"/v2/{name}/tags/list", n, tags[-1])
    return json_response({"name": name, "tags": tags}, headers=headers)


async def catalog(call: Call) -> Response:
    instance = resolve_instance(call, None)
    require_authenticated(call, instance)
    assert call.claims is not None
    identity = principal_for(call.services.store, call.claims.account_id, call.claims.sub_user_id)
    if identity is None:
        return json_response({"repositories": []})
    n = _page_size(call)
    last = call.request.query_params.get("last", "")
    names: list[str] = []
    if n != 0:
        for repository in call.services.store.list_repositories(instance.id, after=last):
            if "pull" in permitted_actions(identity.principal, instance.account_id, instance.id, repository.name,
                                           identity.statements):
                names.append(repository.name)
                if n is not None and len(names) > n:
                    break
    headers: dict[str, str] = {}
    if n is not None and len(names) > n:
        names = names[:n]
        headers = _next_link("/v2/_catalog", n, names[-1])
    return json_response({"repositories": names}, headers=headers)


async def list_referrers(call: Call, name: str, digest: str) -> Response:
    validate_repository(name)
    parse_digest(digest)
    instance = resolve_instance(call, name)
    store = call.services.store
    repository = store.get_repository(instance.id, name)
    authorize(call, instance, name, policy.Action.PULL, repository)
    artifact_type = call.request.query_params.get("artifactType")
    descriptors = []
    for manifest in store.list_referrers(repository.id, digest) if repository else []:
        if artifact_type and manifest.artifact_type != artifact_type:
            continue
        descriptor: dict[str, object] = {"mediaType": manifest.media_type, "digest": manifest.digest,
                                         "size": manifest.size}
        if manifest.artifact_type:
            descriptor["artifactType"] = manifest.artifact_type
        if manifest.annotations:
            descriptor["annotations"] = json.loads(manifest.annotations)
        descriptors.append(descriptor)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    return json_response({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors},
                         headers=headers, media_type=OCI_INDEX)
