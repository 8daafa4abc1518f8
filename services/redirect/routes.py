"""The redirect service's routes: the device paths, and the provider API's table (each
endpoint's scope and summary), its OpenAPI document and its signed routes."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.core.api import Endpoint, json_response, openapi_document
from services.core.config import Settings
from services.redirect.handlers import (
    ApiHandler,
    delete_device,
    device_history,
    device_request,
    get_device,
    import_devices,
    list_devices,
    move_device,
    put_device,
    signed,
    transfer_token,
    whoami,
)
from services.redirect.handover import DEVICE_PATHS
from services.redirect.signing import SCOPES


@dataclass(frozen=True)
class ProviderEndpoint:
    method: str
    path: str
    handler: ApiHandler
    # None: any valid key.
    scope: str | None
    summary: str
    query: dict[str, str] | None = None
    body: bool = False


async def openapi(request: web.Request) -> web.Response:
    document = openapi_document(
        "pbxfront redirect provider API",
        "1",
        [
            Endpoint(
                e.method,
                e.path,
                e.handler,
                frozenset(),
                e.summary,
                query=e.query or {},
                body={"type": "object"} if e.body else None,
                response={"type": "object"},
                public=True,
            )
            for e in ENDPOINTS
        ],
    )
    document["components"] = {
        "securitySchemes": {
            "hmac": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "PBXFRONT-HMAC-SHA256 KeyId=…, Timestamp=…, Nonce=…, Signature=…",
            }
        }
    }
    for endpoint in ENDPOINTS:
        operation = document["paths"][endpoint.path][endpoint.method.lower()]
        operation["security"] = [{"hmac": []}]
        operation["responses"]["401"] = {"description": "missing, expired or replayed signature"}
        operation["responses"]["403"] = {"description": f"needs scope: {endpoint.scope or 'any'}"}
    return json_response(document)


DEVICE = "/api/v1/redirect/devices/{device}"

ENDPOINTS: list[ProviderEndpoint] = [
    ProviderEndpoint(
        "GET", "/api/v1/redirect/whoami", whoami, None, "The key's provider and scopes"
    ),
    ProviderEndpoint(
        "GET",
        "/api/v1/redirect/devices",
        list_devices,
        "redirect:read",
        "The provider's mappings",
        query={
            "frontend": "only devices sent to this Frontend",
            "limit": "page size (1..10000)",
            "offset": "rows to skip",
        },
    ),
    ProviderEndpoint("GET", DEVICE, get_device, "redirect:read", "One mapping (by MAC or serial)"),
    ProviderEndpoint(
        "PUT",
        DEVICE,
        put_device,
        "redirect:write",
        "Register or update a mapping; with transfer_token, take one over",
        body=True,
    ),
    ProviderEndpoint(
        "POST",
        DEVICE + "/move",
        move_device,
        "redirect:write",
        "Point a mapping at another Frontend or URL",
        body=True,
    ),
    ProviderEndpoint("DELETE", DEVICE, delete_device, "redirect:write", "Deregister a device"),
    ProviderEndpoint(
        "GET", DEVICE + "/history", device_history, "redirect:read", "The mapping's changes"
    ),
    ProviderEndpoint(
        "POST",
        DEVICE + "/transfer-token",
        transfer_token,
        "redirect:transfer",
        "Issue a single-use token with which another provider may take the device over",
        body=True,
    ),
    ProviderEndpoint(
        "POST",
        "/api/v1/redirect/import",
        import_devices,
        "redirect:write",
        "Bulk register (CSV or JSON), one result per row",
        body=True,
    ),
]


def add_api_routes(app: web.Application) -> None:
    unknown = [e.scope for e in ENDPOINTS if e.scope is not None and e.scope not in SCOPES]
    if unknown:  # pragma: no cover - a programming error caught by every test run
        raise ValueError(f"unknown scope {unknown[0]}")
    app.router.add_get("/api/v1/redirect/openapi.json", openapi)
    for endpoint in ENDPOINTS:
        app.router.add_route(
            endpoint.method, endpoint.path, signed(endpoint.scope, endpoint.handler)
        )


def add_device_routes(app: web.Application, settings: Settings) -> None:
    for path in dict.fromkeys((*DEVICE_PATHS, *settings.redirect.extra_paths)):
        app.router.add_get(path, device_request)
