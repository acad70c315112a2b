"""Queries on instances, namespaces and repositories."""

from __future__ import annotations

from typing import Any

from crpe.metadata.database import Database
from crpe.metadata.records import Instance, Namespace, Repository, instance_of, namespace_of, new_id, now, repository_of


class InstanceQueries(Database):
    """Instance, namespace and repository queries."""

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
        return instance_of(row) if row else None

    def list_instances(self, account_id: str, region: str | None = None) -> list[Instance]:
        if region:
            rows = self._all("SELECT * FROM instances WHERE account_id = :account_id AND region = :region "
                             "ORDER BY created_at, id", account_id=account_id, region=region)
        else:
            rows = self._all("SELECT * FROM instances WHERE account_id = :account_id ORDER BY created_at, id",
                             account_id=account_id)
        return [instance_of(row) for row in rows]

    def update_quotas(self, instance_id: str, namespace_quota: int, repository_quota: int) -> None:
        with self._write() as connection:
            connection.execute("UPDATE instances SET namespace_quota = :nq, repository_quota = :rq "
                                    "WHERE id = :id", {"nq": namespace_quota, "rq": repository_quota,
                                                         "id": instance_id})

    def list_legacy_instances(self, account_id: str, region: str) -> list[Instance]:
        rows = self._all("SELECT * FROM instances WHERE account_id = :a AND region = :r AND legacy "
                         "ORDER BY created_at, id", a=account_id, r=region)
        return [instance_of(row) for row in rows]

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
        return instance_of(row) if row else None

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
        return namespace_of(row) if row else None

    def list_namespaces(self, instance_id: str) -> list[Namespace]:
        return [namespace_of(row) for row in
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
        return repository_of(row) if row else None

    def create_repository(self, instance: Instance, namespace: Namespace, name: str) -> Repository | None:
        """Create `name` unless the repository quota is reached (then return None); idempotent."""
        with self._write() as connection:
            self._lock_instance(connection, instance.id)
            existing = connection.execute(
                "SELECT * FROM repositories WHERE instance_id = :i AND name = :name",
                {"i": instance.id, "name": name}).first()
            if existing:
                return repository_of(existing)
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
        return repository_of(row)

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
        return [repository_of(row) for row in self._all(sql, **params)]
