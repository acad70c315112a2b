"""Write OCI image layouts with random, incompressible layers for the benchmark.

Each layer is a valid tar archive holding one file of random bytes, wrapped in a gzip
stream of stored (level 0) deflate blocks. The media type is therefore the usual
`tar+gzip`, skopeo detects the layer as already compressed and copies it unchanged, and
neither side spends CPU time on compression.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

CHUNK = 4 << 20
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int

    def descriptor(self, media_type: str) -> dict:
        return {"mediaType": media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """One image in an OCI layout directory, referenced by `tag`."""

    layout: Path
    tag: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def reference(self) -> str:
        """Return the skopeo `oci:` transport reference of the image."""
        return f"oci:{self.layout}:{self.tag}"

    def blob_path(self, blob: Blob) -> Path:
        return self.layout / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")


def _write_blob_bytes(layout: Path, data: bytes) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return Blob(f"sha256:{digest}", len(data))


def _tar_header(payload_size: int) -> bytes:
    info = tarfile.TarInfo("payload.bin")
    info.size = payload_size
    info.mode = 0o644
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _tar_trailer(payload_size: int) -> bytes:
    """Return the padding after the payload plus the two zero end blocks, up to a full record."""
    padding = -payload_size % TAR_BLOCK
    archive_size = TAR_BLOCK + payload_size + padding + 2 * TAR_BLOCK
    return bytes(padding + 2 * TAR_BLOCK + (-archive_size % TAR_RECORD))


def write_random_layer(layout: Path, payload_size: int) -> tuple[Blob, str]:
    """Write one layer with `payload_size` random bytes; return its blob and its diff ID."""
    blobs = layout / "blobs" / "sha256"
    partial = blobs / f".partial-{os.getpid()}-{os.urandom(6).hex()}"
    compressed_hash = hashlib.sha256()
    tar_hash = hashlib.sha256()
    gzip = zlib.compressobj(0, zlib.DEFLATED, 31)
    size = 0

    with partial.open("wb") as out:

        def emit(tar_bytes: bytes) -> None:
            nonlocal size
            tar_hash.update(tar_bytes)
            compressed = gzip.compress(tar_bytes)
            compressed_hash.update(compressed)
            out.write(compressed)
            size += len(compressed)

        emit(_tar_header(payload_size))
        remaining = payload_size
        while remaining:
            chunk = os.urandom(min(CHUNK, remaining))
            emit(chunk)
            remaining -= len(chunk)
        emit(_tar_trailer(payload_size))

        tail = gzip.flush()
        compressed_hash.update(tail)
        out.write(tail)
        size += len(tail)

    digest = compressed_hash.hexdigest()
    partial.rename(blobs / digest)
    return Blob(f"sha256:{digest}", size), f"sha256:{tar_hash.hexdigest()}"


def write_image(layout: Path, layer_sizes: list[int], tag: str = "latest") -> Image:
    """Create an OCI layout at `layout` with one single-platform image of random layers.

    `layer_sizes` are the payload sizes in bytes. Each layer blob is a little larger: tar
    adds a header and pads to a 10 KiB record, and gzip adds 5 bytes per 64 KiB block.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    layers: list[Blob] = []
    diff_ids: list[str] = []
    for payload_size in layer_sizes:
        blob, diff_id = write_random_layer(layout, payload_size)
        layers.append(blob)
        diff_ids.append(diff_id)

    config = _write_blob_bytes(
        layout,
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            },
            separators=(",", ":"),
        ).encode(),
    )
    manifest = _write_blob_bytes(
        layout,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(OCI_CONFIG),
                "layers": [layer.descriptor(OCI_LAYER_GZIP) for layer in layers],
            },
            separators=(",", ":"),
        ).encode(),
    )

    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                **manifest.descriptor(OCI_MANIFEST),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return Image(layout, tag, manifest, config, tuple(layers))
