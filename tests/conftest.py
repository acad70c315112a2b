from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import postgres_server  # noqa: F401  (session fixture: one PostgreSQL for all modules)
from rgw import rgw_server  # noqa: F401  (session fixture: one Ceph cluster for all modules)
from server import CrpeServer


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrpeServer]:
    """One crpe server shared by the tests of a session; tests create their own instances."""
    crpe = CrpeServer(Path(tmp_path_factory.mktemp("crpe"))).start()
    yield crpe
    crpe.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Start a dedicated server with extra `crpe serve` arguments or environment."""
    started: list[CrpeServer] = []

    def start(*args: str, **env: str) -> CrpeServer:
        root = tmp_path / f"server{len(started)}"
        root.mkdir()
        crpe = CrpeServer(root, extra_args=list(args), extra_env=env).start()
        started.append(crpe)
        return crpe

    yield start
    for crpe in started:
        crpe.stop()
