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
The package's public face is :class:`ConfigError` and what each module lists in its
``__all__``.
"""

from __future__ import annotations

from services.core.config import devices, load, node, provider
from services.core.config.base import ConfigError
from services.core.config.devices import *  # noqa: F403
from services.core.config.load import *  # noqa: F403
from services.core.config.node import *  # noqa: F403
from services.core.config.provider import *  # noqa: F403

# The package offers what each module's __all__ lists (asyncio's pattern).
__all__ = ["ConfigError"]
__all__ += devices.__all__
__all__ += load.__all__
__all__ += node.__all__
__all__ += provider.__all__
