"""MetadataStore against both backends: SQLite in a file and a real PostgreSQL server.

Every test runs once per backend (ids `sqlite` and `postgresql`). Each backend gets one fresh database for
this module, so tests create their own accounts, regions and instances and never rely on another test's rows.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from crpe.metadata import migrate
from crpe.metadata.store import (
    AccessKey,
    Account,
    BlobsMissing,
    Conflict,
    Instance,
    LoginPassword,
    Manifest,
    ManifestRecord,
    MetadataStore,
    Namespace,
    Repository,
    Upload,
    new_id,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REGION = "cn-hangzhou"
# Bytes that are not valid UTF-8 (a lone continuation byte, 0xff, 0xfe) and a NUL byte.
NON_UTF8 = b'{"schemaVersion":2}\x80\xff\xfe\x00\xc3\x28 end'
FOUR_MIB = 4 * 1024 * 1024
# How long a concurrency test waits for its threads before it fails.
THREAD_TIMEOUT_SECONDS = 30


# Databases and fixtures.


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Create an empty database of the backend, migrate it to the newest schema and return its URL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('metadata') / 'crpe.sqlite3'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.create_database("crpe_test_metadata_store")
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[MetadataStore]:
    metadata_store = MetadataStore(database_url)
    yield metadata_store
    metadata_store.close()


@pytest.fixture
def account(store: MetadataStore) -> Account:
    return store.create_account(unique("account"))


@pytest.fixture
def instance(store: MetadataStore, account: Account) -> Instance:
    return store.create_instance(account.id, REGION)


@pytest.fixture
def namespace(store: MetadataStore, instance: Instance) -> Namespace:
    return store.create_namespace(instance, "team", auto_create=True, default_visibility="private")


@pytest.fixture
def repository(store: MetadataStore, instance: Instance, namespace: Namespace) -> Repository:
    created = store.create_repository(instance, namespace, "team/app")
    assert created is not None
    return created


def unique(prefix: str) -> str:
    """Return a name no other test uses, valid as an account, sub-user or region name."""
    return f"{prefix}-{new_id(10)}"


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def manifest_of(content: bytes, media_type: str = OCI_MANIFEST, **fields: Any) -> Manifest:
    return Manifest(sha256(content), media_type, len(content), content, **fields)


def record_of(manifest: Manifest, tag: str | None = None, blobs: tuple[str, ...] = (),
              children: tuple[str, ...] = ()) -> ManifestRecord:
    return ManifestRecord(manifest, blobs, children, tag)


def stored(manifest: Manifest) -> Manifest:
    """Return `manifest` as get_manifest and find_manifest return it: without the referrer fields."""
    return Manifest(manifest.digest, manifest.media_type, manifest.size, manifest.content)


def count_rows(url: str, table: str, repository_id: int) -> int:
    """Count the rows of `table` that belong to a repository, read past the store's own queries."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {table} WHERE repository_id = :r"),
                                          {"r": repository_id}).scalar_one())
    finally:
        engine.dispose()


def assert_recent(timestamp: int, before: int) -> None:
    assert before <= timestamp <= int(time.time())


# Schema.


def test_create_schema_again_keeps_rows(store: MetadataStore) -> None:
    account = store.create_account(unique("schema"))

    store.create_schema()

    assert store.get_account(account.id) == account


def test_for_data_dir_uses_sqlite_file(tmp_path: Path) -> None:
    store = MetadataStore.for_data_dir(tmp_path)
    try:
        assert store.url == f"sqlite:///{tmp_path / 'crpe.sqlite3'}"
        assert store.is_sqlite
        store.create_schema()
        account = store.create_account("first")
        assert store.get_account_by_name("first") == account
    finally:
        store.close()
    assert (tmp_path / "crpe.sqlite3").is_file()


# Accounts.


def test_account_create_and_get(store: MetadataStore) -> None:
    name = unique("account")

    account = store.create_account(name)
    admin = store.create_account(unique("admin"), is_admin=True)

    assert account == Account(account.id, name, is_admin=False, disabled=False)
    assert len(account.id) == 16
    assert store.get_account(account.id) == account
    assert store.get_account_by_name(name) == account
    assert store.get_account(admin.id) == Account(admin.id, admin.name, is_admin=True, disabled=False)
    assert store.get_account("missing") is None
    assert store.get_account_by_name("missing") is None


def test_account_list_and_count(store: MetadataStore) -> None:
    prefix = unique("list")
    count_before = store.count_accounts()

    second = store.create_account(f"{prefix}-b")
    first = store.create_account(f"{prefix}-a")

    assert store.count_accounts() == count_before + 2
    listed = [account for account in store.list_accounts() if account.name.startswith(prefix)]
    assert listed == [first, second]
    names = [account.name for account in store.list_accounts()]
    assert names == sorted(names)


def test_account_disable_and_enable(store: MetadataStore, account: Account) -> None:
    store.set_account_disabled(account.id, True)
    assert store.get_account(account.id) == replace(account, disabled=True)

    store.set_account_disabled(account.id, False)
    assert store.get_account(account.id) == account


def test_account_duplicate_name_conflict(store: MetadataStore, account: Account) -> None:
    count_before = store.count_accounts()

    with pytest.raises(Conflict):
        store.create_account(account.name)

    assert store.count_accounts() == count_before
    assert store.get_account_by_name(account.name) == account


# Sub-users and policies.


def test_sub_user_create_get_list(store: MetadataStore, account: Account) -> None:
    before = int(time.time())
    developer = store.create_sub_user(account.id, "developer")
    auditor = store.create_sub_user(account.id, "auditor")
    other_account = store.create_account(unique("other"))

    assert developer.account_id == account.id
    assert developer.name == "developer"
    assert developer.disabled is False
    assert_recent(developer.created_at, before)
    assert store.get_sub_user(account.id, "developer") == developer
    assert store.get_sub_user_by_id(auditor.id) == auditor
    assert store.list_sub_users(account.id) == [auditor, developer]
    assert store.list_sub_users(other_account.id) == []
    assert store.get_sub_user(other_account.id, "developer") is None
    assert store.get_sub_user(account.id, "missing") is None
    assert store.get_sub_user_by_id("missing") is None


def test_sub_user_disable_and_enable(store: MetadataStore, account: Account) -> None:
    sub_user = store.create_sub_user(account.id, "developer")

    store.set_sub_user_disabled(sub_user.id, True)
    assert store.get_sub_user_by_id(sub_user.id) == replace(sub_user, disabled=True)

    store.set_sub_user_disabled(sub_user.id, False)
    assert store.get_sub_user_by_id(sub_user.id) == sub_user


def test_sub_user_duplicate_name_conflict(store: MetadataStore, account: Account) -> None:
    store.create_sub_user(account.id, "developer")
    other_account = store.create_account(unique("other"))

    with pytest.raises(Conflict):
        store.create_sub_user(account.id, "developer")

    assert [sub_user.name for sub_user in store.list_sub_users(account.id)] == ["developer"]
    assert store.create_sub_user(other_account.id, "developer").account_id == other_account.id


def test_sub_user_of_missing_account_conflict(store: MetadataStore) -> None:
    with pytest.raises(Conflict):
        store.create_sub_user("missing", "developer")


def test_policy_set_replace_get(store: MetadataStore, account: Account) -> None:
    sub_user = store.create_sub_user(account.id, "developer")
    other = store.create_sub_user(account.id, "auditor")
    first = [{"effect": "allow", "actions": ["repository:pull"], "resources": ["instance/*/team/*"]},
             {"effect": "deny", "actions": ["*"], "resources": ["instance/*/secret/é漢字"]}]
    second = [{"effect": "allow", "actions": ["repository:push", "repository:pull"], "resources": ["*"]}]

    assert store.get_policy(sub_user.id) == []
    store.set_policy(sub_user.id, first)
    assert store.get_policy(sub_user.id) == first

    store.set_policy(sub_user.id, second)
    assert store.get_policy(sub_user.id) == second
    assert store.get_policy(other.id) == []

    store.set_policy(sub_user.id, [])
    assert store.get_policy(sub_user.id) == []


# Access keys.


def test_access_key_create_and_get(store: MetadataStore, account: Account) -> None:
    sub_user = store.create_sub_user(account.id, "developer")
    account_key, sub_user_key = unique("AK"), unique("AK")
    before = int(time.time())

    store.create_access_key(account_key, "argon2-hash-of-account-secret", account.id)
    store.create_access_key(sub_user_key, "argon2-hash-of-sub-user-secret", account.id, sub_user.id)

    key = store.get_access_key(account_key)
    assert key is not None
    assert_recent(key.created_at, before)
    assert key == AccessKey(account_key, "argon2-hash-of-account-secret", account.id, None, False, key.created_at)
    key = store.get_access_key(sub_user_key)
    assert key is not None
    assert key == AccessKey(sub_user_key, "argon2-hash-of-sub-user-secret", account.id, sub_user.id, False,
                            key.created_at)
    assert store.get_access_key("missing") is None


def test_access_key_list_per_sub_user(store: MetadataStore, account: Account) -> None:
    developer = store.create_sub_user(account.id, "developer")
    auditor = store.create_sub_user(account.id, "auditor")
    account_key = unique("AK")
    developer_keys = [unique("AK"), unique("AK")]
    auditor_key = unique("AK")
    store.create_access_key(account_key, "hash-0", account.id)
    for index, key_id in enumerate(developer_keys):
        store.create_access_key(key_id, f"hash-{index + 1}", account.id, developer.id)
    store.create_access_key(auditor_key, "hash-3", account.id, auditor.id)

    account_listed = store.list_access_keys(account.id, None)
    developer_listed = store.list_access_keys(account.id, developer.id)
    auditor_listed = store.list_access_keys(account.id, auditor.id)

    assert [key.id for key in account_listed] == [account_key]
    assert [key.sub_user_id for key in account_listed] == [None]
    # Keys created within the same second are listed by id.
    expected = [key.id for key in sorted(developer_listed, key=lambda key: (key.created_at, key.id))]
    assert [key.id for key in developer_listed] == expected
    assert sorted(key.id for key in developer_listed) == sorted(developer_keys)
    assert {key.secret_hash for key in developer_listed} == {"hash-1", "hash-2"}
    assert [key.id for key in auditor_listed] == [auditor_key]
    assert store.list_access_keys(store.create_account(unique("other")).id, None) == []


def test_access_key_revoke_once(store: MetadataStore, account: Account) -> None:
    key_id = unique("AK")
    store.create_access_key(key_id, "hash", account.id)

    assert store.revoke_access_key(key_id) is True
    key = store.get_access_key(key_id)
    assert key is not None
    assert key.revoked is True
    assert store.revoke_access_key(key_id) is False
    assert store.revoke_access_key("missing") is False
    assert [key.revoked for key in store.list_access_keys(account.id, None)] == [True]


def test_access_key_duplicate_id_conflict(store: MetadataStore, account: Account) -> None:
    key_id = unique("AK")
    store.create_access_key(key_id, "first", account.id)

    with pytest.raises(Conflict):
        store.create_access_key(key_id, "second", account.id)

    key = store.get_access_key(key_id)
    assert key is not None
    assert key.secret_hash == "first"


# Instances, password holders and login passwords.


def test_instance_create_with_quotas(store: MetadataStore, account: Account) -> None:
    region = unique("cn")
    before = int(time.time())

    created = store.create_instance(account.id, region, name="production", created_at=1_700_000_000,
                                    namespace_quota=5, repository_quota=7)
    defaults = store.create_instance(account.id, region)

    assert created == Instance(created.id, account.id, region, "production", legacy=False, namespace_quota=5,
                               repository_quota=7, created_at=1_700_000_000, password_holder=None)
    assert len(created.id) == 16
    assert store.get_instance(created.id) == created
    assert defaults == Instance(defaults.id, account.id, region, "", legacy=False, namespace_quota=3,
                                repository_quota=300, created_at=defaults.created_at, password_holder=None)
    assert_recent(defaults.created_at, before)
    assert store.get_instance("missing") is None


def test_instance_update_quotas(store: MetadataStore, instance: Instance) -> None:
    store.update_quotas(instance.id, namespace_quota=10, repository_quota=1000)

    assert store.get_instance(instance.id) == replace(instance, namespace_quota=10, repository_quota=1000)


def test_instance_list_per_account_and_region(store: MetadataStore, account: Account) -> None:
    hangzhou, beijing = unique("cn-hangzhou"), unique("cn-beijing")
    third = store.create_instance(account.id, hangzhou, name="third", created_at=300)
    first = store.create_instance(account.id, hangzhou, name="first", created_at=100, legacy=True)
    second = store.create_instance(account.id, beijing, name="second", created_at=200, legacy=True)
    other_account = store.create_account(unique("other"))
    store.create_instance(other_account.id, hangzhou, created_at=50)

    assert store.list_instances(account.id) == [first, second, third]
    assert store.list_instances(account.id, hangzhou) == [first, third]
    assert store.list_instances(account.id, beijing) == [second]
    assert store.list_instances(account.id, unique("cn-shanghai")) == []
    assert store.list_legacy_instances(account.id, hangzhou) == [first]
    assert store.list_legacy_instances(account.id, beijing) == [second]
    assert store.list_legacy_instances(other_account.id, hangzhou) == []


def test_legacy_instance_found_by_namespace(store: MetadataStore, account: Account) -> None:
    region = unique("cn")
    legacy = store.create_instance(account.id, region, legacy=True)
    modern = store.create_instance(account.id, region)
    store.create_namespace(legacy, "old-team", auto_create=True, default_visibility="private")
    store.create_namespace(modern, "new-team", auto_create=True, default_visibility="private")

    assert store.find_legacy_instance(region, "old-team") == legacy
    assert store.find_legacy_instance(region, "new-team") is None
    assert store.find_legacy_instance(unique("cn"), "old-team") is None
    assert store.find_legacy_instance(region, "missing") is None


def test_password_holder_claim_and_revoke(store: MetadataStore, account: Account, instance: Instance) -> None:
    first = store.create_sub_user(account.id, "first")
    second = store.create_sub_user(account.id, "second")

    assert store.claim_password_holder(instance.id, first.id) is True
    assert store.claim_password_holder(instance.id, second.id) is False
    assert store.claim_password_holder(instance.id, first.id) is True
    assert store.get_instance(instance.id) == replace(instance, password_holder=first.id)

    store.set_login_password(instance.id, first.id, "hash-first")
    store.set_login_password(instance.id, "", "hash-account")

    assert store.revoke_password_holder(instance.id) == first.id
    assert store.get_instance(instance.id) == instance
    assert store.get_login_password(instance.id, first.id) is None
    assert store.get_login_password(instance.id, "") == LoginPassword(instance.id, "", "hash-account", 1)
    assert store.revoke_password_holder(instance.id) is None
    assert store.revoke_password_holder("missing") is None
    assert store.claim_password_holder(instance.id, second.id) is True
    assert store.claim_password_holder("missing", second.id) is False


def test_login_password_set_twice_bumps_generation(store: MetadataStore, account: Account,
                                                    instance: Instance) -> None:
    sub_user = store.create_sub_user(account.id, "developer")

    assert store.get_login_password(instance.id, sub_user.id) is None
    first = store.set_login_password(instance.id, sub_user.id, "hash-1")
    second = store.set_login_password(instance.id, sub_user.id, "hash-2")
    for_account = store.set_login_password(instance.id, "", "hash-account")

    assert first == LoginPassword(instance.id, sub_user.id, "hash-1", 1)
    assert second == LoginPassword(instance.id, sub_user.id, "hash-2", 2)
    assert for_account == LoginPassword(instance.id, "", "hash-account", 1)
    assert store.get_login_password(instance.id, sub_user.id) == second
    assert store.get_login_password(instance.id, "") == for_account


# Namespaces.


def test_namespace_create_get_list_count(store: MetadataStore, instance: Instance) -> None:
    before = int(time.time())

    beta = store.create_namespace(instance, "beta", auto_create=False, default_visibility="public")
    alpha = store.create_namespace(instance, "alpha", auto_create=True, default_visibility="private")

    assert replace(beta, created_at=0) == Namespace(instance.id, "beta", False, "public", 0)
    got = store.get_namespace(instance.id, "beta")
    assert got is not None
    assert_recent(got.created_at, before)
    assert replace(got, created_at=0) == replace(beta, created_at=0)
    assert [(n.name, n.auto_create, n.default_visibility) for n in store.list_namespaces(instance.id)] == [
        ("alpha", True, "private"), ("beta", False, "public")]
    assert [n.instance_id for n in store.list_namespaces(instance.id)] == [alpha.instance_id, beta.instance_id]
    assert store.count_namespaces(instance.id) == 2
    assert store.get_namespace(instance.id, "missing") is None


def test_namespace_duplicate_conflict(store: MetadataStore, instance: Instance, namespace: Namespace) -> None:
    with pytest.raises(Conflict):
        store.create_namespace(instance, namespace.name, auto_create=False, default_visibility="public")

    assert store.count_namespaces(instance.id) == 1
    got = store.get_namespace(instance.id, namespace.name)
    assert got is not None
    assert (got.auto_create, got.default_visibility) == (True, "private")


def test_legacy_namespace_unique_per_region(store: MetadataStore, account: Account) -> None:
    region, other_region = unique("cn"), unique("cn")
    first_legacy = store.create_instance(account.id, region, legacy=True)
    second_legacy = store.create_instance(account.id, region, legacy=True)
    first_modern = store.create_instance(account.id, region)
    second_modern = store.create_instance(account.id, region)
    elsewhere = store.create_instance(account.id, other_region, legacy=True)
    store.create_namespace(first_legacy, "shared", auto_create=True, default_visibility="private")

    with pytest.raises(Conflict):
        store.create_namespace(second_legacy, "shared", auto_create=True, default_visibility="private")

    assert store.get_namespace(second_legacy.id, "shared") is None
    store.create_namespace(first_modern, "shared", auto_create=True, default_visibility="private")
    store.create_namespace(second_modern, "shared", auto_create=True, default_visibility="private")
    store.create_namespace(elsewhere, "shared", auto_create=True, default_visibility="private")
    assert store.find_legacy_instance(region, "shared") == first_legacy
    assert store.find_legacy_instance(other_region, "shared") == elsewhere


def test_namespace_update(store: MetadataStore, instance: Instance, namespace: Namespace) -> None:
    store.update_namespace(instance.id, namespace.name, auto_create=False, default_visibility="public")

    got = store.get_namespace(instance.id, namespace.name)
    assert got is not None
    assert (got.auto_create, got.default_visibility) == (False, "public")


def test_namespace_delete_rejected_with_repositories(store: MetadataStore, instance: Instance,
                                                      namespace: Namespace, repository: Repository) -> None:
    assert store.delete_namespace(instance.id, namespace.name) is False
    assert store.get_namespace(instance.id, namespace.name) is not None

    store.delete_repository(repository.id)

    assert store.delete_namespace(instance.id, namespace.name) is True
    assert store.get_namespace(instance.id, namespace.name) is None
    assert store.count_namespaces(instance.id) == 0


# Repositories.


def test_repository_create_idempotent(store: MetadataStore, instance: Instance, namespace: Namespace) -> None:
    before = int(time.time())

    created = store.create_repository(instance, namespace, "team/app")
    again = store.create_repository(instance, namespace, "team/app")

    assert created is not None
    assert created == Repository(created.id, instance.id, "team", "team/app", "private", "", "",
                                 created.created_at)
    assert_recent(created.created_at, before)
    assert created.public is False
    assert again == created
    assert store.get_repository(instance.id, "team/app") == created
    assert store.get_repository(instance.id, "team/missing") is None


def test_repository_takes_namespace_visibility(store: MetadataStore, instance: Instance) -> None:
    public = store.create_namespace(instance, "open", auto_create=True, default_visibility="public")

    created = store.create_repository(instance, public, "open/app")

    assert created is not None
    assert created.visibility == "public"
    assert created.public is True


def test_repository_quota_returns_none(store: MetadataStore, account: Account) -> None:
    instance = store.create_instance(account.id, REGION, repository_quota=2)
    namespace = store.create_namespace(instance, "team", auto_create=True, default_visibility="private")
    first = store.create_repository(instance, namespace, "team/one")
    second = store.create_repository(instance, namespace, "team/two")

    assert first is not None
    assert second is not None
    assert store.create_repository(instance, namespace, "team/three") is None
    assert store.get_repository(instance.id, "team/three") is None
    assert store.create_repository(instance, namespace, "team/one") == first


def test_repository_update(store: MetadataStore, instance: Instance, repository: Repository) -> None:
    description = "# App\n\nMarkdown with é, 漢字 and \"quotes\".\n" * 40

    store.update_repository(repository.id, "public", "The app image", description)

    assert store.get_repository(instance.id, repository.name) == replace(
        repository, visibility="public", summary="The app image", description=description)


def test_repository_delete_cascades(store: MetadataStore, database_url: str, instance: Instance,
                                    namespace: Namespace, repository: Repository) -> None:
    layer = sha256(b"layer")
    store.add_blob(REGION, layer, 5, repository.id)
    upload = store.create_upload(repository.id, REGION)
    image = manifest_of(b'{"layers":["layer"]}')
    store.put_manifest(repository.instance_id, repository.id, record_of(image, tag="latest", blobs=(layer,)))
    signature = manifest_of(b'{"subject":"image"}', subject=image.digest, artifact_type="application/x-signature")
    store.put_manifest(repository.instance_id, repository.id, record_of(signature, blobs=(layer,)))
    tables = ("tags", "manifest_references", "manifests", "repository_blobs", "uploads")
    assert {table: count_rows(database_url, table, repository.id) for table in tables} == {
        "tags": 1, "manifest_references": 2, "manifests": 2, "repository_blobs": 1, "uploads": 1}

    store.delete_repository(repository.id)

    assert store.get_repository(instance.id, repository.name) is None
    assert {table: count_rows(database_url, table, repository.id) for table in tables} == dict.fromkeys(tables, 0)
    assert store.get_manifest(repository.id, image.digest, by_digest=True) is None
    assert store.get_upload(upload.id, repository.id) is None
    assert store.linked_blob_size(repository.id, REGION, layer) is None
    recreated = store.create_repository(instance, namespace, repository.name)
    assert recreated is not None
    assert store.list_tags(recreated.id, "", None) == []
    assert store.linked_blob_size(recreated.id, REGION, layer) is None
    assert store.find_manifest(instance.id, repository.name, "latest", by_digest=False) == (recreated, None)


def test_repository_list_paging(store: MetadataStore, instance: Instance, namespace: Namespace) -> None:
    names = ["team/b", "team/a", "team/c", "team/a-b", "team/a.b"]
    for name in names:
        store.create_repository(instance, namespace, name)
    other = store.create_instance(instance.account_id, REGION)
    store.create_repository(other, store.create_namespace(other, "team", True, "private"), "team/zzz")

    def listed(after: str = "", limit: int | None = None) -> list[str]:
        return [repository.name for repository in store.list_repositories(instance.id, after, limit)]

    assert listed() == ["team/a", "team/a-b", "team/a.b", "team/b", "team/c"]
    assert listed(limit=2) == ["team/a", "team/a-b"]
    assert listed(after="team/a-b", limit=2) == ["team/a.b", "team/b"]
    assert listed(after="team/b") == ["team/c"]
    assert listed(after="team/c") == []
    assert listed(limit=0) == []
    assert store.list_repositories(instance.id) == [store.get_repository(instance.id, name) for name in listed()]


def test_audit_longest_repository_resource(store: MetadataStore, account: Account,
                                                   instance: Instance) -> None:
    # The control API accepts a 64-character namespace and a 190-character repository name, and audits
    # "repository.create" on "instance/<id>/<namespace>/<name>": 281 characters.
    resource = f"instance/{instance.id}/{'n' * 64}/{'r' * 190}"

    store.audit(account.id, "admin", "repository.create", resource, "127.0.0.1")

    assert [entry["resource"] for entry in store.list_audit(account.id)] == [resource]


# Blobs.


def test_add_blob_records_once_per_region(store: MetadataStore, instance: Instance,
                                                    namespace: Namespace) -> None:
    first = store.create_repository(instance, namespace, "team/first")
    second = store.create_repository(instance, namespace, "team/second")
    assert first is not None
    assert second is not None
    digest = sha256(unique("blob").encode())
    other_region = unique("cn")

    store.add_blob(REGION, digest, 1234, first.id)
    store.add_blob(REGION, digest, 1234, first.id)

    assert store.linked_blob_size(first.id, REGION, digest) == 1234
    assert store.linked_blob_size(second.id, REGION, digest) is None
    assert store.linked_blob_size(first.id, other_region, digest) is None
    # The region records the first size; a later add only links.
    store.add_blob(REGION, digest, 99, second.id)
    assert store.linked_blob_size(second.id, REGION, digest) == 1234
    store.add_blob(other_region, digest, 5_000_000_000, first.id)
    assert store.linked_blob_size(first.id, other_region, digest) == 5_000_000_000


def test_link_and_unlink_blob(store: MetadataStore, instance: Instance, namespace: Namespace,
                              repository: Repository) -> None:
    target = store.create_repository(instance, namespace, "team/target")
    assert target is not None
    digest = sha256(unique("blob").encode())
    store.add_blob(REGION, digest, 42, repository.id)

    store.link_blob(target.id, digest)
    store.link_blob(target.id, digest)

    assert store.linked_blob_size(target.id, REGION, digest) == 42
    assert store.unlink_blob(target.id, digest) is True
    assert store.linked_blob_size(target.id, REGION, digest) is None
    assert store.unlink_blob(target.id, digest) is False
    assert store.linked_blob_size(repository.id, REGION, digest) == 42


def test_missing_blobs(store: MetadataStore, repository: Repository) -> None:
    present = [sha256(b"config"), sha256(b"layer-1")]
    absent = [sha256(b"layer-2"), sha256(b"layer-3")]
    for digest in present:
        store.add_blob(REGION, digest, 10, repository.id)

    requested = [absent[1], present[0], absent[0], present[1]]
    assert store.missing_blobs(repository.id, requested) == [absent[1], absent[0]]
    assert store.missing_blobs(repository.id, present) == []
    assert store.missing_blobs(repository.id, []) == []
    many = [sha256(str(index).encode()) for index in range(500)]
    assert store.missing_blobs(repository.id, many + present) == many


# Uploads.


def test_upload_create_and_get(store: MetadataStore, repository: Repository, instance: Instance,
                               namespace: Namespace) -> None:
    other = store.create_repository(instance, namespace, "team/other")
    assert other is not None
    before = int(time.time())

    upload = store.create_upload(repository.id, REGION)

    assert upload == Upload(upload.id, repository.id, REGION, 0, None, upload.created_at)
    assert len(upload.id) == 32
    assert_recent(upload.created_at, before)
    assert store.get_upload(upload.id, repository.id) == upload
    assert store.get_upload(upload.id, other.id) is None
    assert store.get_upload("missing", repository.id) is None


def test_advance_upload_only_from_expected_size(store: MetadataStore, repository: Repository) -> None:
    upload = store.create_upload(repository.id, REGION)
    first_state = bytes(range(256)) + NON_UTF8
    second_state = b"\x00" * 112
    storage_state = b'{"multipart": "abc"}' + NON_UTF8
    owner = "node/1/a"

    assert store.claim_upload(upload.id, repository.id, owner, int(time.time()) + 60)[1] is True
    assert store.advance_upload(upload.id, owner, 0, 10, first_state, storage_state) is True
    got = store.get_upload(upload.id, repository.id)
    assert got == replace(upload, size=10, hash_state=first_state, storage_state=storage_state)
    assert got is not None
    assert type(got.hash_state) is bytes
    assert type(got.storage_state) is bytes

    store.claim_upload(upload.id, repository.id, owner, int(time.time()) + 60)
    assert store.advance_upload(upload.id, owner, 0, 20, second_state, None) is False
    assert store.get_upload(upload.id, repository.id) == replace(
        upload, size=10, hash_state=first_state, storage_state=storage_state, lease_owner=owner)
    assert store.advance_upload(upload.id, owner, 10, 6_000_000_000, second_state, None) is True
    assert store.get_upload(upload.id, repository.id) == replace(upload, size=6_000_000_000,
                                                                 hash_state=second_state)
    assert store.advance_upload("missing", owner, 0, 1, b"", None) is False


def test_advance_upload_needs_the_lease(store: MetadataStore, repository: Repository) -> None:
    upload = store.create_upload(repository.id, REGION)

    unleased = store.advance_upload(upload.id, "node/1/a", 0, 10, b"state", None)
    store.claim_upload(upload.id, repository.id, "node/2/b", int(time.time()) + 60)
    other_owner = store.advance_upload(upload.id, "node/1/a", 0, 10, b"state", None)

    assert unleased is False
    assert other_owner is False
    assert store.get_upload(upload.id, repository.id).size == 0


def test_claim_upload_excludes_live_lease(store: MetadataStore, repository: Repository) -> None:
    upload = store.create_upload(repository.id, REGION)
    until = int(time.time()) + 60

    first = store.claim_upload(upload.id, repository.id, "node/1/a", until)
    second = store.claim_upload(upload.id, repository.id, "node/2/b", until)
    replaced = store.claim_upload(upload.id, repository.id, "node/3/c", until, replacing="node/1/a")
    missing = store.claim_upload("missing", repository.id, "node/4/d", until)

    assert first == (replace(upload, lease_owner="node/1/a"), True)
    assert second == (replace(upload, lease_owner="node/1/a"), False)
    assert replaced == (replace(upload, lease_owner="node/3/c"), True)
    assert missing == (None, False)


def test_claim_upload_takes_expired_lease(store: MetadataStore, repository: Repository) -> None:
    upload = store.create_upload(repository.id, REGION, "node/1/a", int(time.time()) - 1)

    renewed = store.renew_upload_lease(upload.id, "node/1/a", int(time.time()) - 1)
    claimed_after_expiry = store.claim_upload(upload.id, repository.id, "node/2/b", int(time.time()) + 60)
    stale_renewal = store.renew_upload_lease(upload.id, "node/1/a", int(time.time()) + 60)

    assert renewed is True
    assert claimed_after_expiry == (replace(upload, lease_owner="node/2/b"), True)
    assert stale_renewal is False


def test_release_upload_only_by_owner(store: MetadataStore, repository: Repository) -> None:
    upload = store.create_upload(repository.id, REGION, "node/1/a", int(time.time()) + 60)

    store.release_upload(upload.id, "node/2/b")
    before_release = store.get_upload(upload.id, repository.id)
    store.release_upload(upload.id, "node/1/a")
    released = store.get_upload(upload.id, repository.id)

    assert before_release.lease_owner == "node/1/a"
    assert released.lease_owner is None


def test_stale_uploads_skip_leased(store: MetadataStore, repository: Repository) -> None:
    leased = store.create_upload(repository.id, REGION, "node/1/a", int(time.time()) + 60)
    idle = store.create_upload(repository.id, REGION)

    stale = {upload_id for upload_id, _, _ in store.gc_stale_uploads(int(time.time()) + 10)}

    assert idle.id in stale
    assert leased.id not in stale


def test_delete_upload(store: MetadataStore, repository: Repository) -> None:
    upload = store.create_upload(repository.id, REGION)
    kept_upload = store.create_upload(repository.id, REGION)

    store.delete_upload(upload.id)
    store.delete_upload("missing")

    assert store.get_upload(upload.id, repository.id) is None
    assert store.get_upload(kept_upload.id, repository.id) == kept_upload


# Manifests and tags.


def test_put_manifest_with_tag(store: MetadataStore, repository: Repository) -> None:
    image = manifest_of(b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}')

    store.put_manifest(repository.instance_id, repository.id, record_of(image, tag="latest"))
    store.put_manifest(repository.instance_id, repository.id, record_of(image, tag="latest"))

    assert store.get_manifest(repository.id, "latest", by_digest=False) == image
    assert store.get_manifest(repository.id, image.digest, by_digest=True) == image
    assert store.get_manifest(repository.id, "missing", by_digest=False) is None
    assert store.get_manifest(repository.id, sha256(b"missing"), by_digest=True) is None
    assert store.list_tags(repository.id, "", None) == ["latest"]


def test_manifest_bytes_round_trip(store: MetadataStore, instance: Instance, repository: Repository) -> None:
    binary = manifest_of(NON_UTF8)
    # 4 MiB that repeat every byte value, so the body is not valid UTF-8 either.
    large = manifest_of(bytes(range(256)) * (FOUR_MIB // 256), media_type=OCI_INDEX)

    store.put_manifest(repository.instance_id, repository.id, record_of(binary, tag="binary"))
    store.put_manifest(repository.instance_id, repository.id, record_of(large, tag="large"))

    for manifest, tag in ((binary, "binary"), (large, "large")):
        by_tag = store.get_manifest(repository.id, tag, by_digest=False)
        by_digest = store.get_manifest(repository.id, manifest.digest, by_digest=True)
        found = store.find_manifest(instance.id, repository.name, tag, by_digest=False)[1]
        for got in (by_tag, by_digest, found):
            assert got is not None
            assert type(got.content) is bytes
            assert got.size == len(manifest.content)
            assert sha256(got.content) == manifest.digest
            assert got == manifest


def test_find_manifest_with_and_without_manifest(store: MetadataStore, instance: Instance,
                                                 repository: Repository) -> None:
    image = manifest_of(b'{"find":1}')
    store.put_manifest(repository.instance_id, repository.id, record_of(image, tag="v1"))

    assert store.find_manifest(instance.id, repository.name, "v1", by_digest=False) == (repository, image)
    assert store.find_manifest(instance.id, repository.name, image.digest, by_digest=True) == (repository, image)
    assert store.find_manifest(instance.id, repository.name, "v2", by_digest=False) == (repository, None)
    unknown_digest = sha256(b"none")
    assert store.find_manifest(instance.id, repository.name, unknown_digest, by_digest=True) == (repository, None)
    assert store.find_manifest(instance.id, "team/missing", "v1", by_digest=False) == (None, None)
    assert store.find_manifest(instance.id, "team/missing", image.digest, by_digest=True) == (None, None)
    assert store.find_manifest("missing", repository.name, "v1", by_digest=False) == (None, None)


def test_tag_moves_to_new_digest(store: MetadataStore, instance: Instance, repository: Repository) -> None:
    old = manifest_of(b'{"version":1}')
    new = manifest_of(b'{"version":2}')

    store.put_manifest(repository.instance_id, repository.id, record_of(old, tag="latest"))
    store.put_manifest(repository.instance_id, repository.id, record_of(new, tag="latest"))

    assert store.get_manifest(repository.id, "latest", by_digest=False) == new
    assert store.find_manifest(instance.id, repository.name, "latest", by_digest=False) == (repository, new)
    assert store.get_manifest(repository.id, old.digest, by_digest=True) == old
    assert store.list_tags(repository.id, "", None) == ["latest"]


def test_put_manifest_rejects_unlinked_blobs(store: MetadataStore, repository: Repository) -> None:
    image = manifest_of(b'{"unlinked":true}')

    with pytest.raises(BlobsMissing) as raised:
        store.put_manifest(repository.instance_id, repository.id, record_of(image, tag="x", blobs=(sha256(b"nope"),)))

    assert raised.value.digests == [sha256(b"nope")]
    assert store.get_manifest(repository.id, "x", by_digest=False) is None


def test_delete_manifest_removes_its_tags(store: MetadataStore, database_url: str,
                                          repository: Repository) -> None:
    doomed = manifest_of(b'{"doomed":true}')
    index = manifest_of(b'{"manifests":["doomed"]}', media_type=OCI_INDEX)
    for blob in (b"config", b"layer"):
        store.add_blob("cn-hangzhou", sha256(blob), len(blob), repository.id)
    doomed_record = record_of(doomed, tag="a", blobs=(sha256(b"config"), sha256(b"layer")))
    store.put_manifest(repository.instance_id, repository.id, doomed_record)
    store.put_manifest(repository.instance_id, repository.id, record_of(doomed, tag="b"))
    store.put_manifest(repository.instance_id, repository.id, record_of(index, tag="c", children=(doomed.digest,)))

    assert store.delete_manifest(repository.id, doomed.digest) is True

    assert store.get_manifest(repository.id, doomed.digest, by_digest=True) is None
    assert store.get_manifest(repository.id, "a", by_digest=False) is None
    assert store.list_tags(repository.id, "", None) == ["c"]
    assert store.get_manifest(repository.id, "c", by_digest=False) == index
    # Only the index's reference to its child remains.
    assert count_rows(database_url, "manifest_references", repository.id) == 1
    assert store.delete_manifest(repository.id, doomed.digest) is False


def test_delete_tag_keeps_manifest(store: MetadataStore, repository: Repository) -> None:
    image = manifest_of(b'{"tagged":true}')
    store.put_manifest(repository.instance_id, repository.id, record_of(image, tag="v1"))
    store.put_manifest(repository.instance_id, repository.id, record_of(image, tag="v2"))

    assert store.delete_tag(repository.id, "v1") is True

    assert store.list_tags(repository.id, "", None) == ["v2"]
    assert store.get_manifest(repository.id, "v1", by_digest=False) is None
    assert store.get_manifest(repository.id, image.digest, by_digest=True) == image
    assert store.delete_tag(repository.id, "v1") is False


def test_list_tags_paging(store: MetadataStore, repository: Repository) -> None:
    image = manifest_of(b'{"paging":true}')
    for tag in ["v1", "latest", "V2", "a_b", "1.0", "_internal"]:
        store.put_manifest(repository.instance_id, repository.id, record_of(image, tag=tag))

    # Code point order, as SQLite and a database with locale C sort: digits, upper case, "_", lower case.
    assert store.list_tags(repository.id, "", None) == ["1.0", "V2", "_internal", "a_b", "latest", "v1"]
    assert store.list_tags(repository.id, "", 2) == ["1.0", "V2"]
    assert store.list_tags(repository.id, "V2", 2) == ["_internal", "a_b"]
    assert store.list_tags(repository.id, "latest", 10) == ["v1"]
    assert store.list_tags(repository.id, "v1", None) == []
    assert store.list_tags(repository.id, "", 0) == []


def test_missing_manifests(store: MetadataStore, repository: Repository) -> None:
    present = manifest_of(b'{"present":true}')
    store.put_manifest(repository.instance_id, repository.id, record_of(present))
    absent = [sha256(b"absent-1"), sha256(b"absent-2")]

    assert store.missing_manifests(repository.id, [absent[0], present.digest, absent[1]]) == absent
    assert store.missing_manifests(repository.id, [present.digest]) == []
    assert store.missing_manifests(repository.id, []) == []


def test_list_referrers_by_subject(store: MetadataStore, repository: Repository) -> None:
    image = manifest_of(b'{"image":true}')
    other_image = manifest_of(b'{"image":false}')
    annotations = json.dumps({"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "note": "é漢字"})
    sbom = manifest_of(b'{"sbom":true}', artifact_type="application/spdx+json", subject=image.digest,
                       annotations=annotations)
    signature = manifest_of(b'{"signature":true}', artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json",
                            subject=image.digest)
    plain = manifest_of(b'{"plain":true}', subject=image.digest)
    unrelated = manifest_of(b'{"unrelated":true}', artifact_type="application/spdx+json",
                            subject=other_image.digest)
    for manifest in (image, other_image, sbom, signature, plain, unrelated):
        store.put_manifest(repository.instance_id, repository.id, record_of(manifest))

    referrers = store.list_referrers(repository.id, image.digest)

    expected = sorted([sbom, signature, plain], key=lambda manifest: manifest.digest)
    assert referrers == [replace(manifest, content=b"") for manifest in expected]
    assert [referrer.annotations for referrer in referrers if referrer.digest == sbom.digest] == [annotations]
    assert store.list_referrers(repository.id, other_image.digest) == [replace(unrelated, content=b"")]
    assert store.list_referrers(repository.id, sbom.digest) == []
    assert store.get_manifest(repository.id, sbom.digest, by_digest=True) == stored(sbom)


# Audit log.


def test_audit_newest_first(store: MetadataStore) -> None:
    first_account = store.create_account(unique("audited"))
    second_account = store.create_account(unique("audited"))
    before = int(time.time())

    store.audit(first_account.id, "admin", "account.create", f"account/{first_account.name}", "127.0.0.1")
    store.audit(second_account.id, "ops", "instance.create", "instance/abc", "::1", {"region": REGION})
    store.audit(first_account.id, "admin", "policy.set", "sub-user/dev", "10.0.0.1",
                {"statements": [{"effect": "allow"}], "note": "é漢字"})
    store.audit(None, "system", "bootstrap", "account/admin", "")

    first_entries = store.list_audit(first_account.id)
    assert [{key: value for key, value in entry.items() if key not in ("id", "at")} for entry in first_entries] == [
        {"actor": "admin", "action": "policy.set", "resource": "sub-user/dev", "source_address": "10.0.0.1",
         "detail": {"statements": [{"effect": "allow"}], "note": "é漢字"}},
        {"actor": "admin", "action": "account.create", "resource": f"account/{first_account.name}",
         "source_address": "127.0.0.1", "detail": {}},
    ]
    assert first_entries[0]["id"] > first_entries[1]["id"]
    for entry in first_entries:
        assert_recent(entry["at"], before)
    assert [entry["action"] for entry in store.list_audit(second_account.id)] == ["instance.create"]
    assert [entry["detail"] for entry in store.list_audit(second_account.id)] == [{"region": REGION}]
    assert [entry["action"] for entry in store.list_audit(None, limit=4)] == [
        "bootstrap", "policy.set", "instance.create", "account.create"]
    assert [entry["action"] for entry in store.list_audit(first_account.id, limit=1)] == ["policy.set"]
    assert store.list_audit(store.create_account(unique("quiet")).id) == []


# Concurrent writes from separate stores, as from separate worker processes.


@contextmanager
def writes_blocked(url: str, table: str) -> Iterator[Callable[[int], None]]:
    """Hold a lock that makes every write to `table` wait, and yield a function that waits for writers.

    On PostgreSQL a SHARE ROW EXCLUSIVE lock lets other transactions read `table` but makes their
    INSERT wait, so each writer runs its reads first and then queues. `wait_for(n)` returns once n
    transactions are queued, seen in pg_locks. On SQLite a BEGIN IMMEDIATE transaction on another
    connection makes the store's own BEGIN IMMEDIATE wait, and `wait_for` only sleeps briefly,
    because SQLite does not show who is waiting.
    """
    if url.startswith("sqlite"):
        blocker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield lambda count: time.sleep(0.3)
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        return

    engine = create_engine(url)
    try:
        with engine.connect() as blocker, engine.connect() as observer:
            transaction = blocker.begin()
            blocker.execute(text(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))

            def wait_for(count: int) -> None:
                deadline = time.monotonic() + THREAD_TIMEOUT_SECONDS
                while time.monotonic() < deadline:
                    # Writers may queue on the table itself or behind each other's row locks (the store
                    # serializes repository creation on the instance's row), so count every waiting backend.
                    waiting = observer.execute(text(
                        "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted")).scalar_one()
                    observer.commit()
                    if waiting >= count:
                        return
                    time.sleep(0.02)
                raise AssertionError(f"{count} writers did not queue on {table} within {THREAD_TIMEOUT_SECONDS} s")

            try:
                yield wait_for
            finally:
                transaction.commit()
    finally:
        engine.dispose()


def run_in_threads(url: str, calls: list[Callable[[MetadataStore], Any]], table: str) -> list[Any]:
    """Run each call on its own store and thread while `table` is locked, then release the lock.

    Returns each call's result, or the exception it raised.
    """
    ready = threading.Barrier(len(calls))

    def run(call: Callable[[MetadataStore], Any]) -> Any:
        own_store = MetadataStore(url)
        try:
            ready.wait(timeout=THREAD_TIMEOUT_SECONDS)
            return call(own_store)
        finally:
            own_store.close()

    with ThreadPoolExecutor(max_workers=len(calls)) as executor:
        with writes_blocked(url, table) as wait_for:
            futures = [executor.submit(run, call) for call in calls]
            wait_for(len(calls))
        return [future.exception(timeout=THREAD_TIMEOUT_SECONDS) or future.result() for future in futures]


def errors_of(outcomes: list[Any]) -> list[str]:
    return [f"{type(outcome).__name__}: {outcome}" for outcome in outcomes if isinstance(outcome, BaseException)]


def test_concurrent_create_repository_same_name(store: MetadataStore, database_url: str, instance: Instance,
                                                namespace: Namespace) -> None:
    def create(own_store: MetadataStore) -> Repository | None:
        return own_store.create_repository(instance, namespace, "team/raced")

    outcomes = run_in_threads(database_url, [create, create], "repositories")

    assert errors_of(outcomes) == []
    created = store.get_repository(instance.id, "team/raced")
    assert created is not None
    assert outcomes == [created, created]


def test_concurrent_create_repository_respects_quota(store: MetadataStore, database_url: str,
                                                     account: Account) -> None:
    instance = store.create_instance(account.id, REGION, repository_quota=1)
    namespace = store.create_namespace(instance, "team", auto_create=True, default_visibility="private")

    def create(name: str) -> Callable[[MetadataStore], Repository | None]:
        return lambda own_store: own_store.create_repository(instance, namespace, name)

    outcomes = run_in_threads(database_url, [create("team/one"), create("team/two")], "repositories")

    assert errors_of(outcomes) == []
    assert [repository.name for repository in store.list_repositories(instance.id)] in (["team/one"],
                                                                                        ["team/two"])
    assert sorted(outcomes, key=lambda outcome: outcome is None) == [
        store.list_repositories(instance.id)[0], None]


def test_concurrent_first_login_password(store: MetadataStore, database_url: str, account: Account,
                                         instance: Instance) -> None:
    sub_user = store.create_sub_user(account.id, "developer")

    def set_password(password_hash: str) -> Callable[[MetadataStore], LoginPassword]:
        return lambda own_store: own_store.set_login_password(instance.id, sub_user.id, password_hash)

    outcomes = run_in_threads(database_url, [set_password("hash-a"), set_password("hash-b")], "login_passwords")

    assert errors_of(outcomes) == []
    assert sorted(outcome.generation for outcome in outcomes) == [1, 2]
    final = store.get_login_password(instance.id, sub_user.id)
    assert final is not None
    assert final.generation == 2
