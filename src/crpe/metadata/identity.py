"""Queries on accounts, sub-users, access keys, policies and login passwords."""

from __future__ import annotations

import json
from typing import Any

from crpe.metadata.database import Database
from crpe.metadata.records import AccessKey, Account, LoginPassword, SubUser, access_key_of, new_id, now, sub_user_of


class IdentityQueries(Database):
    """Account, sub-user, access key, policy and login password queries."""

    # Accounts, sub-users and access keys.

    def create_account(self, name: str, is_admin: bool = False) -> Account:
        account = Account(new_id(), name, is_admin, False)
        with self._write() as connection:
            connection.execute(
                "INSERT INTO accounts (id, name, is_admin, disabled, created_at) "
                "VALUES (:id, :name, :is_admin, false, :now)",
                {"id": account.id, "name": name, "is_admin": is_admin, "now": now()})
        return account

    def get_account(self, account_id: str) -> Account | None:
        row = self._one("SELECT id, name, is_admin, disabled FROM accounts WHERE id = :id", id=account_id)
        return Account(row.id, row.name, bool(row.is_admin), bool(row.disabled)) if row else None

    def get_account_by_name(self, name: str) -> Account | None:
        row = self._one("SELECT id, name, is_admin, disabled FROM accounts WHERE name = :name", name=name)
        return Account(row.id, row.name, bool(row.is_admin), bool(row.disabled)) if row else None

    def count_accounts(self) -> int:
        return int(self._one("SELECT count(*) AS n FROM accounts").n)

    def create_access_key(self, key_id: str, secret_hash: str, account_id: str,
                          sub_user_id: str | None = None) -> None:
        with self._write() as connection:
            connection.execute(
                "INSERT INTO access_keys (id, secret_hash, account_id, sub_user_id, created_at) "
                "VALUES (:id, :secret_hash, :account_id, :sub_user_id, :now)",
                {"id": key_id, "secret_hash": secret_hash, "account_id": account_id,
                 "sub_user_id": sub_user_id, "now": now()})

    def get_access_key(self, key_id: str) -> AccessKey | None:
        row = self._one("SELECT * FROM access_keys WHERE id = :id", id=key_id)
        if not row:
            return None
        return access_key_of(row)

    def list_access_keys(self, account_id: str, sub_user_id: str | None) -> list[AccessKey]:
        rows = self._all("SELECT * FROM access_keys WHERE account_id = :a AND "
                         "coalesce(sub_user_id, '') = :s ORDER BY created_at, id", a=account_id, s=sub_user_id or "")
        return [access_key_of(row) for row in rows]

    def revoke_access_key(self, key_id: str) -> bool:
        with self._write() as connection:
            result = connection.execute(
                "UPDATE access_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL",
                {"now": now(), "id": key_id})
        return result.rowcount == 1

    def list_accounts(self) -> list[Account]:
        return [Account(row.id, row.name, bool(row.is_admin), bool(row.disabled))
                for row in self._all("SELECT id, name, is_admin, disabled FROM accounts ORDER BY name")]

    def set_account_disabled(self, account_id: str, disabled: bool) -> None:
        with self._write() as connection:
            connection.execute("UPDATE accounts SET disabled = :d WHERE id = :id",
                               {"d": disabled, "id": account_id})

    # Sub-users and their policies.

    def create_sub_user(self, account_id: str, name: str) -> SubUser:
        sub_user = SubUser(new_id(), account_id, name, False, now())
        with self._write() as connection:
            connection.execute(
                "INSERT INTO sub_users (id, account_id, name, disabled, created_at) "
                "VALUES (:id, :a, :name, false, :now)",
                {"id": sub_user.id, "a": account_id, "name": name, "now": sub_user.created_at})
        return sub_user

    def get_sub_user(self, account_id: str, name: str) -> SubUser | None:
        row = self._one("SELECT * FROM sub_users WHERE account_id = :a AND name = :name", a=account_id, name=name)
        return sub_user_of(row) if row else None

    def get_sub_user_by_id(self, sub_user_id: str) -> SubUser | None:
        row = self._one("SELECT * FROM sub_users WHERE id = :id", id=sub_user_id)
        return sub_user_of(row) if row else None

    def list_sub_users(self, account_id: str) -> list[SubUser]:
        return [sub_user_of(row) for row in
                self._all("SELECT * FROM sub_users WHERE account_id = :a ORDER BY name", a=account_id)]

    def set_sub_user_disabled(self, sub_user_id: str, disabled: bool) -> None:
        with self._write() as connection:
            connection.execute("UPDATE sub_users SET disabled = :d WHERE id = :id",
                               {"d": disabled, "id": sub_user_id})

    def set_policy(self, sub_user_id: str, statements: list[dict[str, Any]]) -> None:
        document = json.dumps(statements)
        with self._write() as connection:
            connection.execute(
                "INSERT INTO sub_user_policies (sub_user_id, statements, updated_at) VALUES (:s, :doc, :now) "
                "ON CONFLICT (sub_user_id) DO UPDATE SET statements = :doc, updated_at = :now",
                {"s": sub_user_id, "doc": document, "now": now()})

    def get_policy(self, sub_user_id: str) -> list[dict[str, Any]]:
        row = self._one("SELECT statements FROM sub_user_policies WHERE sub_user_id = :s", s=sub_user_id)
        return json.loads(row.statements) if row else []

    # Login passwords.

    def set_login_password(self, instance_id: str, sub_user_id: str, password_hash: str) -> LoginPassword:
        """Set a login password; each change bumps its generation, which retires older refresh tokens."""
        with self._write() as connection:
            # One upsert, so two first settings at once cannot both insert.
            connection.execute(
                "INSERT INTO login_passwords (instance_id, sub_user_id, password_hash, generation, updated_at) "
                "VALUES (:i, :s, :h, 1, :now) ON CONFLICT (instance_id, sub_user_id) DO UPDATE SET "
                "password_hash = excluded.password_hash, generation = login_passwords.generation + 1, "
                "updated_at = excluded.updated_at",
                {"h": password_hash, "now": now(), "i": instance_id, "s": sub_user_id})
            generation = connection.execute(
                "SELECT generation FROM login_passwords WHERE instance_id = :i AND sub_user_id = :s",
                {"i": instance_id, "s": sub_user_id}).first().generation
        return LoginPassword(instance_id, sub_user_id, password_hash, int(generation))

    def get_login_password(self, instance_id: str, sub_user_id: str) -> LoginPassword | None:
        row = self._one("SELECT * FROM login_passwords WHERE instance_id = :i AND sub_user_id = :s",
                        i=instance_id, s=sub_user_id)
        return LoginPassword(row.instance_id, row.sub_user_id, row.password_hash, row.generation) if row else None
