"""Records of the metadata database and their construction from result rows."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_id(length: int = 16) -> str:
    """Return a random lower-case alphanumeric id (16 characters carry about 82 bits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def now() -> int:
    return int(time.time())


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    is_admin: bool
    disabled: bool


@dataclass(frozen=True)
class SubUser:
    id: str
    account_id: str
    name: str
    disabled: bool
    created_at: int


@dataclass(frozen=True)
class AccessKey:
    id: str
    secret_hash: str
    account_id: str
    sub_user_id: str | None
    revoked: bool
    created_at: int = 0


@dataclass(frozen=True)
class Instance:
    id: str
    account_id: str
    region: str
    name: str
    legacy: bool
    namespace_quota: int
    repository_quota: int
    created_at: int
    password_holder: str | None = None


@dataclass(frozen=True)
class Namespace:
    instance_id: str
    name: str
    auto_create: bool
    default_visibility: str
    created_at: int


@dataclass(frozen=True)
class Repository:
    id: int
    instance_id: str
    namespace: str
    name: str
    visibility: str
    summary: str
    description: str
    created_at: int

    @property
    def public(self) -> bool:
        return self.visibility == "public"


@dataclass(frozen=True)
class LoginPassword:
    instance_id: str
    sub_user_id: str
    password_hash: str
    generation: int


@dataclass(frozen=True)
class Upload:
    id: str
    repository_id: int
    region: str
    size: int
    hash_state: bytes | None
    created_at: int
    storage_state: bytes | None = None
    lease_owner: str | None = None


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    size: int
    content: bytes
    artifact_type: str | None = None
    subject: str | None = None
    annotations: str | None = None


@dataclass(frozen=True)
class ManifestRecord:
    """A manifest to store, with what it references and the tag it is pushed under (if any)."""

    manifest: Manifest
    blob_digests: Sequence[str]
    child_digests: Sequence[str]
    tag: str | None


class Conflict(Exception):
    """A write broke a uniqueness rule, such as a duplicate namespace name."""


class BlobsMissing(Exception):
    """A manifest references blobs that its repository does not link (any more)."""

    def __init__(self, digests: list[str]) -> None:
        super().__init__(", ".join(digests))
        self.digests = digests


def instance_of(row: Any) -> Instance:
    return Instance(row.id, row.account_id, row.region, row.name, bool(row.legacy), int(row.namespace_quota),
                    int(row.repository_quota), int(row.created_at), row.password_holder)


def access_key_of(row: Any) -> AccessKey:
    return AccessKey(row.id, row.secret_hash, row.account_id, row.sub_user_id, row.revoked_at is not None,
                     int(row.created_at))


def sub_user_of(row: Any) -> SubUser:
    return SubUser(row.id, row.account_id, row.name, bool(row.disabled), int(row.created_at))


def audit_entry_of(row: Any) -> dict[str, Any]:
    return {"id": row.id, "at": row.at, "actor": row.actor, "action": row.action, "resource": row.resource,
            "source_address": row.source_address, "detail": json.loads(row.detail or "{}")}


def namespace_of(row: Any) -> Namespace:
    return Namespace(row.instance_id, row.name, bool(row.auto_create), row.default_visibility,
                     int(row.created_at))


def repository_of(row: Any) -> Repository:
    return Repository(int(row.id), row.instance_id, row.namespace, row.name, row.visibility, row.summary,
                      row.description, int(row.created_at))
