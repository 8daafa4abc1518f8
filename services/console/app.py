"""The operator console: server-rendered pages under ``/ui/`` on the admin listener.

It reads and acts only through what :class:`Sources` hands it: core repositories (accounts,
inventory, migrations) and the functions each service exposes for it (``services/*/console.py``),
composed by services/serve.py, so this package imports no other service and has no SQL of its
own beyond its sessions (repository.py).
"""

from __future__ import annotations

import importlib.resources

import jinja2
from aiohttp import web

from services.console import handlers, security
from services.console.repository import SessionRepository
from services.console.state import (
    ACCOUNT_LIMITER_KEY,
    ADDRESS_LIMITER_KEY,
    DEVICE_TYPES_KEY,
    MIGRATIONS_KEY,
    PREFIX,
    PRUNE_KEY,
    SETTINGS_KEY,
    SOURCES_KEY,
    STATIC_KEY,
    TEMPLATES_KEY,
    VERIFIED_KEY,
    Remembered,
    Sources,
)
from services.core.auth import VerifiedCache
from services.core.config import Settings
from services.core.db import load_migrations
from services.core.periodic import PeriodicJob
from services.core.ratelimit import AddressLimiter

_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def _read_package_files(folder: str) -> dict[str, bytes]:
    """Every file of a package folder, read once at start-up (no file I/O per request)."""
    root = importlib.resources.files("services.console").joinpath(folder)
    return {item.name: item.read_bytes() for item in root.iterdir() if item.is_file()}


def _environment() -> jinja2.Environment:
    templates = {
        name: content.decode("utf-8") for name, content in _read_package_files("templates").items()
    }
    environment = jinja2.Environment(
        loader=jinja2.DictLoader(templates),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    handlers.install_filters(environment)
    return environment


def create_app(settings: Settings, sources: Sources) -> web.Application:
    app = web.Application(
        middlewares=[
            security.headers_middleware,
            handlers.error_pages,
            security.session_middleware,
        ]
    )
    app[SETTINGS_KEY] = settings
    app[SOURCES_KEY] = sources
    app[TEMPLATES_KEY] = _environment()
    app[STATIC_KEY] = {
        name: (content, _STATIC_TYPES.get(name[name.rfind(".") :], "application/octet-stream"))
        for name, content in _read_package_files("static").items()
    }
    admin = settings.admin
    app[ADDRESS_LIMITER_KEY] = AddressLimiter(
        admin.console_login_failure_burst, admin.console_login_failure_per_second
    )
    app[ACCOUNT_LIMITER_KEY] = AddressLimiter(
        admin.console_login_failure_burst, admin.console_login_failure_per_second
    )
    app[VERIFIED_KEY] = VerifiedCache()
    app[MIGRATIONS_KEY] = load_migrations()
    app[DEVICE_TYPES_KEY] = Remembered(ttl=60.0)
    idle = admin.console_idle_timeout
    job = PeriodicJob(
        "console session pruning", 600.0, lambda pool: SessionRepository(pool).prune(idle)
    )
    app[PRUNE_KEY] = job
    app.cleanup_ctx.append(job.context)
    handlers.add_routes(app, PREFIX)
    return app
