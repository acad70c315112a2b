"""Push and pull the real test image with podman, each side with its own vfs image store."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    ClientSandbox,
    RegistryHTTP,
    gunzip_digest,
    require_tools,
    sha256_digest,
    snapshot_tree,
)
from image_build import E2EImage
from server import CrpeServer, Instance

pytestmark = [pytest.mark.e2e, *require_tools("podman", "umoci", "mmdebstrap", "unshare")]

REPOSITORY = "team/podman"
TAG = "v1"


@dataclass(frozen=True)
class Pushed:
    """An image that podman pushed: where to, with which client sandbox, and the digest it reported."""

    sandbox: ClientSandbox
    instance: Instance
    digest: str


def credentials(instance: Instance) -> str:
    return f"{instance.username}:{instance.password}"


def load_test_image(sandbox: ClientSandbox, store: list[str], image: E2EImage) -> str:
    """Load the test image into a podman store from an OCI archive and return its image ID.

    podman names an image pulled from an oci: directory after the directory path, which is not a
    valid reference under .cache, so the layout goes in as an oci-archive instead.
    """
    archive = sandbox.root / "image.tar"
    if not archive.exists():
        with tarfile.open(archive, "w") as tar:
            tar.add(image.layout, arcname=".")
    sandbox.run([*store, "load", "--input", str(archive)])
    image_id = sandbox.run([*store, "image", "inspect", "--format", "{{.Id}}", "localhost/v1:latest"]).stdout
    return image_id.strip()


def podman_push(sandbox: ClientSandbox, server: CrpeServer, image: E2EImage, reference: str,
                *options: str) -> str:
    """Push the test image as `reference` from a new store and return the manifest digest podman wrote."""
    store = sandbox.podman_storage("source")
    image_id = load_test_image(sandbox, store, image)
    sandbox.run([*store, "tag", image_id, reference])
    digest_file = sandbox.root / f"digest-{len(list(sandbox.root.glob('digest-*')))}"
    sandbox.run([*store, "push", "--tls-verify=false", "--digestfile", str(digest_file), *options, reference])
    return digest_file.read_text().strip()


@pytest.fixture(scope="module")
def pushed(server: CrpeServer, e2e_image: E2EImage,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    """The test image pushed by podman through the public endpoint of a new instance."""
    sandbox = ClientSandbox(tmp_path_factory.mktemp("podman") / "sandbox")
    instance = server.create_instance()
    sandbox.add_host(instance.public, instance.vpc)
    digest = podman_push(sandbox, server, e2e_image, f"{server.host(instance.public)}/{REPOSITORY}:{TAG}",
                         "--creds", credentials(instance))
    yield Pushed(sandbox, instance, digest)
    sandbox.close()


def test_pushed_manifest_over_http(pushed: Pushed, server: CrpeServer, e2e_image: E2EImage) -> None:
    image = e2e_image.image
    with RegistryHTTP(pushed.instance.vpc, server.port, pushed.instance.username,
                      pushed.instance.password) as http:
        response = http.get_manifest(REPOSITORY, TAG)
        assert response.status_code == 200, response.text
        assert response.headers["Docker-Content-Digest"] == pushed.digest
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert sha256_digest(response.content) == pushed.digest
        manifest = response.json()
        assert manifest["config"]["digest"] == image.config_digest
        assert len(manifest["layers"]) == len(image.diff_ids)

        # podman compresses layers again, so compare each layer's uncompressed digest with the diff ID.
        blob_file = Path(pushed.sandbox.root / "blob")
        for layer, diff_id in zip(manifest["layers"], image.diff_ids, strict=True):
            blob = http.request("GET", f"/v2/{REPOSITORY}/blobs/{layer['digest']}")
            assert blob.status_code == 200, blob.text[:200]
            assert len(blob.content) == layer["size"]
            assert sha256_digest(blob.content) == layer["digest"]
            blob_file.write_bytes(blob.content)
            assert gunzip_digest(blob_file) == diff_id


def test_pull_through_vpc_matches_push(pushed: Pushed, server: CrpeServer, e2e_image: E2EImage,
                                       e2e_image_tree: dict[str, tuple]) -> None:
    sandbox = pushed.sandbox
    store = sandbox.podman_storage("pulled")
    reference = f"{server.host(pushed.instance.vpc)}/{REPOSITORY}:{TAG}"
    image_id = sandbox.run([*store, "pull", "--quiet", "--tls-verify=false", "--creds",
                            credentials(pushed.instance), reference]).stdout.strip()

    assert image_id == e2e_image.image.config_digest.split(":", 1)[1]
    inspected = json.loads(sandbox.run([*store, "image", "inspect", reference]).stdout)[0]
    assert inspected["Digest"] == pushed.digest
    assert inspected["RepoDigests"] == [f"{server.host(pushed.instance.vpc)}/{REPOSITORY}@{pushed.digest}"]
    assert inspected["RootFS"]["Layers"] == e2e_image.image.diff_ids
    assert inspected["ManifestType"] == OCI_MANIFEST
    digest = sandbox.run([*store, "image", "inspect", "--format", "{{.Digest}}", reference]).stdout.strip()
    assert digest == pushed.digest

    mount_point = Path(sandbox.run([*store, "image", "mount", reference]).stdout.strip())
    try:
        assert snapshot_tree(mount_point) == e2e_image_tree
    finally:
        sandbox.run([*store, "image", "unmount", reference])


def test_pull_through_public_denied(pushed: Pushed, server: CrpeServer) -> None:
    sandbox = pushed.sandbox
    store = sandbox.podman_storage("denied")
    result = sandbox.run([*store, "pull", "--tls-verify=false", "--creds", credentials(pushed.instance),
                          f"{server.host(pushed.instance.public)}/{REPOSITORY}:{TAG}"], check=False)

    assert result.returncode != 0
    assert "denied" in result.stderr.lower(), result.stderr
    assert pushed.instance.vpc in result.stderr, result.stderr


def test_anonymous_pull_unauthorized(pushed: Pushed, server: CrpeServer) -> None:
    sandbox = pushed.sandbox
    store = sandbox.podman_storage("anonymous")
    result = sandbox.run([*store, "pull", "--tls-verify=false",
                          f"{server.host(pushed.instance.vpc)}/{REPOSITORY}:{TAG}"], check=False)

    assert result.returncode != 0
    stderr = result.stderr.lower()
    assert "unauthorized" in stderr or "authentication required" in stderr, result.stderr


def test_login_push_v2s2_and_pull(server: CrpeServer, e2e_image: E2EImage, instance: Instance,
                                  sandbox: ClientSandbox) -> None:
    """Credentials stored by `podman login` serve a v2s2 push and a pull. After logout, the pull fails."""
    store = sandbox.podman_storage("login")
    for host_name in (instance.public, instance.vpc):
        result = sandbox.run([*store, "login", "--tls-verify=false", "--username", instance.username,
                              "--password", instance.password, server.host(host_name)])
        assert result.stdout.strip() == "Login Succeeded!"
    stored = json.loads(sandbox.auth_file.read_text())["auths"]
    assert sorted(stored) == sorted([server.host(instance.public), server.host(instance.vpc)])

    digest = podman_push(sandbox, server, e2e_image, f"{server.host(instance.public)}/team/login:v2s2",
                         "--format", "v2s2")
    with RegistryHTTP(instance.vpc, server.port, instance.username, instance.password) as http:
        response = http.get_manifest("team/login", "v2s2")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == DOCKER_MANIFEST
    assert response.headers["Docker-Content-Digest"] == digest
    assert sha256_digest(response.content) == digest

    reference = f"{server.host(instance.vpc)}/team/login:v2s2"
    sandbox.run([*store, "pull", "--quiet", "--tls-verify=false", reference])
    inspected = json.loads(sandbox.run([*store, "image", "inspect", reference]).stdout)[0]
    assert inspected["Digest"] == digest
    assert inspected["ManifestType"] == DOCKER_MANIFEST
    assert inspected["RootFS"]["Layers"] == e2e_image.image.diff_ids

    sandbox.run([*store, "logout", "--all"])
    assert json.loads(sandbox.auth_file.read_text())["auths"] == {}
    sandbox.run([*store, "rmi", reference])
    result = sandbox.run([*store, "pull", "--tls-verify=false", reference], check=False)
    assert result.returncode != 0
    stderr = result.stderr.lower()
    assert "unauthorized" in stderr or "authentication required" in stderr, result.stderr
