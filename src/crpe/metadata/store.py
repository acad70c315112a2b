"""Queries over the metadata database.

Reads on SQLite run on the caller's thread because they take microseconds. Every write is one transaction,
which begins IMMEDIATE on SQLite so that concurrent worker processes wait for each other instead of failing
with SQLITE_BUSY.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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


class _Result:
    """The part of a query result the store uses, the same for sqlite3 and SQLAlchemy."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class _Transaction:
    """One write transaction; `execute` takes SQL with :name parameters on either backend."""

    def __init__(self, run: Any) -> None:
        self._run = run

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> _Result:
        return self._run(sql, params or {})


class MetadataStore:
    """Metadata queries. On SQLite (the embedded default) they run through the sqlite3 module, which costs
    microseconds per query; other databases go through SQLAlchemy, imported only then.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._local = threading.local()
        self._engine: Any = None if self.is_sqlite else self._sqlalchemy_engine()

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> MetadataStore:
        return cls(f"sqlite:///{data_dir / 'crpe.sqlite3'}")

    def _sqlalchemy_engine(self) -> Any:
        from sqlalchemy import create_engine

        return create_engine(self.url, pool_pre_ping=True)

    def create_schema(self) -> None:
        """Bring the database to the newest schema revision."""
        from crpe.metadata import migrate

        migrate.upgrade(self.url)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
        if self._engine is not None:
            self._engine.dispose()

    def _lock_instance(self, connection: _Transaction, instance_id: str) -> None:
        """Serialize check-then-insert writes inside one instance (quotas, repository creation).

        SQLite needs nothing: BEGIN IMMEDIATE already lets one writer in at a time. PostgreSQL's READ COMMITTED
        would let two transactions both pass a count check, so they queue on the instance's row.
        """
        if not self.is_sqlite:
            connection.execute("SELECT id FROM instances WHERE id = :i FOR UPDATE", {"i": instance_id})

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[_Transaction]:
        """Run one transaction; on SQLite it begins IMMEDIATE so concurrent writers wait instead of failing.

        `durable=False` is for upload bookkeeping only: SQLite then commits without fsync, so a power loss
        may bring back an older upload row. That row is still consistent, because an upload's bytes are
        fsynced before a row records them, and the client resumes from the offset it reports. It saves three
        fsyncs per pushed blob.
        """
        if self.is_sqlite:
            connection = self._sqlite_reader()
            if not durable:
                connection.execute("PRAGMA synchronous=NORMAL")
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield _Transaction(lambda sql, params: _sqlite_result(connection.execute(sql, params)))
                    connection.execute("COMMIT")
                except sqlite3.IntegrityError as error:
                    connection.execute("ROLLBACK")
                    raise Conflict(str(error)) from None
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    connection.execute("PRAGMA synchronous=FULL")
            return
        from sqlalchemy import exc, text

        try:
            with self._engine.begin() as connection:
                yield _Transaction(lambda sql, params: _sqlalchemy_result(connection.execute(text(sql), params)))
        except exc.IntegrityError as error:
            raise Conflict(str(error.orig)) from None

    def _sqlite_reader(self) -> sqlite3.Connection:
        """Return this thread's sqlite3 connection, in autocommit mode outside `_write` transactions.

        SQLAlchemy costs about 0.1 ms per query on top of SQLite's own microseconds, which halved manifest
        GET throughput.
        """
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30, isolation_level=None,
                                         check_same_thread=True)
            connection.row_factory = _row
            connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the client hears 201.
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
        return connection

    def _one(self, sql: str, **params: Any) -> Any:
        if self.is_sqlite:
            return self._sqlite_reader().execute(sql, params).fetchone()
        rows = self._all(sql, **params)
        return rows[0] if rows else None

    def _all(self, sql: str, **params: Any) -> list[Any]:
        if self.is_sqlite:
            return self._sqlite_reader().execute(sql, params).fetchall()
        from sqlalchemy import text

        with self._engine.connect() as connection:
            return list(connection.execute(text(sql), params))

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
        return _access_key(row)

    def list_access_keys(self, account_id: str, sub_user_id: str | None) -> list[AccessKey]:
        rows = self._all("SELECT * FROM access_keys WHERE account_id = :a AND "
                         "coalesce(sub_user_id, '') = :s ORDER BY created_at, id", a=account_id, s=sub_user_id or "")
        return [_access_key(row) for row in rows]

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
        return _sub_user(row) if row else None

    def get_sub_user_by_id(self, sub_user_id: str) -> SubUser | None:
        row = self._one("SELECT * FROM sub_users WHERE id = :id", id=sub_user_id)
        return _sub_user(row) if row else None

    def list_sub_users(self, account_id: str) -> list[SubUser]:
        return [_sub_user(row) for row in
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

    # Instances.

    def create_instance(self, account_id: str, region: str, name: str = "", legacy: bool = False,
                        created_at: int | None = None, namespace_quota: int = 3,
                        repository_quota: int = 300) -> Instance:
        instance_id = new_id()
        with self._write() as connection:
            connection.execute(
                "INSERT INTO instances (id, account_id, region, name, legacy, namespace_quota, "
                "repository_quota, created_at) VALUES (:id, :account_id, :region, :name, :legacy, :nq, :rq, :at)",
                {"id": instance_id, "account_id": account_id, "region": region, "name": name,
                 "legacy": legacy, "nq": namespace_quota, "rq": repository_quota, "at": created_at or now()})
        instance = self.get_instance(instance_id)
        assert instance is not None
        return instance

    def get_instance(self, instance_id: str) -> Instance | None:
        row = self._one("SELECT * FROM instances WHERE id = :id", id=instance_id)
        return _instance(row) if row else None

    def list_instances(self, account_id: str, region: str | None = None) -> list[Instance]:
        if region:
            rows = self._all("SELECT * FROM instances WHERE account_id = :account_id AND region = :region "
                             "ORDER BY created_at, id", account_id=account_id, region=region)
        else:
            rows = self._all("SELECT * FROM instances WHERE account_id = :account_id ORDER BY created_at, id",
                             account_id=account_id)
        return [_instance(row) for row in rows]

    def update_quotas(self, instance_id: str, namespace_quota: int, repository_quota: int) -> None:
        with self._write() as connection:
            connection.execute("UPDATE instances SET namespace_quota = :nq, repository_quota = :rq "
                                    "WHERE id = :id", {"nq": namespace_quota, "rq": repository_quota,
                                                         "id": instance_id})

    def list_legacy_instances(self, account_id: str, region: str) -> list[Instance]:
        rows = self._all("SELECT * FROM instances WHERE account_id = :a AND region = :r AND legacy "
                         "ORDER BY created_at, id", a=account_id, r=region)
        return [_instance(row) for row in rows]

    def claim_password_holder(self, instance_id: str, sub_user_id: str) -> bool:
        """Make `sub_user_id` the holder unless another sub-user already is; return whether it is the holder."""
        with self._write() as connection:
            result = connection.execute(
                "UPDATE instances SET password_holder = :s WHERE id = :id "
                "AND (password_holder IS NULL OR password_holder = :s)", {"s": sub_user_id, "id": instance_id})
        return result.rowcount == 1

    def revoke_password_holder(self, instance_id: str) -> str | None:
        """Clear the holder and delete the holder's login password; return the former holder."""
        with self._write() as connection:
            row = connection.execute("SELECT password_holder FROM instances WHERE id = :id",
                                     {"id": instance_id}).first()
            holder = row.password_holder if row else None
            if holder:
                connection.execute("UPDATE instances SET password_holder = NULL WHERE id = :id",
                                   {"id": instance_id})
                connection.execute("DELETE FROM login_passwords WHERE instance_id = :id AND sub_user_id = :s",
                                   {"id": instance_id, "s": holder})
        return holder

    def find_legacy_instance(self, region: str, namespace: str) -> Instance | None:
        row = self._one("SELECT i.* FROM namespaces n JOIN instances i ON i.id = n.instance_id "
                        "WHERE n.region = :region AND n.name = :namespace AND n.legacy",
                        region=region, namespace=namespace)
        return _instance(row) if row else None

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

    # Namespaces.

    def create_namespace(self, instance: Instance, name: str, auto_create: bool,
                         default_visibility: str) -> Namespace | None:
        """Create a namespace unless the instance's namespace quota is reached (then return None)."""
        with self._write() as connection:
            self._lock_instance(connection, instance.id)
            count = connection.execute("SELECT count(*) AS n FROM namespaces WHERE instance_id = :i",
                                       {"i": instance.id}).first().n
            if count >= instance.namespace_quota:
                return None
            connection.execute(
                "INSERT INTO namespaces (instance_id, name, region, legacy, auto_create, default_visibility, "
                "created_at) VALUES (:i, :name, :region, :legacy, :auto, :visibility, :now)",
                {"i": instance.id, "name": name, "region": instance.region, "legacy": instance.legacy,
                 "auto": auto_create, "visibility": default_visibility, "now": now()})
        return Namespace(instance.id, name, auto_create, default_visibility, now())

    def get_namespace(self, instance_id: str, name: str) -> Namespace | None:
        row = self._one("SELECT * FROM namespaces WHERE instance_id = :i AND name = :name",
                        i=instance_id, name=name)
        return _namespace(row) if row else None

    def list_namespaces(self, instance_id: str) -> list[Namespace]:
        return [_namespace(row) for row in
                self._all("SELECT * FROM namespaces WHERE instance_id = :i ORDER BY name", i=instance_id)]

    def update_namespace(self, instance_id: str, name: str, auto_create: bool, default_visibility: str) -> None:
        with self._write() as connection:
            connection.execute(
                "UPDATE namespaces SET auto_create = :auto, default_visibility = :v "
                "WHERE instance_id = :i AND name = :name",
                {"auto": auto_create, "v": default_visibility, "i": instance_id, "name": name})

    def delete_namespace(self, instance_id: str, name: str) -> bool:
        """Delete an empty namespace; return False when it still contains repositories."""
        with self._write() as connection:
            self._lock_instance(connection, instance_id)
            used = connection.execute(
                "SELECT count(*) AS n FROM repositories WHERE instance_id = :i AND namespace = :name",
                {"i": instance_id, "name": name}).first().n
            if used:
                return False
            connection.execute("DELETE FROM namespaces WHERE instance_id = :i AND name = :name",
                               {"i": instance_id, "name": name})
        return True

    def count_namespaces(self, instance_id: str) -> int:
        return int(self._one("SELECT count(*) AS n FROM namespaces WHERE instance_id = :i", i=instance_id).n)

    # Repositories.

    def get_repository(self, instance_id: str, name: str) -> Repository | None:
        row = self._one("SELECT * FROM repositories WHERE instance_id = :i AND name = :name",
                        i=instance_id, name=name)
        return _repository(row) if row else None

    def create_repository(self, instance: Instance, namespace: Namespace, name: str) -> Repository | None:
        """Create `name` unless the repository quota is reached (then return None); idempotent."""
        with self._write() as connection:
            self._lock_instance(connection, instance.id)
            existing = connection.execute(
                "SELECT * FROM repositories WHERE instance_id = :i AND name = :name",
                {"i": instance.id, "name": name}).first()
            if existing:
                return _repository(existing)
            count = connection.execute("SELECT count(*) AS n FROM repositories WHERE instance_id = :i",
                                       {"i": instance.id}).first().n
            if count >= instance.repository_quota:
                return None
            connection.execute(
                "INSERT INTO repositories (instance_id, namespace, name, visibility, summary, description, "
                "created_at) VALUES (:i, :namespace, :name, :visibility, '', '', :now)",
                {"i": instance.id, "namespace": namespace.name, "name": name,
                 "visibility": namespace.default_visibility, "now": now()})
            row = connection.execute("SELECT * FROM repositories WHERE instance_id = :i AND name = :name",
                                     {"i": instance.id, "name": name}).first()
        return _repository(row)

    def update_repository(self, repository_id: int, visibility: str, summary: str, description: str) -> None:
        with self._write() as connection:
            connection.execute(
                "UPDATE repositories SET visibility = :v, summary = :s, description = :d WHERE id = :id",
                {"v": visibility, "s": summary, "d": description, "id": repository_id})

    def delete_repository(self, repository_id: int) -> None:
        """Delete a repository with its manifests, tags, blob links and uploads; blob files stay for GC."""
        with self._write() as connection:
            for table in ("tags", "manifest_references", "manifests", "repository_blobs", "uploads"):
                connection.execute(f"DELETE FROM {table} WHERE repository_id = :id", {"id": repository_id})
            connection.execute("DELETE FROM repositories WHERE id = :id", {"id": repository_id})

    def list_repositories(self, instance_id: str, after: str = "", limit: int | None = None) -> list[Repository]:
        sql = "SELECT * FROM repositories WHERE instance_id = :i AND name > :after ORDER BY name"
        params: dict[str, Any] = {"i": instance_id, "after": after}
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit
        return [_repository(row) for row in self._all(sql, **params)]

    # Blobs.

    def add_blob(self, region: str, digest: str, size: int, repository_id: int, upload_id: str | None = None
                 ) -> None:
        """Record a stored blob in its region and link it into a repository, in one transaction that also
        ends the upload session `upload_id` that produced it."""
        with self._write() as connection:
            if upload_id is not None:
                connection.execute("DELETE FROM uploads WHERE id = :id", {"id": upload_id})
            # Touching created_at makes a concurrent garbage collection see a fresh blob and keep it.
            connection.execute(
                "INSERT INTO blobs (region, digest, size, created_at) VALUES (:r, :d, :s, :now) "
                "ON CONFLICT (region, digest) DO UPDATE SET created_at = excluded.created_at",
                {"r": region, "d": digest, "s": size, "now": now()})
            connection.execute(
                "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (:id, :d, :now) "
                "ON CONFLICT DO NOTHING", {"id": repository_id, "d": digest, "now": now()})

    def linked_blob_size(self, repository_id: int, region: str, digest: str) -> int | None:
        """Return the size of `digest` if the repository links it, else None."""
        row = self._one("SELECT b.size FROM repository_blobs l JOIN blobs b ON b.digest = l.digest "
                        "AND b.region = :r WHERE l.repository_id = :id AND l.digest = :d",
                        id=repository_id, r=region, d=digest)
        return int(row.size) if row else None

    def link_blob(self, repository_id: int, digest: str) -> None:
        with self._write() as connection:
            connection.execute(
                "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (:id, :d, :now) "
                "ON CONFLICT DO NOTHING", {"id": repository_id, "d": digest, "now": now()})

    def unlink_blob(self, repository_id: int, digest: str) -> bool:
        with self._write() as connection:
            result = connection.execute(
                "DELETE FROM repository_blobs WHERE repository_id = :id AND digest = :d",
                {"id": repository_id, "d": digest})
        return result.rowcount > 0

    def missing_blobs(self, repository_id: int, digests: Sequence[str]) -> list[str]:
        if not digests:
            return []
        placeholders = ", ".join(f":d{i}" for i in range(len(digests)))
        rows = self._all(f"SELECT digest FROM repository_blobs WHERE repository_id = :id AND digest IN "
                         f"({placeholders})", id=repository_id, **{f"d{i}": d for i, d in enumerate(digests)})
        present = {row.digest for row in rows}
        return [digest for digest in digests if digest not in present]

    # Uploads.

    def create_upload(self, repository_id: int, region: str) -> Upload:
        upload = Upload(new_id(32), repository_id, region, 0, None, now())
        with self._write(durable=False) as connection:
            connection.execute(
                "INSERT INTO uploads (id, repository_id, region, size, created_at, updated_at) "
                "VALUES (:id, :repository_id, :region, 0, :now, :now)",
                {"id": upload.id, "repository_id": repository_id, "region": region, "now": upload.created_at})
        return upload

    def get_upload(self, upload_id: str, repository_id: int) -> Upload | None:
        row = self._one("SELECT * FROM uploads WHERE id = :id AND repository_id = :r",
                        id=upload_id, r=repository_id)
        if not row:
            return None
        return Upload(row.id, row.repository_id, row.region, int(row.size), row.hash_state, row.created_at)

    def advance_upload(self, upload_id: str, expected_size: int, size: int, hash_state: bytes) -> bool:
        """Record that the upload grew from `expected_size` to `size`; False if another request moved it."""
        with self._write(durable=False) as connection:
            result = connection.execute(
                "UPDATE uploads SET size = :size, hash_state = :state, updated_at = :now "
                "WHERE id = :id AND size = :expected",
                {"size": size, "state": hash_state, "now": now(), "id": upload_id, "expected": expected_size})
        return result.rowcount == 1

    def delete_upload(self, upload_id: str) -> None:
        with self._write(durable=False) as connection:
            connection.execute("DELETE FROM uploads WHERE id = :id", {"id": upload_id})

    # Manifests and tags.

    def put_manifest(self, instance_id: str, repository_id: int, record: ManifestRecord) -> None:
        """Store a manifest, what it references and its tag atomically: readers see all or nothing.

        The blob links are checked again inside the transaction, which garbage collection of the same instance
        cannot interleave with, so a stored manifest never references a blob that was just collected.
        """
        manifest = record.manifest
        with self._write() as connection:
            self._lock_instance(connection, instance_id)
            if record.blob_digests:
                placeholders = ", ".join(f":d{i}" for i in range(len(record.blob_digests)))
                present = {row.digest for row in connection.execute(
                    f"SELECT digest FROM repository_blobs WHERE repository_id = :r AND digest IN ({placeholders})",
                    {"r": repository_id, **{f"d{i}": d for i, d in enumerate(record.blob_digests)}})}
                missing = [d for d in record.blob_digests if d not in present]
                if missing:
                    raise BlobsMissing(missing)
            connection.execute(
                "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, "
                "size, content, created_at) VALUES (:r, :d, :mt, :at, :subject, :annotations, :size, :content, "
                ":now) ON CONFLICT DO NOTHING",
                {"r": repository_id, "d": manifest.digest, "mt": manifest.media_type,
                 "at": manifest.artifact_type, "subject": manifest.subject, "annotations": manifest.annotations,
                 "size": manifest.size, "content": manifest.content, "now": now()})
            references = [(d, "blob") for d in record.blob_digests] + [(d, "manifest") for d in record.child_digests]
            for child, kind in references:
                connection.execute(
                    "INSERT INTO manifest_references (repository_id, manifest_digest, child_digest, kind) "
                    "VALUES (:r, :m, :c, :k) ON CONFLICT DO NOTHING",
                    {"r": repository_id, "m": manifest.digest, "c": child, "k": kind})
            if record.tag is not None:
                connection.execute(
                    "INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (:r, :t, :d, :now) "
                    "ON CONFLICT (repository_id, name) DO UPDATE SET digest = :d, updated_at = :now",
                    {"r": repository_id, "t": record.tag, "d": manifest.digest, "now": now()})

    def find_manifest(self, instance_id: str, repository: str, reference: str, by_digest: bool
                      ) -> tuple[Repository | None, Manifest | None]:
        """Look up a repository and one of its manifests in one query: the manifest GET hot path."""
        if by_digest:
            row = self._one("SELECT r.*, m.digest AS m_digest, m.media_type AS m_media_type, m.size AS m_size, "
                            "m.content AS m_content FROM repositories r LEFT JOIN manifests m "
                            "ON m.repository_id = r.id AND m.digest = :ref WHERE r.instance_id = :i AND r.name = :n",
                            i=instance_id, n=repository, ref=reference)
        else:
            row = self._one("SELECT r.*, m.digest AS m_digest, m.media_type AS m_media_type, m.size AS m_size, "
                            "m.content AS m_content FROM repositories r LEFT JOIN tags t "
                            "ON t.repository_id = r.id AND t.name = :ref LEFT JOIN manifests m "
                            "ON m.repository_id = r.id AND m.digest = t.digest "
                            "WHERE r.instance_id = :i AND r.name = :n", i=instance_id, n=repository, ref=reference)
        if row is None:
            return None, None
        manifest = None
        if row.m_digest is not None:
            manifest = Manifest(row.m_digest, row.m_media_type, int(row.m_size), bytes(row.m_content))
        return _repository(row), manifest

    def get_manifest(self, repository_id: int, reference: str, by_digest: bool) -> Manifest | None:
        if by_digest:
            row = self._one("SELECT digest, media_type, size, content FROM manifests "
                            "WHERE repository_id = :r AND digest = :d", r=repository_id, d=reference)
        else:
            row = self._one("SELECT m.digest, m.media_type, m.size, m.content FROM tags t JOIN manifests m "
                            "ON m.repository_id = t.repository_id AND m.digest = t.digest "
                            "WHERE t.repository_id = :r AND t.name = :t", r=repository_id, t=reference)
        return Manifest(row.digest, row.media_type, int(row.size), bytes(row.content)) if row else None

    def missing_manifests(self, repository_id: int, digests: Sequence[str]) -> list[str]:
        missing = []
        for digest in digests:
            if not self._one("SELECT 1 AS present FROM manifests WHERE repository_id = :r AND digest = :d",
                             r=repository_id, d=digest):
                missing.append(digest)
        return missing

    def delete_manifest(self, repository_id: int, digest: str) -> bool:
        """Delete a manifest and every tag that points to it."""
        with self._write() as connection:
            deleted = connection.execute(
                "DELETE FROM manifests WHERE repository_id = :r AND digest = :d",
                {"r": repository_id, "d": digest}).rowcount
            connection.execute("DELETE FROM tags WHERE repository_id = :r AND digest = :d",
                               {"r": repository_id, "d": digest})
            connection.execute(
                "DELETE FROM manifest_references WHERE repository_id = :r AND manifest_digest = :d",
                {"r": repository_id, "d": digest})
        return deleted > 0

    def delete_tag(self, repository_id: int, tag: str) -> bool:
        with self._write() as connection:
            result = connection.execute("DELETE FROM tags WHERE repository_id = :r AND name = :t",
                                        {"r": repository_id, "t": tag})
        return result.rowcount > 0

    def list_tags(self, repository_id: int, after: str, limit: int | None) -> list[str]:
        sql = "SELECT name FROM tags WHERE repository_id = :r AND name > :after ORDER BY name"
        params: dict[str, Any] = {"r": repository_id, "after": after}
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit
        return [row.name for row in self._all(sql, **params)]

    def list_referrers(self, repository_id: int, subject: str) -> list[Manifest]:
        rows = self._all("SELECT digest, media_type, size, artifact_type, annotations FROM manifests "
                         "WHERE repository_id = :r AND subject = :s ORDER BY digest", r=repository_id, s=subject)
        return [Manifest(row.digest, row.media_type, int(row.size), b"", row.artifact_type, subject,
                         row.annotations) for row in rows]

    # Garbage collection.

    def gc_instance_ids(self) -> list[str]:
        return [row.id for row in self._all("SELECT id FROM instances ORDER BY id")]

    def gc_stale_uploads(self, cutoff: int) -> list[tuple[str, str, int]]:
        rows = self._all("SELECT id, region, size FROM uploads WHERE updated_at < :cutoff", cutoff=cutoff)
        return [(row.id, row.region, int(row.size)) for row in rows]

    def upload_ids(self) -> set[str]:
        return {row.id for row in self._all("SELECT id FROM uploads")}

    def gc_untagged_manifests(self, instance_id: str, cutoff: int, dry_run: bool) -> int:
        """Delete manifests older than `cutoff` with no tag, no parent index and no subject in the repository."""
        condition = ("m.created_at < :cutoff AND m.repository_id IN (SELECT id FROM repositories WHERE instance_id "
                     "= :i) AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = m.repository_id AND "
                     "t.digest = m.digest) AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE "
                     "r.repository_id = m.repository_id AND r.child_digest = m.digest) AND NOT EXISTS (SELECT 1 "
                     "FROM manifests s WHERE s.repository_id = m.repository_id AND s.digest = m.subject)")
        params = {"cutoff": cutoff, "i": instance_id}
        if dry_run:
            return int(self._one(f"SELECT count(*) AS n FROM manifests m WHERE {condition}", **params).n)
        with self._write() as connection:
            self._lock_instance(connection, instance_id)
            doomed = list(connection.execute(f"SELECT m.repository_id, m.digest FROM manifests m WHERE {condition}",
                                             params))
            for row in doomed:
                for table, column in (("manifest_references", "manifest_digest"), ("manifests", "digest")):
                    connection.execute(f"DELETE FROM {table} WHERE repository_id = :r AND {column} = :d",
                                       {"r": row.repository_id, "d": row.digest})
        return len(doomed)

    def gc_unreferenced_links(self, instance_id: str, cutoff: int, dry_run: bool) -> int:
        """Delete blob links older than `cutoff` that no manifest of their repository references."""
        condition = ("l.created_at < :cutoff AND l.repository_id IN (SELECT id FROM repositories WHERE "
                     "instance_id = :i) AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE "
                     "r.repository_id = l.repository_id AND r.child_digest = l.digest)")
        params = {"cutoff": cutoff, "i": instance_id}
        if dry_run:
            return int(self._one(f"SELECT count(*) AS n FROM repository_blobs l WHERE {condition}", **params).n)
        with self._write() as connection:
            # Manifest PUTs of this instance wait meanwhile, and re-check their links after.
            self._lock_instance(connection, instance_id)
            return connection.execute(f"DELETE FROM repository_blobs AS l WHERE {condition}", params).rowcount

    def gc_unlinked_blobs(self, cutoff: int, after_link_collection: bool = False) -> list[tuple[str, str, int]]:
        """List blobs older than `cutoff` that no repository links.

        With `after_link_collection`, links that `gc_unreferenced_links` would delete count as gone already,
        which is what a dry run reports.
        """
        surviving = ""
        if after_link_collection:
            surviving = (" AND NOT (l.created_at < :cutoff AND NOT EXISTS (SELECT 1 FROM manifest_references r "
                         "WHERE r.repository_id = l.repository_id AND r.child_digest = l.digest))")
        rows = self._all("SELECT b.region, b.digest, b.size FROM blobs b WHERE b.created_at < :cutoff AND NOT "
                         f"EXISTS (SELECT 1 FROM repository_blobs l WHERE l.digest = b.digest{surviving})",
                         cutoff=cutoff)
        return [(row.region, row.digest, int(row.size)) for row in rows]

    def gc_delete_blob_row(self, region: str, digest: str, cutoff: int) -> bool:
        """Delete a blob's row if it is still unlinked and older than `cutoff`."""
        with self._write() as connection:
            return connection.execute(
                "DELETE FROM blobs WHERE region = :r AND digest = :d AND created_at < :cutoff AND NOT EXISTS "
                "(SELECT 1 FROM repository_blobs l WHERE l.digest = :d)",
                {"r": region, "d": digest, "cutoff": cutoff}).rowcount == 1

    def blob_recorded(self, region: str, digest: str) -> bool:
        return self._one("SELECT 1 AS present FROM blobs WHERE region = :r AND digest = :d",
                         r=region, d=digest) is not None

    # Audit log.

    def list_audit(self, account_id: str | None, limit: int = 100) -> list[dict[str, Any]]:
        """Return the newest entries first: of one account, or of all when `account_id` is None."""
        if account_id is None:
            rows = self._all("SELECT * FROM audit_log ORDER BY id DESC LIMIT :n", n=limit)
        else:
            rows = self._all("SELECT * FROM audit_log WHERE account_id = :a ORDER BY id DESC LIMIT :n",
                             a=account_id, n=limit)
        return [_audit_entry(row) for row in rows]

    def audit(self, account_id: str | None, actor: str, action: str, resource: str, source_address: str,
              detail: dict[str, Any] | None = None) -> None:
        with self._write() as connection:
            connection.execute(
                "INSERT INTO audit_log (at, account_id, actor, action, resource, source_address, detail) "
                "VALUES (:at, :account_id, :actor, :action, :resource, :source, :detail)",
                {"at": now(), "account_id": account_id, "actor": actor, "action": action, "resource": resource,
                 "source": source_address, "detail": json.dumps(detail or {})})


def _sqlite_result(cursor: sqlite3.Cursor) -> _Result:
    rows = cursor.fetchall() if cursor.description else []
    return _Result(rows, cursor.rowcount)


def _sqlalchemy_result(result: Any) -> _Result:
    rows = list(result) if result.returns_rows else []
    return _Result(rows, result.rowcount)


class Row(dict[str, Any]):
    """A result row whose columns read as attributes, like SQLAlchemy's rows."""

    __getattr__ = dict.__getitem__


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return Row(zip((column[0] for column in cursor.description), values, strict=True))


def _instance(row: Any) -> Instance:
    return Instance(row.id, row.account_id, row.region, row.name, bool(row.legacy), int(row.namespace_quota),
                    int(row.repository_quota), int(row.created_at), row.password_holder)


def _access_key(row: Any) -> AccessKey:
    return AccessKey(row.id, row.secret_hash, row.account_id, row.sub_user_id, row.revoked_at is not None,
                     int(row.created_at))


def _sub_user(row: Any) -> SubUser:
    return SubUser(row.id, row.account_id, row.name, bool(row.disabled), int(row.created_at))


def _audit_entry(row: Any) -> dict[str, Any]:
    return {"id": row.id, "at": row.at, "actor": row.actor, "action": row.action, "resource": row.resource,
            "source_address": row.source_address, "detail": json.loads(row.detail or "{}")}


def _namespace(row: Any) -> Namespace:
    return Namespace(row.instance_id, row.name, bool(row.auto_create), row.default_visibility,
                     int(row.created_at))


def _repository(row: Any) -> Repository:
    return Repository(int(row.id), row.instance_id, row.namespace, row.name, row.visibility, row.summary,
                      row.description, int(row.created_at))
