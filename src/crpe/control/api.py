"""The control-plane application: routes under /api/v1 and one shape for every error.

Callers authenticate with an access key as HTTP Basic credentials (key id as user name, secret as
password). A resource the caller may not see returns 404, the same as a missing one.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from crpe.control import identity_routes, instance_routes
from crpe.control.common import ControlError
from crpe.policy import HARBOR_DENIED, is_harbor_client
from crpe.services import Services

log = logging.getLogger("crpe.control")


def create_control_app(services: Services) -> FastAPI:
    app = FastAPI(title="crpe control plane", version="1", openapi_url="/api/v1/openapi.json",
                  docs_url="/api/v1/docs", redoc_url=None)
    app.state.services = services
    app.include_router(instance_routes.router)
    app.include_router(identity_routes.router)

    @app.middleware("http")
    async def reject_harbor(request: Request, call_next):  # type: ignore[no-untyped-def]
        # Instance routes refuse Harbor for new instances only; routes naming no instance reject it outright.
        if is_harbor_client(request.headers.get("user-agent", "")) and "/instances/" not in request.url.path:
            return JSONResponse({"error": {"code": "DENIED", "message": HARBOR_DENIED}}, 403)
        return await call_next(request)

    @app.exception_handler(ControlError)
    async def control_error(_request: Request, error: ControlError) -> JSONResponse:
        return JSONResponse({"error": {"code": error.code, "message": error.detail}}, error.status_code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        # Covers FastAPI's own errors and Starlette's for unknown paths (404) and methods (405).
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(error.status_code, "INVALID_REQUEST")
        message = str(error.detail)
        if error.status_code == 404:
            message = f"{request.url.path} is not a control-plane route; see /api/v1/docs"
        elif error.status_code == 405:
            message = f"{request.method} is not supported on {request.url.path}; see /api/v1/docs"
        return JSONResponse({"error": {"code": code, "message": message}}, error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            if item.get("type") == "json_invalid":
                position = item.get("loc", ("body", "?"))[-1]
                reason = item.get("ctx", {}).get("error", "decode error")
                problems.append(f"the request body is not valid JSON ({reason} at character {position}); "
                                "send a JSON object")
                continue
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg')}")
        return JSONResponse({"error": {"code": "INVALID_REQUEST", "message": "; ".join(problems)}}, 400)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("control request failed", extra={"http.request.uri": request.url.path})
        return JSONResponse({"error": {"code": "INTERNAL", "message": "internal error; see the server log"}}, 500)

    return app
