"""Unit tests of host name parsing and formatting in crpe.endpoints, without a server."""

from __future__ import annotations

import pytest

from crpe.endpoints import (
    ControlPlaneHost,
    EndpointKind,
    Network,
    RegistryEndpoint,
    UnknownHost,
    endpoint_host,
    exclusive_host,
    legacy_host,
    parse_host,
    strip_port,
)

DOMAIN = "crpe.test"
INSTANCE_ID = "abcd1234efgh"
EXCLUSIVE_PUBLIC = RegistryEndpoint(EndpointKind.EXCLUSIVE, Network.PUBLIC, "cn-hangzhou", INSTANCE_ID)
EXCLUSIVE_VPC = RegistryEndpoint(EndpointKind.EXCLUSIVE, Network.VPC, "cn-hangzhou", INSTANCE_ID)
LEGACY_PUBLIC = RegistryEndpoint(EndpointKind.LEGACY, Network.PUBLIC, "cn-hangzhou", None)
LEGACY_VPC = RegistryEndpoint(EndpointKind.LEGACY, Network.VPC, "cn-hangzhou", None)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param(f"crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test", EXCLUSIVE_PUBLIC, id="exclusive-public"),
        pytest.param(f"crpi-{INSTANCE_ID}-vpc.cn-hangzhou.personal.cr.crpe.test", EXCLUSIVE_VPC, id="exclusive-vpc"),
        pytest.param(
            f"crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test:5000", EXCLUSIVE_PUBLIC, id="exclusive-public-port"
        ),
        pytest.param(
            f"crpi-{INSTANCE_ID}-vpc.cn-hangzhou.personal.cr.crpe.test:443", EXCLUSIVE_VPC, id="exclusive-vpc-port"
        ),
        pytest.param(
            f"CRPI-{INSTANCE_ID.upper()}.CN-HANGZHOU.PERSONAL.CR.CRPE.TEST", EXCLUSIVE_PUBLIC, id="exclusive-upper-case"
        ),
        pytest.param(
            f"crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test.", EXCLUSIVE_PUBLIC, id="exclusive-trailing-dot"
        ),
        pytest.param(
            f"crpi-{INSTANCE_ID}-vpc.cn-hangzhou.personal.cr.crpe.test.:5000",
            EXCLUSIVE_VPC,
            id="exclusive-trailing-dot-port",
        ),
        pytest.param(
            f"  crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test  ",
            EXCLUSIVE_PUBLIC,
            id="exclusive-surrounding-space",
        ),
        pytest.param(
            "crpi-12345678.ap-southeast-1.personal.cr.crpe.test",
            RegistryEndpoint(EndpointKind.EXCLUSIVE, Network.PUBLIC, "ap-southeast-1", "12345678"),
            id="exclusive-shortest-id",
        ),
        pytest.param(
            f"crpi-{'a' * 32}.cn-hangzhou.personal.cr.crpe.test",
            RegistryEndpoint(EndpointKind.EXCLUSIVE, Network.PUBLIC, "cn-hangzhou", "a" * 32),
            id="exclusive-longest-id",
        ),
        pytest.param("registry.cn-hangzhou.crpe.test", LEGACY_PUBLIC, id="legacy-public"),
        pytest.param("registry-vpc.cn-hangzhou.crpe.test", LEGACY_VPC, id="legacy-vpc"),
        pytest.param("registry.cn-hangzhou.crpe.test:5000", LEGACY_PUBLIC, id="legacy-public-port"),
        pytest.param("registry-vpc.cn-hangzhou.crpe.test:5000", LEGACY_VPC, id="legacy-vpc-port"),
        pytest.param("REGISTRY-VPC.CN-HANGZHOU.CRPE.TEST", LEGACY_VPC, id="legacy-upper-case"),
        pytest.param("registry.cn-hangzhou.crpe.test.", LEGACY_PUBLIC, id="legacy-trailing-dot"),
    ],
)
def test_parse_registry_host(host: str, expected: RegistryEndpoint) -> None:
    assert parse_host(host, DOMAIN) == expected


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("crpe.test", id="bare-domain"),
        pytest.param("crpe.test:5000", id="bare-domain-port"),
        pytest.param("cr.crpe.test", id="cr-domain"),
        pytest.param("CR.CRPE.TEST.", id="cr-domain-upper-trailing-dot"),
        pytest.param("localhost", id="localhost"),
        pytest.param("localhost:5000", id="localhost-port"),
        pytest.param("127.0.0.1", id="ipv4"),
        pytest.param("127.0.0.1:5000", id="ipv4-port"),
        pytest.param("[::1]", id="ipv6-bracketed"),
        pytest.param("[::1]:5000", id="ipv6-port"),
        pytest.param("::1", id="ipv6-bare"),
        pytest.param("[2001:db8::5]:8080", id="ipv6-documentation-port"),
    ],
)
def test_parse_control_plane_host(host: str) -> None:
    assert parse_host(host, DOMAIN) == ControlPlaneHost()


@pytest.mark.parametrize(
    ("host", "reason_part"),
    [
        pytest.param("", "no Host header", id="empty"),
        pytest.param("crpi-.cn-hangzhou.personal.cr.crpe.test", "does not name an instance", id="crpi-empty-id"),
        pytest.param(
            "crpi-abc1234.cn-hangzhou.personal.cr.crpe.test", "does not name an instance", id="crpi-id-too-short"
        ),
        pytest.param(
            f"crpi-{'a' * 33}.cn-hangzhou.personal.cr.crpe.test", "does not name an instance", id="crpi-id-too-long"
        ),
        pytest.param(
            "crpi-abcd_1234.cn-hangzhou.personal.cr.crpe.test", "does not name an instance", id="crpi-id-underscore"
        ),
        pytest.param(
            "crpi-abcd-1234.cn-hangzhou.personal.cr.crpe.test", "does not name an instance", id="crpi-id-hyphen"
        ),
        pytest.param(
            f"crpi-{INSTANCE_ID}-vpc-vpc.cn-hangzhou.personal.cr.crpe.test",
            "does not name an instance",
            id="crpi-double-vpc",
        ),
        pytest.param(
            f"crpi-{INSTANCE_ID}-internal.cn-hangzhou.personal.cr.crpe.test",
            "does not name an instance",
            id="crpi-unknown-suffix",
        ),
        pytest.param(
            f"crpx-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test", "does not name an instance", id="wrong-prefix"
        ),
        pytest.param(f"{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test", "does not name an instance", id="no-prefix"),
        pytest.param(
            f"crpi-{INSTANCE_ID}.hangzhou.personal.cr.crpe.test", "invalid region", id="exclusive-region-without-hyphen"
        ),
        pytest.param(
            f"crpi-{INSTANCE_ID}.cn_hangzhou.personal.cr.crpe.test", "invalid region", id="exclusive-region-underscore"
        ),
        pytest.param("registry.hangzhou.crpe.test", "invalid region", id="legacy-region-without-hyphen"),
        pytest.param("registry-vpc.c-hangzhou.crpe.test", "invalid region", id="legacy-region-one-letter"),
        pytest.param(
            f"x.crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test", "is not a registry endpoint", id="extra-label"
        ),
        pytest.param(
            f"crpi-{INSTANCE_ID}.cn-hangzhou.cr.crpe.test", "is not a registry endpoint", id="missing-personal-label"
        ),
        pytest.param(
            "registry-internal.cn-hangzhou.crpe.test", "is not a registry endpoint", id="legacy-unknown-prefix"
        ),
        pytest.param("www.crpe.test", "is not a registry endpoint", id="other-subdomain"),
        pytest.param(
            f"crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.example.com",
            "is not under this registry's domain",
            id="foreign-domain",
        ),
        pytest.param(
            "registry.cn-hangzhou.example.com:5000", "is not under this registry's domain", id="foreign-domain-port"
        ),
        pytest.param(
            "registry.cn-hangzhou.notcrpe.test", "is not under this registry's domain", id="domain-as-label-suffix"
        ),
    ],
)
def test_parse_unknown_host(host: str, reason_part: str) -> None:
    parsed = parse_host(host, DOMAIN)

    assert isinstance(parsed, UnknownHost)
    assert reason_part in parsed.reason


def test_unknown_host_reason_names_host() -> None:
    parsed = parse_host("Registry.CN_Hangzhou.crpe.test:5000", DOMAIN)

    assert isinstance(parsed, UnknownHost)
    assert "'registry.cn_hangzhou.crpe.test'" in parsed.reason


def test_parse_host_domain_case_and_dot() -> None:
    assert parse_host(f"crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test", "CRPE.Test.") == EXCLUSIVE_PUBLIC


def test_parse_host_multi_label_domain() -> None:
    parsed = parse_host("registry-vpc.us-east-1.registry.example.com", "registry.example.com")

    assert parsed == RegistryEndpoint(EndpointKind.LEGACY, Network.VPC, "us-east-1", None)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("Example.COM:5000", "example.com", id="port-and-case"),
        pytest.param("example.com.", "example.com", id="trailing-dot"),
        pytest.param("[::1]:5000", "[::1]", id="ipv6-port"),
        pytest.param("[::1", "[::1", id="ipv6-unclosed"),
        pytest.param("::1", "::1", id="ipv6-bare"),
    ],
)
def test_strip_port(host: str, expected: str) -> None:
    assert strip_port(host) == expected


def test_exclusive_host_public() -> None:
    assert (
        exclusive_host(INSTANCE_ID, "cn-hangzhou", DOMAIN, Network.PUBLIC)
        == f"crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test"
    )


def test_exclusive_host_vpc() -> None:
    assert (
        exclusive_host(INSTANCE_ID, "cn-hangzhou", DOMAIN, Network.VPC)
        == f"crpi-{INSTANCE_ID}-vpc.cn-hangzhou.personal.cr.crpe.test"
    )


def test_legacy_host_public() -> None:
    assert legacy_host("cn-shanghai", DOMAIN, Network.PUBLIC) == "registry.cn-shanghai.crpe.test"


def test_legacy_host_vpc() -> None:
    assert legacy_host("cn-shanghai", DOMAIN, Network.VPC) == "registry-vpc.cn-shanghai.crpe.test"


@pytest.mark.parametrize(
    ("endpoint", "network", "expected"),
    [
        pytest.param(
            EXCLUSIVE_PUBLIC, None, f"crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test", id="exclusive-public-own"
        ),
        pytest.param(
            EXCLUSIVE_VPC, None, f"crpi-{INSTANCE_ID}-vpc.cn-hangzhou.personal.cr.crpe.test", id="exclusive-vpc-own"
        ),
        pytest.param(
            EXCLUSIVE_PUBLIC,
            Network.VPC,
            f"crpi-{INSTANCE_ID}-vpc.cn-hangzhou.personal.cr.crpe.test",
            id="exclusive-public-twin",
        ),
        pytest.param(
            EXCLUSIVE_VPC,
            Network.PUBLIC,
            f"crpi-{INSTANCE_ID}.cn-hangzhou.personal.cr.crpe.test",
            id="exclusive-vpc-twin",
        ),
        pytest.param(LEGACY_PUBLIC, None, "registry.cn-hangzhou.crpe.test", id="legacy-public-own"),
        pytest.param(LEGACY_PUBLIC, Network.VPC, "registry-vpc.cn-hangzhou.crpe.test", id="legacy-public-twin"),
        pytest.param(LEGACY_VPC, Network.PUBLIC, "registry.cn-hangzhou.crpe.test", id="legacy-vpc-twin"),
    ],
)
def test_endpoint_host(endpoint: RegistryEndpoint, network: Network | None, expected: str) -> None:
    assert endpoint_host(endpoint, DOMAIN, network) == expected


@pytest.mark.parametrize(
    "endpoint",
    [EXCLUSIVE_PUBLIC, EXCLUSIVE_VPC, LEGACY_PUBLIC, LEGACY_VPC],
    ids=["exclusive-public", "exclusive-vpc", "legacy-public", "legacy-vpc"],
)
def test_endpoint_host_round_trip(endpoint: RegistryEndpoint) -> None:
    assert parse_host(endpoint_host(endpoint, DOMAIN), DOMAIN) == endpoint


def test_registry_endpoint_is_vpc() -> None:
    assert EXCLUSIVE_VPC.is_vpc


def test_registry_endpoint_public_is_not_vpc() -> None:
    assert not EXCLUSIVE_PUBLIC.is_vpc
