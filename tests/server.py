"""A real `crpe serve` process for tests, driven through its CLI and HTTP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

TEST_DOMAIN = "crpe.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def crpe_command() -> list[str]:
    executable = shutil.which("crpe")
    return [executable] if executable else [sys.executable, "-m", "crpe"]


@dataclass
class Instance:
    id: str
    region: str
    public: str
    vpc: str
    username: str = ""
    password: str = ""


@dataclass
class CrpeServer:
    """One server: its data directory, its CLI profile and the address it listens on."""

    root: Path
    domain: str = TEST_DOMAIN
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["XDG_CONFIG_HOME"] = str(self.root / "config")
        env.update(self.extra_env)
        return env

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> CrpeServer:
        self.port = self.port or free_port()
        with open(self.root / "server.log", "ab") as log:
            # The child keeps its own descriptor of the log, so ours can close at once.
            self.process = subprocess.Popen(
                [*crpe_command(), "serve", "--data-dir", str(self.root / "data"),
                 "--listen", self.address, "--domain", self.domain, *self.extra_args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"crpe serve exited with {self.process.returncode}: "
                                   f"{(self.root / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("crpe serve did not become ready within 30 seconds")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*crpe_command(), *args], env=self.env, input=input,
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"crpe {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def cli_json(self, *args: str, input: str | None = None) -> dict | list:
        return json.loads(self.cli(*args, "--output", "json", input=input).stdout)

    def create_instance(self, region: str = "cn-hangzhou", namespaces: tuple[str, ...] = ("team",),
                        password: str | None = "Secret-pass-1") -> Instance:
        created = self.cli_json("instance", "create", "--region", region)
        instance = Instance(created["id"], created["region"], created["endpoints"]["public"],
                            created["endpoints"]["vpc"])
        for namespace in namespaces:
            self.cli("namespace", "create", "--instance", instance.id, namespace)
        if password is not None:
            login = self.cli_json("password", "set", "--instance", instance.id, input=password)
            instance.username, instance.password = login["username"], password
        return instance

    def host(self, host_name: str) -> str:
        """Return `host:port` for a registry host name served by this server."""
        return f"{host_name}:{self.port}"
