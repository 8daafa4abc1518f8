"""The update service's part of the node's metrics: devices by state and the earliest device
certificate expiry (read by the node collector, ``core.metrics``, every
``admin.metrics_interval`` seconds), and the polls-by-result counter (a middleware of the
update application, so the poll handlers stay as they are)."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from services.core.metrics import Metrics, Source
from services.core.unknown import UPDATE

DEVICE_STATES = ("in_sync", "out_of_sync", "stale", "unknown")


class DeviceGaugeRepository:
    """Cluster-wide counts for the gauges; read-only, one statement."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def states(self, stale_after_seconds: float) -> tuple[dict[str, int], datetime | None]:
        """Inventory devices by state (stale: not seen for ``stale_after_seconds`` or never,
        as ``devices list --stale``), unknown devices that polled update.txt (not the
        redirect's sightings), and when the first device
        certificate runs out (the newest unrevoked one of every device counts)."""
        row = await self._db.fetchrow(
            """
            WITH seen AS (
                SELECT s.in_sync,
                       s.polls > 0 AND s.last_seen >= now() - make_interval(secs => $1) AS recent
                FROM devices d LEFT JOIN device_status s ON s.mac = d.mac
            )
            SELECT count(*) FILTER (WHERE recent AND in_sync) AS in_sync,
                   count(*) FILTER (WHERE recent AND NOT in_sync) AS out_of_sync,
                   count(*) FILTER (WHERE recent IS NOT TRUE) AS stale,
                   (SELECT count(*) FROM unknown_devices WHERE service = $2) AS unknown,
                   (SELECT min(latest) FROM (
                        SELECT max(not_after) AS latest FROM ca_certificates
                        WHERE kind = 'device' AND revoked_at IS NULL AND device_mac IS NOT NULL
                        GROUP BY device_mac) AS newest) AS device_expiry
            FROM seen
            """,
            stale_after_seconds,
            UPDATE,
        )
        assert row is not None
        return {state: int(row[state]) for state in DEVICE_STATES}, row["device_expiry"]


def devices_source(poll_interval_minutes: int) -> Source:
    stale_after = 3 * 60.0 * poll_interval_minutes

    async def source(connection: asyncpg.Connection, metrics: Metrics) -> None:
        states, expiry = await DeviceGaugeRepository(connection).states(stale_after)
        for state, count in states.items():
            metrics.devices.labels(state).set(count)
        if expiry is not None:
            metrics.certificate_expiry.labels("device", "earliest").set(expiry.timestamp())

    return source


class UnrenderedReply(web.Response):
    """A 200 of comments to a device whose script cannot be rendered: the device must not
    retry into a loop, the operator's metrics count an error."""


def _result(response: web.StreamResponse) -> str:
    if isinstance(response, UnrenderedReply):
        return "error"
    if response.status >= 500:
        return "error"
    if response.status >= 400:
        return "refused"
    body = getattr(response, "body", None)
    if isinstance(body, bytes) and any(
        line.strip() and not line.lstrip().startswith(b"#") for line in body.splitlines()
    ):
        return "script"
    return "nothing_to_do"


def count_polls(metrics: Metrics, kinds: dict[Handler, str]) -> Middleware:
    """Counts the polls answered by the handlers in ``kinds`` (handler -> kind) by result."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        kind = kinds.get(request.match_info.handler)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if kind is not None:
                metrics.polls.labels(kind, _result(exc)).inc()
            raise
        except Exception:
            if kind is not None:
                metrics.polls.labels(kind, "error").inc()
            raise
        if kind is not None:
            metrics.polls.labels(kind, _result(response)).inc()
        return response

    return middleware
