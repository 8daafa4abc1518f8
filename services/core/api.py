"""Authenticated JSON endpoints described once, served and documented from the same table.

A service lists its :class:`Endpoint` rows; :func:`add_endpoints` registers them on its
application behind :func:`authenticate`, and :func:`openapi_document` renders the OpenAPI 3.1
document from the very same rows, so the document cannot drift from the routes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web

from services.core import errors
from services.core.audit import Actor
from services.core.auth import (
    Account,
    AccountRepository,
    Role,
    VerifiedCache,
    parse_basic,
    parse_bearer,
    verify_login,
)
from services.core.authguard import auth_guard
from services.core.db import POOL_KEY, acquire
from services.core.http import SERVICE_NAME_KEY, security_event
from services.core.inputs import loads_json

ACCOUNT_KEY = web.RequestKey("account", Account)
VERIFIED_CACHE_KEY = web.AppKey("verified_cache", VerifiedCache)
CHALLENGES = ('Basic realm="pbxfront", charset="UTF-8"', 'Bearer realm="pbxfront"')

ApiHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The OpenAPI schema of an endpoint's JSON object (its answer or request body).
OBJECT: Mapping[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: ApiHandler
    roles: frozenset[Role]
    summary: str
    # OpenAPI fragments: query parameters, request body schema, response schema.
    query: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None
    response: Mapping[str, Any] | None = None
    public: bool = False


async def authenticate(request: web.Request) -> Account:
    """The caller's account from Basic or Bearer credentials; Unauthenticated otherwise.

    Failures (wrong, unknown or malformed credentials) count in the node's guard
    (``core.authguard``): an address or account over its limit gets 429 before any check."""
    header = request.headers.get("Authorization")
    pool = request.config_dict[POOL_KEY]
    guard = auth_guard(request)
    account: Account | None = None
    token = parse_bearer(header)
    credentials = parse_basic(header)
    if token is None and credentials is None:
        if header:
            guard.refuse_if_limited(request)
            guard.failed(request, None, "malformed credentials")
            raise errors.Unauthenticated("malformed credentials", CHALLENGES)
        raise errors.Unauthenticated("authentication required", CHALLENGES)
    name = credentials.name if credentials is not None else None
    guard.refuse_if_limited(request, name)
    if token is not None:
        async with acquire(pool) as connection:
            account = await AccountRepository(connection).by_token(token)
    elif credentials is not None:
        account = await verify_login(
            pool,
            credentials.name,
            credentials.password,
            request.config_dict.get(VERIFIED_CACHE_KEY),
            guard.hashing,
        )
    if account is None:
        guard.failed(request, name, "wrong token" if token is not None else "wrong password")
        raise errors.Unauthenticated("wrong credentials", CHALLENGES)
    guard.succeeded(request, account.name)
    return account


def require(roles: frozenset[Role], handler: ApiHandler) -> ApiHandler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        account = await authenticate(request)
        if not account.has_any(roles):
            security_event(request, "forbidden", account=account.name, path=request.path)
            wanted = ", ".join(sorted(r.value for r in roles))
            raise errors.Forbidden(f"this needs one of the roles: {wanted}")
        request[ACCOUNT_KEY] = account
        return await handler(request)

    return guarded


def add_endpoints(app: web.Application, endpoints: Iterable[Endpoint]) -> None:
    for endpoint in endpoints:
        handler = endpoint.handler if endpoint.public else require(endpoint.roles, endpoint.handler)
        app.router.add_route(endpoint.method, endpoint.path, handler)


def endpoints_app(service_name: str, endpoints: Iterable[Endpoint]) -> web.Application:
    """A service's part of the admin API: its ``endpoints`` behind :func:`authenticate`, with
    the cache of verified passwords they share; ``service_name`` labels its log lines and
    metrics. The caller adds its settings and other state."""
    app = web.Application()
    app[SERVICE_NAME_KEY] = service_name
    app[VERIFIED_CACHE_KEY] = VerifiedCache()
    add_endpoints(app, endpoints)
    return app


def current_account(request: web.Request) -> Account:
    account: Account = request[ACCOUNT_KEY]
    return account


def request_actor(request: web.Request) -> Actor:
    """Who is calling, for the audit log: the account (``<name> (token)`` when a bearer token
    was used) and the client's address."""
    name = current_account(request).name
    if parse_bearer(request.headers.get("Authorization")) is not None:
        name = f"{name} (token)"
    return Actor(name, request.remote or "unknown")


async def json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (an empty body: ``{}`` when ``optional``); Invalid with
    a precise reason otherwise. Depth, huge integers, NUL and lone surrogates get a precise 4xx
    too (core.inputs). Read from aiohttp's cache where a signature check has read it already."""
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise errors.Invalid("a JSON object body is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.Invalid("body is not UTF-8") from None
    value = loads_json(text)
    if not isinstance(value, dict):
        raise errors.Invalid("body must be a JSON object")
    return value


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(value, ensure_ascii=False, default=str, indent=None) + "\n",
        content_type="application/json",
    )


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"\d{1,9}", raw):
        raise errors.Invalid(f"{name}: must be a whole number")
    value = int(raw)
    if not low <= value <= high:
        raise errors.Invalid(f"{name}: must be {low}..{high}")
    return value


def _openapi_path(path: str) -> str:
    # aiohttp's `{name:regex}` -> OpenAPI's `{name}`
    return re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)


def openapi_document(title: str, version: str, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        path = _openapi_path(endpoint.path)
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", path)
        ]
        parameters += [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": text,
            }
            for name, text in endpoint.query.items()
        ]
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": dict(endpoint.response or {})}},
                },
                "400": {"description": "malformed request"},
                "404": {"description": "not found"},
                "503": {"description": "database unavailable"},
            },
        }
        if not endpoint.public:
            operation["security"] = [{"basic": []}, {"bearer": []}]
            operation["responses"]["401"] = {"description": "no or wrong credentials"}
            operation["responses"]["403"] = {
                "description": "needs role: " + ", ".join(sorted(r.value for r in endpoint.roles))
            }
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": dict(endpoint.body)}},
            }
        paths.setdefault(path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
        },
        "paths": paths,
    }


def openapi_handler(
    title: str, endpoints: Callable[[web.Request], Sequence[Endpoint]]
) -> ApiHandler:
    """The handler of an API's ``openapi.json``: the document of ``endpoints(request)`` (looked
    up per request, so the list may name this handler itself)."""

    async def openapi(request: web.Request) -> web.Response:
        return json_response(openapi_document(title, "1", endpoints(request)))

    return openapi


def openapi_endpoint(
    title: str,
    path: str,
    roles: frozenset[Role],
    endpoints: Callable[[web.Request], Sequence[Endpoint]],
) -> Endpoint:
    """The row of an API's own ``openapi.json`` at ``path``: public, the document of
    ``endpoints(request)`` (see :func:`openapi_handler`)."""
    handler = openapi_handler(title, endpoints)
    return Endpoint("GET", path, handler, roles, "This document", public=True)


def pool_of(request: web.Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.config_dict[POOL_KEY]
    return pool
