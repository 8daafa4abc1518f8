"""The admin REST API: ``/api/v1/`` JSON over HTTPS with Basic credentials or bearer tokens."""

from __future__ import annotations

from aiohttp import web

from services.admin.handlers import ENDPOINTS, SETTINGS_KEY
from services.core.api import VERIFIED_CACHE_KEY, add_endpoints
from services.core.auth import VerifiedCache
from services.core.config import Settings


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS_KEY] = settings
    app[VERIFIED_CACHE_KEY] = VerifiedCache()
    add_endpoints(app, ENDPOINTS)
    return app
