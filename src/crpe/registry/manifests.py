"""Parse and validate pushed manifests; no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from crpe.digests import parse_digest
from crpe.errors import ManifestInvalid

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
SUPPORTED_TYPES = IMAGE_TYPES + INDEX_TYPES
# RFC 6838 allows 127 characters for a media type's type and for its subtype; with the slash, 255.
MAX_MEDIA_TYPE_LENGTH = 255


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    blobs: list[Descriptor] = field(default_factory=list)  # config and layers a registry must hold
    children: list[Descriptor] = field(default_factory=list)  # manifests of an index
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Validate a manifest body against its Content-Type; raise MANIFEST_INVALID saying what is wrong."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestInvalid(f"manifest is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ManifestInvalid("manifest must be a JSON object")

    declared = document.get("mediaType")
    header = (content_type or "").split(";", 1)[0].strip() or None
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("manifest mediaType must be a string")
    if header in DOCKER_SCHEMA1 or declared in DOCKER_SCHEMA1:
        raise ManifestInvalid("Docker image manifest schema 1 is not supported; push schema 2 or OCI manifests "
                              "(skopeo copy --format v2s2 or --format oci)")
    if header and declared and header != declared:
        raise ManifestInvalid(f"Content-Type {header!r} does not match the manifest's mediaType {declared!r}")
    media_type = header or declared or _guess_media_type(document)
    if media_type not in SUPPORTED_TYPES:
        raise ManifestInvalid(f"manifest media type {media_type!r} is not supported; use one of "
                              f"{', '.join(SUPPORTED_TYPES)}")
    if document.get("schemaVersion") != 2:
        raise ManifestInvalid("manifest schemaVersion must be 2")

    subject = _descriptor(document["subject"], "subject") if document.get("subject") is not None else None
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("manifest artifactType must be a string")
    if artifact_type is not None and len(artifact_type) > MAX_MEDIA_TYPE_LENGTH:
        raise ManifestInvalid(f"manifest artifactType is {len(artifact_type)} characters long; a media type has at "
                              f"most {MAX_MEDIA_TYPE_LENGTH}")
    annotations = document.get("annotations")
    if annotations is not None and not (isinstance(annotations, dict)
                                        and all(isinstance(v, str) for v in annotations.values())):
        raise ManifestInvalid("manifest annotations must be a map of strings")

    if media_type in IMAGE_TYPES:
        if "config" not in document:
            raise ManifestInvalid("image manifest has no config descriptor")
        config = _descriptor(document["config"], "config")
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise ManifestInvalid("image manifest layers must be a list")
        layer_descriptors = [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers)]
        # Non-distributable layers (with urls) live elsewhere, so the registry need not hold them.
        blobs = [config] + [layer for layer in layer_descriptors if not layer.urls]
        return ParsedManifest(media_type, blobs=blobs, subject=subject,
                              artifact_type=artifact_type or config.media_type, annotations=annotations)

    children = document.get("manifests")
    if not isinstance(children, list):
        raise ManifestInvalid("image index manifests must be a list")
    return ParsedManifest(media_type, children=[_descriptor(c, f"manifests[{i}]") for i, c in enumerate(children)],
                          subject=subject, artifact_type=artifact_type, annotations=annotations)


def _guess_media_type(document: dict[str, Any]) -> str:
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"manifest {where} must be a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"manifest {where} has no mediaType")
    if len(media_type) > MAX_MEDIA_TYPE_LENGTH:
        raise ManifestInvalid(f"manifest {where} mediaType is {len(media_type)} characters long; a media type has "
                              f"at most {MAX_MEDIA_TYPE_LENGTH}")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"manifest {where} has no digest")
    try:
        parse_digest(digest)
    except Exception as error:
        raise ManifestInvalid(f"manifest {where} digest is invalid: {error}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"manifest {where} size must be a non-negative integer")
    urls = value.get("urls") or ()
    return Descriptor(media_type, digest, size, tuple(str(url) for url in urls))
