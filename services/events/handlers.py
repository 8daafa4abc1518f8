"""HTTP side of the events service: the intake devices send to, and the admin API.

Intake (device listener, ``events.paths``, default ``/events``): ``POST`` with any body (form or
query style, XML, JSON, the innovaphone HTTP log line), or ``GET`` with the HTTP log format in the
query (protocol.md §6). Who may send, in order:

1. a device proven by its client certificate that is in the inventory;
2. an account with the ``event-sender`` role (HTTP Basic or Digest, RFC 7616);

anyone else gets 401 offering both challenges. The device an event is about is the proven one, or
the one the URL (``sn``, ``hwid``) or the body (``from``, ``hwid``, ``mac``) names. The answer is
2xx only after the event is committed (group commit, ``writer.py``): 201 for a new row, 200 for a
repeat of an active alarm (counted on it).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from services.core import errors
from services.core.api import (
    OBJECT,
    Endpoint,
    int_query,
    json_response,
    openapi_endpoint,
    pool_of,
)
from services.core.auth import Role
from services.core.batch import TurnBatcher
from services.core.config import Settings
from services.core.db import acquire
from services.core.deviceauth import DeviceAuth
from services.core.http import UploadAborted, query_arguments, read_body
from services.core.identity import (
    DeviceIdentity,
    IdentityError,
    identify,
    normalize_hardware_id,
    normalize_mac,
    parse_device,
    printable,
)
from services.core.periodic import PeriodicJob
from services.core.ratelimit import QuotaLimiter, limiter_key
from services.events.delivery import DeliveryRepository
from services.events.forward import ForwardStatus
from services.events.parse import ALARM_SEVERITIES, SYSLOG_LEVELS, ParsedEvent, parse_event
from services.events.repository import DeviceRef, EventRepository, NewEvent, Stored
from services.events.retention import run_retention
from services.events.writer import GroupWriter

# --- per-application state ---------------------------------------------------------------------


DeviceKey = tuple[str | None, str | None]


class DeviceCache:
    """Inventory lookups for certificate-proven devices, so the intake path costs no inventory
    query per request: answers are kept ``ttl`` seconds (a removed device is refused within
    ``ttl``), and the misses of concurrent requests are looked up together, one query per
    event-loop turn (``core.batch.TurnBatcher``)."""

    def __init__(self, ttl: float = 30.0, size: int = 50000) -> None:
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[DeviceKey, tuple[float, DeviceRef | None]] = OrderedDict()
        self._batcher = TurnBatcher[DeviceKey, DeviceRef](self._known_devices)

    async def lookup(
        self, pool: asyncpg.Pool, mac: str | None, hardware_id: str | None
    ) -> DeviceRef | None:
        key = (mac, hardware_id)
        hit = self._entries.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return await self._batcher.get(key, pool)

    async def _known_devices(
        self, pool: asyncpg.Pool, keys: list[DeviceKey]
    ) -> dict[DeviceKey, DeviceRef]:
        """One round's query; its answers (None too) are kept before the waiters get them."""
        async with acquire(pool) as connection:
            found = await EventRepository(connection).known_devices(keys)
        expires = time.monotonic() + self._ttl
        for key in keys:
            self._entries[key] = (expires, found.get(key))
            self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return found


class EventQuota:
    """Per sender: events and body bytes per minute (``events.quota_*``; 0 = unlimited). A
    sender is the proven device, else the device the URL names under the sending account, else
    the account at its address (IPv6: /64)."""

    def __init__(self, events_per_minute: int, bytes_per_minute: int) -> None:
        self.events = QuotaLimiter(events_per_minute) if events_per_minute else None
        self.bytes = QuotaLimiter(bytes_per_minute) if bytes_per_minute else None

    def check(self, key: str, size: int) -> None:
        """TooManyRequests when one more event of ``size`` bytes is over the quota."""
        waits = [
            limiter.retry_after(key, cost)
            for limiter, cost in ((self.events, 1), (self.bytes, max(size, 1)))
            if limiter is not None
        ]
        wait = max((w for w in waits if w is not None), default=None)
        if wait is not None:
            raise errors.TooManyRequests(
                "event quota of this device exceeded (events.quota_events_per_minute, "
                "events.quota_bytes_per_minute): nothing stored, retry later",
                wait,
            )

    def spend(self, key: str, size: int) -> None:
        if self.events is not None:
            self.events.spend(key)
        if self.bytes is not None:
            self.bytes.spend(key, max(size, 1))


def quota_key(sender: Sender, identity: DeviceIdentity, remote: str | None) -> str:
    if sender.device is not None:
        return f"device:{sender.device.mac}"
    named = identity.mac or identity.hardware_id
    if named:
        return f"named:{sender.account}:{named}"
    return f"account:{sender.account}@{limiter_key(remote)}"


@dataclass
class EventsState:
    settings: Settings
    auth: DeviceAuth
    writer: GroupWriter
    quota: EventQuota = field(default_factory=lambda: EventQuota(0, 0))
    devices: DeviceCache = field(default_factory=DeviceCache)
    forwarders: list[ForwardStatus] = field(default_factory=list)
    retention: PeriodicJob | None = None


STATE_KEY = web.AppKey("events_state", EventsState)
SETTINGS_KEY = web.AppKey("events_settings", Settings)


# --- intake ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sender:
    proof: str
    account: str | None
    device: DeviceRef | None


async def identify_sender(
    request: web.Request, state: EventsState, pool: asyncpg.Pool, identity: DeviceIdentity
) -> Sender:
    if identity.proven:
        device = await state.devices.lookup(pool, identity.mac, identity.hardware_id)
        if device is not None:
            return Sender("certificate", None, device)
    header = request.headers.get("Authorization")
    if header:
        account = await state.auth.sender_account(request, header)
        return Sender("credentials", account, None)
    raise state.auth.unauthenticated(
        "a device certificate or the devices' HTTP client credentials are required"
    )


def _named_device(
    identity: DeviceIdentity, body_mac: str | None, body_hwid: str | None, problems: list[str]
) -> tuple[str | None, str | None]:
    """(MAC, hardware id) of the device the event is about, from the URL, else the body."""
    mac, hardware_id = identity.mac, identity.hardware_id
    parsed_mac = parsed_hwid = None
    if body_mac is not None:
        try:
            parsed_mac = normalize_mac(body_mac)
        except IdentityError:
            problems.append(f"device MAC not readable: {printable(body_mac, 40)}")
    if body_hwid is not None:
        try:
            parsed_hwid = normalize_hardware_id(body_hwid)
        except IdentityError:
            problems.append(f"device hardware id not readable: {printable(body_hwid, 40)}")
    if mac is None and hardware_id is None:
        return parsed_mac, parsed_hwid
    if (parsed_mac and parsed_mac != mac) or (parsed_hwid and parsed_hwid != hardware_id):
        problems.append(f"the body names {parsed_hwid or parsed_mac}, the URL another device")
    return mac, hardware_id


async def _read_event_body(
    request: web.Request, settings: Settings, query: dict[str, str]
) -> bytes:
    limit = min(settings.events.max_body_bytes, settings.limits.max_body_bytes)
    try:
        body = await read_body(request, limit)
    except UploadAborted:
        raise errors.Invalid("body incomplete: nothing stored") from None
    if not body.strip() and not any(k not in ("sn", "mac", "hwid", "type", "ip") for k in query):
        raise errors.Invalid("nothing to store: POST the event as the body")
    return body


def _event_device(
    sender: Sender, identity: DeviceIdentity, parsed: ParsedEvent
) -> tuple[str | None, str | None]:
    """(MAC, hardware id) the event is stored under: the proven device's, else the named one.
    A body naming another device than the URL is noted in ``parsed.problems`` either way."""
    named = _named_device(identity, parsed.device_mac, parsed.device_hardware_id, parsed.problems)
    if sender.device is not None:
        return sender.device.mac, sender.device.hardware_id
    return named


async def _authorize_account(
    request: web.Request,
    state: EventsState,
    pool: asyncpg.Pool,
    account: str,
    mac: str | None,
    hardware_id: str | None,
) -> None:
    """The account may send for the named device's customer (or for no device)."""
    named = await state.devices.lookup(pool, mac, hardware_id) if mac or hardware_id else None
    await state.auth.authorize(
        request,
        account,
        named.customer if named is not None else None,
        unbound_any_customer=state.settings.admin.unbound_senders_any_customer,
    )


def _stored_response(stored: Stored) -> web.Response:
    if stored.repeat:
        return web.Response(
            status=200,
            text=f"repeat of active alarm {stored.id} (repeats: {stored.repeats})\n",
            content_type="text/plain",
        )
    return web.Response(
        status=201, text=f"stored as event {stored.id}\n", content_type="text/plain"
    )


async def receive_event(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    pool = pool_of(request)
    settings = state.settings
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    query = query_arguments(request)
    identity = identify(peercert, query)
    sender = await identify_sender(request, state, pool, identity)
    quota = quota_key(sender, identity, request.remote)
    state.quota.check(quota, request.content_length or 0)
    body = await _read_event_body(request, settings, query)
    received_at = datetime.now(UTC)
    content_type = request.headers.get("Content-Type", "")[:200]
    parsed = parse_event(
        body,
        content_type,
        query,
        received_at,
        future_limit=settings.events.time_future_limit,
        past_limit=settings.events.time_past_limit,
    )
    size = len(body) or len(request.query_string)
    state.quota.check(quota, size)
    state.quota.spend(quota, size)
    mac, hardware_id = _event_device(sender, identity, parsed)
    if sender.account is not None:
        await _authorize_account(request, state, pool, sender.account, mac, hardware_id)
    event = NewEvent(
        received_at=received_at,
        parsed=parsed,
        device_mac=mac,
        device_hardware_id=hardware_id,
        device_ip=identity.ip or parsed.device_ip,
        proof=sender.proof,
        account=sender.account,
        source_address=request.remote,
        content_type=printable(content_type, 200),
        raw=body if body else request.query_string.encode("utf-8", errors="replace"),
    )
    return _stored_response(await state.writer.submit(event))


# --- admin API ---------------------------------------------------------------------------------

READERS = frozenset({Role.ADMIN, Role.OPERATOR})
ADMINS = frozenset({Role.ADMIN})


def parse_severity(value: str) -> int:
    """``Major`` -> 3: events at least this severe (syslog numbers, lower is worse)."""
    lowered = value.strip().lower()
    if lowered in ALARM_SEVERITIES:
        return ALARM_SEVERITIES[lowered][1]
    if lowered in SYSLOG_LEVELS:
        return SYSLOG_LEVELS.index(lowered)
    if lowered.isdigit() and int(lowered) <= 7:
        return int(lowered)
    raise errors.Invalid(
        "severity: Critical, Major, Minor, Indeterminate, a syslog level name or 0..7"
    )


def parse_since(value: str, now: datetime) -> datetime:
    """``30m``, ``2h``, ``7d`` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    match = re.fullmatch(r"(\d{1,6})([smhd])", value.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return now - timedelta(seconds=int(match.group(1)) * unit)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise errors.Invalid("since: like 30m, 2h, 7d or 2026-01-31T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    device: tuple[str | None, str | None] | None = None
    customer: str | None = None
    max_severity: int | None = None
    since: datetime | None = None
    active: bool = False

    @classmethod
    def from_values(
        cls,
        *,
        device: str | None,
        customer: str | None,
        severity: str | None,
        since: str | None,
        active: bool,
        now: datetime,
    ) -> Filters:
        return cls(
            device=parse_device(device) if device else None,
            customer=customer or None,
            max_severity=parse_severity(severity) if severity else None,
            since=parse_since(since, now) if since else None,
            active=active,
        )


async def query_events(
    repository: EventRepository,
    filters: Filters,
    *,
    limit: int,
    after: int | None = None,
    before: int | None = None,
    include_repeats: bool = False,
) -> list[asyncpg.Record]:
    """The events ``filters`` select: the newest ``limit`` (below ``before``), or with ``after``
    the oldest ``limit`` from there."""
    return await repository.query(
        device=filters.device,
        customer=filters.customer,
        max_severity=filters.max_severity,
        since=filters.since,
        active=filters.active,
        after=after,
        before=before,
        limit=limit,
        include_repeats=include_repeats,
    )


def event_json(row: asyncpg.Record) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in dict(row).items():
        if isinstance(value, datetime):
            result[key] = value.astimezone(UTC).isoformat()
        else:
            result[key] = value
    return result


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise errors.Invalid(f"{name}: must be 1 or 0")


def _filters(request: web.Request) -> Filters:
    return Filters.from_values(
        device=request.query.get("device"),
        customer=request.query.get("customer"),
        severity=request.query.get("severity"),
        since=request.query.get("since"),
        active=_flag(request, "active"),
        now=datetime.now(UTC),
    )


async def list_events(request: web.Request) -> web.Response:
    filters = _filters(request)
    limit = int_query(request, "limit", 100, 1, 10000)
    after_raw = request.query.get("after", "")
    before_raw = request.query.get("before", "")
    after = int_query(request, "after", 0, 0, 2**62) if after_raw else None
    before = int_query(request, "before", 0, 0, 2**62) if before_raw else None
    wait = float(int_query(request, "wait", 0, 0, 60))
    deadline = time.monotonic() + wait
    pool = pool_of(request)
    while True:
        async with acquire(pool) as connection:
            rows = await query_events(
                EventRepository(connection),
                filters,
                limit=limit,
                after=after,
                before=before,
                include_repeats=_flag(request, "repeats"),
            )
        # Long poll (tail -f over HTTP): with after= and wait=, wait for the next events.
        if rows or after is None or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)
    return json_response({"events": [event_json(row) for row in rows], "limit": limit})


async def get_raw(request: web.Request) -> web.Response:
    raw_id = request.match_info["id"]
    if not raw_id.isdigit() or len(raw_id) > 18:
        raise errors.Invalid("id: an event id")
    async with acquire(pool_of(request)) as connection:
        raw = await EventRepository(connection).raw(int(raw_id))
    if raw is None:
        raise errors.NotFound(f"no event {raw_id}")
    return web.Response(body=raw, content_type="application/octet-stream")


async def list_destinations(request: web.Request) -> web.Response:
    async with acquire(pool_of(request)) as connection:
        cursors = await DeliveryRepository(connection).cursors()
    now = datetime.now(UTC)
    return json_response(
        {
            "destinations": [
                {
                    "name": c.name,
                    "url": c.url,
                    "delivered_id": c.delivered_id,
                    "delivered_total": c.delivered_total,
                    "backlog": c.backlog,
                    "oldest_undelivered_seconds": (
                        (now - c.oldest_undelivered_at).total_seconds()
                        if c.oldest_undelivered_at
                        else 0.0
                    ),
                    "holder": c.holder,
                    "last_error": c.last_error,
                    "updated_at": c.updated_at.isoformat(),
                }
                for c in cursors
            ]
        }
    )


async def prune(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    deleted = await run_retention(
        pool_of(request), settings, datetime.now(UTC), dry_run=_flag(request, "dry_run")
    )
    return json_response({"ran": deleted is not None, "deleted": deleted or 0})


ENDPOINTS: list[Endpoint] = [
    openapi_endpoint(
        "pbxfront events API", "/api/v1/events/openapi.json", READERS, lambda _request: ENDPOINTS
    ),
    Endpoint(
        "GET",
        "/api/v1/events",
        list_events,
        READERS,
        "Stored events, newest first (with after=: oldest first from there)",
        query={
            "device": "MAC or hardware id",
            "customer": "customer id",
            "severity": "at least this severe: Critical, Major, Minor, Indeterminate, syslog",
            "since": "last seen since: 30m, 2h, 7d or an ISO 8601 time",
            "active": "1: only active alarms",
            "after": "only events with a larger id (ascending order; for tailing)",
            "before": "only events with a smaller id (next page)",
            "wait": "with after=: wait up to this many seconds for new events (long poll)",
            "repeats": "1: include repeats kept with events.forward_repeats",
            "limit": "page size (1..10000)",
        },
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/events/{id}/raw",
        get_raw,
        READERS,
        "The request body (or query) exactly as the device sent it",
    ),
    Endpoint(
        "GET",
        "/api/v1/events/destinations",
        list_destinations,
        READERS,
        "Syslog destinations: delivery cursor, backlog, oldest undelivered age, last error",
        response=OBJECT,
    ),
    Endpoint(
        "POST",
        "/api/v1/events/prune",
        prune,
        ADMINS,
        "Apply retention now (once per cluster)",
        query={"dry_run": "1: only count what would be deleted"},
        response=OBJECT,
    ),
]
