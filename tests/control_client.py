"""Clients of a real `crpe serve` for black-box tests: the control-plane API (/api/v1), tenant set-up
helpers, and a registry client that follows the docker token flow.

Setting up through HTTP instead of the `crpe` command keeps the tests fast: each CLI call starts a Python
process, which takes about a second.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from server import CrpeServer

HARBOR_USER_AGENT = "harbor-registry-client/2.9.0"
LOGIN_PASSWORD = "Login-pass-1"
DOCKER_USER_AGENT = "docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.8.0 os/linux arch/amd64"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')


def unique_name(prefix: str) -> str:
    """Return a lower-case name that no other test uses: legacy namespaces are shared by a whole region."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def admin_key(server: CrpeServer) -> tuple[str, str]:
    """Return the administrator's access key (id, secret) from the CLI profile that `crpe serve` wrote."""
    config = json.loads((server.root / "config" / "crpe" / "config.json").read_text())
    profile = config["profiles"]["default"]
    return profile["access_key_id"], profile["access_key_secret"]


def error_of(response: httpx.Response) -> tuple[str, str]:
    """Return (code, message) of a control-plane error body `{"error": {"code", "message"}}`."""
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"HTTP {response.status_code} has no control-plane error body: "
                             f"{response.text[:500]!r}") from None


class ControlClient:
    """Requests to /api/v1 of one server with one access key as Basic credentials."""

    def __init__(self, server: CrpeServer, key_id: str, secret: str, user_agent: str = "crpe-tests") -> None:
        self.server = server
        self.key_id = key_id
        self.secret = secret
        self.http = httpx.Client(base_url=f"{server.url}/api/v1", auth=(key_id, secret), timeout=30,
                                 headers={"User-Agent": user_agent})

    @classmethod
    def admin(cls, server: CrpeServer, user_agent: str = "crpe-tests") -> ControlClient:
        return cls(server, *admin_key(server), user_agent=user_agent)

    def with_user_agent(self, user_agent: str) -> ControlClient:
        return ControlClient(self.server, self.key_id, self.secret, user_agent)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def call(self, method: str, path: str, expected: int = 200, **kwargs: Any) -> Any:
        """Send a request that must succeed with status `expected`; return the decoded JSON body."""
        response = self.request(method, path, **kwargs)
        assert response.status_code == expected, (f"{method} {path}: expected {expected}, got "
                                                  f"{response.status_code}: {response.text[:1000]}")
        return response.json()

    # Shortcuts for the set-up steps most tests need.

    def create_instance(self, region: str = "cn-hangzhou") -> dict[str, Any]:
        return self.call("POST", "/instances", 201, json={"region": region})

    def create_namespace(self, instance_id: str, name: str, **settings: Any) -> dict[str, Any]:
        return self.call("POST", f"/instances/{instance_id}/namespaces", 201, json={"name": name, **settings})

    def create_repository(self, instance_id: str, repository: str, visibility: str | None = None) -> dict[str, Any]:
        namespace, name = repository.split("/")
        return self.call("POST", f"/instances/{instance_id}/repositories", 201,
                         json={"namespace": namespace, "name": name, "visibility": visibility})

    def set_password(self, instance_id: str, password: str = LOGIN_PASSWORD) -> str:
        """Set the caller's login password for an instance and return the registry user name."""
        return self.call("PUT", f"/instances/{instance_id}/password", json={"password": password})["username"]

    def temporary_credentials(self, instance_id: str) -> tuple[str, str]:
        body = self.call("POST", f"/instances/{instance_id}/temporary-credentials")
        return body["username"], body["password"]


@dataclass
class Tenant:
    """An account created by the administrator, with a client that uses the account's first access key."""

    name: str
    client: ControlClient
    sub_users: dict[str, ControlClient] = field(default_factory=dict)

    def add_sub_user(self, name: str, allow: dict[str, str] | None = None,
                     deny: dict[str, str] | None = None) -> ControlClient:
        """Create a sub-user with a policy and an access key; `allow` and `deny` map resources to actions."""
        self.client.call("POST", "/sub-users", 201, json={"name": name})
        statements = [statement(effect, actions, resource)
                      for effect, rules in (("allow", allow or {}), ("deny", deny or {}))
                      for resource, actions in rules.items()]
        self.client.call("PUT", f"/sub-users/{name}/policy", json={"statements": statements})
        key = self.client.call("POST", "/access-keys", 201, json={"sub_user": name})
        sub_user = ControlClient(self.client.server, key["id"], key["secret"])
        self.sub_users[name] = sub_user
        return sub_user

    def login_name(self, sub_user: str | None = None) -> str:
        return f"{sub_user}@{self.name}" if sub_user else self.name

    def import_legacy_instance(self, admin: ControlClient, region: str = "cn-hangzhou") -> dict[str, Any]:
        """Import an instance dated before the cut-over, which makes it a legacy instance."""
        return admin.call("POST", "/instances", 201,
                          json={"region": region, "account": self.name, "created_at": "2023-05-01"})

    def close(self) -> None:
        self.client.close()
        for sub_user in self.sub_users.values():
            sub_user.close()


def statement(effect: str, actions: str, resource: str) -> dict[str, Any]:
    return {"effect": effect, "actions": actions.split(","), "resources": [resource]}


def create_tenant(admin: ControlClient, prefix: str = "acct") -> Tenant:
    name = unique_name(prefix)
    created = admin.call("POST", "/accounts", 201, json={"name": name})
    key = created["access_key"]
    return Tenant(name, ControlClient(admin.server, key["id"], key["secret"]))


# --- A registry client that follows the docker token flow -------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic_authorization(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


def oci_error(response: httpx.Response) -> tuple[str | None, str]:
    """Return (code, message) of the first entry of an OCI error body, or (None, body text)."""
    try:
        first = response.json()["errors"][0]
        return first["code"], first["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, response.text[:500]


@dataclass
class DockerFlow:
    """Registry requests to one host name, made the way docker and Harbor make them.

    `forwarded_host` sends the host name in X-Forwarded-Host with the control-plane address in `Host`, as a
    reverse proxy in front of crpe would.
    """

    http: httpx.Client  # Shared by many flows: creating a client costs tens of milliseconds.
    server: CrpeServer
    host_name: str
    credentials: tuple[str, str] | None = None
    user_agent: str = DOCKER_USER_AGENT
    headers: dict[str, str] = field(default_factory=dict)
    forwarded_host: bool = False
    _challenge: dict[str, str] | None = None
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def authority(self) -> str:
        return self.server.host(self.host_name)

    def raw(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"User-Agent": self.user_agent, **self.headers, **kwargs.pop("headers", {})}
        if self.forwarded_host:
            headers.update({"Host": self.server.address, "X-Forwarded-Host": self.authority})
        else:
            headers["Host"] = self.authority
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, f"{self.server.url}{path}", headers=headers, **kwargs)

    def _fetch_token(self, scope: str) -> httpx.Response:
        assert self._challenge is not None
        realm = httpx.URL(self._challenge["realm"])
        # The realm must point back at the host the client talks to, or a client would leave the registry.
        assert f"{realm.host}:{realm.port}" == self.authority, self._challenge
        params = {"service": self._challenge["service"], "scope": scope}
        headers = {}
        if self.credentials is not None:
            headers["Authorization"] = basic_authorization(self.credentials)
        return self.raw("GET", realm.path, params=params, headers=headers)

    def send(self, method: str, path: str, scope: str, **kwargs: Any) -> httpx.Response:
        """Send a request with a token for `scope`; a failed ping or token request is returned instead."""
        if self._challenge is None:
            ping = self.raw("GET", "/v2/")
            challenge = ping.headers.get("WWW-Authenticate", "")
            if ping.status_code != 401 or not challenge.lower().startswith("bearer "):
                return ping
            self._challenge = dict(_CHALLENGE_PARAMETER.findall(challenge))
        if scope not in self._tokens:
            token_response = self._fetch_token(scope)
            if token_response.status_code != 200:
                return token_response
            self._tokens[scope] = token_response.json()["token"]
        return self.raw(method, path, token=self._tokens[scope], **kwargs)

    def get_manifest(self, repository: str, reference: str) -> httpx.Response:
        return self.send("GET", f"/v2/{repository}/manifests/{reference}", f"repository:{repository}:pull",
                         headers={"Accept": OCI_MANIFEST})

    def delete_manifest(self, repository: str, digest: str) -> httpx.Response:
        return self.send("DELETE", f"/v2/{repository}/manifests/{digest}", f"repository:{repository}:delete")

    def push_blob(self, repository: str, data: bytes) -> httpx.Response:
        return self.send("POST", f"/v2/{repository}/blobs/uploads/", f"repository:{repository}:pull,push",
                         params={"digest": sha256(data)}, content=data,
                         headers={"Content-Type": "application/octet-stream"})

    def push_image(self, repository: str, tag: str, seed: str) -> tuple[httpx.Response, str]:
        """Push a config, one layer and a manifest unique to `seed`; return the last response and the digest."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        layer = f"layer of {seed}".encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
        }).encode()
        for blob in (config, layer):
            response = self.push_blob(repository, blob)
            if response.status_code != 201:
                return response, sha256(manifest)
        response = self.send("PUT", f"/v2/{repository}/manifests/{tag}", f"repository:{repository}:pull,push",
                             content=manifest, headers={"Content-Type": OCI_MANIFEST})
        return response, sha256(manifest)

    def catalog(self) -> httpx.Response:
        return self.send("GET", "/v2/_catalog", "registry:catalog:*")
