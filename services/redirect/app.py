"""The redirect service's applications.

Two parts with different audiences:

- the device part (``/redirect.php``, ``/init``, ``redirect.extra_paths``) for factory-new
  devices on the public redirect listener; every answer is ``#`` comment lines;
- the provider API (``/api/v1/redirect/…``, HMAC-signed JSON) for the admin listener.

:func:`create_app` carries both, so mounting "redirect" on the redirect listener and on the admin
listener serves each audience where it belongs (the device paths on the admin listener are
harmless; the API on the public listener is still signed). :func:`create_device_app` and
:func:`create_api_app` are the parts alone, for a composition that keeps the API off the public
listener entirely (see ``services/serve.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from services.core.batch import BackgroundBatches
from services.core.config import Settings
from services.core.http import COMMENT_ERRORS_KEY, mount_service
from services.core.ratelimit import AddressLimiter
from services.redirect.handlers import (
    HANDOVERS_KEY,
    LIMITER_KEY,
    PURGE_INTERVAL,
    PURGE_KEY,
    SETTINGS_KEY,
    Periodic,
)
from services.redirect.repository import Handover, HandoverRepository
from services.redirect.routes import add_api_routes, add_device_routes


def create_device_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS_KEY] = settings
    app[LIMITER_KEY] = AddressLimiter(
        settings.redirect.unknown_burst, settings.redirect.unknown_per_second
    )
    # Devices read every answer line as a command: errors become `#` lines.
    app[COMMENT_ERRORS_KEY] = True
    app[HANDOVERS_KEY] = BackgroundBatches("redirect hand-over log", _write_handovers)
    app.cleanup_ctx.append(_handover_log_ctx)
    add_device_routes(app, settings)
    return app


async def _write_handovers(connection: asyncpg.Connection, handovers: list[Handover]) -> None:
    await HandoverRepository(connection).record_handovers(handovers)


async def _handover_log_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[HANDOVERS_KEY].close()


def create_api_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS_KEY] = settings
    app[PURGE_KEY] = Periodic(PURGE_INTERVAL)
    add_api_routes(app)
    return app


def create_app(settings: Settings) -> web.Application:
    """Both parts; each keeps its own error style (comments for devices, JSON for the API)."""
    app = web.Application()
    mount_service(app, create_device_app(settings))
    mount_service(app, create_api_app(settings))
    return app
