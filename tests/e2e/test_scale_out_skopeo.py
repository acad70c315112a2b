"""skopeo against three crpe nodes on PostgreSQL and Ceph RGW: push through one node, pull through the others.

The nodes respond to blob GETs with 307 redirects to presigned RGW URLs, so the pulls also prove that skopeo
follows them and gets the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, start_cluster
from e2e_support import ClientSandbox, RegistryHTTP, file_digest, read_layout_image, require_tools, sha256_digest
from image_build import E2EImage
from server import Instance

pytestmark = [pytest.mark.e2e, *require_tools("skopeo", "umoci", "mmdebstrap", "unshare")]

REPOSITORY = "team/debian"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    started = start_cluster(Path(tmp_path_factory.mktemp("skopeo-cluster")),
                            request.getfixturevalue("postgres_server"), request.getfixturevalue("rgw_server"),
                            redirect=True)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def cluster_sandbox(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientSandbox]:
    sandbox = ClientSandbox(tmp_path_factory.mktemp("skopeo-cluster-client") / "sandbox")
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def pushed(cluster: Cluster, cluster_sandbox: ClientSandbox, e2e_image: E2EImage) -> tuple[Instance, str]:
    """The test image pushed through node 0's public endpoint; returns the instance and the digest."""
    node = cluster.nodes[0]
    instance = node.create_instance()
    cluster_sandbox.add_host(instance.public, instance.vpc)
    digest_file = cluster_sandbox.root / "pushed-digest"
    cluster_sandbox.skopeo("copy", "--dest-creds", f"{instance.username}:{instance.password}",
                           "--dest-tls-verify=false", "--preserve-digests", "--digestfile", str(digest_file),
                           f"oci:{e2e_image.layout}:{e2e_image.tag}",
                           f"docker://{node.host(instance.public)}/{REPOSITORY}:v1")
    return instance, digest_file.read_text().strip()


def test_push_keeps_digest(pushed: tuple[Instance, str], e2e_image: E2EImage) -> None:
    assert pushed[1] == e2e_image.image.manifest_digest


@pytest.mark.parametrize("node_number", [1, 2])
def test_pull_through_other_node(node_number: int, cluster: Cluster, cluster_sandbox: ClientSandbox,
                                 pushed: tuple[Instance, str], e2e_image: E2EImage, tmp_path: Path) -> None:
    instance, digest = pushed
    node = cluster.nodes[node_number]
    layout = tmp_path / "pulled"

    cluster_sandbox.skopeo("copy", "--src-creds", f"{instance.username}:{instance.password}",
                           "--src-tls-verify=false", f"docker://{node.host(instance.vpc)}/{REPOSITORY}:v1",
                           f"oci:{layout}:v1")
    pulled = read_layout_image(layout, "v1")

    assert pulled.manifest_digest == digest
    assert pulled.manifest_bytes == e2e_image.image.manifest_bytes
    assert pulled.layer_digests == e2e_image.image.layer_digests
    assert pulled.config_digest == e2e_image.image.config_digest
    for blob_digest in [pulled.config_digest, *pulled.layer_digests]:
        assert file_digest(pulled.blob_path(blob_digest)) == blob_digest


def test_blob_get_redirects_to_rgw(cluster: Cluster, pushed: tuple[Instance, str], e2e_image: E2EImage) -> None:
    instance, _ = pushed
    layer = e2e_image.image.layer_digests[0]
    node = cluster.nodes[2]

    with RegistryHTTP(instance.vpc, node.port, instance.username, instance.password) as http:
        redirected = http.request("GET", f"/v2/{REPOSITORY}/blobs/{layer}")
        head = http.request("HEAD", f"/v2/{REPOSITORY}/blobs/{layer}")

    assert redirected.status_code == 307
    assert redirected.headers["Docker-Content-Digest"] == layer
    assert redirected.headers["Location"].startswith(f"{cluster.rgw.endpoint}/{cluster.bucket}/cn-hangzhou/blobs/")
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == layer
    assert sha256_digest(e2e_image.image.blob(layer)) == layer
