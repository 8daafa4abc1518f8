"""Admin API handlers: parse, call the inventory repository, render JSON.

Secrets (customer passwords, secret variables) are never returned: the API says whether one is
set. Writes take the whole object (PUT); an omitted secret keeps its current value, ``null``
clears it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from services.core import audit, errors
from services.core.api import (
    OBJECT,
    Endpoint,
    current_account,
    int_query,
    json_body,
    json_response,
    openapi_endpoint,
    pool_of,
    request_actor,
)
from services.core.auth import AccountRepository, Role
from services.core.config import Settings
from services.core.db import acquire
from services.core.identity import IdentityError, normalize_mac
from services.core.inventory import (
    LAYERS,
    Customer,
    Device,
    InventoryError,
    InventoryRepository,
    resolve_variables,
)

SETTINGS_KEY = web.AppKey("admin_settings", Settings)
ENDPOINTS_KEY = web.AppKey("admin_endpoints", list[Endpoint])

READERS = frozenset({Role.ADMIN, Role.OPERATOR})
WRITERS = frozenset({Role.ADMIN, Role.OPERATOR})
ANYONE = frozenset(Role)

CUSTOMER_SECRETS = ("registration_password", "login_password")


def _unprocessable(error: InventoryError) -> errors.Unprocessable:
    return errors.Unprocessable("; ".join(error.problems))


def customer_json(customer: Customer) -> dict[str, Any]:
    data = dataclasses.asdict(customer)
    for secret in CUSTOMER_SECRETS:
        data[f"{secret}_set"] = data.pop(secret) is not None
    return data


def device_json(device: Device) -> dict[str, Any]:
    return dataclasses.asdict(device)


def _mac(request: web.Request) -> str:
    try:
        return normalize_mac(request.match_info["mac"])
    except IdentityError as error:
        raise errors.Invalid(f"mac: {error}") from None


def _fields(body: dict[str, Any], allowed: set[str], required: set[str]) -> dict[str, Any]:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise errors.Invalid(f"{unknown[0]}: unknown field (known: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(body))
    if missing:
        raise errors.Invalid(f"{missing[0]}: required")
    return body


# --- tokens ------------------------------------------------------------------------------------


async def create_token(request: web.Request) -> web.Response:
    account = current_account(request)
    lifetime = request.app[SETTINGS_KEY].admin.token_lifetime
    async with acquire(pool_of(request)) as connection, connection.transaction():
        token = await AccountRepository(connection).issue_token(account.name, lifetime)
        await audit.record(
            connection,
            actor=request_actor(request),
            action="token.issue",
            object_type="account",
            object_id=account.name,
            after={"expires_in": int(lifetime)},
        )
    return json_response(
        {
            "token": token,
            "token_type": "Bearer",
            "expires_in": int(lifetime),
            "account": account.name,
            "roles": sorted(account.roles),
        },
        status=201,
    )


# --- frontends ---------------------------------------------------------------------------------


async def list_frontends(request: web.Request) -> web.Response:
    async with acquire(pool_of(request)) as connection:
        frontends = await InventoryRepository(connection).list_frontends()
    return json_response({"frontends": [dataclasses.asdict(f) for f in frontends]})


# --- customers ---------------------------------------------------------------------------------


async def list_customers(request: web.Request) -> web.Response:
    frontend = request.query.get("frontend") or None
    async with acquire(pool_of(request)) as connection:
        customers = await InventoryRepository(connection).list_customers(frontend)
    return json_response({"customers": [customer_json(c) for c in customers]})


async def get_customer(request: web.Request) -> web.Response:
    customer_id = request.match_info["customer_id"]
    async with acquire(pool_of(request)) as connection:
        customer = await InventoryRepository(connection).get_customer(customer_id)
    if customer is None:
        raise errors.NotFound(f"no customer {customer_id}")
    return json_response(customer_json(customer))


CUSTOMER_FIELDS = {f.name for f in dataclasses.fields(Customer)}


async def put_customer(request: web.Request) -> web.Response:
    customer_id = request.match_info["customer_id"]
    body = _fields(
        await json_body(request),
        CUSTOMER_FIELDS,
        {"frontend", "name", "system_name", "country_code", "area_code"},
    )
    if body.get("id", customer_id) != customer_id:
        raise errors.Invalid("id: differs from the id in the path")
    body["id"] = customer_id
    async with acquire(pool_of(request)) as connection:
        repository = InventoryRepository(connection, actor=request_actor(request))
        async with connection.transaction():
            existing = await repository.get_customer(customer_id)
            for secret in CUSTOMER_SECRETS:
                if secret not in body:
                    body[secret] = getattr(existing, secret) if existing is not None else None
            try:
                customer = Customer(**body)
                created = await repository.upsert_customer(customer)
            except TypeError as error:
                raise errors.Invalid(str(error)) from None
            except InventoryError as error:
                raise _unprocessable(error) from None
            stored = await repository.get_customer(customer_id)
    assert stored is not None
    return json_response(customer_json(stored), status=201 if created else 200)


async def delete_customer(request: web.Request) -> web.Response:
    customer_id = request.match_info["customer_id"]
    async with acquire(pool_of(request)) as connection:
        try:
            deleted = await InventoryRepository(
                connection, actor=request_actor(request)
            ).delete_customer(customer_id)
        except InventoryError as error:
            raise _unprocessable(error) from None
    if not deleted:
        raise errors.NotFound(f"no customer {customer_id}")
    return web.Response(status=204)


# --- devices -----------------------------------------------------------------------------------


async def list_devices(request: web.Request) -> web.Response:
    customer = request.query.get("customer") or None
    limit = int_query(request, "limit", 100, 1, 10000)
    offset = int_query(request, "offset", 0, 0, 10**9)
    async with acquire(pool_of(request)) as connection:
        devices = await InventoryRepository(connection).list_devices(
            customer, limit=limit, offset=offset
        )
    return json_response(
        {"devices": [device_json(d) for d in devices], "limit": limit, "offset": offset}
    )


async def get_device(request: web.Request) -> web.Response:
    mac = _mac(request)
    async with acquire(pool_of(request)) as connection:
        device = await InventoryRepository(connection).get_device(mac)
    if device is None:
        raise errors.NotFound(f"no device {mac}")
    return json_response(device_json(device))


DEVICE_FIELDS = {f.name for f in dataclasses.fields(Device)}


async def put_device(request: web.Request) -> web.Response:
    mac = _mac(request)
    body = _fields(
        await json_body(request), DEVICE_FIELDS, {"device_type", "device_class", "customer"}
    )
    if "mac" in body:
        try:
            same = normalize_mac(str(body["mac"])) == mac
        except IdentityError:
            same = False
        if not same:
            raise errors.Invalid("mac: differs from the MAC in the path")
    body["mac"] = mac
    async with acquire(pool_of(request)) as connection:
        repository = InventoryRepository(connection, actor=request_actor(request))
        try:
            created = await repository.upsert_device(Device(**body))
        except TypeError as error:
            raise errors.Invalid(str(error)) from None
        except InventoryError as error:
            raise _unprocessable(error) from None
        stored = await repository.get_device(mac)
    assert stored is not None
    return json_response(device_json(stored), status=201 if created else 200)


async def delete_device(request: web.Request) -> web.Response:
    mac = _mac(request)
    async with acquire(pool_of(request)) as connection:
        deleted = await InventoryRepository(connection, actor=request_actor(request)).delete_device(
            mac
        )
    if not deleted:
        raise errors.NotFound(f"no device {mac}")
    return web.Response(status=204)


async def device_variables(request: web.Request) -> web.Response:
    """The device's variables as a script would see them, with the layer that set each."""
    mac = _mac(request)
    async with acquire(pool_of(request)) as connection:
        device = await InventoryRepository(connection).get_device(mac)
        if device is None:
            raise errors.NotFound(f"no device {mac}")
        resolved = await resolve_variables(connection, device)
    return json_response(
        {
            "device": mac,
            "variables": {
                name: {
                    "value": None if item.secret else item.value,
                    "secret": item.secret,
                    "layer": item.layer,
                    "scope": item.scope,
                }
                for name, item in sorted(resolved.items())
            },
        }
    )


# --- variables ---------------------------------------------------------------------------------


def _layer(request: web.Request) -> str:
    layer = request.match_info.get("layer", "global")
    if layer not in LAYERS:
        raise errors.Invalid(f"layer: must be one of {', '.join(LAYERS)}")
    return layer


async def list_variables(request: web.Request) -> web.Response:
    layer = request.query.get("layer") or None
    if layer is not None and layer not in LAYERS:
        raise errors.Invalid(f"layer: must be one of {', '.join(LAYERS)}")
    scope = request.query.get("scope")
    async with acquire(pool_of(request)) as connection:
        variables = await InventoryRepository(connection).list_variables(layer, scope)
    return json_response(
        {
            "variables": [
                {
                    "layer": v.layer,
                    "scope": v.scope,
                    "name": v.name,
                    "value": None if v.secret else v.value,
                    "secret": v.secret,
                }
                for v in variables
            ]
        }
    )


def _scope(request: web.Request, layer: str) -> str:
    if layer == "global":
        return ""
    scope = request.match_info.get("scope", "")
    if not scope:
        raise errors.Invalid(f"scope: the {layer} layer needs a scope")
    return scope


async def put_variable(request: web.Request) -> web.Response:
    layer = _layer(request)
    scope = _scope(request, layer)
    body = _fields(await json_body(request), {"value", "secret"}, {"value"})
    value = body["value"]
    secret = body.get("secret", False)
    if not isinstance(value, str):
        raise errors.Invalid("value: must be a string")
    if not isinstance(secret, bool):
        raise errors.Invalid("secret: must be true or false")
    async with acquire(pool_of(request)) as connection:
        try:
            await InventoryRepository(connection, actor=request_actor(request)).set_variable(
                layer, scope, request.match_info["name"], value, secret
            )
        except InventoryError as error:
            raise _unprocessable(error) from None
    return json_response(
        {"layer": layer, "scope": scope, "name": request.match_info["name"], "secret": secret}
    )


async def delete_variable(request: web.Request) -> web.Response:
    layer = _layer(request)
    scope = _scope(request, layer)
    async with acquire(pool_of(request)) as connection:
        try:
            deleted = await InventoryRepository(
                connection, actor=request_actor(request)
            ).delete_variable(layer, scope, request.match_info["name"])
        except InventoryError as error:
            raise _unprocessable(error) from None
    if not deleted:
        raise errors.NotFound("no such variable")
    return web.Response(status=204)


# --- the table ---------------------------------------------------------------------------------


def _endpoints(request: web.Request) -> list[Endpoint]:
    return request.app[ENDPOINTS_KEY]


ENDPOINTS: list[Endpoint] = [
    openapi_endpoint("pbxfront admin API", "/api/v1/openapi.json", ANYONE, _endpoints),
    Endpoint(
        "POST",
        "/api/v1/tokens",
        create_token,
        ANYONE,
        "Exchange Basic credentials for a bearer token",
        response=OBJECT,
    ),
    Endpoint(
        "GET", "/api/v1/frontends", list_frontends, READERS, "List Frontends", response=OBJECT
    ),
    Endpoint(
        "GET",
        "/api/v1/customers",
        list_customers,
        READERS,
        "List customers",
        query={"frontend": "only customers of this Frontend"},
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/customers/{customer_id}",
        get_customer,
        READERS,
        "One customer",
        response=OBJECT,
    ),
    Endpoint(
        "PUT",
        "/api/v1/customers/{customer_id}",
        put_customer,
        WRITERS,
        "Create or replace a customer",
        body=OBJECT,
        response=OBJECT,
    ),
    Endpoint(
        "DELETE",
        "/api/v1/customers/{customer_id}",
        delete_customer,
        WRITERS,
        "Remove a customer without devices (archived with its contacts and backups; restorable)",
    ),
    Endpoint(
        "GET",
        "/api/v1/devices",
        list_devices,
        READERS,
        "List devices",
        query={
            "customer": "only this customer's devices",
            "limit": "page size (1..10000)",
            "offset": "rows to skip",
        },
        response=OBJECT,
    ),
    Endpoint("GET", "/api/v1/devices/{mac}", get_device, READERS, "One device", response=OBJECT),
    Endpoint(
        "PUT",
        "/api/v1/devices/{mac}",
        put_device,
        WRITERS,
        "Create or replace a device",
        body=OBJECT,
        response=OBJECT,
    ),
    Endpoint("DELETE", "/api/v1/devices/{mac}", delete_device, WRITERS, "Delete a device"),
    Endpoint(
        "GET",
        "/api/v1/devices/{mac}/variables",
        device_variables,
        READERS,
        "A device's resolved update variables and the layer that set each",
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/variables",
        list_variables,
        READERS,
        "List update variables",
        query={"layer": "one layer", "scope": "one scope"},
        response=OBJECT,
    ),
    Endpoint(
        "PUT",
        "/api/v1/variables/global/{name}",
        put_variable,
        WRITERS,
        "Set a global variable",
        body=OBJECT,
        response=OBJECT,
    ),
    Endpoint(
        "DELETE",
        "/api/v1/variables/global/{name}",
        delete_variable,
        WRITERS,
        "Delete a global variable",
    ),
    Endpoint(
        "PUT",
        "/api/v1/variables/{layer}/{scope}/{name}",
        put_variable,
        WRITERS,
        "Set a variable on a layer",
        body=OBJECT,
        response=OBJECT,
    ),
    Endpoint(
        "DELETE",
        "/api/v1/variables/{layer}/{scope}/{name}",
        delete_variable,
        WRITERS,
        "Delete a variable on a layer",
    ),
]
