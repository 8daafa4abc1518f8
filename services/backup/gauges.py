"""The backup service's part of the node's metrics: stale backups and stored versions, read by
the node collector (``core.metrics``) every ``admin.metrics_interval`` seconds, and the
stored/unchanged counter of the device-side PUTs."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from services.core.metrics import Metrics


class BackupGaugeRepository:
    """Cluster-wide counts for the gauges; read-only, one statement."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def counts(self) -> tuple[int, int]:
        """(devices whose stale alert is raised and not cleared by a PUT, versions stored)."""
        row = await self._db.fetchrow(
            """SELECT (SELECT count(*) FROM backup_devices
                       WHERE stale_alerted_at IS NOT NULL) AS stale,
                      (SELECT count(*) FROM backup_versions) AS versions"""
        )
        assert row is not None
        return int(row["stale"]), int(row["versions"])


async def backups_source(connection: asyncpg.Connection, metrics: Metrics) -> None:
    stale, versions = await BackupGaugeRepository(connection).counts()
    metrics.backups_stale.set(stale)
    metrics.backups_stored.set(versions)


def count_puts(metrics: Metrics) -> Middleware:
    """A middleware of the device app: 201 = a new version stored, 200 = unchanged."""
    stored = metrics.backup_puts.labels("stored")
    unchanged = metrics.backup_puts.labels("unchanged")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.method in ("PUT", "POST"):
            if response.status == 201:
                stored.inc()
            elif response.status == 200:
                unchanged.inc()
        return response

    return middleware
