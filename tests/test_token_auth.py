"""The Docker token authentication flow of a new instance, over HTTP against a real server."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from urllib.parse import urlencode

import jwt
import pytest
from registry_client import RegistryClient, error_code
from server import CrpeServer

REPOSITORY = "team/app"


@pytest.fixture(scope="module")
def registry(server: CrpeServer) -> Iterator[RegistryClient]:
    client = RegistryClient(server, server.create_instance("cn-hangzhou"))
    yield client
    client.close()


def claims(token: str) -> dict:
    """Decode a JWT without verifying its signature: the test reads what the server put in it."""
    return jwt.decode(token, options={"verify_signature": False})


def access_claim(token: str) -> dict[str, list[str]]:
    """Return the token's `access` claim as {"<type>:<name>": sorted actions}."""
    return {f"{item['type']}:{item['name']}": sorted(item["actions"]) for item in claims(token)["access"]}


def test_base_challenge_status(registry: RegistryClient) -> None:
    response = registry.request("GET", "/v2/")

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


def test_base_challenge_header(registry: RegistryClient) -> None:
    response = registry.request("GET", "/v2/")

    assert (
        response.headers["WWW-Authenticate"]
        == f'Bearer realm="http://{registry.public}/auth/token",service="{registry.instance.public}"'
    )


def test_base_challenge_on_vpc_names_public_service(registry: RegistryClient) -> None:
    response = registry.request("GET", "/v2/", network="vpc")

    assert (
        response.headers["WWW-Authenticate"]
        == f'Bearer realm="http://{registry.vpc}/auth/token",service="{registry.instance.public}"'
    )


def test_base_api_version_header(registry: RegistryClient) -> None:
    response = registry.request("GET", "/v2/")

    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_base_with_token(registry: RegistryClient) -> None:
    response = registry.request("GET", "/v2/", token=registry.token())

    assert response.status_code == 200
    assert response.json() == {}


def test_token_response_fields(registry: RegistryClient) -> None:
    response = registry.request_token(f"repository:{REPOSITORY}:pull")
    body = response.json()

    assert response.status_code == 200
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert "refresh_token" not in body


def test_token_issued_at_is_rfc3339(registry: RegistryClient) -> None:
    issued_at = registry.request_token(f"repository:{REPOSITORY}:pull").json()["issued_at"]

    parsed = datetime.datetime.fromisoformat(issued_at)

    assert issued_at.endswith("Z")
    assert abs((datetime.datetime.now(datetime.UTC) - parsed).total_seconds()) < 60


def test_token_response_not_cached(registry: RegistryClient) -> None:
    response = registry.request_token(f"repository:{REPOSITORY}:pull")

    assert response.headers["Cache-Control"] == "no-store"


def test_token_claims_audience_and_subject(registry: RegistryClient) -> None:
    token = registry.request_token(f"repository:{REPOSITORY}:pull").json()["token"]

    assert claims(token)["aud"] == registry.instance.public
    assert claims(token)["sub"] == registry.instance.username


def test_token_expiry_matches_expires_in(registry: RegistryClient) -> None:
    body = registry.request_token(f"repository:{REPOSITORY}:pull").json()
    token_claims = claims(body["token"])

    assert token_claims["exp"] - token_claims["iat"] == body["expires_in"]


def test_access_claim_exact_actions(registry: RegistryClient) -> None:
    token = registry.request_token(f"repository:{REPOSITORY}:pull,push").json()["token"]

    assert claims(token)["access"] == [{"type": "repository", "name": REPOSITORY, "actions": ["pull", "push"]}]


def test_access_claim_drops_unknown_actions(registry: RegistryClient) -> None:
    token = registry.request_token(f"repository:{REPOSITORY}:pull,fly").json()["token"]

    assert access_claim(token) == {f"repository:{REPOSITORY}": ["pull"]}


def test_access_claim_wildcard_action(registry: RegistryClient) -> None:
    token = registry.request_token(f"repository:{REPOSITORY}:*").json()["token"]

    assert access_claim(token) == {f"repository:{REPOSITORY}": ["delete", "pull", "push"]}


def test_access_claim_skips_invalid_repository(registry: RegistryClient) -> None:
    token = registry.request_token("repository:Team/App:pull").json()["token"]

    assert claims(token)["access"] == []


def test_token_without_scope(registry: RegistryClient) -> None:
    response = registry.request_token()

    assert response.status_code == 200
    assert claims(response.json()["token"])["access"] == []


def test_repeated_scope_parameters(registry: RegistryClient) -> None:
    token = registry.request_token("repository:team/a:pull", "repository:team/b:pull,push").json()["token"]

    assert access_claim(token) == {"repository:team/a": ["pull"], "repository:team/b": ["pull", "push"]}


def test_space_separated_scopes(registry: RegistryClient) -> None:
    token = registry.request_token("repository:team/a:pull repository:team/b:push").json()["token"]

    assert access_claim(token) == {"repository:team/a": ["pull"], "repository:team/b": ["push"]}


def test_repeated_scope_same_repository_merged(registry: RegistryClient) -> None:
    token = registry.request_token("repository:team/a:pull", "repository:team/a:push").json()["token"]

    assert access_claim(token) == {"repository:team/a": ["pull", "push"]}


def test_catalog_scope(registry: RegistryClient) -> None:
    token = registry.request_token("registry:catalog:*").json()["token"]

    assert access_claim(token) == {"registry:catalog": ["*"]}


def test_token_on_vpc_host(registry: RegistryClient) -> None:
    response = registry.request_token(f"repository:{REPOSITORY}:pull", host=registry.vpc)

    assert response.status_code == 200
    assert claims(response.json()["token"])["aud"] == registry.instance.public


def test_token_for_other_service(registry: RegistryClient) -> None:
    response = registry.http.get(
        "/auth/token",
        params={"service": registry.instance.vpc},
        auth=(registry.instance.username, registry.instance.password),
        headers={"Host": registry.public},
    )

    assert response.status_code == 400
    assert registry.instance.public in response.text


def test_wrong_password(registry: RegistryClient) -> None:
    response = registry.request_token(
        f"repository:{REPOSITORY}:pull", auth=(registry.instance.username, "not-the-password")
    )

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
    assert "token" not in response.json()


def test_unknown_user(registry: RegistryClient) -> None:
    response = registry.request_token(f"repository:{REPOSITORY}:pull", auth=("nobody", registry.instance.password))

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


def test_anonymous_token_refused(registry: RegistryClient) -> None:
    response = registry.http.get(
        "/auth/token",
        params={"service": registry.instance.public, "scope": f"repository:{REPOSITORY}:pull"},
        headers={"Host": registry.public},
    )

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
    assert "token" not in response.json()


def password_grant(registry: RegistryClient, password: str, **fields: str) -> dict:
    form = {
        "grant_type": "password",
        "service": registry.instance.public,
        "client_id": "crpe-tests",
        "username": registry.instance.username,
        "password": password,
        "scope": f"repository:{REPOSITORY}:pull",
        **fields,
    }
    response = registry.http.post("/auth/token", data=form, headers={"Host": registry.public})
    assert response.status_code == 200, response.text
    return response.json()


def refresh_grant(registry: RegistryClient, refresh_token: str):
    form = {
        "grant_type": "refresh_token",
        "service": registry.instance.public,
        "client_id": "crpe-tests",
        "refresh_token": refresh_token,
        "scope": f"repository:{REPOSITORY}:pull,push",
    }
    return registry.http.post("/auth/token", data=form, headers={"Host": registry.public})


def test_password_grant_offline(registry: RegistryClient) -> None:
    body = password_grant(registry, registry.instance.password, access_type="offline")

    assert body["refresh_token"]
    assert access_claim(body["access_token"]) == {f"repository:{REPOSITORY}": ["pull"]}


def test_get_token_offline(registry: RegistryClient) -> None:
    response = registry.http.get(
        "/auth/token",
        auth=(registry.instance.username, registry.instance.password),
        headers={"Host": registry.public},
        params={
            "service": registry.instance.public,
            "offline_token": "true",
            "client_id": "crpe-tests",
            "scope": f"repository:{REPOSITORY}:pull",
        },
    )

    assert response.status_code == 200
    assert response.json()["refresh_token"]


def test_password_grant_repeated_scopes(registry: RegistryClient) -> None:
    form = [
        ("grant_type", "password"),
        ("service", registry.instance.public),
        ("client_id", "crpe-tests"),
        ("username", registry.instance.username),
        ("password", registry.instance.password),
        ("scope", "repository:team/a:pull"),
        ("scope", "repository:team/b:push"),
    ]

    response = registry.http.post(
        "/auth/token",
        headers={"Host": registry.public, "Content-Type": "application/x-www-form-urlencoded"},
        content=urlencode(form),
    )

    assert response.status_code == 200
    assert access_claim(response.json()["access_token"]) == {
        "repository:team/a": ["pull"],
        "repository:team/b": ["push"],
    }


def test_password_grant_wrong_password(registry: RegistryClient) -> None:
    response = registry.http.post(
        "/auth/token",
        headers={"Host": registry.public},
        data={
            "grant_type": "password",
            "service": registry.instance.public,
            "client_id": "crpe-tests",
            "username": registry.instance.username,
            "password": "wrong",
            "access_type": "offline",
        },
    )

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


def test_unsupported_grant_type(registry: RegistryClient) -> None:
    response = registry.http.post(
        "/auth/token",
        headers={"Host": registry.public},
        data={"grant_type": "client_credentials", "service": registry.instance.public},
    )

    assert response.status_code == 400


def test_refresh_grant(registry: RegistryClient) -> None:
    refresh_token = password_grant(registry, registry.instance.password, access_type="offline")["refresh_token"]

    response = refresh_grant(registry, refresh_token)

    assert response.status_code == 200
    assert access_claim(response.json()["access_token"]) == {f"repository:{REPOSITORY}": ["pull", "push"]}


def test_refreshed_token_authorizes(registry: RegistryClient) -> None:
    refresh_token = password_grant(registry, registry.instance.password, access_type="offline")["refresh_token"]
    access_token = refresh_grant(registry, refresh_token).json()["access_token"]

    response = registry.request("GET", "/v2/", token=access_token)

    assert response.status_code == 200


def test_refresh_token_not_bearer(registry: RegistryClient) -> None:
    refresh_token = password_grant(registry, registry.instance.password, access_type="offline")["refresh_token"]

    response = registry.request("GET", "/v2/", token=refresh_token)

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_bogus_refresh_token(registry: RegistryClient) -> None:
    response = refresh_grant(registry, "not-a-refresh-token")

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


def test_access_token_as_refresh_token(registry: RegistryClient) -> None:
    response = refresh_grant(registry, registry.token(f"repository:{REPOSITORY}:pull"))

    assert response.status_code == 401


def test_refresh_token_invalid_after_password_change(server: CrpeServer) -> None:
    registry = RegistryClient(server, server.create_instance("cn-hangzhou"))
    try:
        refresh_token = password_grant(registry, registry.instance.password, access_type="offline")["refresh_token"]
        before = refresh_grant(registry, refresh_token)
        server.cli("password", "set", "--instance", registry.instance.id, input="Changed-pass-2\n")

        after = refresh_grant(registry, refresh_token)
        old_password = registry.request_token(f"repository:{REPOSITORY}:pull")
        new_password = registry.request_token(
            f"repository:{REPOSITORY}:pull", auth=(registry.instance.username, "Changed-pass-2")
        )
    finally:
        registry.close()

    assert before.status_code == 200
    assert after.status_code == 401
    assert error_code(after) == "UNAUTHORIZED"
    assert "password changed" in after.json()["errors"][0]["message"]
    assert old_password.status_code == 401
    assert new_password.status_code == 200


def test_refresh_token_of_other_instance(server: CrpeServer, registry: RegistryClient) -> None:
    refresh_token = password_grant(registry, registry.instance.password, access_type="offline")["refresh_token"]
    other = RegistryClient(server, server.create_instance("cn-hangzhou"))
    try:
        response = refresh_grant(other, refresh_token)
    finally:
        other.close()

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


def test_bogus_bearer_token(registry: RegistryClient) -> None:
    response = registry.request("GET", "/v2/", token="not.a.token")

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_bogus_bearer_token_on_manifest(registry: RegistryClient) -> None:
    response = registry.request("GET", f"/v2/{REPOSITORY}/manifests/latest", network="vpc", token="bogus")

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_tampered_token(registry: RegistryClient) -> None:
    header, payload, signature = registry.token(f"repository:{REPOSITORY}:pull").split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"

    response = registry.request("GET", "/v2/", token=tampered)

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_unsupported_authorization_scheme(registry: RegistryClient) -> None:
    response = registry.request("GET", "/v2/", headers={"Authorization": "Digest abc"})

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


def test_token_rejected_on_other_instance(server: CrpeServer, registry: RegistryClient) -> None:
    other = RegistryClient(server, server.create_instance("cn-hangzhou"))
    try:
        token = registry.token(f"repository:{REPOSITORY}:pull,push")
        base = other.request("GET", "/v2/", token=token)
        push = other.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/", token=token)
    finally:
        other.close()

    assert base.status_code == 401
    assert push.status_code == 401
    assert 'error="invalid_token"' in push.headers["WWW-Authenticate"]


def test_public_token_works_on_vpc(registry: RegistryClient) -> None:
    token = registry.token(f"repository:{REPOSITORY}:pull,push")

    response = registry.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/", token=token, network="vpc")

    assert response.status_code == 202


def test_insufficient_scope(registry: RegistryClient) -> None:
    token = registry.token(f"repository:{REPOSITORY}:pull")

    response = registry.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/", token=token)

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert f'scope="repository:{REPOSITORY}:pull,push"' in response.headers["WWW-Authenticate"]


def test_token_for_other_repository(registry: RegistryClient) -> None:
    token = registry.token("repository:team/other:pull,push")

    response = registry.request("GET", f"/v2/{REPOSITORY}/tags/list", token=token, network="vpc")

    assert response.status_code == 401
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_basic_credentials_on_registry_route(registry: RegistryClient) -> None:
    """Basic credentials sent straight to a registry route act like a token for the repository it names."""
    response = registry.http.post(
        f"/v2/{REPOSITORY}/blobs/uploads/",
        headers={"Host": registry.public},
        auth=(registry.instance.username, registry.instance.password),
    )

    assert response.status_code == 202


def test_wrong_basic_credentials_on_registry_route(registry: RegistryClient) -> None:
    response = registry.http.post(
        f"/v2/{REPOSITORY}/blobs/uploads/",
        headers={"Host": registry.public},
        auth=(registry.instance.username, "wrong"),
    )

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
