"""Push and pull the real test image with the Docker engine and with containerd's ctr.

One containerd and one dockerd serve the whole module. They run in the mount namespace of a client
sandbox whose /etc/hosts maps only the instance's host names to 127.0.0.1 and whose nsswitch.conf
resolves host names from files alone, so no name reaches DNS and no public registry is reachable.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from e2e_support import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    MANIFEST_ACCEPT,
    ClientSandbox,
    RegistryHTTP,
    registry_error,
    sha256_digest,
)
from engines import Engines, access_lines, require_engine_tools, start_engines
from image_build import E2EImage
from server import CrpeServer, Instance

pytestmark = [pytest.mark.e2e, *require_engine_tools()]

DOCKER_REPOSITORY = "team/docker"
MOUNT_REPOSITORY = "team/mounted"
CTR_REPOSITORY = "team/ctr"
CTR_FALLBACK_REPOSITORY = "team/ctr-fallback"
# A repository that nothing pushes to, so that a mount from it fails.
MISSING_REPOSITORY = "team/missing"
# The name `docker load` and `ctr images import` give the test image. Nothing pulls it, and a pull
# would fail anyway because docker.io does not resolve in the sandbox.
ARCHIVE_NAME = "crpe-e2e/debian:v1"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
# The containerd namespace into which ctr imports the image it pushes. Each ctr pull uses a namespace
# of its own, so it starts from an empty image store.
CTR_PUSH_NAMESPACE = "push"

PUSH_DIGEST_LINE = re.compile(r"^(\S+): digest: (sha256:[0-9a-f]{64}) size: (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class EngineSetup:
    """The daemons, their sandbox, the instance they talk to and the test image as a docker-archive."""

    engines: Engines
    sandbox: ClientSandbox
    instance: Instance
    archive: Path

    def public(self, server: CrpeServer) -> str:
        return server.host(self.instance.public)

    def vpc(self, server: CrpeServer) -> str:
        return server.host(self.instance.vpc)

    def registry_http(self, server: CrpeServer) -> RegistryHTTP:
        """Return a token-flow HTTP client for the VPC endpoint, which allows pulls."""
        return RegistryHTTP(self.instance.vpc, server.port, self.instance.username, self.instance.password)


@dataclass(frozen=True)
class DockerPush:
    """The test image as `docker push` sent it through the public endpoint."""

    login_output: str
    push_output: str
    digest: str
    manifest_size: str
    image_id: str
    inspected: dict


@dataclass(frozen=True)
class CtrPush:
    """The test image as `ctr images push` sent it through the public endpoint."""

    reference: str
    digest: str


def docker_login(setup: EngineSetup, host: str, password: str, *, docker_config: Path | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    return setup.engines.docker("login", "--username", setup.instance.username, "--password-stdin", host,
                                input=password + "\n", docker_config=docker_config, check=check)


def credentials(instance: Instance) -> str:
    return f"{instance.username}:{instance.password}"


@pytest.fixture(scope="module")
def engine_setup(server: CrpeServer, e2e_image: E2EImage,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineSetup]:
    """containerd and dockerd, started once for the module, and a new instance they may use over plain HTTP."""
    root = tmp_path_factory.mktemp("engines")
    sandbox = ClientSandbox(root / "sandbox")
    instance = server.create_instance()
    sandbox.add_host(instance.public, instance.vpc)

    # docker load and ctr import both read a docker-archive, whose layers are uncompressed tar streams.
    archive = sandbox.root / "image.tar"
    sandbox.skopeo("copy", f"oci:{e2e_image.layout}:{e2e_image.tag}", f"docker-archive:{archive}:{ARCHIVE_NAME}")

    engines = start_engines(sandbox, root / "daemons",
                            [server.host(instance.public), server.host(instance.vpc)])
    try:
        yield EngineSetup(engines, sandbox, instance, archive)
    finally:
        engines.stop()
        sandbox.close()


@pytest.fixture(scope="module")
def docker_pushed(engine_setup: EngineSetup, server: CrpeServer) -> DockerPush:
    """The test image loaded into dockerd and pushed through the public endpoint after `docker login`."""
    setup = engine_setup
    login = docker_login(setup, setup.public(server), setup.instance.password)
    setup.engines.docker("load", "--input", str(setup.archive))
    reference = f"{setup.public(server)}/{DOCKER_REPOSITORY}:v1"
    setup.engines.docker("tag", ARCHIVE_NAME, reference)
    push = setup.engines.docker("push", reference)

    digests = PUSH_DIGEST_LINE.findall(push.stdout)
    assert len(digests) == 1, push.stdout
    tag, digest, size = digests[0]
    assert tag == "v1"
    inspected = setup.engines.docker_inspect(reference)
    return DockerPush(login.stdout, push.stdout, digest, size, inspected["Id"], inspected)


@pytest.fixture(scope="module")
def ctr_pushed(engine_setup: EngineSetup, server: CrpeServer) -> CtrPush:
    """The docker-archive imported by ctr without unpacking, and pushed through the public endpoint."""
    setup = engine_setup
    engines = setup.engines
    engines.ctr(CTR_PUSH_NAMESPACE, "images", "import", "--no-unpack", str(setup.archive))
    imported = f"docker.io/{ARCHIVE_NAME}"
    reference = f"{setup.public(server)}/{CTR_REPOSITORY}:v1"
    engines.ctr(CTR_PUSH_NAMESPACE, "images", "tag", imported, reference)
    engines.ctr(CTR_PUSH_NAMESPACE, "images", "push", "--plain-http", "--user", credentials(setup.instance),
                reference)
    digest = engines.ctr_image_digests(CTR_PUSH_NAMESPACE)[reference]
    return CtrPush(reference, digest)


# --- docker ----------------------------------------------------------------------------------------


def test_docker_login_stores_refresh_token(docker_pushed: DockerPush, engine_setup: EngineSetup,
                                           server: CrpeServer) -> None:
    setup = engine_setup
    public = setup.public(server)
    assert docker_pushed.login_output.strip() == "Login Succeeded"

    # docker keeps the refresh token as "identitytoken" and then stores no password, only "user:".
    stored = json.loads((setup.engines.docker_config / "config.json").read_text())["auths"][public]
    assert stored["identitytoken"]
    assert base64.b64decode(stored["auth"]).decode() == f"{setup.instance.username}:"

    requests = access_lines(server.root / "server.log", public)
    token_requests = [line for line in requests if urlsplit(line.uri).path == "/auth/token"]
    login_request = token_requests[0]
    assert login_request.method == "GET"
    assert parse_qs(urlsplit(login_request.uri).query)["offline_token"] == ["true"]
    assert login_request.status == 200
    # With an identity token, docker push requests access tokens with the OAuth2 refresh_token grant (POST).
    push_token_requests = [line for line in token_requests[1:] if line.method == "POST"]
    assert push_token_requests, token_requests
    assert {line.status for line in push_token_requests} == {200}


def test_docker_push_digest_matches_registry(docker_pushed: DockerPush, engine_setup: EngineSetup,
                                             server: CrpeServer, e2e_image: E2EImage) -> None:
    with engine_setup.registry_http(server) as http:
        head = http.request("HEAD", f"/v2/{DOCKER_REPOSITORY}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
        manifest = http.get_manifest(DOCKER_REPOSITORY, docker_pushed.digest)

    assert head.status_code == 200, head.headers
    assert head.headers["Docker-Content-Digest"] == docker_pushed.digest
    assert head.headers["Content-Type"] == DOCKER_MANIFEST
    assert manifest.status_code == 200, manifest.text
    assert sha256_digest(manifest.content) == docker_pushed.digest
    body = manifest.json()
    image = e2e_image.image
    assert body["mediaType"] == DOCKER_MANIFEST
    assert body["config"] == {"mediaType": DOCKER_CONFIG, "size": len(image.blob(image.config_digest)),
                              "digest": image.config_digest}
    assert [layer["mediaType"] for layer in body["layers"]] == [DOCKER_LAYER_GZIP] * len(image.diff_ids)
    assert docker_pushed.image_id == e2e_image.image.config_digest
    assert docker_pushed.inspected["RepoDigests"] == [
        f"{engine_setup.public(server)}/{DOCKER_REPOSITORY}@{docker_pushed.digest}"]
    assert docker_pushed.inspected["RootFS"]["Layers"] == e2e_image.image.diff_ids


def test_docker_push_patch_then_put(docker_pushed: DockerPush, engine_setup: EngineSetup,
                                    server: CrpeServer, e2e_image: E2EImage) -> None:
    with engine_setup.registry_http(server) as http:
        manifest = http.get_manifest(DOCKER_REPOSITORY, docker_pushed.digest).json()
    blob_digests = [e2e_image.image.config_digest, *[layer["digest"] for layer in manifest["layers"]]]

    requests = [line for line in access_lines(server.root / "server.log", engine_setup.public(server))
                if urlsplit(line.uri).path.startswith(f"/v2/{DOCKER_REPOSITORY}/blobs/uploads/")]
    posts = [line for line in requests if line.method == "POST"]
    patches = [line for line in requests if line.method == "PATCH"]
    puts = {parse_qs(urlsplit(line.uri).query)["digest"][0]: line.status
            for line in requests if line.method == "PUT"}
    assert [line.status for line in posts] == [202] * len(blob_digests)
    # docker sends each blob's content in PATCH requests and closes the session with a PUT.
    assert len(patches) >= len(blob_digests)
    assert {line.status for line in patches} == {202}
    assert puts == {digest: 201 for digest in blob_digests}


def test_docker_pull_public_denied(docker_pushed: DockerPush, engine_setup: EngineSetup,
                                   server: CrpeServer) -> None:
    setup = engine_setup
    public = setup.public(server)
    result = setup.engines.docker("pull", f"{public}/{DOCKER_REPOSITORY}:v1", check=False)

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error response from daemon: pull access denied for {public}/{DOCKER_REPOSITORY}, repository does not "
        f"exist or may require 'docker login': denied: pulling through the public endpoint {setup.instance.public} "
        f"is not allowed for this instance; pull through its VPC endpoint {setup.instance.vpc} instead")


def test_docker_pull_vpc_matches_push(docker_pushed: DockerPush, engine_setup: EngineSetup,
                                      server: CrpeServer, e2e_image: E2EImage) -> None:
    setup = engine_setup
    engines = setup.engines
    vpc = setup.vpc(server)
    assert docker_login(setup, vpc, setup.instance.password).stdout.strip() == "Login Succeeded"

    # Removing every tag deletes the layers too, so the pull has to download all of them.
    tags = engines.docker("image", "inspect", "--format", "{{json .RepoTags}}", docker_pushed.image_id).stdout
    engines.docker("image", "rm", *json.loads(tags))
    images = engines.docker("image", "list", "--all", "--quiet").stdout
    assert images == ""

    reference = f"{vpc}/{DOCKER_REPOSITORY}:v1"
    pull = engines.docker("pull", reference)
    assert f"Digest: {docker_pushed.digest}\n" in pull.stdout
    assert pull.stdout.count(": Pull complete\n") == len(e2e_image.image.diff_ids), pull.stdout
    assert pull.stdout.rstrip().endswith(f"Status: Downloaded newer image for {reference}\n{reference}")

    inspected = engines.docker_inspect(reference)
    assert inspected["Id"] == docker_pushed.image_id
    assert inspected["RepoDigests"] == [f"{vpc}/{DOCKER_REPOSITORY}@{docker_pushed.digest}"]
    assert inspected["RootFS"]["Layers"] == docker_pushed.inspected["RootFS"]["Layers"]


def test_docker_cross_repository_mount(docker_pushed: DockerPush, engine_setup: EngineSetup,
                                       server: CrpeServer) -> None:
    setup = engine_setup
    public = setup.public(server)
    # The image ID works whether the image is still the loaded one or the one pulled through the VPC.
    reference = f"{public}/{MOUNT_REPOSITORY}:v2"
    setup.engines.docker("tag", docker_pushed.image_id, reference)
    push = setup.engines.docker("push", reference)

    assert PUSH_DIGEST_LINE.findall(push.stdout) == [("v2", docker_pushed.digest, docker_pushed.manifest_size)]
    with setup.registry_http(server) as http:
        manifest = http.get_manifest(MOUNT_REPOSITORY, "v2").json()
    layer_digests = [layer["digest"] for layer in manifest["layers"]]
    # docker names each layer in its progress output by the first 12 hex digits of the layer's diff ID.
    for diff_id in docker_pushed.inspected["RootFS"]["Layers"]:
        assert f"{diff_id.removeprefix('sha256:')[:12]}: Mounted from {DOCKER_REPOSITORY}\n" in push.stdout

    mounts = {}
    for line in access_lines(server.root / "server.log", public):
        parts = urlsplit(line.uri)
        query = parse_qs(parts.query)
        if line.method == "POST" and parts.path == f"/v2/{MOUNT_REPOSITORY}/blobs/uploads/" and "mount" in query:
            assert query["from"] == [DOCKER_REPOSITORY]
            mounts[query["mount"][0]] = line.status
    assert mounts == {digest: 201 for digest in layer_digests}


def test_docker_login_wrong_password(engine_setup: EngineSetup, server: CrpeServer) -> None:
    setup = engine_setup
    public = setup.public(server)
    docker_config = setup.sandbox.root / "docker-config-wrong-password"
    result = docker_login(setup, public, "wrong-password", docker_config=docker_config, check=False)

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'Error response from daemon: Get "http://{public}/v2/": unauthorized: incorrect username or password '
        f"for this instance; the user name is printed by `crpe password set`, and the password is your login "
        f"password for the instance or a temporary credential from `crpe token get`")
    config_file = docker_config / "config.json"
    stored = json.loads(config_file.read_text()).get("auths", {}) if config_file.exists() else {}
    assert public not in stored


# --- ctr -------------------------------------------------------------------------------------------


def test_ctr_push_sends_uncompressed_layers(ctr_pushed: CtrPush, engine_setup: EngineSetup,
                                            server: CrpeServer, e2e_image: E2EImage) -> None:
    image = e2e_image.image
    with engine_setup.registry_http(server) as http:
        head = http.request("HEAD", f"/v2/{CTR_REPOSITORY}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
        manifest = http.get_manifest(CTR_REPOSITORY, ctr_pushed.digest)

    assert head.status_code == 200, head.headers
    assert head.headers["Docker-Content-Digest"] == ctr_pushed.digest
    assert head.headers["Content-Type"] == DOCKER_MANIFEST
    assert manifest.status_code == 200, manifest.text
    body = manifest.json()
    assert body["config"]["digest"] == image.config_digest
    # An uncompressed layer's digest is its diff ID.
    assert [layer["digest"] for layer in body["layers"]] == image.diff_ids
    assert [layer["mediaType"] for layer in body["layers"]] == [DOCKER_LAYER_TAR] * len(image.diff_ids)

    # ctr uploads each blob with POST and one monolithic PUT, and sends no PATCH.
    requests = [line for line in access_lines(server.root / "server.log", engine_setup.public(server))
                if urlsplit(line.uri).path.startswith(f"/v2/{CTR_REPOSITORY}/blobs/uploads/")]
    assert [line for line in requests if line.method == "PATCH"] == []
    posts = [line for line in requests if line.method == "POST"]
    puts = [line for line in requests if line.method == "PUT"]
    blob_digests = [image.config_digest, *image.diff_ids]
    assert [line.status for line in posts] == [202] * len(blob_digests)
    assert sorted(parse_qs(urlsplit(line.uri).query)["digest"][0] for line in puts) == sorted(blob_digests)
    assert [line.status for line in puts] == [201] * len(blob_digests)


def test_ctr_failed_mount_falls_back(ctr_pushed: CtrPush, engine_setup: EngineSetup,
                                     server: CrpeServer, e2e_image: E2EImage) -> None:
    """A mount from a repository without the blob gets a 202 upload session, into which ctr uploads the blob."""
    setup = engine_setup
    engines = setup.engines
    public = setup.public(server)
    # ctr 1.6.20 requests a cross-repository mount when a blob carries this content label naming a
    # repository on the target host. A label key with the port in it gets no mount request.
    source_label = f"containerd.io/distribution.source.{setup.instance.public}={MISSING_REPOSITORY}"
    for diff_id in e2e_image.image.diff_ids:
        engines.ctr(CTR_PUSH_NAMESPACE, "content", "label", diff_id, source_label)
    reference = f"{public}/{CTR_FALLBACK_REPOSITORY}:v1"
    engines.ctr(CTR_PUSH_NAMESPACE, "images", "tag", ctr_pushed.reference, reference)
    engines.ctr(CTR_PUSH_NAMESPACE, "images", "push", "--plain-http", "--user", credentials(setup.instance),
                reference)

    mounts = {}
    uploads = {}
    for line in access_lines(server.root / "server.log", public):
        parts = urlsplit(line.uri)
        query = parse_qs(parts.query)
        if not parts.path.startswith(f"/v2/{CTR_FALLBACK_REPOSITORY}/blobs/uploads/"):
            continue
        if line.method == "POST" and "mount" in query:
            assert query["from"] == [MISSING_REPOSITORY]
            mounts[query["mount"][0]] = line.status
        elif line.method == "PUT":
            uploads[query["digest"][0]] = line.status
    assert mounts == {diff_id: 202 for diff_id in e2e_image.image.diff_ids}
    assert uploads == {digest: 201 for digest in [e2e_image.image.config_digest, *e2e_image.image.diff_ids]}
    with setup.registry_http(server) as http:
        head = http.request("HEAD", f"/v2/{CTR_FALLBACK_REPOSITORY}/manifests/v1",
                            headers={"Accept": MANIFEST_ACCEPT})
    assert head.status_code == 200, head.headers
    assert head.headers["Docker-Content-Digest"] == ctr_pushed.digest


def test_ctr_pull_vpc_matches_push(ctr_pushed: CtrPush, engine_setup: EngineSetup, server: CrpeServer,
                                   e2e_image: E2EImage) -> None:
    setup = engine_setup
    reference = f"{setup.vpc(server)}/{CTR_REPOSITORY}:v1"
    # The native snapshotter copies files, so unpacking works where overlayfs is unavailable. Unpacking
    # checks each layer's uncompressed digest against the diff IDs of the image config.
    setup.engines.ctr("pulled", "images", "pull", "--plain-http", "--snapshotter", "native",
                      "--user", credentials(setup.instance), reference)

    assert setup.engines.ctr_image_digests("pulled") == {reference: ctr_pushed.digest}
    requests = [(line.method, line.uri, line.status)
                for line in access_lines(server.root / "server.log", setup.vpc(server))
                if line.uri.startswith(f"/v2/{CTR_REPOSITORY}/manifests/")]
    assert ("HEAD", f"/v2/{CTR_REPOSITORY}/manifests/v1", 200) in requests
    assert ("GET", f"/v2/{CTR_REPOSITORY}/manifests/{ctr_pushed.digest}", 200) in requests
    blob_requests = {line.uri.rpartition("/")[2]: (line.method, line.status)
                     for line in access_lines(server.root / "server.log", setup.vpc(server))
                     if line.uri.startswith(f"/v2/{CTR_REPOSITORY}/blobs/")}
    blob_digests = [e2e_image.image.config_digest, *e2e_image.image.diff_ids]
    assert blob_requests == {digest: ("GET", 200) for digest in blob_digests}


def test_ctr_pull_public_forbidden(ctr_pushed: CtrPush, engine_setup: EngineSetup, server: CrpeServer) -> None:
    setup = engine_setup
    public = setup.public(server)
    result = setup.engines.ctr("public-pull", "images", "pull", "--plain-http", "--snapshotter", "native",
                               "--user", credentials(setup.instance), ctr_pushed.reference, check=False)

    assert result.returncode == 1
    # ctr reports only the status of the HEAD request, which has no body to carry crpe's message.
    assert result.stderr.strip().splitlines()[-1] == (
        f'ctr: failed to resolve reference "{ctr_pushed.reference}": pulling from host {public} failed with '
        f"status code [manifests v1]: 403 Forbidden")
    assert setup.engines.ctr_image_digests("public-pull") == {}

    with RegistryHTTP(setup.instance.public, server.port, setup.instance.username,
                      setup.instance.password) as http:
        response = http.get_manifest(CTR_REPOSITORY, "v1")
    assert response.status_code == 403
    error = registry_error(response)
    assert error["code"] == "DENIED"
    assert error["message"] == (f"pulling through the public endpoint {setup.instance.public} is not allowed for "
                                f"this instance; pull through its VPC endpoint {setup.instance.vpc} instead")


def test_ctr_wrong_password_unauthorized(ctr_pushed: CtrPush, engine_setup: EngineSetup,
                                         server: CrpeServer) -> None:
    setup = engine_setup
    wrong = f"{setup.instance.username}:wrong-password"
    vpc_reference = f"{setup.vpc(server)}/{CTR_REPOSITORY}:v1"
    pull = setup.engines.ctr("wrong-password", "images", "pull", "--plain-http", "--snapshotter", "native",
                             "--user", wrong, vpc_reference, check=False)
    push = setup.engines.ctr(CTR_PUSH_NAMESPACE, "images", "push", "--plain-http", "--user", wrong,
                             ctr_pushed.reference, check=False)

    assert pull.returncode == 1
    assert pull.stderr.strip().splitlines()[-1] == (
        f'ctr: failed to resolve reference "{vpc_reference}": failed to authorize: failed to fetch oauth token: '
        f"unexpected status: 401 Unauthorized")
    assert push.returncode == 1
    assert push.stderr.strip().splitlines()[-1] == (
        "ctr: failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized")
