"""Admin API over the audit log and archived customers (issue 15).

``GET /api/v1/audit`` (admin role) lists who changed what; ``GET /api/v1/archived-customers`` and
``POST /api/v1/customers/{customer_id}/restore`` are the API side of ``pbxfront inventory
archived|restore``. Restoring is audited like every other inventory write.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from services.core import audit, errors
from services.core.api import (
    OBJECT,
    Endpoint,
    int_query,
    json_response,
    pool_of,
    request_actor,
)
from services.core.auth import Role
from services.core.db import acquire
from services.core.inventory import InventoryError, archived_customers, restore_customer

ADMINS = frozenset({Role.ADMIN})
READERS = frozenset({Role.ADMIN, Role.OPERATOR})
WRITERS = frozenset({Role.ADMIN, Role.OPERATOR})


def _since(request: web.Request) -> datetime | None:
    raw = request.query.get("since")
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise errors.Invalid("since: must be an ISO 8601 date or date and time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def list_audit(request: web.Request) -> web.Response:
    since = _since(request)
    limit = int_query(request, "limit", 1000, 1, 10000)
    after_id = int_query(request, "after", 0, 0, 10**15)
    object_type, object_id = audit.parse_object(request.query.get("object") or "")
    async with acquire(pool_of(request)) as connection:
        rows = await audit.entries(
            connection,
            since=since,
            actor=request.query.get("actor") or None,
            object_type=object_type or None,
            object_id=object_id,
            after_id=after_id,
            limit=limit,
        )
    return json_response({"entries": audit.as_rows(rows), "limit": limit})


async def list_archived(request: web.Request) -> web.Response:
    async with acquire(pool_of(request)) as connection:
        archived = await archived_customers(connection)
    return json_response(
        {"customers": [{"id": item.customer.id, **item.summary()} for item in archived]}
    )


async def restore(request: web.Request) -> web.Response:
    customer_id = request.match_info["customer_id"]
    async with acquire(pool_of(request)) as connection:
        try:
            archived = await restore_customer(connection, customer_id, actor=request_actor(request))
        except InventoryError as error:
            if any("not archived" in problem for problem in error.problems):
                raise errors.NotFound(f"no archived customer {customer_id}") from None
            raise errors.Unprocessable("; ".join(error.problems)) from None
    return json_response(
        {
            "id": archived.customer.id,
            "devices": [device.mac for device in archived.devices],
            "contacts_version": archived.contacts_version,
        }
    )


FLEET_ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "GET",
        "/api/v1/audit",
        list_audit,
        ADMINS,
        "The audit log: who changed what, when, from where (secrets redacted)",
        query={
            "since": "ISO 8601 date or date and time",
            "actor": "account name (also its token use)",
            "object": "TYPE or TYPE/ID, e.g. customer/Kuenkel00001",
            "after": "only entries with a larger id (paging)",
            "limit": "page size (1..10000)",
        },
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/archived-customers",
        list_archived,
        READERS,
        "Customers removed without purge (contacts and backups kept)",
        response=OBJECT,
    ),
    Endpoint(
        "POST",
        "/api/v1/customers/{customer_id}/restore",
        restore,
        WRITERS,
        "Bring back an archived customer with its devices, variables and contacts",
        response=OBJECT,
    ),
]
