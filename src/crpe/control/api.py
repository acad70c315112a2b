"""Control-plane routes: regions, instances, namespaces and login passwords.

Callers authenticate with an access key as HTTP Basic credentials (key id as user name, secret as
password). A resource of another account answers 404, the same as a missing one.
"""


import base64
import logging
from typing import Annotated, Any, Literal

import sqlalchemy.exc
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from crpe.auth.passwords import hash_secret, verify_secret
from crpe.auth.principals import Principal
from crpe.control.views import instance_view, namespace_view
from crpe.metadata.store import Instance
from crpe.policy import is_harbor_client
from crpe.registry.names import COMPONENT_PATTERN
from crpe.services import Services

log = logging.getLogger("crpe.control")

# A login password must be long enough to resist guessing; 128 bounds the argon2 input.
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 128


class ControlError(HTTPException):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message)
        self.code = code


class InstanceCreate(BaseModel):
    region: str | None = Field(default=None, description="Region id, for example cn-hangzhou")
    name: str = Field(default="", max_length=128)


class NamespaceCreate(BaseModel):
    name: str = Field(min_length=2, max_length=64)
    auto_create: bool = True
    default_visibility: Literal["public", "private"] = "private"


class PasswordSet(BaseModel):
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)


def create_control_app(services: Services) -> FastAPI:
    app = FastAPI(title="crpe control plane", version="1", openapi_url="/api/v1/openapi.json",
                  docs_url="/api/v1/docs", redoc_url=None)
    settings = services.settings
    store = services.store

    @app.exception_handler(ControlError)
    async def control_error(_request: Request, error: ControlError) -> JSONResponse:
        return JSONResponse({"error": {"code": error.code, "message": error.detail}}, error.status_code)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"code": "INVALID_REQUEST", "message": str(error.detail)}},
                            error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg')}")
        return JSONResponse({"error": {"code": "INVALID_REQUEST", "message": "; ".join(problems)}}, 400)

    def caller(request: Request) -> Principal:
        if is_harbor_client(request.headers.get("user-agent", "")):
            raise ControlError(403, "DENIED", "Harbor remote replication is not supported for this instance")
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        unauthorized = ControlError(401, "UNAUTHORIZED", "an access key is required: send the key id and secret "
                                    "as Basic credentials, or run `crpe configure`")
        if scheme.lower() != "basic":
            raise unauthorized
        try:
            key_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise unauthorized from None
        key = store.get_access_key(key_id)
        if key is None or key.revoked or not verify_secret(key.secret_hash, secret):
            raise ControlError(401, "UNAUTHORIZED", "the access key id or secret is incorrect, or the key was "
                               "revoked")
        account = store.get_account(key.account_id)
        if account is None or account.disabled:
            raise ControlError(403, "DENIED", "the account of this access key is disabled")
        # TODO: access keys of sub-users resolve to the sub-user once the control plane manages sub-users.
        return Principal(account.id, account.name, is_admin=account.is_admin)

    Caller = Annotated[Principal, Depends(caller)]

    def owned_instance(instance_id: str, principal: Principal) -> Instance:
        instance = store.get_instance(instance_id)
        if instance is None or instance.account_id != principal.account_id:
            raise ControlError(404, "INSTANCE_NOT_FOUND", f"instance {instance_id!r} not found; list yours with "
                               "`crpe instance list`")
        return instance

    def audit(principal: Principal, request: Request, action: str, resource: str, **detail: Any) -> None:
        store.audit(principal.account_id, principal.login_name, action, resource,
                    request.client.host if request.client else "", detail)

    @app.get("/api/v1/regions", summary="List the regions this deployment serves")
    def list_regions() -> list[dict[str, Any]]:
        return [{"id": region.id, "name": region.name} for region in settings.regions]

    @app.post("/api/v1/instances", status_code=201, summary="Create a registry instance in a region")
    def create_instance(body: InstanceCreate, principal: Caller, request: Request) -> dict[str, Any]:
        valid = ", ".join(settings.region_ids)
        if not body.region:
            raise ControlError(400, "REGION_REQUIRED", f"region is required; valid regions: {valid}")
        if settings.region(body.region) is None:
            raise ControlError(400, "REGION_UNKNOWN", f"region {body.region!r} is not served here; valid regions: "
                               f"{valid}")
        instance = store.create_instance(principal.account_id, body.region, body.name)
        audit(principal, request, "instance.create", f"instance/{instance.id}", region=body.region)
        return instance_view(instance, settings.domain)

    @app.get("/api/v1/instances", summary="List your instances, optionally in one region")
    def list_instances(principal: Caller, region: str | None = None) -> list[dict[str, Any]]:
        if region is not None and settings.region(region) is None:
            raise ControlError(400, "REGION_UNKNOWN", f"region {region!r} is not served here; valid regions: "
                               f"{', '.join(settings.region_ids)}")
        return [instance_view(i, settings.domain) for i in store.list_instances(principal.account_id, region)]

    @app.get("/api/v1/instances/{instance_id}", summary="Show an instance and its endpoints")
    def show_instance(instance_id: str, principal: Caller) -> dict[str, Any]:
        return instance_view(owned_instance(instance_id, principal), settings.domain)

    @app.post("/api/v1/instances/{instance_id}/namespaces", status_code=201, summary="Create a namespace")
    def create_namespace(instance_id: str, body: NamespaceCreate, principal: Caller,
                         request: Request) -> dict[str, Any]:
        instance = owned_instance(instance_id, principal)
        if not COMPONENT_PATTERN.match(body.name):
            raise ControlError(400, "NAMESPACE_INVALID", f"name {body.name!r} is invalid: use lower-case letters "
                               "and digits, optionally separated by '.', '_', '__' or '-'")
        if store.get_namespace(instance.id, body.name) is not None:
            raise ControlError(409, "NAMESPACE_EXISTS", f"namespace {body.name!r} already exists in this instance")
        if store.count_namespaces(instance.id) >= instance.namespace_quota:
            raise ControlError(403, "QUOTA_EXCEEDED", f"the instance has reached its quota of "
                               f"{instance.namespace_quota} namespaces; delete one or raise the quota")
        try:
            namespace = store.create_namespace(instance, body.name, body.auto_create, body.default_visibility)
        except sqlalchemy.exc.IntegrityError:
            raise ControlError(409, "NAMESPACE_EXISTS", f"namespace {body.name!r} is already taken") from None
        audit(principal, request, "namespace.create", f"instance/{instance.id}/{body.name}")
        return namespace_view(namespace)

    @app.get("/api/v1/instances/{instance_id}/namespaces", summary="List the namespaces of an instance")
    def list_namespaces(instance_id: str, principal: Caller) -> list[dict[str, Any]]:
        instance = owned_instance(instance_id, principal)
        return [namespace_view(namespace) for namespace in store.list_namespaces(instance.id)]

    @app.put("/api/v1/instances/{instance_id}/password", summary="Set your registry login password")
    def set_password(instance_id: str, body: PasswordSet, principal: Caller, request: Request) -> dict[str, Any]:
        instance = owned_instance(instance_id, principal)
        store.set_login_password(instance.id, principal.sub_user_id, hash_secret(body.password))
        audit(principal, request, "password.set", f"instance/{instance.id}")
        return {"instance_id": instance.id, "username": principal.login_name}

    return app
