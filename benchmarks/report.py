"""Collect the benchmark's measurements and format them as a text table and a Markdown page."""

from __future__ import annotations

import datetime
import statistics
from dataclasses import dataclass, field
from typing import Any

from clients import split_connections

MIB = 1 << 20


@dataclass(frozen=True)
class Row:
    """One row of the comparison and its target for the ratio crpe/distribution.

    For rows where higher is better the ratio must be at least `target`. For the others
    (seconds, MiB of memory) it must be at most `target`, so a time target of 0.67 means
    that crpe must be 1.5 times as fast.
    """

    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float

    def passes(self, ratio: float) -> bool:
        return ratio >= self.target if self.higher_is_better else ratio <= self.target

    def target_text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.target:.2f}"


def build_rows(settings: Any) -> list[Row]:
    big = size_text(settings.blob_bytes)
    small = size_text(settings.small_layer_bytes)
    concurrent = size_text(settings.concurrent_image_bytes)
    connections = settings.load_connections
    return [
        Row("manifest_get", f"manifest GET, {connections} connections", "req/s", True, 2.0),
        Row("manifest_head", f"manifest HEAD, {connections} connections", "req/s", True, 2.0),
        Row("blob_get", f"blob GET of {big}", "MiB/s", True, 1.0),
        Row("push", f"skopeo push, {big} single layer", "s", False, 1.0),
        Row("pull", f"skopeo pull, {big} single layer", "s", False, 1.0),
        Row("push_layers", f"skopeo push, {settings.small_layers} layers of {small}", "s", False, 1 / 1.5),
        Row(
            "push_concurrent",
            f"{settings.concurrent_pushes} concurrent pushes of {concurrent}",
            "s",
            False,
            1.0,
        ),
        Row("memory", "peak resident memory of the server", "MiB", False, 1.5),
    ]


NODE_ROW = "nodes_manifest_get"
# Figures measured alongside the nodes row's rate: CPU time per request of the loaded crpe nodes and of
# PostgreSQL, and the requests that wrk counted as timed out.
NODE_CPU_ROWS = ("nodes_crpe_cpu", "nodes_postgres_cpu")
NODE_TIMEOUT_ROW = "nodes_timeouts"


def node_cases(settings: Any) -> tuple[str, str]:
    """Return the names of the nodes row's two cases, such as `1 node` and `3 nodes`."""
    return "1 node", f"{settings.nodes} nodes"


def node_row_labels(settings: Any) -> dict[str, tuple[str, str]]:
    """Return the label and unit of each row the nodes comparison measures."""
    return {
        NODE_ROW: (f"manifest GET on PostgreSQL, {settings.load_connections} connections", "req/s"),
        NODE_CPU_ROWS[0]: ("CPU time of the loaded crpe nodes per request", "µs"),
        NODE_CPU_ROWS[1]: ("CPU time of PostgreSQL per request", "µs"),
        NODE_TIMEOUT_ROW: ("responses slower than 2 s (wrk timeouts)", "requests"),
    }


def size_text(size: int) -> str:
    if size >= 1 << 30 and size % (1 << 30) == 0:
        return f"{size >> 30} GiB"
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    return f"{size >> 10} KiB"


def number_text(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("req/s", "requests"):
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:,.1f}"


BLOB_GET_SHARE_TARGET = 0.9
CEILING_LABELS = {
    "ceiling_nginx": ("ceiling: nginx sendfile, blob GET", "MiB/s"),
    "ceiling_sha256": ("ceiling: hashlib SHA-256", "MiB/s"),
    "ceiling_skopeo": ("ceiling: skopeo copy between local layouts", "s"),
}
# Above this share of the machine's CPU time used by other processes, the report warns.
OTHER_CPU_NOTE_SHARE = 0.05


@dataclass
class Report:
    settings: Any
    command: str
    machine: dict[str, str]
    versions: dict[str, str]
    registries: list[str] = field(default_factory=list)
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    problems: list[tuple[str, str, int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory_details: dict[str, str] = field(default_factory=dict)
    server_logs: dict[str, str] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    date: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))

    # Collection

    def add_value(self, row: str, registry: str, value: float) -> None:
        self.values.setdefault((row, registry), []).append(value)

    def add_problem(self, row: str, registry: str, round_number: int, message: str) -> None:
        self.problems.append((row, registry, round_number, message))

    def add_note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def add_memory(self, registry: str, sampler: Any) -> None:
        """Record the peak memory of a registry from its `servers.MemorySampler`."""
        self.add_value("memory", registry, sampler.peak_rss_kib / 1024)
        self.memory_details[registry] = (
            f"{registry}: peak summed VmRSS {sampler.peak_rss_kib / 1024:.1f} MiB, "
            f"peak summed PSS {sampler.peak_pss_kib / 1024:.1f} MiB, "
            f"sum of VmHWM at the end {sampler.hwm_sum_kib() / 1024:.1f} MiB, "
            f"up to {sampler.max_processes} processes"
        )

    def set_other_cpu(self, other_seconds: float, capacity_seconds: float) -> None:
        """Record how much CPU time processes outside the benchmark used while it ran."""
        share = other_seconds / capacity_seconds if capacity_seconds else 0.0
        self.machine["CPU used by other processes during the run"] = (
            f"{other_seconds:.0f} CPU-seconds, {share:.0%} of the machine"
        )
        if share > OTHER_CPU_NOTE_SHARE:
            self.add_note(
                f"Other processes used {share:.0%} of the machine's CPU time during the run, "
                "so the numbers are disturbed; rerun on an idle machine."
            )

    def has_problems(self, registry: str) -> bool:
        return any(problem[1] == registry for problem in self.problems)

    # Derived figures

    def median(self, row: str, registry: str) -> float | None:
        values = self.values.get((row, registry))
        return statistics.median(values) if values else None

    def ratio(self, row: str) -> float | None:
        crpe, distribution = self.median(row, "crpe"), self.median(row, "distribution")
        if crpe is None or not distribution:
            return None
        return crpe / distribution

    def table_rows(self) -> list[list[str]]:
        """Return the cells of the main table: row, unit, medians, ratio, target, result."""
        rows = []
        for row in build_rows(self.settings):
            ratio = self.ratio(row.key)
            cells = [row.label, row.unit]
            cells += [number_text(self.median(row.key, name), row.unit) for name in self.registries]
            if ratio is None:
                cells += ["-", row.target_text(), "-"]
            else:
                result = "pass" if row.passes(ratio) else "FAIL"
                cells += [f"{ratio:.2f}", row.target_text(), result]
            rows.append(cells)
        return rows

    def table_header(self) -> list[str]:
        return ["row", "unit", *self.registries, "crpe/distribution", "target", "result"]

    @property
    def ran_registry_rows(self) -> bool:
        return "registries" in self.settings.row_groups

    @property
    def ran_node_rows(self) -> bool:
        return "nodes" in self.settings.row_groups

    def node_table_header(self) -> list[str]:
        single_case, spread_case = node_cases(self.settings)
        workers = self.settings.workers_per_node
        return [
            "row",
            "unit",
            f"{single_case}, {self.settings.nodes * workers} workers",
            f"{spread_case}, {workers} worker{'s' if workers > 1 else ''} each",
            f"{spread_case}/{single_case}",
        ]

    def node_table_rows(self) -> list[list[str]]:
        """Return the cells of the nodes table: row, unit, the median of each case and their ratio."""
        single_case, spread_case = node_cases(self.settings)
        rows = []
        for key, (label, unit) in node_row_labels(self.settings).items():
            single_median, spread_median = self.median(key, single_case), self.median(key, spread_case)
            # A ratio of two small counts of slow responses would suggest a precision that they lack.
            has_ratio = single_median and spread_median is not None and key != NODE_TIMEOUT_ROW
            ratio = f"{spread_median / single_median:.2f}" if has_ratio else "-"
            rows.append([label, unit, number_text(single_median, unit), number_text(spread_median, unit), ratio])
        return rows

    def node_lines(self) -> list[str]:
        """Return the sentences under the nodes table: what the ratio means on this machine."""
        cores = self.machine.get("cores", "?")
        workers = self.settings.nodes * self.settings.workers_per_node
        return [
            (
                f"Both cases run {workers} crpe worker processes and one PostgreSQL server on the same "
                f"{cores} cores, together with the wrk clients. The {self.settings.nodes} nodes therefore add "
                "no CPU: the ratio shows the cost or benefit of spreading the same workers over nodes that "
                "share one PostgreSQL database, not the gain of adding machines. Above 1.00 the nodes served "
                "more requests per second than the single node. This row has no target."
            ),
        ]

    def ceiling_lines(self) -> list[str]:
        """Return the physical ceiling and each registry's share of it, one sentence per line."""
        nginx = self.median("ceiling_nginx", "machine")
        sha256 = self.median("ceiling_sha256", "machine")
        local_copy = self.median("ceiling_skopeo", "machine")
        blob_mib = self.settings.blob_bytes / MIB
        lines = [
            f"nginx with sendfile serving the same blob file, curl to /dev/null: {number_text(nginx)} MiB/s",
            f"hashlib SHA-256, one thread, in memory: {number_text(sha256)} MiB/s",
            (
                f"skopeo copy of the {size_text(self.settings.blob_bytes)} image between two local OCI layouts: "
                f"{number_text(local_copy, 's')} s"
            ),
        ]
        for name in self.registries:
            blob_get = self.median("blob_get", name)
            if blob_get is not None and nginx:
                share = blob_get / nginx
                verdict = ""
                if name == "crpe":
                    passed = "pass" if share >= BLOB_GET_SHARE_TARGET else "FAIL"
                    verdict = f" (target >= {BLOB_GET_SHARE_TARGET:.0%}: {passed})"
                lines.append(f"{name} blob GET: {share:.0%} of nginx{verdict}")
            push = self.median("push", name)
            if push and sha256:
                rate = blob_mib / push
                line = f"{name} push: {rate:,.1f} MiB/s, {rate / sha256:.0%} of SHA-256"
                if local_copy:
                    line += f", {local_copy / push:.0%} of the local skopeo copy rate"
                lines.append(line)
        return lines

    # Output

    def text(self) -> str:
        lines = [
            "",
            f"Medians over {self.settings.rounds} rounds"
            + (" (quick smoke run, reduced sizes)" if self.settings.quick else ""),
        ]
        if self.ran_registry_rows:
            lines += text_table(self.table_header(), self.table_rows())
            lines += ["", "Physical ceiling", *(f"  {line}" for line in self.ceiling_lines())]
            lines += [f"  {detail}" for detail in self.memory_details.values()]
        if self.ran_node_rows:
            lines += ["", "{} and {} on PostgreSQL".format(*node_cases(self.settings))]
            lines += text_table(self.node_table_header(), self.node_table_rows())
            lines += [f"  {line}" for line in self.node_lines()]
        for note in self.notes:
            lines.append(f"note: {note}")
        for row, registry, round_number, message in self.problems:
            lines += ["", f"PROBLEM in {row} on {registry}, round {round_number}:", message]
        lines.append(f"\nelapsed: {self.elapsed_seconds:.0f} s")
        return "\n".join(lines)

    def markdown(self) -> str:
        sections = [
            self.markdown_header(),
            self.markdown_results(),
            ["## Machine", "", *(f"- {name}: {value}" for name, value in self.machine.items()), ""],
            ["## Versions", "", *(f"- {name}: {value}" for name, value in self.versions.items()), ""],
            [
                "## Method",
                "",
                *(METHOD if self.ran_registry_rows else []),
                *(node_method(self.settings) if self.ran_node_rows else []),
                "",
            ],
            ["## What bounds the rows that miss", "", *BOUNDS, ""] if self.ran_registry_rows else [],
            self.markdown_problems(),
        ]
        return "\n".join(line for section in sections for line in section)

    def markdown_header(self) -> list[str]:
        settings = self.settings
        lines = [
            "# Benchmarks: crpe and the CNCF distribution registry",
            "",
            (
                "`benchmarks/compare.py` writes this page. Rerun it as root from the repository root "
                "instead of editing the numbers by hand. With `--quick` it makes a smoke run of about "
                "2 minutes."
            ),
            "",
            f"- Command: `{self.command}`",
            f"- Date: {self.date}",
            f"- Run time: {self.elapsed_seconds / 60:.1f} minutes",
            f"- Rounds: {settings.rounds}, each measuring {self.round_contents()}",
        ]
        if settings.quick:
            lines.append(
                "- Mode: `--quick` smoke run with reduced sizes and 3 s loads; the numbers "
                "are not comparable to a full run."
            )
        lines.append("")
        return lines

    def round_contents(self) -> str:
        parts = []
        if self.ran_registry_rows:
            parts.append(f"every row for {' then '.join(self.registries)}")
        if self.ran_node_rows:
            parts.append("the nodes row for {} then {}".format(*node_cases(self.settings)))
        return ", then ".join(parts)

    def markdown_results(self) -> list[str]:
        notes = [f"Note: {note}\n" for note in self.notes]
        lines = []
        if self.ran_registry_rows:
            lines += ["## Results", "", f"Medians over {self.settings.rounds} rounds.", ""]
            lines += markdown_table(self.table_header(), self.table_rows())
            lines += [
                "",
                (
                    "For rows in seconds or MiB lower is better, so the ratio crpe/distribution must be "
                    "at most the target. There 1.00 means that crpe is at least as fast and 0.67 that it "
                    "is 1.5 times as fast. Memory may be at most 1.5 times distribution's."
                ),
                "",
                *notes,
                "## Physical ceiling",
                "",
                *(f"- {line}" for line in self.ceiling_lines()),
                "",
                "## Memory",
                "",
                *(f"- {detail}" for detail in self.memory_details.values()),
                "",
            ]
        if self.ran_node_rows:
            single_case, spread_case = node_cases(self.settings)
            lines += [
                f"## {single_case} and {spread_case} on PostgreSQL",
                "",
                f"Medians over {self.settings.rounds} rounds.",
                "",
            ]
            lines += markdown_table(self.node_table_header(), self.node_table_rows())
            lines += ["", *self.node_lines(), ""]
            if not self.ran_registry_rows:
                lines += notes
        lines += ["## All rounds", ""]
        lines += markdown_table(["row", "unit", "registry", "values per round"], self.round_rows())
        lines.append("")
        return lines

    def markdown_problems(self) -> list[str]:
        if not self.problems:
            return []

        lines = ["## Problems", ""]
        for row, registry, round_number, message in self.problems:
            lines += [f"{row} on {registry}, round {round_number}:", "", "```", message.strip(), "```", ""]
        for registry, text in self.server_logs.items():
            lines += [f"Last lines of the {registry} server log:", "", "```", text.strip(), "```", ""]
        return lines

    def round_rows(self) -> list[list[str]]:
        """Return one line per row and registry with the values of every round, in run order."""
        labels = {row.key: (row.label, row.unit) for row in build_rows(self.settings)}
        labels.update(CEILING_LABELS)
        labels.update(node_row_labels(self.settings))
        rows = []
        for (key, registry), values in self.values.items():
            label, unit = labels.get(key, (key, ""))
            rows.append([label, unit, registry, ", ".join(number_text(value, unit) for value in values)])
        return rows


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Format a table as lines of left-aligned columns separated by two spaces."""
    rows = [header, *rows]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# Profiles taken on 2026-12-04 on this 2-core machine, with crpe at the commit the run names. They explain
# the rows that missed a target in that run; rerun the profiles when the code changes.
BOUNDS = [
    (
        "- Blob GET as a share of nginx: Granian sends a blob with its native file send (ASGI pathsend), "
        "which `strace -c` on a worker shows as 128 KiB `read` calls followed by `writev` (about 2,050 reads "
        "and 1,220 writevs for 256 MiB), not `sendfile(2)`. Every byte is copied through user space once, "
        "which nginx avoids. ASGI gives an application no socket to call `sendfile` on, so this bound is "
        "Granian's. The share depends on the CPU. With the same code, crpe reached 87% of nginx on an AMD EPYC "
        "machine (2026-12-04). On an Intel Xeon machine (2026-12-05) it reached 70 to 81%, and distribution "
        "reached nginx's rate."
    ),
    (
        "- skopeo pull: both registries take about as long as skopeo's own copy between two local layouts "
        "(the skopeo ceiling above), so the row measures skopeo. Only crpe's side pays a token flow: a 401 "
        "ping, a token request whose Basic credentials cost one argon2id verification (about 60 ms, once "
        "per worker per minute), then bearer requests. distribution runs without authentication here."
    ),
    (
        "- 64 layers of 16 KiB: each blob costs one upload session (POST), one PATCH and one PUT. The PUT "
        "makes the blob durable with three fsyncs: the upload file, the blob directory after the hard "
        "link, and the SQLite WAL at commit (`synchronous=FULL`). Upload bookkeeping commits skip fsync. "
        "Removing any of the three would let a power loss lose a blob the client was told is stored."
    ),
    (
        "- Peak memory: each worker is a Python interpreter with Granian (27 MiB resident alone), "
        "Starlette, cryptography and the registry code, about 60 MiB; the supervisor is about 30 MiB. "
        "Workers are forked, so summed PSS (shown under Memory) is the fairer figure, and it is still "
        "about 3.8 times distribution's single Go process. Fewer workers trade throughput for memory "
        "(`crpe serve --workers 1`)."
    ),
]

METHOD = [
    (
        "- Both registries run on 127.0.0.1 at the same time, with filesystem storage in one "
        "temporary directory on the same disk. The directory is removed after the run."
    ),
    (
        "- The clients (wrk, hey, curl, skopeo) run on the same cores as the servers, so their CPU "
        "time is taken from the servers'. The report subtracts the CPU time of the benchmark's own "
        "process tree from /proc/stat's busy time and warns when other processes used more than 5 % "
        "of the machine."
    ),
    (
        "- The script needs root. It installs missing Debian packages (docker-registry, skopeo, wrk, "
        "hey, curl, nginx-light, and postgresql for the nodes row) with apt-get after any running "
        "apt-get has finished. It creates the "
        "empty directory /var/lib/containers/cache if missing, because each skopeo run mounts a "
        "private tmpfs there."
    ),
    (
        "- crpe: `crpe serve --data-dir DIR --listen 127.0.0.1:PORT --domain crpe.test` with its "
        "defaults, one new instance and the namespace `bench`. Pushes use the instance's public "
        "host name and pulls its VPC host name, both sent to 127.0.0.1 (Host header, curl "
        "`--connect-to`, and for skopeo a private mount namespace with its own /etc/hosts)."
    ),
    (
        "- distribution: `/usr/bin/docker-registry serve CONFIG`, where CONFIG is Debian's "
        "/etc/docker/registry/config.yml with the storage directory and the listen address "
        "changed and the `auth` section removed. The stock file points htpasswd at the directory "
        "/etc/docker/registry, where no login can succeed, so distribution serves anonymous "
        "requests while every request to crpe carries a bearer token or Basic credentials."
    ),
    (
        "- Images are OCI layouts written by `benchmarks/oci_layout.py`: random bytes in a tar, "
        "wrapped in gzip stored blocks, so the layers cannot be compressed and skopeo copies them "
        "unchanged (`--preserve-digests`)."
    ),
    (
        "- Manifest GET and HEAD: 32 connections, by tag, with "
        "`Accept: application/vnd.oci.image.manifest.v1+json` and for crpe a bearer token from its "
        "token endpoint; 1 s of warm-up, then the measured run. Any non-2xx response fails the row. "
        "GET uses wrk with 1 thread. HEAD uses hey, because wrk 4.1.0 waits for a body after a "
        "HEAD response with a Content-Length and completes no request."
    ),
    "- Blob GET: curl to /dev/null, three downloads in a row. MiB/s is the byte count over curl's total time.",
    (
        "- Pushes and pulls: wall time of `skopeo copy` between an OCI layout and the registry, "
        "each push to a new repository. Each skopeo run gets an empty blob-location cache, so it "
        "uploads every blob instead of mounting it from an earlier repository. The concurrent row "
        "is the wall time until all pushes have finished."
    ),
    (
        "- Peak memory: the maximum, sampled every 0.2 s over the whole run, of the summed VmRSS of "
        "the server process and all its descendants."
    ),
    (
        "- The physical ceiling has three parts: nginx with sendfile serving the same blob file, "
        "fetched with curl; hashlib's SHA-256 over the blob size from memory; and skopeo copying "
        "the large image between two local OCI layouts. The last one bounds the push and pull "
        "rows from the client side."
    ),
]


def node_method(settings: Any) -> list[str]:
    """Return the Method bullets of the nodes row, with the node, worker and connection counts of the run."""
    single_case, spread_case = node_cases(settings)
    nodes, workers = settings.nodes, settings.workers_per_node
    connections = settings.load_connections
    split = ", ".join(str(count) for count in split_connections(connections, nodes))
    return [
        (
            "- Nodes row: a PostgreSQL server from Debian's binaries (version under Versions) runs on "
            "127.0.0.1 in its own temporary directory as the `postgres` user, with its default settings "
            "apart from the listen address, so fsync is on. The single node and the "
            f"{nodes} other nodes, each a `crpe serve --listen 127.0.0.1:PORT` process, share one "
            "database on it (`CRPE_DATABASE_URL=postgresql://postgres@127.0.0.1:PORT/crpe`) and one "
            "`--data-dir`, so they share the token signing key and the filesystem blob store. They start "
            "one after another, and the first creates the schema and the administrator. An image with "
            f"one layer of {size_text(settings.small_layer_bytes)} is pushed once through the single node."
        ),
        (
            f"- Workers in the nodes row: the single node runs with `CRPE_WORKERS={nodes * workers}` and each "
            f"of the {nodes} other nodes with `CRPE_WORKERS={workers}`, so both cases run {nodes * workers} "
            "worker processes. crpe's default of one worker per core would give the nodes together "
            f"{nodes} times the single node's workers, and the row would measure extra processes "
            "competing for the same cores instead of the split into nodes."
        ),
        (
            f"- Load in the nodes row: {nodes} single-thread wrk processes started together, with {split} "
            f"connections ({connections} in all, as in the manifest GET row), for "
            f"{settings.load_warmup_seconds} s of warm-up and then {settings.load_seconds} s measured. "
            f"For {single_case} all of them load the single node, and for {spread_case} each loads one "
            "node. Both cases thus have the same client processes, and the rate is the sum of their "
            "rates. Each wrk connects to its node's port and sends the instance's VPC host name in the "
            "Host header and a bearer token from that node's token endpoint. Any non-2xx response fails "
            "the row, and wrk's count of responses slower than its 2 s timeout is reported. Nodes not "
            "under load stay idle. CPU time per request is the CPU time of the loaded nodes' process "
            "trees, and of PostgreSQL's, over the measured load, divided by the summed rate times the "
            "load time."
        ),
    ]
