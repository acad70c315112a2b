"""Resolve credentials to principals: registry logins, temporary credentials and access keys."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from crpe.auth.passwords import verify_secret
from crpe.auth.principals import Principal, split_login_name
from crpe.auth.tokens import InvalidToken, TokenService
from crpe.metadata.store import Instance, MetadataStore


class CredentialsInvalid(ValueError):
    """An Authorization header names the Basic scheme but does not carry base64 of user:password."""


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """Decode a Basic Authorization header into (user, password); None for any other scheme or none."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise CredentialsInvalid("the Basic credentials are not valid base64 of user:password") from None
    return user, password


@dataclass(frozen=True)
class Identity:
    """A verified principal, with the sub-user's policy statements loaded."""

    principal: Principal
    statements: tuple[dict, ...] = ()


def principal_for(store: MetadataStore, account_id: str, sub_user_id: str) -> Identity | None:
    """Load an enabled principal by ids, or None if it no longer exists or is disabled."""
    account = store.get_account(account_id)
    if account is None or account.disabled:
        return None
    if not sub_user_id:
        return Identity(Principal(account.id, account.name, is_admin=account.is_admin))
    sub_user = store.get_sub_user_by_id(sub_user_id)
    if sub_user is None or sub_user.disabled or sub_user.account_id != account.id:
        return None
    return Identity(Principal(account.id, account.name, sub_user.id, sub_user.name),
                    tuple(store.get_policy(sub_user.id)))


def registry_login(store: MetadataStore, tokens: TokenService, instance: Instance, username: str,
                   password: str) -> Identity | None:
    """Check a registry login (login password or temporary credential) for `instance`."""
    account_name, sub_user_name = split_login_name(username)
    account = store.get_account_by_name(account_name)
    if account is None or account.disabled:
        return None
    sub_user_id = ""
    if sub_user_name:
        sub_user = store.get_sub_user(account.id, sub_user_name)
        if sub_user is None:
            return None
        sub_user_id = sub_user.id
    if password.count(".") == 2:
        try:
            claims = tokens.verify_temporary(password)
        except InvalidToken:
            claims = None
        if claims is not None:
            if (claims.instance_id, claims.account_id, claims.sub_user_id) != (instance.id, account.id, sub_user_id):
                return None
            return principal_for(store, account.id, sub_user_id)
    stored = store.get_login_password(instance.id, sub_user_id)
    if stored is None or not verify_secret(stored.password_hash, password):
        return None
    return principal_for(store, account.id, sub_user_id)


def access_key_identity(store: MetadataStore, key_id: str, secret: str) -> Identity | None:
    key = store.get_access_key(key_id)
    if key is None or key.revoked or not verify_secret(key.secret_hash, secret):
        return None
    return principal_for(store, key.account_id, key.sub_user_id or "")
