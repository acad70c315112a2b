"""Parts shared by every control-plane route: errors, the authenticated caller and the audit log."""

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from crpe.auth.identity import CredentialsInvalid, Identity, access_key_identity, basic_credentials
from crpe.auth.permissions import has_any_right, may_manage
from crpe.metadata.store import Instance
from crpe.policy import HARBOR_DENIED, is_harbor_client
from crpe.services import Services

# Account and sub-user names: lower-case, no "@" (it separates sub-user from account in login names).
PRINCIPAL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class ControlError(HTTPException):
    """A control-plane failure with a stable code, and a message with the fix."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message)
        self.code = code


def not_found(kind: str, name: str, hint: str) -> ControlError:
    code = kind.upper().replace(" ", "_").replace("-", "_")
    return ControlError(404, f"{code}_NOT_FOUND", f"{kind} {name!r} not found; {hint}")


@dataclass
class Context:
    services: Services
    identity: Identity
    request: Request

    @property
    def principal(self):  # type: ignore[no-untyped-def]
        return self.identity.principal

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.services.store

    def audit(self, action: str, resource: str, **detail: Any) -> None:
        principal = self.principal
        self.store.audit(principal.account_id, principal.login_name, action, resource,
                         self.request.client.host if self.request.client else "", detail)

    def require_account(self, what: str) -> None:
        if not self.principal.is_account:
            raise ControlError(403, "DENIED", f"only the account itself may {what}; sign in with the account's "
                               "access key")

    def require_admin(self, what: str) -> None:
        if not self.principal.is_admin:
            raise ControlError(403, "DENIED", f"only the administrator may {what}")

    def visible_instance(self, instance_id: str) -> Instance:
        """Return the instance if the caller may see it; otherwise 404, as if it did not exist."""
        instance = self.store.get_instance(instance_id)
        if instance is None or not has_any_right(self.principal, instance.account_id, instance.id,
                                                 self.identity.statements):
            raise not_found("instance", instance_id, "list yours with `crpe instance list`")
        if is_harbor_client(self.request.headers.get("user-agent", "")) and not instance.legacy:
            raise ControlError(403, "DENIED", HARBOR_DENIED)
        return instance

    def managed_instance(self, instance_id: str) -> Instance:
        instance = self.visible_instance(instance_id)
        if not may_manage(self.principal, instance.account_id, instance.id, self.identity.statements):
            raise ControlError(403, "DENIED", f"managing instance {instance_id} needs the manage permission on "
                               f"instance/{instance_id}; ask the account owner to grant it")
        return instance


def caller(request: Request) -> Context:
    services: Services = request.app.state.services
    try:
        credentials = basic_credentials(request.headers.get("authorization", ""))
    except CredentialsInvalid:
        raise ControlError(401, "UNAUTHORIZED", "the Authorization header is not valid Basic credentials") from None
    if credentials is None:
        raise ControlError(401, "UNAUTHORIZED", "an access key is required: send the key id and secret as Basic "
                           "credentials, or run `crpe configure`")
    identity = access_key_identity(services.store, *credentials)
    if identity is None:
        raise ControlError(401, "UNAUTHORIZED", "the access key id or secret is incorrect, the key was revoked, or "
                           "its user is disabled")
    return Context(services, identity, request)


Caller = Annotated[Context, Depends(caller)]
