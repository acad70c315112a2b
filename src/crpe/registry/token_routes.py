"""The token endpoint of the Docker token authentication spec, on every registry host at `/auth/token`.

GET takes Basic credentials (or none); POST implements the OAuth2 password and refresh_token grants that
`docker login` uses, returning a refresh token when asked for offline access. On a legacy endpoint, which
serves every legacy instance of a region, the login selects the caller's instance and anonymous callers get
tokens that read public repositories only.
"""

from __future__ import annotations

import datetime
import logging

from starlette.responses import Response

from crpe.auth.identity import CredentialsInvalid, Identity, basic_credentials, principal_for, registry_login
from crpe.auth.permissions import permitted_actions
from crpe.auth.scopes import Scope, parse_scopes
from crpe.auth.tokens import InvalidToken
from crpe.errors import RegistryError, Unauthorized
from crpe.metadata.store import Instance
from crpe.registry.access import Call, check_network_and_client, resolve_instance
from crpe.registry.names import validate_repository
from crpe.registry.responses import json_response

log = logging.getLogger("crpe.auth")


class TokenRequestInvalid(RegistryError):
    code = "UNSUPPORTED"
    status = 400
    default_message = "invalid token request"


async def token(call: Call) -> Response:
    request = call.request
    if request.method == "POST":
        form = await request.form()
        fields = {key: str(value) for key, value in form.items()}
        scope_values = [str(value) for value in form.getlist("scope")]
    else:
        fields = dict(request.query_params)
        scope_values = request.query_params.getlist("scope")

    service = fields.get("service")
    if service and service != call.service:
        raise TokenRequestInvalid(f"service {service!r} is not served at this host; use service={call.service}")
    exclusive = resolve_instance(call, None) if call.endpoint.instance_id else None
    # Legacy endpoints accept Harbor; the registry checks it again per instance.
    check_network_and_client(call, legacy=exclusive is None)

    offline = fields.get("offline_token", "").lower() == "true" or fields.get("access_type") == "offline"
    refresh_generation: int | None = None
    if request.method == "POST":
        grant_type = fields.get("grant_type")
        if grant_type == "password":
            identity, instance = _login(call, exclusive, fields.get("username", ""), fields.get("password", ""))
        elif grant_type == "refresh_token":
            identity, instance, refresh_generation = _refresh(call, exclusive, fields.get("refresh_token", ""))
        else:
            raise TokenRequestInvalid(f"grant_type {grant_type!r} is not supported; use password or refresh_token")
    else:
        identity, instance = _basic_login(call, exclusive)

    requested = parse_scopes(scope_values)
    if identity is None:
        access = _grant_anonymous(call, requested)
        token_value, issued = call.services.tokens.issue_access("", "", "", "", call.service, access)
    else:
        assert instance is not None
        principal = identity.principal
        access = _grant(identity, instance, requested)
        token_value, issued = call.services.tokens.issue_access(
            principal.login_name, principal.account_id, principal.sub_user_id, instance.id, call.service, access)
    body: dict[str, object] = {
        "token": token_value, "access_token": token_value, "expires_in": call.services.tokens.ttl_seconds,
        "issued_at": datetime.datetime.fromtimestamp(issued, datetime.UTC).isoformat().replace("+00:00", "Z"),
    }
    if identity is not None and instance is not None and (offline or request.method == "POST"):
        principal = identity.principal
        stored = call.services.store.get_login_password(instance.id, principal.sub_user_id)
        generation = refresh_generation or (stored.generation if stored else 0)
        body["refresh_token"] = call.services.tokens.issue_refresh(
            principal.login_name, principal.account_id, principal.sub_user_id, instance.id, call.service,
            generation)
    log.info("token issued", extra={
        "auth.user.name": identity.principal.login_name if identity else "", "instance.id": instance.id if instance
        else "", "auth.scopes": " ".join(scope.format() for scope in access)})
    return json_response(body, headers={"Cache-Control": "no-store"})


def _credentials_rejected(call: Call, username: str) -> Unauthorized:
    log.info("login failed", extra={"auth.user.name": username, "http.request.host": call.host,
                                    "http.request.remoteaddr": call.address})
    return Unauthorized("incorrect username or password for this instance; the user name is printed by "
                        "`crpe password set`, and the password is your login password for the instance or a "
                        "temporary credential from `crpe token get`",
                        headers={"WWW-Authenticate": f'Basic realm="{call.service}"'})


def _basic_login(call: Call, exclusive: Instance | None) -> tuple[Identity | None, Instance | None]:
    try:
        credentials = basic_credentials(call.request.headers.get("authorization", ""))
    except CredentialsInvalid as error:
        raise Unauthorized(str(error)) from None
    if credentials is None:
        if exclusive is None:
            return None, None  # Legacy endpoints issue anonymous tokens for public repositories.
        raise Unauthorized(f"anonymous access is not allowed on this instance; log in first: docker login "
                           f"{call.host}", headers={"WWW-Authenticate": f'Basic realm="{call.service}"'})
    return _login(call, exclusive, *credentials)


def _login(call: Call, exclusive: Instance | None, username: str, password: str) -> tuple[Identity, Instance]:
    if not username or not password:
        raise _credentials_rejected(call, username)
    store, tokens = call.services.store, call.services.tokens
    if exclusive is not None:
        candidates = [exclusive]
    else:
        account = store.get_account_by_name(username.rpartition("@")[2] if "@" in username else username)
        candidates = store.list_legacy_instances(account.id, call.endpoint.region) if account else []
    for instance in candidates:
        identity = registry_login(store, tokens, instance, username, password)
        if identity is not None:
            return identity, instance
    raise _credentials_rejected(call, username)


def _refresh(call: Call, exclusive: Instance | None, refresh_token: str) -> tuple[Identity, Instance, int]:
    store = call.services.store
    try:
        claims = call.services.tokens.verify_refresh(refresh_token, call.service)
    except InvalidToken as error:
        raise Unauthorized(f"refresh_token rejected: {error}; log in again") from None
    instance = call.services.instance(claims.instance_id)
    identity = principal_for(store, claims.account_id, claims.sub_user_id)
    stored = store.get_login_password(claims.instance_id, claims.sub_user_id)
    if (instance is None or (exclusive is not None and instance.id != exclusive.id) or identity is None
            or stored is None or stored.generation != claims.password_generation):
        raise Unauthorized("refresh_token is no longer valid because the login password changed or the user was "
                           "disabled; log in again")
    return identity, instance, claims.password_generation


def _grant(identity: Identity, instance: Instance, requested: list[Scope]) -> list[Scope]:
    """Grant each requested scope as far as the principal's permissions reach."""
    granted = []
    for scope in requested:
        if scope.type == "registry" and scope.name == "catalog":
            granted.append(Scope("registry", "catalog", frozenset({"*"})))
            continue
        if scope.type != "repository" or not _valid_name(scope.name):
            continue
        allowed = permitted_actions(identity.principal, instance.account_id, instance.id, scope.name,
                                    identity.statements)
        actions = allowed if "*" in scope.actions else scope.actions & allowed
        if actions:
            granted.append(Scope("repository", scope.name, frozenset(actions)))
    return granted


def _grant_anonymous(call: Call, requested: list[Scope]) -> list[Scope]:
    """Grant pull on public repositories of legacy instances, and nothing else."""
    granted = []
    store = call.services.store
    for scope in requested:
        if scope.type != "repository" or "pull" not in scope.actions or not _valid_name(scope.name):
            continue
        instance = store.find_legacy_instance(call.endpoint.region, scope.name.split("/", 1)[0])
        repository = store.get_repository(instance.id, scope.name) if instance else None
        if repository is not None and repository.public:
            granted.append(Scope("repository", scope.name, frozenset({"pull"})))
    return granted


def _valid_name(name: str) -> bool:
    try:
        validate_repository(name)
    except RegistryError:
        return False
    return True
