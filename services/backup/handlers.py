"""HTTP side of the backup service: the write-only intake devices PUT to, and the app state the
archive API (archive_api.py) shares with it.

Intake (device listener): ``PUT /DRIVE/CF0/update/backup/<name>``. Who may write, in order:

1. a device proven by its client certificate (``core.identity``); the URL arguments (``sn``,
   ``hwid``) and a name that is a MAC or hardware id (``IP232-01-02-03.txt``) must name that
   same device, else 403;
2. an account with the ``event-sender`` role (HTTP Basic or Digest, RFC 7616): the device is the
   one the URL arguments or the name name (the seed's shared "HTTP client" account);
3. nobody (anonymous), only for devices of customers with ``allow_anonymous_backup``.

A device must be in the inventory. Every other method on the folder is refused with one fixed
answer, so nobody learns whether anything exists there. A 2xx is sent only after the commit.

Archive (admin listener): archive_api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import web

from services.backup.diff import DiffStat, Redaction, diffstat
from services.backup.lookup import IntakeLookup
from services.backup.normalize import BINARY, Normalizer, compress, prepare
from services.backup.repository import (
    IntakeRepository,
    InventoryDevice,
    LatestVersion,
    SeenUnchanged,
    StoreResult,
    Upload,
)

# `pbxfront backups diff` (backup/cli.py) imports these from here.
from services.backup.versions import render_diff as render_diff
from services.backup.versions import versions_to_compare as versions_to_compare
from services.core import errors
from services.core.api import pool_of
from services.core.batch import BackgroundBatches
from services.core.config import Settings
from services.core.db import acquire
from services.core.deviceauth import DeviceAuth
from services.core.http import UploadAborted, query_arguments, read_body
from services.core.identity import (
    DeviceIdentity,
    IdentityConflict,
    IdentityError,
    Proof,
    identify,
    normalize_hardware_id,
    normalize_mac,
    parse_hardware_id,
    printable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

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
        account = await request.app[DEVICE_AUTH_KEY].sender_account(request, header)
        if identity.mac is None and identity.hardware_id is None:
            raise errors.Invalid(
                "name the device: ?sn=#m&hwid=#h in the URL or a file name like #h.txt"
            )
        found = await _inventory_device(request, identity)
        if found is None:
            raise _not_in_inventory(identity)
        await request.app[DEVICE_AUTH_KEY].authorize(
            request,
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
    raise request.app[DEVICE_AUTH_KEY].unauthenticated(
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
    """The intake, top to bottom: the name -> who uploads -> the body -> the same as the latest
    version (by its hash, then normalised)? -> store. A 2xx only once the version is committed."""
    name = _backup_name(request)
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    identity = with_name_claim(identify(peercert, query_arguments(request)), name)
    uploader = await identify_uploader(request, identity)
    content = await _read_content(request, uploader)
    # Most uploads repeat the latest version byte for byte: recognised by its hash alone, before
    # any normalising.
    now = datetime.now(UTC)
    content_sha256 = await _cpu_work(len(content), lambda: hashlib.sha256(content).digest())
    latest = uploader.latest
    if latest is not None and latest.content_sha256 == content_sha256:
        return _seen_unchanged(request, uploader, latest, now)
    normalizer = request.app[NORMALIZER_KEY]
    prepared = await _cpu_work(len(content), lambda: prepare(content, normalizer))
    if latest is not None and latest.normalized_sha256 == prepared.normalized_sha256:
        # Only volatile lines differ (protocol.md §5): the same version, committed; recorded
        # like a byte-for-byte repeat.
        return _seen_unchanged(request, uploader, latest, now)
    upload = Upload(
        device=uploader.device,
        content=content,
        prepared=prepared,
        upload_name=name,
        proof=uploader.proof,
        account=uploader.account,
        source_address=request.remote,
    )
    result = await _store(request, upload, now, normalizer)
    return _stored_reply(uploader, prepared.encoding, result)


def _backup_name(request: web.Request) -> str:
    """The stored file's name from the path; Invalid unless it is a plain name (never a path)."""
    name = request.match_info.get("name", "")
    if not _NAME.fullmatch(name):
        raise errors.Invalid(
            "backup name: 1-128 letters, digits and . _ - @ + (e.g. IP232-01-02-03.txt)"
        )
    return name


async def _read_content(request: web.Request, uploader: Uploader) -> bytes:
    """The body, within the backup and the listener body limits; Invalid when it is empty or
    the upload was aborted (logged; nothing is stored)."""
    settings = request.app[SETTINGS_KEY]
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
    return content


async def _cpu_work(size: int, work: Callable[[], T]) -> T:
    """``work()`` on ``size`` bytes: in a worker thread once they are many enough to be worth the
    hand-over (``_THREAD_THRESHOLD``)."""
    if size > _THREAD_THRESHOLD:
        return await asyncio.to_thread(work)
    return work()


def _seen_unchanged(
    request: web.Request, uploader: Uploader, latest: LatestVersion, now: datetime
) -> web.Response:
    """An upload equal to the latest version, already stored and committed: what is left to
    record (seen at, put count) waits for the next batch instead of a transaction of its own."""
    request.app[UNCHANGED_KEY].add(SeenUnchanged(uploader.device, latest.id, now), pool_of(request))
    return _unchanged_reply(uploader, latest.id)


async def _store(
    request: web.Request, upload: Upload, now: datetime, normalizer: Normalizer
) -> StoreResult:
    """The upload stored unless it equals the latest version (IntakeRepository.store_if_changed:
    one transaction, committed when this returns)."""
    async with acquire(pool_of(request)) as connection:
        return await IntakeRepository(connection).store_if_changed(
            upload, now, ContentCpu(normalizer)
        )


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
