"""HTTP side of the update service: parse the poll, run the pipeline, answer, record.

Devices read every reply line as a command, so even errors are answered as ``#`` comment lines
(text/plain, CRLF); the status code tells the operator's tools what happened.
"""

from __future__ import annotations

import dataclasses
import logging
import typing

import asyncpg
from aiohttp import web

from services.core.db import POOL_KEY, acquire
from services.core.http import query_arguments, security_event
from services.core.identity import DeviceIdentity, identify, printable
from services.core.inventory import Device, ResolvedVariable
from services.core.scriptlines import comment, comment_reply, to_crlf
from services.update import certificates
from services.update.canary import CanaryState
from services.update.device_requests import base_url, record_unknown
from services.update.firmware import FirmwareUnavailable
from services.update.gauges import UnrenderedReply
from services.update.provisioning import (
    STAGING,
    UPDATE,
    Adopter,
    ContextAdditions,
    PolicyError,
    PollArguments,
    PollContext,
    Reply,
    Snapshot,
    Urls,
    look_up,
    names_build,
    render_unknown,
    reply_for,
    unrenderable,
)
from services.update.repository import PollRecord, UpdateRepository
from services.update.scripts import ScriptError, ScriptStore, SecretRequired
from services.update.state import (
    ADDITIONS_KEY,
    ADOPTER_KEY,
    BODIES_KEY,
    FIRMWARE_KEY,
    LIFECYCLE_KEY,
    PUBLISHED_KEY,
    SETTINGS_KEY,
    SNAPSHOTS_KEY,
    STORE_KEY,
    WATCH_KEY,
)
from services.update.status import STATUS_KEY
from services.update.versions import ScriptVersionRepository

log = logging.getLogger(__name__)


def device_identity(request: web.Request) -> DeviceIdentity:
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    return identify(peercert, query_arguments(request))


async def staging(request: web.Request) -> web.Response:
    return await _poll(request, STAGING)


async def update(request: web.Request) -> web.Response:
    return await _poll(request, UPDATE)


async def _poll(request: web.Request, phase: str) -> web.Response:
    """identify -> look up -> decide and render -> record (provisioning.py has the steps)."""
    identity = device_identity(request)
    arguments = PollArguments.parse(query_arguments(request))
    if identity.mac is None and identity.hardware_id is None:
        return comment_reply(
            400,
            "pbxfront cannot tell which device this is:",
            "use a client certificate or add ?sn=#m&hwid=#h&type=#t&ip=#i to the update URL",
        )
    pool = request.config_dict[POOL_KEY]
    snapshot, restage = await _inventory(request, pool, identity)
    device = snapshot.find(identity)
    canary = await _canary(request, pool)
    store = await scripts_for(request, pool, device.mac if device is not None else None, canary)
    if store is None:
        return comment_reply(
            503,
            "pbxfront has no published script version yet (pbxfront scripts publish)",
        )
    if device is None:
        return await _unknown(request, pool, snapshot, store, identity, arguments, phase)
    context = _look_up(request, snapshot, device, identity, arguments, phase, restage)
    context = _with_canary(context, canary)
    context = dataclasses.replace(
        context, firmware_attempts=await _firmware_attempts(pool, context)
    )
    if phase == UPDATE and not context.restage:
        # The certificate roll-out (protocol.md §9) is a step of its own: its lines go first.
        rollout = await certificates.poll_lines(
            request, pool, snapshot, device, identity, context.urls.base
        )
        context = dataclasses.replace(context, rollout=rollout)
    reply = _reply(request, store, context)
    if reply.error and reply.status == 200:
        log.error("%s.txt for %s: %s", phase, device.mac, reply.error)
    await _record(request, pool, snapshot, context, reply, restage, store.version)
    kind = UnrenderedReply if reply.unrendered else web.Response
    return kind(status=reply.status, text=reply.text, content_type="text/plain", charset="utf-8")


def _look_up(
    request: web.Request,
    snapshot: Snapshot,
    device: Device,
    identity: DeviceIdentity,
    arguments: PollArguments,
    phase: str,
    restage: bool,
) -> PollContext:
    """The poll's context: the device, its customer and variables (resolved once), its phase."""
    return look_up(
        snapshot,
        device,
        identity,
        arguments,
        phase,
        Urls(base_url(request)),
        request.app[LIFECYCLE_KEY],
        restage=restage,
        additions=typing.cast("ContextAdditions | None", request.app[ADDITIONS_KEY]),
    )


def _with_canary(context: PollContext, canary: CanaryState) -> PollContext:
    """A firmware roll-out's wave gets its build instead of the inventory's (canary.py)."""
    override = canary.firmware_for(context.device.mac)
    if override is None:
        return context
    name, build = override
    variable = ResolvedVariable(name, build, False, "rollout", str(canary.rollout_id))
    return dataclasses.replace(context, variables={**context.variables, name: variable})


async def _record(
    request: web.Request,
    pool: asyncpg.Pool,
    snapshot: Snapshot,
    context: PollContext,
    reply: Reply,
    restage: bool,
    script_version: int | None,
) -> None:
    """What the poll leaves behind: a pending restage served by staging is done; the status
    row (batched)."""
    device, identity, arguments = context.device, context.identity, context.arguments
    customer = snapshot.customers[device.customer]
    trusted = identity.proven or customer.allow_claimed_secrets
    if context.phase == STAGING and restage and reply.status == 200:
        async with acquire(pool) as connection:
            await UpdateRepository(connection).clear_restage(device.mac, trusted=trusted)
        request.app[WATCH_KEY].restage.discard(device.mac)
    request.app[STATUS_KEY].record(
        PollRecord(
            mac=device.mac,
            source_address=request.remote,
            proof=identity.proof.value,
            phase=context.phase,
            version=arguments.version,
            prot=arguments.prot,
            boot=arguments.boot,
            device_check=arguments.check,
            cfg=arguments.cfg,
            hash_sent=reply.hash_sent,
            in_sync=reply.in_sync,
            last_error=reply.error,
            trusted=trusted,
            firmware_suspect=reply.firmware_suspect,
            firmware_stuck=reply.firmware_stuck,
            script_version=script_version,
        ),
        pool,
    )


async def _inventory(
    request: web.Request, pool: asyncpg.Pool, identity: DeviceIdentity
) -> tuple[Snapshot, bool]:
    """The inventory snapshot and whether a restage is pending for the device. In the common
    case (LISTEN is live, no restage pending) no query and no pooled connection at all."""
    watch = request.app[WATCH_KEY]
    snapshots = request.app[SNAPSHOTS_KEY]
    candidate = identity.mac in watch.restage if identity.mac else bool(watch.restage)
    cached = snapshots.current(watch.version) if watch.live and not candidate else None
    if cached is not None:
        return cached, False
    async with acquire(pool) as connection:
        version, restage_pending = await UpdateRepository(connection).poll_state(
            identity.mac, identity.hardware_id
        )
        if not restage_pending and identity.mac:
            watch.restage.discard(identity.mac)
        return await snapshots.get(connection, version), restage_pending


async def _firmware_attempts(pool: asyncpg.Pool, context: PollContext) -> int:
    """Only a device whose ``ver`` names a wanted build it does not report costs a query."""
    arguments, device = context.arguments, context.device
    for kind, current in (("prot", arguments.prot), ("boot", arguments.boot)):
        wanted = context.variables.get(f"fw-{kind}")
        build = wanted.value if wanted is not None else ""
        if build and build != current and names_build(arguments.version, build):
            async with acquire(pool) as connection:
                return await UpdateRepository(connection).firmware_attempts(device.mac, build)
    return 0


async def _canary(request: web.Request, pool: asyncpg.Pool) -> CanaryState:
    """The open canary roll-out as this node knows it (reloaded after NOTIFY, or on every poll
    while LISTEN is down, so a change is never missed)."""
    watch = request.app[WATCH_KEY]
    canary = watch.canary
    if canary.stale or not watch.live:
        async with acquire(pool) as connection:
            await canary.reload(connection)
    return canary


async def scripts_for(
    request: web.Request, pool: asyncpg.Pool, mac: str | None, canary: CanaryState
) -> ScriptStore | None:
    """The scripts devices get: this node's folder, or the published version every node serves
    (update.scripts_source = "database"; None while none is published), or, while a canary
    roll-out is open, the version the device's wave says. A new version is loaded once, by the
    first poll after the change reached this node."""
    if request.app[SETTINGS_KEY].update.scripts_source == "files":
        return request.app[STORE_KEY]
    watch, published = request.app[WATCH_KEY], request.app[PUBLISHED_KEY]
    version = watch.script_version if watch.live else None
    if version is not None:
        store = published.cached(canary.version_for(mac, version) if mac else version)
        if store is not None:
            return store
    async with acquire(pool) as connection:
        if version is None:
            version = await ScriptVersionRepository(connection).current_id()
            if version is None:
                return None
        return await published.get(connection, canary.version_for(mac, version) if mac else version)


def _reply(request: web.Request, store: ScriptStore, context: PollContext) -> Reply:
    firmware = request.app[FIRMWARE_KEY]
    device, identity = context.device, context.identity
    try:
        return reply_for(store, context, firmware.listed, request.app[BODIES_KEY])
    except SecretRequired as error:
        security_event(
            request,
            "secret-refused",
            device=device.mac,
            proof=identity.proof.value,
            secret=error.name,
        )
        return Reply(
            403,
            to_crlf([comment(str(error)), comment("connect with the device certificate")]),
            error=str(error),
        )
    except (ScriptError, PolicyError) as error:
        return unrenderable(context, str(error))  # _poll logs the error


async def _unknown(
    request: web.Request,
    pool: asyncpg.Pool,
    snapshot: Snapshot,
    store: ScriptStore,
    identity: DeviceIdentity,
    arguments: PollArguments,
    phase: str,
) -> web.Response:
    """A device not in the inventory: rate-limited per address (no enumerating the inventory by
    ``sn=``), recorded for ``devices adopt`` (bounded), answered without customer data."""
    settings = request.app[SETTINGS_KEY].update
    key = identity.mac or identity.hardware_id or "-"
    refused = await record_unknown(request, pool, identity, key, arguments.version)
    if refused is not None:
        return refused
    log.info("unknown device %s (%s) polled %s.txt", printable(key), identity.proof.value, phase)
    adopter = typing.cast("Adopter | None", request.app[ADOPTER_KEY])
    if settings.auto_adopt and adopter is not None and identity.proven and identity.mac:
        device_type = identity.device_type or ""
        if await adopter(pool, identity.mac, device_type, request.remote or "unknown"):
            # In the inventory now: its next poll gets its configuration.
            return comment_reply(
                503, f"device {key} was adopted just now; it gets its configuration next poll"
            )
    if settings.unknown_devices == "script" and store.has("unknown.txt"):
        try:
            reply = render_unknown(
                store, snapshot, identity, Urls(base_url(request)), arguments.check
            )
        except (ScriptError, SecretRequired) as error:
            log.error("unknown.txt cannot be rendered: %s", error)
        else:
            return web.Response(
                status=reply.status, text=reply.text, content_type="text/plain", charset="utf-8"
            )
    return comment_reply(404, f"device {key} is not in this provider's inventory")


async def firmware(request: web.Request) -> web.StreamResponse:
    store = request.app[FIRMWARE_KEY]
    try:
        found = await store.find(request.match_info["build"], request.match_info["file"])
    except FirmwareUnavailable as error:
        log.warning("firmware: %s", error)
        response = comment_reply(503, "firmware not available right now; try again later")
        response.headers["Retry-After"] = "30"
        return response
    if found is None:
        return comment_reply(404, "no such firmware file")
    return web.FileResponse(found.path, headers={"Content-Type": "application/octet-stream"})
