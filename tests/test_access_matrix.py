"""The access-policy table, cell by cell, against real `crpe serve` processes.

Every request goes to 127.0.0.1 with the registry host name in the `Host` header. Requests follow the token
flow of docker and Harbor clients: ping /v2/, then fetch a token for the operation's scope from the realm
that the challenge names, with Basic credentials unless anonymous. The request itself carries that token.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_client import (
    DOCKER_USER_AGENT,
    HARBOR_USER_AGENT,
    LOGIN_PASSWORD,
    ControlClient,
    DockerFlow,
    Tenant,
    basic_authorization,
    create_tenant,
    oci_error,
    sha256,
    unique_name,
)
from server import CrpeServer

SEED_TAG = "seed"
REGION = "cn-hangzhou"

KINDS = ("new", "legacy")
ENDPOINTS = ("public", "vpc")
PRINCIPALS = ("anonymous", "account", "sub-user-with-pull", "sub-user-without-pull")
ACTIONS = ("pull", "push", "delete")
CLIENTS = ("docker", "harbor")
VISIBILITIES = ("public", "private")

SUCCESS_STATUS = {"pull": 200, "push": 201, "delete": 202}


# --- The instances, repositories and principals of one deployment ----------------------------------------


@dataclass
class Target:
    """One instance with a namespace that contains a public and a private repository, each with a seed image."""

    http: httpx.Client
    server: CrpeServer
    kind: str
    instance: dict[str, Any]
    namespace: str
    credentials: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    seed_digests: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.instance["id"]

    def host(self, endpoint: str) -> str:
        return self.instance["endpoints"][endpoint]

    def repository(self, visibility: str) -> str:
        return f"{self.namespace}/{visibility}-app"

    def flow(self, principal: str = "account", endpoint: str = "public", **options: Any) -> DockerFlow:
        return DockerFlow(self.http, self.server, self.host(endpoint), self.credentials[principal], **options)


def build_target(http: httpx.Client, admin: ControlClient, tenant: Tenant, kind: str,
                 seed_endpoint: str = "public") -> Target:
    """Create an instance of `kind` for `tenant` with its namespace, repositories, seed images and login."""
    if kind == "legacy":
        instance = tenant.import_legacy_instance(admin, REGION)
    else:
        instance = tenant.client.create_instance(REGION)
    assert instance["legacy"] is (kind == "legacy")
    target = Target(http, admin.server, kind, instance, unique_name("ns"))
    tenant.client.create_namespace(target.id, target.namespace)
    for visibility in VISIBILITIES:
        tenant.client.create_repository(target.id, target.repository(visibility), visibility)
    tenant.client.set_password(target.id)
    target.credentials = {"anonymous": None, "account": (tenant.login_name(), LOGIN_PASSWORD)}
    owner = target.flow(endpoint=seed_endpoint)
    for visibility in VISIBILITIES:
        response, digest = owner.push_image(target.repository(visibility), SEED_TAG, f"{target.id}-{visibility}")
        assert response.status_code == 201, response.text
        target.seed_digests[visibility] = digest
    return target


@dataclass
class World:
    """The deployment of the table: one tenant with a new and a legacy instance and two sub-users.

    Each instance has one namespace with public-app and private-app, which contain a seed image each, and an
    empty extra-app.
    """

    http: httpx.Client
    server: CrpeServer
    admin: ControlClient
    tenant: Tenant
    targets: dict[str, Target]


def start_server(root: Path, **env: str) -> CrpeServer:
    root.mkdir(parents=True)
    return CrpeServer(root, extra_env=env).start()


@pytest.fixture(scope="module")
def world(server: CrpeServer) -> Iterator[World]:
    http = httpx.Client(timeout=30)
    admin = ControlClient.admin(server)
    tenant = create_tenant(admin, "matrix")
    targets = {kind: build_target(http, admin, tenant, kind, seed_endpoint="vpc") for kind in KINDS}
    for target in targets.values():
        tenant.client.create_repository(target.id, target.repository("extra"))
    with_pull = {f"instance/{t.id}/{t.namespace}/*": "pull,push,delete" for t in targets.values()}
    without_pull = {f"instance/{t.id}/{t.namespace}/*": "push,delete" for t in targets.values()}
    # The catalog test checks that a deny hides a repository the allow above covers.
    denied = {f"instance/{t.id}/{t.repository('extra')}": "pull" for t in targets.values()}
    puller = tenant.add_sub_user("puller", allow=with_pull, deny=denied)
    pusher = tenant.add_sub_user("pusher", allow=without_pull)
    for target in targets.values():
        target.credentials["sub-user-with-pull"] = (puller.set_password(target.id), LOGIN_PASSWORD)
        if target.kind == "legacy":
            target.credentials["sub-user-without-pull"] = (pusher.set_password(target.id), LOGIN_PASSWORD)
        else:
            # Only one sub-user may hold a new instance's login password, so this one logs in with
            # temporary credentials.
            target.credentials["sub-user-without-pull"] = pusher.temporary_credentials(target.id)
    yield World(http, server, admin, tenant, targets)
    tenant.close()
    admin.close()
    http.close()


# --- The table ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    kind: str
    endpoint: str
    principal: str
    action: str
    client: str
    visibility: str

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.endpoint}-{self.principal}-{self.action}-{self.client}-{self.visibility}"


@dataclass(frozen=True)
class Expected:
    """The outcome of a cell: a success status, or a rejection whose message contains every part."""

    status: int
    code: str | None = None
    message_parts: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.code is None


def expected_outcome(cell: Cell, target: Target) -> Expected:
    """Return what the access-policy table prescribes for one cell."""
    repository = target.repository(cell.visibility)
    if cell.client == "harbor" and cell.kind == "new":
        return Expected(403, "DENIED", ("Harbor remote replication is not supported",))
    if cell.principal == "anonymous":
        if cell.kind == "legacy" and cell.action == "pull" and cell.visibility == "public":
            return Expected(SUCCESS_STATUS["pull"])
        return Expected(401, "UNAUTHORIZED", ("docker login",))
    if cell.kind == "new" and cell.endpoint == "public" and cell.action == "pull":
        return Expected(403, "DENIED", (target.host("vpc"),))
    if cell.principal == "sub-user-without-pull" and cell.action == "pull":
        if cell.kind == "legacy" and cell.visibility == "public":
            # Anyone may read a public repository of a legacy instance, signed in or not.
            return Expected(SUCCESS_STATUS["pull"])
        return Expected(401, "UNAUTHORIZED", ("pull", repository))
    return Expected(SUCCESS_STATUS[cell.action])


CELLS = [Cell(*values) for values in itertools.product(KINDS, ENDPOINTS, PRINCIPALS, ACTIONS, CLIENTS,
                                                       VISIBILITIES)]


def perform(flow: DockerFlow, cell: Cell, repository: str, target: Target, owner: DockerFlow) -> httpx.Response:
    """Run the cell's action on `repository`; for a delete, first push a manifest of the cell's own."""
    if cell.action == "pull":
        return flow.get_manifest(repository, SEED_TAG)
    if cell.action == "push":
        return flow.push_image(repository, cell.id, cell.id)[0]
    response, digest = owner.push_image(target.repository(cell.visibility), cell.id, f"delete-{cell.id}")
    assert response.status_code == 201, response.text
    return flow.delete_manifest(repository, digest)


@pytest.mark.parametrize("cell", CELLS, ids=[cell.id for cell in CELLS])
def test_access_policy(world: World, cell: Cell) -> None:
    target = world.targets[cell.kind]
    repository = target.repository(cell.visibility)
    expected = expected_outcome(cell, target)
    user_agent = HARBOR_USER_AGENT if cell.client == "harbor" else DOCKER_USER_AGENT
    flow = target.flow(cell.principal, cell.endpoint, user_agent=user_agent)
    # The account through the VPC endpoint may do everything; it prepares deletes and checks effects.
    owner = target.flow("account", "vpc")

    response = perform(flow, cell, repository, target, owner)

    assert response.status_code == expected.status, response.text
    code, message = oci_error(response)
    if not expected.allowed:
        assert code == expected.code, response.text
        for part in expected.message_parts:
            assert part in message, message

    if cell.action == "pull" and expected.allowed:
        assert response.headers["Docker-Content-Digest"] == target.seed_digests[cell.visibility]
        assert sha256(response.content) == target.seed_digests[cell.visibility]
    if cell.action == "push":
        stored = owner.get_manifest(repository, cell.id)
        assert stored.status_code == (200 if expected.allowed else 404), stored.text
    if cell.action == "delete":
        remaining = owner.get_manifest(repository, cell.id)
        assert remaining.status_code == (404 if expected.allowed else 200), remaining.text

    if not expected.allowed:
        # A rejection must not tell whether the repository exists.
        missing_flow = target.flow(cell.principal, cell.endpoint, user_agent=user_agent)
        missing_repository = f"{target.namespace}/missing-{cell.action}"
        if cell.action == "delete":
            missing = missing_flow.delete_manifest(missing_repository, target.seed_digests[cell.visibility])
        else:
            missing = perform(missing_flow, cell, missing_repository, target, owner)
        assert missing.status_code == response.status_code, missing.text
        assert oci_error(missing)[0] == code, missing.text


def test_table_covers_every_combination() -> None:
    assert len(CELLS) == 2 * 2 * 4 * 3 * 2 * 2
    assert len({cell.id for cell in CELLS}) == len(CELLS)


# --- Endpoint rules that need their own deployment settings ----------------------------------------------


@dataclass
class Deployment:
    """A dedicated server with one tenant that owns a new and a legacy instance."""

    server: CrpeServer
    targets: dict[str, Target]
    http: httpx.Client
    admin: ControlClient
    tenant: Tenant

    def stop(self) -> None:
        self.tenant.close()
        self.admin.close()
        self.http.close()
        self.server.stop()


def deploy(root: Path, seed_endpoint: str = "public", **env: str) -> Deployment:
    server = start_server(root, **env)
    http = httpx.Client(timeout=30)
    admin = ControlClient.admin(server)
    tenant = create_tenant(admin, "dedicated")
    targets = {kind: build_target(http, admin, tenant, kind, seed_endpoint) for kind in KINDS}
    return Deployment(server, targets, http, admin, tenant)


@pytest.fixture(scope="module")
def outside_vpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A server whose VPC networks exclude loopback, so test requests come from outside the VPC.

    It also allows pulls through public endpoints, the setting meant for clients outside the VPC; the
    tests that use it otherwise go through VPC host names or push.
    """
    deployment = deploy(tmp_path_factory.mktemp("outside-vpc") / "server", CRPE_VPC_NETWORKS="10.0.0.0/8",
                        CRPE_PUBLIC_ENDPOINT_PULL="true")
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A server that trusts a proxy on 127.0.0.1 and whose VPC networks exclude loopback."""
    deployment = deploy(tmp_path_factory.mktemp("behind-proxy") / "server",
                        CRPE_VPC_NETWORKS="10.0.0.0/8", CRPE_TRUSTED_PROXIES="127.0.0.1/32")
    yield deployment
    deployment.stop()


def assert_outside_vpc_rejected(response: httpx.Response, target: Target) -> None:
    assert response.status_code == 403, response.text
    code, message = oci_error(response)
    assert code == "DENIED"
    assert target.host("vpc") in message
    assert "VPC networks" in message
    assert target.host("public") in message, "the message should name the endpoint to use instead"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("action", ["pull", "push"])
def test_vpc_host_outside_vpc_rejected(outside_vpc: Deployment, kind: str, action: str) -> None:
    target = outside_vpc.targets[kind]
    flow = target.flow("account", "vpc")

    if action == "pull":
        response = flow.get_manifest(target.repository("private"), SEED_TAG)
    else:
        response = flow.push_image(target.repository("private"), "outside", "outside")[0]

    assert_outside_vpc_rejected(response, target)


@pytest.mark.parametrize("kind", KINDS)
def test_token_on_vpc_host_outside_vpc_rejected(outside_vpc: Deployment, kind: str) -> None:
    target = outside_vpc.targets[kind]
    response = outside_vpc.http.get(f"{outside_vpc.server.url}/auth/token",
                         params={"service": target.host("public"),
                                 "scope": f"repository:{target.repository('private')}:pull"},
                         auth=target.credentials["account"],
                         headers={"Host": outside_vpc.server.host(target.host("vpc"))})

    assert_outside_vpc_rejected(response, target)


@pytest.mark.parametrize("kind", KINDS)
def test_public_host_outside_vpc_still_pushes(outside_vpc: Deployment, kind: str) -> None:
    target = outside_vpc.targets[kind]

    response = target.flow("account", "public").push_image(target.repository("private"), "from-outside", kind)[0]

    assert response.status_code == 201, response.text


def test_public_endpoint_pull_setting(outside_vpc: Deployment) -> None:
    target = outside_vpc.targets["new"]

    allowed = target.flow("account", "public").get_manifest(target.repository("private"), SEED_TAG)
    anonymous = target.flow("anonymous", "public").get_manifest(target.repository("public"), SEED_TAG)

    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["Docker-Content-Digest"] == target.seed_digests["private"]
    assert anonymous.status_code == 401, anonymous.text
    assert oci_error(anonymous)[0] == "UNAUTHORIZED"


@pytest.mark.parametrize("kind", KINDS)
def test_forwarded_for_from_trusted_proxy(behind_proxy: Deployment, kind: str) -> None:
    target = behind_proxy.targets[kind]
    inside = target.flow("account", "vpc", headers={"X-Forwarded-For": "10.1.2.3"})
    outside = target.flow("account", "vpc", headers={"X-Forwarded-For": "192.0.2.7"})
    direct = target.flow("account", "vpc")

    pulled = inside.get_manifest(target.repository("private"), SEED_TAG)
    from_outside = outside.get_manifest(target.repository("private"), SEED_TAG)
    without_header = direct.get_manifest(target.repository("private"), SEED_TAG)

    assert pulled.status_code == 200, pulled.text
    assert pulled.headers["Docker-Content-Digest"] == target.seed_digests["private"]
    assert_outside_vpc_rejected(from_outside, target)
    assert_outside_vpc_rejected(without_header, target)


@pytest.mark.parametrize("kind", KINDS)
def test_forwarded_for_from_untrusted_proxy_ignored(outside_vpc: Deployment, kind: str) -> None:
    target = outside_vpc.targets[kind]
    flow = target.flow("account", "vpc", headers={"X-Forwarded-For": "10.1.2.3"})

    response = flow.get_manifest(target.repository("private"), SEED_TAG)

    assert_outside_vpc_rejected(response, target)


@pytest.mark.parametrize("kind", KINDS)
def test_forwarded_host_from_trusted_proxy(behind_proxy: Deployment, kind: str) -> None:
    target = behind_proxy.targets[kind]
    flow = target.flow("account", "public", forwarded_host=True)

    pushed, digest = flow.push_image(target.repository("private"), "forwarded", f"forwarded-{kind}")
    ping = flow.raw("GET", "/v2/")

    assert pushed.status_code == 201, pushed.text
    assert pushed.headers["Docker-Content-Digest"] == digest
    assert ping.status_code == 401
    assert f'realm="http://{flow.authority}/auth/token"' in ping.headers["WWW-Authenticate"]
    assert f'service="{target.host("public")}"' in ping.headers["WWW-Authenticate"]


def test_forwarded_host_from_untrusted_proxy_ignored(outside_vpc: Deployment) -> None:
    target = outside_vpc.targets["new"]
    flow = target.flow("account", "public", forwarded_host=True)

    response = flow.raw("GET", "/v2/")

    # Host names the control plane, which has no /v2/ route; a registry would challenge with 401 and
    # respond with an OCI error body.
    assert response.status_code == 404, response.text
    assert "WWW-Authenticate" not in response.headers
    assert "errors" not in response.json()


# --- Credentials, host names and instances -----------------------------------------------------------------


@pytest.fixture(scope="module")
def other_tenant(world: World) -> Iterator[dict[str, Target]]:
    """A second tenant with its own new and legacy instances in the same region."""
    tenant = create_tenant(world.admin, "other")
    targets = {kind: build_target(world.http, world.admin, tenant, kind, seed_endpoint="vpc") for kind in KINDS}
    yield targets
    tenant.close()


def test_token_for_other_new_instance_rejected(world: World, other_tenant: dict[str, Target]) -> None:
    own, other = world.targets["new"], other_tenant["new"]
    repository = other.repository("private")
    # The account has every right on its own instance, so the token grants whatever repository it names.
    token_response = own.flow("account", "vpc").raw(
        "GET", "/auth/token", params={"service": own.host("public"), "scope": f"repository:{repository}:pull"},
        headers={"Authorization": basic_authorization(own.credentials["account"])})
    assert token_response.status_code == 200, token_response.text
    token = token_response.json()["token"]

    response = other.flow("anonymous", "vpc").raw("GET", f"/v2/{repository}/manifests/{SEED_TAG}", token=token)

    assert response.status_code == 401, response.text
    assert oci_error(response)[0] == "UNAUTHORIZED"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_login_for_other_new_instance_rejected(world: World, other_tenant: dict[str, Target]) -> None:
    own, other = world.targets["new"], other_tenant["new"]

    response = DockerFlow(world.http, world.server, other.host("vpc"), own.credentials["account"]).get_manifest(
        other.repository("private"), SEED_TAG)

    assert response.status_code == 401, response.text
    assert oci_error(response)[0] == "UNAUTHORIZED"


def test_token_for_other_legacy_instance_rejected(world: World, other_tenant: dict[str, Target]) -> None:
    own, other = world.targets["legacy"], other_tenant["legacy"]
    assert own.host("vpc") == other.host("vpc"), "legacy instances of a region share their host names"

    response = own.flow("account", "vpc").get_manifest(other.repository("private"), SEED_TAG)

    assert response.status_code == 401, response.text
    assert oci_error(response)[0] == "UNAUTHORIZED"


def exclusive_host(instance_id: str, region: str, network: str, domain: str = "crpe.test") -> str:
    suffix = "-vpc" if network == "vpc" else ""
    return f"crpi-{instance_id}{suffix}.{region}.personal.cr.{domain}"


def unknown_instance_answer(world: World, host_name: str, path: str) -> tuple[int, str | None, str]:
    """Return (status, code, message with the host replaced by <host>) of an anonymous request."""
    authority = world.server.host(host_name)
    response = world.http.get(f"{world.server.url}{path}", headers={"Host": authority})
    code, message = oci_error(response)
    return response.status_code, code, message.replace(authority, "<host>")


@pytest.mark.parametrize("network", ENDPOINTS)
@pytest.mark.parametrize("path", ["/v2/", "/auth/token", "/v2/team/app/manifests/latest"])
def test_instance_under_other_region_like_unknown(world: World, network: str, path: str) -> None:
    instance_id = world.targets["new"].id
    unknown_id = "zz" + instance_id[2:] if not instance_id.startswith("zz") else "yy" + instance_id[2:]

    wrong_region = unknown_instance_answer(world, exclusive_host(instance_id, "cn-shanghai", network), path)
    unknown = unknown_instance_answer(world, exclusive_host(unknown_id, "cn-shanghai", network), path)

    assert wrong_region == unknown
    assert wrong_region[:2] == (404, "NAME_UNKNOWN")


@pytest.mark.parametrize("network", ENDPOINTS)
@pytest.mark.parametrize("path", ["/v2/", "/auth/token", "/v2/team/app/manifests/latest"])
def test_legacy_instance_not_on_exclusive_host(world: World, network: str, path: str) -> None:
    legacy_id = world.targets["legacy"].id
    unknown_id = "zz" + legacy_id[2:] if not legacy_id.startswith("zz") else "yy" + legacy_id[2:]

    legacy = unknown_instance_answer(world, exclusive_host(legacy_id, REGION, network), path)
    unknown = unknown_instance_answer(world, exclusive_host(unknown_id, REGION, network), path)

    assert legacy == unknown
    assert legacy[:2] == (404, "NAME_UNKNOWN")


@pytest.mark.parametrize("network", ENDPOINTS)
@pytest.mark.parametrize("action", ["pull", "push"])
def test_new_instance_not_on_legacy_host(world: World, network: str, action: str) -> None:
    new, legacy = world.targets["new"], world.targets["legacy"]
    repository = new.repository("private")
    # The account's credentials log in on the legacy host, because the account also owns a legacy instance.
    flow = DockerFlow(world.http, world.server, legacy.host(network), new.credentials["account"])

    if action == "pull":
        response = flow.get_manifest(repository, SEED_TAG)
    else:
        response = flow.push_image(repository, "through-legacy", f"through-legacy-{network}")[0]

    assert response.status_code == 404, response.text
    assert oci_error(response)[0] == "NAME_UNKNOWN"
    assert new.flow("account", "vpc").get_manifest(repository, "through-legacy").status_code == 404


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("principal", "visible"), [
    ("account", ("extra-app", "private-app", "public-app")),
    ("sub-user-with-pull", ("private-app", "public-app")),
    ("sub-user-without-pull", ()),
])
def test_catalog_lists_only_pullable(world: World, kind: str, principal: str, visible: tuple[str, ...]) -> None:
    target = world.targets[kind]

    response = target.flow(principal, "vpc").catalog()

    assert response.status_code == 200, response.text
    assert response.json()["repositories"] == [f"{target.namespace}/{name}" for name in visible]


@pytest.mark.parametrize("kind", KINDS)
def test_catalog_anonymous_unauthorized(world: World, kind: str) -> None:
    target = world.targets[kind]

    response = target.flow("anonymous", "vpc").catalog()

    assert response.status_code == 401, response.text
    assert oci_error(response)[0] == "UNAUTHORIZED"
