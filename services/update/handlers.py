"""HTTP side of the update service: parse the poll, run the pipeline, answer, record.

Devices read every reply line as a command, so even errors are answered as ``#`` comment lines
(text/plain, CRLF); the status code tells the operator's tools what happened.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web

from services.core.db import POOL_KEY, acquire
from services.core.http import query_arguments, security_event
from services.core.identity import DeviceIdentity, identify, printable
from services.core.scriptlines import comment, to_crlf
from services.update import certificates
from services.update.provisioning import (
    STAGING,
    UPDATE,
    PolicyError,
    PollArguments,
    Reply,
    Urls,
    decide_and_render,
)
from services.update.repository import PollRecord, UpdateRepository
from services.update.scripts import ScriptError, SecretRequired
from services.update.state import (
    BODIES_KEY,
    FIRMWARE_KEY,
    SETTINGS_KEY,
    SNAPSHOTS_KEY,
    STORE_KEY,
    WATCH_KEY,
)
from services.update.status import STATUS_KEY

log = logging.getLogger(__name__)

_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")


def comment_reply(status: int, *messages: str) -> web.Response:
    return web.Response(
        status=status,
        text=to_crlf(comment(m) for m in messages),
        content_type="text/plain",
        charset="utf-8",
    )


def base_url(request: web.Request) -> str:
    """The configured public URL, else this request's scheme and (checked) Host."""
    configured = request.app[SETTINGS_KEY].update.public_url
    if configured:
        return configured.rstrip("/")
    host = request.host
    if not _HOST.fullmatch(host):
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        host = f"{sockname[0]}:{sockname[1]}" if sockname else "localhost"
    return f"{request.scheme}://{host}"


def device_identity(request: web.Request) -> DeviceIdentity:
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    return identify(peercert, query_arguments(request))


async def staging(request: web.Request) -> web.Response:
    return await _poll(request, STAGING)


async def update(request: web.Request) -> web.Response:
    return await _poll(request, UPDATE)


async def _poll(request: web.Request, phase: str) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    identity = device_identity(request)
    arguments = PollArguments.parse(query_arguments(request))
    if identity.mac is None and identity.hardware_id is None:
        return comment_reply(
            400,
            "pbxfront cannot tell which device this is:",
            "use a client certificate or add ?sn=#m&hwid=#h&type=#t&ip=#i to the update URL",
        )
    store = request.app[STORE_KEY]
    firmware = request.app[FIRMWARE_KEY]
    urls = Urls(base_url(request))
    pool = request.config_dict[POOL_KEY]
    watch = request.app[WATCH_KEY]
    watch.start(pool)
    snapshots = request.app[SNAPSHOTS_KEY]
    candidate = identity.mac in watch.restage if identity.mac else bool(watch.restage)
    cached = snapshots.current(watch.version) if watch.live and not candidate else None
    if cached is not None:
        # The common case: no query and no pooled connection at all (releasing one to the
        # pool costs a round trip of its own).
        snapshot, restage_pending = cached, False
    else:
        async with acquire(pool) as connection:
            version, restage_pending = await UpdateRepository(connection).poll_state(
                identity.mac, identity.hardware_id
            )
            if not restage_pending and identity.mac:
                watch.restage.discard(identity.mac)
            snapshot = await snapshots.get(connection, version)
    device = snapshot.find(identity)
    if device is None:
        key = identity.mac or identity.hardware_id or "-"
        async with acquire(pool) as connection:
            await UpdateRepository(connection).record_unknown(
                key,
                identity.mac,
                identity.hardware_id,
                identity.device_type,
                request.remote,
                identity.proof.value,
                arguments.version,
            )
        log.info(
            "unknown device %s (%s) polled %s.txt", printable(key), identity.proof.value, phase
        )
        return comment_reply(404, f"device {key} is not in this provider's inventory")
    restage = phase == UPDATE and restage_pending
    rollout_lines: list[str] = []
    if phase == UPDATE and not restage:
        rollout_lines = await certificates.poll_lines(
            request, pool, snapshot, device, identity, urls.base
        )
    reply: Reply
    try:
        reply = decide_and_render(
            store,
            snapshot,
            device,
            identity,
            arguments,
            phase,
            urls,
            poll_minutes=settings.update.poll_interval,
            restage=restage,
            firmware_available=firmware.listed,
            bodies=request.app[BODIES_KEY],
            extra_preamble=rollout_lines,
        )
    except SecretRequired as error:
        security_event(
            request,
            "secret-refused",
            device=device.mac,
            proof=identity.proof.value,
            secret=error.name,
        )
        reply = Reply(
            403,
            to_crlf([comment(str(error)), comment("connect with the device certificate")]),
            error=str(error),
        )
    except (ScriptError, PolicyError) as error:
        log.error("%s.txt for %s cannot be rendered: %s", phase, device.mac, error)
        reply = Reply(
            500,
            to_crlf(
                [
                    comment(
                        f"pbxfront: {phase}.txt cannot be rendered for "
                        "this device; the operator's log says why"
                    )
                ]
            ),
            error=str(error),
        )
    request.app[STATUS_KEY].record(
        PollRecord(
            mac=device.mac,
            source_address=request.remote,
            proof=identity.proof.value,
            phase=phase,
            version=arguments.version,
            prot=arguments.prot,
            boot=arguments.boot,
            device_check=arguments.check,
            cfg=arguments.cfg,
            hash_sent=reply.hash_sent,
            in_sync=reply.in_sync,
            last_error=reply.error,
        ),
        pool,
    )
    return web.Response(
        status=reply.status, text=reply.text, content_type="text/plain", charset="utf-8"
    )


async def firmware(request: web.Request) -> web.StreamResponse:
    store = request.app[FIRMWARE_KEY]
    found = await asyncio.to_thread(
        store.find, request.match_info["build"], request.match_info["file"]
    )
    if found is None:
        return comment_reply(404, "no such firmware file")
    return web.FileResponse(found.path, headers={"Content-Type": "application/octet-stream"})
