"""Online garbage collection (`crpe gc`) against a running server's data directory."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
from registry_client import RegistryClient, image_manifest, sha256
from server import CrpeServer

from crpe import gc
from crpe.metadata.store import MetadataStore
from crpe.storage import FilesystemBlobStore


@pytest.fixture
def gc_server(make_server) -> CrpeServer:  # type: ignore[no-untyped-def]
    return make_server()


@pytest.fixture
def registry(gc_server: CrpeServer) -> Iterator[RegistryClient]:
    client = RegistryClient(gc_server, gc_server.create_instance())
    yield client
    client.close()


def run_gc(server: CrpeServer, *args: str, settle: bool = True) -> dict:
    """Run `crpe gc`, by default after waiting past the current second.

    Timestamps are whole seconds, so even a zero grace period keeps what was touched in the starting second.
    """
    if settle:
        time.sleep(1.1)
    result = server.cli("gc", "--data-dir", str(server.root / "data"), "--output", "json", *args)
    return json.loads(result.stdout)


def blob_status(registry: RegistryClient, repository: str, digest: str) -> int:
    return registry.request("HEAD", f"/v2/{repository}/blobs/{digest}", network="vpc",
                            repository=repository).status_code


def pulls_back(registry: RegistryClient, repository: str, tag: str) -> bool:
    """Tell whether the manifest and every blob it references come back with their digests."""
    response = registry.request("GET", f"/v2/{repository}/manifests/{tag}", network="vpc", repository=repository)
    if response.status_code != 200:
        return False
    manifest = response.json()
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = registry.request("GET", f"/v2/{repository}/blobs/{descriptor['digest']}", network="vpc",
                                repository=repository)
        if blob.status_code != 200 or sha256(blob.content) != descriptor["digest"]:
            return False
    return True


def test_dry_run_reports_and_keeps(gc_server: CrpeServer, registry: RegistryClient) -> None:
    orphan = os.urandom(4096)
    digest = registry.push_blob("team/orphan", orphan)

    report = run_gc(gc_server, "--grace-period", "0", "--dry-run")

    assert report["dry_run"] is True
    assert report["links"] == 1
    assert report["blobs"] == 1
    assert report["blob_bytes"] == 4096
    assert blob_status(registry, "team/orphan", digest) == 200


def test_unreferenced_blob_removed(gc_server: CrpeServer, registry: RegistryClient) -> None:
    registry.push_image("team/kept", "v1", "kept")
    orphan = registry.push_blob("team/kept", os.urandom(1000))

    report = run_gc(gc_server, "--grace-period", "0")

    assert report["blobs"] == 1
    assert report["blob_bytes"] == 1000
    assert blob_status(registry, "team/kept", orphan) == 404
    assert not (gc_server.root / "data" / "storage" / "cn-hangzhou" / "blobs" / "sha256" / orphan[7:9]
                / orphan[7:]).exists()
    assert pulls_back(registry, "team/kept", "v1")


def test_grace_period_keeps_young(gc_server: CrpeServer, registry: RegistryClient) -> None:
    digest = registry.push_blob("team/young", os.urandom(100))

    report = run_gc(gc_server, "--grace-period", "3600")

    assert report["links"] == 0
    assert report["blobs"] == 0
    assert blob_status(registry, "team/young", digest) == 200


def test_blob_file_without_row_removed(gc_server: CrpeServer, registry: RegistryClient) -> None:
    """A blob file placed by a push that died before recording it goes once it is older than the grace period."""
    registry.push_image("team/kept", "v1", "kept beside a stray file")
    blobs = gc_server.root / "data" / "storage" / "cn-hangzhou" / "blobs" / "sha256"
    stray, young = os.urandom(700), os.urandom(300)
    paths = []
    for data in (stray, young):
        digest = sha256(data)
        path = blobs / digest[7:9] / digest[7:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    two_hours_ago = time.time() - 7200
    os.utime(paths[0], (two_hours_ago, two_hours_ago))

    dry_run = run_gc(gc_server, "--grace-period", "3600", "--dry-run")
    kept_by_dry_run = paths[0].exists()
    report = run_gc(gc_server, "--grace-period", "3600")

    assert dry_run["blobs"] == 1
    assert dry_run["blob_bytes"] == 700
    assert kept_by_dry_run is True
    assert paths[0].exists() is False
    assert report["blobs"] == 1
    assert report["blob_bytes"] == 700
    assert paths[1].read_bytes() == young
    assert pulls_back(registry, "team/kept", "v1")


def test_deleted_manifest_frees_unshared_layers(gc_server: CrpeServer, registry: RegistryClient) -> None:
    config_a, config_b, shared, unique = (os.urandom(64) for _ in range(4))
    for blob in (config_a, config_b, shared, unique):
        registry.push_blob("team/a", blob)
    for blob in (config_b, shared):
        registry.push_blob("team/b", blob)
    doomed = image_manifest(config_a, [shared, unique])
    assert registry.put_manifest("team/a", "v1", doomed).status_code == 201
    assert registry.put_manifest("team/b", "v1", image_manifest(config_b, [shared])).status_code == 201
    deleted = registry.request("DELETE", f"/v2/team/a/manifests/{sha256(doomed)}", repository="team/a")
    assert deleted.status_code == 202

    report = run_gc(gc_server, "--grace-period", "0")

    assert report["blobs"] == 2  # config_a and unique; shared is still linked by team/b.
    assert report["blob_bytes"] == 128
    assert blob_status(registry, "team/a", sha256(unique)) == 404
    assert blob_status(registry, "team/a", sha256(shared)) == 404
    assert pulls_back(registry, "team/b", "v1")


def test_untagged_manifest_collected_on_request(gc_server: CrpeServer, registry: RegistryClient) -> None:
    body = registry.push_image("team/untag", "v1", "untag")
    assert registry.request("DELETE", "/v2/team/untag/manifests/v1", repository="team/untag").status_code == 202

    kept = run_gc(gc_server, "--grace-period", "0")
    assert kept["untagged_manifests"] == 0
    assert registry.request("HEAD", f"/v2/team/untag/manifests/{sha256(body)}", network="vpc",
                            repository="team/untag").status_code == 200

    collected = run_gc(gc_server, "--grace-period", "0", "--delete-untagged")

    assert collected["untagged_manifests"] == 1
    assert collected["blobs"] == 2
    assert registry.request("HEAD", f"/v2/team/untag/manifests/{sha256(body)}", network="vpc",
                            repository="team/untag").status_code == 404


def test_abandoned_upload_removed(gc_server: CrpeServer, registry: RegistryClient) -> None:
    location = registry.start_upload("team/abandoned")
    chunk = registry.request("PATCH", location, content=b"x" * 2048, repository="team/abandoned")
    assert chunk.status_code == 202

    report = run_gc(gc_server, "--grace-period", "0")

    assert report["uploads"] == 1
    assert report["upload_bytes"] == 2048
    status = registry.request("GET", location, repository="team/abandoned")
    assert status.status_code == 404
    assert status.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_gc_during_pushes_loses_nothing(gc_server: CrpeServer, registry: RegistryClient) -> None:
    """With no grace period, collections race every push; each push that succeeded must pull back whole."""
    shared = os.urandom(32 * 1024)
    stop = threading.Event()
    collections: list[dict] = []

    def collect_repeatedly() -> None:
        while not stop.is_set() and len(collections) < 200:
            collections.append(run_gc(gc_server, "--grace-period", "0", settle=False))

    collector = threading.Thread(target=collect_repeatedly)
    collector.start()
    pushed: list[str] = []
    try:
        for number in range(24):
            tag = f"v{number}"
            config, layer = os.urandom(128), os.urandom(16 * 1024)
            # Layers go up as pushes send them: shared content first, then the image's own.
            for blob in (shared, config, layer):
                registry.push_blob("team/race", blob)
            response = registry.put_manifest("team/race", tag, image_manifest(config, [shared, layer]))
            if response.status_code == 201:
                pushed.append(tag)
            else:
                # A collection between upload and manifest may remove the fresh links. The push then fails
                # cleanly, as a client would see it, and nothing half-stored remains.
                assert response.status_code == 400, response.text
                assert response.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    finally:
        stop.set()
        collector.join(timeout=120)

    assert collections, "the collector never ran"
    assert pushed, "no push succeeded while collections ran"
    for tag in pushed:
        assert pulls_back(registry, "team/race", tag), tag


def test_interrupted_collection_trash_settled(gc_server: CrpeServer, registry: RegistryClient) -> None:
    """A collector that died after moving blobs to the trash: the next one restores recorded ones."""
    manifest = registry.push_image("team/kept", "v1", "trashed by a dead collector")
    layer = json.loads(manifest)["layers"][0]["digest"]
    data = gc_server.root / "data"
    blobs = FilesystemBlobStore(data / "storage" / "cn-hangzhou")
    unrecorded = os.urandom(512)
    unrecorded_path = blobs.blob_path(sha256(unrecorded))
    unrecorded_path.parent.mkdir(parents=True, exist_ok=True)
    unrecorded_path.write_bytes(unrecorded)
    recorded_trash = blobs.trash_blob(layer)
    unrecorded_trash = blobs.trash_blob(sha256(unrecorded))
    head_before = blob_status(registry, "team/kept", layer)
    time.sleep(1.1)  # Timestamps are whole seconds: even an age of 0 keeps what was trashed this second.

    store = MetadataStore(f"sqlite:///{data / 'crpe.sqlite3'}")
    try:
        report = gc.collect(store, {"cn-hangzhou": blobs}, grace_seconds=3600, dry_run=False, trash_age_seconds=0)
    finally:
        store.close()

    assert head_before == 200  # HEAD reads only the database row, which still records the trashed blob.
    assert report.blobs == 0
    assert os.path.exists(recorded_trash) is False
    assert os.path.exists(unrecorded_trash) is False
    assert list(blobs.trash_leftovers()) == []
    assert unrecorded_path.exists() is False
    assert pulls_back(registry, "team/kept", "v1")
