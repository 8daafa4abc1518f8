"""The admin REST API: ``/api/v1/`` JSON over HTTPS with Basic credentials or bearer tokens."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from services.admin.fleet import FLEET_ENDPOINTS
from services.admin.handlers import ENDPOINTS, ENDPOINTS_KEY, SETTINGS_KEY
from services.core.api import VERIFIED_CACHE_KEY, Endpoint, add_endpoints
from services.core.auth import VerifiedCache
from services.core.config import Settings


def create_app(settings: Settings, extra: Sequence[Endpoint] = ()) -> web.Application:
    """The admin API; ``extra`` are endpoints other services contribute (composed by
    services/serve.py, so no service imports another). The OpenAPI document covers all."""
    app = web.Application()
    endpoints = [*ENDPOINTS, *FLEET_ENDPOINTS, *extra]
    app[SETTINGS_KEY] = settings
    app[VERIFIED_CACHE_KEY] = VerifiedCache()
    app[ENDPOINTS_KEY] = endpoints
    add_endpoints(app, endpoints)
    return app
