"""The events service's part of the node's metrics: per syslog destination the backlog, the age
of the oldest undelivered event and the delivered count, as PostgreSQL has them (cursor vs.
newest event), so every node reports them, not only the one that forwards. Run by the node
collector (``core.metrics``), never per scrape."""

from __future__ import annotations

import asyncpg

from services.core.metrics import Metrics, seconds_since
from services.events.delivery import DeliveryRepository


async def destinations_source(connection: asyncpg.Connection, metrics: Metrics) -> None:
    for cursor in await DeliveryRepository(connection).cursors():
        metrics.events_backlog.labels(cursor.name).set(cursor.backlog)
        metrics.events_oldest.labels(cursor.name).set(seconds_since(cursor.oldest_undelivered_at))
        metrics.events_delivered.labels(cursor.name).set(cursor.delivered_total)
