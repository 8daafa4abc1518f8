"""The events service: intake on the device listeners, forwarding to syslog, retention, and the
admin API.

- :func:`create_app` — the device side (``POST /events`` and ``events.paths``), plus one
  forwarder per configured syslog destination and the retention job;
- :func:`create_admin_app` — ``/api/v1/events/…`` (mounted into the admin listener by
  ``serve.py``).

Everything in the background (the group-commit writer, the forwarders, retention, the metrics
refresh) is built with the application from the node's pool and starts with it, not with the
first request: after a restart the backlog must flow and retention run even if no device sends
anything. They use their own connections (a session
advisory lock per destination needs a dedicated one), from the same DSN as the pool: the
configured one, or the embedded PostgreSQL's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial

import asyncpg
from aiohttp import web

from services.core.api import endpoints_app
from services.core.config import Settings
from services.core.db import database_dsn
from services.core.deviceauth import DeviceAuth
from services.core.metrics import Metrics
from services.core.resources import Resources
from services.events.forward import Forwarder, ForwardStatus
from services.events.gauges import destinations_source
from services.events.handlers import (
    ENDPOINTS,
    SETTINGS_KEY,
    STATE_KEY,
    EventQuota,
    EventsState,
    receive_event,
)
from services.events.retention import retention_job
from services.events.syslog import Destination, destinations
from services.events.writer import GroupWriter

log = logging.getLogger(__name__)


async def _writer_ctx(
    state: EventsState, pool: asyncpg.Pool, _app: web.Application
) -> AsyncIterator[None]:
    state.writer.start(pool)
    yield
    await state.writer.close()


async def _forwarders_ctx(
    settings: Settings,
    targets: list[Destination],
    statuses: list[ForwardStatus],
    _app: web.Application,
) -> AsyncIterator[None]:
    if not targets:
        yield
        return
    async with database_dsn(settings) as dsn:
        forwarders = [
            Forwarder(target, settings.events, dsn, status)
            for target, status in zip(targets, statuses, strict=True)
        ]
        for forwarder in forwarders:
            forwarder.start()
        try:
            yield
        finally:
            for forwarder in forwarders:
                await forwarder.close()


def _count_commit(metrics: Metrics, stored: int, repeats: int) -> None:
    metrics.events_commits.inc()
    metrics.events_received.labels("stored").inc(stored)
    metrics.events_received.labels("deduplicated").inc(repeats)


def create_app(settings: Settings, resources: Resources) -> web.Application:
    """The device side: event intake, syslog forwarding, retention."""
    events = settings.events
    # Checked here so `serve` stops at start-up with a message naming the URL.
    targets = destinations(events.destinations)
    pool = resources.require_pool("the events service")
    app = web.Application()
    app[SETTINGS_KEY] = settings
    statuses = [ForwardStatus(target.name) for target in targets]
    retention = retention_job(settings, pool)
    state = EventsState(
        settings=settings,
        auth=DeviceAuth(pool, events.digest_algorithms, events.digest_nonce_lifetime),
        writer=GroupWriter(
            window=events.commit_window,
            batch=events.commit_batch,
            forward_repeats=events.forward_repeats,
            on_commit=partial(_count_commit, resources.metrics),
        ),
        forwarders=statuses,
        retention=retention,
        quota=EventQuota(events.quota_events_per_minute, events.quota_bytes_per_minute),
    )
    app[STATE_KEY] = state
    resources.metrics.add_source("events destinations", destinations_source)
    app.cleanup_ctx.append(state.auth.context)
    app.cleanup_ctx.append(partial(_writer_ctx, state, pool))
    app.cleanup_ctx.append(partial(_forwarders_ctx, settings, targets, statuses))
    app.cleanup_ctx.append(retention.context)
    for path in events.paths:
        app.router.add_route("POST", path, receive_event)
        app.router.add_route("GET", path, receive_event)
    return app


def create_admin_app(settings: Settings) -> web.Application:
    """``/api/v1/events/…`` on the admin listener."""
    app = endpoints_app("events", ENDPOINTS)
    app[SETTINGS_KEY] = settings
    return app
