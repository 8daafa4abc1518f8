"""The directory service as the runner sees it: a stream service, not an aiohttp application
(LDAP is not HTTP). ``services/serve.py`` registers :func:`create_service` under "directory"."""

from __future__ import annotations

from services.core.config import Settings
from services.core.metrics import Metrics
from services.directory.server import DirectoryServer


def create_service(settings: Settings, metrics: Metrics | None = None) -> DirectoryServer:
    """One per process; the runner starts it on every listener that names "directory"."""
    return DirectoryServer(settings.directory, metrics, settings.limits)
