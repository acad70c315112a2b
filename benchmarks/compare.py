#!/usr/bin/env python3
"""Benchmark crpe side by side with Debian's CNCF distribution registry.

Both registries run on 127.0.0.1 with filesystem storage in one temporary directory.
Every row is measured for both registries in turn (crpe, distribution, crpe, ...) over
several rounds, and the report gives the medians, the ratio crpe/distribution and a
pass or fail against the project's targets. nginx with sendfile and hashlib's SHA-256
give the physical ceiling of this machine. The nodes row compares manifest GET on one
crpe node with three crpe nodes, all on one PostgreSQL database (see nodes.py). The
results go to stdout and to docs/benchmarks.md.

Run as root from the repository root:

    python3 benchmarks/compare.py            # full run, 3 rounds: 6 minutes measured on 2 cores
    python3 benchmarks/compare.py --quick    # smoke run with small images and short loads
    python3 benchmarks/compare.py --registry distribution   # without crpe
    python3 benchmarks/compare.py --rows nodes --output /tmp/nodes.md   # the nodes row alone
"""

from __future__ import annotations

import argparse
import os
import platform
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

from clients import SKOPEO_CACHE_DIR, curl_download, log, run_hey, run_wrk, skopeo_copy
from nodes import NodeComparison
from oci_layout import OCI_MANIFEST, Image, write_image
from report import NODE_ROW, Report
from servers import (
    BenchmarkError,
    Crpe,
    Distribution,
    Nginx,
    Registry,
    describe_exchange,
    find_postgres_bin_dir,
    http_request,
    postgres_version,
    tail,
)

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

# Debian package for each command that a group of rows runs.
REQUIRED_PACKAGES = {
    "registries": {
        "docker-registry": "docker-registry",
        "skopeo": "skopeo",
        "wrk": "wrk",
        "hey": "hey",
        "curl": "curl",
        "nginx": "nginx-light",
        "unshare": "util-linux",
    },
    "nodes": {"skopeo": "skopeo", "wrk": "wrk", "unshare": "util-linux", "setpriv": "util-linux"},
}
ROW_GROUPS = ("registries", "nodes")


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
    # The nodes row: the three nodes have one worker each and the single node as many as they have together.
    nodes: int = 3
    workers_per_node: int = 1
    row_groups: tuple[str, ...] = ROW_GROUPS

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        if args.quick:
            settings = cls(rounds=3, quick=True, blob_bytes=64 * MIB, concurrent_image_bytes=8 * MIB, load_seconds=3)
        else:
            settings = cls(rounds=3, quick=False, blob_bytes=1024 * MIB, concurrent_image_bytes=128 * MIB)
        if args.rounds is not None:
            settings.rounds = args.rounds
        settings.row_groups = selected_row_groups(args)
        return settings


def selected_row_groups(args: argparse.Namespace) -> tuple[str, ...]:
    """Return the groups of rows to run. The nodes row needs crpe, so `--registry distribution` drops it."""
    groups = ROW_GROUPS if args.rows == "all" else (args.rows,)
    if args.registry == "distribution":
        groups = tuple(group for group in groups if group != "nodes")
    return groups


@dataclass
class Images:
    big: Image
    layered: Image
    concurrent: list[Image] = field(default_factory=list)


# Environment and tools


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


def missing_packages(row_groups: tuple[str, ...]) -> list[str]:
    missing = {
        package
        for group in row_groups
        for command, package in REQUIRED_PACKAGES[group].items()
        if not find_command(command)
    }
    if "nodes" in row_groups and find_postgres_bin_dir() is None:
        missing.add("postgresql")
    return sorted(missing)


def install_missing_tools(row_groups: tuple[str, ...]) -> None:
    missing = missing_packages(row_groups)
    if not missing:
        return
    wait_for_package_manager()
    missing = missing_packages(row_groups)
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


def collect_versions(crpe_binary: str | None, row_groups: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    if crpe_binary:
        versions["crpe"] = crpe_version(crpe_binary)
    if "nodes" in row_groups:
        versions["PostgreSQL"] = postgres_version()
    if "registries" in row_groups:
        versions["distribution"] = command_output(["/usr/bin/docker-registry", "--version"])
    versions["skopeo"] = command_output(["skopeo", "--version"])
    if "registries" in row_groups:
        versions["hey"] = "Debian package " + command_output(["dpkg-query", "-W", "-f=${Version}", "hey"])
    versions["wrk"] = command_output(["wrk", "-v"])
    if "registries" in row_groups:
        versions["curl"] = command_output(["curl", "--version"])
        versions["nginx"] = command_output([find_command("nginx") or "nginx", "-v"])
    versions["Python"] = platform.python_version()
    versions["kernel"] = platform.release()
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
                return run_hey(registry.port, method, path, headers, seconds, self.settings.load_connections)
            connections, threads = self.settings.load_connections, self.settings.wrk_threads
            return run_wrk(registry.port, path, headers, seconds, connections, threads)

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
        "--rows",
        choices=("all", *ROW_GROUPS),
        default="all",
        help=(
            "rows to run: `registries` for crpe against distribution, `nodes` for one crpe node against "
            "three on PostgreSQL (default all)"
        ),
    )

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
        help="keep the temporary directory, with server logs, and the nodes row's PostgreSQL directory after the run",
    )

    parser.add_argument(
        "--output",
        metavar="FILE",
        type=Path,
        help=(
            "Markdown report to write (default docs/benchmarks.md, but a run with --rows other than all "
            "writes only to an --output given explicitly)"
        ),
    )
    parser.add_argument("--no-write", action="store_true", help="print the report only")

    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.rows == "nodes" and args.registry == "distribution":
        parser.error("--rows nodes measures crpe only and cannot run with --registry distribution")
    if args.output is None and args.rows == "all":
        args.output = REPOSITORY_ROOT / "docs" / "benchmarks.md"
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


def start_nodes(
    args: argparse.Namespace, settings: Settings, crpe_binary: str, work: Path, report: Report
) -> NodeComparison | None:
    """Start PostgreSQL and the crpe nodes of the nodes row. A failure is reported, and the row is left out."""
    image = write_image(work / "images" / "nodes", [settings.small_layer_bytes])
    nodes = NodeComparison(settings, crpe_binary, work, image, report)
    try:
        nodes.start()
    except (BenchmarkError, OSError, subprocess.SubprocessError, KeyError) as error:
        report.add_problem(NODE_ROW, "start", 0, str(error))
        report.server_logs.update(nodes.server_logs())
        nodes.stop(keep_files=args.keep_workdir)
        return None
    return nodes


def push_nodes_image(
    args: argparse.Namespace, nodes: NodeComparison, hosts_file: Path, report: Report
) -> NodeComparison | None:
    """Push the nodes row's image. A failure is reported and stops the nodes, and the row is left out."""
    try:
        nodes.push(hosts_file)
    except (BenchmarkError, OSError, subprocess.SubprocessError) as error:
        report.add_problem(NODE_ROW, "push", 0, str(error))
        report.server_logs.update(nodes.server_logs())
        nodes.stop(keep_files=args.keep_workdir)
        return None
    return nodes


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    settings = Settings.from_args(args)
    row_groups = settings.row_groups
    started = time.monotonic()
    install_missing_tools(row_groups)
    crpe_binary = find_crpe(args.crpe) if args.registry != "distribution" else None
    os.makedirs(SKOPEO_CACHE_DIR, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="crpe-bench-", dir=args.workdir))
    registries: list[Registry] = []
    nginx: Nginx | None = None
    nodes: NodeComparison | None = None
    report = Report(
        settings=settings,
        command="python3 " + shlex.join(["benchmarks/compare.py", *argv]),
        machine=describe_machine(),
        versions=collect_versions(crpe_binary, row_groups),
    )
    try:
        images = generate_images(settings, work) if "registries" in row_groups else None
        busy_at_start, own_at_start, wall_at_start = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
        if images:
            registries = start_registries(args, work, crpe_binary, report)
        if "nodes" in row_groups:
            nodes = start_nodes(args, settings, crpe_binary, work, report)
        hosts_file = work / "hosts"
        write_hosts_file(hosts_file, [*registries, *(nodes.servers if nodes else [])])
        if nodes:
            nodes = push_nodes_image(args, nodes, hosts_file, report)

        benchmark = None
        if images:
            nginx = Nginx(work / "nginx", images.big.layout / "blobs" / "sha256").start()
            benchmark = Benchmark(settings, registries, images, work, hosts_file, report)
        for round_number in range(1, settings.rounds + 1):
            if benchmark:
                benchmark.run_round(round_number, nginx)
            if nodes:
                nodes.run_round(round_number)

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
        if nodes:
            if any(problem[0] == NODE_ROW for problem in report.problems):
                report.server_logs.update(nodes.server_logs())
            nodes.stop(keep_files=args.keep_workdir)
        if "busy_at_start" in locals():
            other_seconds = (machine_busy_seconds() - busy_at_start) - (own_cpu_seconds() - own_at_start)
            capacity = (time.monotonic() - wall_at_start) * (os.cpu_count() or 1)
            report.set_other_cpu(max(other_seconds, 0.0), capacity)
        if args.keep_workdir:
            log(f"kept {work}" + (f" and {nodes.postgres.root}" if nodes and nodes.postgres else ""))
        else:
            shutil.rmtree(work, ignore_errors=True)

    report.elapsed_seconds = time.monotonic() - started
    report.registries = [name for name in ("crpe", "distribution") if args.registry in ("both", name)]
    print(report.text())
    if args.no_write:
        pass
    elif args.output:
        args.output.write_text(report.markdown())
        log(f"wrote {args.output}")
    else:
        log(f"wrote no report file: a run with --rows {args.rows} writes only to an explicit --output")
    return 1 if report.problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
