"""The backup service's part of the operator console (composed by serve.py).

Plain async functions returning plain values. Secrets are redacted with the archive's own
:class:`Redaction` unless the caller passes ``show_secrets`` (the console checks the admin role
and logs it, as the archive API does).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.backup.diff import Redaction, redact_content
from services.backup.normalize import BINARY, decode, printable_text, split_lines
from services.backup.repository import ArchiveRepository
from services.core.config import Settings


def _redaction(settings: Settings) -> Redaction:
    return Redaction.build(settings.backup.secret_options, settings.backup.secret_var_flags)


async def versions(pool: asyncpg.Pool, mac: str, limit: int = 50) -> list[dict[str, Any]]:
    async with pool.acquire() as connection:
        found = await ArchiveRepository(connection).versions(mac, limit=limit)
    return [v.as_json() for v in found]


def _lines(content: bytes, encoding: str) -> list[str] | None:
    if encoding == BINARY:
        return None
    return [printable_text(line) for line in split_lines(decode(content))]


async def diff_sides(
    pool: asyncpg.Pool,
    settings: Settings,
    mac: str,
    old_id: int | None,
    new_id: int | None,
    show_secrets: bool,
) -> dict[str, Any] | None:
    """Both sides of a comparison as lines (None for a binary side); default: the latest
    version against the one before. None when the device has fewer than two versions or an
    id is not one of its versions."""
    async with pool.acquire() as connection:
        repository = ArchiveRepository(connection)
        device = await repository.device(mac)
        if device is None or device.latest_version is None:
            return None
        new = await repository.version(mac, new_id if new_id is not None else device.latest_version)
        if new is None:
            return None
        if old_id is None:
            previous = await repository.versions(mac, limit=1, before=new.id)
            if not previous:
                return None
            old_id = previous[0].id
        old = await repository.version(mac, old_id)
        if old is None:
            return None
        old_content = await repository.content(old.content_sha256)
        new_content = await repository.content(new.content_sha256)
    if not show_secrets:
        redaction = _redaction(settings)
        old_content = redact_content(old_content, redaction)
        new_content = redact_content(new_content, redaction)
    return {
        "hardware_id": device.hardware_id,
        "old": {**old.as_json(), "lines": _lines(old_content, old.encoding)},
        "new": {**new.as_json(), "lines": _lines(new_content, new.encoding)},
        "secrets_shown": show_secrets,
    }


async def overview(pool: asyncpg.Pool, settings: Settings) -> dict[str, Any]:
    """The Backups page: newest versions, newest alerts, devices silent for too long."""
    now = datetime.now(UTC)
    older_than = now - timedelta(hours=settings.backup.stale_after_hours)
    async with pool.acquire() as connection:
        repository = ArchiveRepository(connection)
        recent = await repository.recent_versions(50)
        alerts = await repository.alerts(limit=50)
        stale = await repository.stale_overview(older_than, 200)
    return {
        "recent": [
            {"hardware_id": hardware_id, "customer": customer, **version.as_json()}
            for hardware_id, customer, version in recent
        ],
        "alerts": [a.as_json() for a in alerts],
        "stale": [d.as_json(now) for d in stale],
        "stale_after_hours": settings.backup.stale_after_hours,
    }
