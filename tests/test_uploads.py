"""Blob upload sessions (monolithic, chunked, streamed), digests and cross-repository mounts, over HTTP."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from registry_client import RegistryClient, error_code, error_message, sha256, sha512
from server import CrpeServer

REPOSITORY = "team/uploads"
UPLOADS_PATH = f"/v2/{REPOSITORY}/blobs/uploads/"


@pytest.fixture(scope="module")
def registry(server: CrpeServer) -> Iterator[RegistryClient]:
    client = RegistryClient(server, server.create_instance("cn-hangzhou"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def other_registry(server: CrpeServer) -> Iterator[RegistryClient]:
    """A second instance of the same account in the same region."""
    client = RegistryClient(server, server.create_instance("cn-hangzhou"))
    yield client
    client.close()


def send(registry: RegistryClient, method: str, path: str, **kwargs: object) -> httpx.Response:
    return registry.request(method, path, repository=REPOSITORY, **kwargs)


def pull_blob(registry: RegistryClient, digest: str, repository: str = REPOSITORY) -> httpx.Response:
    return registry.request("GET", f"/v2/{repository}/blobs/{digest}", network="vpc", repository=repository)


def patch_chunk(registry: RegistryClient, location: str, data: bytes, start: int) -> httpx.Response:
    return send(
        registry,
        "PATCH",
        location,
        content=data,
        headers={"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{start + len(data) - 1}"},
    )


# Monolithic and two-step uploads.


def test_monolithic_upload(registry: RegistryClient) -> None:
    data = b"monolithic upload"
    digest = sha256(data)

    response = send(registry, "POST", UPLOADS_PATH, params={"digest": digest}, content=data)

    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{REPOSITORY}/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    assert pull_blob(registry, digest).content == data


def test_start_upload_headers(registry: RegistryClient) -> None:
    response = send(registry, "POST", UPLOADS_PATH)
    upload_id = response.headers["Docker-Upload-UUID"]

    assert response.status_code == 202
    assert response.headers["Location"] == f"/v2/{REPOSITORY}/blobs/uploads/{upload_id}"
    assert response.headers["Range"] == "0-0"
    assert response.headers["Content-Length"] == "0"


def test_post_then_put(registry: RegistryClient) -> None:
    data = b"uploaded in the PUT body"
    location = registry.start_upload(REPOSITORY)

    response = send(registry, "PUT", location, params={"digest": sha256(data)}, content=data)

    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{REPOSITORY}/blobs/{sha256(data)}"
    assert response.headers["Docker-Content-Digest"] == sha256(data)
    assert pull_blob(registry, sha256(data)).content == data


def test_empty_blob(registry: RegistryClient) -> None:
    digest = sha256(b"")

    response = send(registry, "POST", UPLOADS_PATH, params={"digest": digest}, content=b"")
    pulled = pull_blob(registry, digest)

    assert response.status_code == 201
    assert pulled.status_code == 200
    assert pulled.content == b""


def test_upload_existing_blob_again(registry: RegistryClient) -> None:
    data = b"pushed twice"
    first = send(registry, "POST", UPLOADS_PATH, params={"digest": sha256(data)}, content=data)

    second = send(registry, "POST", UPLOADS_PATH, params={"digest": sha256(data)}, content=data)

    assert first.status_code == 201
    assert second.status_code == 201
    assert pull_blob(registry, sha256(data)).content == data


# Chunked uploads.


def test_chunked_upload(registry: RegistryClient) -> None:
    chunks = [b"a" * 10, b"b" * 7, b"c" * 5]
    data = b"".join(chunks)
    location = registry.start_upload(REPOSITORY)
    offset = 0

    for chunk in chunks:
        response = patch_chunk(registry, location, chunk, offset)
        offset += len(chunk)

        assert response.status_code == 202
        assert response.headers["Range"] == f"0-{offset - 1}"
        assert response.headers["Location"] == location
        assert response.headers["Content-Length"] == "0"

    done = send(registry, "PUT", location, params={"digest": sha256(data)})

    assert done.status_code == 201
    assert done.headers["Docker-Content-Digest"] == sha256(data)
    assert pull_blob(registry, sha256(data)).content == data


def test_chunked_upload_last_chunk_in_put(registry: RegistryClient) -> None:
    data = b"first part|final part in the PUT"
    location = registry.start_upload(REPOSITORY)
    patch_chunk(registry, location, data[:11], 0)

    response = send(
        registry,
        "PUT",
        location,
        params={"digest": sha256(data)},
        content=data[11:],
        headers={"Content-Range": f"11-{len(data) - 1}"},
    )

    assert response.status_code == 201
    assert pull_blob(registry, sha256(data)).content == data


def test_chunk_out_of_order(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)
    patch_chunk(registry, location, b"0123456789", 0)

    response = patch_chunk(registry, location, b"later", 20)

    assert response.status_code == 416
    assert response.headers["Range"] == "0-9"
    assert response.headers["Location"] == location


def test_chunk_overlapping(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)
    patch_chunk(registry, location, b"0123456789", 0)

    response = patch_chunk(registry, location, b"again", 5)

    assert response.status_code == 416
    assert response.headers["Range"] == "0-9"


def test_rejected_chunk_changes_nothing(registry: RegistryClient) -> None:
    data = b"0123456789abcdef"
    location = registry.start_upload(REPOSITORY)
    patch_chunk(registry, location, data[:10], 0)
    patch_chunk(registry, location, b"xxxxx", 30)

    resumed = patch_chunk(registry, location, data[10:], 10)
    done = send(registry, "PUT", location, params={"digest": sha256(data)})

    assert resumed.status_code == 202
    assert done.status_code == 201
    assert pull_blob(registry, sha256(data)).content == data


def test_chunk_length_mismatch(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)

    response = send(registry, "PATCH", location, content=b"12345", headers={"Content-Range": "0-9"})

    assert response.status_code == 416


def test_chunk_invalid_content_range(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)

    response = send(registry, "PATCH", location, content=b"12345", headers={"Content-Range": "five bytes"})

    assert response.status_code == 400
    assert error_code(response) == "BLOB_UPLOAD_INVALID"


def test_streamed_patch(registry: RegistryClient) -> None:
    pieces = [bytes([index]) * 300_000 for index in range(8)]
    data = b"".join(pieces)
    location = registry.start_upload(REPOSITORY)

    response = send(registry, "PATCH", location, content=iter(pieces))
    done = send(registry, "PUT", location, params={"digest": sha256(data)})

    assert response.status_code == 202
    assert response.headers["Range"] == f"0-{len(data) - 1}"
    assert done.status_code == 201
    assert pull_blob(registry, sha256(data)).content == data


def test_two_streamed_patches(registry: RegistryClient) -> None:
    data = b"first stream;" * 1000 + b"second stream;" * 1000
    location = registry.start_upload(REPOSITORY)

    first = send(registry, "PATCH", location, content=iter([data[:13000]]))
    second = send(registry, "PATCH", location, content=iter([data[13000:]]))
    done = send(registry, "PUT", location, params={"digest": sha256(data)})

    assert first.headers["Range"] == "0-12999"
    assert second.headers["Range"] == f"0-{len(data) - 1}"
    assert done.status_code == 201


def test_large_blob_streamed(registry: RegistryClient) -> None:
    """A blob bigger than the server's 1 MiB write buffer crosses several flushes and keeps its hash."""
    data = hashlib.shake_256(b"large blob").digest(5 * 1024 * 1024 + 123)
    location = registry.start_upload(REPOSITORY)

    patched = send(
        registry, "PATCH", location, content=(data[i : i + 256 * 1024] for i in range(0, len(data), 256 * 1024))
    )
    done = send(registry, "PUT", location, params={"digest": sha256(data)})
    pulled = pull_blob(registry, sha256(data))

    assert patched.headers["Range"] == f"0-{len(data) - 1}"
    assert done.status_code == 201
    assert pulled.content == data


def test_concurrent_patch_rejected(registry: RegistryClient) -> None:
    """A second PATCH while another is still writing the same upload is refused, not interleaved."""
    first_part, second_part = b"1" * 4096, b"2" * 4096
    location = registry.start_upload(REPOSITORY)
    first_sent, release = threading.Event(), threading.Event()

    def stalled_body() -> Iterator[bytes]:
        yield first_part
        first_sent.set()
        release.wait(timeout=30)
        yield second_part

    results: list[httpx.Response] = []
    token = registry.repository_token(REPOSITORY)
    thread = threading.Thread(
        target=lambda: results.append(registry.request("PATCH", location, token=token, content=stalled_body())),
        daemon=True,
    )
    thread.start()
    assert first_sent.wait(timeout=30)

    # The competing chunk claims an offset that can never continue the upload, so it changes nothing even if
    # the server had not started the first PATCH yet. Retry until the server reports the upload busy.
    competing = None
    for _ in range(100):
        competing = patch_chunk(registry, location, b"3" * 4096, 1_000_000)
        if "another request is writing" in error_message(competing):
            break
        time.sleep(0.1)
    release.set()
    thread.join(timeout=30)
    done = send(registry, "PUT", location, params={"digest": sha256(first_part + second_part)})

    assert competing is not None
    assert competing.status_code == 416
    assert "another request is writing to this upload" in error_message(competing)
    assert results[0].status_code == 202
    assert results[0].headers["Range"] == "0-8191"
    assert done.status_code == 201


# Upload status and cancellation.


def test_upload_status(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)
    patch_chunk(registry, location, b"x" * 42, 0)

    response = send(registry, "GET", location)

    assert response.status_code == 204
    assert response.headers["Range"] == "0-41"
    assert response.headers["Location"] == location
    assert response.content == b""


def test_upload_status_empty(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)

    response = send(registry, "GET", location)

    assert response.status_code == 204
    assert response.headers["Range"] == "0-0"


def test_cancel_upload(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)
    patch_chunk(registry, location, b"to be cancelled", 0)

    cancelled = send(registry, "DELETE", location)
    status = send(registry, "GET", location)
    patch = patch_chunk(registry, location, b"more", 15)

    assert cancelled.status_code == 204
    assert status.status_code == 404
    assert error_code(status) == "BLOB_UPLOAD_UNKNOWN"
    assert patch.status_code == 404
    assert error_code(patch) == "BLOB_UPLOAD_UNKNOWN"


def test_unknown_upload(registry: RegistryClient) -> None:
    response = send(registry, "GET", f"{UPLOADS_PATH}{'0' * 32}")

    assert response.status_code == 404
    assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"


def test_finished_upload_is_gone(registry: RegistryClient) -> None:
    data = b"finished upload"
    location = registry.start_upload(REPOSITORY)
    send(registry, "PUT", location, params={"digest": sha256(data)}, content=data)

    response = send(registry, "GET", location)

    assert response.status_code == 404
    assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"


def test_upload_of_other_repository(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)
    upload_id = location.rsplit("/", 1)[1]

    response = registry.request("GET", f"/v2/team/elsewhere/blobs/uploads/{upload_id}", repository="team/elsewhere")

    assert response.status_code == 404
    assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"


def test_upload_of_other_instance(registry: RegistryClient, other_registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)
    other_registry.start_upload(REPOSITORY)

    response = other_registry.request("PATCH", location, content=b"intruding bytes", repository=REPOSITORY)

    assert response.status_code == 404
    assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"


# Digests.


def test_digest_mismatch(registry: RegistryClient) -> None:
    data = b"the real content"
    claimed = sha256(b"some other content")
    location = registry.start_upload(REPOSITORY)

    response = send(registry, "PUT", location, params={"digest": claimed}, content=data)

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    assert pull_blob(registry, claimed).status_code == 404
    assert pull_blob(registry, sha256(data)).status_code == 404


def test_digest_mismatch_discards_upload(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)
    send(registry, "PUT", location, params={"digest": sha256(b"other")}, content=b"content")

    response = send(registry, "GET", location)

    assert response.status_code == 404


def test_monolithic_digest_mismatch(registry: RegistryClient) -> None:
    claimed = sha256(b"claimed")

    response = send(registry, "POST", UPLOADS_PATH, params={"digest": claimed}, content=b"actual")

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    assert pull_blob(registry, claimed).status_code == 404


def test_put_without_digest(registry: RegistryClient) -> None:
    location = registry.start_upload(REPOSITORY)

    response = send(registry, "PUT", location, content=b"no digest given")

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


def test_put_without_digest_keeps_upload(registry: RegistryClient) -> None:
    data = b"kept after a PUT without digest"
    location = registry.start_upload(REPOSITORY)
    patch_chunk(registry, location, data, 0)
    send(registry, "PUT", location)

    done = send(registry, "PUT", location, params={"digest": sha256(data)})

    assert done.status_code == 201


@pytest.mark.parametrize(
    "digest",
    ["sha256:abc", "md5:0123456789abcdef0123456789abcdef", "sha256", "sha256:" + "A" * 64],
    ids=["short", "unsupported-algorithm", "no-hex", "upper-case-hex"],
)
def test_put_invalid_digest(registry: RegistryClient, digest: str) -> None:
    location = registry.start_upload(REPOSITORY)

    response = send(registry, "PUT", location, params={"digest": digest}, content=b"data")

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


def test_sha512_blob(registry: RegistryClient) -> None:
    data = b"a blob addressed by sha512"
    digest = sha512(data)

    response = send(registry, "POST", UPLOADS_PATH, params={"digest": digest}, content=data)
    pulled = pull_blob(registry, digest)

    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == digest
    assert pulled.status_code == 200
    assert pulled.content == data
    assert pulled.headers["Docker-Content-Digest"] == digest


def test_sha512_chunked(registry: RegistryClient) -> None:
    data = b"sha512 in two chunks"
    location = registry.start_upload(REPOSITORY)
    patch_chunk(registry, location, data[:6], 0)
    patch_chunk(registry, location, data[6:], 6)

    response = send(registry, "PUT", location, params={"digest": sha512(data)})

    assert response.status_code == 201
    assert pull_blob(registry, sha512(data)).content == data


def test_sha512_mismatch(registry: RegistryClient) -> None:
    response = send(registry, "POST", UPLOADS_PATH, params={"digest": sha512(b"claimed")}, content=b"actual")

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


# Cross-repository mounts.


@pytest.fixture(scope="module")
def mount_source(registry: RegistryClient) -> tuple[bytes, str]:
    data = b"a blob to mount into other repositories"
    return data, registry.push_blob("team/mount-source", data)


def test_mount_within_instance(registry: RegistryClient, mount_source: tuple[bytes, str]) -> None:
    data, digest = mount_source
    token = registry.token("repository:team/mount-target:pull,push", "repository:team/mount-source:pull")

    response = registry.request(
        "POST",
        "/v2/team/mount-target/blobs/uploads/",
        token=token,
        params={"mount": digest, "from": "team/mount-source"},
    )

    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/team/mount-target/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    assert pull_blob(registry, digest, "team/mount-target").content == data


def test_mount_without_source_pull(registry: RegistryClient, mount_source: tuple[bytes, str]) -> None:
    _, digest = mount_source
    token = registry.token("repository:team/mount-nopull:pull,push")

    response = registry.request(
        "POST",
        "/v2/team/mount-nopull/blobs/uploads/",
        token=token,
        params={"mount": digest, "from": "team/mount-source"},
    )

    assert response.status_code == 202
    assert response.headers["Location"].startswith("/v2/team/mount-nopull/blobs/uploads/")
    assert pull_blob(registry, digest, "team/mount-nopull").status_code == 404


def test_mount_missing_blob(registry: RegistryClient, mount_source: tuple[bytes, str]) -> None:
    token = registry.token("repository:team/mount-target:pull,push", "repository:team/mount-source:pull")

    response = registry.request(
        "POST",
        "/v2/team/mount-target/blobs/uploads/",
        token=token,
        params={"mount": sha256(b"not in the source"), "from": "team/mount-source"},
    )

    assert response.status_code == 202


def test_mount_without_from(registry: RegistryClient, mount_source: tuple[bytes, str]) -> None:
    response = registry.request(
        "POST",
        "/v2/team/mount-nofrom/blobs/uploads/",
        repository="team/mount-nofrom",
        params={"mount": mount_source[1]},
    )

    assert response.status_code == 202


def test_mount_from_other_instance(other_registry: RegistryClient, mount_source: tuple[bytes, str]) -> None:
    """A blob of another instance, even of the same account and region, is never mounted."""
    _, digest = mount_source
    token = other_registry.token("repository:team/mount-target:pull,push", "repository:team/mount-source:pull")

    response = other_registry.request(
        "POST",
        "/v2/team/mount-target/blobs/uploads/",
        token=token,
        params={"mount": digest, "from": "team/mount-source"},
    )
    pulled = other_registry.request(
        "GET", f"/v2/team/mount-target/blobs/{digest}", network="vpc", repository="team/mount-target"
    )

    assert response.status_code == 202
    assert response.headers["Location"].startswith("/v2/team/mount-target/blobs/uploads/")
    assert pulled.status_code == 404


def test_mount_session_usable(registry: RegistryClient, mount_source: tuple[bytes, str]) -> None:
    """The session returned by a refused mount takes an ordinary upload."""
    data = b"uploaded after a refused mount"
    token = registry.token("repository:team/mount-nopull:pull,push")
    location = registry.request(
        "POST",
        "/v2/team/mount-nopull/blobs/uploads/",
        token=token,
        params={"mount": mount_source[1], "from": "team/mount-source"},
    ).headers["Location"]

    response = registry.request("PUT", location, token=token, params={"digest": sha256(data)}, content=data)

    assert response.status_code == 201


def test_mount_invalid_digest(registry: RegistryClient, mount_source: tuple[bytes, str]) -> None:
    response = registry.request(
        "POST",
        "/v2/team/mount-target/blobs/uploads/",
        repository="team/mount-target",
        params={"mount": "sha256:nothex", "from": "team/mount-source"},
    )

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
