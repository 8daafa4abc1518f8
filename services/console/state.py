"""The console's shared state: what serve.py hands it and the keys it lives under."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jinja2
from aiohttp import web

from services.console.repository import Session
from services.core.auth import VerifiedCache
from services.core.config import Settings
from services.core.db import Migration
from services.core.periodic import PeriodicJob
from services.core.ratelimit import AddressLimiter

# A source is an async function taking the pool (and, where the owner needs them, the settings)
# and plain values, returning plain values; None where this node does not offer that part.
# An action (restage, certificate_reset, adopt, contacts_rollback) takes a connection in the
# console's transaction instead, so the action and its audit row commit together.
Source = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Sources:
    """What the console may read and do, handed in by services/serve.py."""

    fleet: Source
    fleet_sorts: tuple[str, ...]
    device_types: Source
    device_status: Source
    status_history: Source
    certificate: Source
    render_script: Source
    restage: Source
    certificate_reset: Source
    unknown_devices: Source
    adopt: Source
    firmware_store: Source
    firmware_builds: Source
    backup_versions: Source
    backup_diff: Source
    backup_overview: Source
    events: Source
    event_destinations: Source
    contacts_versions: Source
    contacts_rollback: Source
    directory_search: Source | None = None


@dataclass
class Remembered:
    """A value the console re-reads at most every ``ttl`` seconds (e.g. the fleet's device
    types, which cost a scan of every device and change rarely)."""

    ttl: float
    value: Any = None
    expires: float = 0.0


PREFIX = "/ui"
SOURCES_KEY = web.AppKey("console_sources", Sources)
SETTINGS_KEY = web.AppKey("console_settings", Settings)
TEMPLATES_KEY = web.AppKey("console_templates", jinja2.Environment)
STATIC_KEY = web.AppKey("console_static", dict[str, tuple[bytes, str]])
ADDRESS_LIMITER_KEY = web.AppKey("console_address_limiter", AddressLimiter)
ACCOUNT_LIMITER_KEY = web.AppKey("console_account_limiter", AddressLimiter)
VERIFIED_KEY = web.AppKey("console_verified_cache", VerifiedCache)
PRUNE_KEY = web.AppKey("console_prune", PeriodicJob)
MIGRATIONS_KEY = web.AppKey("console_migrations", list[Migration])
DEVICE_TYPES_KEY = web.AppKey("console_device_types", Remembered)
SESSION_KEY = web.RequestKey("console_session", Session)
COOKIE_KEY = web.RequestKey("console_cookie", str)
