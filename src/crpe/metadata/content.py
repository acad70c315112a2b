"""Queries on blobs, uploads, manifests and tags."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crpe.metadata.database import Database
from crpe.metadata.records import BlobsMissing, Manifest, ManifestRecord, Repository, Upload, new_id, now, repository_of


class ContentQueries(Database):
    """Blob, upload, manifest and tag queries."""

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

    def create_upload(self, repository_id: int, region: str, lease_owner: str | None = None,
                      lease_until: int | None = None) -> Upload:
        """Start an upload session, leased to `lease_owner` when the creating request writes it at once."""
        upload = Upload(new_id(32), repository_id, region, 0, None, now(), lease_owner=lease_owner)
        with self._write(durable=False) as connection:
            connection.execute(
                "INSERT INTO uploads (id, repository_id, region, size, created_at, updated_at, lease_owner, "
                "lease_until) VALUES (:id, :repository_id, :region, 0, :now, :now, :owner, :until)",
                {"id": upload.id, "repository_id": repository_id, "region": region, "now": upload.created_at,
                 "owner": lease_owner, "until": lease_until})
        return upload

    def get_upload(self, upload_id: str, repository_id: int) -> Upload | None:
        row = self._one("SELECT * FROM uploads WHERE id = :id AND repository_id = :r",
                        id=upload_id, r=repository_id)
        return _upload_of(row) if row else None

    def claim_upload(self, upload_id: str, repository_id: int, owner: str, until: int,
                     replacing: str | None = None) -> tuple[Upload | None, bool]:
        """Lease the upload to `owner` until `until`, if no other live lease holds it.

        `replacing` names a lease whose holder is known to be dead, which may be taken before it expires.
        Return the upload (None if there is none) and whether the lease is now `owner`'s.
        """
        with self._write(durable=False) as connection:
            result = connection.execute(
                "UPDATE uploads SET lease_owner = :owner, lease_until = :until WHERE id = :id AND repository_id = :r "
                "AND (lease_owner IS NULL OR lease_until < :now OR lease_owner = :replacing)",
                {"owner": owner, "until": until, "id": upload_id, "r": repository_id, "now": now(),
                 "replacing": replacing})
            row = connection.execute("SELECT * FROM uploads WHERE id = :id AND repository_id = :r",
                                     {"id": upload_id, "r": repository_id}).first()
        return (_upload_of(row) if row else None), result.rowcount == 1

    def renew_upload_lease(self, upload_id: str, owner: str, until: int) -> bool:
        """Extend `owner`'s lease; False if the lease expired and another request took the upload."""
        with self._write(durable=False) as connection:
            result = connection.execute(
                "UPDATE uploads SET lease_until = :until WHERE id = :id AND lease_owner = :owner",
                {"until": until, "id": upload_id, "owner": owner})
        return result.rowcount == 1

    def release_upload(self, upload_id: str, owner: str) -> None:
        with self._write(durable=False) as connection:
            connection.execute("UPDATE uploads SET lease_owner = NULL, lease_until = NULL "
                               "WHERE id = :id AND lease_owner = :owner", {"id": upload_id, "owner": owner})

    def advance_upload(self, upload_id: str, owner: str, expected_size: int, size: int, hash_state: bytes,
                       storage_state: bytes | None) -> bool:
        """Record that the upload grew from `expected_size` to `size` and release `owner`'s lease.

        Return False, changing nothing, if the lease is no longer `owner`'s or another request moved the upload.
        """
        with self._write(durable=False) as connection:
            result = connection.execute(
                "UPDATE uploads SET size = :size, hash_state = :state, storage_state = :storage, updated_at = :now, "
                "lease_owner = NULL, lease_until = NULL WHERE id = :id AND size = :expected AND lease_owner = :owner",
                {"size": size, "state": hash_state, "storage": storage_state, "now": now(), "id": upload_id,
                 "expected": expected_size, "owner": owner})
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
        return repository_of(row), manifest

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


def _upload_of(row: Any) -> Upload:
    return Upload(row.id, row.repository_id, row.region, int(row.size), row.hash_state, row.created_at,
                  row.storage_state, row.lease_owner)
