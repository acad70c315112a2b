"""The `crpe` command: run the server, and manage the registry through the control-plane API."""

from __future__ import annotations

import base64
import json
import os
import sys
from enum import StrEnum
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
account_app = typer.Typer(help="Accounts (tenants); creating and disabling them needs the administrator.",
                          no_args_is_help=True)
sub_user_app = typer.Typer(help="Sub-users of your account and their permission policies.", no_args_is_help=True)
access_key_app = typer.Typer(help="Access keys for the control plane and this CLI.", no_args_is_help=True)
repository_app = typer.Typer(help="Repositories of an instance.", no_args_is_help=True)
token_app = typer.Typer(help="Temporary registry credentials.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log of control-plane changes.", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(sub_user_app, name="sub-user")
app.add_typer(access_key_app, name="access-key")
app.add_typer(repository_app, name="repository")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
db_app = typer.Typer(help="The metadata database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


class OutputFormat(StrEnum):
    json = "json"
    table = "table"


OutputOption = Annotated[OutputFormat, typer.Option("--output", "-o", help="Output format.")]
ProfileOption = Annotated[str | None, typer.Option("--profile", help="CLI profile to use (default: the "
                                                                      "profile marked default).")]
RegionOption = Annotated[str | None, typer.Option("--region", help="Region id, for example cn-hangzhou.")]
ConfigOption = Annotated[str | None, typer.Option("--config", help="TOML configuration file (env CRPE_CONFIG); "
                                                                   "CRPE_* variables and flags override it.")]


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
    # Piped output must not be cut to a terminal's width: ids and host names would lose characters.
    Console(width=None if sys.stdout.isatty() else 1000).print(table)


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
    database_url: Annotated[str | None, typer.Option(help="Metadata database (env CRPE_DATABASE_URL); default "
                                                          "SQLite in the data directory.")] = None,
    config: ConfigOption = None,
) -> None:
    """Run the registry and control plane: by default on SQLite and the local filesystem in the data directory."""
    from crpe import bootstrap, logs
    from crpe.settings import SettingsError, from_environment
    from crpe.storage import StorageError

    logs.configure()
    try:
        settings = from_environment(data_dir=data_dir, listen=listen, domain=domain, workers=workers,
                                    database_url=database_url, config=config)
    except SettingsError as error:
        raise CliError(str(error)) from None
    try:
        bootstrap.prepare(settings)
    except StorageError as error:
        raise CliError(str(error)) from None
    os.environ.update(settings.to_environment())
    worker_count = settings.workers or os.cpu_count() or 1
    database = "PostgreSQL" if settings.database else "SQLite"
    storage = ", ".join(sorted({region.storage.type for region in settings.regions}))
    typer.echo(f"crpe listening on http://{settings.listen_host}:{settings.listen_port} "
               f"(domain {settings.domain}, {worker_count} workers, data {settings.data_dir}, "
               f"metadata on {database}, blobs on {storage})", err=True)
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "crpe.server"])


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


InstanceOption = Annotated[str, typer.Option("--instance", help="Instance id.")]


@app.command()
def gc(
    data_dir: Annotated[str | None, typer.Option(help="Data directory (env CRPE_DATA_DIR).")] = None,
    database_url: Annotated[str | None, typer.Option(help="Database URL (env CRPE_DATABASE_URL).")] = None,
    grace_period: Annotated[int, typer.Option(help="Keep anything younger than this many seconds.")] = 24 * 3600,
    dry_run: Annotated[bool, typer.Option(help="Report what would be removed, and remove nothing.")] = False,
    delete_untagged: Annotated[bool, typer.Option(help="Also remove manifests that no tag, index or subject "
                                                       "keeps.")] = False,
    config: ConfigOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Remove abandoned uploads and unreferenced blobs while the registry keeps serving."""
    from crpe import gc as collector
    from crpe.metadata.store import MetadataStore
    from crpe.settings import SettingsError, from_environment
    from crpe.storage import StorageError, open_blob_stores

    if grace_period < 0:
        raise CliError("--grace-period must be 0 or more seconds")
    try:
        settings = from_environment(data_dir=data_dir, database_url=database_url, config=config)
    except SettingsError as error:
        raise CliError(str(error)) from None
    if not settings.database and not (settings.data_dir / "crpe.sqlite3").exists():
        raise CliError(f"no crpe database in {settings.data_dir}; pass --data-dir of a registry")
    store = MetadataStore(settings.database_url)
    try:
        blob_stores = open_blob_stores(settings)
        report = collector.collect(store, blob_stores, grace_period, dry_run, delete_untagged)
    except StorageError as error:
        raise CliError(str(error)) from None
    finally:
        store.close()
    emit(report.view(), output, ["dry_run", "uploads", "untagged_manifests", "links", "blobs", "bytes"])


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Annotated[str | None, typer.Option(help="Data directory of the embedded SQLite database.")] = None,
    database_url: Annotated[str | None, typer.Option(help="Database URL (env CRPE_DATABASE_URL), for example "
                                                          "postgresql://crpe@db.example:5432/crpe.")] = None,
    config: ConfigOption = None,
) -> None:
    """Migrate the metadata database to the newest schema; `crpe serve` also does this at start."""
    from crpe.metadata import migrate
    from crpe.settings import SettingsError, from_environment

    try:
        settings = from_environment(data_dir=data_dir, database_url=database_url, config=config)
    except SettingsError as error:
        raise CliError(str(error)) from None
    if not settings.database:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    revision = migrate.upgrade(settings.database_url)
    typer.echo(f"database at revision {revision}")


@app.command()
def configure(
    endpoint: Annotated[str, typer.Option(prompt=True, help="Control-plane URL, e.g. http://127.0.0.1:5000.")],
    access_key_id: Annotated[str, typer.Option(prompt=True, help="Access key id.")],
    access_key_secret: Annotated[str, typer.Option(prompt=True, hide_input=True, help="Access key secret.")],
    region: Annotated[str, typer.Option(prompt=True, help="Default region id.")] = "cn-hangzhou",
    profile: Annotated[str, typer.Option("--profile", help="Profile name to write.")] = "default",
    default: Annotated[bool, typer.Option(help="Make this profile the default one.")] = False,
) -> None:
    """Write a named CLI profile: control-plane endpoint, access key and default region."""
    path = profiles.save(profile, profiles.Profile(endpoint.rstrip("/"), access_key_id, access_key_secret, region),
                         make_default=default)
    typer.echo(f"wrote profile {profile!r} to {path}")


@instance_app.command("quota")
def instance_quota(instance_id: str, namespaces: Annotated[int, typer.Option(help="Namespace quota.")],
                   repositories: Annotated[int, typer.Option(help="Repository quota.")],
                   output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Set an instance's quotas (administrator)."""
    body = {"namespaces": namespaces, "repositories": repositories}
    emit(Client(profile).request("PUT", f"/instances/{instance_id}/quotas", json=body), output,
         ["id", "quotas.namespaces", "quotas.repositories"])


@instance_app.command("import")
def instance_import(
    account: Annotated[str, typer.Option(help="Owner account name.")],
    created_at: Annotated[str, typer.Option(help="Creation date, YYYY-MM-DD; before the cut-over date makes a "
                                                 "legacy instance.")],
    region: RegionOption = None, name: Annotated[str, typer.Option(help="Display name.")] = "",
    output: OutputOption = OutputFormat.table, profile: ProfileOption = None,
) -> None:
    """Create an instance with a given owner and creation date, such as a legacy instance (administrator)."""
    client = Client(profile)
    body = {"region": region or client.profile.region or None, "name": name, "account": account,
            "created_at": created_at}
    emit(client.request("POST", "/instances", json=body), output, _INSTANCE_COLUMNS + ["legacy"])


@namespace_app.command("update")
def namespace_update(
    name: str, instance: InstanceOption,
    auto_create: Annotated[bool | None, typer.Option(help="Create repositories on first push.")] = None,
    visibility: Annotated[str | None, typer.Option(help="Default visibility: public or private.")] = None,
    output: OutputOption = OutputFormat.table, profile: ProfileOption = None,
) -> None:
    """Change a namespace's settings."""
    body = {"auto_create": auto_create, "default_visibility": visibility}
    emit(Client(profile).request("PATCH", f"/instances/{instance}/namespaces/{name}", json=body), output,
         ["name", "auto_create", "default_visibility"])


@namespace_app.command("delete")
def namespace_delete(name: str, instance: InstanceOption, output: OutputOption = OutputFormat.table,
                     profile: ProfileOption = None) -> None:
    """Delete an empty namespace."""
    emit(Client(profile).request("DELETE", f"/instances/{instance}/namespaces/{name}"), output,
         ["name", "deleted"])


_REPOSITORY_COLUMNS = ["name", "visibility", "summary"]


def _split_repository(name: str) -> str:
    if name.count("/") != 1:
        raise CliError(f"repository {name!r} must be <namespace>/<repository>")
    return name


@repository_app.command("list")
def repository_list(instance: InstanceOption, namespace: Annotated[str | None, typer.Option(help="Only this "
                    "namespace.")] = None, output: OutputOption = OutputFormat.table,
                    profile: ProfileOption = None) -> None:
    """List the repositories you may pull."""
    params = {"namespace": namespace} if namespace else {}
    emit(Client(profile).request("GET", f"/instances/{instance}/repositories", params=params), output,
         _REPOSITORY_COLUMNS)


@repository_app.command("create")
def repository_create(
    name: Annotated[str, typer.Argument(help="<namespace>/<repository>")], instance: InstanceOption,
    visibility: Annotated[str | None, typer.Option(help="public or private (default: the namespace's).")] = None,
    summary: Annotated[str, typer.Option(help="Summary, at most 80 characters.")] = "",
    description: Annotated[str, typer.Option(help="Markdown description, at most 2,000 characters.")] = "",
    output: OutputOption = OutputFormat.table, profile: ProfileOption = None,
) -> None:
    """Create a repository."""
    namespace, repository = _split_repository(name).split("/")
    body = {"namespace": namespace, "name": repository, "visibility": visibility, "summary": summary,
            "description": description}
    emit(Client(profile).request("POST", f"/instances/{instance}/repositories", json=body), output,
         _REPOSITORY_COLUMNS)


@repository_app.command("show")
def repository_show(name: Annotated[str, typer.Argument(help="<namespace>/<repository>")],
                    instance: InstanceOption, output: OutputOption = OutputFormat.table,
                    profile: ProfileOption = None) -> None:
    """Show a repository."""
    emit(Client(profile).request("GET", f"/instances/{instance}/repositories/{_split_repository(name)}"), output,
         _REPOSITORY_COLUMNS + ["description"])


@repository_app.command("update")
def repository_update(
    name: Annotated[str, typer.Argument(help="<namespace>/<repository>")], instance: InstanceOption,
    visibility: Annotated[str | None, typer.Option(help="public or private.")] = None,
    summary: Annotated[str | None, typer.Option(help="Summary, at most 80 characters.")] = None,
    description: Annotated[str | None, typer.Option(help="Markdown, at most 2,000 characters.")] = None,
    output: OutputOption = OutputFormat.table, profile: ProfileOption = None,
) -> None:
    """Change a repository's visibility, summary or description."""
    body = {"visibility": visibility, "summary": summary, "description": description}
    emit(Client(profile).request("PATCH", f"/instances/{instance}/repositories/{_split_repository(name)}",
                                 json=body), output, _REPOSITORY_COLUMNS)


@repository_app.command("delete")
def repository_delete(name: Annotated[str, typer.Argument(help="<namespace>/<repository>")],
                      instance: InstanceOption, output: OutputOption = OutputFormat.table,
                      profile: ProfileOption = None) -> None:
    """Delete a repository with its tags and manifests."""
    emit(Client(profile).request("DELETE", f"/instances/{instance}/repositories/{_split_repository(name)}"),
         output, ["name", "deleted"])


@password_app.command("revoke-holder")
def password_revoke_holder(instance: InstanceOption, output: OutputOption = OutputFormat.table,
                           profile: ProfileOption = None) -> None:
    """Revoke the instance's login password holder, so another sub-user may set it (account only)."""
    emit(Client(profile).request("DELETE", f"/instances/{instance}/password-holder"), output,
         ["instance_id", "revoked_holder"])


@token_app.command("get")
def token_get(instance: InstanceOption, output: OutputOption = OutputFormat.table,
              profile: ProfileOption = None) -> None:
    """Get a username and password for docker login, valid for one hour, with your own permissions."""
    emit(Client(profile).request("POST", f"/instances/{instance}/temporary-credentials"), output,
         ["username", "password", "expires_at"])


@account_app.command("create")
def account_create(name: str, output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Create an account and its first access key; the secret is shown only once."""
    emit(Client(profile).request("POST", "/accounts", json={"name": name}), output,
         ["id", "name", "access_key.id", "access_key.secret"])


@account_app.command("list")
def account_list(output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """List accounts."""
    emit(Client(profile).request("GET", "/accounts"), output, ["id", "name", "disabled"])


@account_app.command("disable")
def account_disable(name: str, output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Disable an account: keys, logins and refresh tokens stop at once; issued registry tokens expire soon."""
    emit(Client(profile).request("POST", f"/accounts/{name}/disable"), output, ["name", "disabled"])


@account_app.command("enable")
def account_enable(name: str, output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Enable a disabled account."""
    emit(Client(profile).request("POST", f"/accounts/{name}/enable"), output, ["name", "disabled"])


@sub_user_app.command("create")
def sub_user_create(name: str, output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Create a sub-user; its registry login name is <name>@<account>."""
    emit(Client(profile).request("POST", "/sub-users", json={"name": name}), output, ["name", "login_name"])


@sub_user_app.command("list")
def sub_user_list(output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """List your sub-users."""
    emit(Client(profile).request("GET", "/sub-users"), output, ["name", "login_name", "disabled"])


@sub_user_app.command("disable")
def sub_user_disable(name: str, output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Disable a sub-user: keys, logins and refresh tokens stop at once; issued registry tokens expire soon."""
    emit(Client(profile).request("POST", f"/sub-users/{name}/disable"), output, ["name", "disabled"])


@sub_user_app.command("enable")
def sub_user_enable(name: str, output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Enable a disabled sub-user."""
    emit(Client(profile).request("POST", f"/sub-users/{name}/enable"), output, ["name", "disabled"])


@sub_user_app.command("policy-set")
def sub_user_policy_set(
    name: str,
    allow: Annotated[list[str] | None, typer.Option(help="ACTIONS=RESOURCE, e.g. pull,push=instance/<id>/team/*. "
                                                         "Repeatable.")] = None,
    deny: Annotated[list[str] | None, typer.Option(help="ACTIONS=RESOURCE to deny. Repeatable.")] = None,
    output: OutputOption = OutputFormat.table, profile: ProfileOption = None,
) -> None:
    """Replace a sub-user's policy with allow and deny statements."""
    statements = []
    for effect, items in (("allow", allow or []), ("deny", deny or [])):
        for item in items:
            actions, separator, resource = item.partition("=")
            if not separator or not actions or not resource:
                raise CliError(f"--{effect} {item!r} must be ACTIONS=RESOURCE, e.g. pull=instance/<id>/team/*")
            statements.append({"effect": effect, "actions": actions.split(","), "resources": [resource]})
    emit(Client(profile).request("PUT", f"/sub-users/{name}/policy", json={"statements": statements}), output,
         ["sub_user", "statements"])


@sub_user_app.command("policy-show")
def sub_user_policy_show(name: str, output: OutputOption = OutputFormat.table,
                         profile: ProfileOption = None) -> None:
    """Show a sub-user's policy."""
    emit(Client(profile).request("GET", f"/sub-users/{name}/policy"), output, ["sub_user", "statements"])


@access_key_app.command("create")
def access_key_create(sub_user: Annotated[str | None, typer.Option(help="Create the key for this sub-user.")]
                      = None, output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Create an access key; the secret is shown only once."""
    emit(Client(profile).request("POST", "/access-keys", json={"sub_user": sub_user}), output, ["id", "secret"])


@access_key_app.command("list")
def access_key_list(sub_user: Annotated[str | None, typer.Option(help="List this sub-user's keys.")] = None,
                    output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """List access keys, without secrets."""
    params = {"sub_user": sub_user} if sub_user else {}
    emit(Client(profile).request("GET", "/access-keys", params=params), output, ["id", "created_at", "revoked"])


@access_key_app.command("revoke")
def access_key_revoke(key_id: str, output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """Revoke an access key."""
    emit(Client(profile).request("DELETE", f"/access-keys/{key_id}"), output, ["id", "revoked"])


@audit_app.command("list")
def audit_list(limit: Annotated[int, typer.Option(help="Number of entries, newest first.")] = 50,
               output: OutputOption = OutputFormat.table, profile: ProfileOption = None) -> None:
    """List control-plane changes: who, what, when and from where."""
    emit(Client(profile).request("GET", "/audit", params={"limit": limit}), output,
         ["at", "actor", "action", "resource", "source_address"])


def _saved_credentials(host: str) -> bool:
    """Tell whether docker, podman or skopeo has saved credentials for `host`."""
    home = os.path.expanduser("~")
    candidates = [os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker"), "config.json"),
                  os.environ.get("REGISTRY_AUTH_FILE", ""),
                  os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/run/user/0"), "containers", "auth.json"),
                  os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "containers",
                               "auth.json")]
    for path in filter(None, candidates):
        try:
            with open(path) as file:
                auths = json.load(file).get("auths", {})
        except (OSError, ValueError, AttributeError):
            continue
        if any(key.removeprefix("https://").removeprefix("http://").split("/")[0] == host for key in auths):
            return True
    return False


@app.command()
def doctor(
    image_reference: Annotated[str, typer.Argument(help="host[:port]/namespace/repository[:tag]")],
    credentials: Annotated[bool | None, typer.Option(help="Assume credentials are (or are not) present "
                                                         "instead of reading docker and podman auth files.")]
    = None,
    output: OutputOption = OutputFormat.table, profile: ProfileOption = None,
) -> None:
    """Explain whether a pull or push of IMAGE_REFERENCE would work, and why not."""
    from crpe.doctor import ReferenceInvalid, diagnose, parse_reference
    from crpe.endpoints import RegistryEndpoint, parse_host

    client = Client(profile)
    deployment = client.request("GET", "/deployment")
    try:
        reference = parse_reference(image_reference)
    except ReferenceInvalid as error:
        raise CliError(str(error)) from None
    host = parse_host(reference.host, deployment["domain"])
    region = legacy = None
    if isinstance(host, RegistryEndpoint) and host.instance_id:
        try:
            instance = client.request("GET", f"/instances/{host.instance_id}")
            region, legacy = instance["region"], instance["legacy"]
        except CliError:
            pass
    has_credentials = _saved_credentials(reference.host) if credentials is None else credentials
    result = diagnose(image_reference, deployment["domain"], region, legacy, has_credentials,
                      deployment["public_endpoint_pull_allowed"])
    view = {"reference": result.reference, "endpoint": result.endpoint, "region": result.region,
            "instance_id": result.instance_id, "instance_found": result.instance_found,
            "credentials": result.credentials, "pull": result.pull, "push": result.push,
            "use_instead": result.use_instead, "notes": result.notes}
    if output is OutputFormat.json:
        emit(view, output)
    else:
        for key, value in view.items():
            typer.echo(f"{key:15} {value}")
    if not (result.pull_allowed or result.push_allowed):
        raise typer.Exit(2)


def describe_backend_error(error: Exception) -> str | None:
    """Return one line for a failure of the database or the object store, or None for any other error."""
    module = type(error).__module__
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if module.startswith(("sqlalchemy", "psycopg", "sqlite3")):
        return f"the metadata database failed: {detail}. Check database_url (CRPE_DATABASE_URL) and that the " \
               "database server is running"
    if module.startswith(("botocore", "boto3", "s3transfer")):
        return f"the S3 blob store failed: {detail}. Check the storage endpoint, bucket and credentials"
    return None


def main() -> None:
    try:
        app()
    except CliError as error:
        typer.echo(f"crpe: error: {error}", err=True)
        sys.exit(1)
    except Exception as error:
        message = describe_backend_error(error)
        if message is None:
            raise
        typer.echo(f"crpe: error: {message}", err=True)
        sys.exit(1)
    except profiles.ProfileError as error:
        typer.echo(f"crpe: error: {error}", err=True)
        sys.exit(1)
