"""Push artifacts and referrers with the oras Python package and pull them back through the VPC endpoint.

oras resolves host names through requests in this process, so `resolve_only` maps the instance's names
to 127.0.0.1 inside socket.getaddrinfo and rejects every other name: nothing reaches the system resolver.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import oras.oci
import oras.provider
import pytest
from e2e_support import (
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryHTTP,
    registry_error,
    require_tools,
    resolve_only,
    sha256_digest,
)
from image_build import E2EImage
from server import CrpeServer, Instance

pytestmark = [pytest.mark.e2e, *require_tools("umoci", "mmdebstrap")]

SBOM_MEDIA_TYPE = "application/vnd.crpe.test.sbom.v1+json"
SBOM_CONFIG_MEDIA_TYPE = "application/vnd.crpe.test.sbom.config.v1+json"
SIGNATURE_ARTIFACT_TYPE = "application/vnd.crpe.test.signature.v1"
SIGNATURE_MEDIA_TYPE = "application/vnd.crpe.test.signature.v1+octet-stream"
TITLE = "org.opencontainers.image.title"
# Small chunks make oras send each file in several PATCH requests with Content-Range headers.
CHUNK_SIZE = 64 * 1024


@pytest.fixture
def oras_names(instance: Instance, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Resolve only the instance's names, and keep oras away from the user's Docker credentials."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    with resolve_only({instance.public: "127.0.0.1", instance.vpc: "127.0.0.1"}):
        yield


def logged_in_registry(server: CrpeServer, instance: Instance, host_name: str,
                       tmp_path: Path) -> oras.provider.Registry:
    """Return an oras client for one endpoint, logged in with the instance's credentials.

    Each endpoint gets its own client because oras 0.2 keeps one Bearer token per client.
    """
    registry = oras.provider.Registry(hostname=server.host(host_name), insecure=True)
    registry.login(instance.username, instance.password, hostname=server.host(host_name),
                   config_path=str(tmp_path / f"docker-config-{host_name}.json"))
    return registry


def write_sbom(path: Path, image: E2EImage) -> bytes:
    """Write an SBOM-like JSON document of a few hundred kilobytes that lists the image's layers."""
    document = {
        "spdxVersion": "SPDX-2.3",
        "name": "crpe-e2e",
        "layers": image.image.manifest["layers"],
        "files": [{"name": f"/opt/crpe-e2e/file-{number:05}", "sha256": sha256_digest(str(number).encode())}
                  for number in range(3000)],
    }
    content = json.dumps(document, indent=1).encode()
    path.write_bytes(content)
    return content


def test_artifact_push_public_pull_vpc(server: CrpeServer, e2e_image: E2EImage, instance: Instance,
                                       oras_names: None, tmp_path: Path) -> None:
    sbom = tmp_path / "sbom.json"
    sbom_bytes = write_sbom(sbom, e2e_image)
    config = tmp_path / "sbom-config.json"
    config.write_bytes(b'{"generator": "crpe e2e"}')
    public = logged_in_registry(server, instance, instance.public, tmp_path)

    response = public.push(target=f"{server.host(instance.public)}/team/artifacts:sbom",
                           files=[f"{sbom}:{SBOM_MEDIA_TYPE}"],
                           manifest_config=f"{config}:{SBOM_CONFIG_MEDIA_TYPE}",
                           manifest_annotations={"org.opencontainers.image.description": "crpe e2e SBOM"},
                           disable_path_validation=True, do_chunked=True, chunk_size=CHUNK_SIZE, quiet=True)

    assert response.status_code == 201, response.text
    manifest_bytes = response.request.body
    digest = sha256_digest(manifest_bytes)
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["Location"].endswith(f"/v2/team/artifacts/manifests/{digest}")
    manifest = json.loads(manifest_bytes)
    assert manifest["config"] == {"mediaType": SBOM_CONFIG_MEDIA_TYPE, "size": config.stat().st_size,
                                  "digest": sha256_digest(config.read_bytes())}
    assert manifest["layers"] == [{"mediaType": SBOM_MEDIA_TYPE, "size": len(sbom_bytes),
                                   "digest": sha256_digest(sbom_bytes), "annotations": {TITLE: "sbom.json"}}]

    vpc = logged_in_registry(server, instance, instance.vpc, tmp_path)
    vpc_target = f"{server.host(instance.vpc)}/team/artifacts:sbom"
    pulled = vpc.pull(target=vpc_target, outdir=str(tmp_path / "pulled"))
    assert pulled == [str(tmp_path / "pulled" / "sbom.json")]
    assert Path(pulled[0]).read_bytes() == sbom_bytes

    fetched = vpc.do_request(f"http://{server.host(instance.vpc)}/v2/team/artifacts/manifests/sbom", "GET",
                             headers={"Accept": OCI_MANIFEST})
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["Docker-Content-Digest"] == digest
    assert fetched.headers["Content-Type"] == OCI_MANIFEST
    assert fetched.content == manifest_bytes
    assert vpc.get_manifest(vpc_target) == manifest

    config_blob = vpc.get_blob(vpc_target, manifest["config"]["digest"])
    assert config_blob.status_code == 200
    assert config_blob.content == config.read_bytes()


def test_artifact_pull_through_public_denied(server: CrpeServer, e2e_image: E2EImage, instance: Instance,
                                             oras_names: None, tmp_path: Path) -> None:
    sbom = tmp_path / "sbom.json"
    write_sbom(sbom, e2e_image)
    public = logged_in_registry(server, instance, instance.public, tmp_path)
    target = f"{server.host(instance.public)}/team/artifacts:sbom"
    response = public.push(target=target, files=[f"{sbom}:{SBOM_MEDIA_TYPE}"], disable_path_validation=True,
                           quiet=True)
    assert response.status_code == 201, response.text

    # oras 0.2.43 retries a 403 without a WWW-Authenticate header 5 times with sleeps of 3 to 83 s,
    # about two minutes in total, so the denial is checked with a plain HTTP client.
    with RegistryHTTP(instance.public, server.port, instance.username, instance.password) as http:
        denied = http.get_manifest("team/artifacts", "sbom")
    assert denied.status_code == 403, denied.text
    error = registry_error(denied)
    assert error["code"] == "DENIED"
    assert instance.vpc in error["message"]


def test_referrers_list_artifacts_of_image(server: CrpeServer, e2e_image: E2EImage, instance: Instance,
                                           oras_names: None, tmp_path: Path) -> None:
    image = e2e_image.image
    public_host = server.host(instance.public)
    public = logged_in_registry(server, instance, instance.public, tmp_path)

    # The subject: the real test image, its blobs uploaded by oras and its manifest pushed byte for byte.
    image_container = public.get_container(f"{public_host}/team/app:v1")
    for descriptor in [image.manifest["config"], *image.manifest["layers"]]:
        uploaded = public.upload_blob(str(image.blob_path(descriptor["digest"])), image_container, descriptor)
        assert uploaded.status_code == 201, f"{descriptor['digest']}: {uploaded.status_code} {uploaded.text}"
    put = public.do_request(f"http://{image_container.manifest_url()}", "PUT", data=image.manifest_bytes,
                            headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201, put.text
    assert put.headers["Docker-Content-Digest"] == image.manifest_digest
    subject = oras.oci.Subject(mediaType=OCI_MANIFEST, digest=image.manifest_digest,
                               size=len(image.manifest_bytes))

    # A signature with an explicit artifactType and the empty config, pushed by digest without a tag.
    signature = tmp_path / "image.sig"
    signature.write_bytes(bytes(range(256)) * 16)
    empty_config = tmp_path / "empty.json"
    empty_config.write_bytes(b"{}")
    empty_descriptor = {"mediaType": OCI_EMPTY, "digest": sha256_digest(b"{}"), "size": 2}
    signature_layer = {"mediaType": SIGNATURE_MEDIA_TYPE, "digest": sha256_digest(signature.read_bytes()),
                       "size": signature.stat().st_size, "annotations": {TITLE: "image.sig"}}
    signature_annotations = {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
    signature_manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_ARTIFACT_TYPE,
        "config": empty_descriptor,
        "layers": [signature_layer],
        "subject": {"mediaType": subject.mediaType, "digest": subject.digest, "size": subject.size},
        "annotations": signature_annotations,
    }
    # requests serializes the manifest with json.dumps, so these are the bytes that oras sends.
    signature_bytes = json.dumps(signature_manifest, allow_nan=False).encode()
    signature_digest = sha256_digest(signature_bytes)
    signature_container = public.get_container(f"{public_host}/team/app@{signature_digest}")
    for path, descriptor in [(empty_config, empty_descriptor), (signature, signature_layer)]:
        uploaded = public.upload_blob(str(path), signature_container, descriptor)
        assert uploaded.status_code == 201, f"{descriptor['digest']}: {uploaded.status_code} {uploaded.text}"
    pushed_signature = public.upload_manifest(signature_manifest, signature_container)
    assert pushed_signature.status_code == 201, pushed_signature.text
    assert pushed_signature.request.body == signature_bytes
    assert pushed_signature.headers["Docker-Content-Digest"] == signature_digest
    assert pushed_signature.headers["OCI-Subject"] == image.manifest_digest

    # An SBOM without artifactType: the referrers API reports its config media type instead.
    sbom = tmp_path / "sbom.json"
    write_sbom(sbom, e2e_image)
    config = tmp_path / "sbom-config.json"
    config.write_bytes(b'{"generator": "crpe e2e"}')
    sbom_annotations = {"org.opencontainers.image.description": "crpe e2e SBOM"}
    pushed_sbom = public.push(target=f"{public_host}/team/app:sbom", files=[f"{sbom}:{SBOM_MEDIA_TYPE}"],
                              manifest_config=f"{config}:{SBOM_CONFIG_MEDIA_TYPE}",
                              manifest_annotations=sbom_annotations, subject=subject,
                              disable_path_validation=True, quiet=True)
    assert pushed_sbom.status_code == 201, pushed_sbom.text
    assert pushed_sbom.headers["OCI-Subject"] == image.manifest_digest
    sbom_bytes = pushed_sbom.request.body
    sbom_digest = sha256_digest(sbom_bytes)

    vpc = logged_in_registry(server, instance, instance.vpc, tmp_path)
    referrers_url = f"http://{server.host(instance.vpc)}/v2/team/app/referrers/{image.manifest_digest}"
    referrers = vpc.do_request(referrers_url, "GET")
    assert referrers.status_code == 200, referrers.text
    assert referrers.headers["Content-Type"] == OCI_INDEX
    index = referrers.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    expected = [
        {"mediaType": OCI_MANIFEST, "digest": signature_digest, "size": len(signature_bytes),
         "artifactType": SIGNATURE_ARTIFACT_TYPE, "annotations": signature_annotations},
        {"mediaType": OCI_MANIFEST, "digest": sbom_digest, "size": len(sbom_bytes),
         "artifactType": SBOM_CONFIG_MEDIA_TYPE, "annotations": sbom_annotations},
    ]
    assert sorted(index["manifests"], key=lambda d: d["digest"]) == sorted(expected, key=lambda d: d["digest"])
    assert "OCI-Filters-Applied" not in referrers.headers

    filtered = vpc.do_request(f"{referrers_url}?artifactType={SIGNATURE_ARTIFACT_TYPE}", "GET")
    assert filtered.status_code == 200, filtered.text
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert filtered.json()["manifests"] == [expected[0]]

    no_referrers = vpc.do_request(f"http://{server.host(instance.vpc)}/v2/team/app/referrers/{sbom_digest}", "GET")
    assert no_referrers.status_code == 200, no_referrers.text
    assert no_referrers.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}

    pulled = vpc.pull(target=f"{server.host(instance.vpc)}/team/app@{signature_digest}",
                      outdir=str(tmp_path / "pulled"))
    assert pulled == [str(tmp_path / "pulled" / "image.sig")]
    assert Path(pulled[0]).read_bytes() == signature.read_bytes()
