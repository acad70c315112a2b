"""Crash safety: SIGKILL a dedicated server mid-request, restart it on the same data directory, and check
that no partial blob or manifest became visible and that pushes then work again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry_client import RegistryClient, image_manifest, sha256
from server import CrpeServer

REPOSITORY = "team/crash"
CHUNK_BYTES = 256 * 1024


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent pid is the second field after the parenthesised command name.
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def descendant_pids(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in child_pids(pending.pop()):
            found.append(child)
            pending.append(child)
    return found


def kill_server(server: CrpeServer) -> None:
    """SIGKILL the server's main process and every worker, as a power cut or OOM kill would."""
    assert server.process is not None
    main_pid = server.process.pid
    workers = descendant_pids(main_pid)
    assert workers, "the server has no worker processes to kill"
    os.kill(main_pid, signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in workers):
        assert time.monotonic() < deadline, "worker processes survived SIGKILL"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
    except OSError:
        return "Z"


def restart(server: CrpeServer) -> None:
    # A new port avoids waiting for the killed listener's port to be released.
    server.port = 0
    server.start()


@pytest.fixture
def crash_server(make_server) -> CrpeServer:
    return make_server()


@pytest.fixture
def registry(crash_server: CrpeServer) -> Iterator[RegistryClient]:
    client = RegistryClient(crash_server, crash_server.create_instance("cn-hangzhou"))
    yield client
    client.close()


def reconnect(registry: RegistryClient) -> None:
    """Point the client at the restarted server; tokens stay valid because the signing key is on disk."""
    registry.http.close()
    registry.http = httpx.Client(base_url=registry.server.url, timeout=30)


def slow_body(data: bytes, sent_enough: threading.Event, threshold: int) -> Iterator[bytes]:
    """Yield `data` in chunks with pauses, signalling once `threshold` bytes are out, then stalling."""
    sent = 0
    for start in range(0, len(data), CHUNK_BYTES):
        chunk = data[start:start + CHUNK_BYTES]
        yield chunk
        sent += len(chunk)
        if sent >= threshold:
            sent_enough.set()
        time.sleep(0.05)


def send_in_background(registry: RegistryClient, method: str, path: str, body: Iterator[bytes],
                       headers: dict[str, str] | None = None) -> tuple[threading.Thread, list[object]]:
    """Run one request on a thread; the result list receives its response or transport error."""
    result: list[object] = []
    token = registry.repository_token(REPOSITORY)
    client = httpx.Client(base_url=registry.server.url, timeout=30)

    def run() -> None:
        try:
            result.append(client.request(method, path, content=body, headers={
                "Host": registry.public, "Authorization": f"Bearer {token}", **(headers or {})}))
        except httpx.HTTPError as error:
            result.append(error)
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def blob_data(size: int, seed: bytes) -> bytes:
    return hashlib.shake_256(seed).digest(size)


def test_kill_during_streamed_patch(crash_server: CrpeServer, registry: RegistryClient) -> None:
    data = blob_data(12 * 1024 * 1024, b"killed mid-upload")
    digest = sha256(data)
    first_chunk = 1024 * 1024
    location = registry.start_upload(REPOSITORY)
    response = registry.request("PATCH", location, content=data[:first_chunk], repository=REPOSITORY,
                                headers={"Content-Range": f"0-{first_chunk - 1}"})
    assert response.status_code == 202

    sent_enough = threading.Event()
    thread, result = send_in_background(registry, "PATCH", location,
                                        slow_body(data[first_chunk:], sent_enough, 3 * 1024 * 1024))
    assert sent_enough.wait(timeout=60), "the streamed PATCH did not get going"
    kill_server(crash_server)
    thread.join(timeout=60)
    restart(crash_server)
    reconnect(registry)

    head = registry.request("HEAD", f"/v2/{REPOSITORY}/blobs/{digest}", network="vpc", repository=REPOSITORY)
    status = registry.request("GET", location, repository=REPOSITORY)

    assert isinstance(result[0], httpx.TransportError)
    assert head.status_code == 404
    assert status.status_code == 204
    # Only the chunk acknowledged before the kill counts; the interrupted request is not half-applied.
    assert status.headers["Range"] == f"0-{first_chunk - 1}"

    resumed = registry.request("PATCH", location, content=data[first_chunk:], repository=REPOSITORY,
                               headers={"Content-Range": f"{first_chunk}-{len(data) - 1}"})
    finished = registry.request("PUT", location, params={"digest": digest}, repository=REPOSITORY)
    pulled = registry.request("GET", f"/v2/{REPOSITORY}/blobs/{digest}", network="vpc", repository=REPOSITORY)

    assert resumed.status_code == 202
    assert finished.status_code == 201
    assert pulled.content == data


def test_push_again_after_kill(crash_server: CrpeServer, registry: RegistryClient) -> None:
    data = blob_data(8 * 1024 * 1024, b"pushed again after a kill")
    digest = sha256(data)
    location = registry.start_upload(REPOSITORY)
    sent_enough = threading.Event()
    thread, result = send_in_background(registry, "PATCH", location,
                                        slow_body(data, sent_enough, 2 * 1024 * 1024))
    assert sent_enough.wait(timeout=60), "the streamed PATCH did not get going"
    kill_server(crash_server)
    thread.join(timeout=60)
    restart(crash_server)
    reconnect(registry)

    head_before = registry.request("HEAD", f"/v2/{REPOSITORY}/blobs/{digest}", network="vpc",
                                   repository=REPOSITORY)
    pushed = registry.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/", params={"digest": digest},
                              content=data, repository=REPOSITORY)
    pulled = registry.request("GET", f"/v2/{REPOSITORY}/blobs/{digest}", network="vpc", repository=REPOSITORY)
    storage = crash_server.root / "data" / "storage" / "cn-hangzhou" / "blobs"

    assert isinstance(result[0], httpx.TransportError)
    assert head_before.status_code == 404
    assert pushed.status_code == 201
    assert pulled.status_code == 200
    assert pulled.content == data
    assert len(list(storage.rglob(digest.split(":", 1)[1]))) == 1


def test_manifest_survives_kill(crash_server: CrpeServer, registry: RegistryClient) -> None:
    manifest = registry.push_image(REPOSITORY, "durable", "survives a kill")
    kill_server(crash_server)
    restart(crash_server)
    reconnect(registry)

    by_tag = registry.request("GET", f"/v2/{REPOSITORY}/manifests/durable", network="vpc", repository=REPOSITORY)
    by_digest = registry.request("GET", f"/v2/{REPOSITORY}/manifests/{sha256(manifest)}", network="vpc",
                                 repository=REPOSITORY)
    tags = registry.request("GET", f"/v2/{REPOSITORY}/tags/list", network="vpc", repository=REPOSITORY)

    assert by_tag.status_code == 200
    assert by_tag.content == manifest
    assert by_digest.content == manifest
    assert tags.json()["tags"] == ["durable"]


def test_manifest_put_interrupted(crash_server: CrpeServer, registry: RegistryClient) -> None:
    """A manifest whose upload is cut off by a kill leaves neither its tag nor its digest behind."""
    config = b'{"interrupted":true}'
    registry.push_blob(REPOSITORY, config)
    body = image_manifest(config, [], annotations={"padding": "p" * (2 * 1024 * 1024)})
    sent_enough = threading.Event()
    thread, result = send_in_background(
        registry, "PUT", f"/v2/{REPOSITORY}/manifests/interrupted", slow_body(body, sent_enough, 1024 * 1024),
        headers={"Content-Type": json.loads(body)["mediaType"]})
    assert sent_enough.wait(timeout=60), "the manifest PUT did not get going"
    kill_server(crash_server)
    thread.join(timeout=60)
    restart(crash_server)
    reconnect(registry)

    by_tag = registry.request("GET", f"/v2/{REPOSITORY}/manifests/interrupted", network="vpc",
                              repository=REPOSITORY)
    by_digest = registry.request("GET", f"/v2/{REPOSITORY}/manifests/{sha256(body)}", network="vpc",
                                 repository=REPOSITORY)
    retried = registry.put_manifest(REPOSITORY, "interrupted", body)

    assert isinstance(result[0], httpx.TransportError)
    assert by_tag.status_code == 404
    assert by_digest.status_code == 404
    assert retried.status_code == 201
