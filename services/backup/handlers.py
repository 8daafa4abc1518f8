"""HTTP side of the backup service: the write-only intake devices PUT to, and the archive API.

Intake (device listener): ``PUT /DRIVE/CF0/update/backup/<name>``. Who may write, in order:

1. a device proven by its client certificate (``core.identity``); the URL arguments (``sn``,
   ``hwid``) and a name that is a MAC or hardware id (``IP232-01-02-03.txt``) must name that
   same device, else 403;
2. an account with the ``event-sender`` role (HTTP Basic or Digest, RFC 7616): the device is the
   one the URL arguments or the name name (the seed's shared "HTTP client" account);
3. nobody (anonymous), only for devices of customers with ``allow_anonymous_backup``.

A device must be in the inventory. Every other method on the folder is refused with one fixed
answer, so nobody learns whether anything exists there. A 2xx is sent only after the commit.

Archive (admin listener, :data:`ENDPOINTS`): devices, versions, one version, diffs. Secrets are
redacted unless an admin asks for them (``show_secrets=1``), which is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from services.backup.diff import (
    DiffStat,
    Redaction,
    Side,
    diffstat,
    redact_content,
    unified_diff,
)
from services.backup.lookup import IntakeLookup
from services.backup.normalize import BINARY, Normalizer, compress, prepare
from services.backup.repository import (
    ArchiveRepository,
    BackupDevice,
    IntakeRepository,
    InventoryDevice,
    LatestVersion,
    SeenUnchanged,
    StoreResult,
    Upload,
    Version,
)
from services.core import audit, errors
from services.core.api import (
    Endpoint,
    current_account,
    int_query,
    json_response,
    openapi_handler,
    pool_of,
    request_actor,
)
from services.core.auth import Role
from services.core.batch import BackgroundBatches
from services.core.config import Settings
from services.core.db import acquire
from services.core.deviceauth import DeviceAuth
from services.core.http import UploadAborted, query_arguments, read_body, security_event
from services.core.identity import (
    DeviceIdentity,
    IdentityConflict,
    IdentityError,
    Proof,
    identify,
    normalize_hardware_id,
    normalize_mac,
    parse_device,
    parse_hardware_id,
    printable,
)

log = logging.getLogger(__name__)

BACKUP_PREFIX = "/DRIVE/CF0/update/backup"
# Bodies larger than this are hashed, normalised and compressed in a worker thread. Below it the
# work takes well under a millisecond (50 KB: hash 0.04 ms, normalise 0.5 ms, zlib 0.3 ms) and a
# thread's hand-over costs more than it saves (profile of `pbxfront bench backups`).
_THREAD_THRESHOLD = 64 * 1024
# A stored file name: what a device's scfg URL ends in. Never used as a path.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
WRITE_ONLY_TEXT = "the backup folder is write-only: devices PUT their configuration here\n"


SETTINGS_KEY = web.AppKey("backup_settings", Settings)
NORMALIZER_KEY = web.AppKey("backup_normalizer", Normalizer)
REDACTION_KEY = web.AppKey("backup_redaction", Redaction)
# Event-sender credentials (Basic, Digest): core.deviceauth, shared with the events service.
DEVICE_AUTH_KEY = web.AppKey("backup_device_auth", DeviceAuth)
# Uploads that repeat the latest version: answered at once, recorded in batches (app.py).
UNCHANGED_KEY: web.AppKey[BackgroundBatches[SeenUnchanged]] = web.AppKey("backup_unchanged")
# The inventory device and latest version of concurrent PUTs, one query per event-loop turn.
LOOKUP_KEY = web.AppKey("backup_lookup", IntakeLookup)
# Called with the pool on every request: starts the periodic maintenance once (app.py).


# --- intake ------------------------------------------------------------------------------------


async def write_only(request: web.Request) -> web.Response:
    """Every method but PUT, on every backup path: one fixed answer that reveals nothing."""
    return web.Response(
        status=405, text=WRITE_ONLY_TEXT, content_type="text/plain", headers={"Allow": "PUT, POST"}
    )


async def backup_resource(request: web.Request) -> web.Response:
    # protocol.md §10: PHPUS reads the body whatever the method, and devices send PUT; POST is
    # taken the same way. Every other method gets the write-only refusal.
    if request.method not in ("PUT", "POST"):
        return await write_only(request)
    return await put_backup(request)


def name_claim(name: str) -> tuple[str | None, str | None]:
    """(MAC, hardware id) when the file name (up to its first dot) is one of them."""
    stem = name.split(".", 1)[0]
    with contextlib.suppress(IdentityError):
        return normalize_mac(stem), None
    with contextlib.suppress(IdentityError):
        return None, normalize_hardware_id(stem)
    return None, None


def with_name_claim(identity: DeviceIdentity, name: str) -> DeviceIdentity:
    """Fold the device a file name names into the identity; a contradiction is refused
    (IdentityConflict for a proven device, Invalid for a claimed one)."""
    mac, hardware_id = name_claim(name)
    if mac is None and hardware_id is None:
        return identity
    named = mac or str(hardware_id)
    agrees = True
    if mac is not None:
        if identity.mac is not None:
            agrees = identity.mac == mac
        elif identity.hardware_id is not None:
            agrees = parse_hardware_id(identity.hardware_id).matches_mac(mac)
    if hardware_id is not None:
        if identity.hardware_id is not None:
            agrees = agrees and identity.hardware_id == hardware_id
        elif identity.mac is not None:
            agrees = agrees and parse_hardware_id(hardware_id).matches_mac(identity.mac)
    if not agrees:
        if identity.proven:
            raise IdentityConflict(identity.describe(), named)
        raise errors.Invalid(f"the file name names {named}, the URL arguments another device")
    proof = identity.proof if identity.proof is not Proof.ANONYMOUS else Proof.CLAIMED
    return replace(
        identity,
        proof=proof,
        mac=identity.mac or mac,
        hardware_id=identity.hardware_id or hardware_id,
    )


@dataclass(frozen=True)
class Uploader:
    device: InventoryDevice
    proof: str  # certificate | credentials | anonymous
    account: str | None = None
    # The device's latest version, read after the request arrived (None before the first).
    latest: LatestVersion | None = None


async def _inventory_device(
    request: web.Request, identity: DeviceIdentity
) -> tuple[InventoryDevice, LatestVersion | None] | None:
    return await request.app[LOOKUP_KEY].lookup(
        pool_of(request), identity.mac, identity.hardware_id
    )


def _not_in_inventory(identity: DeviceIdentity) -> errors.Forbidden:
    return errors.Forbidden(
        f"device {identity.describe()} is not in this provider's inventory; "
        "backups are kept for inventory devices only"
    )


async def identify_uploader(request: web.Request, identity: DeviceIdentity) -> Uploader:
    if identity.proven:
        found = await _inventory_device(request, identity)
        if found is None:
            raise _not_in_inventory(identity)
        return Uploader(found[0], "certificate", latest=found[1])
    header = request.headers.get("Authorization")
    if header:
        account = await request.app[DEVICE_AUTH_KEY].sender_account(
            request, pool_of(request), header
        )
        if identity.mac is None and identity.hardware_id is None:
            raise errors.Invalid(
                "name the device: ?sn=#m&hwid=#h in the URL or a file name like #h.txt"
            )
        found = await _inventory_device(request, identity)
        if found is None:
            raise _not_in_inventory(identity)
        await request.app[DEVICE_AUTH_KEY].authorize(
            request,
            pool_of(request),
            account,
            found[0].customer,
            unbound_any_customer=request.app[SETTINGS_KEY].admin.unbound_senders_any_customer,
        )
        return Uploader(found[0], "credentials", account, found[1])
    if identity.mac is not None or identity.hardware_id is not None:
        found = await _inventory_device(request, identity)
        if found is not None and found[0].allow_anonymous_backup:
            return Uploader(found[0], "anonymous", latest=found[1])
    # The same answer whether or not the device exists.
    raise await request.app[DEVICE_AUTH_KEY].unauthenticated(
        pool_of(request),
        "a device certificate or the devices' HTTP client credentials are required",
    )


@dataclass(frozen=True)
class ContentCpu:
    """The repository's CPU work, in a worker thread once the bytes are big enough to matter."""

    normalizer: Normalizer

    async def diffstat(self, previous: bytes, new: bytes) -> DiffStat:
        # Both sides are normalised (a pass each); the diff itself covers only the lines that
        # differ (diff.diffstat), so the cost is that of normalising the two.
        if len(previous) + len(new) > 2 * _THREAD_THRESHOLD:
            return await asyncio.to_thread(diffstat, previous, new, self.normalizer)
        return diffstat(previous, new, self.normalizer)

    async def compress(self, content: bytes) -> bytes:
        if len(content) > _THREAD_THRESHOLD:
            return await asyncio.to_thread(compress, content)
        return compress(content)


async def put_backup(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    name = request.match_info.get("name", "")
    if not _NAME.fullmatch(name):
        raise errors.Invalid(
            "backup name: 1-128 letters, digits and . _ - @ + (e.g. IP232-01-02-03.txt)"
        )
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    identity = with_name_claim(identify(peercert, query_arguments(request)), name)
    uploader = await identify_uploader(request, identity)
    limit = min(settings.backup.max_body_bytes, settings.limits.max_body_bytes)
    try:
        content = await read_body(request, limit)
    except UploadAborted as error:
        log.info(
            "backup upload of %s aborted after a partial body: %s; nothing stored",
            uploader.device.hardware_id,
            printable(str(error)),
        )
        raise errors.Invalid("upload aborted") from None
    if not content:
        raise errors.Invalid("empty body: PUT the device's configuration")
    # Most uploads repeat the latest version byte for byte: recognised by its hash alone, before
    # any normalising.
    now = datetime.now(UTC)
    if len(content) > _THREAD_THRESHOLD:
        content_sha256 = await asyncio.to_thread(lambda: hashlib.sha256(content).digest())
    else:
        content_sha256 = hashlib.sha256(content).digest()
    pool = pool_of(request)
    latest = uploader.latest
    if latest is not None and latest.content_sha256 == content_sha256:
        # Already stored and committed: what is left to record (seen at, put count) waits for
        # the next batch instead of a transaction of its own.
        request.app[UNCHANGED_KEY].add(SeenUnchanged(uploader.device, latest.id, now), pool)
        return _unchanged_reply(uploader, latest.id)
    normalizer = request.app[NORMALIZER_KEY]
    if len(content) > _THREAD_THRESHOLD:
        prepared = await asyncio.to_thread(prepare, content, normalizer)
    else:
        prepared = prepare(content, normalizer)
    if latest is not None and latest.normalized_sha256 == prepared.normalized_sha256:
        # Only volatile lines differ (protocol.md §5): the same version, committed; recorded
        # like a byte-for-byte repeat.
        request.app[UNCHANGED_KEY].add(SeenUnchanged(uploader.device, latest.id, now), pool)
        return _unchanged_reply(uploader, latest.id)

    upload = Upload(
        device=uploader.device,
        content=content,
        prepared=prepared,
        upload_name=name,
        proof=uploader.proof,
        account=uploader.account,
        source_address=request.remote,
    )
    async with acquire(pool) as connection:
        result = await IntakeRepository(connection).store_if_changed(
            upload, now, ContentCpu(normalizer)
        )
    return _stored_reply(uploader, prepared.encoding, result)


def _unchanged_reply(uploader: Uploader, version_id: int) -> web.Response:
    # Most uploads; the access log has each request.
    log.debug(
        "backup of %s (%s): unchanged, same as version %d",
        uploader.device.hardware_id,
        uploader.proof,
        version_id,
    )
    return web.Response(
        status=200, text=f"unchanged: same as version {version_id}\n", content_type="text/plain"
    )


def _stored_reply(uploader: Uploader, encoding: str, result: StoreResult) -> web.Response:
    device = uploader.device
    if not result.changed:
        return _unchanged_reply(uploader, result.version_id)
    flag = " (binary: contains NUL bytes)" if encoding == BINARY else ""
    if result.diffstat is not None:
        log.warning(
            "backup of %s (%s, customer %s) changed: version %d, %s lines%s",
            device.hardware_id,
            uploader.proof,
            device.customer,
            result.version_id,
            result.diffstat,
            flag,
        )
    else:
        log.info(
            "backup of %s (%s): first version %d%s",
            device.hardware_id,
            uploader.proof,
            result.version_id,
            flag,
        )
    return web.Response(
        status=201, text=f"stored as version {result.version_id}\n", content_type="text/plain"
    )


# --- the archive (admin listener) --------------------------------------------------------------

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


async def _load_version(
    repository: ArchiveRepository, device: BackupDevice, version_id: int | None
) -> tuple[Version, bytes]:
    wanted = version_id if version_id is not None else device.latest_version
    version = await repository.version(device.mac, wanted) if wanted is not None else None
    if version is None:
        raise errors.NotFound(f"no version {wanted} of {device.hardware_id}")
    return version, await repository.content(version.content_sha256)


async def get_version(request: web.Request) -> web.Response:
    redaction = request.app[REDACTION_KEY]
    async with acquire(pool_of(request)) as connection:
        repository = ArchiveRepository(connection)
        device = await _device(repository, request.match_info["device"])
        version_id = _version_id(request.match_info["version"], "version")
        version, content = await _load_version(repository, device, version_id)
    if not await _secrets_allowed(request, device, str(version.id)):
        content = redact_content(content, redaction)
    return web.Response(
        body=content,
        content_type="application/octet-stream" if version.encoding == BINARY else "text/plain",
        headers={"X-Backup-Version": str(version.id), "X-Backup-Encoding": version.encoding},
    )


@dataclass(frozen=True)
class DiffRequest:
    old: tuple[Version, bytes]
    new: tuple[Version, bytes]


async def versions_to_compare(
    repository: ArchiveRepository,
    device: BackupDevice,
    old_id: int | None,
    new_id: int | None,
) -> DiffRequest:
    """Default: the latest version against the one before it (or the one before ``new``)."""
    new = await _load_version(repository, device, new_id)
    if old_id is None:
        previous = await repository.versions(device.mac, limit=1, before=new[0].id)
        if not previous:
            raise errors.NotFound(f"{device.hardware_id} has no version before {new[0].id}")
        old_id = previous[0].id
    old = await _load_version(repository, device, old_id)
    return DiffRequest(old, new)


def render_diff(
    device: BackupDevice,
    pair: DiffRequest,
    *,
    normalizer: Normalizer | None,
    redaction: Redaction | None,
) -> str:
    def side(item: tuple[Version, bytes]) -> Side:
        version, content = item
        stamp = version.received_at.astimezone(UTC).isoformat(timespec="seconds")
        return Side(content, f"{device.hardware_id} version {version.id} ({stamp})")

    return unified_diff(side(pair.old), side(pair.new), normalizer=normalizer, redaction=redaction)


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


openapi = openapi_handler("pbxfront backup archive API", lambda _request: ENDPOINTS)


OBJECT = {"type": "object"}
TEXT_NOTE = " (text/plain)"

ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "GET",
        "/api/v1/backups/openapi.json",
        openapi,
        READERS,
        "This document",
        public=True,
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
