"""The `crpe` command: run the server, and manage the registry through the control-plane API."""

from __future__ import annotations

import base64
import json
import os
import sys
from enum import Enum
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from crpe import profiles

app = typer.Typer(help="crpe: a multi-tenant container registry with per-instance exclusive endpoints.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
region_app = typer.Typer(help="Regions of the deployment.", no_args_is_help=True)
instance_app = typer.Typer(help="Registry instances.", no_args_is_help=True)
namespace_app = typer.Typer(help="Namespaces of an instance.", no_args_is_help=True)
password_app = typer.Typer(help="Registry login passwords.", no_args_is_help=True)
app.add_typer(region_app, name="region")
app.add_typer(instance_app, name="instance")
app.add_typer(namespace_app, name="namespace")
app.add_typer(password_app, name="password")


class OutputFormat(str, Enum):
    json = "json"
    table = "table"


OutputOption = Annotated[OutputFormat, typer.Option("--output", "-o", help="Output format.")]
ProfileOption = Annotated[str | None, typer.Option("--profile", help="CLI profile to use (default: the "
                                                                      "profile marked default).")]
RegionOption = Annotated[str | None, typer.Option("--region", help="Region id, for example cn-hangzhou.")]


class CliError(Exception):
    """A failure to report as one line on standard error, with exit status 1."""


class Client:
    def __init__(self, profile_name: str | None) -> None:
        try:
            self.profile = profiles.load(profile_name)
        except LookupError as error:
            raise CliError(str(error)) from None
        credentials = f"{self.profile.access_key_id}:{self.profile.access_key_secret}".encode()
        self._http = httpx.Client(base_url=self.profile.endpoint, timeout=60, headers={
            "Authorization": "Basic " + base64.b64encode(credentials).decode(), "User-Agent": "crpe-cli"})

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, f"/api/v1{path}", **kwargs)
        except httpx.HTTPError as error:
            raise CliError(f"cannot reach the control plane at {self.profile.endpoint}: {error}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise CliError(f"{message} (HTTP {response.status_code})")
        return response.json()


def emit(value: Any, output: OutputFormat, columns: list[str] | None = None) -> None:
    if output is OutputFormat.json:
        typer.echo(json.dumps(value, indent=2))
        return
    rows = value if isinstance(value, list) else [value]
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(row, column) for column in columns))
    Console().print(table)


def _cell(row: dict[str, Any], column: str) -> str:
    value: Any = row
    for part in column.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


@app.command()
def serve(
    data_dir: Annotated[str | None, typer.Option(help="Data directory (env CRPE_DATA_DIR).")] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to listen on (env CRPE_LISTEN).")] = None,
    domain: Annotated[str | None, typer.Option(help="Base domain of registry host names (env CRPE_DOMAIN).")]
    = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes; 0 means one per CPU core.")] = None,
) -> None:
    """Run the registry and control plane on the embedded default (SQLite and the local filesystem)."""
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    from crpe import bootstrap, logs
    from crpe.settings import SettingsError, from_environment

    logs.configure()
    try:
        settings = from_environment(data_dir=data_dir, listen=listen, domain=domain, workers=workers)
    except SettingsError as error:
        raise CliError(str(error)) from None
    bootstrap.prepare(settings)
    os.environ.update(settings.to_environment())
    worker_count = settings.workers or os.cpu_count() or 1
    typer.echo(f"crpe listening on http://{settings.listen_host}:{settings.listen_port} "
               f"(domain {settings.domain}, {worker_count} workers, data {settings.data_dir})", err=True)
    Server(
        "crpe.app:create_app_from_environment", address=settings.listen_host, port=settings.listen_port,
        interface=Interfaces.ASGI, workers=worker_count, loop=Loops.uvloop, factory=True,
        log_access=False, respawn_failed_workers=True,
    ).serve()


@region_app.command("list")
def region_list(output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """List the regions this deployment serves."""
    emit(Client(profile).request("GET", "/regions"), output, ["id", "name"])


_INSTANCE_COLUMNS = ["id", "region", "endpoints.public", "endpoints.vpc"]


@instance_app.command("create")
def instance_create(region: RegionOption = None, name: Annotated[str, typer.Option(help="Display name.")] = "",
                    output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Create an instance in a region."""
    client = Client(profile)
    emit(client.request("POST", "/instances", json={"region": region or client.profile.region or None,
                                                     "name": name}), output, _INSTANCE_COLUMNS)


@instance_app.command("list")
def instance_list(region: RegionOption = None, output: OutputOption = OutputFormat.table,
                  profile: ProfileOption = None) -> None:
    """List your instances, in one region when --region is given."""
    params = {"region": region} if region else {}
    emit(Client(profile).request("GET", "/instances", params=params), output, _INSTANCE_COLUMNS)


@instance_app.command("show")
def instance_show(instance_id: str, output: OutputOption = OutputFormat.table,
                  profile: ProfileOption = None) -> None:
    """Show an instance, its endpoints and ready-to-paste docker commands."""
    emit(Client(profile).request("GET", f"/instances/{instance_id}"), output,
         _INSTANCE_COLUMNS + ["commands.login", "commands.pull"])


@namespace_app.command("create")
def namespace_create(
    name: str,
    instance: Annotated[str, typer.Option("--instance", help="Instance id.")],
    auto_create: Annotated[bool, typer.Option(help="Create repositories on first push.")] = True,
    visibility: Annotated[str, typer.Option(help="Default visibility of new repositories: public or private.")]
    = "private",
    output: OutputOption = OutputFormat.table, profile: ProfileOption = None,
) -> None:
    """Create a namespace in an instance."""
    body = {"name": name, "auto_create": auto_create, "default_visibility": visibility}
    emit(Client(profile).request("POST", f"/instances/{instance}/namespaces", json=body), output,
         ["name", "auto_create", "default_visibility"])


@namespace_app.command("list")
def namespace_list(instance: Annotated[str, typer.Option("--instance", help="Instance id.")],
                   output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """List the namespaces of an instance."""
    emit(Client(profile).request("GET", f"/instances/{instance}/namespaces"), output,
         ["name", "auto_create", "default_visibility"])


@password_app.command("set")
def password_set(instance: Annotated[str, typer.Option("--instance", help="Instance id.")],
                 output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Set your registry login password for an instance, read from standard input."""
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CliError("no password on standard input; pipe it in: echo \"$PASSWORD\" | crpe password set ...")
    result = Client(profile).request("PUT", f"/instances/{instance}/password", json={"password": password})
    emit(result, output, ["instance_id", "username"])


def main() -> None:
    try:
        app()
    except CliError as error:
        typer.echo(f"crpe: error: {error}", err=True)
        sys.exit(1)
