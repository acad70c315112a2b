"""An HTTP client for the registry API of one instance, for black-box tests against a real `crpe serve`.

Every request goes to the server's loopback address with the `Host` header set to the instance's public or
VPC host name, so no DNS is involved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import httpx
from server import CrpeServer, Instance

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# The OCI image spec's empty descriptor: the two bytes `{}`.
EMPTY_CONTENT = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

HARBOR_USER_AGENT = "harbor-registry-client/2.10.0"
ALL_ACTIONS = "pull,push,delete"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def error_code(response: httpx.Response) -> str | None:
    """Return `errors[0].code` of an OCI error body, or None when the body is not one."""
    try:
        return response.json()["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["errors"][0]["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def manifest_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode()


def image_manifest(config: bytes, layers: Iterable[bytes], media_type: str = OCI_MANIFEST, **fields: Any) -> bytes:
    """Serialize an image manifest (OCI or Docker schema 2) over the given config and layer contents."""
    docker = media_type == DOCKER_MANIFEST
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
        "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, layer) for layer in layers],
    }
    document.update(fields)
    return manifest_bytes(document)


def index_manifest(children: Iterable[tuple[str, bytes]], media_type: str = OCI_INDEX) -> bytes:
    """Serialize an image index or manifest list over (media type, manifest bytes) pairs."""
    return manifest_bytes(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                {**descriptor(child_type, child), "platform": {"architecture": "amd64", "os": "linux"}}
                for child_type, child in children
            ],
        }
    )


class RegistryClient:
    """Requests to one instance's endpoints, with token requests done the way Docker clients do them."""

    def __init__(self, server: CrpeServer, instance: Instance) -> None:
        self.server = server
        self.instance = instance
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self._tokens: dict[tuple[str, ...], str] = {}

    def close(self) -> None:
        self.http.close()

    @property
    def public(self) -> str:
        """`Host` header value of the public endpoint."""
        return self.server.host(self.instance.public)

    @property
    def vpc(self) -> str:
        """`Host` header value of the VPC endpoint."""
        return self.server.host(self.instance.vpc)

    def host(self, network: str) -> str:
        return self.vpc if network == "vpc" else self.public

    def request_token(
        self, *scopes: str, host: str | None = None, auth: tuple[str, str] | None = None
    ) -> httpx.Response:
        """GET /auth/token with Basic credentials (the instance's login by default) for `scopes`."""
        params = [("service", self.instance.public), *(("scope", scope) for scope in scopes)]
        credentials = auth or (self.instance.username, self.instance.password)
        return self.http.get("/auth/token", params=params, auth=credentials, headers={"Host": host or self.public})

    def token(self, *scopes: str) -> str:
        """Return an access token for `scopes`, cached per scope list."""
        key = tuple(sorted(scopes))
        if key not in self._tokens:
            response = self.request_token(*scopes)
            assert response.status_code == 200, response.text
            self._tokens[key] = response.json()["token"]
        return self._tokens[key]

    def repository_token(self, repository: str, actions: str = ALL_ACTIONS) -> str:
        return self.token(f"repository:{repository}:{actions}")

    def request(
        self,
        method: str,
        path: str,
        *,
        network: str = "public",
        token: str | None = None,
        repository: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a registry request. Given `repository`, it uses a token with every action on that repository."""
        if repository is not None and token is None:
            token = self.repository_token(repository)
        sent = {"Host": self.host(network)}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        return self.http.request(method, path, headers=sent, **kwargs)

    def push_blob(self, repository: str, data: bytes, network: str = "public") -> str:
        """Upload `data` monolithically and return its sha256 digest."""
        digest = sha256(data)
        response = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            params={"digest": digest},
            content=data,
            repository=repository,
            network=network,
        )
        assert response.status_code == 201, response.text
        return digest

    def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST, network: str = "public"
    ) -> httpx.Response:
        return self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            content=body,
            headers={"Content-Type": media_type},
            repository=repository,
            network=network,
        )

    def push_image(self, repository: str, tag: str, seed: str, media_type: str = OCI_MANIFEST) -> bytes:
        """Push a config, one layer and a manifest whose content depends on `seed`, and return the manifest."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        layer = f"layer of {seed}".encode()
        self.push_blob(repository, config)
        self.push_blob(repository, layer)
        body = image_manifest(config, [layer], media_type)
        response = self.put_manifest(repository, tag, body, media_type)
        assert response.status_code == 201, response.text
        return body

    def start_upload(self, repository: str, token: str | None = None) -> str:
        """Open an upload session and return its Location path."""
        response = self.request("POST", f"/v2/{repository}/blobs/uploads/", repository=repository, token=token)
        assert response.status_code == 202, response.text
        return response.headers["Location"]


def control_credentials(server: CrpeServer) -> tuple[str, str]:
    """Return the administrator access key (id, secret) that `crpe serve` saved in the server's CLI profile."""
    config = json.loads((server.root / "config" / "crpe" / "config.json").read_text())
    profile = config["profiles"][config["default_profile"]]
    return profile["access_key_id"], profile["access_key_secret"]
