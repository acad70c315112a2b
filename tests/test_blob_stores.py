"""One contract, run against every blob store: the local filesystem and S3 on a real Ceph RADOS Gateway.

Every upload is reopened from its saved state between requests, as another node of a deployment would.
"""

from __future__ import annotations

import hashlib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from rgw import RgwServer

from crpe.settings import Region, Settings, StorageSettings
from crpe.storage import BlobStore, StorageError, open_blob_store
from crpe.storage.s3 import PART_BYTES

MIB = 1024 * 1024
BUCKET = "blob-store-suite"


@pytest.fixture(scope="module")
def bucket(request: pytest.FixtureRequest) -> str:
    rgw: RgwServer = request.getfixturevalue("rgw_server")
    return rgw.create_bucket(BUCKET)


def s3_settings(rgw: RgwServer, bucket: str, **extra: object) -> StorageSettings:
    return StorageSettings(type="s3", bucket=bucket, prefix=f"suite-{uuid.uuid4().hex[:12]}/", endpoint=rgw.endpoint,
                           access_key=rgw.access_key, secret_key=rgw.secret_key, **extra)


def open_store(tmp_path: Path, storage: StorageSettings) -> BlobStore:
    settings = Settings(data_dir=tmp_path)
    return open_blob_store(settings, Region("cn-hangzhou", "Hangzhou", (), storage))


@pytest.fixture(params=["filesystem", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        yield open_store(tmp_path, StorageSettings())
    else:
        rgw = request.getfixturevalue("rgw_server")
        yield open_store(tmp_path, s3_settings(rgw, request.getfixturevalue("bucket")))


def data_of(size: int, seed: bytes) -> bytes:
    return hashlib.shake_256(seed).digest(size)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_all(blobs: BlobStore, digest: str, start: int, end: int) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in blobs.read_range(digest, start, end)])

    return anyio.run(collect)


def push_in_requests(blobs: BlobStore, upload_id: str, chunks: list[bytes]) -> tuple[int, bytes | None]:
    """Write each chunk in its own request, reopening the upload from the saved state every time."""
    size, state = 0, None
    for chunk in chunks:
        writer = blobs.open_upload(upload_id, size, state)
        writer.write(chunk)
        state = writer.commit()
        writer.release()
        size = writer.size
    return size, state


def store_blob(blobs: BlobStore, upload_id: str, data: bytes) -> str:
    """Push `data` in one request, as a monolithic upload does, and return its digest."""
    digest = digest_of(data)
    writer = blobs.open_upload(upload_id, 0, None)
    writer.write(data)
    writer.seal()
    writer.place(digest)
    writer.discard()
    return digest


def leftover_ids(blobs: BlobStore) -> set[str]:
    return {upload_id for upload_id, _, _ in blobs.upload_leftovers()}


def test_small_blob_in_one_request(blobs: BlobStore) -> None:
    data = data_of(3000, b"small")
    digest = digest_of(data)

    writer = blobs.open_upload("u-small", 0, None)
    writer.write(data)
    writer.seal()
    writer.place(digest)
    writer.discard()

    assert writer.size == 3000
    assert blobs.blob_exists(digest)
    assert read_all(blobs, digest, 0, 2999) == data
    assert read_all(blobs, digest, 100, 199) == data[100:200]
    assert "u-small" not in leftover_ids(blobs)


def test_chunked_upload_across_reopens(blobs: BlobStore) -> None:
    # Uneven chunks that cross the multipart part size twice and leave a tail each time.
    sizes = [3 * MIB, 5 * MIB + 17, 1, PART_BYTES + 123, 2 * MIB]
    chunks = [data_of(size, f"chunk {index}".encode()) for index, size in enumerate(sizes)]
    data = b"".join(chunks)
    digest = digest_of(data)

    size, state = push_in_requests(blobs, "u-chunked", chunks)
    writer = blobs.open_upload("u-chunked", size, state)
    writer.seal()
    sha512 = writer.hash("sha512")
    writer.place(digest)
    writer.discard()

    assert size == len(data)
    assert sha512 == "sha512:" + hashlib.sha512(data).hexdigest()
    assert read_all(blobs, digest, 0, len(data) - 1) == data
    assert read_all(blobs, digest, PART_BYTES - 5, PART_BYTES + 4) == data[PART_BYTES - 5:PART_BYTES + 5]
    assert "u-chunked" not in leftover_ids(blobs)


def test_uncommitted_request_leaves_no_bytes(blobs: BlobStore) -> None:
    first = data_of(2 * MIB, b"first")
    lost = data_of(PART_BYTES + MIB, b"lost")
    second = data_of(MIB, b"second")
    size, state = push_in_requests(blobs, "u-failed", [first])

    failed = blobs.open_upload("u-failed", size, state)
    failed.write(lost)  # The request dies here: no commit, and its state is never saved.
    resumed = blobs.open_upload("u-failed", size, state)
    resumed.write(second)
    final_state = resumed.commit()
    resumed.release()
    writer = blobs.open_upload("u-failed", resumed.size, final_state)
    writer.seal()
    digest = digest_of(first + second)
    writer.place(digest)

    assert resumed.size == len(first) + len(second)
    assert read_all(blobs, digest, 0, resumed.size - 1) == first + second


def test_seal_again_after_crash(blobs: BlobStore) -> None:
    data = data_of(PART_BYTES + 3 * MIB, b"sealed twice")
    size, state = push_in_requests(blobs, "u-sealed", [data])

    blobs.open_upload("u-sealed", size, state).seal()  # The request dies before recording the blob.
    retry = blobs.open_upload("u-sealed", size, state)
    retry.seal()
    retry.place(digest_of(data))

    assert read_all(blobs, digest_of(data), 0, size - 1) == data


def test_place_keeps_existing_blob(blobs: BlobStore) -> None:
    data = data_of(MIB, b"twice")
    digest = digest_of(data)

    for upload_id in ("u-first", "u-second"):
        writer = blobs.open_upload(upload_id, 0, None)
        writer.write(data)
        writer.seal()
        writer.place(digest)
        writer.place(digest)
        writer.discard()

    assert read_all(blobs, digest, 0, MIB - 1) == data
    assert leftover_ids(blobs) & {"u-first", "u-second"} == set()


def test_delete_upload_data_without_state(blobs: BlobStore) -> None:
    chunks = [data_of(PART_BYTES + MIB, b"abandoned"), data_of(MIB, b"tail")]
    push_in_requests(blobs, "u-abandoned", chunks)
    orphan = blobs.open_upload("u-abandoned", 0, None)
    orphan.write(data_of(PART_BYTES, b"never recorded"))  # Starts a second multipart upload, never committed.

    before = leftover_ids(blobs)
    blobs.delete_upload_data("u-abandoned")
    blobs.delete_upload_data("u-never-existed")

    assert "u-abandoned" in before
    assert "u-abandoned" not in leftover_ids(blobs)


def test_leftovers_report_size_and_time(blobs: BlobStore) -> None:
    size, _ = push_in_requests(blobs, "u-listed", [data_of(MIB + 5, b"listed")])

    listed = {upload_id: (changed, stored) for upload_id, changed, stored in blobs.upload_leftovers()}

    assert listed["u-listed"][1] == size
    assert listed["u-listed"][0] > 1_700_000_000


def test_trash_restore_and_purge(blobs: BlobStore) -> None:
    data = data_of(2 * MIB, b"trash")
    digest = store_blob(blobs, "u-trash", data)

    trash = blobs.trash_blob(digest)
    leftovers = list(blobs.trash_leftovers())
    exists_while_trashed = blobs.blob_exists(digest)
    blobs.restore_blob(trash, digest)
    restored = read_all(blobs, digest, 0, len(data) - 1)
    second_trash = blobs.trash_blob(digest)
    blobs.purge_trash(second_trash)

    assert trash is not None
    assert [(handle, digest_in_trash) for handle, digest_in_trash, _ in leftovers] == [(trash, digest)]
    assert exists_while_trashed is False
    assert restored == data
    assert blobs.blob_exists(digest) is False
    assert blobs.trash_blob(digest) is None


def test_empty_blob(blobs: BlobStore) -> None:
    digest = digest_of(b"")

    writer = blobs.open_upload("u-empty", 0, None)
    writer.seal()
    hashed = writer.hash("sha256")
    writer.place(digest)
    writer.discard()

    assert hashed == digest
    assert blobs.blob_exists(digest)
    assert read_all(blobs, digest, 0, -1) == b""


def test_filesystem_sends_local_file(tmp_path: Path) -> None:
    blobs = open_store(tmp_path, StorageSettings())
    data = b"local"
    store_blob(blobs, "u-local", data)

    assert Path(blobs.local_path(digest_of(data))).read_bytes() == data
    assert blobs.redirect_url(digest_of(data)) is None


def test_s3_redirect_url_serves_blob(rgw_server: RgwServer, bucket: str, tmp_path: Path) -> None:
    blobs = open_store(tmp_path, s3_settings(rgw_server, bucket, redirect=True, redirect_seconds=60))
    data = data_of(MIB, b"presigned")
    digest = store_blob(blobs, "u-presigned", data)

    url = blobs.redirect_url(digest)
    with urllib.request.urlopen(url, timeout=30) as response:
        downloaded = response.read()

    assert url.startswith(rgw_server.endpoint + f"/{bucket}/")
    assert "X-Amz-Signature=" in url
    assert "X-Amz-Expires=60" in url
    assert blobs.local_path(digest) is None
    assert downloaded == data


def test_s3_missing_bucket_fails_check(rgw_server: RgwServer, tmp_path: Path) -> None:
    blobs = open_store(tmp_path, s3_settings(rgw_server, "no-such-bucket"))

    with pytest.raises(StorageError) as raised:
        blobs.check()

    assert "s3://no-such-bucket/" in str(raised.value)
    assert "Fix: create the bucket no-such-bucket, or fix the bucket setting" in str(raised.value)


def test_s3_wrong_secret_fails_check(rgw_server: RgwServer, bucket: str, tmp_path: Path) -> None:
    settings = s3_settings(rgw_server, bucket)
    blobs = open_store(tmp_path, StorageSettings(**{**settings.__dict__, "secret_key": "wrong-secret"}))

    with pytest.raises(StorageError) as raised:
        blobs.check()

    assert "Fix: check access_key and secret_key" in str(raised.value)


def test_s3_size_mismatch_is_reported(rgw_server: RgwServer, bucket: str, tmp_path: Path) -> None:
    blobs = open_store(tmp_path, s3_settings(rgw_server, bucket))
    size, state = push_in_requests(blobs, "u-mismatch", [data_of(MIB, b"mismatch")])

    with pytest.raises(StorageError) as raised:
        blobs.open_upload("u-mismatch", size + 1, state)

    assert f"contains {size} bytes but its database record has {size + 1}" in str(raised.value)


def test_list_blobs_reports_placed(blobs: BlobStore) -> None:
    digest = store_blob(blobs, "u-list", data_of(4321, b"listed blob"))

    listed = {found: (changed, size) for found, changed, size in blobs.list_blobs()}

    assert listed[digest][1] == 4321
    assert listed[digest][0] > 1_700_000_000
    assert "u-list" not in {found.split(":", 1)[-1] for found in listed}
