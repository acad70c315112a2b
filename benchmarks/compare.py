#!/usr/bin/env python3
"""Benchmark crpe side by side with Debian's CNCF distribution registry.

Both registries run on 127.0.0.1 with filesystem storage in one temporary directory.
Every row is measured for both registries in turn (crpe, distribution, crpe, ...) over
several rounds, and the report gives the medians, the ratio crpe/distribution and a
pass or fail against the project's targets. nginx with sendfile and hashlib's SHA-256
give the physical ceiling of this machine. The results go to stdout and to
docs/benchmarks.md.

Run as root from the repository root:

    python3 benchmarks/compare.py            # full run, 3 rounds: 6 minutes measured on 2 cores
    python3 benchmarks/compare.py --quick    # smoke run with small images and short loads
    python3 benchmarks/compare.py --registry distribution   # without crpe
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from oci_layout import OCI_MANIFEST, Image, write_image
from report import Report
from servers import BenchmarkError, Crpe, Distribution, Nginx, Registry, describe_exchange, http_request, tail

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
STARTED = time.monotonic()

# Debian package for each command the benchmark runs.
REQUIRED_PACKAGES = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "wrk": "wrk",
    "hey": "hey",
    "curl": "curl",
    "nginx": "nginx-light",
    "unshare": "util-linux",
}

# skopeo, as root, keeps a blob-location cache in this directory and would mount blobs
# from an earlier repository instead of uploading them. Every skopeo run gets an empty
# tmpfs here, inside its own mount namespace.
SKOPEO_CACHE_DIR = "/var/lib/containers/cache"
SKOPEO_NAMESPACE_SCRIPT = (
    f'mount --bind "$0" /etc/hosts && mount -t tmpfs -o size=64m tmpfs {SKOPEO_CACHE_DIR} && exec "$@"'
)


@dataclass
class Settings:
    rounds: int
    quick: bool
    blob_bytes: int
    concurrent_image_bytes: int
    concurrent_pushes: int = 8
    small_layers: int = 64
    small_layer_bytes: int = 16 << 10
    blob_downloads: int = 3
    load_seconds: int = 10
    load_warmup_seconds: int = 1
    load_connections: int = 32
    wrk_threads: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        if args.quick:
            settings = cls(rounds=3, quick=True, blob_bytes=64 * MIB, concurrent_image_bytes=8 * MIB, load_seconds=3)
        else:
            settings = cls(rounds=3, quick=False, blob_bytes=1024 * MIB, concurrent_image_bytes=128 * MIB)
        if args.rounds is not None:
            settings.rounds = args.rounds
        return settings


@dataclass
class Images:
    big: Image
    layered: Image
    concurrent: list[Image] = field(default_factory=list)


# Environment and tools


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


def find_command(name: str) -> str | None:
    return shutil.which(name) or next(
        (path for path in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(path, os.X_OK)), None
    )


def wait_for_package_manager(timeout: float = 1200) -> None:
    """Wait until no apt-get or dpkg runs, so this script never starts a second one."""
    deadline = time.monotonic() + timeout
    announced = False
    while any(
        subprocess.run(["pgrep", "-x", name], capture_output=True, check=False).returncode == 0
        for name in ("apt-get", "dpkg")
    ):
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"apt-get or dpkg is still running after {timeout:.0f} s; rerun the benchmark when it has finished"
            )
        if not announced:
            log("waiting for a running apt-get or dpkg to finish")
            announced = True
        time.sleep(5)


def install_missing_tools() -> None:
    missing = sorted({package for command, package in REQUIRED_PACKAGES.items() if not find_command(command)})
    if not missing:
        return
    wait_for_package_manager()
    missing = sorted({package for command, package in REQUIRED_PACKAGES.items() if not find_command(command)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchmarkError(
            f"missing Debian packages {' '.join(missing)}; install them as root "
            f"with: apt-get install -y {' '.join(missing)}"
        )

    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        wait_for_package_manager()
        subprocess.run(["apt-get", "update"], env=env, check=True)
        wait_for_package_manager()
        subprocess.run(install, env=env, check=True)


def find_crpe(requested: str | None) -> str:
    """Return the crpe executable, installing the repository into .venv when it is missing."""
    if requested:
        return requested
    venv_crpe = REPOSITORY_ROOT / ".venv" / "bin" / "crpe"
    if venv_crpe.exists():
        return str(venv_crpe)
    on_path = shutil.which("crpe")
    if on_path:
        return on_path
    if not (REPOSITORY_ROOT / "src" / "crpe" / "cli.py").exists():
        raise BenchmarkError(
            "crpe is not installed and src/crpe/cli.py does not exist yet; "
            "pass --registry distribution to measure distribution alone"
        )
    log(f"installing crpe into {REPOSITORY_ROOT / '.venv'}")
    subprocess.run([sys.executable, "-m", "venv", str(REPOSITORY_ROOT / ".venv")], check=True)
    subprocess.run(
        [str(REPOSITORY_ROOT / ".venv" / "bin" / "pip"), "install", "--quiet", "-e", str(REPOSITORY_ROOT)],
        check=True,
    )
    return str(venv_crpe)


def command_output(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def crpe_version(crpe_binary: str) -> str:
    """Describe the crpe under test: package version, source directory and git commit."""
    python = Path(crpe_binary).parent / "python"
    if not python.exists():
        return f"unknown (executable {crpe_binary})"
    found = command_output(
        [str(python), "-c", "import crpe, importlib.metadata as m; print(m.version('crpe'), crpe.__file__)"]
    )
    version, _, module_file = found.partition(" ")
    source = Path(module_file).resolve().parent if module_file else None
    description = f"{version} from {source}"
    if source and source.is_relative_to(REPOSITORY_ROOT):
        commit = command_output(["git", "-C", str(REPOSITORY_ROOT), "rev-parse", "--short", "HEAD"])
        changed = subprocess.run(
            ["git", "-C", str(REPOSITORY_ROOT), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        description += f", git {commit}" + (" with uncommitted changes in src/" if changed else "")
    return description


def collect_versions(crpe_binary: str | None) -> dict[str, str]:
    versions = {}
    if crpe_binary:
        versions["crpe"] = crpe_version(crpe_binary)
    versions.update(
        {
            "distribution": command_output(["/usr/bin/docker-registry", "--version"]),
            "skopeo": command_output(["skopeo", "--version"]),
            "hey": "Debian package " + command_output(["dpkg-query", "-W", "-f=${Version}", "hey"]),
            "wrk": command_output(["wrk", "-v"]),
            "curl": command_output(["curl", "--version"]),
            "nginx": command_output([find_command("nginx") or "nginx", "-v"]),
            "Python": platform.python_version(),
            "kernel": platform.release(),
        }
    )
    return versions


def describe_machine() -> dict[str, str]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")
    )
    return {"cores": str(os.cpu_count()), "memory": f"{memory_kib / MIB:.1f} GiB", "CPU model": cpu_model}


def machine_busy_seconds() -> float:
    """Return the CPU time all cores have spent outside idle and iowait since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """Return the CPU time of this process and of the children it has waited for.

    The servers' workers and the clients are waited for by their parents, so their time
    is included once the run has stopped them.
    """
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


# Clients


def skopeo_copy(
    source: str,
    destination: str,
    hosts_file: Path,
    *,
    source_creds: str | None = None,
    destination_creds: str | None = None,
    timeout: float = 900,
) -> float:
    """Run `skopeo copy` in a private mount namespace and return its wall time in seconds.

    The namespace maps the registry host names to 127.0.0.1 through `hosts_file` and hides
    skopeo's blob-location cache, so each copy uploads or downloads every blob.
    """
    options = ["--quiet", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"]
    if source.startswith("docker://"):
        options += ["--src-creds", source_creds] if source_creds else ["--src-no-creds"]
    if destination.startswith("docker://"):
        options += ["--dest-creds", destination_creds] if destination_creds else ["--dest-no-creds"]
    command = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        SKOPEO_NAMESPACE_SCRIPT,
        str(hosts_file),
        "skopeo",
        "copy",
        *options,
        source,
        destination,
    ]

    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"skopeo copy {source} {destination} timed out after {timeout:.0f} s") from None
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        secrets = {source_creds, destination_creds} - {None}
        skopeo_arguments = [
            re.sub(r":.*", ":<redacted>", part) if part in secrets else part
            for part in command[command.index("skopeo") :]
        ]
        raise BenchmarkError(
            f"`{shlex.join(skopeo_arguments)}` exited with code {result.returncode}:\n"
            f"{(result.stdout + result.stderr).strip()[-2000:]}"
        )
    return elapsed


def curl_download(url: str, port: int, headers: dict[str, str], expected_bytes: int, count: int) -> float:
    """Download `url` `count` times through 127.0.0.1:`port` to /dev/null and return MiB/s.

    The rate is the total byte count over the total transfer time, because a single 1 GiB
    download takes under a second and its rate varied widely between rounds.
    """
    total_bytes, total_seconds = 0, 0.0
    for _ in range(count):
        size, seconds = download_once(url, port, headers, expected_bytes)
        total_bytes += size
        total_seconds += seconds
    return total_bytes / total_seconds / MIB


def download_once(url: str, port: int, headers: dict[str, str], expected_bytes: int) -> tuple[int, float]:
    command = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "--connect-to",
        f"::127.0.0.1:{port}",
        "-w",
        "%{http_code} %{size_download} %{time_total}",
        url,
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise BenchmarkError(f"curl GET {url} exited with code {result.returncode}: {result.stderr.strip()}")
    status, size, seconds = result.stdout.split()
    if status != "200" or int(size) != expected_bytes:
        raise BenchmarkError(
            f"curl GET {url} returned HTTP {status} with {size} bytes, expected HTTP 200 with {expected_bytes} bytes"
        )
    return int(size), float(seconds)


def run_wrk(settings: Settings, port: int, path: str, headers: dict[str, str], seconds: int) -> tuple[float, int, str]:
    """Run wrk against 127.0.0.1:`port`; return requests/s, the non-2xx count and the summary."""
    command = ["wrk", f"-t{settings.wrk_threads}", f"-c{settings.load_connections}", f"-d{seconds}s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(f"http://127.0.0.1:{port}{path}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    output = result.stdout + result.stderr
    rate = re.search(r"Requests/sec:\s*([\d.]+)", output)
    if result.returncode != 0 or not rate:
        raise BenchmarkError(f"wrk exited with code {result.returncode}:\n{output.strip()}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    errors = re.search(r"Socket errors:.*", output)
    summary = f"{float(rate.group(1)):.0f} req/s" + (f", {errors.group(0)}" if errors else "")
    return float(rate.group(1)), int(non_2xx.group(1)) if non_2xx else 0, summary


def run_hey(
    settings: Settings, port: int, method: str, path: str, headers: dict[str, str], seconds: int
) -> tuple[float, int, str]:
    """Run hey against 127.0.0.1:`port`; return requests/s, the non-2xx count and the summary.

    HEAD needs hey because wrk 4.1.0 (Debian 12) waits for a body after a HEAD response
    with a Content-Length and so completes no request.
    """
    command = [
        "hey",
        "-z",
        f"{seconds}s",
        "-c",
        str(settings.load_connections),
        "-m",
        method,
        "-disable-redirects",
    ]
    for name, value in headers.items():
        command += ["-host", value] if name.lower() == "host" else ["-H", f"{name}: {value}"]
    command.append(f"http://127.0.0.1:{port}{path}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    output = result.stdout + result.stderr
    rate = re.search(r"Requests/sec:\s*([\d.]+)", output)
    if result.returncode != 0 or not rate:
        raise BenchmarkError(f"hey exited with code {result.returncode}:\n{output.strip()}")
    statuses = {int(code): int(count) for code, count in re.findall(r"\[(\d+)\]\s+(\d+) responses", output)}
    errors = re.search(r"Error distribution:(.*)", output, re.DOTALL)
    non_2xx = sum(count for code, count in statuses.items() if not 200 <= code < 300)
    summary = f"{float(rate.group(1)):.0f} req/s, status codes {statuses}"
    if errors:
        summary += f", errors: {errors.group(1).strip()[:500]}"
        non_2xx += 1
    return float(rate.group(1)), non_2xx, summary


def sha256_throughput(total_bytes: int) -> float:
    """Return hashlib's single-thread SHA-256 throughput in MiB/s over `total_bytes`."""
    import hashlib

    buffer = os.urandom(min(total_bytes, 64 * MIB))
    digest = hashlib.sha256()
    started = time.perf_counter()
    remaining = total_bytes
    while remaining > 0:
        digest.update(buffer[:remaining] if remaining < len(buffer) else buffer)
        remaining -= len(buffer)
    return total_bytes / (time.perf_counter() - started) / MIB


# Rows


class Benchmark:
    """The rows of the comparison and the state they share across rounds."""

    def __init__(
        self,
        settings: Settings,
        registries: list[Registry],
        images: Images,
        work: Path,
        hosts_file: Path,
        report: Report,
    ) -> None:
        self.settings = settings
        self.registries = registries
        self.images = images
        self.work = work
        self.hosts_file = hosts_file
        self.report = report
        self.pushed_repository: dict[str, str] = {}
        self.exited_registries: set[str] = set()

    def measure(self, row: str, registry: Registry, round_number: int, action) -> None:
        if registry.process.poll() is not None:
            if registry.name not in self.exited_registries:
                self.exited_registries.add(registry.name)
                self.report.add_problem(
                    row,
                    registry.name,
                    round_number,
                    f"the {registry.name} server exited with code {registry.process.returncode} "
                    "during the run, so its remaining rows were skipped",
                )
            return

        log(f"round {round_number}: {row} on {registry.name}")
        try:
            value = action(registry, round_number)
        except (BenchmarkError, OSError, subprocess.SubprocessError, ValueError, KeyError) as error:
            message = str(error)
            if registry.process.poll() is not None:
                message += f"\nThe {registry.name} server had exited with code {registry.process.returncode}."
            log(f"  failed: {message.splitlines()[0]}")
            self.report.add_problem(row, registry.name, round_number, message)
            return
        self.report.add_value(row, registry.name, value)
        log(f"  {value:.2f}")

    def run_round(self, round_number: int, nginx: Nginx) -> None:
        rows = [
            ("push", self.push_big_image),
            ("pull", self.pull_big_image),
            ("blob_get", self.get_blob),
            ("manifest_get", self.get_manifests),
            ("manifest_head", self.head_manifests),
            ("push_layers", self.push_layered_image),
            ("push_concurrent", self.push_concurrently),
        ]
        for row, action in rows:
            for registry in self.registries:
                self.measure(row, registry, round_number, action)
            if row == "push":
                self.measure_push_ceiling(round_number)
            if row == "blob_get":
                self.measure_blob_ceiling(round_number, nginx)

    def measure_blob_ceiling(self, round_number: int, nginx: Nginx) -> None:
        log(f"round {round_number}: nginx sendfile ceiling")
        blob = self.images.big.layers[0]
        url = f"http://127.0.0.1:{nginx.port}/{blob.digest.removeprefix('sha256:')}"
        try:
            rate = curl_download(url, nginx.port, {}, blob.size, self.settings.blob_downloads)
            self.report.add_value("ceiling_nginx", "machine", rate)
        except BenchmarkError as error:
            self.report.add_problem("ceiling_nginx", "machine", round_number, str(error))

    def measure_push_ceiling(self, round_number: int) -> None:
        """Measure hashlib's SHA-256 rate and skopeo copying the large image between two local layouts."""
        log(f"round {round_number}: SHA-256 and local skopeo copy ceiling")
        self.report.add_value("ceiling_sha256", "machine", sha256_throughput(self.settings.blob_bytes))
        destination = self.work / f"local-copy-{round_number}"
        try:
            seconds = skopeo_copy(
                self.images.big.reference, f"oci:{destination}:{self.images.big.tag}", self.hosts_file
            )
            self.report.add_value("ceiling_skopeo", "machine", seconds)
        except BenchmarkError as error:
            self.report.add_problem("ceiling_skopeo", "machine", round_number, str(error))
        finally:
            shutil.rmtree(destination, ignore_errors=True)

    def push(self, registry: Registry, image: Image, repository: str, timeout: float = 900) -> float:
        """Push `image` with skopeo and return the seconds that skopeo took."""
        destination = f"docker://{registry.push_host}/{repository}:{image.tag}"
        return skopeo_copy(
            image.reference,
            destination,
            self.hosts_file,
            destination_creds=registry.skopeo_creds(),
            timeout=timeout,
        )

    def check_repository_is_fresh(self, registry: Registry, image: Image, repository: str) -> None:
        """Record a problem if the first layer is already readable in the new repository.

        skopeo skips the upload of a blob that the registry reports as present, so such a
        push would not measure the upload.
        """
        path = f"/v2/{repository}/blobs/{image.layers[0].digest}"
        try:
            headers = registry.bearer_headers(repository)
            response = http_request(registry.port, "HEAD", path, registry.pull_host, headers)
        except (BenchmarkError, OSError):
            return
        if response.status == 200:
            self.report.add_note(
                f"{registry.name}: HEAD {path} returned 200 before the first push "
                "to this repository, so skopeo may have skipped the upload."
            )

    def push_big_image(self, registry: Registry, round_number: int) -> float:
        repository = f"bench/push-r{round_number}"
        self.check_repository_is_fresh(registry, self.images.big, repository)
        seconds = self.push(registry, self.images.big, repository)
        self.pushed_repository[registry.name] = repository
        return seconds

    def repository_for_pulls(self, registry: Registry) -> str:
        repository = self.pushed_repository.get(registry.name)
        if not repository:
            raise BenchmarkError("no push of the large image has succeeded yet, so there is nothing to pull")
        return repository

    def pull_big_image(self, registry: Registry, round_number: int) -> float:
        repository = self.repository_for_pulls(registry)
        destination = self.work / f"pull-{registry.name}-{round_number}"
        try:
            return skopeo_copy(
                f"docker://{registry.pull_host}/{repository}:{self.images.big.tag}",
                f"oci:{destination}:{self.images.big.tag}",
                self.hosts_file,
                source_creds=registry.skopeo_creds(),
            )
        finally:
            shutil.rmtree(destination, ignore_errors=True)

    def get_blob(self, registry: Registry, round_number: int) -> float:
        repository = self.repository_for_pulls(registry)
        blob = self.images.big.layers[0]
        url = f"http://{registry.pull_host}/v2/{repository}/blobs/{blob.digest}"
        headers = registry.bearer_headers(repository)
        return curl_download(url, registry.port, headers, blob.size, self.settings.blob_downloads)

    def load_manifests(self, registry: Registry, method: str) -> float:
        """Measure manifest requests by tag under concurrent load and return requests/s.

        GET uses wrk and HEAD uses hey, see `run_hey`.
        """
        repository = self.repository_for_pulls(registry)
        path = f"/v2/{repository}/manifests/{self.images.big.tag}"
        headers = {"Host": registry.pull_host, "Accept": OCI_MANIFEST, **registry.bearer_headers(repository)}
        request_headers = {name: value for name, value in headers.items() if name != "Host"}

        response = http_request(registry.port, method, path, registry.pull_host, request_headers)
        digest = response.header("docker-content-digest")
        if response.status != 200 or (digest and digest != self.images.big.manifest.digest):
            raise BenchmarkError(
                f"manifest {method} did not return the pushed manifest:\n"
                + describe_exchange(method, path, registry.pull_host, request_headers, response)
            )

        def load(seconds: int) -> tuple[float, int, str]:
            if method == "HEAD":
                return run_hey(self.settings, registry.port, method, path, headers, seconds)
            return run_wrk(self.settings, registry.port, path, headers, seconds)

        load(self.settings.load_warmup_seconds)
        rate, non_2xx, summary = load(self.settings.load_seconds)
        if non_2xx:
            after = http_request(registry.port, method, path, registry.pull_host, request_headers)
            raise BenchmarkError(
                f"{non_2xx} of the responses under load were not 2xx ({summary}); "
                "a request after the load:\n"
                + describe_exchange(method, path, registry.pull_host, request_headers, after)
            )
        return rate

    def get_manifests(self, registry: Registry, round_number: int) -> float:
        return self.load_manifests(registry, "GET")

    def head_manifests(self, registry: Registry, round_number: int) -> float:
        return self.load_manifests(registry, "HEAD")

    def push_layered_image(self, registry: Registry, round_number: int) -> float:
        repository = f"bench/layers-r{round_number}"
        self.check_repository_is_fresh(registry, self.images.layered, repository)
        return self.push(registry, self.images.layered, repository)

    def push_concurrently(self, registry: Registry, round_number: int) -> float:
        images = self.images.concurrent
        repositories = [f"bench/concurrent-r{round_number}-{index}" for index in range(len(images))]
        for image, repository in zip(images, repositories, strict=True):
            self.check_repository_is_fresh(registry, image, repository)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(images)) as pool:
            futures = [
                pool.submit(self.push, registry, image, repository)
                for image, repository in zip(images, repositories, strict=True)
            ]
            errors = [future.exception() for future in futures]
        failures = [str(error) for error in errors if error]
        if failures:
            raise BenchmarkError(f"{len(failures)} of {len(images)} pushes failed; first: {failures[0]}")
        return time.perf_counter() - started


# Main


def generate_images(settings: Settings, work: Path) -> Images:
    log(f"generating images in {work}")
    big = write_image(work / "images" / "big", [settings.blob_bytes])
    layered = write_image(work / "images" / "layered", [settings.small_layer_bytes] * settings.small_layers)
    concurrent = [
        write_image(work / "images" / f"concurrent-{index}", [settings.concurrent_image_bytes])
        for index in range(settings.concurrent_pushes)
    ]
    return Images(big, layered, concurrent)


def write_hosts_file(path: Path, registries: list[Registry]) -> None:
    names = sorted({name for registry in registries for name in registry.extra_hosts})
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    if names:
        lines.append("127.0.0.1 " + " ".join(names))
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 64 MiB blob, 8 MiB concurrent images, 3 s loads"
    )
    parser.add_argument("--rounds", type=int, help="rounds per row and registry (default 3)")

    parser.add_argument(
        "--registry",
        choices=("both", "crpe", "distribution"),
        default="both",
        help="registries to measure (default both)",
    )
    parser.add_argument(
        "--crpe", metavar="PATH", help="crpe executable (default .venv/bin/crpe, installed there if missing)"
    )

    parser.add_argument(
        "--workdir",
        metavar="DIR",
        type=Path,
        help="parent of the temporary directory for images and storage (default: the system temporary directory)",
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary directory, with server logs, after the run",
    )

    parser.add_argument(
        "--output",
        metavar="FILE",
        type=Path,
        default=REPOSITORY_ROOT / "docs" / "benchmarks.md",
        help="Markdown report to write (default docs/benchmarks.md)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the report only")

    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def start_registries(args: argparse.Namespace, work: Path, crpe_binary: str | None, report: Report) -> list[Registry]:
    """Start the requested registries; one that fails to start is reported and left out."""
    candidates: list[Registry] = []
    if args.registry in ("both", "crpe"):
        candidates.append(Crpe("crpe", work / "crpe", crpe_binary=crpe_binary))
    if args.registry in ("both", "distribution"):
        candidates.append(Distribution("distribution", work / "distribution"))

    started: list[Registry] = []
    for registry in candidates:
        log(f"starting {registry.name}")
        try:
            started.append(registry.start())
        except (BenchmarkError, OSError, subprocess.SubprocessError, KeyError) as error:
            registry.stop()
            report.add_problem("start", registry.name, 0, str(error))
            report.server_logs[registry.name] = tail(registry.log)
    return started


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    settings = Settings.from_args(args)
    started = time.monotonic()
    install_missing_tools()
    crpe_binary = find_crpe(args.crpe) if args.registry != "distribution" else None
    os.makedirs(SKOPEO_CACHE_DIR, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="crpe-bench-", dir=args.workdir))
    registries: list[Registry] = []
    nginx: Nginx | None = None
    report = Report(
        settings=settings,
        command="python3 " + shlex.join(["benchmarks/compare.py", *argv]),
        machine=describe_machine(),
        versions=collect_versions(crpe_binary),
    )
    try:
        images = generate_images(settings, work)
        busy_at_start, own_at_start, wall_at_start = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
        registries = start_registries(args, work, crpe_binary, report)
        hosts_file = work / "hosts"
        write_hosts_file(hosts_file, registries)
        nginx = Nginx(work / "nginx", images.big.layout / "blobs" / "sha256").start()

        benchmark = Benchmark(settings, registries, images, work, hosts_file, report)
        for round_number in range(1, settings.rounds + 1):
            benchmark.run_round(round_number, nginx)

        for registry in registries:
            registry.sampler.sample()
            report.add_memory(registry.name, registry.sampler)
    except BenchmarkError as error:
        report.add_problem("setup", "-", 0, str(error))
    finally:
        for registry in registries:
            registry.stop()
            if report.has_problems(registry.name):
                report.server_logs[registry.name] = tail(registry.log)
        if nginx:
            nginx.stop()
        if "busy_at_start" in locals():
            other_seconds = (machine_busy_seconds() - busy_at_start) - (own_cpu_seconds() - own_at_start)
            capacity = (time.monotonic() - wall_at_start) * (os.cpu_count() or 1)
            report.set_other_cpu(max(other_seconds, 0.0), capacity)
        if args.keep_workdir:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report.elapsed_seconds = time.monotonic() - started
    report.registries = [name for name in ("crpe", "distribution") if args.registry in ("both", name)]
    print(report.text())
    if not args.no_write:
        args.output.write_text(report.markdown())
        log(f"wrote {args.output}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
