"""The backup archive API (admin listener, :data:`ENDPOINTS`): devices, versions, one version,
diffs, alerts, pruning. Secrets are redacted unless an admin asks for them (``show_secrets=1``),
which is logged and audited."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from services.backup.diff import redact_content
from services.backup.handlers import NORMALIZER_KEY, REDACTION_KEY, SETTINGS_KEY
from services.backup.normalize import BINARY
from services.backup.repository import ArchiveRepository, BackupDevice
from services.backup.versions import load_version, render_diff, versions_to_compare
from services.core import audit, errors
from services.core.api import (
    OBJECT,
    Endpoint,
    current_account,
    int_query,
    json_response,
    openapi_endpoint,
    pool_of,
    request_actor,
)
from services.core.auth import Role
from services.core.config import Settings
from services.core.db import acquire
from services.core.http import security_event
from services.core.identity import parse_device, printable

READERS = frozenset({Role.ADMIN, Role.OPERATOR})
ADMINS = frozenset({Role.ADMIN})


async def _device(repository: ArchiveRepository, value: str) -> BackupDevice:
    mac, hardware_id = parse_device(value)
    device = await repository.device(mac, hardware_id)
    if device is None:
        raise errors.NotFound(f"no backups of {printable(value)}")
    return device


def _version_id(raw: str, name: str) -> int | None:
    """A version id, or None for ``latest``."""
    if raw in ("", "latest"):
        return None
    if not re.fullmatch(r"\d{1,18}", raw):
        raise errors.Invalid(f"{name}: a version id or 'latest'")
    return int(raw)


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "")
    if raw.lower() in ("", "0", "false", "no"):
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    raise errors.Invalid(f"{name}: must be 1 or 0")


async def _secrets_allowed(request: web.Request, device: BackupDevice, versions: str) -> bool:
    """Whether to show secrets: asked for, by an admin (then logged and audited), else
    Forbidden."""
    if not _flag(request, "show_secrets"):
        return False
    account = current_account(request)
    if Role.ADMIN not in account.roles:
        security_event(request, "forbidden", account=account.name, path=request.path)
        raise errors.Forbidden("show_secrets needs the admin role")
    security_event(
        request, "secrets-shown", account=account.name, device=device.mac, versions=versions
    )
    async with acquire(pool_of(request)) as connection, connection.transaction():
        await audit.record(
            connection,
            actor=request_actor(request),
            action="backup.show-secrets",
            object_type="backup",
            object_id=device.mac,
            after={"versions": versions},
        )
    return True


async def list_devices(request: web.Request) -> web.Response:
    customer = request.query.get("customer") or None
    limit = int_query(request, "limit", 1000, 1, 10000)
    offset = int_query(request, "offset", 0, 0, 10**9)
    async with acquire(pool_of(request)) as connection:
        devices = await ArchiveRepository(connection).devices(
            customer=customer, limit=limit, offset=offset
        )
    now = datetime.now(UTC)
    return json_response(
        {"devices": [d.as_json(now) for d in devices], "limit": limit, "offset": offset}
    )


async def get_device(request: web.Request) -> web.Response:
    async with acquire(pool_of(request)) as connection:
        device = await _device(ArchiveRepository(connection), request.match_info["device"])
    return json_response(device.as_json(datetime.now(UTC)))


async def list_versions(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", 50, 1, 1000)
    before_raw = request.query.get("before", "")
    before = _version_id(before_raw, "before") if before_raw else None
    async with acquire(pool_of(request)) as connection:
        repository = ArchiveRepository(connection)
        device = await _device(repository, request.match_info["device"])
        versions = await repository.versions(device.mac, limit=limit, before=before)
    next_before = versions[-1].id if len(versions) == limit else None
    return json_response(
        {
            "device": device.mac,
            "hardware_id": device.hardware_id,
            "versions": [v.as_json() for v in versions],
            "next_before": next_before,
        }
    )


async def get_version(request: web.Request) -> web.Response:
    redaction = request.app[REDACTION_KEY]
    async with acquire(pool_of(request)) as connection:
        repository = ArchiveRepository(connection)
        device = await _device(repository, request.match_info["device"])
        version_id = _version_id(request.match_info["version"], "version")
        version, content = await load_version(repository, device, version_id)
    if not await _secrets_allowed(request, device, str(version.id)):
        content = redact_content(content, redaction)
    return web.Response(
        body=content,
        content_type="application/octet-stream" if version.encoding == BINARY else "text/plain",
        headers={"X-Backup-Version": str(version.id), "X-Backup-Encoding": version.encoding},
    )


async def get_diff(request: web.Request) -> web.Response:
    all_lines = _flag(request, "all_lines")
    async with acquire(pool_of(request)) as connection:
        repository = ArchiveRepository(connection)
        device = await _device(repository, request.match_info["device"])
        old_id = _version_id(request.query.get("from", ""), "from")
        new_id = _version_id(request.query.get("to", ""), "to")
        pair = await versions_to_compare(repository, device, old_id, new_id)
    show = await _secrets_allowed(request, device, f"{pair.old[0].id},{pair.new[0].id}")
    text = await asyncio.to_thread(
        render_diff,
        device,
        pair,
        normalizer=None if all_lines else request.app[NORMALIZER_KEY],
        redaction=None if show else request.app[REDACTION_KEY],
    )
    return web.Response(
        text=text,
        content_type="text/plain",
        headers={"X-Backup-From": str(pair.old[0].id), "X-Backup-To": str(pair.new[0].id)},
    )


async def list_alerts(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", 100, 1, 10000)
    after_raw = request.query.get("after", "")
    after = _version_id(after_raw, "after") if after_raw else None
    async with acquire(pool_of(request)) as connection:
        alerts = await ArchiveRepository(connection).alerts(limit=limit, after=after)
    return json_response({"alerts": [a.as_json() for a in alerts]})


# Set by app.py: (pool, settings, now, dry_run, customer) -> report (JSON-able).
PruneRun = Callable[[asyncpg.Pool, Settings, datetime, bool, str | None], Awaitable[dict[str, Any]]]
PRUNE_KEY: web.AppKey[PruneRun] = web.AppKey("backup_prune")


async def prune(request: web.Request) -> web.Response:
    dry_run = _flag(request, "dry_run")
    customer = request.query.get("customer") or None
    report = await request.app[PRUNE_KEY](
        pool_of(request), request.app[SETTINGS_KEY], datetime.now(UTC), dry_run, customer
    )
    return json_response(report)


TEXT_NOTE = " (text/plain)"

ENDPOINTS: list[Endpoint] = [
    openapi_endpoint(
        "pbxfront backup archive API",
        "/api/v1/backups/openapi.json",
        READERS,
        lambda _request: ENDPOINTS,
    ),
    Endpoint(
        "GET",
        "/api/v1/backups/devices",
        list_devices,
        READERS,
        "Devices with backups: last PUT, its age, last change, number of versions",
        query={
            "customer": "only this customer's devices",
            "limit": "page size (1..10000)",
            "offset": "rows to skip",
        },
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/backups/devices/{device}",
        get_device,
        READERS,
        "One device's backup state (device: MAC or hardware id)",
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/backups/devices/{device}/versions",
        list_versions,
        READERS,
        "A device's versions, newest first",
        query={
            "limit": "page size (1..1000)",
            "before": "only versions older than this id (next_before of the previous page)",
        },
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/backups/devices/{device}/versions/{version}",
        get_version,
        READERS,
        "One version as stored, secrets redacted unless show_secrets=1 (admin)" + TEXT_NOTE,
        query={"show_secrets": "1: unredacted (admin role; logged)"},
    ),
    Endpoint(
        "GET",
        "/api/v1/backups/devices/{device}/diff",
        get_diff,
        READERS,
        "Unified diff of two versions (default: latest against the one before)" + TEXT_NOTE,
        query={
            "from": "older version id",
            "to": "newer version id or latest",
            "show_secrets": "1: unredacted (admin role; logged)",
            "all_lines": "1: include the volatile lines (protocol.md §5)",
        },
    ),
    Endpoint(
        "GET",
        "/api/v1/backups/alerts",
        list_alerts,
        READERS,
        "Changed and stale backup alerts, newest first",
        query={"after": "only alerts with a larger id", "limit": "at most this many"},
        response=OBJECT,
    ),
    Endpoint(
        "POST",
        "/api/v1/backups/prune",
        prune,
        ADMINS,
        "Apply retention now (once per cluster) and raise stale alerts",
        query={"dry_run": "1: only report what would be deleted", "customer": "only this one"},
        response=OBJECT,
    ),
]
