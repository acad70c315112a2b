"""Three crpe nodes on one PostgreSQL database and one Ceph RGW bucket: any node serves any request."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cluster import Cluster, start_cluster
from registry_client import RegistryClient, error_code, error_message, image_manifest, sha256
from server import CrpeServer, Instance

MIB = 1024 * 1024
REPOSITORY = "team/app"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    started = start_cluster(Path(tmp_path_factory.mktemp("cluster")), request.getfixturevalue("postgres_server"),
                            request.getfixturevalue("rgw_server"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def instance(cluster: Cluster) -> Instance:
    return cluster.nodes[0].create_instance()


@pytest.fixture
def clients(cluster: Cluster, instance: Instance) -> Iterator[list[RegistryClient]]:
    """One registry client per node, all for the same instance."""
    opened = [RegistryClient(node, instance) for node in cluster.nodes]
    yield opened
    for client in opened:
        client.close()


def data_of(size: int, seed: bytes) -> bytes:
    return hashlib.shake_256(seed).digest(size)


def patch(client: RegistryClient, location: str, data: bytes, start: int) -> httpx.Response:
    return client.request("PATCH", location, content=data, repository=REPOSITORY,
                          headers={"Content-Range": f"{start}-{start + len(data) - 1}",
                                   "Content-Type": "application/octet-stream"})


def test_nodes_report_healthy(cluster: Cluster) -> None:
    statuses = [httpx.get(f"{node.url}/healthz", timeout=5).status_code for node in cluster.nodes]

    assert statuses == [200, 200, 200]


def test_chunked_upload_across_nodes(clients: list[RegistryClient]) -> None:
    a, b, c = clients
    # Chunks that cross the 8 MiB multipart part size, each sent to another node.
    chunks = [data_of(3 * MIB, b"one"), data_of(6 * MIB + 5, b"two"), data_of(9 * MIB, b"three"), b"x"]
    data = b"".join(chunks)
    digest = sha256(data)

    location = a.start_upload(REPOSITORY)
    offset, statuses, ranges = 0, [], []
    for client, chunk in zip([b, c, a, b], chunks, strict=True):
        response = patch(client, location, chunk, offset)
        offset += len(chunk)
        statuses.append(response.status_code)
        ranges.append(response.headers.get("Range"))
    progress = c.request("GET", location, repository=REPOSITORY)
    finished = a.request("PUT", location, params={"digest": digest}, repository=REPOSITORY)
    pulled = [client.request("GET", f"/v2/{REPOSITORY}/blobs/{digest}", network="vpc", repository=REPOSITORY)
              for client in clients]

    assert statuses == [202, 202, 202, 202]
    assert ranges == [f"0-{3 * MIB - 1}", f"0-{9 * MIB + 4}", f"0-{18 * MIB + 4}", f"0-{len(data) - 1}"]
    assert progress.status_code == 204
    assert progress.headers["Range"] == f"0-{len(data) - 1}"
    assert finished.status_code == 201
    assert finished.headers["Docker-Content-Digest"] == digest
    for response in pulled:
        assert response.status_code == 200
        assert response.headers["Docker-Content-Digest"] == digest
        assert sha256(response.content) == digest


def test_image_pushed_on_one_node_pulls_from_all(clients: list[RegistryClient]) -> None:
    manifest = clients[1].push_image(REPOSITORY, "v1", "scale out")
    document = json.loads(manifest)

    for client in clients:
        got = client.request("GET", f"/v2/{REPOSITORY}/manifests/v1", network="vpc", repository=REPOSITORY,
                             headers={"Accept": document["mediaType"]})
        assert got.status_code == 200
        assert got.content == manifest
        for descriptor in [document["config"], *document["layers"]]:
            blob = client.request("GET", f"/v2/{REPOSITORY}/blobs/{descriptor['digest']}", network="vpc",
                                  repository=REPOSITORY)
            assert sha256(blob.content) == descriptor["digest"]


def test_second_writer_on_other_node_rejected(clients: list[RegistryClient]) -> None:
    a, b, _ = clients
    location = a.start_upload(REPOSITORY)
    streaming = threading.Event()

    def slow_body() -> Iterator[bytes]:
        # Two 1 MiB pieces with a pause between, so the first node holds the upload's lease meanwhile.
        yield b"s" * MIB
        streaming.set()
        time.sleep(2)
        yield b"s" * MIB

    results: dict[str, httpx.Response] = {}
    first = threading.Thread(target=lambda: results.update(first=a.request(
        "PATCH", location, content=slow_body(), repository=REPOSITORY)))
    first.start()
    assert streaming.wait(10)
    time.sleep(0.5)
    competing = patch(b, location, b"c" * 10, 0)
    first.join(30)

    assert competing.status_code == 416
    assert error_code(competing) == "BLOB_UPLOAD_INVALID"
    assert "another request is writing to this upload" in error_message(competing)
    assert results["first"].status_code == 202
    assert results["first"].headers["Range"] == f"0-{2 * MIB - 1}"


def test_token_from_one_node_works_on_another(clients: list[RegistryClient]) -> None:
    a, b, _ = clients
    token = a.repository_token(REPOSITORY)

    response = b.request("GET", f"/v2/{REPOSITORY}/tags/list", network="vpc", repository=REPOSITORY, token=token)

    assert response.status_code == 200


def test_node_with_other_key_names_the_cause(cluster: Cluster, clients: list[RegistryClient],
                                             tmp_path: Path) -> None:
    """A node started with its own signing key rejects the others' tokens with a 401 that names the cause."""
    env = {**cluster.nodes[0].extra_env, "CRPE_TOKEN_KEY_FILE": str(tmp_path / "other-key.pem")}
    stray = CrpeServer(tmp_path, extra_env=env).start()
    stray_client = RegistryClient(stray, clients[0].instance)
    try:
        token = clients[0].repository_token(REPOSITORY)
        response = stray_client.request("GET", f"/v2/{REPOSITORY}/tags/list", network="vpc", repository=REPOSITORY,
                                        token=token)
    finally:
        stray_client.close()
        stray.stop()

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
    assert "every node of a deployment must use the same token_key_file" in error_message(response)


def test_gc_during_pushes_on_all_nodes(cluster: Cluster, clients: list[RegistryClient]) -> None:
    """Collections with no grace period race pushes on three nodes; every push that succeeded pulls back whole."""
    repository = "team/race"
    doomed = clients[0].push_image(repository, "doomed", "deleted before collection")
    doomed_digest = sha256(doomed)
    doomed_layer = json.loads(doomed)["layers"][0]["digest"]
    deleted = clients[0].request("DELETE", f"/v2/{repository}/manifests/{doomed_digest}", repository=repository)
    assert deleted.status_code == 202
    time.sleep(1.1)  # Timestamps are whole seconds: a zero grace period keeps what changed this second.

    shared = data_of(MIB + 3, b"shared layer")
    stop = threading.Event()
    collections: list[dict] = []

    def collect_repeatedly() -> None:
        while not stop.is_set() and len(collections) < 100:
            result = cluster.nodes[2].cli("gc", "--grace-period", "0", "--output", "json")
            collections.append(json.loads(result.stdout))

    collector = threading.Thread(target=collect_repeatedly)
    collector.start()
    pushed: list[tuple[int, str]] = []
    try:
        for number in range(18):
            client = clients[number % 3]
            config, layer = data_of(200, f"config {number}".encode()), data_of(64 * 1024, f"{number}".encode())
            for blob in (shared, config, layer):
                client.push_blob(repository, blob)
            response = client.put_manifest(repository, f"v{number}", image_manifest(config, [shared, layer]))
            if response.status_code == 201:
                pushed.append((number, f"v{number}"))
            else:
                # A collection between upload and manifest may take the fresh links; the push fails cleanly.
                assert response.status_code == 400, response.text
                assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"
    finally:
        stop.set()
        collector.join(timeout=300)

    assert collections, "the collector never ran"
    assert sum(report["blobs"] for report in collections) >= 1
    assert pushed, "no push succeeded while collections ran"
    layer_key = f"{cluster.prefix}blobs/sha256/{doomed_layer[7:9]}/{doomed_layer[7:]}"
    assert layer_key not in cluster.object_keys("blobs")
    for number, tag in pushed:
        client = clients[(number + 1) % 3]  # Pull from another node than the one that pushed.
        manifest = client.request("GET", f"/v2/{repository}/manifests/{tag}", network="vpc", repository=repository)
        assert manifest.status_code == 200, tag
        for descriptor in [manifest.json()["config"], *manifest.json()["layers"]]:
            blob = client.request("GET", f"/v2/{repository}/blobs/{descriptor['digest']}", network="vpc",
                                  repository=repository)
            assert blob.status_code == 200, (tag, descriptor["digest"])
            assert sha256(blob.content) == descriptor["digest"]


def test_gc_removes_unrecorded_object(cluster: Cluster, clients: list[RegistryClient]) -> None:
    """An object under blobs/ with no database row, as a push that died before recording it leaves, goes."""
    data = data_of(5000, b"stray object")
    digest = sha256(data)
    key = f"{cluster.prefix}blobs/sha256/{digest[7:9]}/{digest[7:]}"
    cluster.rgw.client().put_object(Bucket=cluster.bucket, Key=key, Body=data)
    kept_manifest = clients[0].push_image(REPOSITORY, "kept", "beside a stray object")
    time.sleep(1.1)  # Timestamps are whole seconds: a zero grace period keeps what changed this second.

    dry_run = json.loads(cluster.nodes[1].cli("gc", "--grace-period", "0", "--dry-run", "--output", "json").stdout)
    listed_after_dry_run = key in cluster.object_keys("blobs")
    report = json.loads(cluster.nodes[1].cli("gc", "--grace-period", "0", "--output", "json").stdout)
    manifest = clients[2].request("GET", f"/v2/{REPOSITORY}/manifests/kept", network="vpc", repository=REPOSITORY,
                                  headers={"Accept": json.loads(kept_manifest)["mediaType"]})

    assert dry_run["blobs"] >= 1
    assert listed_after_dry_run is True
    assert report["blobs"] >= 1
    assert key not in cluster.object_keys("blobs")
    assert cluster.object_keys("trash") == []
    assert manifest.status_code == 200
    assert manifest.content == kept_manifest
