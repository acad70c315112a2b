"""A throwaway single-node Ceph cluster with RADOS Gateway (S3) for tests, started from Debian's packages.

The `rgw_server` fixture starts one monitor, one OSD on `memstore` (objects live in the OSD's memory, so nothing
persists) and radosgw with its S3 API on a free port of 127.0.0.1, in a new temporary directory, and stops the
daemons by their process ids at the end of the session. Cephx authentication is off, so no keyrings are needed;
the cluster accepts connections on loopback only. Starting takes about two minutes, so the fixture starts the
cluster once per session and tests create their own buckets on it.

Missing binaries fail the RGW tests with a message that names the Debian packages. Set CRPE_TEST_SKIP_RGW=1 to
skip them on a machine without Ceph.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

SKIP_VARIABLE = "CRPE_TEST_SKIP_RGW"
DEBIAN_PACKAGES = "radosgw ceph-mon ceph-osd"
# ceph, radosgw-admin and monmaptool come from ceph-common and ceph-base, which those packages depend on.
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
REGION = "us-east-1"
S3_USER = "crpe-test"
# Bound on the whole start, from the monitor's mkfs to the first S3 request that succeeds.
START_TIMEOUT_SECONDS = 240
# Bound on one `ceph` or `radosgw-admin` command.
COMMAND_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30
# A free port can be taken by another process between the check and the daemon's bind.
START_ATTEMPTS = 3
# Daemon name to the start of the error that Ceph 16.2 writes to standard error when the daemon's port is taken.
BIND_FAILURE_MARKERS = {"mon.a": "unable to bind to", "client.rgw.a": "failed to bind address"}
# Maximum size of the memstore device. Tests write a few hundred MiB, and radosgw frees the data of deleted
# objects only when its garbage collector runs (by default 2 hours after the delete).
MEMSTORE_DEVICE_BYTES = 2 * 1024**3

CEPH_CONF = """\
[global]
fsid = {fsid}
mon_initial_members = a
mon_host = v2:127.0.0.1:{mon_port}
public_addr = 127.0.0.1
public_network = 127.0.0.0/8
cluster_network = 127.0.0.0/8
ms_bind_ipv4 = true
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
osd_objectstore = memstore
memstore_device_bytes = {memstore_device_bytes}
run_dir = {root}/run
admin_socket = {root}/run/$name.$pid.asok
log_file = {root}/log/$name.log
mon_data = {root}/mon/$cluster-$id
osd_data = {root}/osd/$cluster-$id
keyring = {root}/keyring

[client.rgw.a]
# Without these two settings radosgw asks the monitor for a secure connection and retries forever on
# "send_auth_request get_initial_auth_request returned -13".
ms_mon_client_mode = crc
auth_client_required = none
rgw_data = {root}/rgw
"""


class RgwServer:
    """A running Ceph cluster whose radosgw serves S3 on `endpoint` to one user, `access_key`/`secret_key`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "ceph.conf"
        self.fsid = str(uuid.uuid4())
        self.mon_port = 0
        self.rgw_port = 0
        self.access_key = secrets.token_hex(10).upper()
        self.secret_key = secrets.token_hex(20)
        # Daemon name to its process, in start order.
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.rgw_port}"

    def client(self) -> Any:
        """Return a boto3 S3 client for this server's user, with path-style addressing and signature v4."""
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                        connect_timeout=10, read_timeout=60, retries={"max_attempts": 2})
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, config=config)

    def create_bucket(self, name: str) -> str:
        """Create an empty bucket and return its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def start(self) -> None:
        """Start the monitor, the OSD and radosgw, create the S3 user and wait until S3 requests succeed.

        Raises RuntimeError naming the failed step. The caller stops the daemons that did start.
        """
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for directory in ("run", "log", "mon", "osd", "rgw"):
            (self.root / directory).mkdir()
        self._start_monitor(deadline)
        self._start_osd(deadline)
        self._start_radosgw(deadline)

    def stop(self) -> None:
        """Stop the daemons in reverse start order."""
        for name in reversed(list(self.processes)):
            self._stop_daemon(name, signal.SIGTERM)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """Return the last lines of a daemon's log file and of its captured standard output and error."""
        tails = []
        for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.out"):
            try:
                text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            except FileNotFoundError:
                continue
            except OSError as error:
                text = f"(unreadable: {error})"
            tails.append(f"--- {path}:\n{text}")
        return "\n".join(tails) or f"(no log files for {name} in {self.root / 'log'})"

    def log_tails(self) -> str:
        return "\n".join(self.log_tail(name) for name in self.processes) or "(no daemon was started)"

    def _start_monitor(self, deadline: float) -> None:
        for _attempt in range(START_ATTEMPTS):
            self.mon_port = _free_port()
            self.conf.write_text(CEPH_CONF.format(fsid=self.fsid, mon_port=self.mon_port, root=self.root,
                                                  memstore_device_bytes=MEMSTORE_DEVICE_BYTES))
            # `ceph-mon --mkfs` copies the monitor's address from the monmap into the monitor's data, so a new
            # port needs a new monmap and a new data directory.
            monmap = self.root / "monmap"
            monmap.unlink(missing_ok=True)
            shutil.rmtree(self.root / "mon" / "ceph-a", ignore_errors=True)
            self._run(["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]",
                       "--fsid", self.fsid, str(monmap)], deadline)
            self._run(["ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap)], deadline)
            self._spawn("mon.a", ["ceph-mon", "-c", str(self.conf), "-i", "a", "-f"])
            if self._wait_for("mon.a", f"waiting for mon.a to answer on 127.0.0.1:{self.mon_port}",
                              lambda: self._ceph(["mon", "stat"], deadline, connect_timeout=5), deadline):
                return
            self._stop_daemon("mon.a", signal.SIGKILL)
        raise RuntimeError(f"mon.a failed to bind a free port of 127.0.0.1 in {START_ATTEMPTS} attempts, "
                           f"the last {self.mon_port}")

    def _start_osd(self, deadline: float) -> None:
        osd_uuid = str(uuid.uuid4())
        # memstore's mkfs writes its fsid file into the OSD's data directory but does not create the directory.
        (self.root / "osd" / "ceph-0").mkdir()
        osd_id = self._ceph(["osd", "new", osd_uuid], deadline).strip()
        if osd_id != "0":
            raise RuntimeError(f"`ceph osd new` returned OSD id {osd_id!r}, expected '0' in a new cluster")
        self._run(["ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], deadline)
        self._ceph(["osd", "crush", "add-bucket", "localhost", "host"], deadline)
        self._ceph(["osd", "crush", "move", "localhost", "root=default"], deadline)
        self._ceph(["osd", "crush", "add", "osd.0", "1.0", "host=localhost"], deadline)
        # The OSD picks its own ports, from ms_bind_port_min to ms_bind_port_max (6800 to 7300), skipping used ones.
        self._spawn("osd.0", ["ceph-osd", "-c", str(self.conf), "-i", "0", "-f"])

        def check_osd_up() -> None:
            status = json.loads(self._ceph(["osd", "stat", "--format", "json"], deadline))
            if status.get("num_up_osds") != 1:
                raise RuntimeError(f"`ceph osd stat` reports {status.get('num_up_osds')} OSDs up")

        self._wait_for("osd.0", "waiting for osd.0 to be up", check_osd_up, deadline)

    def _start_radosgw(self, deadline: float) -> None:
        # radosgw-admin creates the pools it needs if radosgw has not created them yet.
        self._run(["radosgw-admin", "-c", str(self.conf), "-n", "client.admin", "user", "create",
                   f"--uid={S3_USER}", f"--display-name={S3_USER}", f"--access-key={self.access_key}",
                   f"--secret={self.secret_key}"], deadline)
        for _attempt in range(START_ATTEMPTS):
            self.rgw_port = _free_port()
            client = self.client()
            # The endpoint is an argument, not in ceph.conf, so that a retry on another port needs no new file.
            self._spawn("client.rgw.a", ["radosgw", "-c", str(self.conf), "-n", "client.rgw.a", "-f",
                                         "--rgw_frontends", f"beast endpoint=127.0.0.1:{self.rgw_port}"])
            if self._wait_for("client.rgw.a", f"waiting for radosgw to answer S3 requests on {self.endpoint}",
                              client.list_buckets, deadline):
                return
            # radosgw 16.2.15 logs the failed bind but then takes about 3 minutes to exit.
            self._stop_daemon("client.rgw.a", signal.SIGKILL)
        raise RuntimeError(f"radosgw failed to bind a free port of 127.0.0.1 in {START_ATTEMPTS} attempts, "
                           f"the last {self.rgw_port}")

    def _wait_for(self, name: str, step: str, probe: Callable[[], object], deadline: float) -> bool:
        """Call `probe` every second until it returns, then return True.

        Returns False as soon as daemon `name` logs that its port is taken. Raises RuntimeError with the last
        error of `probe` if a daemon exits or the deadline passes.
        """
        while True:
            try:
                probe()
                return True
            except (RuntimeError, BotoCoreError, ClientError) as error:
                last_error = error
            if self._failed_to_bind(name):
                return False
            self._check_running(deadline, f"{step} (last error: {last_error})")
            time.sleep(1)

    def _check_running(self, deadline: float, step: str) -> None:
        """Raise RuntimeError if a daemon has exited or the deadline has passed."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode} while {step}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {START_TIMEOUT_SECONDS} s while {step}")

    def _failed_to_bind(self, name: str) -> bool:
        """Return whether the current run of daemon `name` has logged that its port is taken."""
        marker = BIND_FAILURE_MARKERS.get(name)
        if marker is None:
            return False
        try:
            return marker in (self.root / "log" / f"{name}.out").read_text(errors="replace")
        except FileNotFoundError:
            return False

    def _spawn(self, name: str, command: list[str]) -> None:
        if shutil.which("setpriv"):
            # The kernel kills the daemon when the test process dies without stopping it, for example on SIGKILL.
            # setpriv (from util-linux) sets that parent death signal and then runs the daemon in its own process.
            command = ["setpriv", "--pdeathsig", "KILL", "--", *command]
        # Each run gets a new output file, so that _failed_to_bind reads only the current run's errors.
        with open(self.root / "log" / f"{name}.out", "wb") as output:
            # The child keeps its own descriptor of the output file, so ours can close at once.
            self.processes[name] = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                                    stderr=subprocess.STDOUT, cwd=self.root, env=_ceph_env())

    def _stop_daemon(self, name: str, first_signal: signal.Signals) -> None:
        """Send `first_signal` to a daemon, and SIGKILL if it is still running after STOP_TIMEOUT_SECONDS."""
        process = self.processes.pop(name)
        if process.poll() is not None:
            return
        process.send_signal(first_signal)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_SECONDS)

    def _ceph(self, arguments: list[str], deadline: float, connect_timeout: int = 30) -> str:
        """Run a `ceph` command against this cluster and return its standard output."""
        return self._run(["ceph", "-c", str(self.conf), "--connect-timeout", str(connect_timeout), *arguments],
                         deadline)

    def _run(self, command: list[str], deadline: float) -> str:
        self._check_running(deadline, f"starting {' '.join(command)}")
        timeout = max(1.0, min(COMMAND_TIMEOUT_SECONDS, deadline - time.monotonic()))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                    cwd=self.root, env=_ceph_env())
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(command)} timed out after {timeout:.0f} s") from None
        if result.returncode != 0:
            output = "\n".join(f"{result.stdout}{result.stderr}".splitlines()[-30:])
            raise RuntimeError(f"{' '.join(command)} failed with exit status {result.returncode}, last lines "
                               f"of its output:\n{output}")
        return result.stdout


def start_rgw() -> RgwServer:
    """Start a Ceph cluster with radosgw in a new temporary directory.

    Raises RuntimeError naming the failed step, with the daemons' log tails.
    """
    missing = [binary for binary in BINARIES if shutil.which(binary) is None]
    if missing:
        raise RuntimeError(f"Ceph binaries not found on PATH: {', '.join(missing)}: install the Debian packages "
                           f"{DEBIAN_PACKAGES} (apt-get install --no-install-recommends {DEBIAN_PACKAGES}), "
                           f"or set {SKIP_VARIABLE}=1 to skip the RGW tests")
    # Not under pytest's tmp_path: Ceph's admin sockets are Unix sockets, whose paths must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="crpe-rgw-"))
    server = RgwServer(root)
    try:
        server.start()
    except BaseException as error:
        tails = server.log_tails()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        if isinstance(error, RuntimeError):
            raise RuntimeError(f"{error}\ndaemon logs:\n{tails}") from None
        raise
    return server


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[RgwServer]:
    """Start one Ceph cluster with radosgw for the test session; tests create their own buckets on it."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1 is set")
    try:
        server = start_rgw()
    except RuntimeError as error:
        pytest.fail(f"cannot start Ceph with radosgw for the tests: {error}", pytrace=False)
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.root, ignore_errors=True)


def _ceph_env() -> dict[str, str]:
    # CEPH_ARGS would add options to every command, and CEPH_CONF is unused because every command gets -c.
    return {name: value for name, value in os.environ.items() if name not in ("CEPH_ARGS", "CEPH_CONF")}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
