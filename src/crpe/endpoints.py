"""Parse and format registry host names; no I/O.

Host name grammar, for a deployment whose base domain is `<domain>`:

    crpi-<instance-id>.<region-id>.personal.cr.<domain>      exclusive public endpoint
    crpi-<instance-id>-vpc.<region-id>.personal.cr.<domain>  exclusive VPC endpoint
    registry.<region-id>.<domain>                            legacy public endpoint (shared by a region)
    registry-vpc.<region-id>.<domain>                        legacy VPC endpoint

Anything else is either the control plane (the bare domain, `cr.<domain>`, `localhost` or an IP literal) or
unknown.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

INSTANCE_ID_PATTERN = re.compile(r"^[a-z0-9]{8,32}$")
REGION_ID_PATTERN = re.compile(r"^[a-z]{2,}(-[a-z0-9]+)+$")
_EXCLUSIVE_LABEL = re.compile(r"^crpi-(?P<id>[a-z0-9]+?)(?P<vpc>-vpc)?$")


class EndpointKind(enum.Enum):
    EXCLUSIVE = "exclusive"
    LEGACY = "legacy"


class Network(enum.Enum):
    PUBLIC = "public"
    VPC = "vpc"


@dataclass(frozen=True)
class RegistryEndpoint:
    """The registry endpoint that a host name addresses."""

    kind: EndpointKind
    network: Network
    region: str
    instance_id: str | None  # None on legacy endpoints, where the namespace selects the instance.

    @property
    def is_vpc(self) -> bool:
        return self.network is Network.VPC


@dataclass(frozen=True)
class ControlPlaneHost:
    """A host name that serves the control plane, not a registry."""


@dataclass(frozen=True)
class UnknownHost:
    """A host name outside the deployment's grammar, with the reason it did not parse."""

    reason: str


ParsedHost = RegistryEndpoint | ControlPlaneHost | UnknownHost


def strip_port(host: str) -> str:
    """Return the host name of a `Host` header value, lower-cased, without port or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        closing = host.find("]")
        return host[: closing + 1] if closing != -1 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def parse_host(host: str, domain: str) -> ParsedHost:
    """Classify a `Host` header value (port allowed) under the deployment's base `domain`."""
    name = strip_port(host)
    domain = domain.lower().rstrip(".")
    if not name:
        return UnknownHost("the request has no Host header")
    if name in (domain, f"cr.{domain}", "localhost") or _is_ip_literal(name):
        return ControlPlaneHost()
    if not name.endswith("." + domain):
        return UnknownHost(f"host {name!r} is not under this registry's domain {domain!r}")

    labels = name[: -len(domain) - 1].split(".")
    if len(labels) == 4 and labels[2:] == ["personal", "cr"]:
        match = _EXCLUSIVE_LABEL.match(labels[0])
        if not match or not INSTANCE_ID_PATTERN.match(match["id"]):
            return UnknownHost(f"host {name!r} does not name an instance: expected "
                               f"crpi-<instance-id>[-vpc].<region>.personal.cr.{domain}")
        region = labels[1]
        if not REGION_ID_PATTERN.match(region):
            return UnknownHost(f"host {name!r} names an invalid region {region!r}")
        network = Network.VPC if match["vpc"] else Network.PUBLIC
        return RegistryEndpoint(EndpointKind.EXCLUSIVE, network, region, match["id"])
    if len(labels) == 2 and labels[0] in ("registry", "registry-vpc"):
        region = labels[1]
        if not REGION_ID_PATTERN.match(region):
            return UnknownHost(f"host {name!r} names an invalid region {region!r}")
        network = Network.VPC if labels[0] == "registry-vpc" else Network.PUBLIC
        return RegistryEndpoint(EndpointKind.LEGACY, network, region, None)
    return UnknownHost(f"host {name!r} is not a registry endpoint of {domain!r}: expected "
                       f"crpi-<instance-id>[-vpc].<region>.personal.cr.{domain} or "
                       f"registry[-vpc].<region>.{domain}")


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def exclusive_host(instance_id: str, region: str, domain: str, network: Network) -> str:
    suffix = "-vpc" if network is Network.VPC else ""
    return f"crpi-{instance_id}{suffix}.{region}.personal.cr.{domain}"


def legacy_host(region: str, domain: str, network: Network) -> str:
    prefix = "registry-vpc" if network is Network.VPC else "registry"
    return f"{prefix}.{region}.{domain}"


def endpoint_host(endpoint: RegistryEndpoint, domain: str, network: Network | None = None) -> str:
    """Format the host name of `endpoint`, or of its twin on another `network`."""
    network = network or endpoint.network
    if endpoint.kind is EndpointKind.EXCLUSIVE:
        assert endpoint.instance_id is not None
        return exclusive_host(endpoint.instance_id, endpoint.region, domain, network)
    return legacy_host(endpoint.region, domain, network)
