"""HTTP side of the redirect service: the device requests and the provider API.

Device side (``/redirect.php``, ``/init``, ``redirect.extra_paths``): identify -> rate-limit ->
look up -> render the hand-over -> record. Devices read every reply line as a command, so every
answer, errors included, is ``#`` comment lines (text/plain, CRLF).

Provider API (``/api/v1/redirect/…``): every request is HMAC-signed (``signing.py``) with a key
of the provider, and each route needs one scope. A provider sees and changes only its own
mappings; another provider's device answers exactly like an unknown one (404), except that
registering it is refused with 409 ``owned_by_other_provider``.

Which path and method reach which handler, with which scope: routes.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from services.core import audit, errors
from services.core.api import int_query, json_body, json_response, pool_of
from services.core.batch import BackgroundBatches
from services.core.config import Settings
from services.core.db import acquire
from services.core.http import query_arguments, security_event
from services.core.identity import identify, printable
from services.core.ratelimit import AddressLimiter
from services.core.unknown import REDIRECT, UnknownDeviceRepository
from services.redirect.handover import (
    DeviceTarget,
    cannot_identify_reply,
    check_frontend_id,
    check_mac,
    check_mapping,
    check_provider_id,
    check_url,
    choose_mapping,
    device_key,
    handover_script,
    identity_arguments,
    not_registered_reply,
    parse_import,
    rate_limited_reply,
    target_url,
)
from services.redirect.repository import (
    ApiKeyRepository,
    Handover,
    HandoverRepository,
    MappingRecord,
    MappingRepository,
    audit_import,
)
from services.redirect.signing import (
    check_timestamp,
    parse_authorization,
    refused,
    sign,
    signature_matches,
)

log = logging.getLogger(__name__)

# How often a node forgets expired nonces and transfer tokens (seconds).
PURGE_INTERVAL = 60.0


class Periodic:
    """True at most once per ``interval`` (per process): work piggy-backed on requests."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


@dataclass(frozen=True)
class Caller:
    """The provider behind a verified signature."""

    key_id: str
    provider: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"


SETTINGS_KEY = web.AppKey("redirect_settings", Settings)
LIMITER_KEY = web.AppKey("redirect_limiter", AddressLimiter)
PURGE_KEY = web.AppKey("redirect_purge", Periodic)
HANDOVERS_KEY: web.AppKey[BackgroundBatches[Handover]] = web.AppKey("redirect_handovers")
CALLER_KEY = web.RequestKey("redirect_caller", Caller)


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=text, content_type="text/plain", charset="utf-8", headers=headers
    )


# --- the device side -----------------------------------------------------------------------------


async def device_request(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    limiter = request.app[LIMITER_KEY]
    query = query_arguments(request)
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    # IdentityConflict (certificate names another device): 403 and a security log line, by the
    # error middleware.
    identity = identify(peercert, identity_arguments(query))
    key = device_key(identity, query.get("ver"))
    if key is None:
        return _text(400, cannot_identify_reply())
    address = request.remote
    if not limiter.allows(address):
        retry = limiter.retry_after(address)
        return _text(429, rate_limited_reply(), {"Retry-After": str(retry)})
    async with acquire(pool_of(request)) as connection:
        found = choose_mapping(await MappingRepository(connection).targets(key), key)
        target = _device_target(found, settings)
        if found is None or target is None:
            # Every miss spends a token, so a miss of any kind looks the same to a scanner.
            limiter.spend(address)
            if found is not None:
                log.error(
                    "redirect: %s is registered (provider %s) for Frontend %s, which is not in "
                    "the inventory; answered as unregistered",
                    found.mac,
                    found.provider,
                    found.frontend,
                )
            else:
                await UnknownDeviceRepository(connection).record(
                    REDIRECT,
                    key.label,
                    mac=key.mac,
                    hardware_id=key.hardware_id,
                    device_type=key.device_type,
                    source_address=address,
                    proof=key.proof.value,
                    version=query.get("ver"),
                )
                log.info(
                    "redirect: unregistered device %s (%s) from %s",
                    printable(key.label),
                    key.proof.value,
                    address or "-",
                )
            return _text(404, not_registered_reply(key.label))
    # The answer does not wait for the log line: lookups stay reads (core/batch.py).
    request.app[HANDOVERS_KEY].add(
        Handover(found.mac, found.provider, datetime.now(UTC), address, key.proof.value, target),
        pool_of(request),
    )
    log.info(
        "redirect: hand-over of %s (%s, provider %s) to %s",
        found.mac,
        key.proof.value,
        found.provider,
        target,
    )
    return _text(200, handover_script(found.mac, target, found.all_facts()))


def _device_target(found: DeviceTarget | None, settings: Settings) -> str | None:
    if found is None:
        return None
    return target_url(
        found.url, found.frontend, found.public_address, found.frontend_index, settings.redirect
    )


# --- provider API: authentication ---------------------------------------------------------------


ApiHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def verify_signature(request: web.Request) -> Caller:
    """The caller's key from the request's signature; Unauthenticated for anything amiss."""
    settings = request.app[SETTINGS_KEY].redirect
    header = parse_authorization(request.headers.get("Authorization"))
    try:
        check_timestamp(header.timestamp, time.time(), settings.signature_max_skew)
    except errors.Unauthenticated:
        security_event(request, "auth-failed", key=header.key_id, reason="timestamp")
        raise
    body = await request.read()
    async with acquire(pool_of(request)) as connection:
        repository = ApiKeyRepository(connection)
        key = await repository.api_key(header.key_id)
        if key is None:
            # The same work as a real check, so unknown keys cannot be told apart by timing.
            sign("-", header.key_id, header.timestamp, header.nonce, "GET", "/", body)
        if key is None or not signature_matches(
            key.secret, header, request.method, request.raw_path, body
        ):
            security_event(request, "auth-failed", key=header.key_id, reason="signature")
            raise refused("signature does not verify (unknown or revoked key, or wrong secret)")
        expires_at = datetime.fromtimestamp(header.timestamp + settings.signature_max_skew + 1, UTC)
        if not await repository.use_nonce(key.id, header.nonce, expires_at):
            security_event(request, "auth-failed", key=header.key_id, reason="replayed-nonce")
            raise refused("nonce already used: every request needs a new nonce")
        if request.app[PURGE_KEY].due():
            purged = await repository.purge_expired()
            if purged:
                log.debug("redirect: forgot %d expired nonces and transfer tokens", purged)
    return Caller(key.id, key.provider, frozenset(key.scopes))


def signed(scope: str | None, handler: ApiHandler) -> ApiHandler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        caller = await verify_signature(request)
        if scope is not None and scope not in caller.scopes:
            security_event(request, "forbidden", key=caller.key_id, scope=scope, path=request.path)
            raise errors.Forbidden(f"this key lacks the scope {scope}")
        request[CALLER_KEY] = caller
        return await handler(request)

    return guarded


def caller_of(request: web.Request) -> Caller:
    caller: Caller = request[CALLER_KEY]
    return caller


def audit_actor(request: web.Request) -> audit.Actor:
    caller = caller_of(request)
    return audit.Actor(f"{caller.provider} ({caller.actor})", request.remote or "unknown")


async def _audit(
    request: web.Request,
    connection: asyncpg.Connection,
    action: str,
    mac: str,
    after: Any = None,
) -> None:
    await audit.record(
        connection,
        actor=audit_actor(request),
        action=action,
        object_type="redirect-mapping",
        object_id=mac,
        after=after,
    )


# --- provider API: handlers ---------------------------------------------------------------------


def _device(request: web.Request) -> str:
    """The path's MAC or serial (innovaphone serial numbers are MACs)."""
    return check_mac(request.match_info["device"])


def mapping_json(record: MappingRecord, settings: Settings) -> dict[str, Any]:
    data = record.as_json()
    data["target"] = target_url(
        record.url, record.frontend, record.public_address, record.frontend_index, settings.redirect
    )
    return data


def _no_mapping(mac: str) -> errors.NotFound:
    # The same answer for unknown devices and other providers' devices.
    return errors.NotFound(f"no device {mac} is registered by this provider")


async def whoami(request: web.Request) -> web.Response:
    caller = caller_of(request)
    return json_response(
        {"key": caller.key_id, "provider": caller.provider, "scopes": sorted(caller.scopes)}
    )


async def list_devices(request: web.Request) -> web.Response:
    caller = caller_of(request)
    frontend = request.query.get("frontend") or None
    if frontend is not None:
        check_frontend_id(frontend)
    limit = int_query(request, "limit", 1000, 1, 10000)
    offset = int_query(request, "offset", 0, 0, 10**9)
    settings = request.app[SETTINGS_KEY]
    async with acquire(pool_of(request)) as connection:
        records = await MappingRepository(connection).list_mappings(
            caller.provider, frontend, limit=limit, offset=offset
        )
    return json_response(
        {
            "devices": [mapping_json(r, settings) for r in records],
            "limit": limit,
            "offset": offset,
        }
    )


async def get_device(request: web.Request) -> web.Response:
    caller = caller_of(request)
    mac = _device(request)
    async with acquire(pool_of(request)) as connection:
        record = await MappingRepository(connection).get(mac, caller.provider)
        if record is None:
            raise _no_mapping(mac)
        handovers = [
            h.as_json()
            for h in await HandoverRepository(connection).handovers(mac, 5)
            if h.provider == caller.provider
        ]
    data = mapping_json(record, request.app[SETTINGS_KEY])
    data["handovers"] = handovers
    return json_response(data)


_PUT_FIELDS = {"mac", "frontend", "url", "facts", "transfer_token"}


async def put_device(request: web.Request) -> web.Response:
    caller = caller_of(request)
    mac = _device(request)
    body = await json_body(request)
    unknown = sorted(set(body) - _PUT_FIELDS)
    if unknown:
        known = ", ".join(sorted(_PUT_FIELDS))
        raise errors.Invalid(f"{printable(unknown[0], 40)}: unknown field (known: {known})")
    if "mac" in body and check_mac(body["mac"]) != mac:
        raise errors.Invalid("mac: differs from the device in the path")
    token = body.get("transfer_token")
    if token is not None and not isinstance(token, str):
        raise errors.Invalid("transfer_token: must be a string")
    wanted = check_mapping(mac, body.get("frontend"), body.get("url"), body.get("facts"))
    async with acquire(pool_of(request)) as connection, connection.transaction():
        outcome, record = await MappingRepository(connection).register(
            caller.provider, wanted, caller.actor, token
        )
        if outcome.value != "unchanged":
            await _audit(request, connection, f"redirect.{outcome.value}", mac, record.as_json())
    data = mapping_json(record, request.app[SETTINGS_KEY])
    data["result"] = outcome.value
    return json_response(data, status=201 if outcome.value in ("created", "transferred") else 200)


async def move_device(request: web.Request) -> web.Response:
    caller = caller_of(request)
    mac = _device(request)
    body = await json_body(request)
    unknown = sorted(set(body) - {"frontend", "url"})
    if unknown:
        raise errors.Invalid(f"{printable(unknown[0], 40)}: unknown field (known: frontend, url)")
    frontend = None if body.get("frontend") in (None, "") else check_frontend_id(body["frontend"])
    url = None if body.get("url") in (None, "") else check_url(body["url"])
    if frontend is None and url is None:
        raise errors.Invalid("frontend: a Frontend id or a url is required")
    async with acquire(pool_of(request)) as connection, connection.transaction():
        record = await MappingRepository(connection).move(
            mac, caller.provider, frontend, url, caller.actor
        )
        if record is not None:
            await _audit(request, connection, "redirect.move", mac, record.as_json())
    if record is None:
        raise _no_mapping(mac)
    return json_response(mapping_json(record, request.app[SETTINGS_KEY]))


async def delete_device(request: web.Request) -> web.Response:
    caller = caller_of(request)
    mac = _device(request)
    async with acquire(pool_of(request)) as connection, connection.transaction():
        deleted = await MappingRepository(connection).deregister(mac, caller.provider, caller.actor)
        if deleted:
            await _audit(request, connection, "redirect.deregister", mac)
    if not deleted:
        raise _no_mapping(mac)
    return web.Response(status=204)


async def device_history(request: web.Request) -> web.Response:
    caller = caller_of(request)
    mac = _device(request)
    async with acquire(pool_of(request)) as connection:
        entries = await MappingRepository(connection).history(mac, caller.provider)
    if not entries:
        raise _no_mapping(mac)
    return json_response({"mac": mac, "history": [e.as_json() for e in entries]})


async def transfer_token(request: web.Request) -> web.Response:
    caller = caller_of(request)
    mac = _device(request)
    body = await json_body(request, optional=True)
    unknown = sorted(set(body) - {"to"})
    if unknown:
        raise errors.Invalid(f"{printable(unknown[0], 40)}: unknown field (known: to)")
    to_provider = None if body.get("to") in (None, "") else check_provider_id(body["to"])
    lifetime = request.app[SETTINGS_KEY].redirect.transfer_token_lifetime
    async with acquire(pool_of(request)) as connection, connection.transaction():
        issued = await MappingRepository(connection).issue_transfer_token(
            mac, caller.provider, to_provider, lifetime
        )
        if issued is not None:
            after = {"to": to_provider, "expires_at": issued[1].isoformat()}
            await _audit(request, connection, "redirect.transfer-token", mac, after)
    if issued is None:
        raise _no_mapping(mac)
    token, expires_at = issued
    return json_response(
        {"mac": mac, "token": token, "to": to_provider, "expires_at": expires_at.isoformat()},
        status=201,
    )


async def import_devices(request: web.Request) -> web.Response:
    caller = caller_of(request)
    settings = request.app[SETTINGS_KEY].redirect
    rows = parse_import(await request.read(), request.content_type, settings.import_max_rows)
    async with acquire(pool_of(request)) as connection, connection.transaction():
        results = await MappingRepository(connection).import_mappings(
            caller.provider, rows, caller.actor
        )
        await audit_import(connection, audit_actor(request), caller.provider, results)
    counts = dict.fromkeys(("created", "updated", "unchanged", "error"), 0)
    for result in results:
        counts[result.result.value] += 1
    log.info(
        "redirect: import by %s (%s): %d rows, %s",
        caller.provider,
        caller.key_id,
        len(results),
        ", ".join(f"{n} {k}" for k, n in counts.items()),
    )
    return json_response(
        {"rows": len(results), **counts, "results": [r.as_json() for r in results]}
    )
