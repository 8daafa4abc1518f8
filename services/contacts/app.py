"""The contacts service: two applications.

- :func:`create_app` — the customers' drop, ``PUT``/``GET
  /DRIVE/CF0/directory/<customer-id>/contacts.csv`` (mounted on the device listeners);
- :func:`create_admin_app` — ``/api/v1/contacts/…`` (mounted into the admin listener's
  application by ``serve.py``).
"""

from __future__ import annotations

from aiohttp import web

from services.contacts.handlers import (
    CHECKS_KEY,
    DIRECTORY_PREFIX,
    ENDPOINTS,
    FILE_NAME,
    SETTINGS_KEY,
    VERIFIED_KEY,
    UploadChecks,
    contacts_resource,
    folder,
)
from services.core.api import endpoints_app
from services.core.auth import VerifiedCache
from services.core.config import Settings
from services.core.http import BODY_LIMIT_KEY


def create_app(settings: Settings) -> web.Application:
    """The device side: the write-only directory folder."""
    app = web.Application()
    app[SETTINGS_KEY] = settings
    # Outlook exports of big customers exceed the listener's default limit.
    app[BODY_LIMIT_KEY] = settings.contacts.max_body_bytes
    app[CHECKS_KEY] = UploadChecks(settings.contacts.max_concurrent_checks)
    app[VERIFIED_KEY] = VerifiedCache()
    app.router.add_route("*", DIRECTORY_PREFIX + "/{customer}/" + FILE_NAME, contacts_resource)
    # Everything else below the folder (listings, other names, odd ids): one answer.
    app.router.add_route("*", DIRECTORY_PREFIX + "{tail:(/.*)?}", folder)
    return app


def create_admin_app(settings: Settings) -> web.Application:
    """The operator side: ``/api/v1/contacts/…`` (admin listener)."""
    app = endpoints_app("contacts", ENDPOINTS)
    app[SETTINGS_KEY] = settings
    return app
