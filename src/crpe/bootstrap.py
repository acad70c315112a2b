"""First start of a data directory: schema, signing key, administrator account, access key, CLI profile."""

from __future__ import annotations

import logging

from crpe.auth.passwords import hash_secret, new_access_key
from crpe.auth.tokens import load_or_create_key
from crpe.metadata import migrate
from crpe.metadata.store import MetadataStore
from crpe.profiles import Profile, save
from crpe.settings import Settings
from crpe.storage import open_blob_store

log = logging.getLogger("crpe.bootstrap")

ADMIN_ACCOUNT = "admin"


def prepare(settings: Settings) -> None:
    """Prepare the database, signing key and blob stores; raise StorageError if a blob store is unusable."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for region in settings.regions:
        open_blob_store(settings, region).check()
    with migrate.exclusive(settings.database_url):
        migrate.upgrade(settings.database_url)
        _create_administrator(settings)


def _create_administrator(settings: Settings) -> None:
    store = MetadataStore(settings.database_url)
    try:
        load_or_create_key(settings.signing_key_path)
        if store.count_accounts() == 0:
            account = store.create_account(ADMIN_ACCOUNT, is_admin=True)
            key_id, secret = new_access_key()
            store.create_access_key(key_id, hash_secret(secret), account.id)
            host = settings.listen_host if settings.listen_host not in ("0.0.0.0", "::") else "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            path = save("default", Profile(f"http://{host}:{settings.listen_port}", key_id, secret,
                                           settings.regions[0].id), make_default=True)
            log.info("created administrator account and CLI profile",
                     extra={"auth.user.name": ADMIN_ACCOUNT, "auth.key.id": key_id, "cli.profile": str(path)})
    finally:
        store.close()
