"""JSON views of control-plane resources."""

from __future__ import annotations

from typing import Any

from crpe.endpoints import Network, exclusive_host, legacy_host
from crpe.metadata.store import Instance, Namespace, Repository


def instance_view(instance: Instance, domain: str, port_suffix: str = "") -> dict[str, Any]:
    if instance.legacy:
        public = legacy_host(instance.region, domain, Network.PUBLIC)
        vpc = legacy_host(instance.region, domain, Network.VPC)
    else:
        public = exclusive_host(instance.id, instance.region, domain, Network.PUBLIC)
        vpc = exclusive_host(instance.id, instance.region, domain, Network.VPC)
    return {
        "id": instance.id,
        "region": instance.region,
        "name": instance.name,
        "legacy": instance.legacy,
        "created_at": instance.created_at,
        "quotas": {"namespaces": instance.namespace_quota, "repositories": instance.repository_quota},
        "endpoints": {"public": public, "vpc": vpc},
        "commands": {
            "login": f"docker login {vpc}{port_suffix}",
            "push": f"docker push {public}{port_suffix}/<namespace>/<repository>:<tag>",
            "pull": f"docker pull {vpc}{port_suffix}/<namespace>/<repository>:<tag>",
        },
    }


def namespace_view(namespace: Namespace) -> dict[str, Any]:
    return {"instance_id": namespace.instance_id, "name": namespace.name, "auto_create": namespace.auto_create,
            "default_visibility": namespace.default_visibility, "created_at": namespace.created_at}


def repository_view(repository: Repository) -> dict[str, Any]:
    return {"instance_id": repository.instance_id, "namespace": repository.namespace, "name": repository.name,
            "visibility": repository.visibility, "summary": repository.summary,
            "description": repository.description, "created_at": repository.created_at}
