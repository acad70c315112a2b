"""Queries of garbage collection and the audit log."""

from __future__ import annotations

import json
from typing import Any

from crpe.metadata.database import Database
from crpe.metadata.records import audit_entry_of, now


class MaintenanceQueries(Database):
    """Garbage collection and audit log queries."""

    # Garbage collection.

    def gc_instance_ids(self) -> list[str]:
        return [row.id for row in self._all("SELECT id FROM instances ORDER BY id")]

    def gc_stale_uploads(self, cutoff: int) -> list[tuple[str, str, int]]:
        """List uploads unchanged since `cutoff` that no request is writing, as (id, region, size)."""
        rows = self._all("SELECT id, region, size FROM uploads WHERE updated_at < :cutoff AND "
                         "(lease_owner IS NULL OR lease_until < :now)", cutoff=cutoff, now=now())
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

    def recorded_digests(self, region: str) -> set[str]:
        return {row.digest for row in self._all("SELECT digest FROM blobs WHERE region = :r", r=region)}

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
        return [audit_entry_of(row) for row in rows]

    def audit(self, account_id: str | None, actor: str, action: str, resource: str, source_address: str,
              detail: dict[str, Any] | None = None) -> None:
        with self._write() as connection:
            connection.execute(
                "INSERT INTO audit_log (at, account_id, actor, action, resource, source_address, detail) "
                "VALUES (:at, :account_id, :actor, :action, :resource, :source, :detail)",
                {"at": now(), "account_id": account_id, "actor": actor, "action": action, "resource": resource,
                 "source": source_address, "detail": json.dumps(detail or {})})
