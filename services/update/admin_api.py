"""The update service's part of the admin API: device status, unknown devices, restaging.

Composed into the admin application by services/serve.py (the admin package never imports a
service).
"""

from __future__ import annotations

from aiohttp import web

from services.core import audit, errors
from services.core.api import OBJECT, Endpoint, int_query, json_response, pool_of, request_actor
from services.core.auth import Role
from services.core.db import acquire
from services.core.identity import IdentityError, normalize_mac
from services.core.unknown import UPDATE as UPDATE_SERVICE
from services.core.unknown import UnknownDeviceRepository
from services.update.repository import RolloutRepository, UpdateRepository

READERS = frozenset({Role.ADMIN, Role.OPERATOR})
WRITERS = frozenset({Role.ADMIN, Role.OPERATOR})


def _mac(request: web.Request) -> str:
    try:
        return normalize_mac(request.match_info["mac"])
    except IdentityError as error:
        raise errors.Invalid(f"mac: {error}") from None


async def list_status(request: web.Request) -> web.Response:
    customer = request.query.get("customer") or None
    stale = request.query.get("stale") in ("1", "true", "yes")
    limit = int_query(request, "limit", 1000, 1, 10000)
    offset = int_query(request, "offset", 0, 0, 10**9)
    minutes = int_query(request, "poll_interval", 15, 1, 1440)
    async with acquire(pool_of(request)) as connection:
        statuses = await UpdateRepository(connection).statuses(
            customer=customer,
            stale_after_seconds=3 * 60 * minutes if stale else None,
            limit=limit,
            offset=offset,
        )
    return json_response(
        {"devices": [s.as_json() for s in statuses], "limit": limit, "offset": offset}
    )


async def device_status(request: web.Request) -> web.Response:
    mac = _mac(request)
    async with acquire(pool_of(request)) as connection:
        statuses = await UpdateRepository(connection).statuses(mac=mac)
    if not statuses:
        raise errors.NotFound(f"no device {mac}")
    return json_response(statuses[0].as_json())


async def restage(request: web.Request) -> web.Response:
    mac = _mac(request)
    async with acquire(pool_of(request)) as connection, connection.transaction():
        if not await UpdateRepository(connection).request_restage(mac):
            raise errors.NotFound(f"no device {mac}")
        await audit.record(
            connection,
            actor=request_actor(request),
            action="device.restage",
            object_type="device",
            object_id=mac,
        )
    return json_response({"device": mac, "restage_requested": True}, status=202)


async def unknown_devices(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", 1000, 1, 10000)
    async with acquire(pool_of(request)) as connection:
        unknown = await UnknownDeviceRepository(connection).sightings(UPDATE_SERVICE, limit)
    return json_response(
        {
            "devices": [
                {
                    **item.__dict__,
                    "first_seen": item.first_seen.isoformat(),
                    "last_seen": item.last_seen.isoformat(),
                }
                for item in unknown
            ]
        }
    )


async def list_certificates(request: web.Request) -> web.Response:
    customer = request.query.get("customer") or None
    async with acquire(pool_of(request)) as connection:
        statuses = await RolloutRepository(connection).statuses(customer=customer)
    return json_response({"devices": [s.as_json() for s in statuses]})


async def device_certificate(request: web.Request) -> web.Response:
    mac = _mac(request)
    async with acquire(pool_of(request)) as connection:
        statuses = await RolloutRepository(connection).statuses(mac=mac)
    if not statuses:
        raise errors.NotFound(f"no device {mac}")
    return json_response(statuses[0].as_json())


async def reset_certificate(request: web.Request) -> web.Response:
    mac = _mac(request)
    async with acquire(pool_of(request)) as connection:
        repository = RolloutRepository(connection)
        if not await repository.statuses(mac=mac):
            raise errors.NotFound(f"no device {mac}")
        reset = await repository.reset(mac)
    return json_response({"device": mac, "reset": reset}, status=202)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/status",
        list_status,
        READERS,
        "Device status as seen by the update service",
        query={
            "customer": "only this customer's devices",
            "stale": "1: only devices not seen for 3 poll intervals (or never)",
            "poll_interval": "minutes, for stale (default 15)",
            "limit": "page size",
            "offset": "rows to skip",
        },
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/devices/{mac}/status",
        device_status,
        READERS,
        "One device's status: last seen, address, proof, phase, in sync",
        response=OBJECT,
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/{mac}/restage",
        restage,
        WRITERS,
        "Send a device through staging.txt again at its next poll",
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/unknown-devices",
        unknown_devices,
        READERS,
        "Devices that polled but are not in the inventory",
        query={"limit": "page size"},
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/certificates/rollouts",
        list_certificates,
        READERS,
        "Certificate roll-out per device: state, the device's certificate issuer and expiry",
        query={"customer": "only this customer's devices"},
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/devices/{mac}/certificate",
        device_certificate,
        READERS,
        "One device's certificate roll-out (rollout: null when it never started)",
        response=OBJECT,
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/{mac}/certificate/reset",
        reset_certificate,
        WRITERS,
        "Forget a device's roll-out (e.g. after an error); its next poll starts over",
        response=OBJECT,
    ),
]
