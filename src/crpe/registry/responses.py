"""Response types of the registry API."""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from crpe.errors import RegistryError

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None,
                  media_type: str = "application/json") -> Response:
    body = json.dumps(content, separators=(",", ":")).encode()
    return Response(body, status, {**API_VERSION_HEADER, **(headers or {})}, media_type=media_type)


def error_response(error: RegistryError, head: bool = False) -> Response:
    body = json.dumps(error.body()).encode()
    headers = {**API_VERSION_HEADER, **error.headers}
    if head:
        # A HEAD response carries the headers of the GET response but no body.
        return EmptyResponse(error.status, {**headers, "Content-Type": "application/json",
                                            "Content-Length": str(len(body))})
    return Response(body, error.status, headers, media_type="application/json")


class EmptyResponse(Response):
    """A response with no body whose Content-Length header is left as given (for HEAD and 202/204)."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.body = b""
        self.background = None
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if "content-length" not in {k.lower() for k in headers}:
            self.raw_headers.append((b"content-length", b"0"))


class FileSendResponse(Response):
    """Send a whole file with the server's native file send (ASGI pathsend) when it offers one."""

    def __init__(self, path: str, size: int, headers: dict[str, str]) -> None:
        self.path = path
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers.append((b"content-length", str(size).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if "http.response.pathsend" in scope.get("extensions", {}):
            await send({"type": "http.response.pathsend", "path": self.path})
            return
        # Fallback for servers without pathsend: stream in pieces from a file descriptor.
        fd = os.open(self.path, os.O_RDONLY)
        try:
            offset = 0
            while True:
                chunk = await anyio.to_thread.run_sync(os.pread, fd, 1024 * 1024, offset)
                if not chunk:
                    break
                offset += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            os.close(fd)
