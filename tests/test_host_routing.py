"""The Host header picks the instance, the control plane or a 404, over HTTP against a real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from registry_client import RegistryClient, control_credentials, error_code, error_message
from server import CrpeServer, Instance

UNKNOWN_ID = "zzzz0000unknown1"


@pytest.fixture(scope="module")
def instance(server: CrpeServer) -> Instance:
    return server.create_instance("cn-hangzhou")


@pytest.fixture(scope="module")
def http(server: CrpeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def get_base(http: httpx.Client, host: str) -> httpx.Response:
    return http.get("/v2/", headers={"Host": host})


def unknown_host(server: CrpeServer, with_port: bool) -> str:
    name = f"crpi-{UNKNOWN_ID}.cn-hangzhou.personal.cr.{server.domain}"
    return server.host(name) if with_port else name


@pytest.mark.parametrize("with_port", [True, False], ids=["port", "no-port"])
def test_unknown_instance_status(server: CrpeServer, http: httpx.Client, with_port: bool) -> None:
    response = get_base(http, unknown_host(server, with_port))

    assert response.status_code == 404


@pytest.mark.parametrize("with_port", [True, False], ids=["port", "no-port"])
def test_unknown_instance_code(server: CrpeServer, http: httpx.Client, with_port: bool) -> None:
    response = get_base(http, unknown_host(server, with_port))

    assert error_code(response) == "NAME_UNKNOWN"


@pytest.mark.parametrize("with_port", [True, False], ids=["port", "no-port"])
def test_unknown_instance_message_names_host(server: CrpeServer, http: httpx.Client, with_port: bool) -> None:
    host = unknown_host(server, with_port)

    response = get_base(http, host)

    assert f"no registry instance is served at {host};" in error_message(response)


def test_unknown_instance_reveals_no_instances(server: CrpeServer, http: httpx.Client, instance: Instance) -> None:
    response = get_base(http, unknown_host(server, with_port=True))

    assert instance.id not in response.text
    assert "cn-shanghai" not in response.text


def test_unknown_instance_detail_is_host(server: CrpeServer, http: httpx.Client) -> None:
    host = unknown_host(server, with_port=True)

    response = get_base(http, host)

    assert response.json()["errors"][0]["detail"] == {"host": host}


def test_unknown_instance_on_manifest_path(server: CrpeServer, http: httpx.Client) -> None:
    response = http.get("/v2/team/x/manifests/latest", headers={"Host": unknown_host(server, with_port=True)})

    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


def test_unknown_instance_token_request(server: CrpeServer, http: httpx.Client) -> None:
    response = http.get(
        "/auth/token", headers={"Host": unknown_host(server, with_port=True)}, auth=("admin", "Secret-pass-1")
    )

    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


def test_instance_under_other_region_like_unknown(server: CrpeServer, http: httpx.Client, instance: Instance) -> None:
    """An existing instance under another region's host name must be indistinguishable from a missing one."""
    wrong_region = server.host(f"crpi-{instance.id}.cn-shanghai.personal.cr.{server.domain}")
    unknown = unknown_host(server, with_port=True)

    wrong_response = get_base(http, wrong_region)
    unknown_response = get_base(http, unknown)

    assert wrong_response.status_code == unknown_response.status_code
    assert error_code(wrong_response) == error_code(unknown_response)
    assert error_message(wrong_response).replace(wrong_region, "<host>") == error_message(unknown_response).replace(
        unknown, "<host>"
    )


def test_instance_under_other_region_vpc(server: CrpeServer, http: httpx.Client, instance: Instance) -> None:
    response = get_base(http, server.host(f"crpi-{instance.id}-vpc.cn-beijing.personal.cr.{server.domain}"))

    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


def test_unserved_region(server: CrpeServer, http: httpx.Client, instance: Instance) -> None:
    response = get_base(http, server.host(f"crpi-{instance.id}.xx-nowhere-1.personal.cr.{server.domain}"))

    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"
    assert "'xx-nowhere-1' is not served" in error_message(response)


@pytest.mark.parametrize(
    "host",
    ["registry.example.com", "registry.example.com:5000", "crpe.test.example.com"],
    ids=["no-port", "port", "domain-as-prefix"],
)
def test_foreign_domain(http: httpx.Client, host: str) -> None:
    response = get_base(http, host)

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert error_code(response) == "NAME_UNKNOWN"
    assert "is not under this registry's domain 'crpe.test'" in error_message(response)


def test_malformed_instance_label(server: CrpeServer, http: httpx.Client) -> None:
    response = get_base(http, server.host(f"crpi-ab.cn-hangzhou.personal.cr.{server.domain}"))

    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"
    assert "does not name an instance" in error_message(response)


@pytest.mark.parametrize("network", ["public", "vpc"])
@pytest.mark.parametrize("with_port", [True, False], ids=["port", "no-port"])
def test_instance_host_reaches_instance(
    server: CrpeServer, http: httpx.Client, instance: Instance, network: str, with_port: bool
) -> None:
    name = instance.public if network == "public" else instance.vpc
    host = server.host(name) if with_port else name

    response = get_base(http, host)

    assert response.status_code == 401
    assert (
        response.headers["WWW-Authenticate"] == f'Bearer realm="http://{host}/auth/token",service="{instance.public}"'
    )


@pytest.mark.parametrize("spelling", ["upper", "trailing-dot"])
def test_instance_host_spellings(server: CrpeServer, http: httpx.Client, instance: Instance, spelling: str) -> None:
    name = instance.public.upper() if spelling == "upper" else instance.public + "."

    response = http.get("/v2/", headers={"Host": server.host(name)}, auth=(instance.username, instance.password))

    assert response.status_code == 200


def test_base_with_basic_credentials(server: CrpeServer, http: httpx.Client, instance: Instance) -> None:
    response = http.get(
        "/v2/", headers={"Host": server.host(instance.public)}, auth=(instance.username, instance.password)
    )

    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_forwarded_host_from_untrusted_peer_ignored(server: CrpeServer, http: httpx.Client, instance: Instance) -> None:
    """Without CRPE_TRUSTED_PROXIES, X-Forwarded-Host cannot redirect a request to another host name."""
    response = http.get(
        "/v2/",
        auth=(instance.username, instance.password),
        headers={"Host": server.host(instance.public), "X-Forwarded-Host": unknown_host(server, with_port=True)},
    )

    assert response.status_code == 200


def test_healthz_on_any_host(http: httpx.Client) -> None:
    response = http.get("/healthz", headers={"Host": "anything.example.com"})

    assert response.status_code == 200


def test_control_plane_serves_regions(server: CrpeServer, http: httpx.Client) -> None:
    response = http.get("/api/v1/regions", headers={"Host": server.address}, auth=control_credentials(server))

    assert response.status_code == 200
    assert {"id": "cn-hangzhou", "name": "China (Hangzhou)"} in response.json()


@pytest.mark.parametrize("host", ["127.0.0.1", "crpe.test", "cr.crpe.test", "localhost", "[::1]"])
def test_control_plane_host_names(server: CrpeServer, http: httpx.Client, host: str) -> None:
    response = http.get("/api/v1/regions", headers={"Host": server.host(host)}, auth=control_credentials(server))

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/v2/", "/v2/team/x/manifests/latest", "/auth/token"])
def test_control_plane_not_registry(server: CrpeServer, http: httpx.Client, path: str) -> None:
    response = http.get(path, headers={"Host": server.address})

    assert response.status_code == 404
    assert "Docker-Distribution-API-Version" not in response.headers


def test_registry_host_not_control_plane(http: httpx.Client, instance: Instance, server: CrpeServer) -> None:
    response = http.get("/api/v1/regions", headers={"Host": server.host(instance.public)})

    assert response.status_code == 405
    assert error_code(response) == "UNSUPPORTED"


def test_two_instances_two_hosts(server: CrpeServer, instance: Instance) -> None:
    """Each exclusive host serves its own instance: a repository pushed to one is absent on the other."""
    other = server.create_instance("cn-hangzhou")
    first, second = RegistryClient(server, instance), RegistryClient(server, other)
    try:
        first.push_image("team/routing", "v1", "routing")

        in_first = first.request("GET", "/v2/team/routing/tags/list", network="vpc", repository="team/routing")
        in_second = second.request("GET", "/v2/team/routing/tags/list", network="vpc", repository="team/routing")
    finally:
        first.close()
        second.close()

    assert in_first.status_code == 200
    assert in_second.status_code == 404
    assert error_code(in_second) == "NAME_UNKNOWN"
