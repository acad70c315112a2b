"""The database schema, one definition for SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

accounts = Table(
    "accounts", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, server_default=text("false")),
    Column("disabled", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", BigInteger, nullable=False),
)

sub_users = Table(
    "sub_users", metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("account_id", "name"),
)

access_keys = Table(
    "access_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("secret_hash", String(200), nullable=False),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("sub_user_id", String(32), ForeignKey("sub_users.id")),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
)

instances = Table(
    "instances", metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("region", String(64), nullable=False),
    Column("name", String(128), nullable=False, server_default=""),
    Column("legacy", Boolean, nullable=False, server_default=text("false")),
    Column("namespace_quota", Integer, nullable=False, server_default="3"),
    Column("repository_quota", Integer, nullable=False, server_default="300"),
    # The one sub-user allowed to set the login password of a new instance; NULL until one sets it.
    Column("password_holder", String(32)),
    Column("created_at", BigInteger, nullable=False),
    Index("instances_by_account_region", "account_id", "region"),
)

# One login password per (instance, principal); `sub_user_id` is "" for the account itself.
login_passwords = Table(
    "login_passwords", metadata,
    Column("instance_id", String(32), ForeignKey("instances.id"), primary_key=True),
    Column("sub_user_id", String(32), primary_key=True),
    Column("password_hash", String(200), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

namespaces = Table(
    "namespaces", metadata,
    Column("instance_id", String(32), ForeignKey("instances.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("region", String(64), nullable=False),
    Column("legacy", Boolean, nullable=False, server_default=text("false")),
    Column("auto_create", Boolean, nullable=False, server_default=text("true")),
    Column("default_visibility", String(16), nullable=False, server_default="private"),
    Column("created_at", BigInteger, nullable=False),
    # Legacy endpoints find the instance by namespace, so legacy namespaces are unique per region.
    Index("legacy_namespaces_by_region", "region", "name", unique=True, sqlite_where=text("legacy"),
          postgresql_where=text("legacy")),
)

repositories = Table(
    "repositories", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance_id", String(32), ForeignKey("instances.id"), nullable=False),
    Column("namespace", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("visibility", String(16), nullable=False, server_default="private"),
    Column("summary", String(80), nullable=False, server_default=""),
    Column("description", Text, nullable=False, server_default=""),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("instance_id", "name"),
)

# Blob content is stored once per region; `repository_blobs` decides where a blob is visible.
blobs = Table(
    "blobs", metadata,
    Column("region", String(64), primary_key=True),
    Column("digest", String(160), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

repository_blobs = Table(
    "repository_blobs", metadata,
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("digest", String(160), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
)

uploads = Table(
    "uploads", metadata,
    Column("id", String(64), primary_key=True),
    Column("repository_id", Integer, ForeignKey("repositories.id"), nullable=False),
    Column("region", String(64), nullable=False),
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("hash_state", LargeBinary),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # The blob store's own state of the upload, such as an S3 multipart upload id and its parts.
    Column("storage_state", LargeBinary),
    # The request that writes the upload now, on whichever node, and until when (Unix seconds) it may.
    Column("lease_owner", String(128)),
    Column("lease_until", BigInteger),
)

manifests = Table(
    "manifests", metadata,
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("digest", String(160), primary_key=True),
    Column("media_type", String(256), nullable=False),
    Column("artifact_type", String(256)),
    Column("subject", String(160)),
    Column("annotations", Text),
    Column("size", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("manifests_by_subject", "repository_id", "subject"),
)

# References from each manifest: blobs (config, layers) and child manifests (of an index).
manifest_references = Table(
    "manifest_references", metadata,
    Column("repository_id", Integer, primary_key=True),
    Column("manifest_digest", String(160), primary_key=True),
    Column("child_digest", String(160), primary_key=True),
    Column("kind", String(16), nullable=False),
)

tags = Table(
    "tags", metadata,
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("digest", String(160), nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("tags_by_digest", "repository_id", "digest"),
)

# Permission statements of a sub-user, as a JSON list of {effect, actions, resources}.
sub_user_policies = Table(
    "sub_user_policies", metadata,
    Column("sub_user_id", String(32), ForeignKey("sub_users.id"), primary_key=True),
    Column("statements", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("account_id", String(32)),
    Column("actor", String(160), nullable=False),
    Column("action", String(64), nullable=False),
    Column("resource", Text, nullable=False),
    Column("source_address", String(64), nullable=False, server_default=""),
    Column("detail", Text, nullable=False, server_default=""),
)
