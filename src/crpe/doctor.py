"""Explain, before anyone pulls or pushes, whether an image reference would work and why not; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from crpe import policy
from crpe.endpoints import ControlPlaneHost, EndpointKind, Network, RegistryEndpoint, endpoint_host, parse_host


@dataclass(frozen=True)
class ImageReference:
    host: str  # with port, as typed
    repository: str
    tag: str | None
    digest: str | None


@dataclass
class Diagnosis:
    reference: str
    endpoint: str = "unknown"  # exclusive-public, exclusive-vpc, legacy-public, legacy-vpc, control-plane, unknown
    region: str | None = None
    instance_id: str | None = None
    instance_found: bool | None = None
    credentials: bool = False
    pull: str = ""
    push: str = ""
    use_instead: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pull_allowed(self) -> bool:
        return self.pull.startswith("allowed")

    @property
    def push_allowed(self) -> bool:
        return self.push.startswith("allowed")


class ReferenceInvalid(ValueError):
    pass


def parse_reference(reference: str) -> ImageReference:
    """Split `host[:port]/namespace/repository[:tag][@digest]`."""
    host, slash, path = reference.partition("/")
    if not slash or "." not in host and ":" not in host and host != "localhost":
        raise ReferenceInvalid(f"{reference!r} does not start with a registry host name, such as "
                               "crpi-<id>-vpc.<region>.personal.cr.<domain>/<namespace>/<repository>:<tag>")
    digest = None
    if "@" in path:
        path, digest = path.split("@", 1)
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
    if not path:
        raise ReferenceInvalid(f"{reference!r} names no repository")
    return ImageReference(host, path, tag if tag or digest else "latest", digest)


def diagnose(reference: str, domain: str, instance_region: str | None, instance_legacy: bool | None,
             credentials: bool, public_pull_allowed: bool) -> Diagnosis:
    """Diagnose `reference`; `instance_region` is None when the caller cannot see the instance."""
    parsed = parse_reference(reference)
    diagnosis = Diagnosis(reference, credentials=credentials)
    host = parse_host(parsed.host, domain)
    if isinstance(host, ControlPlaneHost):
        diagnosis.endpoint = "control-plane"
        diagnosis.pull = diagnosis.push = "refused: this host serves the control plane, not a registry"
        return diagnosis
    if not isinstance(host, RegistryEndpoint):
        diagnosis.pull = diagnosis.push = f"refused: {host.reason}"
        return diagnosis
    diagnosis.endpoint = f"{host.kind.value}-{host.network.value}"
    diagnosis.region = host.region
    diagnosis.instance_id = host.instance_id
    if host.kind is EndpointKind.EXCLUSIVE:
        diagnosis.instance_found = instance_region is not None
        if instance_region is None:
            diagnosis.pull = diagnosis.push = ("refused: no instance you can see is served at this host; check the "
                                               "id with `crpe instance list`")
            return diagnosis
        if instance_region != host.region:
            diagnosis.pull = diagnosis.push = (f"refused: the instance lives in region {instance_region}, not "
                                               f"{host.region}")
            diagnosis.use_instead = endpoint_host(RegistryEndpoint(host.kind, host.network, instance_region,
                                                                   host.instance_id), domain)
            return diagnosis
    legacy = bool(instance_legacy) if host.kind is EndpointKind.EXCLUSIVE else True
    public_host = endpoint_host(host, domain, Network.PUBLIC)
    vpc_host = endpoint_host(host, domain, Network.VPC)
    if host.is_vpc:
        diagnosis.notes.append(f"{vpc_host} answers only requests from the region's VPC networks")
    if not credentials:
        diagnosis.notes.append(f"no saved credentials for {parsed.host}; run docker login {parsed.host}")
    for action in (policy.Action.PULL, policy.Action.PUSH):
        decision = policy.decide(policy.Request(
            action=action, authenticated=credentials, legacy_instance=legacy, vpc_endpoint=host.is_vpc,
            from_vpc_network=True, public_endpoint_pull_allowed=public_pull_allowed), public_host, vpc_host)
        verdict = "allowed" if decision.allowed else f"refused: {decision.reason}"
        if action is policy.Action.PULL:
            diagnosis.pull = verdict
        else:
            diagnosis.push = verdict
    if not diagnosis.pull_allowed and credentials and not host.is_vpc and not legacy:
        diagnosis.use_instead = vpc_host + _port(parsed.host)
    return diagnosis


def _port(host: str) -> str:
    name, separator, port = host.rpartition(":")
    return f":{port}" if separator and port.isdigit() and "]" not in port else ""
