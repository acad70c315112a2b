"""Run the benchmark's clients (skopeo, curl, wrk, hey) against servers on 127.0.0.1, and log progress."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from servers import BenchmarkError

MIB = 1 << 20
STARTED = time.monotonic()

# skopeo, as root, keeps a blob-location cache in this directory and would mount blobs
# from an earlier repository instead of uploading them. Every skopeo run gets an empty
# tmpfs here, inside its own mount namespace.
SKOPEO_CACHE_DIR = "/var/lib/containers/cache"
SKOPEO_NAMESPACE_SCRIPT = (
    f'mount --bind "$0" /etc/hosts && mount -t tmpfs -o size=64m tmpfs {SKOPEO_CACHE_DIR} && exec "$@"'
)


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


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


def run_wrk(
    port: int, path: str, headers: dict[str, str], seconds: int, connections: int, threads: int = 1
) -> tuple[float, int, str]:
    """Run wrk against 127.0.0.1:`port`; return requests/s, the non-2xx count and the summary."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
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


def split_connections(total: int, parts: int) -> list[int]:
    """Split `total` connections into `parts` counts that differ by at most one, such as 32 into 11, 11, 10."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


@dataclass(frozen=True)
class WrkTarget:
    """One wrk process of a parallel load: where it connects, what it requests and with how many connections."""

    port: int
    path: str
    headers: dict[str, str]
    connections: int


def run_wrk_parallel(targets: list[WrkTarget], seconds: int) -> list[tuple[float, int, str]]:
    """Run one single-thread wrk process per target at the same time and return each one's `run_wrk` result.

    The processes start within milliseconds of each other and run for the same `seconds`, so the
    sum of their rates is the combined rate.
    """
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = [
            pool.submit(run_wrk, target.port, target.path, target.headers, seconds, target.connections)
            for target in targets
        ]
        return [future.result() for future in futures]


def run_hey(
    port: int, method: str, path: str, headers: dict[str, str], seconds: int, connections: int
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
        str(connections),
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
