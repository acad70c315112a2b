"""The ASGI application: the Host header picks the registry endpoint or the control plane."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from crpe import logs
from crpe.endpoints import ControlPlaneHost, ParsedHost, RegistryEndpoint, parse_host
from crpe.registry import router
from crpe.registry.access import address_in
from crpe.services import Services
from crpe.settings import Settings, from_environment


class CrpeApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: Services | None = None
        self._control: Any = None
        self._parse = functools.lru_cache(maxsize=8192)(self._parse_host)
        self.access_log = logs.AccessLog(settings.access_log)

    def _parse_host(self, host: str) -> ParsedHost:
        return parse_host(host, self.settings.domain)

    def open(self) -> Services:
        if self.services is None:
            self.services = Services.open(self.settings)
        return self.services

    def control(self) -> Any:
        """Build the control-plane app on first use: FastAPI and pydantic cost a worker about 16 MiB."""
        if self._control is None:
            from crpe.control.api import create_control_app

            self._control = create_control_app(self.open())
        return self._control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        services = self.open()
        started = time.perf_counter()
        host = self._host(scope)
        status_holder: list[int] = [0]

        async def send_logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
            await send(message)

        path = scope["path"]
        parsed = self._parse(host)
        if path == "/healthz":
            await _send_json(send_logged, 200, {"status": "ok"})
        elif isinstance(parsed, RegistryEndpoint):
            request = Request(scope, receive)
            response = await router.handle(request, services, parsed, host)
            await response(scope, receive, send_logged)
        elif isinstance(parsed, ControlPlaneHost):
            await self.control()(scope, receive, send_logged)
        else:
            await _send_json(send_logged, 404, {"errors": [{
                "code": "NAME_UNKNOWN", "message": f"{parsed.reason}; check the registry address",
                "detail": {"host": host}}]})
        query = scope.get("query_string", b"")
        uri = f"{path}?{query.decode('latin-1')}" if query else path
        self.access_log.write(scope["method"], host, uri, status_holder[0],
                              (time.perf_counter() - started) * 1000, (scope.get("client") or ("",))[0])

    def _host(self, scope: Scope) -> str:
        host = ""
        forwarded = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"x-forwarded-host":
                forwarded = value.decode("latin-1")
        peer = (scope.get("client") or ("",))[0]
        if forwarded and self.settings.trusted_proxies and address_in(peer, self.settings.trusted_proxies):
            return forwarded.split(",")[0].strip()
        return host

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.services:
                    self.services.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _send_json(send: Any, status: int, content: Any) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings) -> CrpeApp:
    return CrpeApp(settings)


def create_app_from_environment() -> CrpeApp:
    """Build the app in a server worker process from the `CRPE_*` variables that `crpe serve` exported."""
    logs.configure()
    return create_app(from_environment())
