"""Regions, instances, namespaces, repositories, login passwords and temporary credentials."""

import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from crpe.auth.passwords import hash_secret
from crpe.auth.permissions import permitted_actions
from crpe.control.common import Caller, ControlError, not_found
from crpe.control.views import instance_view, namespace_view, repository_view
from crpe.metadata.store import Conflict, Instance, Repository
from crpe.registry.names import COMPONENT_PATTERN

router = APIRouter(prefix="/api/v1")

# A login password must resist guessing; 128 bounds the argon2 input.
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 128
MAX_SUMMARY_LENGTH = 80
MAX_DESCRIPTION_LENGTH = 2000
Visibility = Literal["public", "private"]


class InstanceCreate(BaseModel):
    region: str | None = Field(default=None, max_length=64, description="Region id, for example cn-hangzhou")
    name: str = Field(default="", max_length=128)
    account: str | None = Field(default=None, max_length=64,
                                description="Owner account (administrator only; default: the caller's)")
    created_at: datetime.date | None = Field(
        default=None, description="Creation date (administrator only); before the cut-over date makes a legacy "
                                  "instance served on registry.<region>.<domain>")


class QuotaUpdate(BaseModel):
    namespaces: int = Field(ge=0, le=100_000)
    repositories: int = Field(ge=0, le=10_000_000)


class NamespaceCreate(BaseModel):
    name: str = Field(min_length=2, max_length=64)
    auto_create: bool = True
    default_visibility: Visibility = "private"


class NamespaceUpdate(BaseModel):
    auto_create: bool | None = None
    default_visibility: Visibility | None = None


class RepositoryCreate(BaseModel):
    namespace: str = Field(min_length=2, max_length=64)
    name: str = Field(min_length=1, max_length=190)
    visibility: Visibility | None = None
    summary: str = Field(default="", max_length=MAX_SUMMARY_LENGTH)
    description: str = Field(default="", max_length=MAX_DESCRIPTION_LENGTH)


class RepositoryUpdate(BaseModel):
    visibility: Visibility | None = None
    summary: str | None = Field(default=None, max_length=MAX_SUMMARY_LENGTH)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_LENGTH)


class PasswordSet(BaseModel):
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)


def _valid_regions(context: Caller) -> str:
    return ", ".join(context.services.settings.region_ids)


@router.get("/deployment", summary="Show the deployment's domain, regions and endpoint settings")
def deployment(context: Caller) -> dict[str, Any]:
    settings = context.services.settings
    return {"domain": settings.domain, "public_endpoint_pull_allowed": settings.public_endpoint_pull_allowed,
            "legacy_cutover": settings.legacy_cutover.isoformat(),
            "regions": [{"id": r.id, "name": r.name, "vpc_networks": [str(n) for n in r.vpc_networks]}
                        for r in settings.regions]}


@router.get("/regions", summary="List the regions this deployment serves")
def list_regions(context: Caller) -> list[dict[str, Any]]:
    return [{"id": region.id, "name": region.name} for region in context.services.settings.regions]


@router.post("/instances", status_code=201, summary="Create a registry instance in a region")
def create_instance(body: InstanceCreate, context: Caller) -> dict[str, Any]:
    settings = context.services.settings
    if not body.region:
        raise ControlError(400, "REGION_REQUIRED", f"region is required; valid regions: {_valid_regions(context)}")
    if settings.region(body.region) is None:
        raise ControlError(400, "REGION_UNKNOWN", f"region {body.region!r} is not served here; valid regions: "
                           f"{_valid_regions(context)}")
    account_id = context.principal.account_id
    if body.account is not None:
        context.require_admin("create instances for other accounts")
        account = context.store.get_account_by_name(body.account)
        if account is None:
            raise not_found("account", body.account, "create it with `crpe account create`")
        account_id = account.id
    elif not context.principal.is_account:
        raise ControlError(403, "DENIED", "only the account itself may create instances")
    created_at = None
    legacy = False
    if body.created_at is not None:
        context.require_admin("set an instance's creation date")
        created_at = int(datetime.datetime.combine(body.created_at, datetime.time(),
                                                   datetime.UTC).timestamp())
        legacy = body.created_at < settings.legacy_cutover
    instance = context.store.create_instance(account_id, body.region, body.name, legacy, created_at,
                                             settings.namespace_quota, settings.repository_quota)
    context.audit("instance.create", f"instance/{instance.id}", region=body.region, legacy=legacy)
    return instance_view(instance, settings.domain)


@router.get("/instances", summary="List the instances you can use, optionally in one region")
def list_instances(context: Caller, region: str | None = None) -> list[dict[str, Any]]:
    settings = context.services.settings
    if region is not None and settings.region(region) is None:
        raise ControlError(400, "REGION_UNKNOWN", f"region {region!r} is not served here; valid regions: "
                           f"{_valid_regions(context)}")
    visible = []
    for instance in context.store.list_instances(context.principal.account_id, region):
        try:
            context.visible_instance(instance.id)
        except ControlError:
            continue
        visible.append(instance_view(instance, settings.domain))
    return visible


@router.get("/instances/{instance_id}", summary="Show an instance, its endpoints and docker commands")
def show_instance(instance_id: str, context: Caller) -> dict[str, Any]:
    return instance_view(context.visible_instance(instance_id), context.services.settings.domain)


@router.put("/instances/{instance_id}/quotas", summary="Set an instance's quotas (administrator)")
def set_quotas(instance_id: str, body: QuotaUpdate, context: Caller) -> dict[str, Any]:
    context.require_admin("change quotas")
    instance = context.store.get_instance(instance_id)
    if instance is None:
        raise not_found("instance", instance_id, "list instances with `crpe instance list`")
    context.store.update_quotas(instance.id, body.namespaces, body.repositories)
    context.audit("instance.quotas", f"instance/{instance.id}", namespaces=body.namespaces,
                  repositories=body.repositories)
    updated = context.store.get_instance(instance.id)
    assert updated is not None
    return instance_view(updated, context.services.settings.domain)


# Namespaces.

def _check_component(name: str, field: str) -> None:
    if not COMPONENT_PATTERN.match(name):
        raise ControlError(400, f"{field.upper()}_INVALID", f"{field} {name!r} is invalid: use lower-case letters "
                           "and digits, optionally separated by '.', '_', '__' or '-'")


@router.post("/instances/{instance_id}/namespaces", status_code=201, summary="Create a namespace")
def create_namespace(instance_id: str, body: NamespaceCreate, context: Caller) -> dict[str, Any]:
    instance = context.managed_instance(instance_id)
    _check_component(body.name, "namespace")
    store = context.store
    if store.get_namespace(instance.id, body.name) is not None:
        raise ControlError(409, "NAMESPACE_EXISTS", f"namespace {body.name!r} already exists in this instance")
    try:
        namespace = store.create_namespace(instance, body.name, body.auto_create, body.default_visibility)
    except Conflict:
        # Legacy namespaces are unique per region, across accounts.
        raise ControlError(409, "NAMESPACE_EXISTS", f"namespace {body.name!r} is already taken in region "
                           f"{instance.region}; choose another name") from None
    if namespace is None:
        raise ControlError(403, "QUOTA_EXCEEDED", f"the instance has reached its namespace quota of "
                           f"{instance.namespace_quota}; delete a namespace or ask the administrator to raise it")
    context.audit("namespace.create", f"instance/{instance.id}/{body.name}")
    return namespace_view(namespace)


@router.get("/instances/{instance_id}/namespaces", summary="List the namespaces of an instance")
def list_namespaces(instance_id: str, context: Caller) -> list[dict[str, Any]]:
    instance = context.visible_instance(instance_id)
    return [namespace_view(namespace) for namespace in context.store.list_namespaces(instance.id)]


@router.patch("/instances/{instance_id}/namespaces/{name}", summary="Change a namespace's settings")
def update_namespace(instance_id: str, name: str, body: NamespaceUpdate, context: Caller) -> dict[str, Any]:
    instance = context.managed_instance(instance_id)
    namespace = context.store.get_namespace(instance.id, name)
    if namespace is None:
        raise not_found("namespace", name, f"list them with `crpe namespace list --instance {instance.id}`")
    auto_create = namespace.auto_create if body.auto_create is None else body.auto_create
    visibility = body.default_visibility or namespace.default_visibility
    context.store.update_namespace(instance.id, name, auto_create, visibility)
    context.audit("namespace.update", f"instance/{instance.id}/{name}", auto_create=auto_create,
                  default_visibility=visibility)
    updated = context.store.get_namespace(instance.id, name)
    assert updated is not None
    return namespace_view(updated)


@router.delete("/instances/{instance_id}/namespaces/{name}", summary="Delete an empty namespace")
def delete_namespace(instance_id: str, name: str, context: Caller) -> dict[str, Any]:
    instance = context.managed_instance(instance_id)
    if context.store.get_namespace(instance.id, name) is None:
        raise not_found("namespace", name, f"list them with `crpe namespace list --instance {instance.id}`")
    if not context.store.delete_namespace(instance.id, name):
        raise ControlError(409, "NAMESPACE_NOT_EMPTY", f"namespace {name!r} is not empty: it contains "
                           "repositories; delete them first")
    context.audit("namespace.delete", f"instance/{instance.id}/{name}")
    return {"instance_id": instance.id, "name": name, "deleted": True}


# Repositories.

def _actions(context: Caller, instance: Instance, name: str) -> frozenset[str]:
    return permitted_actions(context.principal, instance.account_id, instance.id, name, context.identity.statements)


def _repository(context: Caller, instance: Instance, namespace: str, name: str, action: str) -> Repository:
    full = f"{namespace}/{name}"
    repository = context.store.get_repository(instance.id, full)
    allowed = _actions(context, instance, full)
    if repository is None or not allowed:
        raise not_found("repository", full, f"list them with `crpe repository list --instance {instance.id}`")
    if action not in allowed and not (action == "manage" and context.principal.is_account):
        raise ControlError(403, "DENIED", f"this needs the {action} permission on instance/{instance.id}/{full}")
    return repository


@router.get("/instances/{instance_id}/repositories", summary="List the repositories you may pull")
def list_repositories(instance_id: str, context: Caller, namespace: str | None = None) -> list[dict[str, Any]]:
    instance = context.visible_instance(instance_id)
    return [repository_view(r) for r in context.store.list_repositories(instance.id)
            if (namespace is None or r.namespace == namespace) and "pull" in _actions(context, instance, r.name)]


@router.post("/instances/{instance_id}/repositories", status_code=201, summary="Create a repository")
def create_repository(instance_id: str, body: RepositoryCreate, context: Caller) -> dict[str, Any]:
    instance = context.visible_instance(instance_id)
    _check_component(body.namespace, "namespace")
    _check_component(body.name, "name")
    full = f"{body.namespace}/{body.name}"
    if "push" not in _actions(context, instance, full):
        raise ControlError(403, "DENIED", f"creating {full} needs the push permission on "
                           f"instance/{instance.id}/{full}")
    namespace = context.store.get_namespace(instance.id, body.namespace)
    if namespace is None:
        raise not_found("namespace", body.namespace, f"create it with `crpe namespace create --instance "
                        f"{instance.id} {body.namespace}`")
    if context.store.get_repository(instance.id, full) is not None:
        raise ControlError(409, "REPOSITORY_EXISTS", f"repository {full!r} already exists")
    repository = context.store.create_repository(instance, namespace, full)
    if repository is None:
        raise ControlError(403, "QUOTA_EXCEEDED", f"the instance has reached its repository quota of "
                           f"{instance.repository_quota}; delete a repository or ask the administrator to raise it")
    context.store.update_repository(repository.id, body.visibility or repository.visibility, body.summary,
                                    body.description)
    context.audit("repository.create", f"instance/{instance.id}/{full}")
    return repository_view(_repository(context, instance, body.namespace, body.name, "pull"))


@router.get("/instances/{instance_id}/repositories/{namespace}/{name}", summary="Show a repository")
def show_repository(instance_id: str, namespace: str, name: str, context: Caller) -> dict[str, Any]:
    instance = context.visible_instance(instance_id)
    return repository_view(_repository(context, instance, namespace, name, "pull"))


@router.patch("/instances/{instance_id}/repositories/{namespace}/{name}",
              summary="Change a repository's visibility, summary or description")
def update_repository(instance_id: str, namespace: str, name: str, body: RepositoryUpdate,
                      context: Caller) -> dict[str, Any]:
    instance = context.visible_instance(instance_id)
    repository = _repository(context, instance, namespace, name, "push")
    context.store.update_repository(
        repository.id, body.visibility or repository.visibility,
        repository.summary if body.summary is None else body.summary,
        repository.description if body.description is None else body.description)
    context.audit("repository.update", f"instance/{instance.id}/{repository.name}",
                  **body.model_dump(exclude_none=True, exclude={"description"}))
    return repository_view(_repository(context, instance, namespace, name, "pull"))


@router.delete("/instances/{instance_id}/repositories/{namespace}/{name}",
               summary="Delete a repository with its tags and manifests")
def delete_repository(instance_id: str, namespace: str, name: str, context: Caller) -> dict[str, Any]:
    instance = context.visible_instance(instance_id)
    repository = _repository(context, instance, namespace, name, "delete")
    context.store.delete_repository(repository.id)
    context.audit("repository.delete", f"instance/{instance.id}/{repository.name}")
    return {"instance_id": instance.id, "name": repository.name, "deleted": True}


# Login passwords and temporary credentials.

@router.put("/instances/{instance_id}/password", summary="Set your registry login password for an instance")
def set_password(instance_id: str, body: PasswordSet, context: Caller) -> dict[str, Any]:
    """Set the caller's login password. On a new instance only one sub-user, the holder, may have one."""
    instance = context.visible_instance(instance_id)
    principal = context.principal
    store = context.store
    if not principal.is_account and not instance.legacy:
        if not store.claim_password_holder(instance.id, principal.sub_user_id):
            holder_id = store.get_instance(instance.id).password_holder  # type: ignore[union-attr]
            holder = store.get_sub_user_by_id(holder_id) if holder_id else None
            holder_name = f"{holder.name}@{principal.account_name}" if holder else "another sub-user"
            raise ControlError(409, "PASSWORD_HOLDER_EXISTS", f"only one sub-user may set the login password of "
                               f"instance {instance.id}, and {holder_name} already holds it; the account can "
                               f"revoke the holder with `crpe password revoke-holder --instance {instance.id}`")
    store.set_login_password(instance.id, principal.sub_user_id, hash_secret(body.password))
    context.audit("password.set", f"instance/{instance.id}")
    return {"instance_id": instance.id, "username": principal.login_name}


@router.delete("/instances/{instance_id}/password-holder",
               summary="Revoke the sub-user who holds the login password (account only)")
def revoke_password_holder(instance_id: str, context: Caller) -> dict[str, Any]:
    context.require_account("revoke the login password holder")
    instance = context.visible_instance(instance_id)
    holder_id = context.store.revoke_password_holder(instance.id)
    if holder_id is None:
        raise ControlError(404, "PASSWORD_HOLDER_NOT_FOUND", f"no sub-user is the login password holder of instance "
                           f"{instance.id}")
    holder = context.store.get_sub_user_by_id(holder_id)
    context.audit("password.revoke_holder", f"instance/{instance.id}", holder=holder.name if holder else holder_id)
    return {"instance_id": instance.id, "revoked_holder": holder.name if holder else holder_id}


@router.post("/instances/{instance_id}/temporary-credentials",
             summary="Issue a one-hour registry login with your own permissions (GetAuthorizationToken)")
def temporary_credentials(instance_id: str, context: Caller) -> dict[str, Any]:
    instance = context.visible_instance(instance_id)
    principal = context.principal
    password, expires = context.services.tokens.issue_temporary(
        principal.login_name, principal.account_id, principal.sub_user_id, instance.id)
    context.audit("temporary_credentials.issue", f"instance/{instance.id}")
    view = instance_view(instance, context.services.settings.domain)
    return {"instance_id": instance.id, "username": principal.login_name, "password": password,
            "expires_at": expires, "endpoints": view["endpoints"]}
