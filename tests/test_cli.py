"""The `crpe` command against a real `crpe serve`: output formats, profiles, errors and `crpe doctor`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from control_client import ControlClient, Tenant, admin_key, create_tenant, unique_name
from server import CrpeServer, crpe_command, free_port

# A narrow terminal: tables must still show whole ids, host names and passwords, which are wider than their
# share of 80 columns.
TABLE_COLUMNS = "80"


def run_crpe(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*crpe_command(), *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=60)


def crpe_env(server: CrpeServer, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in server.env.items() if key != "CRPE_PROFILE"}
    env.update(extra)
    return env


def assert_one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("crpe: error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


@dataclass
class Setup:
    """An instance of the administrator with namespace team holding team/app, and a legacy instance."""

    server: CrpeServer
    instance: dict[str, Any]
    legacy: dict[str, Any]
    legacy_namespace: str


@pytest.fixture(scope="module")
def setup(server: CrpeServer) -> Iterator[Setup]:
    admin = ControlClient.admin(server)
    instance = admin.create_instance()
    admin.create_namespace(instance["id"], "team")
    admin.create_repository(instance["id"], "team/app")
    admin.set_password(instance["id"])
    legacy = server.cli_json("instance", "import", "--account", "admin", "--created-at", "2023-05-01",
                             "--region", "cn-hangzhou")
    legacy_namespace = unique_name("legacy")
    admin.create_namespace(legacy["id"], legacy_namespace)
    admin.close()
    yield Setup(server, instance, legacy, legacy_namespace)


# --- --output json|table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputCase:
    """A command, and the values of its JSON output that its table must show in full."""

    name: str
    arguments: Callable[[Setup], list[str]]
    table_values: Callable[[Any], list[str]]


OUTPUT_CASES = [
    OutputCase("region-list", lambda s: ["region", "list"],
               lambda out: [value for region in out for value in (region["id"], region["name"])]),
    OutputCase("instance-list", lambda s: ["instance", "list"],
               lambda out: [value for entry in out[-3:] for value in
                            (entry["id"], entry["endpoints"]["public"], entry["endpoints"]["vpc"])]),
    OutputCase("instance-show", lambda s: ["instance", "show", s.instance["id"]],
               lambda out: [out["id"], out["endpoints"]["public"], out["endpoints"]["vpc"], out["commands"]["login"]]),
    OutputCase("namespace-list", lambda s: ["namespace", "list", "--instance", s.instance["id"]],
               lambda out: [entry["name"] for entry in out]),
    OutputCase("repository-list", lambda s: ["repository", "list", "--instance", s.instance["id"]],
               lambda out: [entry["name"] for entry in out]),
    OutputCase("account-list", lambda s: ["account", "list"],
               lambda out: [value for entry in out[:3] for value in (entry["id"], entry["name"])]),
    OutputCase("access-key-list", lambda s: ["access-key", "list"], lambda out: [entry["id"] for entry in out]),
    OutputCase("audit-list", lambda s: ["audit", "list", "--limit", "3"],
               lambda out: [value for entry in out for value in (entry["actor"], entry["action"], entry["resource"])]),
]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=[case.name for case in OUTPUT_CASES])
def test_output_json_and_table(setup: Setup, case: OutputCase) -> None:
    env = crpe_env(setup.server, COLUMNS=TABLE_COLUMNS)
    arguments = case.arguments(setup)

    as_json = run_crpe(env, *arguments, "--output", "json")
    as_table = run_crpe(env, *arguments, "-o", "table")

    assert as_json.returncode == 0, as_json.stderr
    assert as_table.returncode == 0, as_table.stderr
    table_values = case.table_values(json.loads(as_json.stdout))
    assert table_values, "the JSON output is empty, so the table check proves nothing"
    for value in table_values:
        assert value in as_table.stdout, f"{value!r} is missing or cut in the table:\n{as_table.stdout}"


def test_token_get_outputs(setup: Setup) -> None:
    env = crpe_env(setup.server, COLUMNS=TABLE_COLUMNS)

    as_json = run_crpe(env, "token", "get", "--instance", setup.instance["id"], "-o", "json")
    as_table = run_crpe(env, "token", "get", "--instance", setup.instance["id"])

    assert as_json.returncode == 0, as_json.stderr
    issued = json.loads(as_json.stdout)
    assert issued["username"] == "admin"
    assert issued["password"].count(".") == 2
    assert as_table.returncode == 0, as_table.stderr
    # The table is the default output, so it must show the whole password for `docker login` to use.
    assert "…" not in as_table.stdout, as_table.stdout
    tokens = [word for word in as_table.stdout.split() if word.count(".") == 2]
    assert len(tokens) == 1, as_table.stdout
    # Each call issues a new password, so only its shape and length can be compared with the JSON output.
    assert abs(len(tokens[0]) - len(issued["password"])) <= 20, as_table.stdout


def test_instance_create_json(setup: Setup) -> None:
    created = setup.server.cli_json("instance", "create", "--region", "cn-shanghai")

    assert created["region"] == "cn-shanghai"
    assert created["legacy"] is False
    assert created["endpoints"]["vpc"] == f"crpi-{created['id']}-vpc.cn-shanghai.personal.cr.crpe.test"


def test_instance_import_json(setup: Setup) -> None:
    assert setup.legacy["legacy"] is True
    assert setup.legacy["endpoints"] == {"public": "registry.cn-hangzhou.crpe.test",
                                         "vpc": "registry-vpc.cn-hangzhou.crpe.test"}


# --- Profiles ----------------------------------------------------------------------------------------------


@pytest.fixture
def tenant(server: CrpeServer) -> Iterator[Tenant]:
    admin = ControlClient.admin(server)
    created = create_tenant(admin, "cli")
    yield created
    created.close()
    admin.close()


def configure(env: dict[str, str], server: CrpeServer, profile: str, key: tuple[str, str], region: str,
              *options: str) -> subprocess.CompletedProcess[str]:
    return run_crpe(env, "configure", "--endpoint", server.url, "--access-key-id", key[0],
                    "--access-key-secret", key[1], "--region", region, "--profile", profile, *options)


def test_profile_selection(server: CrpeServer, tenant: Tenant, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CRPE_PROFILE"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    tenant_key = (tenant.client.key_id, tenant.client.secret)

    wrote_default = configure(env, server, "default", admin_key(server), "cn-hangzhou")
    wrote_tenant = configure(env, server, "tenant", tenant_key, "cn-shanghai")
    default_accounts = run_crpe(env, "account", "list", "-o", "json")
    tenant_accounts = run_crpe(env, "account", "list", "--profile", "tenant", "-o", "json")
    created = run_crpe(env, "instance", "create", "--profile", "tenant", "-o", "json")
    from_environment = run_crpe({**env, "CRPE_PROFILE": "tenant"}, "instance", "list", "-o", "json")

    config_file = tmp_path / "config" / "crpe" / "config.json"
    assert wrote_default.returncode == 0, wrote_default.stderr
    assert wrote_tenant.returncode == 0, wrote_tenant.stderr
    assert str(config_file) in wrote_tenant.stdout
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert set(json.loads(config_file.read_text())["profiles"]) == {"default", "tenant"}
    assert "admin" in [entry["name"] for entry in json.loads(default_accounts.stdout)]
    assert [entry["name"] for entry in json.loads(tenant_accounts.stdout)] == [tenant.name]
    assert created.returncode == 0, created.stderr
    instance = json.loads(created.stdout)
    assert instance["region"] == "cn-shanghai", "instance create takes the region of the selected profile"
    assert from_environment.returncode == 0, from_environment.stderr
    assert [entry["id"] for entry in json.loads(from_environment.stdout)] == [instance["id"]]


def test_configure_default_option(server: CrpeServer, tenant: Tenant, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CRPE_PROFILE"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    configure(env, server, "default", admin_key(server), "cn-hangzhou")

    configure(env, server, "tenant", (tenant.client.key_id, tenant.client.secret), "cn-hangzhou", "--default")
    accounts = run_crpe(env, "account", "list", "-o", "json")

    assert accounts.returncode == 0, accounts.stderr
    assert [entry["name"] for entry in json.loads(accounts.stdout)] == [tenant.name]


def test_unknown_profile_error(server: CrpeServer) -> None:
    result = run_crpe(crpe_env(server), "region", "list", "--profile", "no-such-profile")

    assert_one_line_error(result, "no-such-profile", "crpe configure")


def test_unreachable_control_plane_error(server: CrpeServer, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CRPE_PROFILE"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    closed_port = free_port()
    run_crpe(env, "configure", "--endpoint", f"http://127.0.0.1:{closed_port}", "--access-key-id", "CRPE0",
             "--access-key-secret", "secret", "--region", "cn-hangzhou", "--profile", "default")

    result = run_crpe(env, "region", "list")

    assert_one_line_error(result, "cannot reach the control plane", f"127.0.0.1:{closed_port}")


# --- Failures ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "parts"), [
    pytest.param(["instance", "show", "zzzzzzzzzzzzzzzz"], ["zzzzzzzzzzzzzzzz", "not found", "crpe instance list"],
                 id="unknown-instance"),
    pytest.param(["namespace", "create", "team", "--instance", "zzzzzzzzzzzzzzzz"],
                 ["zzzzzzzzzzzzzzzz", "not found"], id="namespace-in-unknown-instance"),
    pytest.param(["instance", "create", "--region", "xx-nowhere-1"], ["xx-nowhere-1", "cn-hangzhou", "me-east-1"],
                 id="bad-region"),
    pytest.param(["instance", "list", "--region", "xx-nowhere-1"], ["xx-nowhere-1", "cn-hangzhou"],
                 id="bad-region-list"),
    pytest.param(["repository", "show", "no-slash", "--instance", "zzzzzzzzzzzzzzzz"],
                 ["no-slash", "<namespace>/<repository>"], id="bad-repository-name"),
    pytest.param(["password", "set", "--instance", "zzzzzzzzzzzzzzzz"], ["standard input"], id="no-password"),
])
def test_failure_one_line_error(server: CrpeServer, arguments: list[str], parts: list[str]) -> None:
    result = run_crpe(crpe_env(server), *arguments, stdin="")

    assert_one_line_error(result, *parts)


# --- crpe doctor -------------------------------------------------------------------------------------------


def doctor(setup: Setup, reference: str, credentials: bool) -> tuple[int, dict[str, Any]]:
    result = run_crpe(crpe_env(setup.server), "doctor", reference,
                      "--credentials" if credentials else "--no-credentials", "-o", "json")
    assert result.stderr.strip() == "", result.stderr
    return result.returncode, json.loads(result.stdout)


def test_doctor_new_public_with_credentials(setup: Setup) -> None:
    port = setup.server.port
    vpc = setup.instance["endpoints"]["vpc"]

    status, report = doctor(setup, f"{setup.instance['endpoints']['public']}:{port}/team/app:v1", True)

    assert status == 0, "push is allowed, so the reference is usable"
    assert report["endpoint"] == "exclusive-public"
    assert report["instance_id"] == setup.instance["id"]
    assert report["instance_found"] is True
    assert report["pull"].startswith("refused")
    assert vpc in report["pull"]
    assert report["push"] == "allowed"
    assert report["use_instead"] == f"{vpc}:{port}"


def test_doctor_new_vpc_with_credentials(setup: Setup) -> None:
    vpc = setup.instance["endpoints"]["vpc"]

    status, report = doctor(setup, f"{vpc}:{setup.server.port}/team/app:v1", True)

    assert status == 0
    assert report["endpoint"] == "exclusive-vpc"
    assert report["pull"] == "allowed"
    assert report["push"] == "allowed"
    assert any("VPC networks" in note for note in report["notes"]), report["notes"]


def test_doctor_new_public_without_credentials(setup: Setup) -> None:
    host = f"{setup.instance['endpoints']['public']}:{setup.server.port}"

    status, report = doctor(setup, f"{host}/team/app", False)

    assert status == 2
    assert report["credentials"] is False
    assert report["pull"].startswith("refused")
    assert report["push"].startswith("refused")
    assert any(f"docker login {host}" in note for note in report["notes"]), report["notes"]


@pytest.mark.parametrize("network", ["public", "vpc"])
def test_doctor_legacy_endpoint(setup: Setup, network: str) -> None:
    host = setup.legacy["endpoints"][network]

    status, report = doctor(setup, f"{host}:{setup.server.port}/{setup.legacy_namespace}/app:v1", True)

    assert status == 0
    assert report["endpoint"] == f"legacy-{network}"
    assert report["region"] == "cn-hangzhou"
    assert report["pull"] == "allowed"
    assert report["push"] == "allowed"


@pytest.mark.parametrize(("host", "reason"), [
    pytest.param("crpi-zzzzzzzzzzzzzzzz.cn-hangzhou.personal.cr.crpe.test", "crpe instance list",
                 id="unknown-instance"),
    pytest.param("registry.example.test", "not under this registry's domain", id="other-domain"),
    pytest.param("cr.crpe.test", "control plane", id="control-plane"),
])
def test_doctor_unknown_host(setup: Setup, host: str, reason: str) -> None:
    status, report = doctor(setup, f"{host}/team/app:v1", True)

    assert status == 2
    assert report["pull"].startswith("refused")
    assert reason in report["pull"]
    assert report["push"] == report["pull"]


def test_doctor_instance_in_other_region(setup: Setup) -> None:
    instance_id = setup.instance["id"]

    status, report = doctor(setup, f"crpi-{instance_id}.cn-shanghai.personal.cr.crpe.test/team/app", True)

    assert status == 2
    assert "cn-hangzhou" in report["pull"]
    assert report["use_instead"] == setup.instance["endpoints"]["public"]


def test_doctor_table_output(setup: Setup) -> None:
    reference = f"{setup.instance['endpoints']['vpc']}:{setup.server.port}/team/app:v1"

    result = run_crpe(crpe_env(setup.server), "doctor", reference, "--credentials")

    assert result.returncode == 0, result.stderr
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in result.stdout.splitlines()
             if len(line.split(None, 1)) == 2}
    assert lines["reference"] == reference
    assert lines["pull"] == "allowed"
    assert lines["push"] == "allowed"


def test_gc_unreachable_database_one_line(tmp_path: Path) -> None:
    port = free_port()  # Nothing listens here.
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}

    result = run_crpe(env, "gc", "--data-dir", str(tmp_path), "--database-url",
                      f"postgresql://crpe@127.0.0.1:{port}/crpe", "--dry-run")

    assert_one_line_error(result, "crpe: error: the metadata database failed: ", f"port {port} failed",
                          "Check database_url (CRPE_DATABASE_URL)")
    assert "Traceback" not in result.stderr


def test_serve_missing_bucket_one_line(tmp_path: Path, rgw_server) -> None:  # type: ignore[no-untyped-def]
    storage = {"type": "s3", "bucket": "absent-bucket", "endpoint": rgw_server.endpoint,
               "access_key": rgw_server.access_key, "secret_key": rgw_server.secret_key}
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "CRPE_STORAGE": json.dumps(storage),
           "CRPE_REGIONS": "cn-hangzhou"}

    result = run_crpe(env, "serve", "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}")

    assert_one_line_error(result, "blob store s3://absent-bucket/cn-hangzhou/ at ",
                          "Fix: create the bucket absent-bucket, or fix the bucket setting")
