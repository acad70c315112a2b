"""Fuzz the control-plane API from its published OpenAPI document with schemathesis: no request may cause a 5xx.

The fuzzer runs as the administrator against a server of its own, because it creates, changes and disables
whatever the document describes.

NOTE: schemathesis 4.32.5's pytest integration (`schemathesis.pytest.from_fixture`) reads the private
`request.node._nodeid`, which pytest 9.2 no longer has, and a schema loaded at import time would need the
server before collection. So this test drives the public per-operation Hypothesis strategies
(`APIOperation.as_strategy`) itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed; pip install schemathesis")

from control_client import admin_key, basic_authorization  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402  (hypothesis comes with schemathesis)
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from server import CrpeServer  # noqa: E402

# Examples per operation and generation mode (valid and invalid input). With the document's 32 operations
# this keeps the file at 30 to 45 seconds on a loaded two-core machine (measured with schemathesis 4.32.5).
MAX_EXAMPLES = 12
GENERATION_MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrpeServer]:
    crpe = CrpeServer(Path(tmp_path_factory.mktemp("fuzz"))).start()
    yield crpe
    crpe.stop()


def test_control_plane_no_server_error(fuzzed_server: CrpeServer) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/api/v1/openapi.json", timeout=30)
    schema.config.update(base_url=fuzzed_server.url)
    headers = {"Authorization": basic_authorization(admin_key(fuzzed_server))}
    failures: list[str] = []
    operations = 0
    generated = 0

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in GENERATION_MODES:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
            def call(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=30)

            try:
                call()
            except Unsatisfiable:
                # Operations whose only inputs are unconstrained strings have no invalid input to generate.
                continue
            except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001  (collect every operation's failure)
                # schemathesis reports failed checks as a FailureGroup, a BaseExceptionGroup.
                failures.append(f"{operation.label} ({mode.value} input):\n{error}")
            generated += 1

    assert operations >= 30, f"the OpenAPI document lists only {operations} operations"
    assert generated >= operations, "most operations should have been fuzzed with valid and invalid input"
    assert not failures, "\n\n".join(failures)
