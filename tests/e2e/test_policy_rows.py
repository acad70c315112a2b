"""The access-policy table row by row with skopeo, and the login password rule with two sub-users.

Rows: the public and VPC endpoints of a new instance and of a legacy instance. skopeo runs in the client
sandbox, whose hosts file names only the endpoints used here and whose nsswitch.conf resolves from files
alone. Its requests come from 127.0.0.1, which the server's default VPC networks include.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from control_client import LOGIN_PASSWORD, ControlClient, Tenant, create_tenant, unique_name
from e2e_support import ClientSandbox, LayoutImage, read_layout_image, require_tools, run_checked
from server import CrpeServer

pytestmark = [pytest.mark.e2e, *require_tools("skopeo", "umoci", "unshare")]

IMAGE_TAG = "v1"
ROWS = [("new", "public"), ("new", "vpc"), ("legacy", "public"), ("legacy", "vpc")]
ROW_IDS = [f"{kind}-{network}" for kind, network in ROWS]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    """An OCI layout with one image of one small layer, made with umoci."""
    root = tmp_path_factory.mktemp("small-image")
    layout, bundle, image = root / "layout", root / "bundle", f"{root / 'layout'}:{IMAGE_TAG}"
    rootless = ["--rootless"] if os.geteuid() != 0 else []
    run_checked(["umoci", "init", "--layout", str(layout)], timeout=60)
    run_checked(["umoci", "new", "--image", image], timeout=60)
    run_checked(["umoci", "unpack", *rootless, "--image", image, str(bundle)], timeout=60)
    (bundle / "rootfs" / "hello.txt").write_text("crpe access-policy rows\n")
    run_checked(["umoci", "repack", "--image", image, str(bundle)], timeout=60)
    return read_layout_image(layout, IMAGE_TAG)


@dataclass
class Rows:
    """A tenant with a new and a legacy instance, a namespace in each, and a sandbox that resolves their hosts."""

    server: CrpeServer
    admin: ControlClient
    tenant: Tenant
    sandbox: ClientSandbox
    instances: dict[str, dict[str, Any]]
    namespaces: dict[str, str]

    def host(self, kind: str, network: str) -> str:
        """Return host:port of an endpoint, as skopeo addresses it."""
        return self.server.host(self.instances[kind]["endpoints"][network])

    @property
    def credentials(self) -> str:
        return f"{self.tenant.name}:{LOGIN_PASSWORD}"


@pytest.fixture(scope="module")
def rows(server: CrpeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rows]:
    admin = ControlClient.admin(server)
    tenant = create_tenant(admin, "rows")
    instances = {"new": tenant.client.create_instance(), "legacy": tenant.import_legacy_instance(admin)}
    namespaces = {kind: unique_name("rows") for kind in instances}
    sandbox = ClientSandbox(tmp_path_factory.mktemp("rows") / "sandbox")
    for kind, instance in instances.items():
        tenant.client.create_namespace(instance["id"], namespaces[kind])
        tenant.client.set_password(instance["id"])
        sandbox.add_host(instance["endpoints"]["public"], instance["endpoints"]["vpc"])
    yield Rows(server, admin, tenant, sandbox, instances, namespaces)
    sandbox.close()
    tenant.close()
    admin.close()


def skopeo_push(sandbox: ClientSandbox, image: LayoutImage, destination: str,
                *credentials: str) -> subprocess.CompletedProcess[str]:
    """Copy `image` to `destination` (host/repository:tag); without credentials skopeo uses its saved login."""
    options = ["--dest-creds", credentials[0]] if credentials else []
    return sandbox.skopeo("copy", *options, "--dest-tls-verify=false", "--preserve-digests",
                          f"oci:{image.layout}:{image.tag}", f"docker://{destination}", check=False, timeout=120)


def skopeo_pull(sandbox: ClientSandbox, source: str, layout: Path,
                credentials: str | None) -> subprocess.CompletedProcess[str]:
    """Copy `source` into an OCI layout; `credentials` None means anonymous."""
    options = ["--src-creds", credentials] if credentials is not None else ["--src-no-creds"]
    return sandbox.skopeo("copy", *options, "--src-tls-verify=false", f"docker://{source}",
                          f"oci:{layout}:{IMAGE_TAG}", check=False, timeout=120)


def skopeo_login(sandbox: ClientSandbox, host: str, username: str, password: str) -> subprocess.CompletedProcess[str]:
    argv = ["skopeo", "login", "--tls-verify=false", "--authfile", str(sandbox.auth_file), "--username", username,
            "--password-stdin", host]
    return subprocess.run(sandbox.wrap(argv), input=password, capture_output=True, text=True, timeout=120,
                          env=sandbox.env, cwd=sandbox.root, check=False)


def authenticated_pull_rejection(rows: Rows, kind: str, network: str) -> str | None:
    """Return the exact text skopeo prints when an authenticated pull is rejected, or None if it is allowed."""
    if kind == "new" and network == "public":
        endpoints = rows.instances["new"]["endpoints"]
        return (f"denied: pulling through the public endpoint {endpoints['public']} is not allowed for this "
                f"instance; pull through its VPC endpoint {endpoints['vpc']} instead")
    return None


def anonymous_pull_rejection(rows: Rows, kind: str, network: str, visibility: str) -> str | None:
    """Return the exact text skopeo prints when an anonymous pull is rejected, or None if it is allowed."""
    if kind == "new":
        return (f"unauthorized: anonymous access is not allowed on this instance; log in first: docker login "
                f"{rows.host(kind, network)}")
    if visibility == "private":
        return "unauthorized: authentication required; log in with docker login and retry"
    return None


@pytest.mark.parametrize(("kind", "network"), ROWS, ids=ROW_IDS)
def test_row_push_and_pull(rows: Rows, small_image: LayoutImage, kind: str, network: str, tmp_path: Path) -> None:
    reference = f"{rows.host(kind, network)}/{rows.namespaces[kind]}/app-{network}:{IMAGE_TAG}"

    pushed = skopeo_push(rows.sandbox, small_image, reference, rows.credentials)
    pulled = skopeo_pull(rows.sandbox, reference, tmp_path / "pulled", rows.credentials)

    assert pushed.returncode == 0, pushed.stderr
    rejection = authenticated_pull_rejection(rows, kind, network)
    if rejection is None:
        assert pulled.returncode == 0, pulled.stderr
        assert read_layout_image(tmp_path / "pulled", IMAGE_TAG).manifest_digest == small_image.manifest_digest
    else:
        assert pulled.returncode != 0
        assert rejection in pulled.stderr, pulled.stderr


@pytest.mark.parametrize("visibility", ["public", "private"])
@pytest.mark.parametrize(("kind", "network"), ROWS, ids=ROW_IDS)
def test_row_anonymous_pull(rows: Rows, small_image: LayoutImage, kind: str, network: str, visibility: str,
                            tmp_path: Path) -> None:
    repository = f"{rows.namespaces[kind]}/anonymous-{visibility}-{network}"
    rows.tenant.client.create_repository(rows.instances[kind]["id"], repository, visibility)
    # The VPC endpoint takes pushes and pulls of every instance kind, so the image is pushed there.
    pushed = skopeo_push(rows.sandbox, small_image, f"{rows.host(kind, 'vpc')}/{repository}:{IMAGE_TAG}",
                         rows.credentials)
    assert pushed.returncode == 0, pushed.stderr

    pulled = skopeo_pull(rows.sandbox, f"{rows.host(kind, network)}/{repository}:{IMAGE_TAG}",
                         tmp_path / "pulled", None)

    rejection = anonymous_pull_rejection(rows, kind, network, visibility)
    if rejection is None:
        assert pulled.returncode == 0, pulled.stderr
        assert read_layout_image(tmp_path / "pulled", IMAGE_TAG).manifest_digest == small_image.manifest_digest
    else:
        assert pulled.returncode != 0
        assert rejection in pulled.stderr, pulled.stderr


def test_password_rule_new_instance(rows: Rows, small_image: LayoutImage) -> None:
    instance = rows.instances["new"]
    namespace = rows.namespaces["new"]
    host = rows.host("new", "vpc")
    resource = f"instance/{instance['id']}/{namespace}/*"
    alice = rows.tenant.add_sub_user("alice", allow={resource: "pull,push"})
    bob = rows.tenant.add_sub_user("bob", allow={resource: "pull,push"})
    alice_name, bob_name = f"alice@{rows.tenant.name}", f"bob@{rows.tenant.name}"
    password_path = f"/instances/{instance['id']}/password"

    alice.set_password(instance["id"], "Alice-pass-1")
    alice_login = skopeo_login(rows.sandbox, host, alice_name, "Alice-pass-1")
    alice_push = skopeo_push(rows.sandbox, small_image, f"{host}/{namespace}/by-alice:{IMAGE_TAG}")
    bob_claim = bob.request("PUT", password_path, json={"password": "Bob-pass-1"})
    bob_rejected = skopeo_login(rows.sandbox, host, bob_name, "Bob-pass-1")

    assert alice_login.returncode == 0, alice_login.stderr
    assert "Login Succeeded" in alice_login.stdout
    assert alice_push.returncode == 0, alice_push.stderr
    assert bob_claim.status_code == 409, bob_claim.text
    assert alice_name in bob_claim.json()["error"]["message"]
    assert bob_rejected.returncode != 0
    assert "invalid username/password" in bob_rejected.stderr, bob_rejected.stderr

    rows.tenant.client.call("DELETE", f"/instances/{instance['id']}/password-holder")
    alice_rejected = skopeo_login(rows.sandbox, host, alice_name, "Alice-pass-1")
    bob.set_password(instance["id"], "Bob-pass-1")
    bob_login = skopeo_login(rows.sandbox, host, bob_name, "Bob-pass-1")
    bob_push = skopeo_push(rows.sandbox, small_image, f"{host}/{namespace}/by-bob:{IMAGE_TAG}")

    assert alice_rejected.returncode != 0
    assert "invalid username/password" in alice_rejected.stderr, alice_rejected.stderr
    assert bob_login.returncode == 0, bob_login.stderr
    assert bob_push.returncode == 0, bob_push.stderr


def test_password_rule_legacy_instance(rows: Rows, small_image: LayoutImage) -> None:
    instance = rows.instances["legacy"]
    namespace = rows.namespaces["legacy"]
    host = rows.host("legacy", "vpc")
    resource = f"instance/{instance['id']}/{namespace}/*"
    users = {name: rows.tenant.add_sub_user(f"legacy-{name}", allow={resource: "pull,push"})
             for name in ("alice", "bob")}

    for name, client in users.items():
        username = client.set_password(instance["id"], f"{name.title()}-pass-1")
        login = skopeo_login(rows.sandbox, host, username, f"{name.title()}-pass-1")
        pushed = skopeo_push(rows.sandbox, small_image, f"{host}/{namespace}/by-{name}:{IMAGE_TAG}")

        assert username == f"legacy-{name}@{rows.tenant.name}"
        assert login.returncode == 0, login.stderr
        assert pushed.returncode == 0, pushed.stderr
