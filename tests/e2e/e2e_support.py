"""Helpers for the end-to-end tests: client sandboxes, a token-flow HTTP client and OCI layout readers."""

from __future__ import annotations

import base64
import gzip
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"

# glibc and Go's resolver both read nsswitch.conf. With "files" as the only source, a name missing from
# the sandbox hosts file fails to resolve instead of going to DNS.
NSSWITCH_FILES_ONLY = """\
passwd: files
group: files
shadow: files
hosts: files
networks: files
protocols: files
services: files
ethers: files
rpc: files
netgroup: files
"""

POLICY_ACCEPT_ANYTHING = {"default": [{"type": "insecureAcceptAnything"}]}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def gunzip_digest(path: Path) -> str:
    """Return the sha256 digest of the uncompressed content of a gzip file (a layer's diff ID)."""
    sha = hashlib.sha256()
    with gzip.open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


# --- OCI image layouts -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutImage:
    """One tagged image of an OCI image layout, with its manifest and config parsed."""

    layout: Path
    tag: str
    manifest_digest: str
    manifest_bytes: bytes
    manifest: dict
    config: dict

    @property
    def config_digest(self) -> str:
        return self.manifest["config"]["digest"]

    @property
    def layer_digests(self) -> list[str]:
        return [layer["digest"] for layer in self.manifest["layers"]]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config["rootfs"]["diff_ids"])

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.layout / "blobs" / algorithm / hex_digest

    def blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()


def read_layout_image(layout: Path, tag: str | None = None) -> LayoutImage:
    """Read the image tagged `tag` from an OCI layout, or its only image when `tag` is None."""
    index = json.loads((layout / "index.json").read_text())
    descriptors = index["manifests"]
    if tag is not None:
        descriptors = [d for d in descriptors
                       if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    if len(descriptors) != 1:
        raise AssertionError(f"expected one manifest tagged {tag!r} in {layout}/index.json, found: {index}")
    descriptor = descriptors[0]
    algorithm, hex_digest = descriptor["digest"].split(":", 1)
    manifest_bytes = (layout / "blobs" / algorithm / hex_digest).read_bytes()
    manifest = json.loads(manifest_bytes)
    config_algorithm, config_hex = manifest["config"]["digest"].split(":", 1)
    config = json.loads((layout / "blobs" / config_algorithm / config_hex).read_bytes())
    return LayoutImage(layout, tag or "", descriptor["digest"], manifest_bytes, manifest, config)


def snapshot_tree(root: Path) -> dict[str, tuple]:
    """Describe every entry under `root` by type, mode, owner, size, content digest or link target.

    Directory modification times are left out because unpacking a whiteout rewrites them.
    """
    entries: dict[str, tuple] = {}
    for directory, dir_names, file_names in os.walk(root):
        dir_names.sort()
        for name in [*dir_names, *sorted(file_names)]:
            path = Path(directory, name)
            info = path.lstat()
            relative = str(path.relative_to(root))
            common = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
            if stat.S_ISREG(info.st_mode):
                entries[relative] = (*common, info.st_size, int(info.st_mtime), info.st_nlink, file_digest(path))
            elif stat.S_ISLNK(info.st_mode):
                entries[relative] = (*common, os.readlink(path))
            else:
                entries[relative] = common
    return entries


def unpack_layout(layout: Path, tag: str, bundle: Path) -> Path:
    """Unpack an image of an OCI layout with umoci and return its root file system."""
    run_checked(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], timeout=600)
    return bundle / "rootfs"


def run_checked(argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed with exit status {result.returncode}:\n"
                             f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}")
    return result


# --- Client sandbox: private hosts file, configuration and storage --------------------------------


@dataclass
class ClientSandbox:
    """Configuration, credentials store and storage of container clients run by one test.

    `run` starts a client in a private mount namespace where /etc/hosts lists only the names added
    with `add_host` and /etc/nsswitch.conf resolves host names from files alone, so no test name
    reaches the system DNS resolver. Creating the namespace and its bind mounts needs root.
    """

    root: Path
    host_names: list[str] = field(default_factory=list)
    short_root: Path | None = None

    def __post_init__(self) -> None:
        for name in ("home", "run", "config", "tmp", "etc", "var-lib-containers"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        (self.root / "run").chmod(0o700)
        (self.root / "etc" / "nsswitch.conf").write_text(NSSWITCH_FILES_ONLY)
        self.policy.write_text(json.dumps(POLICY_ACCEPT_ANYTHING))
        self.registries_conf.write_text('unqualified-search-registries = []\nshort-name-mode = "enforcing"\n')
        self.containers_conf.write_text(f'[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n'
                                        f'image_copy_tmp_dir = "{self.root / "tmp"}"\n')
        self.auth_file.write_text('{"auths": {}}\n')
        self._write_hosts()

    @property
    def hosts_file(self) -> Path:
        return self.root / "etc" / "hosts"

    @property
    def policy(self) -> Path:
        return self.root / "etc" / "policy.json"

    @property
    def registries_conf(self) -> Path:
        return self.root / "etc" / "registries.conf"

    @property
    def containers_conf(self) -> Path:
        return self.root / "etc" / "containers.conf"

    @property
    def auth_file(self) -> Path:
        return self.root / "auth.json"

    def add_host(self, *names: str) -> None:
        for name in names:
            if name not in self.host_names:
                self.host_names.append(name)
        self._write_hosts()

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"127.0.0.1 {name}" for name in self.host_names]
        self.hosts_file.write_text("\n".join(lines) + "\n")

    @property
    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("DOCKER_", "REGISTRY_AUTH", "CONTAINERS_", "XDG_", "BUILDAH_"))}
        env.update({
            "HOME": str(self.root / "home"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_DATA_HOME": str(self.root / "home" / ".local" / "share"),
            "TMPDIR": str(self.root / "tmp"),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "DOCKER_CONFIG": str(self.root / "home" / ".docker"),
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
            "CONTAINERS_CONF": str(self.containers_conf),
        })
        return env

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """Return `argv` wrapped to run in a mount namespace with the sandbox hosts file.

        skopeo run as root keeps its blob info cache in /var/lib/containers/cache, so a sandbox
        directory is mounted there too and later runs see no blob locations from this one.
        """
        var_lib_containers = Path("/var/lib/containers")
        script = (f'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf && '
                  f'mount --bind "$3" {var_lib_containers} && shift 3 && exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(self.hosts_file),
                str(self.root / "etc" / "nsswitch.conf"), str(self.root / "var-lib-containers"), *argv]

    def run(self, argv: Sequence[str], *, timeout: float = 600, check: bool = True,
            text: bool = True) -> subprocess.CompletedProcess:
        """Run a client in the sandbox. With `text=False`, stdout and stderr are bytes."""
        # The mount point has to exist; skopeo and podman create this directory on first use anyway.
        Path("/var/lib/containers").mkdir(parents=True, exist_ok=True)
        result = subprocess.run(self.wrap(argv), check=False, capture_output=True, text=text, timeout=timeout,
                                env=self.env, cwd=self.root)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed with exit status {result.returncode}:\n"
                                 f"stdout: {result.stdout[-4000:]!s}\nstderr: {result.stderr[-4000:]!s}")
        return result

    def skopeo(self, *args: str, timeout: float = 600, check: bool = True,
               text: bool = True) -> subprocess.CompletedProcess:
        return self.run(["skopeo", "--policy", str(self.policy), "--tmpdir", str(self.root / "tmp"), *args],
                        timeout=timeout, check=check, text=text)

    def podman_storage(self, name: str) -> list[str]:
        """Return the podman command with global options for a private vfs image store called `name`."""
        storage = self.root / "podman" / name
        # podman 4.3 rejects a run root longer than 50 characters, so it lives in a short /tmp directory.
        if self.short_root is None:
            self.short_root = Path(tempfile.mkdtemp(prefix="crpe-e2e-", dir="/tmp"))
        return ["podman", "--root", str(storage / "root"), "--runroot", str(self.short_root / name),
                "--storage-driver", "vfs", "--tmpdir", str(storage / "tmp"),
                "--events-backend", "none", "--cgroup-manager", "cgroupfs"]

    def close(self) -> None:
        if self.short_root is not None:
            shutil.rmtree(self.short_root, ignore_errors=True)
            self.short_root = None


# --- Registry HTTP client with the Docker token flow --------------------------------------------

_CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')


def parse_bearer_challenge(header: str) -> dict[str, str]:
    scheme, _, parameters = header.partition(" ")
    if scheme.lower() != "bearer":
        raise AssertionError(f"expected a Bearer challenge, got WWW-Authenticate: {header}")
    return dict(_CHALLENGE_PARAMETER.findall(parameters))


@dataclass
class RegistryHTTP:
    """An HTTP client for one registry host name served on 127.0.0.1.

    Requests go to 127.0.0.1:port with the registry host name in the Host header, so nothing is
    resolved. After a 401 Bearer challenge, `request` fetches a token from the challenge's realm,
    with Basic credentials when the client has them, and sends the request again with the token.
    """

    host_name: str
    port: int
    username: str | None = None
    password: str | None = None
    timeout: float = 60

    def __post_init__(self) -> None:
        self.client = httpx.Client(timeout=self.timeout, follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def authority(self) -> str:
        return f"{self.host_name}:{self.port}"

    def send(self, method: str, url: str, headers: dict[str, str], **kwargs) -> httpx.Response:
        """Send one request to `url` on this registry host and return the response, even a challenge."""
        parts = urlsplit(url)
        if parts.hostname != self.host_name or parts.port != self.port:
            raise AssertionError(f"request to {url} leaves the registry host {self.authority}")
        loopback_url = f"http://127.0.0.1:{self.port}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        return self.client.request(method, loopback_url, headers={"Host": self.authority, **headers}, **kwargs)

    def token_response(self, challenge: dict[str, str], *, anonymous: bool = False) -> httpx.Response:
        params = {key: challenge[key] for key in ("service", "scope") if key in challenge}
        headers = {}
        if not anonymous and self.username is not None:
            credentials = f"{self.username}:{self.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        query = httpx.QueryParams(params)
        url = challenge["realm"] + (f"?{query}" if params else "")
        return self.send("GET", url, headers)

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                anonymous: bool = False, **kwargs) -> httpx.Response:
        """Send a request with the Docker token flow.

        When the token request fails, its response is returned in place of the registry's.
        """
        url = f"http://{self.authority}{path}"
        headers = dict(headers or {})
        response = self.send(method, url, headers, **kwargs)
        challenge_header = response.headers.get("WWW-Authenticate", "")
        if response.status_code != 401 or not challenge_header.lower().startswith("bearer"):
            return response
        challenge = parse_bearer_challenge(challenge_header)
        token_response = self.token_response(challenge, anonymous=anonymous)
        if token_response.status_code != 200:
            return token_response
        body = token_response.json()
        token = body.get("token") or body.get("access_token")
        return self.send(method, url, {**headers, "Authorization": f"Bearer {token}"}, **kwargs)

    def get_manifest(self, repository: str, reference: str, **kwargs) -> httpx.Response:
        return self.request("GET", f"/v2/{repository}/manifests/{reference}",
                            headers={"Accept": MANIFEST_ACCEPT}, **kwargs)


def registry_error(response: httpx.Response) -> dict:
    """Return the first entry of an OCI error body, failing with the body when it has none."""
    try:
        errors = response.json()["errors"]
    except (ValueError, KeyError, TypeError) as error:
        raise AssertionError(f"response {response.status_code} has no OCI error body: {response.text!r}") from error
    if not errors:
        raise AssertionError(f"response {response.status_code} has an empty errors list")
    return errors[0]


# --- In-process name mapping for Python clients ---------------------------------------------------


@contextmanager
def resolve_only(names: dict[str, str]) -> Iterator[None]:
    """Make socket.getaddrinfo map `names` to addresses and reject every other host name.

    IP literals still work. The system resolver is never asked, so Python clients in the test
    process (requests, used by oras) reach only the test server.
    """
    system_getaddrinfo = socket.getaddrinfo
    mapping = {name.lower(): address for name, address in names.items()}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        address = mapping.get((name or "").lower().rstrip("."))
        if address is None:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                raise socket.gaierror(socket.EAI_NONAME,
                                      f"{name} is not a test host name; only {sorted(mapping)} resolve") from None
            address = name
        return system_getaddrinfo(address, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = system_getaddrinfo


def require_tools(*names: str) -> list:
    """Return skip marks for client binaries missing from PATH, naming the Debian package to install."""
    import pytest

    marks = []
    for name in names:
        package = DEBIAN_PACKAGE_OF.get(name, name)
        marks.append(pytest.mark.skipif(shutil.which(name) is None,
                                        reason=f"{name} is not installed (Debian package {package})"))
    return marks


DEBIAN_PACKAGE_OF = {
    "skopeo": "skopeo",
    "podman": "podman",
    "umoci": "umoci",
    "mmdebstrap": "mmdebstrap",
    "unshare": "util-linux",
}
