"""The registry data plane and the new-instance endpoint rules, over HTTP against a real server.

Pulls go through the VPC endpoint (127.0.0.1 is in the default VPC networks) and pushes through the public
one, as clients of a new instance do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from registry_client import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_CONTENT,
    EMPTY_DIGEST,
    HARBOR_USER_AGENT,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryClient,
    descriptor,
    error_code,
    error_message,
    image_manifest,
    index_manifest,
    manifest_bytes,
    sha256,
    sha512,
)
from server import CrpeServer

PULL_ONLY = "pull"
PUSH_ONLY = "push"


@pytest.fixture(scope="module")
def registry(server: CrpeServer) -> Iterator[RegistryClient]:
    client = RegistryClient(server, server.create_instance("cn-hangzhou"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def other_registry(server: CrpeServer) -> Iterator[RegistryClient]:
    """A second instance of the same account in the same region."""
    client = RegistryClient(server, server.create_instance("cn-hangzhou"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def pushed(registry: RegistryClient) -> dict[str, object]:
    """One image in team/rules: its blobs and manifest, pushed through the public endpoint."""
    config = b'{"architecture":"amd64","os":"linux","rules":true}'
    layer = b"layer bytes of the rules image" * 10
    registry.push_blob("team/rules", config)
    registry.push_blob("team/rules", layer)
    manifest = image_manifest(config, [layer])
    response = registry.put_manifest("team/rules", "v1", manifest)
    assert response.status_code == 201, response.text
    return {
        "config": config,
        "layer": layer,
        "layer_digest": sha256(layer),
        "manifest": manifest,
        "manifest_digest": sha256(manifest),
    }


# New-instance endpoint rules.


def test_anonymous_pull_challenged(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request("GET", "/v2/team/rules/manifests/v1", network="vpc")

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


def test_anonymous_pull_challenge_scope(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request("GET", "/v2/team/rules/manifests/v1")

    assert (
        response.headers["WWW-Authenticate"]
        == f'Bearer realm="http://{registry.public}/auth/token",service="{registry.instance.public}",'
        'scope="repository:team/rules:pull"'
    )


def test_anonymous_pull_message_names_vpc(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request("GET", "/v2/team/rules/manifests/v1")

    assert registry.instance.vpc in error_message(response)


def test_anonymous_pull_token_refused(registry: RegistryClient, pushed: dict) -> None:
    challenge = registry.request("GET", "/v2/team/rules/manifests/v1").headers["WWW-Authenticate"]
    assert 'scope="repository:team/rules:pull"' in challenge

    response = registry.http.get(
        "/auth/token",
        headers={"Host": registry.public},
        params={"service": registry.instance.public, "scope": "repository:team/rules:pull"},
    )

    assert response.status_code == 401
    assert "token" not in response.json()


@pytest.mark.parametrize("kind", ["manifest", "blob"])
def test_public_pull_denied(registry: RegistryClient, pushed: dict, kind: str) -> None:
    path = "/v2/team/rules/manifests/v1" if kind == "manifest" else f"/v2/team/rules/blobs/{pushed['layer_digest']}"

    response = registry.request("GET", path, repository="team/rules")

    assert response.status_code == 403
    assert error_code(response) == "DENIED"
    assert registry.instance.vpc in error_message(response)


def test_public_tag_list_denied(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request("GET", "/v2/team/rules/tags/list", repository="team/rules")

    assert response.status_code == 403
    assert error_code(response) == "DENIED"


def test_public_referrers_denied(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request("GET", f"/v2/team/rules/referrers/{pushed['manifest_digest']}", repository="team/rules")

    assert response.status_code == 403
    assert error_code(response) == "DENIED"


def test_vpc_pull_manifest(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request("GET", "/v2/team/rules/manifests/v1", network="vpc", repository="team/rules")

    assert response.status_code == 200
    assert response.content == pushed["manifest"]


def test_vpc_pull_blob(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request(
        "GET", f"/v2/team/rules/blobs/{pushed['layer_digest']}", network="vpc", repository="team/rules"
    )

    assert response.status_code == 200
    assert response.content == pushed["layer"]


def test_public_head_blob_by_pusher(registry: RegistryClient, pushed: dict) -> None:
    token = registry.repository_token("team/rules", "pull,push")

    response = registry.request("HEAD", f"/v2/team/rules/blobs/{pushed['layer_digest']}", token=token)

    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == pushed["layer_digest"]


def test_public_head_manifest_by_pusher(registry: RegistryClient, pushed: dict) -> None:
    token = registry.repository_token("team/rules", "pull,push")

    response = registry.request("HEAD", "/v2/team/rules/manifests/v1", token=token)

    assert response.status_code == 200


def test_public_head_missing_blob_by_pusher(registry: RegistryClient, pushed: dict) -> None:
    token = registry.repository_token("team/rules", "pull,push")

    response = registry.request("HEAD", f"/v2/team/rules/blobs/{sha256(b'never pushed')}", token=token)

    assert response.status_code == 404


def test_public_get_blob_by_pusher_denied(registry: RegistryClient, pushed: dict) -> None:
    token = registry.repository_token("team/rules", "pull,push")

    response = registry.request("GET", f"/v2/team/rules/blobs/{pushed['layer_digest']}", token=token)

    assert response.status_code == 403
    assert error_code(response) == "DENIED"


def test_public_head_blob_pull_only_denied(registry: RegistryClient, pushed: dict) -> None:
    token = registry.repository_token("team/rules", PULL_ONLY)

    response = registry.request("HEAD", f"/v2/team/rules/blobs/{pushed['layer_digest']}", token=token)

    assert response.status_code == 403


@pytest.mark.parametrize("network", ["public", "vpc"])
def test_push_blob_monolithic(registry: RegistryClient, network: str) -> None:
    data = f"monolithic blob via {network}".encode()

    response = registry.request(
        "POST",
        "/v2/team/push/blobs/uploads/",
        params={"digest": sha256(data)},
        content=data,
        network=network,
        repository="team/push",
    )

    assert response.status_code == 201


@pytest.mark.parametrize("network", ["public", "vpc"])
def test_push_blob_post_put(registry: RegistryClient, network: str) -> None:
    data = f"two-step blob via {network}".encode()
    location = registry.request(
        "POST", "/v2/team/push/blobs/uploads/", network=network, repository="team/push"
    ).headers["Location"]

    response = registry.request(
        "PUT", location, params={"digest": sha256(data)}, content=data, network=network, repository="team/push"
    )

    assert response.status_code == 201


@pytest.mark.parametrize("network", ["public", "vpc"])
def test_push_manifest(registry: RegistryClient, network: str) -> None:
    config = f'{{"pushed":"{network}"}}'.encode()
    registry.push_blob("team/push", config, network=network)

    response = registry.put_manifest("team/push", f"via-{network}", image_manifest(config, []), network=network)

    assert response.status_code == 201


def test_push_only_token_cannot_pull(registry: RegistryClient, pushed: dict) -> None:
    token = registry.repository_token("team/rules", PUSH_ONLY)

    response = registry.request("GET", "/v2/team/rules/manifests/v1", network="vpc", token=token)

    assert response.status_code == 401
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_delete_needs_delete_action(registry: RegistryClient, pushed: dict) -> None:
    token = registry.repository_token("team/rules", "pull,push")

    response = registry.request("DELETE", f"/v2/team/rules/manifests/{pushed['manifest_digest']}", token=token)

    assert response.status_code == 401
    assert 'scope="repository:team/rules:delete"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("network", ["public", "vpc"])
def test_harbor_pull_denied(registry: RegistryClient, pushed: dict, network: str) -> None:
    response = registry.request(
        "GET",
        "/v2/team/rules/manifests/v1",
        network=network,
        repository="team/rules",
        headers={"User-Agent": HARBOR_USER_AGENT},
    )

    assert response.status_code == 403
    assert error_code(response) == "DENIED"
    assert "Harbor remote replication is not supported" in error_message(response)


def test_harbor_push_denied(registry: RegistryClient) -> None:
    response = registry.request(
        "POST", "/v2/team/push/blobs/uploads/", repository="team/push", headers={"User-Agent": HARBOR_USER_AGENT}
    )

    assert response.status_code == 403
    assert error_code(response) == "DENIED"
    assert "Harbor remote replication is not supported" in error_message(response)


def test_harbor_catalog_denied(registry: RegistryClient) -> None:
    response = registry.request(
        "GET",
        "/v2/_catalog",
        network="vpc",
        token=registry.token("registry:catalog:*"),
        headers={"User-Agent": HARBOR_USER_AGENT},
    )

    assert response.status_code == 403
    assert error_code(response) == "DENIED"


@pytest.fixture(scope="module")
def outside_vpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryClient]:
    """An instance on a dedicated server whose only VPC network is 10.0.0.0/8, so 127.0.0.1 is outside it."""
    server = CrpeServer(tmp_path_factory.mktemp("outside-vpc"), extra_env={"CRPE_VPC_NETWORKS": "10.0.0.0/8"})
    server.start()
    try:
        client = RegistryClient(server, server.create_instance("cn-hangzhou"))
        yield client
        client.close()
    finally:
        server.stop()


def test_vpc_from_outside_pull_denied(outside_vpc: RegistryClient) -> None:
    response = outside_vpc.request("GET", "/v2/team/x/manifests/latest", network="vpc", repository="team/x")

    assert response.status_code == 403
    assert error_code(response) == "DENIED"
    assert outside_vpc.instance.public in error_message(response)
    assert outside_vpc.instance.vpc in error_message(response)


def test_vpc_from_outside_push_denied(outside_vpc: RegistryClient) -> None:
    response = outside_vpc.request("POST", "/v2/team/x/blobs/uploads/", network="vpc", repository="team/x")

    assert response.status_code == 403
    assert error_code(response) == "DENIED"


def test_vpc_from_outside_token_denied(outside_vpc: RegistryClient) -> None:
    response = outside_vpc.request_token("repository:team/x:pull", host=outside_vpc.vpc)

    assert response.status_code == 403
    assert error_code(response) == "DENIED"


def test_vpc_from_outside_base_denied(outside_vpc: RegistryClient) -> None:
    """The API version check is a request to the VPC endpoint like any other, so it is refused too."""
    response = outside_vpc.request("GET", "/v2/", network="vpc", token=outside_vpc.token())

    assert response.status_code == 403
    assert error_code(response) == "DENIED"


def test_vpc_from_outside_public_push(outside_vpc: RegistryClient) -> None:
    response = outside_vpc.request("POST", "/v2/team/x/blobs/uploads/", repository="team/x")

    assert response.status_code == 202


def test_forwarded_for_from_untrusted_peer_ignored(outside_vpc: RegistryClient) -> None:
    """Without CRPE_TRUSTED_PROXIES, a client cannot claim a VPC address in X-Forwarded-For."""
    response = outside_vpc.request(
        "POST", "/v2/team/x/blobs/uploads/", network="vpc", repository="team/x", headers={"X-Forwarded-For": "10.1.2.3"}
    )

    assert response.status_code == 403
    assert error_code(response) == "DENIED"


def test_public_endpoint_pull_setting(make_server) -> None:
    server = make_server(CRPE_PUBLIC_ENDPOINT_PULL="true")
    registry = RegistryClient(server, server.create_instance("cn-hangzhou"))
    try:
        manifest = registry.push_image("team/x", "v1", "public pull")
        response = registry.request("GET", "/v2/team/x/manifests/v1", repository="team/x")
        anonymous = registry.request("GET", "/v2/team/x/manifests/v1")
    finally:
        registry.close()

    assert response.status_code == 200
    assert response.content == manifest
    assert anonymous.status_code == 401


# Blobs.


def test_head_blob_headers_match_get(registry: RegistryClient, pushed: dict) -> None:
    path = f"/v2/team/rules/blobs/{pushed['layer_digest']}"

    head = registry.request("HEAD", path, network="vpc", repository="team/rules")
    get = registry.request("GET", path, network="vpc", repository="team/rules")

    assert head.status_code == 200
    assert head.content == b""
    for name in ("Content-Length", "Docker-Content-Digest", "Content-Type"):
        assert head.headers[name] == get.headers[name], name


def test_get_blob_headers(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request(
        "GET", f"/v2/team/rules/blobs/{pushed['layer_digest']}", network="vpc", repository="team/rules"
    )

    assert response.headers["Content-Length"] == str(len(pushed["layer"]))
    assert response.headers["Docker-Content-Digest"] == pushed["layer_digest"]
    assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, None),
        ("bytes=-5", -5, None),
        ("bytes=5-100000", 5, None),
    ],
)
def test_blob_range(registry: RegistryClient, pushed: dict, range_header: str, start: int, end: int | None) -> None:
    layer: bytes = pushed["layer"]
    expected = layer[start:] if end is None else layer[start : end + 1]
    first = start if start >= 0 else len(layer) + start

    response = registry.request(
        "GET",
        f"/v2/team/rules/blobs/{pushed['layer_digest']}",
        network="vpc",
        repository="team/rules",
        headers={"Range": range_header},
    )

    assert response.status_code == 206
    assert response.content == expected
    assert response.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(layer)}"
    assert response.headers["Content-Length"] == str(len(expected))


@pytest.mark.parametrize("range_header", ["bytes=100000-", "bytes=9-2", "bytes=-", "items=0-1"])
def test_blob_range_unsatisfiable(registry: RegistryClient, pushed: dict, range_header: str) -> None:
    response = registry.request(
        "GET",
        f"/v2/team/rules/blobs/{pushed['layer_digest']}",
        network="vpc",
        repository="team/rules",
        headers={"Range": range_header},
    )

    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(pushed['layer'])}"


def test_unknown_blob(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request(
        "GET", f"/v2/team/rules/blobs/{sha256(b'absent')}", network="vpc", repository="team/rules"
    )

    assert response.status_code == 404
    assert error_code(response) == "BLOB_UNKNOWN"


def test_invalid_digest(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request("GET", "/v2/team/rules/blobs/sha256:abc", network="vpc", repository="team/rules")

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


def test_delete_blob(registry: RegistryClient) -> None:
    digest = registry.push_blob("team/delete", b"blob to delete")

    deleted = registry.request("DELETE", f"/v2/team/delete/blobs/{digest}", repository="team/delete")
    head = registry.request("HEAD", f"/v2/team/delete/blobs/{digest}", network="vpc", repository="team/delete")
    get = registry.request("GET", f"/v2/team/delete/blobs/{digest}", network="vpc", repository="team/delete")
    again = registry.request("DELETE", f"/v2/team/delete/blobs/{digest}", repository="team/delete")

    assert deleted.status_code == 202
    assert head.status_code == 404
    assert get.status_code == 404
    assert error_code(get) == "BLOB_UNKNOWN"
    assert again.status_code == 404


def test_delete_blob_keeps_other_repositories(registry: RegistryClient) -> None:
    data = b"blob linked into two repositories"
    digest = registry.push_blob("team/delete-a", data)
    registry.push_blob("team/delete-b", data)

    registry.request("DELETE", f"/v2/team/delete-a/blobs/{digest}", repository="team/delete-a")
    response = registry.request("GET", f"/v2/team/delete-b/blobs/{digest}", network="vpc", repository="team/delete-b")

    assert response.status_code == 200
    assert response.content == data


def test_blob_isolated_between_instances(registry: RegistryClient, other_registry: RegistryClient) -> None:
    data = b"blob pushed to the first instance only"
    digest = registry.push_blob("team/shared", data)
    other_registry.push_blob("team/shared", b"unrelated blob so that the repository exists")

    head = other_registry.request("HEAD", f"/v2/team/shared/blobs/{digest}", network="vpc", repository="team/shared")
    get = other_registry.request("GET", f"/v2/team/shared/blobs/{digest}", network="vpc", repository="team/shared")

    assert head.status_code == 404
    assert get.status_code == 404
    assert error_code(get) == "BLOB_UNKNOWN"


def test_blob_content_stored_once(server: CrpeServer, registry: RegistryClient, other_registry: RegistryClient) -> None:
    data = b"the same bytes pushed to two instances of one region"
    digest = registry.push_blob("team/dedup", data)
    other_registry.push_blob("team/dedup", data)
    blobs = server.root / "data" / "storage" / "cn-hangzhou" / "blobs"

    stored = list(blobs.rglob(digest.split(":", 1)[1]))
    pulled = other_registry.request("GET", f"/v2/team/dedup/blobs/{digest}", network="vpc", repository="team/dedup")

    assert len(stored) == 1
    assert stored[0].read_bytes() == data
    assert pulled.content == data


def test_blob_isolated_between_repositories(registry: RegistryClient, pushed: dict) -> None:
    registry.push_blob("team/elsewhere", b"makes team/elsewhere exist")

    response = registry.request(
        "HEAD", f"/v2/team/elsewhere/blobs/{pushed['layer_digest']}", network="vpc", repository="team/elsewhere"
    )

    assert response.status_code == 404


# Manifests.


def children_for_index(registry: RegistryClient, repository: str, child_type: str) -> list[tuple[str, bytes]]:
    kind = "docker" if child_type == DOCKER_MANIFEST else "oci"
    children = []
    for architecture in ("amd64", "arm64"):
        children.append(
            (
                child_type,
                registry.push_image(
                    repository, f"child-{kind}-{architecture}", f"{architecture} {child_type}", child_type
                ),
            )
        )
    return children


@pytest.fixture(scope="module")
def manifests(registry: RegistryClient) -> dict[str, bytes]:
    """One manifest per supported media type, each pushed under the tag named after its kind."""
    result = {
        OCI_MANIFEST: registry.push_image("team/types", "oci", "oci image", OCI_MANIFEST),
        DOCKER_MANIFEST: registry.push_image("team/types", "docker", "docker image", DOCKER_MANIFEST),
    }
    for media_type, tag, child_type in (
        (OCI_INDEX, "oci-index", OCI_MANIFEST),
        (DOCKER_MANIFEST_LIST, "docker-list", DOCKER_MANIFEST),
    ):
        body = index_manifest(children_for_index(registry, "team/types", child_type), media_type)
        response = registry.put_manifest("team/types", tag, body, media_type)
        assert response.status_code == 201, response.text
        result[media_type] = body
    return result


MEDIA_TYPES = [
    pytest.param(OCI_MANIFEST, "oci", id="oci-manifest"),
    pytest.param(OCI_INDEX, "oci-index", id="oci-index"),
    pytest.param(DOCKER_MANIFEST, "docker", id="docker-schema2"),
    pytest.param(DOCKER_MANIFEST_LIST, "docker-list", id="docker-manifest-list"),
]


@pytest.mark.parametrize(("media_type", "tag"), MEDIA_TYPES)
def test_manifest_get_by_tag(registry: RegistryClient, manifests: dict, media_type: str, tag: str) -> None:
    response = registry.request("GET", f"/v2/team/types/manifests/{tag}", network="vpc", repository="team/types")

    assert response.status_code == 200
    assert response.content == manifests[media_type]
    assert response.headers["Content-Type"] == media_type
    assert response.headers["Docker-Content-Digest"] == sha256(manifests[media_type])
    assert response.headers["Content-Length"] == str(len(manifests[media_type]))


@pytest.mark.parametrize(("media_type", "tag"), MEDIA_TYPES)
def test_manifest_get_by_digest(registry: RegistryClient, manifests: dict, media_type: str, tag: str) -> None:
    digest = sha256(manifests[media_type])

    response = registry.request("GET", f"/v2/team/types/manifests/{digest}", network="vpc", repository="team/types")

    assert response.status_code == 200
    assert response.content == manifests[media_type]
    assert response.headers["Content-Type"] == media_type
    assert response.headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize(("media_type", "tag"), MEDIA_TYPES)
def test_manifest_head(registry: RegistryClient, manifests: dict, media_type: str, tag: str) -> None:
    response = registry.request("HEAD", f"/v2/team/types/manifests/{tag}", network="vpc", repository="team/types")

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Content-Type"] == media_type
    assert response.headers["Docker-Content-Digest"] == sha256(manifests[media_type])
    assert response.headers["Content-Length"] == str(len(manifests[media_type]))


def test_manifest_put_headers(registry: RegistryClient) -> None:
    config = b'{"put":"headers"}'
    registry.push_blob("team/put", config)
    body = image_manifest(config, [])

    response = registry.put_manifest("team/put", "v1", body)

    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == sha256(body)
    assert response.headers["Location"] == f"/v2/team/put/manifests/{sha256(body)}"
    assert "OCI-Subject" not in response.headers


def test_manifest_put_by_digest(registry: RegistryClient) -> None:
    config = b'{"put":"by digest"}'
    registry.push_blob("team/put", config)
    body = image_manifest(config, [])

    response = registry.put_manifest("team/put", sha256(body), body)
    pulled = registry.request("GET", f"/v2/team/put/manifests/{sha256(body)}", network="vpc", repository="team/put")

    assert response.status_code == 201
    assert pulled.content == body


def test_manifest_put_by_wrong_digest(registry: RegistryClient) -> None:
    config = b'{"put":"wrong digest"}'
    registry.push_blob("team/put", config)
    body = image_manifest(config, [])

    response = registry.put_manifest("team/put", sha256(body + b" "), body)

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


def test_manifest_by_sha512(registry: RegistryClient) -> None:
    config = b'{"digest":"sha512"}'
    registry.push_blob("team/put", config)
    body = image_manifest(config, [])
    digest = sha512(body)

    response = registry.put_manifest("team/put", digest, body)
    pulled = registry.request("GET", f"/v2/team/put/manifests/{digest}", network="vpc", repository="team/put")

    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == digest
    assert pulled.status_code == 200
    assert pulled.content == body
    assert pulled.headers["Docker-Content-Digest"] == digest


def test_manifest_bytes_kept_exactly(registry: RegistryClient) -> None:
    """The registry stores the pushed bytes, not a re-serialization: odd spacing and key order survive."""
    config = b'{"exact":"bytes"}'
    registry.push_blob("team/put", config)
    body = (
        b'{ "layers" : [],\n\t"schemaVersion":2, "config": '
        + json.dumps(descriptor("application/vnd.oci.image.config.v1+json", config)).encode()
        + b',"mediaType":"'
        + OCI_MANIFEST.encode()
        + b'"}\n\n'
    )

    registry.put_manifest("team/put", "exact", body)
    pulled = registry.request("GET", "/v2/team/put/manifests/exact", network="vpc", repository="team/put")

    assert pulled.content == body
    assert pulled.headers["Docker-Content-Digest"] == sha256(body)


def test_manifest_media_type_from_body(registry: RegistryClient) -> None:
    """Without a Content-Type header the manifest's own mediaType field decides."""
    config = b'{"content type":"absent"}'
    registry.push_blob("team/put", config)
    body = image_manifest(config, [], DOCKER_MANIFEST)

    response = registry.request("PUT", "/v2/team/put/manifests/no-content-type", content=body, repository="team/put")
    pulled = registry.request("GET", "/v2/team/put/manifests/no-content-type", network="vpc", repository="team/put")

    assert response.status_code == 201
    assert pulled.headers["Content-Type"] == DOCKER_MANIFEST


def test_manifest_blob_unknown(registry: RegistryClient) -> None:
    config = b'{"pushed":"no"}'

    response = registry.put_manifest("team/put", "missing", image_manifest(config, [b"no layer either"]))

    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"


def test_index_child_unknown(registry: RegistryClient) -> None:
    child = image_manifest(b'{"child":"absent"}', [])

    response = registry.put_manifest("team/put", "index-missing", index_manifest([(OCI_MANIFEST, child)]), OCI_INDEX)

    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"schemaVersion": 1}', b""],
    ids=["broken-json", "json-array", "schema-version-1", "empty"],
)
def test_manifest_invalid(registry: RegistryClient, body: bytes) -> None:
    response = registry.put_manifest("team/put", "invalid", body)

    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"


def test_manifest_media_type_mismatch(registry: RegistryClient) -> None:
    config = b'{"mismatch":true}'
    registry.push_blob("team/put", config)

    response = registry.put_manifest("team/put", "mismatch", image_manifest(config, []), DOCKER_MANIFEST)

    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"


def test_manifest_invalid_tag(registry: RegistryClient) -> None:
    config = b'{"tag":"invalid"}'
    registry.push_blob("team/put", config)

    response = registry.put_manifest("team/put", "-bad-tag", image_manifest(config, []))

    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"


@pytest.mark.parametrize(
    ("tag", "status"),
    [("a" * 128, 201), ("a" * 129, 400), ("_x", 201), ("X.Y-z", 201)],
    ids=["128-characters", "129-characters", "underscore-first", "mixed"],
)
def test_manifest_tag_grammar(registry: RegistryClient, tag: str, status: int) -> None:
    config = b'{"tag":"grammar"}'
    registry.push_blob("team/put", config)

    response = registry.put_manifest("team/put", tag, image_manifest(config, []))

    assert response.status_code == status


def test_manifest_content_type_parameters(registry: RegistryClient) -> None:
    """Media type parameters in Content-Type are accepted, and the bare media type is served back."""
    config = b'{"content type":"with charset"}'
    registry.push_blob("team/put", config)
    body = image_manifest(config, [])

    response = registry.put_manifest("team/put", "charset", body, f"{OCI_MANIFEST}; charset=utf-8")
    pulled = registry.request("GET", "/v2/team/put/manifests/charset", network="vpc", repository="team/put")

    assert response.status_code == 201
    assert pulled.headers["Content-Type"] == OCI_MANIFEST


def test_manifest_too_large(registry: RegistryClient) -> None:
    config = b'{"large":true}'
    registry.push_blob("team/large", config)
    body = image_manifest(config, [], annotations={"padding": "x" * (4 * 1024 * 1024)})

    response = registry.put_manifest("team/large", "huge", body)
    by_tag = registry.request("GET", "/v2/team/large/manifests/huge", network="vpc", repository="team/large")
    by_digest = registry.request(
        "GET", f"/v2/team/large/manifests/{sha256(body)}", network="vpc", repository="team/large"
    )

    assert response.status_code == 413
    assert by_tag.status_code == 404
    assert error_code(by_tag) == "MANIFEST_UNKNOWN"
    assert by_digest.status_code == 404


def test_manifest_too_large_chunked(registry: RegistryClient) -> None:
    """Without Content-Length the limit applies while the body streams in."""
    config = b'{"large":"chunked"}'
    registry.push_blob("team/large", config)
    body = image_manifest(config, [], annotations={"padding": "y" * (4 * 1024 * 1024)})

    response = registry.request(
        "PUT",
        "/v2/team/large/manifests/huge-chunked",
        repository="team/large",
        headers={"Content-Type": OCI_MANIFEST},
        content=(body[i : i + 65536] for i in range(0, len(body), 65536)),
    )
    by_tag = registry.request("GET", "/v2/team/large/manifests/huge-chunked", network="vpc", repository="team/large")

    assert response.status_code == 413
    assert by_tag.status_code == 404


def test_manifest_just_under_limit(registry: RegistryClient) -> None:
    config = b'{"large":false}'
    registry.push_blob("team/large", config)
    skeleton = image_manifest(config, [], annotations={"padding": ""})
    body = image_manifest(config, [], annotations={"padding": "x" * (4 * 1024 * 1024 - len(skeleton))})
    assert len(body) == 4 * 1024 * 1024

    response = registry.put_manifest("team/large", "at-limit", body)

    assert response.status_code == 201


def test_unknown_manifest(registry: RegistryClient, pushed: dict) -> None:
    response = registry.request("GET", "/v2/team/rules/manifests/no-such-tag", network="vpc", repository="team/rules")

    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"


def test_manifest_in_unknown_repository(registry: RegistryClient) -> None:
    response = registry.request(
        "GET", "/v2/team/never-pushed/manifests/latest", network="vpc", repository="team/never-pushed"
    )

    assert response.status_code == 404


def test_manifest_isolated_between_instances(
    registry: RegistryClient, other_registry: RegistryClient, pushed: dict
) -> None:
    other_registry.push_image("team/rules", "other", "other instance")

    response = other_registry.request(
        "GET", f"/v2/team/rules/manifests/{pushed['manifest_digest']}", network="vpc", repository="team/rules"
    )

    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"


# Tags.


@pytest.fixture(scope="module")
def tagged(registry: RegistryClient) -> bytes:
    """team/tags with tags a to e on one manifest."""
    body = registry.push_image("team/tags", "a", "tags")
    for tag in ("b", "c", "d", "e"):
        assert registry.put_manifest("team/tags", tag, body).status_code == 201
    return body


def list_tags(registry: RegistryClient, repository: str, **params: object):
    return registry.request("GET", f"/v2/{repository}/tags/list", params=params, network="vpc", repository=repository)


def test_tag_list(registry: RegistryClient, tagged: bytes) -> None:
    response = list_tags(registry, "team/tags")

    assert response.status_code == 200
    assert response.json() == {"name": "team/tags", "tags": ["a", "b", "c", "d", "e"]}
    assert "Link" not in response.headers


def test_tag_list_first_page(registry: RegistryClient, tagged: bytes) -> None:
    response = list_tags(registry, "team/tags", n=2)

    assert response.json()["tags"] == ["a", "b"]
    assert response.headers["Link"] == '</v2/team/tags/tags/list?n=2&last=b>; rel="next"'


def test_tag_list_middle_page(registry: RegistryClient, tagged: bytes) -> None:
    response = list_tags(registry, "team/tags", n=2, last="b")

    assert response.json()["tags"] == ["c", "d"]
    assert response.headers["Link"] == '</v2/team/tags/tags/list?n=2&last=d>; rel="next"'


def test_tag_list_last_page(registry: RegistryClient, tagged: bytes) -> None:
    response = list_tags(registry, "team/tags", n=2, last="d")

    assert response.json()["tags"] == ["e"]
    assert "Link" not in response.headers


def test_tag_list_exact_page(registry: RegistryClient, tagged: bytes) -> None:
    response = list_tags(registry, "team/tags", n=5)

    assert response.json()["tags"] == ["a", "b", "c", "d", "e"]
    assert "Link" not in response.headers


def test_tag_list_last_only(registry: RegistryClient, tagged: bytes) -> None:
    response = list_tags(registry, "team/tags", last="c")

    assert response.json()["tags"] == ["d", "e"]


def test_tag_list_n_zero(registry: RegistryClient, tagged: bytes) -> None:
    response = list_tags(registry, "team/tags", n=0)

    assert response.status_code == 200
    assert response.json() == {"name": "team/tags", "tags": []}
    assert "Link" not in response.headers


def test_tag_list_invalid_n(registry: RegistryClient, tagged: bytes) -> None:
    response = list_tags(registry, "team/tags", n="many")

    assert response.status_code == 400


def test_tag_list_unknown_repository(registry: RegistryClient) -> None:
    response = list_tags(registry, "team/no-tags-here")

    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


def test_tag_delete_keeps_manifest(registry: RegistryClient) -> None:
    body = registry.push_image("team/untag", "keep", "untag")
    registry.put_manifest("team/untag", "drop", body)

    deleted = registry.request("DELETE", "/v2/team/untag/manifests/drop", repository="team/untag")
    dropped = registry.request("GET", "/v2/team/untag/manifests/drop", network="vpc", repository="team/untag")
    kept = registry.request("GET", "/v2/team/untag/manifests/keep", network="vpc", repository="team/untag")
    by_digest = registry.request(
        "GET", f"/v2/team/untag/manifests/{sha256(body)}", network="vpc", repository="team/untag"
    )

    assert deleted.status_code == 202
    assert dropped.status_code == 404
    assert kept.status_code == 200
    assert by_digest.content == body
    assert list_tags(registry, "team/untag").json()["tags"] == ["keep"]


def test_manifest_delete_removes_tags(registry: RegistryClient) -> None:
    body = registry.push_image("team/unmanifest", "one", "unmanifest")
    registry.put_manifest("team/unmanifest", "two", body)
    other = registry.push_image("team/unmanifest", "other", "unmanifest other")

    deleted = registry.request("DELETE", f"/v2/team/unmanifest/manifests/{sha256(body)}", repository="team/unmanifest")
    by_digest = registry.request(
        "GET", f"/v2/team/unmanifest/manifests/{sha256(body)}", network="vpc", repository="team/unmanifest"
    )
    by_tag = registry.request("GET", "/v2/team/unmanifest/manifests/one", network="vpc", repository="team/unmanifest")
    untouched = registry.request(
        "GET", "/v2/team/unmanifest/manifests/other", network="vpc", repository="team/unmanifest"
    )

    assert deleted.status_code == 202
    assert by_digest.status_code == 404
    assert by_tag.status_code == 404
    assert untouched.content == other
    assert list_tags(registry, "team/unmanifest").json()["tags"] == ["other"]


def test_manifest_delete_keeps_blobs(registry: RegistryClient) -> None:
    config = b'{"blobs":"outlive their manifest"}'
    registry.push_blob("team/unmanifest", config)
    body = image_manifest(config, [])
    registry.put_manifest("team/unmanifest", "short-lived", body)

    registry.request("DELETE", f"/v2/team/unmanifest/manifests/{sha256(body)}", repository="team/unmanifest")
    pulled = registry.request(
        "GET", f"/v2/team/unmanifest/blobs/{sha256(config)}", network="vpc", repository="team/unmanifest"
    )

    assert pulled.status_code == 200
    assert pulled.content == config


def test_manifest_delete_twice(registry: RegistryClient) -> None:
    body = registry.push_image("team/unmanifest", "twice", "deleted twice")
    path = f"/v2/team/unmanifest/manifests/{sha256(body)}"

    first = registry.request("DELETE", path, repository="team/unmanifest")
    second = registry.request("DELETE", path, repository="team/unmanifest")

    assert first.status_code == 202
    assert second.status_code == 404
    assert error_code(second) == "MANIFEST_UNKNOWN"


def test_delete_unknown_tag(registry: RegistryClient, tagged: bytes) -> None:
    response = registry.request("DELETE", "/v2/team/tags/manifests/no-such-tag", repository="team/tags")

    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"


def test_retag_moves_tag(registry: RegistryClient) -> None:
    first = registry.push_image("team/retag", "latest", "retag first")
    second = registry.push_image("team/retag", "latest", "retag second")

    pulled = registry.request("GET", "/v2/team/retag/manifests/latest", network="vpc", repository="team/retag")
    old = registry.request("GET", f"/v2/team/retag/manifests/{sha256(first)}", network="vpc", repository="team/retag")

    assert pulled.content == second
    assert old.content == first


# Referrers.


@pytest.fixture(scope="module")
def referrers(registry: RegistryClient) -> dict[str, object]:
    """An image in team/refs with a signature and an SBOM artifact whose subject is that image."""
    subject = registry.push_image("team/refs", "v1", "referrers subject")
    empty_digest = registry.push_blob("team/refs", EMPTY_CONTENT)
    assert empty_digest == EMPTY_DIGEST
    artifacts = {}
    for artifact_type, payload in (
        ("application/vnd.example.signature", b"signature bytes"),
        ("application/vnd.example.sbom+json", b'{"sbom":[]}'),
    ):
        registry.push_blob("team/refs", payload)
        body = manifest_bytes(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
                "layers": [descriptor("application/octet-stream", payload)],
                "subject": descriptor(OCI_MANIFEST, subject),
                "annotations": {"org.example.kind": artifact_type.rsplit(".", 1)[1]},
            }
        )
        response = registry.put_manifest("team/refs", sha256(body), body)
        assert response.status_code == 201, response.text
        artifacts[artifact_type] = {"body": body, "response": response}
    return {"subject": subject, "artifacts": artifacts}


def list_referrers(registry: RegistryClient, digest: str, **params: str):
    return registry.request(
        "GET", f"/v2/team/refs/referrers/{digest}", params=params, network="vpc", repository="team/refs"
    )


def test_empty_descriptor_blob(registry: RegistryClient, referrers: dict) -> None:
    response = registry.request("GET", f"/v2/team/refs/blobs/{EMPTY_DIGEST}", network="vpc", repository="team/refs")

    assert response.content == b"{}"
    assert response.headers["Content-Length"] == "2"


def test_artifact_put_subject_header(referrers: dict) -> None:
    for artifact in referrers["artifacts"].values():
        subject_digest = sha256(referrers["subject"])

        assert artifact["response"].headers["OCI-Subject"] == subject_digest


def test_referrers_list(registry: RegistryClient, referrers: dict) -> None:
    response = list_referrers(registry, sha256(referrers["subject"]))
    index = response.json()
    expected = sorted(
        (
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha256(artifact["body"]),
                "size": len(artifact["body"]),
                "artifactType": artifact_type,
                "annotations": {"org.example.kind": artifact_type.rsplit(".", 1)[1]},
            }
            for artifact_type, artifact in referrers["artifacts"].items()
        ),
        key=lambda item: item["digest"],
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    assert sorted(index["manifests"], key=lambda item: item["digest"]) == expected
    assert "OCI-Filters-Applied" not in response.headers


def test_referrers_filtered(registry: RegistryClient, referrers: dict) -> None:
    signature = referrers["artifacts"]["application/vnd.example.signature"]["body"]

    response = list_referrers(registry, sha256(referrers["subject"]), artifactType="application/vnd.example.signature")

    assert response.status_code == 200
    assert [item["digest"] for item in response.json()["manifests"]] == [sha256(signature)]
    assert response.headers["OCI-Filters-Applied"] == "artifactType"


def test_referrers_filter_matches_none(registry: RegistryClient, referrers: dict) -> None:
    response = list_referrers(registry, sha256(referrers["subject"]), artifactType="application/vnd.example.none")

    assert response.json()["manifests"] == []
    assert response.headers["OCI-Filters-Applied"] == "artifactType"


def test_referrers_unknown_subject(registry: RegistryClient, referrers: dict) -> None:
    response = list_referrers(registry, sha256(b"no manifest has this digest"))

    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    assert response.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def test_referrers_image_artifact_type_from_config(registry: RegistryClient) -> None:
    """An image manifest with a subject but no artifactType is listed under its config media type."""
    subject = registry.push_image("team/refs", "v2", "second subject")
    config = b'{"config":"of an image referrer"}'
    registry.push_blob("team/refs", config)
    body = image_manifest(config, [], subject=descriptor(OCI_MANIFEST, subject))
    registry.put_manifest("team/refs", sha256(body), body)

    response = list_referrers(registry, sha256(subject))

    assert response.json()["manifests"][0]["artifactType"] == "application/vnd.oci.image.config.v1+json"


def test_referrer_before_subject(registry: RegistryClient) -> None:
    """A referrer may be pushed before its subject exists."""
    subject = image_manifest(b'{"subject":"pushed later"}', [])
    registry.push_blob("team/refs", EMPTY_CONTENT)
    body = manifest_bytes(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.early",
            "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
            "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}],
            "subject": descriptor(OCI_MANIFEST, subject),
        }
    )

    response = registry.put_manifest("team/refs", sha256(body), body)
    listed = list_referrers(registry, sha256(subject))

    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == sha256(subject)
    assert [item["digest"] for item in listed.json()["manifests"]] == [sha256(body)]


def test_deleted_referrer_not_listed(registry: RegistryClient) -> None:
    subject = registry.push_image("team/refs", "v3", "subject of a deleted referrer")
    registry.push_blob("team/refs", EMPTY_CONTENT)
    body = manifest_bytes(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.deleted",
            "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
            "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}],
            "subject": descriptor(OCI_MANIFEST, subject),
        }
    )
    registry.put_manifest("team/refs", sha256(body), body)
    listed_before = list_referrers(registry, sha256(subject))

    registry.request("DELETE", f"/v2/team/refs/manifests/{sha256(body)}", repository="team/refs")
    listed_after = list_referrers(registry, sha256(subject))

    assert [item["digest"] for item in listed_before.json()["manifests"]] == [sha256(body)]
    assert listed_after.json()["manifests"] == []


def test_referrers_invalid_digest(registry: RegistryClient, referrers: dict) -> None:
    response = list_referrers(registry, "sha256:tooshort")

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


# Catalog.


@pytest.fixture(scope="module")
def catalogs(server: CrpeServer, other_registry: RegistryClient) -> Iterator[tuple[RegistryClient, RegistryClient]]:
    """A fresh instance with team/cat-a to cat-c, and the second instance, which gets team/dog."""
    first = RegistryClient(server, server.create_instance("cn-hangzhou"))
    for name in ("team/cat-a", "team/cat-b", "team/cat-c"):
        first.push_blob(name, name.encode())
    other_registry.push_blob("team/dog", b"team/dog")
    yield first, other_registry
    first.close()


def get_catalog(registry: RegistryClient, **params: object):
    return registry.request(
        "GET", "/v2/_catalog", params=params, network="vpc", token=registry.token("registry:catalog:*")
    )


def test_catalog_own_repositories(catalogs: tuple[RegistryClient, RegistryClient]) -> None:
    first, second = catalogs

    first_names = get_catalog(first).json()["repositories"]
    second_names = get_catalog(second).json()["repositories"]

    assert first_names == ["team/cat-a", "team/cat-b", "team/cat-c"]
    assert "team/dog" in second_names
    assert not [name for name in second_names if name.startswith("team/cat-")]
    assert second_names == sorted(second_names)


def test_catalog_first_page(catalogs: tuple[RegistryClient, RegistryClient]) -> None:
    response = get_catalog(catalogs[0], n=2)

    assert response.json() == {"repositories": ["team/cat-a", "team/cat-b"]}
    assert response.headers["Link"] == f'</v2/_catalog?n=2&last={quote("team/cat-b", safe="")}>; rel="next"'


def test_catalog_next_page(catalogs: tuple[RegistryClient, RegistryClient]) -> None:
    response = get_catalog(catalogs[0], n=2, last="team/cat-b")

    assert response.json() == {"repositories": ["team/cat-c"]}
    assert "Link" not in response.headers


def test_catalog_n_zero(catalogs: tuple[RegistryClient, RegistryClient]) -> None:
    response = get_catalog(catalogs[0], n=0)

    assert response.status_code == 200
    assert response.json() == {"repositories": []}


def test_catalog_anonymous(catalogs: tuple[RegistryClient, RegistryClient]) -> None:
    response = catalogs[0].request("GET", "/v2/_catalog", network="vpc")

    assert response.status_code == 401
    assert 'scope="registry:catalog:*"' in response.headers["WWW-Authenticate"]


def test_catalog_token_of_other_instance(catalogs: tuple[RegistryClient, RegistryClient]) -> None:
    first, second = catalogs

    response = second.request("GET", "/v2/_catalog", network="vpc", token=first.token("registry:catalog:*"))

    assert response.status_code == 401


# Names and methods.


def test_push_to_missing_namespace(registry: RegistryClient) -> None:
    response = registry.request("POST", "/v2/nowhere/app/blobs/uploads/", repository="nowhere/app")

    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"
    assert (
        f"namespace 'nowhere' does not exist in this instance; create it with `crpe namespace create "
        f"--instance {registry.instance.id} nowhere`"
    ) in error_message(response)


def test_manifest_to_missing_namespace(registry: RegistryClient) -> None:
    response = registry.put_manifest("nowhere/app", "v1", image_manifest(b"{}", []))

    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


@pytest.mark.parametrize("name", ["team/a/b", "Team/App", "team/app-", "team", "team//app", "team/a..b"])
def test_invalid_repository_name(registry: RegistryClient, name: str) -> None:
    response = registry.request("POST", f"/v2/{name}/blobs/uploads/", repository="team/app")

    assert response.status_code == 400
    assert error_code(response) == "NAME_INVALID"


def test_invalid_name_on_manifest_get(registry: RegistryClient) -> None:
    response = registry.request("GET", "/v2/team/a/b/manifests/latest", network="vpc", repository="team/app")

    assert response.status_code == 400
    assert error_code(response) == "NAME_INVALID"


def test_repository_name_too_long(registry: RegistryClient) -> None:
    name = "team/" + "a" * 300

    response = registry.request("POST", f"/v2/{name}/blobs/uploads/", repository="team/app")

    assert response.status_code == 400
    assert error_code(response) == "NAME_INVALID"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v2/team/rules/manifests/v1", "GET, HEAD, PUT, DELETE"),
        ("PATCH", "/v2/team/rules/tags/list", "GET"),
        ("PUT", f"/v2/team/rules/blobs/{EMPTY_DIGEST}", "GET, HEAD, DELETE"),
        ("DELETE", "/v2/_catalog", "GET"),
        ("POST", "/v2/", "GET, HEAD"),
    ],
)
def test_unsupported_method(registry: RegistryClient, method: str, path: str, allow: str) -> None:
    response = registry.request(method, path, repository="team/rules")

    assert response.status_code == 405
    assert error_code(response) == "UNSUPPORTED"
    assert response.headers["Allow"] == allow


def test_unknown_v2_path(registry: RegistryClient) -> None:
    response = registry.request("GET", "/v2/team/rules/unknown", repository="team/rules")

    assert response.status_code == 400
    assert error_code(response) == "NAME_INVALID"
