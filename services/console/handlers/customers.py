"""The customers, one customer's page (devices, contacts versions, rollback) and the
directory search."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import asyncpg
from aiohttp import web

from services.console.handlers.common import Audited, _audited, _bad, _pool, _sources, render
from services.console.state import PREFIX, SETTINGS_KEY
from services.core.db import acquire
from services.core.identity import printable
from services.core.inventory import InventoryRepository


async def customers(request: web.Request) -> web.Response:
    async with acquire(_pool(request)) as connection:
        found = await InventoryRepository(connection).list_customers()
    return render(request, "customers.html", customers=[asdict(c) for c in found])


async def customer(request: web.Request) -> web.Response:
    customer_id = request.match_info["customer_id"]
    pool = _pool(request)
    async with acquire(pool) as connection:
        found = await InventoryRepository(connection).get_customer(customer_id)
    if found is None:
        raise web.HTTPNotFound(text=f"no customer {printable(customer_id, 64)}\n")
    rows, total = await _sources(request).fleet(
        pool,
        request.app[SETTINGS_KEY],
        {"customer": found.id, "limit": 200, "offset": 0},
    )
    versions = await _sources(request).contacts_versions(pool, found.id)
    data = asdict(found)
    for secret in ("registration_password", "login_password"):
        data[secret] = data[secret] is not None
    return render(
        request,
        "customer.html",
        customer=data,
        devices=rows,
        total=total,
        versions=versions,
        done=request.query.get("done", ""),
    )


async def contacts_rollback(request: web.Request) -> web.StreamResponse:
    customer_id = request.match_info["customer_id"]
    form = await request.post()
    raw = str(form.get("version", ""))
    if not re.fullmatch(r"\d{1,9}", raw):
        raise _bad("version", "must be a whole number")
    version = int(raw)

    async def run(connection: asyncpg.Connection) -> Audited:
        previous, problem = await _sources(request).contacts_rollback(
            connection, customer_id, version
        )
        if problem is not None:
            status, why = problem
            if status == 404:
                raise web.HTTPNotFound(text=f"{why}\n")
            raise web.HTTPConflict(text=f"{why}\n")
        return {"contacts_version": previous}, {"contacts_version": version}

    await _audited(request, "contacts-rollback", "customer", customer_id, run)
    raise web.HTTPSeeOther(f"{PREFIX}/customers/{customer_id}?done=rollback")


async def directory(request: web.Request) -> web.Response:
    search = _sources(request).directory_search
    customer_id = request.query.get("customer", "").strip()[:64]
    text = request.query.get("q", "").strip()[:64]
    results: list[dict[str, Any]] | None = None
    error = ""
    if search is not None and customer_id and text:
        found = await search(_pool(request), request.app[SETTINGS_KEY], customer_id, text)
        if found is None:
            error = f"no customer {customer_id}"
        else:
            results = found
    async with acquire(_pool(request)) as connection:
        known = await InventoryRepository(connection).list_customers()
    return render(
        request,
        "directory.html",
        available=search is not None,
        customers=[c.id for c in known],
        customer_id=customer_id,
        text=text,
        results=results,
        error=error,
    )
