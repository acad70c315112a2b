"""Accounts, sub-users, their policies and access keys."""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from crpe.auth.passwords import hash_secret, new_access_key
from crpe.auth.permissions import PolicyInvalid, validate_statements
from crpe.control.common import PRINCIPAL_NAME, Caller, ControlError, not_found
from crpe.metadata.store import AccessKey, SubUser

router = APIRouter(prefix="/api/v1")


class NameBody(BaseModel):
    name: str = Field(min_length=2, max_length=64, description="Lower-case letters, digits, '.', '_' or '-'")


class AccessKeyCreate(BaseModel):
    sub_user: str | None = Field(default=None, max_length=64, description="Create the key for this sub-user")


class PolicyBody(BaseModel):
    statements: list[dict[str, Any]] = Field(max_length=100)


def _check_name(name: str, field: str) -> None:
    if not PRINCIPAL_NAME.match(name):
        raise ControlError(400, "NAME_INVALID", f"{field} {name!r} is invalid: use 2 to 64 lower-case letters, "
                           "digits, '.', '_' or '-', starting with a letter or digit")


def _key_view(key: AccessKey) -> dict[str, Any]:
    return {"id": key.id, "sub_user_id": key.sub_user_id, "created_at": key.created_at, "revoked": key.revoked}


def _sub_user_view(sub_user: SubUser, account_name: str) -> dict[str, Any]:
    return {"id": sub_user.id, "name": sub_user.name, "login_name": f"{sub_user.name}@{account_name}",
            "disabled": sub_user.disabled, "created_at": sub_user.created_at}


@router.post("/accounts", status_code=201, summary="Create an account with its first access key (administrator)")
def create_account(body: NameBody, context: Caller) -> dict[str, Any]:
    context.require_admin("create accounts")
    _check_name(body.name, "name")
    if context.store.get_account_by_name(body.name) is not None:
        raise ControlError(409, "ACCOUNT_EXISTS", f"account {body.name!r} already exists")
    account = context.store.create_account(body.name)
    key_id, secret = new_access_key()
    context.store.create_access_key(key_id, hash_secret(secret), account.id)
    context.audit("account.create", f"account/{body.name}")
    return {"id": account.id, "name": account.name, "disabled": False,
            "access_key": {"id": key_id, "secret": secret}}


@router.get("/accounts", summary="List accounts (the administrator sees all, others their own)")
def list_accounts(context: Caller) -> list[dict[str, Any]]:
    accounts = context.store.list_accounts()
    if not context.principal.is_admin:
        accounts = [a for a in accounts if a.id == context.principal.account_id]
    return [{"id": a.id, "name": a.name, "disabled": a.disabled, "is_admin": a.is_admin} for a in accounts]


def _set_account_disabled(name: str, disabled: bool, context: Caller) -> dict[str, Any]:
    context.require_admin("disable or enable accounts")
    account = context.store.get_account_by_name(name)
    if account is None:
        raise not_found("account", name, "list accounts with `crpe account list`")
    if account.is_admin:
        raise ControlError(400, "DENIED", "the administrator account cannot be disabled")
    context.store.set_account_disabled(account.id, disabled)
    context.audit("account.disable" if disabled else "account.enable", f"account/{name}")
    return {"id": account.id, "name": account.name, "disabled": disabled}


@router.post("/accounts/{name}/disable", summary="Disable an account (administrator)")
def disable_account(name: str, context: Caller) -> dict[str, Any]:
    return _set_account_disabled(name, True, context)


@router.post("/accounts/{name}/enable", summary="Enable an account (administrator)")
def enable_account(name: str, context: Caller) -> dict[str, Any]:
    return _set_account_disabled(name, False, context)


@router.post("/sub-users", status_code=201, summary="Create a sub-user of your account")
def create_sub_user(body: NameBody, context: Caller) -> dict[str, Any]:
    context.require_account("create sub-users")
    _check_name(body.name, "name")
    if context.store.get_sub_user(context.principal.account_id, body.name) is not None:
        raise ControlError(409, "SUB_USER_EXISTS", f"sub-user {body.name!r} already exists in this account")
    sub_user = context.store.create_sub_user(context.principal.account_id, body.name)
    context.audit("sub_user.create", f"sub-user/{body.name}")
    return _sub_user_view(sub_user, context.principal.account_name)


@router.get("/sub-users", summary="List the sub-users of your account")
def list_sub_users(context: Caller) -> list[dict[str, Any]]:
    context.require_account("list sub-users")
    return [_sub_user_view(s, context.principal.account_name)
            for s in context.store.list_sub_users(context.principal.account_id)]


def _own_sub_user(name: str, context: Caller) -> SubUser:
    sub_user = context.store.get_sub_user(context.principal.account_id, name)
    if sub_user is None:
        raise not_found("sub-user", name, "list them with `crpe sub-user list`")
    return sub_user


@router.post("/sub-users/{name}/disable",
             summary="Disable a sub-user: its access keys, logins and refresh tokens stop working at once, and "
                     "registry tokens already issued expire within their lifetime (CRPE_TOKEN_TTL)")
def disable_sub_user(name: str, context: Caller) -> dict[str, Any]:
    context.require_account("disable sub-users")
    sub_user = _own_sub_user(name, context)
    context.store.set_sub_user_disabled(sub_user.id, True)
    context.audit("sub_user.disable", f"sub-user/{name}")
    return {**_sub_user_view(sub_user, context.principal.account_name), "disabled": True}


@router.post("/sub-users/{name}/enable", summary="Enable a disabled sub-user")
def enable_sub_user(name: str, context: Caller) -> dict[str, Any]:
    context.require_account("enable sub-users")
    sub_user = _own_sub_user(name, context)
    context.store.set_sub_user_disabled(sub_user.id, False)
    context.audit("sub_user.enable", f"sub-user/{name}")
    return {**_sub_user_view(sub_user, context.principal.account_name), "disabled": False}


@router.put("/sub-users/{name}/policy", summary="Replace a sub-user's permission statements")
def set_policy(name: str, body: PolicyBody, context: Caller) -> dict[str, Any]:
    context.require_account("set sub-user policies")
    sub_user = _own_sub_user(name, context)
    try:
        statements = validate_statements(body.statements)
    except PolicyInvalid as error:
        raise ControlError(400, "POLICY_INVALID", str(error)) from None
    context.store.set_policy(sub_user.id, statements)
    context.audit("policy.set", f"sub-user/{name}", statements=statements)
    return {"sub_user": name, "statements": statements}


@router.get("/sub-users/{name}/policy", summary="Show a sub-user's permission statements")
def get_policy(name: str, context: Caller) -> dict[str, Any]:
    context.require_account("read sub-user policies")
    sub_user = _own_sub_user(name, context)
    return {"sub_user": name, "statements": context.store.get_policy(sub_user.id)}


@router.post("/access-keys", status_code=201, summary="Create an access key; the secret is shown only here")
def create_access_key(body: AccessKeyCreate, context: Caller) -> dict[str, Any]:
    principal = context.principal
    sub_user_id = principal.sub_user_id or None
    if body.sub_user is not None:
        context.require_account("create access keys for sub-users")
        sub_user_id = _own_sub_user(body.sub_user, context).id
    key_id, secret = new_access_key()
    context.store.create_access_key(key_id, hash_secret(secret), principal.account_id, sub_user_id)
    context.audit("access_key.create", f"access-key/{key_id}", sub_user=body.sub_user or principal.sub_user_name)
    return {"id": key_id, "secret": secret, "sub_user_id": sub_user_id}


@router.get("/access-keys", summary="List access keys (never their secrets)")
def list_access_keys(context: Caller, sub_user: str | None = None) -> list[dict[str, Any]]:
    principal = context.principal
    sub_user_id = principal.sub_user_id or None
    if sub_user is not None:
        context.require_account("list the access keys of sub-users")
        sub_user_id = _own_sub_user(sub_user, context).id
    return [_key_view(key) for key in context.store.list_access_keys(principal.account_id, sub_user_id)]


@router.delete("/access-keys/{key_id}", summary="Revoke an access key")
def revoke_access_key(key_id: str, context: Caller) -> dict[str, Any]:
    principal = context.principal
    key = context.store.get_access_key(key_id)
    own = key is not None and key.account_id == principal.account_id and (
        principal.is_account or key.sub_user_id == principal.sub_user_id)
    if key is None or not own:
        raise not_found("access key", key_id, "list yours with `crpe access-key list`")
    context.store.revoke_access_key(key_id)
    context.audit("access_key.revoke", f"access-key/{key_id}")
    return {**_key_view(key), "revoked": True}


@router.get("/audit", summary="List control-plane changes, newest first")
def list_audit(context: Caller, limit: int = 100) -> list[dict[str, Any]]:
    if not 1 <= limit <= 1000:
        raise ControlError(400, "LIMIT_INVALID", "limit must be between 1 and 1000")
    context.require_account("read the audit log")
    return context.store.list_audit(None if context.principal.is_admin else context.principal.account_id, limit)
