"""The control-plane API (/api/v1) of a real `crpe serve`: identities, instances, quotas, passwords, audit."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from control_client import (
    HARBOR_USER_AGENT,
    LOGIN_PASSWORD,
    ControlClient,
    DockerFlow,
    Tenant,
    basic_authorization,
    create_tenant,
    error_of,
    oci_error,
    unique_name,
)
from server import CrpeServer

DEFAULT_REGIONS = (
    "cn-hangzhou", "cn-shanghai", "cn-beijing", "cn-shenzhen", "cn-qingdao", "cn-zhangjiakou", "cn-huhehaote",
    "cn-chengdu", "cn-hongkong", "ap-southeast-1", "ap-southeast-3", "ap-southeast-5", "ap-northeast-1",
    "ap-south-1", "us-east-1", "us-west-1", "eu-central-1", "eu-west-1", "me-east-1",
)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    client = httpx.Client(timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="module")
def admin(server: CrpeServer) -> Iterator[ControlClient]:
    client = ControlClient.admin(server)
    yield client
    client.close()


@pytest.fixture
def tenant(admin: ControlClient) -> Iterator[Tenant]:
    created = create_tenant(admin)
    yield created
    created.close()


def registry_login(http: httpx.Client, server: CrpeServer, instance: dict[str, Any],
                   credentials: tuple[str, str], endpoint: str = "vpc") -> httpx.Response:
    """Request a token from an instance's endpoint with Basic credentials, as `docker login` does."""
    return http.get(f"{server.url}/auth/token",
                    params={"service": instance["endpoints"]["public"], "scope": "repository:team/app:pull"},
                    headers={"Host": server.host(instance["endpoints"][endpoint]),
                             "Authorization": basic_authorization(credentials)})


def token_access(token: str) -> dict[str, list[str]]:
    """Return the `access` claim of a registry token as {repository: actions}, without verifying it."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return {entry["name"]: sorted(entry["actions"]) for entry in claims["access"]}


def assert_error(response: httpx.Response, status: int, code: str, *message_parts: str) -> None:
    assert response.status_code == status, response.text
    actual_code, message = error_of(response)
    assert actual_code == code, response.text
    for part in message_parts:
        assert part in message, message


# --- Authentication ------------------------------------------------------------------------------------------


def test_wrong_secret_unauthorized(admin: ControlClient, server: CrpeServer) -> None:
    client = ControlClient(server, admin.key_id, "not-the-secret")

    response = client.request("GET", "/regions")

    assert_error(response, 401, "UNAUTHORIZED", "access key")
    client.close()


@pytest.mark.parametrize("authorization", ["Basic !!!not-base64", "Basic " + base64.b64encode(b"\xff\xfe").decode(),
                                           "Bearer some-token", "Basic"])
def test_malformed_credentials_unauthorized(server: CrpeServer, http: httpx.Client, authorization: str) -> None:
    response = http.get(f"{server.url}/api/v1/regions", headers={"Authorization": authorization})

    assert response.status_code == 401, response.text
    assert error_of(response)[0] == "UNAUTHORIZED"


# --- Accounts -------------------------------------------------------------------------------------------------


def test_account_create_returns_working_key(admin: ControlClient, server: CrpeServer) -> None:
    name = unique_name("acct")

    created = admin.call("POST", "/accounts", 201, json={"name": name})
    account = ControlClient(server, created["access_key"]["id"], created["access_key"]["secret"])

    assert created["name"] == name
    assert created["disabled"] is False
    assert [entry["name"] for entry in account.call("GET", "/accounts")] == [name]
    assert name in [entry["name"] for entry in admin.call("GET", "/accounts")]
    account.close()


def test_account_duplicate_conflict(admin: ControlClient, tenant: Tenant) -> None:
    response = admin.request("POST", "/accounts", json={"name": tenant.name})

    assert_error(response, 409, "ACCOUNT_EXISTS", tenant.name)


def test_account_create_needs_administrator(tenant: Tenant) -> None:
    response = tenant.client.request("POST", "/accounts", json={"name": unique_name("acct")})

    assert_error(response, 403, "DENIED", "administrator")


def test_account_disable_blocks_keys_and_logins(admin: ControlClient, tenant: Tenant, server: CrpeServer,
                                                http: httpx.Client) -> None:
    instance = tenant.client.create_instance()
    tenant.client.set_password(instance["id"])
    credentials = (tenant.name, LOGIN_PASSWORD)
    assert registry_login(http, server, instance, credentials).status_code == 200

    disabled = admin.call("POST", f"/accounts/{tenant.name}/disable")
    key_while_disabled = tenant.client.request("GET", "/regions")
    login_while_disabled = registry_login(http, server, instance, credentials)
    admin.call("POST", f"/accounts/{tenant.name}/enable")

    assert disabled["disabled"] is True
    assert_error(key_while_disabled, 401, "UNAUTHORIZED")
    assert login_while_disabled.status_code == 401, login_while_disabled.text
    assert tenant.client.request("GET", "/regions").status_code == 200
    assert registry_login(http, server, instance, credentials).status_code == 200


def test_administrator_cannot_be_disabled(admin: ControlClient) -> None:
    response = admin.request("POST", "/accounts/admin/disable")

    assert_error(response, 400, "DENIED", "administrator")


# --- Sub-users ------------------------------------------------------------------------------------------------


def test_sub_user_login_name(tenant: Tenant) -> None:
    created = tenant.client.call("POST", "/sub-users", 201, json={"name": "alice"})
    duplicate = tenant.client.request("POST", "/sub-users", json={"name": "alice"})

    assert created["login_name"] == f"alice@{tenant.name}"
    assert [entry["login_name"] for entry in tenant.client.call("GET", "/sub-users")] == [f"alice@{tenant.name}"]
    assert_error(duplicate, 409, "SUB_USER_EXISTS", "alice")


def test_sub_user_cannot_manage_account(tenant: Tenant) -> None:
    alice = tenant.add_sub_user("alice")

    assert_error(alice.request("POST", "/sub-users", json={"name": "bob"}), 403, "DENIED")
    assert_error(alice.request("PUT", "/sub-users/alice/policy", json={"statements": []}), 403, "DENIED")
    assert_error(alice.request("POST", "/access-keys", json={"sub_user": "alice"}), 403, "DENIED")
    assert_error(alice.request("POST", "/instances", json={"region": "cn-hangzhou"}), 403, "DENIED")
    assert_error(alice.request("GET", "/audit"), 403, "DENIED")


def test_sub_user_disable_blocks_key_and_login(tenant: Tenant, server: CrpeServer, http: httpx.Client) -> None:
    instance = tenant.client.create_instance()
    alice = tenant.add_sub_user("alice", allow={f"instance/{instance['id']}/*": "pull"})
    credentials = (alice.set_password(instance["id"]), LOGIN_PASSWORD)
    assert alice.request("GET", "/regions").status_code == 200
    assert registry_login(http, server, instance, credentials).status_code == 200

    tenant.client.call("POST", "/sub-users/alice/disable")
    key_while_disabled = alice.request("GET", "/regions")
    login_while_disabled = registry_login(http, server, instance, credentials)
    tenant.client.call("POST", "/sub-users/alice/enable")

    assert_error(key_while_disabled, 401, "UNAUTHORIZED")
    assert login_while_disabled.status_code == 401, login_while_disabled.text
    assert alice.request("GET", "/regions").status_code == 200
    assert registry_login(http, server, instance, credentials).status_code == 200


@pytest.mark.parametrize("principal", ["account", "sub-user"])
def test_disable_stops_new_logins(admin: ControlClient, tenant: Tenant, server: CrpeServer,
                                  http: httpx.Client, principal: str) -> None:
    """Disabling stops logins at once; registry tokens already issued live out their short lifetime."""
    instance = tenant.client.create_instance()
    tenant.client.create_namespace(instance["id"], "team")
    tenant.client.set_password(instance["id"])
    owner = DockerFlow(http, server, instance["endpoints"]["vpc"], (tenant.name, LOGIN_PASSWORD))
    assert owner.push_image("team/app", "v1", instance["id"])[0].status_code == 201
    if principal == "account":
        flow = owner
    else:
        reader = tenant.add_sub_user("reader", allow={f"instance/{instance['id']}/*": "pull"})
        flow = DockerFlow(http, server, instance["endpoints"]["vpc"], reader.temporary_credentials(instance["id"]))
    assert flow.get_manifest("team/app", "v1").status_code == 200

    if principal == "account":
        admin.call("POST", f"/accounts/{tenant.name}/disable")
    else:
        tenant.client.call("POST", "/sub-users/reader/disable")
    fresh = DockerFlow(http, server, instance["endpoints"]["vpc"], flow.credentials)
    with_new_login = fresh.get_manifest("team/app", "v1")
    with_earlier_token = flow.get_manifest("team/app", "v1")
    if principal == "account":
        admin.call("POST", f"/accounts/{tenant.name}/enable")

    assert with_new_login.status_code == 401, with_new_login.text
    assert oci_error(with_new_login)[0] == "UNAUTHORIZED"
    # Documented: tokens are verified without a database lookup, so they expire instead (CRPE_TOKEN_TTL).
    assert with_earlier_token.status_code == 200


def test_sub_user_sees_only_instances_it_may_use(tenant: Tenant) -> None:
    granted = tenant.client.create_instance()
    hidden = tenant.client.create_instance()
    alice = tenant.add_sub_user("alice", allow={f"instance/{granted['id']}/team/*": "pull"})

    listed = alice.call("GET", "/instances")
    shown_hidden = alice.request("GET", f"/instances/{hidden['id']}")

    assert [entry["id"] for entry in listed] == [granted["id"]]
    assert_error(shown_hidden, 404, "INSTANCE_NOT_FOUND", hidden["id"])


def test_namespace_management_needs_manage(tenant: Tenant) -> None:
    instance_id = tenant.client.create_instance()["id"]
    reader = tenant.add_sub_user("reader", allow={f"instance/{instance_id}/*": "pull,push,delete"})
    manager = tenant.add_sub_user("manager", allow={f"instance/{instance_id}": "manage"})

    rejected = reader.request("POST", f"/instances/{instance_id}/namespaces", json={"name": "team"})
    created = manager.request("POST", f"/instances/{instance_id}/namespaces", json={"name": "team"})

    assert_error(rejected, 403, "DENIED", "manage", f"instance/{instance_id}")
    assert created.status_code == 201, created.text


def test_legacy_namespace_unique_per_region(admin: ControlClient, tenant: Tenant) -> None:
    other = create_tenant(admin)
    namespace = unique_name("shared")
    tenant.client.create_namespace(tenant.import_legacy_instance(admin)["id"], namespace)

    same_region = other.client.request(
        "POST", f"/instances/{other.import_legacy_instance(admin)['id']}/namespaces", json={"name": namespace})
    other_region = other.client.request(
        "POST", f"/instances/{other.import_legacy_instance(admin, 'cn-beijing')['id']}/namespaces",
        json={"name": namespace})
    new_instance = other.client.request(
        "POST", f"/instances/{other.client.create_instance()['id']}/namespaces", json={"name": namespace})

    assert_error(same_region, 409, "NAMESPACE_EXISTS", namespace, "cn-hangzhou")
    assert other_region.status_code == 201, other_region.text
    assert new_instance.status_code == 201, new_instance.text
    other.close()


# --- Access keys ----------------------------------------------------------------------------------------------


def test_access_key_secret_shown_once(tenant: Tenant, server: CrpeServer) -> None:
    tenant.client.call("POST", "/sub-users", 201, json={"name": "alice"})

    own = tenant.client.call("POST", "/access-keys", 201, json={})
    for_sub_user = tenant.client.call("POST", "/access-keys", 201, json={"sub_user": "alice"})
    listed = tenant.client.request("GET", "/access-keys")
    listed_for_sub_user = tenant.client.request("GET", "/access-keys", params={"sub_user": "alice"})

    assert own["secret"] and for_sub_user["secret"]
    assert own["id"] in [key["id"] for key in listed.json()]
    assert [key["id"] for key in listed_for_sub_user.json()] == [for_sub_user["id"]]
    for response in (listed, listed_for_sub_user):
        assert all("secret" not in key for key in response.json()), response.text
        assert own["secret"] not in response.text
        assert for_sub_user["secret"] not in response.text
    new_key = ControlClient(server, own["id"], own["secret"])
    assert new_key.request("GET", "/regions").status_code == 200
    new_key.close()


def test_revoked_access_key_unauthorized(tenant: Tenant, server: CrpeServer) -> None:
    second = tenant.client.call("POST", "/access-keys", 201, json={})
    second_client = ControlClient(server, second["id"], second["secret"])
    assert second_client.request("GET", "/regions").status_code == 200

    revoked = tenant.client.call("DELETE", f"/access-keys/{second['id']}")

    assert revoked["revoked"] is True
    assert_error(second_client.request("GET", "/regions"), 401, "UNAUTHORIZED")
    assert tenant.client.request("GET", "/regions").status_code == 200
    listed = {key["id"]: key["revoked"] for key in tenant.client.call("GET", "/access-keys")}
    assert listed[second["id"]] is True
    second_client.close()


def test_access_key_of_other_account_not_found(admin: ControlClient, tenant: Tenant) -> None:
    other = create_tenant(admin)

    response = other.client.request("DELETE", f"/access-keys/{tenant.client.key_id}")

    assert_error(response, 404, "ACCESS_KEY_NOT_FOUND")
    assert tenant.client.request("GET", "/regions").status_code == 200
    other.close()


# --- Policies -------------------------------------------------------------------------------------------------


def test_policy_deny_wins(tenant: Tenant, server: CrpeServer, http: httpx.Client) -> None:
    instance = tenant.client.create_instance()
    instance_id = instance["id"]
    tenant.client.create_namespace(instance_id, "team")
    tenant.client.create_repository(instance_id, "team/secret")
    developer = tenant.add_sub_user("dev", allow={f"instance/{instance_id}/team/*": "pull,push"},
                                    deny={f"instance/{instance_id}/team/secret": "push"})

    created = developer.request("POST", f"/instances/{instance_id}/repositories",
                                json={"namespace": "team", "name": "app"})
    denied = developer.request("POST", f"/instances/{instance_id}/repositories",
                               json={"namespace": "team", "name": "secret"})
    username, password = developer.temporary_credentials(instance_id)
    token_response = http.get(f"{server.url}/auth/token", params=[
        ("service", instance["endpoints"]["public"]),
        ("scope", "repository:team/secret:pull,push"), ("scope", "repository:team/app:pull,push")],
        headers={"Host": server.host(instance["endpoints"]["vpc"]),
                 "Authorization": basic_authorization((username, password))})
    policy = tenant.client.call("GET", "/sub-users/dev/policy")

    assert created.status_code == 201, created.text
    assert_error(denied, 403, "DENIED", "push", "team/secret")
    assert token_response.status_code == 200, token_response.text
    assert token_access(token_response.json()["token"]) == {"team/secret": ["pull"], "team/app": ["pull", "push"]}
    assert policy["statements"] == [
        {"effect": "allow", "actions": ["pull", "push"], "resources": [f"instance/{instance_id}/team/*"]},
        {"effect": "deny", "actions": ["push"], "resources": [f"instance/{instance_id}/team/secret"]},
    ]


# --- Regions and instances ------------------------------------------------------------------------------------


def test_default_regions_listed(tenant: Tenant) -> None:
    regions = {region["id"]: region["name"] for region in tenant.client.call("GET", "/regions")}

    for region_id in DEFAULT_REGIONS:
        assert region_id in regions
        assert regions[region_id], f"region {region_id} has no display name"


def test_instance_create_without_region(tenant: Tenant) -> None:
    response = tenant.client.request("POST", "/instances", json={})

    assert_error(response, 400, "REGION_REQUIRED", "region", *DEFAULT_REGIONS)


def test_instance_create_unknown_region(tenant: Tenant) -> None:
    response = tenant.client.request("POST", "/instances", json={"region": "xx-nowhere-1"})

    assert_error(response, 400, "REGION_UNKNOWN", "xx-nowhere-1", *DEFAULT_REGIONS)


def test_instance_list_per_region(tenant: Tenant) -> None:
    hangzhou = tenant.client.create_instance("cn-hangzhou")
    shanghai = tenant.client.create_instance("cn-shanghai")

    in_shanghai = tenant.client.call("GET", "/instances", params={"region": "cn-shanghai"})
    in_hangzhou = tenant.client.call("GET", "/instances", params={"region": "cn-hangzhou"})
    everywhere = tenant.client.call("GET", "/instances")
    unknown = tenant.client.request("GET", "/instances", params={"region": "xx-nowhere-1"})

    assert [entry["id"] for entry in in_shanghai] == [shanghai["id"]]
    assert [entry["id"] for entry in in_hangzhou] == [hangzhou["id"]]
    assert {entry["id"] for entry in everywhere} == {hangzhou["id"], shanghai["id"]}
    assert ".cn-shanghai." in shanghai["endpoints"]["public"]
    assert_error(unknown, 400, "REGION_UNKNOWN", "xx-nowhere-1", "cn-hangzhou")


def test_instance_of_other_account_not_found(admin: ControlClient, tenant: Tenant) -> None:
    instance = tenant.client.create_instance()
    other = create_tenant(admin)

    foreign = other.client.request("GET", f"/instances/{instance['id']}")
    unknown = other.client.request("GET", "/instances/zzzzzzzzzzzzzzzz")

    assert_error(foreign, 404, "INSTANCE_NOT_FOUND", instance["id"])
    assert_error(unknown, 404, "INSTANCE_NOT_FOUND")
    assert instance["id"] not in [entry["id"] for entry in other.client.call("GET", "/instances")]
    other.close()


def test_harbor_client_on_control_plane(admin: ControlClient, tenant: Tenant) -> None:
    new = tenant.client.create_instance()
    legacy = tenant.import_legacy_instance(admin)
    harbor = tenant.client.with_user_agent(HARBOR_USER_AGENT)

    for method, path in (("GET", ""), ("GET", "/namespaces"), ("GET", "/repositories"),
                         ("POST", "/temporary-credentials")):
        rejected = harbor.request(method, f"/instances/{new['id']}{path}")
        allowed = harbor.request(method, f"/instances/{legacy['id']}{path}")

        assert_error(rejected, 403, "DENIED", "Harbor remote replication is not supported")
        assert allowed.status_code == 200, allowed.text
    harbor.close()


# --- Quotas ---------------------------------------------------------------------------------------------------


def test_namespace_quota_default(tenant: Tenant) -> None:
    instance_id = tenant.client.create_instance()["id"]
    for name in ("one", "two", "three"):
        tenant.client.create_namespace(instance_id, name)

    fourth = tenant.client.request("POST", f"/instances/{instance_id}/namespaces", json={"name": "four"})

    assert_error(fourth, 403, "QUOTA_EXCEEDED", "namespace quota of 3")
    assert len(tenant.client.call("GET", f"/instances/{instance_id}/namespaces")) == 3


def test_quota_change_needs_administrator(tenant: Tenant) -> None:
    instance_id = tenant.client.create_instance()["id"]

    response = tenant.client.request("PUT", f"/instances/{instance_id}/quotas",
                                     json={"namespaces": 100, "repositories": 100})

    assert_error(response, 403, "DENIED", "administrator")


def test_repository_quota_reached_through_push(server: CrpeServer, tenant: Tenant, http: httpx.Client) -> None:
    instance = tenant.client.create_instance()
    instance_id = instance["id"]
    tenant.client.create_namespace(instance_id, "team")
    tenant.client.set_password(instance_id)

    quotas = server.cli_json("instance", "quota", instance_id, "--namespaces", "3", "--repositories", "1")
    flow = DockerFlow(http, server, instance["endpoints"]["vpc"], (tenant.name, LOGIN_PASSWORD))
    first, _ = flow.push_image("team/one", "v1", f"{instance_id}-one")
    second, _ = flow.push_image("team/two", "v1", f"{instance_id}-two")
    through_api = tenant.client.request("POST", f"/instances/{instance_id}/repositories",
                                        json={"namespace": "team", "name": "three"})

    assert quotas["quotas"] == {"namespaces": 3, "repositories": 1}
    assert first.status_code == 201, first.text
    assert second.status_code == 403, second.text
    code, message = oci_error(second)
    assert code == "DENIED"
    assert "quota of 1 repositories" in message
    assert_error(through_api, 403, "QUOTA_EXCEEDED", "repository quota of 1")


# --- Namespaces and repositories ------------------------------------------------------------------------------


def test_push_without_auto_create(tenant: Tenant, server: CrpeServer, http: httpx.Client) -> None:
    instance = tenant.client.create_instance()
    instance_id = instance["id"]
    tenant.client.create_namespace(instance_id, "team", auto_create=False)
    tenant.client.set_password(instance_id)
    flow = DockerFlow(http, server, instance["endpoints"]["vpc"], (tenant.name, LOGIN_PASSWORD))

    missing, _ = flow.push_image("team/missing", "v1", f"{instance_id}-missing")
    tenant.client.create_repository(instance_id, "team/created")
    created, _ = flow.push_image("team/created", "v1", f"{instance_id}-created")
    tenant.client.call("PATCH", f"/instances/{instance_id}/namespaces/team", json={"auto_create": True})
    after_update, _ = flow.push_image("team/later", "v1", f"{instance_id}-later")

    assert missing.status_code == 404, missing.text
    code, message = oci_error(missing)
    assert code == "NAME_UNKNOWN"
    assert "team/missing" in message
    assert created.status_code == 201, created.text
    assert after_update.status_code == 201, after_update.text


def test_namespace_default_visibility(tenant: Tenant) -> None:
    instance_id = tenant.client.create_instance()["id"]
    tenant.client.create_namespace(instance_id, "open", default_visibility="public")
    tenant.client.create_namespace(instance_id, "closed")

    public = tenant.client.create_repository(instance_id, "open/app")
    private = tenant.client.create_repository(instance_id, "closed/app")
    overridden = tenant.client.create_repository(instance_id, "open/hidden", visibility="private")

    assert public["visibility"] == "public"
    assert private["visibility"] == "private"
    assert overridden["visibility"] == "private"


@pytest.mark.parametrize(("field_name", "limit"), [("summary", 80), ("description", 2000)])
def test_repository_text_limits(tenant: Tenant, field_name: str, limit: int) -> None:
    instance_id = tenant.client.create_instance()["id"]
    tenant.client.create_namespace(instance_id, "team")
    repositories = f"/instances/{instance_id}/repositories"

    at_limit = tenant.client.request("POST", repositories,
                                     json={"namespace": "team", "name": "app", field_name: "x" * limit})
    over_limit = tenant.client.request("POST", repositories,
                                       json={"namespace": "team", "name": "other", field_name: "x" * (limit + 1)})
    update_over_limit = tenant.client.request("PATCH", f"{repositories}/team/app",
                                              json={field_name: "y" * (limit + 1)})

    assert at_limit.status_code == 201, at_limit.text
    assert at_limit.json()[field_name] == "x" * limit
    assert_error(over_limit, 400, "INVALID_REQUEST", field_name, str(limit))
    assert_error(update_over_limit, 400, "INVALID_REQUEST", field_name, str(limit))
    assert tenant.client.call("GET", f"{repositories}/team/app")[field_name] == "x" * limit


# --- Login passwords and temporary credentials ----------------------------------------------------------------


def test_password_holder_rule_new_instance(tenant: Tenant, server: CrpeServer, http: httpx.Client) -> None:
    instance = tenant.client.create_instance()
    instance_id = instance["id"]
    alice = tenant.add_sub_user("alice", allow={f"instance/{instance_id}/*": "pull"})
    bob = tenant.add_sub_user("bob", allow={f"instance/{instance_id}/*": "pull"})
    password_path = f"/instances/{instance_id}/password"

    def login(name: str, password: str) -> int:
        return registry_login(http, server, instance, (name, password)).status_code

    assert alice.set_password(instance_id, "Alice-pass-1") == f"alice@{tenant.name}"
    assert_error(bob.request("PUT", password_path, json={"password": "Bob-pass-1"}), 409,
                 "PASSWORD_HOLDER_EXISTS", f"alice@{tenant.name}", "revoke-holder")
    alice.set_password(instance_id, "Alice-pass-2")
    assert login(f"alice@{tenant.name}", "Alice-pass-2") == 200
    assert login(f"alice@{tenant.name}", "Alice-pass-1") == 401

    # The account may always set its own password, even while a sub-user is the instance's password holder.
    assert tenant.client.set_password(instance_id, "Account-pass-1") == tenant.name
    assert login(tenant.name, "Account-pass-1") == 200
    assert_error(alice.request("DELETE", f"/instances/{instance_id}/password-holder"), 403, "DENIED")

    revoked = tenant.client.call("DELETE", f"/instances/{instance_id}/password-holder")
    assert revoked["revoked_holder"] == "alice"
    assert login(f"alice@{tenant.name}", "Alice-pass-2") == 401
    assert bob.set_password(instance_id, "Bob-pass-1") == f"bob@{tenant.name}"
    assert login(f"bob@{tenant.name}", "Bob-pass-1") == 200
    assert_error(alice.request("PUT", password_path, json={"password": "Alice-pass-3"}), 409,
                 "PASSWORD_HOLDER_EXISTS", f"bob@{tenant.name}")
    assert login(tenant.name, "Account-pass-1") == 200


def test_password_holder_revoke_without_holder(tenant: Tenant) -> None:
    instance_id = tenant.client.create_instance()["id"]

    response = tenant.client.request("DELETE", f"/instances/{instance_id}/password-holder")

    assert_error(response, 404, "PASSWORD_HOLDER_NOT_FOUND", instance_id)


def test_password_legacy_instance_any_sub_user(admin: ControlClient, tenant: Tenant, server: CrpeServer,
                                               http: httpx.Client) -> None:
    instance = tenant.import_legacy_instance(admin)
    instance_id = instance["id"]
    alice = tenant.add_sub_user("alice", allow={f"instance/{instance_id}/*": "pull"})
    bob = tenant.add_sub_user("bob", allow={f"instance/{instance_id}/*": "pull"})

    alice_name = alice.set_password(instance_id, "Alice-pass-1")
    bob_name = bob.set_password(instance_id, "Bob-pass-1")

    assert (alice_name, bob_name) == (f"alice@{tenant.name}", f"bob@{tenant.name}")
    for endpoint in ("public", "vpc"):
        assert registry_login(http, server, instance, (alice_name, "Alice-pass-1"), endpoint).status_code == 200
        assert registry_login(http, server, instance, (bob_name, "Bob-pass-1"), endpoint).status_code == 200


@pytest.mark.parametrize("principal", ["account", "sub-user"])
def test_temporary_credentials_bound_to_instance(tenant: Tenant, server: CrpeServer, http: httpx.Client,
                                                 principal: str) -> None:
    first = tenant.client.create_instance()
    second = tenant.client.create_instance()
    client = tenant.client
    if principal == "sub-user":
        client = tenant.add_sub_user("ci", allow={f"instance/{first['id']}/*": "pull",
                                                  f"instance/{second['id']}/*": "pull"})
    before = time.time()

    issued = client.call("POST", f"/instances/{first['id']}/temporary-credentials")
    credentials = (issued["username"], issued["password"])

    assert issued["username"] == (tenant.name if principal == "account" else f"ci@{tenant.name}")
    assert before + 3000 < issued["expires_at"] <= time.time() + 3600
    assert issued["endpoints"] == first["endpoints"]
    for endpoint in ("public", "vpc"):
        assert registry_login(http, server, first, credentials, endpoint).status_code == 200
        rejected = registry_login(http, server, second, credentials, endpoint)
        assert rejected.status_code == 401, rejected.text
        assert oci_error(rejected)[0] == "UNAUTHORIZED"


# --- Audit log ------------------------------------------------------------------------------------------------


def test_audit_lists_each_change(admin: ControlClient, tenant: Tenant, server: CrpeServer) -> None:
    started = time.time() - 1
    client = tenant.client
    instance_id = client.create_instance()["id"]
    instance = f"instance/{instance_id}"
    alice = tenant.add_sub_user("alice", allow={f"{instance}/*": "pull,push"})
    key_id = client.call("POST", "/access-keys", 201, json={})["id"]
    client.call("DELETE", f"/access-keys/{key_id}")
    client.call("POST", "/sub-users/alice/disable")
    client.call("POST", "/sub-users/alice/enable")
    client.create_namespace(instance_id, "team")
    client.create_namespace(instance_id, "scratch")
    client.call("PATCH", f"/instances/{instance_id}/namespaces/team", json={"default_visibility": "public"})
    client.call("DELETE", f"/instances/{instance_id}/namespaces/scratch")
    client.create_repository(instance_id, "team/app")
    client.call("PATCH", f"/instances/{instance_id}/repositories/team/app", json={"summary": "An app"})
    client.create_repository(instance_id, "team/old")
    client.call("DELETE", f"/instances/{instance_id}/repositories/team/old")
    client.set_password(instance_id)
    alice.set_password(instance_id)
    client.call("DELETE", f"/instances/{instance_id}/password-holder")
    alice.temporary_credentials(instance_id)
    admin.call("PUT", f"/instances/{instance_id}/quotas", json={"namespaces": 5, "repositories": 50})
    admin.call("POST", f"/accounts/{tenant.name}/disable")
    admin.call("POST", f"/accounts/{tenant.name}/enable")
    finished = time.time() + 1

    account_view = client.call("GET", "/audit", params={"limit": 100})
    admin_view = admin.call("GET", "/audit", params={"limit": 1000})

    account, sub_user = tenant.name, f"alice@{tenant.name}"
    expected_by_account = {
        (account, "instance.create", instance),
        (account, "sub_user.create", "sub-user/alice"),
        (account, "policy.set", "sub-user/alice"),
        (account, "access_key.create", f"access-key/{alice.key_id}"),
        (account, "access_key.create", f"access-key/{key_id}"),
        (account, "access_key.revoke", f"access-key/{key_id}"),
        (account, "sub_user.disable", "sub-user/alice"),
        (account, "sub_user.enable", "sub-user/alice"),
        (account, "namespace.create", f"{instance}/team"),
        (account, "namespace.create", f"{instance}/scratch"),
        (account, "namespace.update", f"{instance}/team"),
        (account, "namespace.delete", f"{instance}/scratch"),
        (account, "repository.create", f"{instance}/team/app"),
        (account, "repository.update", f"{instance}/team/app"),
        (account, "repository.create", f"{instance}/team/old"),
        (account, "repository.delete", f"{instance}/team/old"),
        (account, "password.set", instance),
        (sub_user, "password.set", instance),
        (account, "password.revoke_holder", instance),
        (sub_user, "temporary_credentials.issue", instance),
    }
    expected_by_admin = {
        ("admin", "account.create", f"account/{tenant.name}"),
        ("admin", "instance.quotas", instance),
        ("admin", "account.disable", f"account/{tenant.name}"),
        ("admin", "account.enable", f"account/{tenant.name}"),
    }
    recorded = {(entry["actor"], entry["action"], entry["resource"]) for entry in account_view}
    assert recorded == expected_by_account
    recorded_by_admin = {(entry["actor"], entry["action"], entry["resource"]) for entry in admin_view}
    assert expected_by_account | expected_by_admin <= recorded_by_admin
    for entry in account_view:
        assert started <= entry["at"] <= finished, entry
        assert entry["source_address"] == "127.0.0.1", entry
    assert [entry["at"] for entry in account_view] == sorted((entry["at"] for entry in account_view), reverse=True)


def test_audit_of_other_account_hidden(admin: ControlClient, tenant: Tenant) -> None:
    other = create_tenant(admin)
    other.client.create_instance()

    entries = tenant.client.call("GET", "/audit")

    assert all(other.name not in entry["actor"] for entry in entries)
    assert all(other.name not in entry["resource"] for entry in entries)
    other.close()


# --- Errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/v1/no-such-route", 404),
    ("DELETE", "/api/v1/regions", 405),
    ("POST", "/api/v1/audit", 405),
])
def test_unrouted_request_error_shape(admin: ControlClient, server: CrpeServer, method: str, path: str,
                                      status: int) -> None:
    """Every control-plane error, routed or not, uses the documented {"error": {"code", "message"}} body."""
    response = admin.http.request(method, f"{server.url}{path}")

    assert response.status_code == status
    code, message = error_of(response)
    assert code
    assert message


MALFORMED_JSON = b'{"name": '
LONG = "a" * 300


@dataclass(frozen=True)
class BadInput:
    """A request with one bad input, and the status and field name its error must show."""

    method: str
    route: str  # The operation's path template in the OpenAPI document, under /api/v1.
    case: str
    status: int
    field: str  # Text the error message must contain, case-insensitively.
    path: str = ""  # The request path with {instance}, {account} and {key} placeholders; default: `route`.
    body: Any = None
    content: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    caller: str = "account"  # "account" or "admin"

    @property
    def id(self) -> str:
        return f"{self.method} {self.route} {self.case}"


def bad(method: str, route: str, case: str, status: int, field_text: str, path: str = "", **options: Any
        ) -> BadInput:
    if options.pop("malformed", False):
        options["content"] = MALFORMED_JSON
    return BadInput(method, route, case, status, field_text, path or route, **options)


INSTANCES = "/instances"
INSTANCE = "/instances/{instance_id}"
QUOTAS = "/instances/{instance_id}/quotas"
NAMESPACES = "/instances/{instance_id}/namespaces"
NAMESPACE = "/instances/{instance_id}/namespaces/{name}"
REPOSITORIES = "/instances/{instance_id}/repositories"
REPOSITORY = "/instances/{instance_id}/repositories/{namespace}/{name}"
PASSWORD = "/instances/{instance_id}/password"
HOLDER = "/instances/{instance_id}/password-holder"
TEMPORARY = "/instances/{instance_id}/temporary-credentials"
ACCOUNTS = "/accounts"
POLICY = "/sub-users/{name}/policy"
REGION = "cn-hangzhou"

BAD_INPUTS = [
    bad("POST", INSTANCES, "missing-region", 400, "region", body={}),
    bad("POST", INSTANCES, "unknown-region", 400, "region", body={"region": "xx-nowhere-1"}),
    bad("POST", INSTANCES, "region-too-long", 400, "region", body={"region": "cn-" + LONG}),
    bad("POST", INSTANCES, "name-too-long", 400, "name", body={"region": REGION, "name": "n" * 129}),
    bad("POST", INSTANCES, "name-wrong-type", 400, "name", body={"region": REGION, "name": 5}),
    bad("POST", INSTANCES, "malformed-json", 400, "json", malformed=True),
    bad("POST", INSTANCES, "not-an-object", 400, "body", content=b"[]"),
    bad("POST", INSTANCES, "created-at-invalid", 400, "created_at", caller="admin",
        body={"region": REGION, "account": "{account}", "created_at": "2023-13-45"}),
    bad("POST", INSTANCES, "created-at-not-admin", 403, "creation date",
        body={"region": REGION, "created_at": "2023-05-01"}),
    bad("POST", INSTANCES, "unknown-account", 404, "account", caller="admin",
        body={"region": REGION, "account": "nobody-at-all"}),
    bad("GET", INSTANCES, "unknown-region", 400, "region", params={"region": "xx-nowhere-1"}),
    bad("GET", INSTANCE, "unknown-instance", 404, "instance", "/instances/zzzzzzzzzzzzzzzz"),
    bad("GET", INSTANCE, "instance-too-long", 404, "instance", f"/instances/{LONG}"),
    bad("PUT", QUOTAS, "missing-repositories", 400, "repositories", "/instances/{instance}/quotas",
        caller="admin", body={"namespaces": 3}),
    bad("PUT", QUOTAS, "negative", 400, "namespaces", "/instances/{instance}/quotas", caller="admin",
        body={"namespaces": -1, "repositories": 1}),
    bad("PUT", QUOTAS, "too-large", 400, "repositories", "/instances/{instance}/quotas", caller="admin",
        body={"namespaces": 1, "repositories": 10**12}),
    bad("PUT", QUOTAS, "wrong-type", 400, "namespaces", "/instances/{instance}/quotas", caller="admin",
        body={"namespaces": "many", "repositories": 1}),
    bad("PUT", QUOTAS, "malformed-json", 400, "json", "/instances/{instance}/quotas", caller="admin",
        malformed=True),
    bad("PUT", QUOTAS, "unknown-instance", 404, "instance", "/instances/zzzzzzzzzzzzzzzz/quotas", caller="admin",
        body={"namespaces": 1, "repositories": 1}),
    bad("POST", NAMESPACES, "missing-name", 400, "name", "/instances/{instance}/namespaces", body={}),
    bad("POST", NAMESPACES, "invalid-name", 400, "namespace", "/instances/{instance}/namespaces",
        body={"name": "Team!"}),
    bad("POST", NAMESPACES, "name-too-long", 400, "name", "/instances/{instance}/namespaces",
        body={"name": "a" * 65}),
    bad("POST", NAMESPACES, "unknown-visibility", 400, "default_visibility", "/instances/{instance}/namespaces",
        body={"name": "valid", "default_visibility": "secret"}),
    bad("POST", NAMESPACES, "auto-create-wrong-type", 400, "auto_create", "/instances/{instance}/namespaces",
        body={"name": "valid", "auto_create": "maybe"}),
    bad("POST", NAMESPACES, "duplicate", 409, "team", "/instances/{instance}/namespaces", body={"name": "team"}),
    bad("POST", NAMESPACES, "malformed-json", 400, "json", "/instances/{instance}/namespaces", malformed=True),
    bad("POST", NAMESPACES, "unknown-instance", 404, "instance", "/instances/zzzzzzzzzzzzzzzz/namespaces",
        body={"name": "valid"}),
    bad("GET", NAMESPACES, "unknown-instance", 404, "instance", "/instances/zzzzzzzzzzzzzzzz/namespaces"),
    bad("PATCH", NAMESPACE, "unknown-namespace", 404, "namespace", "/instances/{instance}/namespaces/nope",
        body={"auto_create": False}),
    bad("PATCH", NAMESPACE, "namespace-too-long", 404, "namespace", f"/instances/{{instance}}/namespaces/{LONG}",
        body={"auto_create": False}),
    bad("PATCH", NAMESPACE, "unknown-visibility", 400, "default_visibility", "/instances/{instance}/namespaces/team",
        body={"default_visibility": "secret"}),
    bad("PATCH", NAMESPACE, "auto-create-wrong-type", 400, "auto_create", "/instances/{instance}/namespaces/team",
        body={"auto_create": "maybe"}),
    bad("PATCH", NAMESPACE, "malformed-json", 400, "json", "/instances/{instance}/namespaces/team", malformed=True),
    bad("DELETE", NAMESPACE, "unknown-namespace", 404, "namespace", "/instances/{instance}/namespaces/nope"),
    bad("DELETE", NAMESPACE, "not-empty", 409, "team", "/instances/{instance}/namespaces/team"),
    bad("GET", REPOSITORIES, "unknown-instance", 404, "instance", "/instances/zzzzzzzzzzzzzzzz/repositories"),
    bad("POST", REPOSITORIES, "missing-namespace", 400, "namespace", "/instances/{instance}/repositories",
        body={"name": "valid"}),
    bad("POST", REPOSITORIES, "missing-name", 400, "name", "/instances/{instance}/repositories",
        body={"namespace": "team"}),
    bad("POST", REPOSITORIES, "invalid-name", 400, "name", "/instances/{instance}/repositories",
        body={"namespace": "team", "name": "App Name"}),
    bad("POST", REPOSITORIES, "name-too-long", 400, "name", "/instances/{instance}/repositories",
        body={"namespace": "team", "name": "a" * 191}),
    bad("POST", REPOSITORIES, "unknown-visibility", 400, "visibility", "/instances/{instance}/repositories",
        body={"namespace": "team", "name": "valid", "visibility": "secret"}),
    bad("POST", REPOSITORIES, "summary-too-long", 400, "summary", "/instances/{instance}/repositories",
        body={"namespace": "team", "name": "valid", "summary": "s" * 81}),
    bad("POST", REPOSITORIES, "description-too-long", 400, "description", "/instances/{instance}/repositories",
        body={"namespace": "team", "name": "valid", "description": "d" * 2001}),
    bad("POST", REPOSITORIES, "unknown-namespace", 404, "namespace", "/instances/{instance}/repositories",
        body={"namespace": "nope", "name": "valid"}),
    bad("POST", REPOSITORIES, "duplicate", 409, "team/app", "/instances/{instance}/repositories",
        body={"namespace": "team", "name": "app"}),
    bad("POST", REPOSITORIES, "malformed-json", 400, "json", "/instances/{instance}/repositories", malformed=True),
    bad("GET", REPOSITORY, "unknown-repository", 404, "repository", "/instances/{instance}/repositories/team/nope"),
    bad("PATCH", REPOSITORY, "unknown-repository", 404, "repository",
        "/instances/{instance}/repositories/team/nope", body={"summary": "x"}),
    bad("PATCH", REPOSITORY, "unknown-visibility", 400, "visibility", "/instances/{instance}/repositories/team/app",
        body={"visibility": "secret"}),
    bad("PATCH", REPOSITORY, "summary-too-long", 400, "summary", "/instances/{instance}/repositories/team/app",
        body={"summary": "s" * 81}),
    bad("PATCH", REPOSITORY, "description-too-long", 400, "description",
        "/instances/{instance}/repositories/team/app", body={"description": "d" * 2001}),
    bad("PATCH", REPOSITORY, "summary-wrong-type", 400, "summary", "/instances/{instance}/repositories/team/app",
        body={"summary": 5}),
    bad("PATCH", REPOSITORY, "malformed-json", 400, "json", "/instances/{instance}/repositories/team/app",
        malformed=True),
    bad("DELETE", REPOSITORY, "unknown-repository", 404, "repository",
        "/instances/{instance}/repositories/team/nope"),
    bad("PUT", PASSWORD, "missing-password", 400, "password", "/instances/{instance}/password", body={}),
    bad("PUT", PASSWORD, "too-short", 400, "password", "/instances/{instance}/password", body={"password": "short"}),
    bad("PUT", PASSWORD, "too-long", 400, "password", "/instances/{instance}/password", body={"password": LONG}),
    bad("PUT", PASSWORD, "wrong-type", 400, "password", "/instances/{instance}/password",
        body={"password": 12345678}),
    bad("PUT", PASSWORD, "malformed-json", 400, "json", "/instances/{instance}/password", malformed=True),
    bad("PUT", PASSWORD, "unknown-instance", 404, "instance", "/instances/zzzzzzzzzzzzzzzz/password",
        body={"password": LOGIN_PASSWORD}),
    bad("DELETE", HOLDER, "no-holder", 404, "password", "/instances/{instance}/password-holder"),
    bad("DELETE", HOLDER, "unknown-instance", 404, "instance", "/instances/zzzzzzzzzzzzzzzz/password-holder"),
    bad("POST", TEMPORARY, "unknown-instance", 404, "instance",
        "/instances/zzzzzzzzzzzzzzzz/temporary-credentials"),
    bad("POST", ACCOUNTS, "missing-name", 400, "name", caller="admin", body={}),
    bad("POST", ACCOUNTS, "invalid-name", 400, "name", caller="admin", body={"name": "Bad Name"}),
    bad("POST", ACCOUNTS, "name-too-long", 400, "name", caller="admin", body={"name": "a" * 65}),
    bad("POST", ACCOUNTS, "name-wrong-type", 400, "name", caller="admin", body={"name": 5}),
    bad("POST", ACCOUNTS, "duplicate", 409, "{account}", caller="admin", body={"name": "{account}"}),
    bad("POST", ACCOUNTS, "malformed-json", 400, "json", caller="admin", malformed=True),
    bad("POST", "/accounts/{name}/disable", "unknown-account", 404, "account", "/accounts/nobody-at-all/disable",
        caller="admin"),
    bad("POST", "/accounts/{name}/disable", "account-too-long", 404, "account", f"/accounts/{LONG}/disable",
        caller="admin"),
    bad("POST", "/accounts/{name}/disable", "administrator", 400, "administrator", "/accounts/admin/disable",
        caller="admin"),
    bad("POST", "/accounts/{name}/enable", "unknown-account", 404, "account", "/accounts/nobody-at-all/enable",
        caller="admin"),
    bad("POST", "/sub-users", "missing-name", 400, "name", body={}),
    bad("POST", "/sub-users", "invalid-name", 400, "name", body={"name": "Bad@Name"}),
    bad("POST", "/sub-users", "name-too-long", 400, "name", body={"name": "a" * 65}),
    bad("POST", "/sub-users", "name-wrong-type", 400, "name", body={"name": ["alice"]}),
    bad("POST", "/sub-users", "duplicate", 409, "alice", body={"name": "alice"}),
    bad("POST", "/sub-users", "malformed-json", 400, "json", malformed=True),
    bad("POST", "/sub-users/{name}/disable", "unknown-sub-user", 404, "sub-user", "/sub-users/nobody/disable"),
    bad("POST", "/sub-users/{name}/enable", "unknown-sub-user", 404, "sub-user", "/sub-users/nobody/enable"),
    bad("PUT", POLICY, "missing-statements", 400, "statements", "/sub-users/alice/policy", body={}),
    bad("PUT", POLICY, "statements-not-a-list", 400, "statements", "/sub-users/alice/policy",
        body={"statements": "all"}),
    bad("PUT", POLICY, "unknown-effect", 400, "effect", "/sub-users/alice/policy",
        body={"statements": [{"effect": "maybe", "actions": ["pull"], "resources": ["instance/x"]}]}),
    bad("PUT", POLICY, "unknown-action", 400, "actions", "/sub-users/alice/policy",
        body={"statements": [{"effect": "allow", "actions": ["fly"], "resources": ["instance/x"]}]}),
    bad("PUT", POLICY, "invalid-resource", 400, "resources", "/sub-users/alice/policy",
        body={"statements": [{"effect": "allow", "actions": ["pull"], "resources": ["repository/x"]}]}),
    bad("PUT", POLICY, "resource-too-long", 400, "resources", "/sub-users/alice/policy",
        body={"statements": [{"effect": "allow", "actions": ["pull"], "resources": ["instance/" + "x" * 600]}]}),
    bad("PUT", POLICY, "too-many-statements", 400, "statements", "/sub-users/alice/policy",
        body={"statements": [{"effect": "allow", "actions": ["pull"], "resources": ["instance/x"]}] * 101}),
    bad("PUT", POLICY, "malformed-json", 400, "json", "/sub-users/alice/policy", malformed=True),
    bad("PUT", POLICY, "unknown-sub-user", 404, "sub-user", "/sub-users/nobody/policy", body={"statements": []}),
    bad("GET", POLICY, "unknown-sub-user", 404, "sub-user", "/sub-users/nobody/policy"),
    bad("POST", "/access-keys", "unknown-sub-user", 404, "sub-user", body={"sub_user": "nobody"}),
    bad("POST", "/access-keys", "sub-user-too-long", 400, "sub_user", body={"sub_user": "a" * 65}),
    bad("POST", "/access-keys", "sub-user-wrong-type", 400, "sub_user", body={"sub_user": 5}),
    bad("POST", "/access-keys", "malformed-json", 400, "json", malformed=True),
    bad("GET", "/access-keys", "unknown-sub-user", 404, "sub-user", params={"sub_user": "nobody"}),
    bad("DELETE", "/access-keys/{key_id}", "unknown-key", 404, "access key", "/access-keys/CRPE0000000000000000"),
    bad("DELETE", "/access-keys/{key_id}", "key-too-long", 404, "access key", f"/access-keys/{LONG}"),
    bad("GET", "/audit", "limit-not-a-number", 400, "limit", params={"limit": "abc"}),
    bad("GET", "/audit", "limit-zero", 400, "limit", params={"limit": "0"}),
    bad("GET", "/audit", "limit-too-large", 400, "limit", params={"limit": "1001"}),
]

# Operations whose only input is the caller's access key; the unauthenticated test covers them.
NO_INPUT_OPERATIONS = {("GET", "/deployment"), ("GET", "/regions"), ("GET", "/accounts"), ("GET", "/sub-users")}


@dataclass
class BadInputContext:
    """A tenant with an instance, namespace team holding team/app, and sub-user alice."""

    admin: ControlClient
    tenant: Tenant
    instance_id: str

    def values(self) -> dict[str, str]:
        return {"instance": self.instance_id, "account": self.tenant.name, "key": self.tenant.client.key_id}


@pytest.fixture(scope="module")
def bad_input_context(admin: ControlClient) -> Iterator[BadInputContext]:
    tenant = create_tenant(admin, "badinput")
    instance_id = tenant.client.create_instance()["id"]
    tenant.client.create_namespace(instance_id, "team")
    tenant.client.create_repository(instance_id, "team/app")
    tenant.add_sub_user("alice")
    yield BadInputContext(admin, tenant, instance_id)
    tenant.close()


def fill(value: Any, values: dict[str, str]) -> Any:
    """Replace {placeholders} in the strings of a JSON value."""
    if isinstance(value, str):
        for key, replacement in values.items():
            value = value.replace(f"{{{key}}}", replacement)
        return value
    if isinstance(value, dict):
        return {key: fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, values) for item in value]
    return value


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
def test_bad_input_rejected(bad_input_context: BadInputContext, case: BadInput) -> None:
    values = bad_input_context.values()
    client = bad_input_context.admin if case.caller == "admin" else bad_input_context.tenant.client
    options: dict[str, Any] = {"params": case.params}
    if case.content is not None:
        options["content"] = case.content
        options["headers"] = {"Content-Type": "application/json"}
    elif case.body is not None:
        options["json"] = fill(case.body, values)

    response = client.request(case.method, fill(case.path, values), **options)

    assert response.status_code == case.status, response.text
    code, message = error_of(response)
    assert code
    assert fill(case.field, values).lower() in message.lower(), message


@pytest.fixture(scope="module")
def operations(admin: ControlClient) -> set[tuple[str, str]]:
    document = admin.call("GET", "/openapi.json")
    return {(method.upper(), path.removeprefix("/api/v1"))
            for path, methods in document["paths"].items() for method in methods}


def test_bad_input_table_covers_every_operation(operations: set[tuple[str, str]]) -> None:
    covered = {(case.method, case.route) for case in BAD_INPUTS} | NO_INPUT_OPERATIONS

    assert operations - covered == set(), "operations without a bad-input case"
    assert covered - operations == set(), "bad-input cases for operations the API does not publish"


def test_every_operation_needs_access_key(operations: set[tuple[str, str]], server: CrpeServer,
                                          http: httpx.Client) -> None:
    for method, route in sorted(operations):
        path = (route.replace("{instance_id}", "zzzzzzzzzzzzzzzz").replace("{namespace}", "team")
                .replace("{name}", "app").replace("{key_id}", "CRPE0000000000000000"))

        response = http.request(method, f"{server.url}/api/v1{path}", json={})

        assert response.status_code == 401, f"{method} {route}: {response.text}"
        code, message = error_of(response)
        assert code == "UNAUTHORIZED", f"{method} {route}"
        assert "access key" in message, f"{method} {route}: {message}"
