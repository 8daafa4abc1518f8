"""Typed, layered settings: defaults < TOML files (in order) < ``PBXFRONT_*`` env < CLI ``--set``.

Every key is a field of a frozen dataclass below; ``config/pbxfront.example.toml`` documents
each one (a test keeps the two in step). Loading validates types and ranges and fails with a
:class:`ConfigError` whose message names the key path
(``listeners.devices.port: must be 0..65535``).
Nothing here touches the network, the database or the file system beyond reading the TOML files.

The package, bottom up (each module imports only those above it): ``base`` (:class:`ConfigError`
and the field checks), the sections in ``node`` (listeners, TLS, database, limits, logging, demo,
admin, inventory), ``devices`` (update, redirect, backup, events) and ``provider`` (contacts,
directory, Frontend plan, CA), then ``load`` (:class:`Settings`, reading the layers, validation).
The names below are the package's public face.
"""

from __future__ import annotations

from services.core.config.base import ConfigError
from services.core.config.devices import (
    BackupSettings,
    EventsSettings,
    RedirectSettings,
    UpdateSettings,
)
from services.core.config.load import (
    ENV_PREFIX,
    ENV_RESERVED,
    ENV_SEPARATOR,
    Settings,
    cli_overrides,
    config_files_from_env,
    documented_keys,
    env_overrides,
    load_settings,
    read_toml,
    validate,
)
from services.core.config.node import (
    SERVICE_NAMES,
    STREAM_SCHEMES,
    AdminSettings,
    DatabaseSettings,
    DemoSettings,
    InventorySettings,
    LimitSettings,
    ListenerSettings,
    LoggingSettings,
    TlsSettings,
)
from services.core.config.provider import (
    DEFAULT_SHARED_MAPS,
    CaSettings,
    ContactsSettings,
    DirectorySettings,
    FrontendPlanSettings,
    parse_shared_map,
)

__all__ = [
    "DEFAULT_SHARED_MAPS",
    "ENV_PREFIX",
    "ENV_RESERVED",
    "ENV_SEPARATOR",
    "SERVICE_NAMES",
    "STREAM_SCHEMES",
    "AdminSettings",
    "BackupSettings",
    "CaSettings",
    "ConfigError",
    "ContactsSettings",
    "DatabaseSettings",
    "DemoSettings",
    "DirectorySettings",
    "EventsSettings",
    "FrontendPlanSettings",
    "InventorySettings",
    "LimitSettings",
    "ListenerSettings",
    "LoggingSettings",
    "RedirectSettings",
    "Settings",
    "TlsSettings",
    "UpdateSettings",
    "cli_overrides",
    "config_files_from_env",
    "documented_keys",
    "env_overrides",
    "load_settings",
    "parse_shared_map",
    "read_toml",
    "validate",
]
