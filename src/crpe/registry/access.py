"""Resolve a registry request: host name -> endpoint -> instance -> principal -> policy decision."""

from __future__ import annotations

import base64
import functools
import ipaddress
from dataclasses import dataclass

from starlette.requests import Request

from crpe import policy
from crpe.auth.passwords import verify_secret
from crpe.auth.permissions import permitted_actions
from crpe.auth.principals import Principal, split_login_name
from crpe.auth.scopes import Scope
from crpe.auth.tokens import AccessClaims, InvalidToken
from crpe.endpoints import EndpointKind, Network, RegistryEndpoint, endpoint_host
from crpe.errors import Denied, HostUnknown, NameUnknown, Unauthorized
from crpe.metadata.store import Instance, Repository
from crpe.services import Services
from crpe.settings import IPNetwork


@functools.lru_cache(maxsize=4096)
def address_in(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def client_address(request: Request, trusted_proxies: tuple[IPNetwork, ...]) -> str:
    """Return the caller's address, taking X-Forwarded-For only from a trusted proxy."""
    peer = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and trusted_proxies and address_in(peer, trusted_proxies):
        # The right-most address that is not itself a trusted proxy is the client.
        for hop in reversed([part.strip() for part in forwarded.split(",")]):
            if not address_in(hop, trusted_proxies):
                return hop
    return peer


@dataclass
class Call:
    """One registry request with its endpoint, caller address and verified credentials."""

    request: Request
    services: Services
    endpoint: RegistryEndpoint
    host: str  # Host header as sent, port included: challenges point back to it.
    address: str
    from_vpc: bool
    claims: AccessClaims | None

    @property
    def domain(self) -> str:
        return self.services.settings.domain

    @property
    def service(self) -> str:
        """Return the token audience: the endpoint's public host name, shared by its VPC twin."""
        return endpoint_host(self.endpoint, self.domain, Network.PUBLIC)

    @property
    def public_host(self) -> str:
        return endpoint_host(self.endpoint, self.domain, Network.PUBLIC)

    @property
    def vpc_host(self) -> str:
        return endpoint_host(self.endpoint, self.domain, Network.VPC)

    @property
    def authenticated(self) -> bool:
        return self.claims is not None and not self.claims.anonymous

    def challenge(self, scope: str | None = None, error: str | None = None) -> dict[str, str]:
        scheme = self.request.url.scheme
        value = f'Bearer realm="{scheme}://{self.host}/auth/token",service="{self.service}"'
        if scope:
            value += f',scope="{scope}"'
        if error:
            value += f',error="{error}"'
        return {"WWW-Authenticate": value}


def open_call(request: Request, services: Services, endpoint: RegistryEndpoint, host: str) -> Call:
    settings = services.settings
    address = client_address(request, settings.trusted_proxies)
    region = settings.region(endpoint.region)
    if region is None:
        raise HostUnknown(f"region {endpoint.region!r} is not served by this registry; valid regions: "
                          f"{', '.join(settings.region_ids)}", detail={"host": host})
    call = Call(request, services, endpoint, host, address, address_in(address, region.vpc_networks), None)
    call.claims = _authenticate(call)
    return call


def _authenticate(call: Call) -> AccessClaims | None:
    header = call.request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if not header:
        return None
    if scheme.lower() == "bearer":
        try:
            return call.services.tokens.verify_access(credentials.strip(), call.service)
        except InvalidToken as error:
            raise Unauthorized(str(error), headers=call.challenge(error="invalid_token")) from None
    if scheme.lower() == "basic":
        # Basic credentials straight on /v2/ act like a token for the repository the request names.
        return None
    raise Unauthorized(f"authorization scheme {scheme!r} is not supported; use a bearer token from "
                       f"{call.request.url.scheme}://{call.host}/auth/token", headers=call.challenge())


def resolve_instance(call: Call, repository: str | None) -> Instance:
    """Find the instance an exclusive endpoint names, or that owns a legacy endpoint's namespace."""
    endpoint = call.endpoint
    if endpoint.kind is EndpointKind.EXCLUSIVE:
        assert endpoint.instance_id is not None
        instance = call.services.instance(endpoint.instance_id)
        if instance is None or instance.region != endpoint.region or instance.legacy:
            raise HostUnknown(f"no registry instance is served at {call.host}; check the instance id and region "
                              "with `crpe instance list`", detail={"host": call.host})
        return instance
    namespace = (repository or "").split("/", 1)[0]
    instance = call.services.store.find_legacy_instance(endpoint.region, namespace) if namespace else None
    if instance is None:
        raise NameUnknown(f"repository {repository!r} is not known to this registry", detail={"name": repository})
    return instance


def basic_principal(call: Call, instance: Instance) -> Principal | None:
    """Verify Basic credentials against the instance's login passwords."""
    header = call.request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise Unauthorized("the Basic credentials are not valid base64 of user:password",
                           headers=call.challenge()) from None
    principal = login(call.services, instance, username, password)
    if principal is None:
        raise Unauthorized("incorrect username or password", headers=call.challenge())
    return principal


def login(services: Services, instance: Instance, username: str, password: str) -> Principal | None:
    """Return the principal whose login password for `instance` is `password`, else None."""
    account_name, sub_user_name = split_login_name(username)
    account = services.store.get_account_by_name(account_name)
    if account is None or account.disabled or sub_user_name:
        # TODO: sub-user logins arrive with the control plane's sub-users.
        return None
    stored = services.store.get_login_password(instance.id, "")
    if stored is None or not verify_secret(stored.password_hash, password):
        return None
    return Principal(account.id, account.name, is_admin=account.is_admin)


def authorize(call: Call, instance: Instance, name: str, action: policy.Action,
              repository: Repository | None, existence_check: bool = False) -> None:
    """Apply the endpoint rules, then the token's grants; raise 401 or 403 with a message saying what to do."""
    claims = call.claims
    basic = basic_principal(call, instance) if claims is None else None
    if basic is not None:
        granted = permitted_actions(basic, instance.account_id, name)
        claims = AccessClaims(basic.login_name, basic.account_id, basic.sub_user_id, instance.id, call.service,
                              float("inf"), (Scope("repository", name, granted),))
        call.claims = claims
    decision = policy.decide(policy.Request(
        action=action,
        authenticated=call.authenticated,
        legacy_instance=instance.legacy,
        vpc_endpoint=call.endpoint.is_vpc,
        from_vpc_network=call.from_vpc,
        repository_public=repository.public if repository else False,
        harbor_client=policy.is_harbor_client(call.request.headers.get("user-agent", "")),
        existence_check=existence_check,
        caller_may_push=claims is not None and claims.allows("repository", name, "push"),
        public_endpoint_pull_allowed=call.services.settings.public_endpoint_pull_allowed,
    ), call.public_host, call.vpc_host)
    scope = f"repository:{name}:{'pull,push' if action is policy.Action.PUSH else action.value}"
    if decision.outcome is policy.Outcome.CHALLENGE:
        raise Unauthorized(decision.reason, headers=call.challenge(scope))
    if decision.outcome is policy.Outcome.DENY:
        raise Denied(decision.reason)
    if not call.authenticated:
        return  # Anonymous pull of a public repository on a legacy instance.
    assert call.claims is not None
    if call.claims.instance_id and call.claims.instance_id != instance.id:
        raise Unauthorized("the token was issued for another instance", headers=call.challenge(scope))
    if existence_check and call.claims.allows("repository", name, "push"):
        return
    if not call.claims.allows("repository", name, action.value):
        raise Unauthorized(f"the token does not grant {action.value} on {name}; request a token with scope "
                           f"{scope}, or ask the instance owner for the permission",
                           headers=call.challenge(scope, error="insufficient_scope"))


def require_authenticated(call: Call, instance: Instance) -> None:
    """For requests that name no repository (the catalog): any verified caller, within the endpoint rules."""
    if call.claims is None:
        basic = basic_principal(call, instance)
        if basic is not None:
            call.claims = AccessClaims(basic.login_name, basic.account_id, basic.sub_user_id, instance.id,
                                       call.service, float("inf"), ())
    if call.endpoint.is_vpc and not call.from_vpc:
        raise Denied(f"the VPC endpoint {call.vpc_host} accepts requests only from this region's VPC networks; "
                     f"from elsewhere use the public endpoint {call.public_host}")
    if policy.is_harbor_client(call.request.headers.get("user-agent", "")) and not instance.legacy:
        raise Denied("Harbor remote replication is not supported for this instance; copy images with skopeo, "
                     "docker or oras instead")
    if not call.authenticated:
        raise Unauthorized("authentication required; log in with docker login and retry",
                           headers=call.challenge("registry:catalog:*"))
