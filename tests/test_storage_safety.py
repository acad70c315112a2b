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
from server import CrpeServer, Instance

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
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def restart(server: CrpeServer) -> None:
    # A new port avoids waiting for the killed listener's port to be released.
    server.port = 0
    server.start()


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrpeServer]:
    """A dedicated server that the tests of this module kill and restart on its data directory."""
    server = CrpeServer(tmp_path_factory.mktemp("crash"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def instance(crash_server: CrpeServer) -> Instance:
    return crash_server.create_instance("cn-hangzhou")


@pytest.fixture
def registry(crash_server: CrpeServer, instance: Instance) -> Iterator[RegistryClient]:
    """A client of the crash server, restarted first if an earlier test left it down."""
    if crash_server.process is None or crash_server.process.poll() is not None:
        restart(crash_server)
    client = RegistryClient(crash_server, instance)
    yield client
    client.close()


def reconnect(registry: RegistryClient) -> None:
    """Point the client at the restarted server. Tokens stay valid because the signing key is on disk."""
    registry.http.close()
    registry.http = httpx.Client(base_url=registry.server.url, timeout=30)


def stalling_body(
    data: bytes, threshold: int, sent_enough: threading.Event, resume: threading.Event
) -> Iterator[bytes]:
    """Yield `data` in chunks, stopping after `threshold` bytes until `resume` is set (at most 30 s)."""
    sent = 0
    for start in range(0, len(data), CHUNK_BYTES):
        chunk = data[start : start + CHUNK_BYTES]
        yield chunk
        sent += len(chunk)
        if sent >= threshold and not sent_enough.is_set():
            sent_enough.set()
            resume.wait(timeout=30)


def send_in_background(
    registry: RegistryClient,
    repository: str,
    method: str,
    path: str,
    body: Iterator[bytes],
    headers: dict[str, str] | None = None,
) -> tuple[threading.Thread, list[object]]:
    """Start one request on a thread, which appends its response or transport error to the returned list."""
    result: list[object] = []
    token = registry.repository_token(repository)
    client = httpx.Client(base_url=registry.server.url, timeout=30)

    def run() -> None:
        try:
            result.append(
                client.request(
                    method,
                    path,
                    content=body,
                    headers={"Host": registry.public, "Authorization": f"Bearer {token}", **(headers or {})},
                )
            )
        except httpx.HTTPError as error:
            result.append(error)
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def kill_mid_request(
    registry: RegistryClient,
    repository: str,
    method: str,
    path: str,
    data: bytes,
    threshold: int,
    headers: dict[str, str] | None = None,
) -> object:
    """Send `data`, SIGKILL the server once `threshold` bytes are out and restart it.

    Return the response or transport error of the interrupted request.
    """
    sent_enough, resume = threading.Event(), threading.Event()
    thread, result = send_in_background(
        registry, repository, method, path, stalling_body(data, threshold, sent_enough, resume), headers
    )
    assert sent_enough.wait(timeout=60), f"the {method} request did not get going"
    time.sleep(0.5)  # Gives the server time to write what it has received so far.
    kill_server(registry.server)
    resume.set()
    thread.join(timeout=60)
    restart(registry.server)
    reconnect(registry)
    return result[0]


def blob_data(size: int, seed: bytes) -> bytes:
    return hashlib.shake_256(seed).digest(size)


def test_kill_during_streamed_patch(registry: RegistryClient) -> None:
    repository = "team/crash-patch"
    data = blob_data(12 * 1024 * 1024, b"killed mid-upload")
    digest = sha256(data)
    first_chunk = 1024 * 1024
    location = registry.start_upload(repository)
    response = registry.request(
        "PATCH",
        location,
        content=data[:first_chunk],
        repository=repository,
        headers={"Content-Range": f"0-{first_chunk - 1}"},
    )
    assert response.status_code == 202

    outcome = kill_mid_request(registry, repository, "PATCH", location, data[first_chunk:], 4 * 1024 * 1024)
    head = registry.request("HEAD", f"/v2/{repository}/blobs/{digest}", network="vpc", repository=repository)
    status = registry.request("GET", location, repository=repository)

    assert isinstance(outcome, httpx.TransportError)
    assert head.status_code == 404
    assert status.status_code == 204
    # Only the chunk acknowledged before the kill counts, so the interrupted request left no partial state.
    assert status.headers["Range"] == f"0-{first_chunk - 1}"

    resumed = registry.request(
        "PATCH",
        location,
        content=data[first_chunk:],
        repository=repository,
        headers={"Content-Range": f"{first_chunk}-{len(data) - 1}"},
    )
    finished = registry.request("PUT", location, params={"digest": digest}, repository=repository)
    pulled = registry.request("GET", f"/v2/{repository}/blobs/{digest}", network="vpc", repository=repository)

    assert resumed.status_code == 202
    assert finished.status_code == 201
    assert pulled.content == data


def test_push_again_after_kill(crash_server: CrpeServer, registry: RegistryClient) -> None:
    repository = "team/crash-again"
    data = blob_data(8 * 1024 * 1024, b"pushed again after a kill")
    digest = sha256(data)
    location = registry.start_upload(repository)

    outcome = kill_mid_request(registry, repository, "PATCH", location, data, 3 * 1024 * 1024)
    head_before = registry.request("HEAD", f"/v2/{repository}/blobs/{digest}", network="vpc", repository=repository)
    pushed = registry.request(
        "POST", f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=data, repository=repository
    )
    pulled = registry.request("GET", f"/v2/{repository}/blobs/{digest}", network="vpc", repository=repository)
    storage = crash_server.root / "data" / "storage" / "cn-hangzhou" / "blobs"

    assert isinstance(outcome, httpx.TransportError)
    assert head_before.status_code == 404
    assert pushed.status_code == 201
    assert pulled.status_code == 200
    assert pulled.content == data
    assert len(list(storage.rglob(digest.split(":", 1)[1]))) == 1


def test_manifest_survives_kill(registry: RegistryClient) -> None:
    repository = "team/crash-manifest"
    manifest = registry.push_image(repository, "durable", "survives a kill")
    kill_server(registry.server)
    restart(registry.server)
    reconnect(registry)

    by_tag = registry.request("GET", f"/v2/{repository}/manifests/durable", network="vpc", repository=repository)
    by_digest = registry.request(
        "GET", f"/v2/{repository}/manifests/{sha256(manifest)}", network="vpc", repository=repository
    )
    tags = registry.request("GET", f"/v2/{repository}/tags/list", network="vpc", repository=repository)

    assert by_tag.status_code == 200
    assert by_tag.content == manifest
    assert by_digest.content == manifest
    assert tags.json()["tags"] == ["durable"]


def test_manifest_put_interrupted(registry: RegistryClient) -> None:
    """A manifest whose upload is cut off by a kill leaves neither its tag nor its digest behind."""
    repository = "team/crash-interrupted"
    config = b'{"interrupted":true}'
    registry.push_blob(repository, config)
    body = image_manifest(config, [], annotations={"padding": "p" * (2 * 1024 * 1024)})

    outcome = kill_mid_request(
        registry,
        repository,
        "PUT",
        f"/v2/{repository}/manifests/interrupted",
        body,
        1024 * 1024,
        headers={"Content-Type": json.loads(body)["mediaType"]},
    )
    by_tag = registry.request("GET", f"/v2/{repository}/manifests/interrupted", network="vpc", repository=repository)
    by_digest = registry.request(
        "GET", f"/v2/{repository}/manifests/{sha256(body)}", network="vpc", repository=repository
    )
    retried = registry.put_manifest(repository, "interrupted", body)

    assert isinstance(outcome, httpx.TransportError)
    assert by_tag.status_code == 404
    assert by_digest.status_code == 404
    assert retried.status_code == 201
