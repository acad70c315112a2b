"""The caller: an account or one of its sub-users."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    account_id: str
    account_name: str
    sub_user_id: str = ""  # "" for the account itself.
    sub_user_name: str = ""
    is_admin: bool = False

    @property
    def is_account(self) -> bool:
        return not self.sub_user_id

    @property
    def login_name(self) -> str:
        """Return the registry login user name: `account` or `sub-user@account`."""
        return f"{self.sub_user_name}@{self.account_name}" if self.sub_user_id else self.account_name


def split_login_name(username: str) -> tuple[str, str]:
    """Split a registry user name into (account name, sub-user name or "")."""
    sub_user, separator, account = username.rpartition("@")
    return (account, sub_user) if separator else (username, "")
