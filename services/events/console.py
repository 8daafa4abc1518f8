"""The events service's part of the operator console (composed by serve.py): plain values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from services.events.delivery import DeliveryRepository
from services.events.repository import EventRepository

_FIELDS = (
    "id",
    "received_at",
    "kind",
    "event_time",
    "code",
    "severity",
    "syslog_severity",
    "source",
    "text",
    "device_mac",
    "device_hardware_id",
    "device_ip",
    "customer",
    "proof",
    "active",
    "repeats",
    "last_seen_at",
    "cleared_at",
)


async def events(pool: asyncpg.Pool, filters: dict[str, Any]) -> list[dict[str, Any]]:
    """Events newest first (oldest first from ``after``); ``filters`` are
    EventRepository.query's keyword arguments."""
    async with pool.acquire() as connection:
        rows = await EventRepository(connection).query(**filters)
    return [{key: row[key] for key in _FIELDS} for row in rows]


async def destinations(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Syslog destinations with what they still have to deliver."""
    async with pool.acquire() as connection:
        cursors = await DeliveryRepository(connection).cursors()
    result: list[dict[str, Any]] = []
    for cursor in cursors:
        oldest: datetime | None = cursor.oldest_undelivered_at
        result.append(
            {
                "name": cursor.name,
                "url": cursor.url,
                "delivered_id": cursor.delivered_id,
                "delivered_total": cursor.delivered_total,
                "backlog": cursor.backlog,
                "oldest_undelivered_at": oldest,
                "holder": cursor.holder,
                "last_error": cursor.last_error,
                "last_error_at": cursor.last_error_at,
                "updated_at": cursor.updated_at,
            }
        )
    return result
