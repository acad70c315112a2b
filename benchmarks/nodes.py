"""The nodes row: manifest GET throughput of one crpe node and of three crpe nodes on one PostgreSQL database.

Four `crpe serve` processes run on one PostgreSQL database and one data directory, which contains
the token signing key and the blob store. The single node has as many workers as the three other
nodes together, so both cases run the same number of worker processes. Both cases get the same
client load: one single-thread wrk process per node of the three-node case, with the connections
split evenly, all aimed at the single node in the one-node case. A node that is not loaded stays
idle.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from clients import WrkTarget, log, run_wrk_parallel, skopeo_copy, split_connections
from oci_layout import OCI_MANIFEST, Image
from report import NODE_CPU_ROWS, NODE_ROW, NODE_TIMEOUT_ROW, Report, node_cases
from servers import BenchmarkError, Crpe, Postgres, describe_exchange, http_request, tail, tree_cpu_seconds

REPOSITORY = "bench/nodes"


class LoadResult(NamedTuple):
    rate: float
    crpe_cpu_microseconds: float
    postgres_cpu_microseconds: float
    # Responses that wrk counted as timeouts because they took longer than its default timeout of 2 s.
    timeouts: int


class NodeComparison:
    """PostgreSQL and the crpe nodes of the nodes row, and the row's measurements."""

    def __init__(self, settings: Any, crpe_binary: str, work: Path, image: Image, report: Report) -> None:
        self.settings = settings
        self.image = image
        self.report = report
        self.single_case, self.spread_case = node_cases(settings)
        self.postgres: Postgres | None = None
        root = work / "crpe-nodes"
        self.single = Crpe(
            "crpe single node",
            root,
            crpe_binary=crpe_binary,
            workers=settings.nodes * settings.workers_per_node,
            log_name="single-node.log",
            sample_memory=False,
        )
        self.spread = [
            Crpe(
                f"crpe node {index}",
                root,
                crpe_binary=crpe_binary,
                workers=settings.workers_per_node,
                log_name=f"node-{index}.log",
                sample_memory=False,
            )
            for index in range(1, settings.nodes + 1)
        ]

    @property
    def servers(self) -> list[Crpe]:
        return [self.single, *self.spread]

    def start(self) -> None:
        """Start PostgreSQL, then the nodes one after another, so that the first node alone creates the schema."""
        log("starting PostgreSQL for the nodes row")
        # The postgres user must reach this directory, so it lies outside the benchmark's, which only root may enter.
        self.postgres = Postgres(Path(tempfile.mkdtemp(prefix="crpe-bench-postgres-")))
        self.postgres.start()
        for node in self.servers:
            log(f"starting {node.name} with CRPE_WORKERS={node.workers}")
            node.database_url = self.postgres.url
            node.launch()
        self.single.provision()
        for node in self.spread:
            node.join(self.single)

    def push(self, hosts_file: Path) -> None:
        """Push the row's image once, through the single node, into the shared database and blob store."""
        log(f"pushing {self.image.tag} to {REPOSITORY} through {self.single.name}")
        skopeo_copy(
            self.image.reference,
            f"docker://{self.single.push_host}/{REPOSITORY}:{self.image.tag}",
            hosts_file,
            destination_creds=self.single.skopeo_creds(),
        )

    def stop(self, keep_files: bool) -> None:
        for node in self.servers:
            node.stop()
        if self.postgres:
            self.postgres.stop()
            if not keep_files:
                shutil.rmtree(self.postgres.root, ignore_errors=True)

    def server_logs(self) -> dict[str, str]:
        logs = {node.name: tail(node.log) for node in self.servers}
        if self.postgres:
            logs["PostgreSQL"] = tail(self.postgres.log)
        return logs

    # Measurements

    def run_round(self, round_number: int) -> None:
        self.measure(self.single_case, [self.single], round_number)
        self.measure(self.spread_case, self.spread, round_number)

    def measure(self, case: str, nodes: list[Crpe], round_number: int) -> None:
        stopped = [node.name for node in nodes if node.process.poll() is not None]
        if self.postgres.process.poll() is not None:
            stopped.append("PostgreSQL")
        if stopped:
            message = f"{', '.join(stopped)} exited during the run, so the row was skipped"
            self.report.add_problem(NODE_ROW, case, round_number, message)
            return

        log(f"round {round_number}: nodes_manifest_get on {case}")
        try:
            result = self.load(nodes)
        except (BenchmarkError, OSError, subprocess.SubprocessError, ValueError, KeyError) as error:
            message = str(error)
            log(f"  failed: {message.splitlines()[0]}")
            self.report.add_problem(NODE_ROW, case, round_number, message)
            return
        self.report.add_value(NODE_ROW, case, result.rate)
        self.report.add_value(NODE_CPU_ROWS[0], case, result.crpe_cpu_microseconds)
        self.report.add_value(NODE_CPU_ROWS[1], case, result.postgres_cpu_microseconds)
        self.report.add_value(NODE_TIMEOUT_ROW, case, result.timeouts)
        log(
            f"  {result.rate:.0f} req/s; CPU per request: crpe {result.crpe_cpu_microseconds:.0f} µs, "
            f"PostgreSQL {result.postgres_cpu_microseconds:.0f} µs; {result.timeouts} wrk timeouts"
        )

    def load(self, nodes: list[Crpe]) -> LoadResult:
        """Load `nodes` with manifest GETs and return the rate, the CPU microseconds per request and the timeouts.

        The CPU time is that of the loaded nodes and of PostgreSQL, and the request count is the
        summed rate times the load time.
        """
        path = f"/v2/{REPOSITORY}/manifests/{self.image.tag}"
        headers = {node.name: self.checked_headers(node, path) for node in nodes}
        connections = split_connections(self.settings.load_connections, len(self.spread))
        # The one-node case aims all wrk processes at its node, the other case one at each node.
        aimed = [nodes[index % len(nodes)] for index in range(len(connections))]
        targets = [
            WrkTarget(node.port, path, headers[node.name], count)
            for node, count in zip(aimed, connections, strict=True)
        ]

        run_wrk_parallel(targets, self.settings.load_warmup_seconds)
        crpe_before = sum(tree_cpu_seconds(node.process.pid) for node in nodes)
        postgres_before = tree_cpu_seconds(self.postgres.process.pid)
        results = run_wrk_parallel(targets, self.settings.load_seconds)
        crpe_seconds = sum(tree_cpu_seconds(node.process.pid) for node in nodes) - crpe_before
        postgres_seconds = tree_cpu_seconds(self.postgres.process.pid) - postgres_before

        summaries = [
            f"{node.name} ({target.connections} connections): {result[2]}"
            for node, target, result in zip(aimed, targets, results, strict=True)
        ]
        non_2xx = sum(result[1] for result in results)
        if non_2xx:
            raise BenchmarkError(f"{non_2xx} of the responses under load were not 2xx: " + "; ".join(summaries))
        log("  " + "; ".join(summaries))

        rate = sum(result[0] for result in results)
        requests = rate * self.settings.load_seconds
        if not requests:
            raise BenchmarkError("wrk completed no request: " + "; ".join(summaries))
        timeouts = sum(int(found.group(1)) for result in results if (found := re.search(r"timeout (\d+)", result[2])))
        return LoadResult(rate, crpe_seconds / requests * 1e6, postgres_seconds / requests * 1e6, timeouts)

    def checked_headers(self, node: Crpe, path: str) -> dict[str, str]:
        """Return the request headers for `node`, after one GET has returned the pushed manifest."""
        headers = {"Accept": OCI_MANIFEST, **node.bearer_headers(REPOSITORY)}
        response = http_request(node.port, "GET", path, node.pull_host, headers)
        digest = response.header("docker-content-digest")
        if response.status != 200 or digest != self.image.manifest.digest:
            raise BenchmarkError(
                f"manifest GET on {node.name} did not return the pushed manifest:\n"
                + describe_exchange("GET", path, node.pull_host, headers, response)
            )
        return {"Host": node.pull_host, **headers}
