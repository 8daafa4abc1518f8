"""The backups, firmware and system pages."""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict

from aiohttp import web

from services.console.handlers.common import _pool, _sources, render
from services.console.repository import database_clients
from services.console.state import MIGRATIONS_KEY, SETTINGS_KEY
from services.core.db import acquire, migration_status
from services.core.inventory import InventoryRepository


async def backups(request: web.Request) -> web.Response:
    overview = await _sources(request).backup_overview(_pool(request), request.app[SETTINGS_KEY])
    return render(request, "backups.html", **overview)


async def firmware(request: web.Request) -> web.Response:
    store = await _sources(request).firmware_store(request.app[SETTINGS_KEY], _pool(request))
    builds = await _sources(request).firmware_builds(_pool(request))
    return render(request, "firmware.html", store=store, builds=builds)


def _version() -> str:
    try:
        return importlib.metadata.version("pbxfront")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def system(request: web.Request) -> web.Response:
    pool = _pool(request)
    settings = request.app[SETTINGS_KEY]
    async with acquire(pool) as connection:
        frontends = await InventoryRepository(connection).list_frontends()
        migrations = await migration_status(connection, request.app[MIGRATIONS_KEY])
        server_version = await connection.fetchval("SHOW server_version")
        clients = await database_clients(connection)
    destinations = await _sources(request).event_destinations(pool)
    return render(
        request,
        "system.html",
        frontends=[asdict(f) for f in frontends],
        this_frontend=settings.frontend,
        clients=[asdict(c) for c in clients],
        migrations=migrations,
        destinations=destinations,
        version=_version(),
        postgres=server_version,
        listeners={
            name: {"host": listener.host, "port": listener.port, "services": listener.services}
            for name, listener in settings.listeners.items()
        },
    )
