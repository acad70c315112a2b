"""Resolve a registry request: host name -> endpoint -> instance -> principal -> policy decision."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from starlette.requests import Request

from crpe import policy
from crpe.auth.identity import CredentialsInvalid, Identity, basic_credentials, registry_login
from crpe.auth.permissions import permitted_actions
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
        scheme = self.request.scope.get("scheme", "http")
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
    realm = f"{call.request.scope.get('scheme', 'http')}://{call.host}/auth/token"
    raise Unauthorized(f"authorization scheme {scheme!r} is not supported; use a bearer token from {realm}",
                       headers=call.challenge())


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
    if repository is None:
        # A legacy endpoint serves many instances; a request naming no repository concerns the caller's own.
        instance_id = call.claims.instance_id if call.claims else ""
        instance = call.services.instance(instance_id) if instance_id else None
        if instance is None or not instance.legacy or instance.region != endpoint.region:
            raise Unauthorized("authentication required; run docker login " + call.host, headers=call.challenge())
        return instance
    namespace = repository.split("/", 1)[0]
    instance = call.services.store.find_legacy_instance(endpoint.region, namespace) if namespace else None
    if instance is None:
        if call.claims is None or call.claims.anonymous:
            # Anonymous callers learn nothing about which namespaces exist.
            scope = f"repository:{repository}:pull"
            raise Unauthorized("authentication required; log in with docker login and retry",
                               headers=call.challenge(scope))
        raise NameUnknown(f"repository {repository!r} is not known to this registry", detail={"name": repository})
    return instance


def basic_identity(call: Call, instance: Instance) -> Identity | None:
    """Verify Basic credentials sent straight to /v2/ against the instance's logins."""
    try:
        credentials = basic_credentials(call.request.headers.get("authorization", ""))
    except CredentialsInvalid as error:
        raise Unauthorized(str(error), headers=call.challenge()) from None
    if credentials is None:
        return None
    username, password = credentials
    identity = registry_login(call.services.store, call.services.tokens, instance, username, password)
    if identity is None:
        raise Unauthorized("incorrect username or password", headers=call.challenge())
    return identity


def _adopt_basic_login(call: Call, instance: Instance, identity: Identity, access: tuple[Scope, ...]) -> None:
    """Treat a verified Basic login like a token granting `access` for the rest of this request."""
    principal = identity.principal
    call.claims = AccessClaims(principal.login_name, principal.account_id, principal.sub_user_id, instance.id,
                               call.service, float("inf"), access)


def authorize(call: Call, instance: Instance, name: str, action: policy.Action,
              repository: Repository | None, existence_check: bool = False) -> None:
    """Apply the endpoint rules, then the token's grants; raise 401 or 403 with a message saying what to do."""
    basic = basic_identity(call, instance) if call.claims is None else None
    if basic is not None:
        granted = permitted_actions(basic.principal, instance.account_id, instance.id, name, basic.statements)
        _adopt_basic_login(call, instance, basic, (Scope("repository", name, granted),))
    claims = call.claims
    # Credentials of another instance (possible on a shared legacy endpoint) count as none here.
    foreign = claims is not None and bool(claims.instance_id) and claims.instance_id != instance.id
    authenticated = call.authenticated and not foreign
    decision = policy.decide(policy.Request(
        action=action,
        authenticated=authenticated,
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
    if not authenticated:
        return  # Anonymous pull of a public repository on a legacy instance.
    if action is policy.Action.PULL and instance.legacy and repository is not None and repository.public:
        return  # What anyone may read anonymously, a signed-in caller without pull permission may read too.
    assert call.claims is not None
    if existence_check and call.claims.allows("repository", name, "push"):
        return
    if not call.claims.allows("repository", name, action.value):
        raise Unauthorized(f"the token does not grant {action.value} on {name}; request a token with scope "
                           f"{scope}, or ask the instance owner for the permission",
                           headers=call.challenge(scope, error="insufficient_scope"))


def check_network_and_client(call: Call, legacy: bool) -> None:
    """Apply the rules that hold before any credential: VPC host names and Harbor clients."""
    decision = policy.decide_network_and_client(
        call.endpoint.is_vpc, call.from_vpc, policy.is_harbor_client(call.request.headers.get("user-agent", "")),
        legacy, call.public_host, call.vpc_host)
    if not decision.allowed:
        raise Denied(decision.reason)


def require_authenticated(call: Call, instance: Instance) -> None:
    """For requests that name no repository (the catalog): any verified caller, within the endpoint rules."""
    if call.claims is None:
        basic = basic_identity(call, instance)
        if basic is not None:
            _adopt_basic_login(call, instance, basic, ())
    check_network_and_client(call, instance.legacy)
    if not call.authenticated:
        raise Unauthorized("authentication required; log in with docker login and retry",
                           headers=call.challenge("registry:catalog:*"))
