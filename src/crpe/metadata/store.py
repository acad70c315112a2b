"""The metadata store: one object with every query, composed from one mixin per concept.

Reads on SQLite run on the caller's thread because they take microseconds. Every write is one transaction,
which begins IMMEDIATE on SQLite so that concurrent worker processes wait for each other instead of failing
with SQLITE_BUSY.
"""

from __future__ import annotations

from pathlib import Path

from crpe.metadata.content import ContentQueries
from crpe.metadata.database import Database
from crpe.metadata.identity import IdentityQueries
from crpe.metadata.instances import InstanceQueries
from crpe.metadata.maintenance import MaintenanceQueries
from crpe.metadata.records import (
    AccessKey,
    Account,
    BlobsMissing,
    Conflict,
    Instance,
    LoginPassword,
    Manifest,
    ManifestRecord,
    Namespace,
    Repository,
    SubUser,
    Upload,
    new_id,
    now,
)

__all__ = [
    "AccessKey", "Account", "BlobsMissing", "Conflict", "Instance", "LoginPassword", "Manifest", "ManifestRecord",
    "MetadataStore", "Namespace", "Repository", "SubUser", "Upload", "new_id", "now",
]


class MetadataStore(IdentityQueries, InstanceQueries, ContentQueries, MaintenanceQueries, Database):
    """Metadata queries. On SQLite (the embedded default) they run through the sqlite3 module, which costs
    microseconds per query; other databases go through SQLAlchemy, imported only then.
    """

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> MetadataStore:
        return cls(f"sqlite:///{data_dir / 'crpe.sqlite3'}")
