"""Find or create the repository a push names."""

from __future__ import annotations

from crpe.errors import NameUnknown, QuotaExceeded
from crpe.metadata.store import Instance, Repository
from crpe.registry.access import Call


def ensure_repository(call: Call, instance: Instance, name: str) -> Repository:
    """Return the repository, creating it when its namespace allows creation on push."""
    store = call.services.store
    repository = store.get_repository(instance.id, name)
    if repository is not None:
        return repository
    namespace_name = name.split("/", 1)[0]
    namespace = store.get_namespace(instance.id, namespace_name)
    if namespace is None:
        raise NameUnknown(f"namespace {namespace_name!r} does not exist in this instance; create it with "
                          f"`crpe namespace create --instance {instance.id} {namespace_name}`",
                          detail={"name": name})
    if not namespace.auto_create:
        raise NameUnknown(f"repository {name!r} does not exist and namespace {namespace_name!r} does not create "
                          "repositories on push; create the repository first", detail={"name": name})
    repository = store.create_repository(instance, namespace, name)
    if repository is None:
        raise QuotaExceeded(f"the instance has reached its quota of {instance.repository_quota} repositories; "
                            "delete a repository or raise the quota", detail={"name": name})
    return repository
