"""Start the servers under test on 127.0.0.1 and talk to them over plain HTTP.

Every request goes to 127.0.0.1 with the registry host name in the Host header, so the
`.test` host names of crpe never reach a DNS resolver.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

STOCK_DISTRIBUTION_CONFIG = Path("/etc/docker/registry/config.yml")
DISTRIBUTION_BINARY = "/usr/bin/docker-registry"
POSTGRES_BINARIES = Path("/usr/lib/postgresql")
# The system user that Debian's `postgresql` package creates, and the superuser that initdb creates here.
POSTGRES_USER = "postgres"


class BenchmarkError(RuntimeError):
    """A step of the benchmark failed; the message carries the request and response."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def http_request(
    port: int, method: str, path: str, host: str, headers: dict[str, str] | None = None, timeout: float = 30
) -> Response:
    """Send one request to 127.0.0.1:`port` with `host` in the Host header."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        body = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()


def describe_exchange(method: str, path: str, host: str, headers: dict[str, str], response: Response) -> str:
    """Format a request and its response for an error report, with credentials masked."""
    masked_headers = {
        name: ("<redacted>" if name.lower() == "authorization" else value) for name, value in headers.items()
    }
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in masked_headers.items()]
    lines += ["", f"-> HTTP {response.status}"]
    lines += [f"{name}: {value}" for name, value in sorted(response.headers.items())]
    lines += ["", response.body[:600].decode("utf-8", "replace")]
    return "\n".join(lines)


def wait_for_http(
    port: int,
    path: str,
    host: str,
    process: subprocess.Popen,
    log: Path,
    expected: tuple[int, ...] = (200,),
    timeout: float = 30,
) -> None:
    deadline = time.monotonic() + timeout
    last_error = "no response"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(
                f"server exited with code {process.returncode} during start-up; last lines of {log}:\n{tail(log)}"
            )
        try:
            status = http_request(port, "GET", path, host, timeout=2).status
            if status in expected:
                return
            last_error = f"HTTP {status}"
        except OSError as error:
            last_error = str(error)
        time.sleep(0.1)
    raise BenchmarkError(
        f"GET http://127.0.0.1:{port}{path} did not return {expected} within "
        f"{timeout:.0f} s (last: {last_error}); last lines of {log}:\n{tail(log)}"
    )


def tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def stop_process(process: subprocess.Popen | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """Split a WWW-Authenticate value such as `Bearer realm="...",service="..."`."""
    scheme, _, rest = value.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


def process_tree(root_pid: int) -> list[int]:
    """Return `root_pid` and the pids of all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [root_pid]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root_pid: int) -> float:
    """Return the CPU time, user and system, of `root_pid` and its live descendants, in seconds.

    Each process adds its own time and that of the children it has waited for, so a descendant
    that exited still counts once its parent in the tree has reaped it.
    """
    ticks = 0
    for pid in process_tree(root_pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state) of proc(5), so utime, stime, cutime and cstime (fields 14 to 17)
        # are at 11 to 14.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class MemorySampler:
    """Sample the resident memory of a process and all its descendants.

    The gated figure is the maximum over samples of the summed VmRSS, in which pages that
    several processes share count once per process. The peak summed PSS splits shared pages
    between their users. The sum of VmHWM over the processes alive at the end is an upper
    bound, because each process reaches its own peak at its own time.
    """

    TREE_REFRESH_SAMPLES = 5

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self.max_processes = 0
        self._tree: list[int] = []
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def process_tree(self) -> list[int]:
        return process_tree(self.pid)

    @staticmethod
    def read_kib(path: str, field_name: str) -> int:
        """Return a `Name: N kB` field of a /proc file, or 0 once the process has exited."""
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        """Add one sample; the process tree is rescanned every few samples because it rarely changes."""
        if self._samples % self.TREE_REFRESH_SAMPLES == 0:
            self._tree = self.process_tree()
        self._samples += 1
        rss = sum(self.read_kib(f"/proc/{pid}/status", "VmRSS") for pid in self._tree)
        pss = sum(self.read_kib(f"/proc/{pid}/smaps_rollup", "Pss") for pid in self._tree)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)
        self.max_processes = max(self.max_processes, len(self._tree))

    def hwm_sum_kib(self) -> int:
        return sum(self.read_kib(f"/proc/{pid}/status", "VmHWM") for pid in self.process_tree())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


@dataclass
class Registry:
    """A registry under test: where to connect, which host names to use and how to log in."""

    name: str
    root: Path
    port: int = 0
    push_host: str = ""
    pull_host: str = ""
    username: str = ""
    password: str = ""
    process: subprocess.Popen | None = None
    sampler: MemorySampler | None = None
    extra_hosts: list[str] = field(default_factory=list)
    log_name: str = "server.log"

    @property
    def log(self) -> Path:
        return self.root / self.log_name

    def bearer_headers(self, repository: str, actions: str = "pull") -> dict[str, str]:
        """Return the Authorization header for pulls from `repository`, if the registry needs one."""
        return {}

    def skopeo_creds(self) -> str | None:
        return f"{self.username}:{self.password}" if self.username else None

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()
        stop_process(self.process)


class Distribution(Registry):
    """Debian's CNCF distribution registry with its stock configuration."""

    def start(self) -> Distribution:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.push_host = self.pull_host = f"127.0.0.1:{self.port}"
        config = self.root / "config.yml"
        config.write_text(json.dumps(self.configuration(), indent=2))
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [DISTRIBUTION_BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for_http(self.port, "/v2/", self.pull_host, self.process, self.log)
        self.sampler = MemorySampler(self.process.pid).start()
        return self

    def configuration(self) -> dict:
        """Return the stock Debian configuration with storage and address moved into the test.

        The stock file enables htpasswd authentication with `path: /etc/docker/registry`.
        That path is a directory, so no credential can pass, and the `auth` section is
        dropped: distribution is measured anonymous. The file is written as JSON, which is
        valid YAML for the registry's parser.
        """
        config = load_stock_distribution_config()
        config.pop("auth", None)
        config["storage"]["filesystem"]["rootdirectory"] = str(self.root / "data")
        config.setdefault("http", {})["addr"] = f"127.0.0.1:{self.port}"
        return config


def load_stock_distribution_config() -> dict:
    """Read /etc/docker/registry/config.yml, or fall back to the Debian 2.8.2+ds1-1 copy."""
    try:
        import yaml

        return yaml.safe_load(STOCK_DISTRIBUTION_CONFIG.read_text())
    except (ImportError, OSError):
        return {
            "version": 0.1,
            "log": {"fields": {"service": "registry"}},
            "storage": {
                "cache": {"blobdescriptor": "inmemory"},
                "filesystem": {"rootdirectory": "/var/lib/docker-registry"},
                "delete": {"enabled": True},
            },
            "http": {"addr": ":5000", "headers": {"X-Content-Type-Options": ["nosniff"]}},
            "auth": {"htpasswd": {"realm": "basic-realm", "path": "/etc/docker/registry"}},
            "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
        }


@dataclass
class Crpe(Registry):
    """crpe with one new instance and namespace `bench`, by default on its embedded SQLite database.

    Several nodes of one deployment share `root`, and so the data directory and the CLI profile, and
    `database_url`. Each node has its own `log_name`. The first node to start creates the schema, the
    administrator and the CLI profile, which points at that node.
    """

    crpe_binary: str = "crpe"
    domain: str = "crpe.test"
    namespace: str = "bench"
    instance_id: str = ""
    public_host: str = ""
    vpc_host: str = ""
    # 0 keeps crpe's default, one worker process per CPU core.
    workers: int = 0
    # "" keeps crpe's default, SQLite in the data directory.
    database_url: str = ""
    # The memory sampler reads /proc five times a second, which costs CPU that other servers could use.
    sample_memory: bool = True

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "XDG_CONFIG_HOME": str(self.root / "config")}
        if self.workers:
            env["CRPE_WORKERS"] = str(self.workers)
        if self.database_url:
            env["CRPE_DATABASE_URL"] = self.database_url
        return env

    def cli(self, *args: str, stdin: str | None = None) -> str:
        command = [self.crpe_binary, *args]
        result = subprocess.run(
            command, env=self.env, input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise BenchmarkError(
                f"`crpe {' '.join(args)}` exited with code {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def cli_json(self, *args: str, stdin: str | None = None) -> dict:
        output = self.cli(*args, "--output", "json", stdin=stdin)
        try:
            return json.loads(output)
        except json.JSONDecodeError as error:
            raise BenchmarkError(
                f"`crpe {' '.join(args)} --output json` printed invalid JSON ({error}):\n{output}"
            ) from None

    def start(self) -> Crpe:
        self.launch()
        self.provision()
        return self

    def launch(self) -> Crpe:
        """Start `crpe serve` on a free port and wait until /healthz returns 200."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                self.crpe_binary,
                "serve",
                "--data-dir",
                str(self.root / "data"),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--domain",
                self.domain,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(self.port, "/healthz", f"127.0.0.1:{self.port}", self.process, self.log)
        if self.sample_memory:
            self.sampler = MemorySampler(self.process.pid).start()
        return self

    def provision(self) -> None:
        """Create an instance, the namespace and a login password through the CLI profile."""
        created = self.cli_json("instance", "create", "--region", "cn-hangzhou")
        self.instance_id = created["id"]
        self.public_host = created["endpoints"]["public"]
        self.vpc_host = created["endpoints"]["vpc"]
        self.push_host = f"{self.public_host}:{self.port}"
        self.pull_host = f"{self.vpc_host}:{self.port}"
        self.extra_hosts = [self.public_host, self.vpc_host]
        self.cli("namespace", "create", "--instance", self.instance_id, self.namespace)
        self.password = "Bench-" + os.urandom(12).hex()
        login = self.cli_json("password", "set", "--instance", self.instance_id, stdin=self.password)
        self.username = login["username"]

    def join(self, first: Crpe) -> Crpe:
        """Take the instance and login that `first` created in the shared database, served on this node's port."""
        self.instance_id = first.instance_id
        self.public_host, self.vpc_host = first.public_host, first.vpc_host
        self.push_host = f"{self.public_host}:{self.port}"
        self.pull_host = f"{self.vpc_host}:{self.port}"
        self.extra_hosts = list(first.extra_hosts)
        self.username, self.password = first.username, first.password
        return self

    def bearer_headers(self, repository: str, actions: str = "pull") -> dict[str, str]:
        """Fetch a token from the realm named in the /v2/ challenge of the VPC host."""
        probe = http_request(self.port, "GET", "/v2/", self.pull_host)
        challenge = probe.header("www-authenticate")
        scheme, params = parse_challenge(challenge)
        if probe.status != 401 or scheme != "bearer" or "realm" not in params:
            raise BenchmarkError(
                "expected a Bearer challenge:\n" + describe_exchange("GET", "/v2/", self.pull_host, {}, probe)
            )

        realm = params["realm"]
        match = re.match(r"https?://([^/]+)(/.*)?$", realm)
        if not match:
            raise BenchmarkError(f"the token realm {realm!r} is not an http(s) URL")
        realm_host, realm_path = match.group(1), match.group(2) or "/"
        query = urllib.parse.urlencode(
            {"service": params.get("service", ""), "scope": f"repository:{repository}:{actions}"}
        )
        path = f"{realm_path}?{query}"
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}"}
        response = http_request(self.port, "GET", path, realm_host, headers)
        if response.status != 200:
            raise BenchmarkError(
                "token request failed:\n" + describe_exchange("GET", path, realm_host, headers, response)
            )
        document = json.loads(response.body)
        token = document.get("token") or document.get("access_token")
        if not token:
            raise BenchmarkError(
                "token response has no token:\n" + describe_exchange("GET", path, realm_host, headers, response)
            )
        return {"Authorization": f"Bearer {token}"}


@dataclass
class Nginx:
    """nginx with sendfile serving one directory, for the physical ceiling of blob GET."""

    root: Path
    document_root: Path
    port: int = 0
    process: subprocess.Popen | None = None

    def start(self) -> Nginx:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.root / "nginx.conf"
        config.write_text(f"""
user root;
worker_processes auto;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {self.root}/client_body;
    proxy_temp_path {self.root}/proxy;
    fastcgi_temp_path {self.root}/fastcgi;
    uwsgi_temp_path {self.root}/uwsgi;
    scgi_temp_path {self.root}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.document_root};
    }}
}}
""")
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        log = (self.root / "stderr.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "-e",
                str(self.root / "error.log"),
                "-p",
                str(self.root),
                "-c",
                str(config),
                "-g",
                "daemon off;",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(
            self.port,
            "/",
            f"127.0.0.1:{self.port}",
            self.process,
            self.root / "error.log",
            expected=(200, 403, 404),
        )
        return self

    def stop(self) -> None:
        stop_process(self.process)


def find_postgres_bin_dir() -> Path | None:
    """Return the bin directory of the highest PostgreSQL version that Debian installed, or None."""
    if not POSTGRES_BINARIES.is_dir():
        return None
    versions = []
    for entry in POSTGRES_BINARIES.iterdir():
        bin_dir = entry / "bin"
        if re.fullmatch(r"\d+(\.\d+)?", entry.name) and (bin_dir / "initdb").is_file():
            versions.append((tuple(int(part) for part in entry.name.split(".")), bin_dir))
    return max(versions)[1] if versions else None


def postgres_version() -> str:
    bin_dir = find_postgres_bin_dir()
    if bin_dir is None:
        return "not installed"
    result = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return (result.stdout + result.stderr).strip() or f"unknown ({bin_dir / 'postgres'} printed nothing)"


@dataclass
class Postgres:
    """A throwaway PostgreSQL server from Debian's binaries on 127.0.0.1, with trust authentication.

    PostgreSQL does not run as root, so as root every server command runs as the `postgres` system
    user through setpriv. setpriv replaces itself with the server, so the server is a child of the
    benchmark and its CPU time counts as the benchmark's own. `root` must be reachable by that
    user, so it cannot lie inside the benchmark's private temporary directory.
    """

    root: Path
    database: str = "crpe"
    port: int = 0
    bin_dir: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> Postgres:
        """Create a cluster in `root`, start the server on a free port and create `database`."""
        self.bin_dir = find_postgres_bin_dir()
        if self.bin_dir is None:
            raise BenchmarkError(
                f"PostgreSQL server binaries not found in {POSTGRES_BINARIES}/*/bin. "
                "Install them with: apt-get install -y postgresql"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(POSTGRES_USER)
            except KeyError:
                raise BenchmarkError(
                    f"PostgreSQL does not run as root, and the system user {POSTGRES_USER!r} is missing. "
                    "Install the Debian package postgresql, which creates it."
                ) from None
            shutil.chown(self.root, POSTGRES_USER, POSTGRES_USER)

        initdb = [str(self.bin_dir / "initdb"), f"--username={POSTGRES_USER}", "--auth=trust", "--encoding=UTF8"]
        self.run(self.as_postgres([*initdb, "--no-locale", "--no-sync", "-D", str(self.data_dir)]), timeout=120)
        self.port = free_port()
        server = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.data_dir}",
        ]
        log = self.log.open("ab")
        self.process = subprocess.Popen(self.as_postgres(server), stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        self.wait_until_ready()
        createdb = [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", POSTGRES_USER]
        self.run([*createdb, self.database])
        return self

    def wait_until_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        ready = [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", POSTGRES_USER]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(
                    f"PostgreSQL exited with code {self.process.returncode} during start-up. "
                    f"Last lines of {self.log}:\n{tail(self.log)}"
                )
            if subprocess.run(ready, capture_output=True, timeout=10, check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise BenchmarkError(
            f"PostgreSQL on 127.0.0.1:{self.port} was not ready within {timeout:.0f} s. "
            f"Last lines of {self.log}:\n{tail(self.log)}"
        )

    @staticmethod
    def as_postgres(command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        return ["setpriv", f"--reuid={POSTGRES_USER}", f"--regid={POSTGRES_USER}", "--init-groups", "--", *command]

    def run(self, command: list[str], timeout: float = 60) -> None:
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
            )
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"`{' '.join(command)}` timed out after {timeout:.0f} s") from None
        if result.returncode != 0:
            raise BenchmarkError(
                f"`{' '.join(command)}` exited with code {result.returncode}:\n{result.stdout}{result.stderr}"
            )

    def stop(self, timeout: float = 30) -> None:
        """Stop the server with a fast shutdown (SIGINT), which ends open sessions, then SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
