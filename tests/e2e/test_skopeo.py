"""Push and pull the real test image with skopeo through an instance's public and VPC endpoints."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    ClientSandbox,
    RegistryHTTP,
    file_digest,
    parse_bearer_challenge,
    read_layout_image,
    registry_error,
    require_tools,
    sha256_digest,
    snapshot_tree,
    unpack_layout,
)
from image_build import ADDED_DIRECTORY, DELETED_ADDED_FILE, DELETED_DIRECTORY, DELETED_FILE, README_AFTER, E2EImage
from server import CrpeServer, Instance

pytestmark = [pytest.mark.e2e, *require_tools("skopeo", "umoci", "mmdebstrap", "unshare")]

REPOSITORY = "team/debian"


@dataclass(frozen=True)
class Pushed:
    """An image that skopeo pushed: where to, with which client sandbox, and the digest it reported."""

    sandbox: ClientSandbox
    instance: Instance
    repository: str
    tag: str
    digest: str


def credentials(instance: Instance) -> str:
    return f"{instance.username}:{instance.password}"


def skopeo_push(sandbox: ClientSandbox, server: CrpeServer, image: E2EImage, instance: Instance, host_name: str,
                repository: str, tag: str, *options: str) -> str:
    """Copy the test image to `host_name` with skopeo and return the manifest digest it wrote."""
    digest_file = sandbox.root / f"digest-{repository.replace('/', '-')}-{tag}"
    sandbox.skopeo("copy", "--dest-creds", credentials(instance), "--dest-tls-verify=false",
                   "--digestfile", str(digest_file), *options,
                   f"oci:{image.layout}:{image.tag}", f"docker://{server.host(host_name)}/{repository}:{tag}")
    return digest_file.read_text().strip()


def skopeo_raw_manifest(sandbox: ClientSandbox, server: CrpeServer, instance: Instance, host_name: str,
                        reference: str) -> bytes:
    result = sandbox.skopeo("inspect", "--raw", "--creds", credentials(instance), "--tls-verify=false",
                            f"docker://{server.host(host_name)}/{reference}", text=False)
    return result.stdout


@pytest.fixture(scope="module")
def pushed(server: CrpeServer, e2e_image: E2EImage,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    """The test image pushed as OCI, digests preserved, through the public endpoint of a new instance."""
    sandbox = ClientSandbox(tmp_path_factory.mktemp("skopeo") / "sandbox")
    instance = server.create_instance()
    sandbox.add_host(instance.public, instance.vpc)
    digest = skopeo_push(sandbox, server, e2e_image, instance, instance.public, REPOSITORY, "v1",
                         "--preserve-digests")
    yield Pushed(sandbox, instance, REPOSITORY, "v1", digest)
    sandbox.close()


def test_oci_push_keeps_manifest_digest(pushed: Pushed, e2e_image: E2EImage) -> None:
    assert pushed.digest == e2e_image.image.manifest_digest


def test_raw_manifest_through_vpc(pushed: Pushed, server: CrpeServer, e2e_image: E2EImage) -> None:
    raw = skopeo_raw_manifest(pushed.sandbox, server, pushed.instance, pushed.instance.vpc,
                              f"{pushed.repository}:{pushed.tag}")

    assert raw == e2e_image.image.manifest_bytes
    assert sha256_digest(raw) == pushed.digest


def test_inspect_through_vpc_lists_layers(pushed: Pushed, server: CrpeServer, e2e_image: E2EImage) -> None:
    result = pushed.sandbox.skopeo("inspect", "--creds", credentials(pushed.instance), "--tls-verify=false",
                                   f"docker://{server.host(pushed.instance.vpc)}/{pushed.repository}:{pushed.tag}")
    inspected = json.loads(result.stdout)

    assert inspected["Digest"] == pushed.digest
    assert inspected["Layers"] == e2e_image.image.layer_digests
    assert inspected["Name"] == f"{server.host(pushed.instance.vpc)}/{pushed.repository}"
    assert inspected["Labels"] == {"org.opencontainers.image.title": "crpe-e2e"}


def test_list_tags_through_vpc(pushed: Pushed, server: CrpeServer) -> None:
    result = pushed.sandbox.skopeo("list-tags", "--creds", credentials(pushed.instance), "--tls-verify=false",
                                   f"docker://{server.host(pushed.instance.vpc)}/{pushed.repository}")

    assert json.loads(result.stdout) == {
        "Repository": f"{server.host(pushed.instance.vpc)}/{pushed.repository}",
        "Tags": [pushed.tag],
    }


def test_manifest_and_blobs_over_http(pushed: Pushed, server: CrpeServer, e2e_image: E2EImage) -> None:
    image = e2e_image.image
    with RegistryHTTP(pushed.instance.vpc, server.port, pushed.instance.username,
                      pushed.instance.password) as http:
        by_tag = http.get_manifest(pushed.repository, pushed.tag)
        assert by_tag.status_code == 200, by_tag.text
        assert by_tag.headers["Docker-Content-Digest"] == pushed.digest
        assert by_tag.headers["Content-Type"] == OCI_MANIFEST
        assert by_tag.content == image.manifest_bytes

        by_digest = http.get_manifest(pushed.repository, pushed.digest)
        assert by_digest.status_code == 200, by_digest.text
        assert by_digest.headers["Docker-Content-Digest"] == pushed.digest
        assert by_digest.content == image.manifest_bytes

        head = http.request("HEAD", f"/v2/{pushed.repository}/manifests/{pushed.tag}",
                            headers={"Accept": OCI_MANIFEST})
        assert head.status_code == 200
        assert head.headers["Docker-Content-Digest"] == pushed.digest
        assert int(head.headers["Content-Length"]) == len(image.manifest_bytes)

        for descriptor in [image.manifest["config"], *image.manifest["layers"]]:
            blob = http.request("GET", f"/v2/{pushed.repository}/blobs/{descriptor['digest']}")
            assert blob.status_code == 200, f"{descriptor['digest']}: {blob.status_code} {blob.text[:200]}"
            assert len(blob.content) == descriptor["size"]
            assert sha256_digest(blob.content) == descriptor["digest"]
            assert blob.headers["Docker-Content-Digest"] == descriptor["digest"]


def test_pull_through_vpc_matches_image(pushed: Pushed, server: CrpeServer, e2e_image: E2EImage,
                                        e2e_image_tree: dict[str, tuple], tmp_path: Path) -> None:
    layout = tmp_path / "pulled"
    pushed.sandbox.skopeo("copy", "--src-creds", credentials(pushed.instance), "--src-tls-verify=false",
                          f"docker://{server.host(pushed.instance.vpc)}/{pushed.repository}:{pushed.tag}",
                          f"oci:{layout}:{pushed.tag}")
    pulled = read_layout_image(layout, pushed.tag)

    assert pulled.manifest_digest == pushed.digest
    assert pulled.manifest_bytes == e2e_image.image.manifest_bytes
    assert pulled.layer_digests == e2e_image.image.layer_digests
    assert pulled.config_digest == e2e_image.image.config_digest
    for digest in [pulled.config_digest, *pulled.layer_digests]:
        assert file_digest(pulled.blob_path(digest)) == digest

    rootfs = unpack_layout(layout, pushed.tag, tmp_path / "bundle")
    tree = snapshot_tree(rootfs)
    assert tree == e2e_image_tree
    assert DELETED_FILE not in tree
    assert DELETED_ADDED_FILE not in tree
    assert DELETED_DIRECTORY not in tree
    assert (rootfs / ADDED_DIRECTORY / "README.txt").read_text() == README_AFTER
    shutil.rmtree(tmp_path / "bundle")


def test_pull_through_public_denied(pushed: Pushed, server: CrpeServer, tmp_path: Path) -> None:
    result = pushed.sandbox.skopeo("copy", "--src-creds", credentials(pushed.instance), "--src-tls-verify=false",
                                   f"docker://{server.host(pushed.instance.public)}/{pushed.repository}:{pushed.tag}",
                                   f"oci:{tmp_path / 'denied'}:{pushed.tag}", check=False)

    assert result.returncode != 0
    assert "denied" in result.stderr.lower(), result.stderr
    assert pushed.instance.vpc in result.stderr, result.stderr

    with RegistryHTTP(pushed.instance.public, server.port, pushed.instance.username,
                      pushed.instance.password) as http:
        response = http.get_manifest(pushed.repository, pushed.tag)
    assert response.status_code == 403, response.text
    error = registry_error(response)
    assert error["code"] == "DENIED"
    assert pushed.instance.vpc in error["message"]


def test_anonymous_pull_unauthorized(pushed: Pushed, server: CrpeServer, tmp_path: Path) -> None:
    result = pushed.sandbox.skopeo("copy", "--src-no-creds", "--src-tls-verify=false",
                                   f"docker://{server.host(pushed.instance.vpc)}/{pushed.repository}:{pushed.tag}",
                                   f"oci:{tmp_path / 'anonymous'}:{pushed.tag}", check=False)

    assert result.returncode != 0
    assert "unauthorized" in result.stderr.lower() or "authentication required" in result.stderr.lower(), \
        result.stderr

    with RegistryHTTP(pushed.instance.vpc, server.port) as http:
        challenged = http.send("GET", f"http://{http.authority}/v2/{pushed.repository}/manifests/{pushed.tag}",
                                {"Accept": OCI_MANIFEST})
        assert challenged.status_code == 401
        assert registry_error(challenged)["code"] == "UNAUTHORIZED"
        challenge = parse_bearer_challenge(challenged.headers["WWW-Authenticate"])
        assert challenge["realm"].startswith(f"http://{http.authority}/")
        assert challenge["scope"] == f"repository:{pushed.repository}:pull"

        response = http.get_manifest(pushed.repository, pushed.tag, anonymous=True)
    assert response.status_code == 401, response.text
    assert registry_error(response)["code"] == "UNAUTHORIZED"


def test_v2s2_push_through_vpc(server: CrpeServer, e2e_image: E2EImage, instance: Instance,
                               sandbox: ClientSandbox) -> None:
    image = e2e_image.image
    digest = skopeo_push(sandbox, server, e2e_image, instance, instance.vpc, "team/debian-v2s2", "v1",
                         "--format", "v2s2")

    raw = skopeo_raw_manifest(sandbox, server, instance, instance.vpc, "team/debian-v2s2:v1")
    assert sha256_digest(raw) == digest
    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"] == {"mediaType": DOCKER_CONFIG, "size": image.manifest["config"]["size"],
                                  "digest": image.config_digest}
    assert [layer["mediaType"] for layer in manifest["layers"]] == [DOCKER_LAYER_GZIP] * 3
    assert [layer["digest"] for layer in manifest["layers"]] == image.layer_digests

    with RegistryHTTP(instance.vpc, server.port, instance.username, instance.password) as http:
        response = http.get_manifest("team/debian-v2s2", "v1")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == DOCKER_MANIFEST
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.content == raw

    # The dir: transport stores the manifest and every blob as the registry sent them.
    directory = sandbox.root / "pulled-v2s2"
    sandbox.skopeo("copy", "--src-creds", credentials(instance), "--src-tls-verify=false",
                   f"docker://{server.host(instance.vpc)}/team/debian-v2s2:v1", f"dir:{directory}")
    assert (directory / "manifest.json").read_bytes() == raw
    for digest_of_blob in [image.config_digest, *image.layer_digests]:
        blob = directory / digest_of_blob.split(":", 1)[1]
        assert file_digest(blob) == digest_of_blob
        assert blob.read_bytes() == image.blob(digest_of_blob)


def test_zstd_streamed_push(server: CrpeServer, e2e_image: E2EImage, instance: Instance,
                            sandbox: ClientSandbox) -> None:
    """Recompressing to zstd makes skopeo 1.9 send each layer in one PATCH with chunked transfer encoding."""
    image = e2e_image.image
    digest = skopeo_push(sandbox, server, e2e_image, instance, instance.public, "team/debian-zstd", "v1",
                         "--dest-compress-format", "zstd")

    raw = skopeo_raw_manifest(sandbox, server, instance, instance.vpc, "team/debian-zstd:v1")
    assert sha256_digest(raw) == digest
    manifest = json.loads(raw)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [OCI_LAYER_ZSTD] * 3
    assert manifest["config"]["digest"] == image.config_digest

    with RegistryHTTP(instance.vpc, server.port, instance.username, instance.password) as http:
        response = http.get_manifest("team/debian-zstd", "v1")
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.headers["Docker-Content-Digest"] == digest
        for layer in manifest["layers"]:
            blob = http.request("GET", f"/v2/team/debian-zstd/blobs/{layer['digest']}")
            assert blob.status_code == 200, blob.text[:200]
            assert len(blob.content) == layer["size"]
            assert sha256_digest(blob.content) == layer["digest"]

    # Decompressed again by skopeo, every layer must be byte-identical to the image's uncompressed layer.
    directory = sandbox.root / "pulled-zstd"
    sandbox.skopeo("copy", "--src-creds", credentials(instance), "--src-tls-verify=false", "--dest-decompress",
                   f"docker://{server.host(instance.vpc)}/team/debian-zstd:v1", f"dir:{directory}")
    for diff_id in image.diff_ids:
        assert file_digest(directory / diff_id.split(":", 1)[1]) == diff_id


def test_push_to_second_repository(pushed: Pushed, server: CrpeServer, e2e_image: E2EImage) -> None:
    """A second push of the same blobs on one instance, where skopeo may mount them from the first repository."""
    digest = skopeo_push(pushed.sandbox, server, e2e_image, pushed.instance, pushed.instance.public,
                         "team/debian-copy", "copy", "--preserve-digests")

    assert digest == e2e_image.image.manifest_digest
    raw = skopeo_raw_manifest(pushed.sandbox, server, pushed.instance, pushed.instance.vpc, "team/debian-copy:copy")
    assert raw == e2e_image.image.manifest_bytes
    with RegistryHTTP(pushed.instance.vpc, server.port, pushed.instance.username,
                      pushed.instance.password) as http:
        for digest_of_blob in [e2e_image.image.config_digest, *e2e_image.image.layer_digests]:
            head = http.request("HEAD", f"/v2/team/debian-copy/blobs/{digest_of_blob}")
            assert head.status_code == 200, digest_of_blob
            assert head.headers["Docker-Content-Digest"] == digest_of_blob


def test_cross_repository_mount_through_vpc(server: CrpeServer, e2e_image: E2EImage, instance: Instance,
                                            sandbox: ClientSandbox) -> None:
    """skopeo remembers where it pushed each layer and mounts it into the next repository of the instance."""
    image = e2e_image.image
    skopeo_push(sandbox, server, e2e_image, instance, instance.vpc, "team/base", "v1", "--preserve-digests")

    digest_file = sandbox.root / "digest-mounted"
    result = sandbox.skopeo("--debug", "copy", "--dest-creds", credentials(instance), "--dest-tls-verify=false",
                            "--preserve-digests", "--digestfile", str(digest_file),
                            f"oci:{e2e_image.layout}:{e2e_image.tag}",
                            f"docker://{server.host(instance.vpc)}/team/mounted:v1")

    assert digest_file.read_text().strip() == image.manifest_digest
    for layer_digest in image.layer_digests:
        mount = f"/v2/team/mounted/blobs/uploads/?from=team%2Fbase&mount={layer_digest.replace(':', '%3A')}"
        assert f"Trying to mount {mount}" in result.stderr
    assert result.stderr.count("... mount OK") == len(image.layer_digests)

    raw = skopeo_raw_manifest(sandbox, server, instance, instance.vpc, "team/mounted:v1")
    assert raw == image.manifest_bytes
    with RegistryHTTP(instance.vpc, server.port, instance.username, instance.password) as http:
        for layer in image.manifest["layers"]:
            blob = http.request("GET", f"/v2/team/mounted/blobs/{layer['digest']}")
            assert blob.status_code == 200, blob.text[:200]
            assert sha256_digest(blob.content) == layer["digest"]
