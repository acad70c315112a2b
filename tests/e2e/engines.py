"""Run the Docker engine (dockerd) and containerd as test clients, and read crpe's access log.

Both daemons run in the mount namespace of a ClientSandbox, so they resolve registry host names from the
sandbox hosts file alone. The daemon, not the docker CLI, resolves the registry name; ctr resolves it
itself, so ctr runs in that namespace too. Every folder and socket lives under the directory given to
`start_engines`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from e2e_support import ClientSandbox

# Debian package that installs each program these tests run.
ENGINE_PACKAGE_OF = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "containerd": "containerd",
    "ctr": "containerd",
    "skopeo": "skopeo",
    "unshare": "util-linux",
    "nsenter": "util-linux",
}

READY_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 20
# The kernel rejects a Unix socket path longer than 107 bytes (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107


def require_engine_tools() -> list:
    """Return skip marks for the programs in ENGINE_PACKAGE_OF that are missing from PATH."""
    import pytest

    return [pytest.mark.skipif(shutil.which(name) is None,
                               reason=f"{name} is not installed (Debian package {package})")
            for name, package in ENGINE_PACKAGE_OF.items()]


def docker_cli() -> str:
    """Return the docker CLI of Debian's docker.io, which matches its dockerd.

    The tests expect the output of that CLI, so another docker earlier on PATH, such as a newer
    static build in /usr/local/bin, is not used while /usr/bin/docker exists.
    """
    debian_cli = Path("/usr/bin/docker")
    if debian_cli.exists():
        return str(debian_cli)
    found = shutil.which("docker")
    if found is None:
        raise RuntimeError("docker is not installed (Debian package docker.io)")
    return found


def containerd_config(root: Path) -> str:
    # The CRI plugin is off because no container runs, and it would look for CNI and a sandbox image.
    # With the "isolated" content sharing policy, a pull into one containerd namespace downloads every
    # blob, even one that another namespace already has (the default policy, "shared", reuses it).
    return (f'version = 2\n'
            f'root = "{root / "containerd-root"}"\n'
            f'state = "{root / "containerd-state"}"\n'
            f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n'
            f'  address = "{root / "containerd.sock"}"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{root / "containerd-opt"}"\n'
            f'[plugins."io.containerd.metadata.v1.bolt"]\n'
            f'  content_sharing_policy = "isolated"\n')


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except FileNotFoundError:
        return "(no log written)"


def _stop_process_group(process: subprocess.Popen, name: str) -> None:
    """Stop a daemon started with start_new_session=True, together with any child in its process group."""
    if process.poll() is not None:
        return
    # While the leader runs, its process group id is its pid and contains only processes started here.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as timeout:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        raise RuntimeError(f"{name} did not stop within {STOP_TIMEOUT_SECONDS} s of SIGTERM, "
                           f"so its process group was killed") from timeout


@dataclass
class Engines:
    """containerd and dockerd started in a sandbox's mount namespace, with their folders under `root`."""

    root: Path
    sandbox: ClientSandbox
    containerd: subprocess.Popen | None = None
    dockerd: subprocess.Popen | None = None

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def docker_socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def docker_config(self) -> Path:
        """The docker CLI's configuration folder (DOCKER_CONFIG), where `docker login` stores credentials."""
        return Path(self.sandbox.env["DOCKER_CONFIG"])

    def in_namespace(self, argv: Sequence[str]) -> list[str]:
        """Return `argv` wrapped to run in the daemons' mount namespace."""
        if self.containerd is None or self.containerd.poll() is not None:
            raise RuntimeError("containerd is not running, so its mount namespace is gone")
        return ["nsenter", "--target", str(self.containerd.pid), "--mount", *argv]

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.in_namespace(argv), check=False, capture_output=True, text=True,
                                input=input, timeout=timeout, env=env or self.sandbox.env, cwd=self.root)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed with exit status {result.returncode}:\n"
                                 f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}")
        return result

    def docker(self, *args: str, docker_config: Path | None = None, input: str | None = None,
               timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this dockerd, with the sandbox's DOCKER_CONFIG unless one is given."""
        env = {**self.sandbox.env, "DOCKER_HOST": f"unix://{self.docker_socket}"}
        if docker_config is not None:
            env["DOCKER_CONFIG"] = str(docker_config)
        return self.run([docker_cli(), *args], env=env, input=input, timeout=timeout, check=check)

    def ctr(self, namespace: str, *args: str, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ctr against this containerd in the containerd namespace `namespace`."""
        return self.run(["ctr", "--address", str(self.containerd_socket), "--namespace", namespace, *args],
                        timeout=timeout, check=check)

    def ctr_image_digests(self, namespace: str) -> dict[str, str]:
        """Return the target digest of each image of a containerd namespace, by image name."""
        listing = self.ctr(namespace, "images", "list").stdout.splitlines()
        digests = {}
        # Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS, separated by runs of spaces.
        for line in listing[1:]:
            fields = line.split()
            if fields:
                digests[fields[0]] = fields[2]
        return digests

    def docker_inspect(self, reference: str) -> dict:
        return json.loads(self.docker("image", "inspect", reference).stdout)[0]

    def start(self, insecure_registries: Sequence[str]) -> None:
        for path in (self.containerd_socket, self.docker_socket):
            if len(str(path)) > MAX_SOCKET_PATH:
                raise RuntimeError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes, which the "
                                   f"kernel rejects. Run pytest with a shorter --basetemp.")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._start_containerd()
            self._start_dockerd(insecure_registries)
        except BaseException:
            self.stop()
            raise

    def _start_containerd(self) -> None:
        config = self.root / "containerd.toml"
        config.write_text(containerd_config(self.root))
        log_path = self.root / "containerd.log"
        # sandbox.wrap bind-mounts a sandbox folder on /var/lib/containers, which has to exist.
        Path("/var/lib/containers").mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # unshare and the wrapping shell exec the daemon, so the Popen pid is containerd's pid.
            self.containerd = subprocess.Popen(
                self.sandbox.wrap(["containerd", "--config", str(config)]), env=self.sandbox.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready("containerd", self.containerd, log_path, self._containerd_answers)
        self.ctr("default", "version")

    def _start_dockerd(self, insecure_registries: Sequence[str]) -> None:
        config = self.root / "daemon.json"
        # dockerd 20.10 rejects --deprecated-key-path on the command line but reads it from daemon.json.
        config.write_text(json.dumps({"deprecated-key-path": str(self.root / "docker-key.json")}))
        argv = ["dockerd", "--config-file", str(config), "--data-root", str(self.root / "docker-root"),
                "--exec-root", str(self.root / "docker-exec"), "--pidfile", str(self.root / "docker.pid"),
                "-H", f"unix://{self.docker_socket}", "--storage-driver", "vfs",
                "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false", "--ip-masq=false",
                "--userland-proxy=false", "--containerd", str(self.containerd_socket)]
        for registry in insecure_registries:
            argv += ["--insecure-registry", registry]
        log_path = self.root / "dockerd.log"
        with open(log_path, "ab") as log:
            # nsenter with only --mount execs the daemon, so the Popen pid is dockerd's pid.
            self.dockerd = subprocess.Popen(
                self.in_namespace(argv), env=self.sandbox.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready("dockerd", self.dockerd, log_path, self._dockerd_answers)

    def _containerd_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.containerd_socket))
            except (FileNotFoundError, ConnectionRefusedError):
                return False
        return True

    def _dockerd_answers(self) -> bool:
        if not self.docker_socket.exists():
            return False
        transport = httpx.HTTPTransport(uds=str(self.docker_socket))
        try:
            with httpx.Client(transport=transport, timeout=2) as client:
                return client.get("http://dockerd/_ping").text == "OK"
        except httpx.TransportError:
            return False

    @staticmethod
    def _wait_ready(name: str, process: subprocess.Popen, log_path: Path, answers) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode} before it was ready:\n"
                                   f"{_log_tail(log_path)}")
            if answers():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer on its socket within {READY_TIMEOUT_SECONDS} s:\n"
                           f"{_log_tail(log_path)}")

    def stop(self) -> None:
        """Stop dockerd, then containerd, whose exit also ends the mount namespace."""
        errors = []
        for name, process in (("dockerd", self.dockerd), ("containerd", self.containerd)):
            if process is None:
                continue
            try:
                _stop_process_group(process, name)
            except RuntimeError as error:
                errors.append(str(error))
        if errors:
            raise RuntimeError("; ".join(errors))


def start_engines(sandbox: ClientSandbox, root: Path, insecure_registries: Sequence[str]) -> Engines:
    """Start containerd, then dockerd with `insecure_registries` (host:port) reached over plain HTTP."""
    engines = Engines(root, sandbox)
    engines.start(insecure_registries)
    return engines


# --- crpe's access log ---------------------------------------------------------------------------

_ACCESS_LINE = re.compile(r"http\.request\.method=(\S+) http\.request\.host=(\S+) http\.request\.uri=(\S+) "
                          r"http\.response\.status=(\d+)")


@dataclass(frozen=True)
class AccessLine:
    """One request of crpe's access log."""

    method: str
    host: str
    uri: str
    status: int


def access_lines(server_log: Path, host: str) -> list[AccessLine]:
    """Return the access log lines of requests whose Host header is `host` (host:port), oldest first."""
    lines = []
    for match in _ACCESS_LINE.finditer(server_log.read_text(errors="replace")):
        method, request_host, uri, status = match.groups()
        if request_host == host:
            lines.append(AccessLine(method, request_host, uri, int(status)))
    return lines
