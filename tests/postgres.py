"""A throwaway PostgreSQL server for tests, started from Debian's server binaries.

The `postgres_server` fixture runs `initdb` and `pg_ctl start` in a new temporary directory, listens on
127.0.0.1 only, and stops the server at the end of the session. PostgreSQL refuses to run as root, so
when the tests run as root (as in CI) every server command runs as the `postgres` system user, which
Debian's `postgresql` package creates.

Missing binaries fail the PostgreSQL tests with a message that names the Debian package. Set
CRPE_TEST_SKIP_POSTGRES=1 to skip them on a machine without PostgreSQL.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

SKIP_VARIABLE = "CRPE_TEST_SKIP_POSTGRES"
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60
# A free port can be taken by another process between the check and the server's bind.
START_ATTEMPTS = 3


class PostgresServer:
    """A running PostgreSQL server with trust authentication for the `postgres` superuser."""

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data_dir = root / "data"
        self.log_file = root / "server.log"
        self.port = port

    def url(self, database: str) -> str:
        """Return the SQLAlchemy URL of `database` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        """Open an autocommit psycopg connection to `database`."""
        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database,
                               autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        with self.connect() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.data_dir} "
                   # fsync=off trades crash safety, which a throwaway test server does not need, for speed.
                   "-c fsync=off")
        _run_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                          "-o", options, "-w", "-t", str(START_TIMEOUT_SECONDS), "start"],
                         timeout=START_TIMEOUT_SECONDS + 10)

    def stop(self) -> None:
        _run_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                          "-t", str(START_TIMEOUT_SECONDS), "stop"], timeout=START_TIMEOUT_SECONDS + 10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(server log {self.log_file} is unreadable: {error})"


def find_bin_dir() -> Path | None:
    """Return the bin directory of the highest PostgreSQL version installed by Debian, or None."""
    if not DEBIAN_BINARIES.is_dir():
        return None
    versions = []
    for entry in DEBIAN_BINARIES.iterdir():
        bin_dir = entry / "bin"
        if not re.fullmatch(r"\d+(\.\d+)?", entry.name):
            continue
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            versions.append((tuple(int(part) for part in entry.name.split(".")), bin_dir))
    return max(versions)[1] if versions else None


def start_postgres() -> PostgresServer:
    """Initialize a cluster in a new temporary directory and start a server on a free loopback port.

    Raises RuntimeError naming the failed command, with its output or the server log.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found in {DEBIAN_BINARIES}/*/bin: "
                           "install the Debian package `postgresql` (apt-get install postgresql), or set "
                           f"{SKIP_VARIABLE}=1 to skip the PostgreSQL tests")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise RuntimeError(f"PostgreSQL cannot run as root and the system user {SYSTEM_USER!r} is missing: "
                               "install the Debian package `postgresql`, which creates it") from None

    # Not under pytest's tmp_path: its parent directory is private to the current user, so the
    # `postgres` user could not reach the data directory.
    root = Path(tempfile.mkdtemp(prefix="crpe-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(root, SYSTEM_USER, SYSTEM_USER)
    try:
        _run_as_postgres([str(bin_dir / "initdb"), "--auth=trust", f"--username={SUPERUSER}", "--encoding=UTF8",
                          # Locale C compares bytes, which for UTF-8 is code point order, as SQLite does.
                          "--no-locale", "--no-sync", "-D", str(root / "data")], timeout=120)
        for attempt in range(1, START_ATTEMPTS + 1):
            server = PostgresServer(bin_dir, root, _free_port())
            try:
                server.start()
                return server
            except RuntimeError as error:
                if attempt == START_ATTEMPTS or "could not bind" not in server.log_tail():
                    raise RuntimeError(f"{error}\nserver log {server.log_file}:\n{server.log_tail()}") from None
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    raise AssertionError("unreachable: the last start attempt returns or raises")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start one PostgreSQL server for the test session; tests create their own databases on it."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1 is set")
    try:
        server = start_postgres()
    except RuntimeError as error:
        pytest.fail(f"cannot start PostgreSQL for the tests: {error}", pytrace=False)
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.root, ignore_errors=True)


def _run_as_postgres(command: list[str], timeout: float) -> None:
    """Run a server command, as the `postgres` system user when the tests run as root."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", SYSTEM_USER, "--", *command]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(command)} timed out after {timeout} s") from None
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
