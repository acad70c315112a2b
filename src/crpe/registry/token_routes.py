"""The token endpoint of the Docker token authentication spec, on every registry host at `/auth/token`.

GET takes Basic credentials (or none); POST implements the OAuth2 password and refresh_token grants that
`docker login` uses, returning a refresh token when asked for offline access.
"""

from __future__ import annotations

import base64
import datetime
import logging

from starlette.responses import Response

from crpe.auth.permissions import permitted_actions
from crpe.auth.principals import Principal
from crpe.auth.scopes import Scope, parse_scopes
from crpe.auth.tokens import InvalidToken
from crpe.errors import RegistryError, Unauthorized
from crpe.metadata.store import Instance
from crpe.registry.access import Call, login, resolve_instance
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
    instance = resolve_instance(call, None) if call.endpoint.instance_id else None
    if instance is None:
        # TODO: legacy endpoints serve several instances; tokens there need per-namespace resolution.
        raise TokenRequestInvalid("tokens for legacy endpoints are not available yet")

    offline = fields.get("offline_token", "").lower() == "true" or fields.get("access_type") == "offline"
    refresh_generation: int | None = None
    if request.method == "POST":
        grant_type = fields.get("grant_type")
        if grant_type == "password":
            principal = _login_or_fail(call, instance, fields.get("username", ""), fields.get("password", ""))
        elif grant_type == "refresh_token":
            principal, refresh_generation = _refresh(call, instance, fields.get("refresh_token", ""))
        else:
            raise TokenRequestInvalid(f"grant_type {grant_type!r} is not supported; use password or refresh_token")
    else:
        principal = _basic_principal(call, instance)

    access = _grant(principal, instance, parse_scopes(scope_values))
    token_value, issued = call.services.tokens.issue_access(
        principal.login_name, principal.account_id, principal.sub_user_id, instance.id, call.service, access)
    body: dict[str, object] = {
        "token": token_value, "access_token": token_value, "expires_in": call.services.tokens.ttl_seconds,
        "issued_at": datetime.datetime.fromtimestamp(issued, datetime.UTC).isoformat().replace("+00:00", "Z"),
    }
    if offline or request.method == "POST":
        generation = refresh_generation or _password_generation(call, instance, principal)
        body["refresh_token"] = call.services.tokens.issue_refresh(
            principal.login_name, principal.account_id, principal.sub_user_id, instance.id, call.service,
            generation)
    log.info("token issued", extra={"auth.user.name": principal.login_name, "instance.id": instance.id,
                                    "auth.scopes": " ".join(scope.format() for scope in access)})
    return json_response(body, headers={"Cache-Control": "no-store"})


def _basic_principal(call: Call, instance: Instance) -> Principal:
    header = call.request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise Unauthorized(f"anonymous access is not allowed on this instance; log in first: docker login "
                           f"{call.host}", headers={"WWW-Authenticate": f'Basic realm="{call.service}"'})
    try:
        username, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise Unauthorized("the Basic credentials are not valid base64 of user:password") from None
    return _login_or_fail(call, instance, username, password)


def _login_or_fail(call: Call, instance: Instance, username: str, password: str) -> Principal:
    principal = login(call.services, instance, username, password) if username and password else None
    if principal is None:
        log.info("login failed", extra={"auth.user.name": username, "instance.id": instance.id,
                                        "http.request.remoteaddr": call.address})
        raise Unauthorized("incorrect username or password for this instance; the user name is printed by "
                           "`crpe password set` and the password is the instance's login password",
                           headers={"WWW-Authenticate": f'Basic realm="{call.service}"'})
    return principal


def _refresh(call: Call, instance: Instance, refresh_token: str) -> tuple[Principal, int]:
    try:
        claims = call.services.tokens.verify_refresh(refresh_token, call.service)
    except InvalidToken as error:
        raise Unauthorized(f"refresh_token rejected: {error}; log in again") from None
    account = call.services.store.get_account(claims.account_id)
    stored = call.services.store.get_login_password(instance.id, claims.sub_user_id)
    if (claims.instance_id != instance.id or account is None or account.disabled or stored is None
            or stored.generation != claims.password_generation):
        raise Unauthorized("refresh_token is no longer valid because the login password changed; log in again")
    return Principal(account.id, account.name, is_admin=account.is_admin), claims.password_generation


def _password_generation(call: Call, instance: Instance, principal: Principal) -> int:
    stored = call.services.store.get_login_password(instance.id, principal.sub_user_id)
    return stored.generation if stored else 0


def _grant(principal: Principal, instance: Instance, requested: list[Scope]) -> list[Scope]:
    """Grant each requested scope as far as the principal's permissions reach."""
    granted = []
    for scope in requested:
        if scope.type == "registry" and scope.name == "catalog":
            granted.append(Scope("registry", "catalog", frozenset({"*"})))
            continue
        if scope.type != "repository":
            continue
        try:
            validate_repository(scope.name)
        except RegistryError:
            continue
        allowed = permitted_actions(principal, instance.account_id, scope.name)
        actions = allowed if "*" in scope.actions else scope.actions & allowed
        if actions:
            granted.append(Scope("repository", scope.name, frozenset(actions)))
    return granted
