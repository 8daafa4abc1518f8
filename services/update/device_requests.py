"""What update.txt/staging.txt and PHPUS's update.php both do with a device's request: the
public base URL of the scripts' own URLs, and polls from devices not in the inventory
(rate-limited per source address, so nobody enumerates the inventory by ``sn=``, and recorded,
bounded, for ``pbxfront devices adopt`` and the console's unknown-devices table)."""

from __future__ import annotations

import re

import asyncpg
from aiohttp import web

from services.core.db import acquire
from services.core.http import security_event
from services.core.identity import DeviceIdentity
from services.core.scriptlines import comment_reply
from services.core.unknown import UPDATE as UPDATE_SERVICE
from services.core.unknown import UnknownDeviceRepository
from services.update.state import SETTINGS_KEY, UNKNOWN_LIMITER_KEY

_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")


def base_url(request: web.Request) -> str:
    """update.public_url, else this request's scheme and (checked) Host."""
    configured = request.app[SETTINGS_KEY].update.public_url
    if configured:
        return configured.rstrip("/")
    host = request.host
    if not _HOST.fullmatch(host):
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        host = f"{sockname[0]}:{sockname[1]}" if sockname else "localhost"
    return f"{request.scheme}://{host}"


async def record_unknown(
    request: web.Request,
    pool: asyncpg.Pool,
    identity: DeviceIdentity,
    key: str,
    version: str | None,
) -> web.Response | None:
    """None once the sighting of device ``key`` is recorded (at most update.unknown_max_rows
    are kept); a 429 with Retry-After, recording nothing, when its address has polled too often
    for unknown devices."""
    settings = request.app[SETTINGS_KEY].update
    limiter = request.app[UNKNOWN_LIMITER_KEY]
    if not limiter.allows(request.remote):
        security_event(request, "unknown-device-rate-limited", proof=identity.proof.value)
        response = comment_reply(429, "too many polls for devices not in the inventory")
        response.headers["Retry-After"] = str(limiter.retry_after(request.remote))
        return response
    limiter.spend(request.remote)
    async with acquire(pool) as connection:
        await UnknownDeviceRepository(connection).record(
            UPDATE_SERVICE,
            key,
            mac=identity.mac,
            hardware_id=identity.hardware_id,
            device_type=identity.device_type,
            source_address=request.remote,
            proof=identity.proof.value,
            version=version,
            max_rows=settings.unknown_max_rows,
        )
    return None
