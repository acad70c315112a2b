"""The long-lived parts of a running crpe process, built once by `Services.open`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from crpe.auth.tokens import TokenService, load_or_create_key
from crpe.metadata.store import Instance, MetadataStore
from crpe.settings import Settings
from crpe.storage import BlobStore, open_blob_stores

# Instances change rarely (create, delete); a worker re-reads one after this many seconds.
INSTANCE_CACHE_SECONDS = 5.0


@dataclass
class Services:
    settings: Settings
    store: MetadataStore
    tokens: TokenService
    blob_stores: dict[str, BlobStore]
    _instances: dict[str, tuple[float, Instance | None]] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        store = MetadataStore(settings.database_url)
        tokens = TokenService(load_or_create_key(settings.signing_key_path),
                              settings.token_ttl_seconds, settings.refresh_token_ttl_seconds)
        return cls(settings, store, tokens, open_blob_stores(settings))

    def instance(self, instance_id: str) -> Instance | None:
        cached = self._instances.get(instance_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        instance = self.store.get_instance(instance_id)
        if len(self._instances) > 10_000:
            self._instances.clear()
        self._instances[instance_id] = (time.monotonic() + INSTANCE_CACHE_SECONDS, instance)
        return instance

    def close(self) -> None:
        self.store.close()
