"""The update service's part of the operator console: what serve.py hands the console.

Plain async functions over a pool, returning plain values (the same data the admin API returns),
so the console package never imports a service. SQL stays in repository.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.core.config import Settings
from services.core.identity import DeviceIdentity, Proof
from services.core.inventory import Device, InventoryError, InventoryRepository
from services.core.unknown import UPDATE as UPDATE_SERVICE
from services.core.unknown import UnknownDeviceRepository
from services.update.firmware import FirmwareStore
from services.update.provisioning import (
    STAGING,
    UPDATE,
    Lifecycle,
    PolicyError,
    PollArguments,
    Urls,
    look_up,
    reply_for,
)
from services.update.repository import (
    DEVICE_SORTS,
    FLEET_SORTS,
    FleetQuery,
    RolloutRepository,
    SharedFirmwareRepository,
    UpdateRepository,
)
from services.update.scripts import ScriptError, ScriptStore, SecretRequired
from services.update.shared_firmware import firmware_source
from services.update.state import SnapshotCache

FLEET_SORT_NAMES = tuple(FLEET_SORTS)
log = logging.getLogger(__name__)


def _stale_seconds(settings: Settings) -> float:
    # The CLI's and the API's rule: not seen for three poll intervals (or never).
    return 3 * 60.0 * settings.update.poll_interval


# How long one reading of the whole fleet's order by a status column serves pages.
ORDER_SECONDS = 5.0
# A MAC as the inventory stores it: twelve lower-case hex digits (devices.mac CHECK, migration 001).
_MAC_LENGTH = 12


@dataclass(frozen=True)
class _Order:
    macs: bytes  # every device's MAC, _MAC_LENGTH ASCII characters each, in page order
    read_at: float

    @property
    def total(self) -> int:
        return len(self.macs) // _MAC_LENGTH

    def page(self, offset: int, limit: int) -> list[str]:
        cut = self.macs[offset * _MAC_LENGTH : (offset + limit) * _MAC_LENGTH].decode("ascii")
        return [cut[i : i + _MAC_LENGTH] for i in range(0, len(cut), _MAC_LENGTH)]


class FleetPages:
    """The console's fleet pages: (rows, total matching) for FleetQuery's fields.

    A page sorted by a status column (last seen, proof, phase, in sync, firmware, certificate)
    without filters would join and sort every device for each page; instead the whole order is
    read at most every ``order_seconds`` per sort and direction (one query, 1.2 MB for 100,000
    devices) and pages are cut from it, their rows read fresh. The order is at most that old:
    a device that polled since may still sit where it was; a removed one is left out. When a
    reading is due, the page that notices it is served from the previous one while the next is
    read. Everything else is one query in PostgreSQL (repository ``fleet``)."""

    def __init__(self, order_seconds: float = ORDER_SECONDS) -> None:
        self.order_seconds = order_seconds
        self._orders: dict[tuple[str, bool], _Order] = {}
        self._reading: dict[tuple[str, bool], asyncio.Task[_Order]] = {}

    async def fleet(
        self, pool: asyncpg.Pool, settings: Settings, filters: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], int]:
        query = FleetQuery(**filters, stale_after_seconds=_stale_seconds(settings))
        if query.sort in DEVICE_SORTS or not _unfiltered(query):
            async with pool.acquire() as connection:
                rows, total = await UpdateRepository(connection).fleet(query)
            return [dataclasses.asdict(row) for row in rows], total
        order = await self._order(pool, query.sort, query.descending)
        async with pool.acquire() as connection:
            rows = await UpdateRepository(connection).fleet_rows(
                order.page(query.offset, query.limit), query.stale_after_seconds
            )
        return [dataclasses.asdict(row) for row in rows], order.total

    async def _order(self, pool: asyncpg.Pool, sort: str, descending: bool) -> _Order:
        key = (sort, descending)
        order = self._orders.get(key)
        if order is not None and time.monotonic() - order.read_at < self.order_seconds:
            return order
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.create_task(self._read(pool, key))
            self._reading[key] = reading
            reading.add_done_callback(functools.partial(self._read_done, key))
        if order is not None:
            return order
        return await asyncio.shield(reading)

    async def _read(self, pool: asyncpg.Pool, key: tuple[str, bool]) -> _Order:
        async with pool.acquire() as connection:
            joined = await UpdateRepository(connection).fleet_order(*key)
        order = _Order(joined.encode("ascii"), time.monotonic())
        self._orders[key] = order
        return order

    def _read_done(self, key: tuple[str, bool], task: asyncio.Task[_Order]) -> None:
        self._reading.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("fleet order by %s could not be read: %s", key[0], task.exception())


def _unfiltered(query: FleetQuery) -> bool:
    return all(
        value is None
        for value in (
            query.search or None,
            query.customer,
            query.device_type,
            query.phase,
            query.proof,
            query.in_sync,
            query.stale,
            query.certificate,
        )
    )


async def device_types(pool: asyncpg.Pool) -> list[str]:
    return await UpdateRepository(pool).device_types()


async def device_status(pool: asyncpg.Pool, settings: Settings, mac: str) -> dict[str, Any] | None:
    statuses = await UpdateRepository(pool).statuses(mac=mac)
    if not statuses:
        return None
    status = statuses[0]
    data = dataclasses.asdict(status)
    data["stale"] = status.last_seen is None or (
        datetime.now(UTC) - status.last_seen
    ).total_seconds() > _stale_seconds(settings)
    return data


async def status_history(pool: asyncpg.Pool, mac: str, limit: int = 50) -> list[dict[str, Any]]:
    """The device's recorded status changes, newest first (migration 028)."""
    changes = await UpdateRepository(pool).status_history(mac, limit)
    return [dataclasses.asdict(change) for change in changes]


async def certificate(pool: asyncpg.Pool, mac: str) -> dict[str, Any] | None:
    statuses = await RolloutRepository(pool).statuses(mac=mac)
    if not statuses or statuses[0].rollout is None:
        return None
    return dict(statuses[0].rollout.as_json())


async def restage(connection: asyncpg.Connection, mac: str) -> bool:
    """Mark the device for staging again, in the caller's transaction (the console writes its
    audit row in the same one); False when it is not in the inventory."""
    return await UpdateRepository(connection).request_restage(mac)


async def certificate_reset(connection: asyncpg.Connection, mac: str) -> dict[str, Any] | None:
    """Forget the device's certificate roll-out, in the caller's transaction; the roll-out as
    it was (None when there was none)."""
    rollouts = RolloutRepository(connection)
    # Held until the caller commits: a poll answered meanwhile cannot advance it in between.
    before = await rollouts.lock(mac)
    if before is None or not await rollouts.reset(mac):
        return None
    return dict(before.as_json())


async def unknown_devices(pool: asyncpg.Pool, limit: int = 200) -> list[dict[str, Any]]:
    sightings = await UnknownDeviceRepository(pool).sightings(UPDATE_SERVICE, limit)
    return [dataclasses.asdict(item) for item in sightings]


async def adopt(
    connection: asyncpg.Connection,
    mac: str,
    customer: str,
    device_class: str,
    device_type: str | None,
) -> tuple[dict[str, Any] | None, str | None]:
    """Take a device that polled but is not in the inventory into it, as
    ``pbxfront devices adopt`` does, in the caller's transaction. (the device as created, None)
    when done, else (None, the reason naming the field); nothing is written then."""
    inventory = InventoryRepository(connection)
    if await inventory.get_device(mac) is not None:
        return None, f"mac: {mac} is in the inventory already"
    unknown = UnknownDeviceRepository(connection)
    sighting = await unknown.find(UPDATE_SERVICE, mac)
    device_type = device_type or (sighting.device_type if sighting else None)
    if not device_type:
        return None, "type: the device has not polled with its type; give one"
    device = Device(mac=mac, device_type=device_type, device_class=device_class, customer=customer)
    try:
        async with connection.transaction():
            created = await inventory.upsert_device(device)
    except InventoryError as error:
        return None, "; ".join(error.problems)
    if not created:
        return None, f"mac: {mac} is in the inventory already"
    await unknown.forget(UPDATE_SERVICE, [mac])
    stored = await inventory.get_device(mac)
    return (dataclasses.asdict(stored) if stored is not None else None), None


async def render_script(
    pool: asyncpg.Pool, settings: Settings, mac: str, phase: str
) -> dict[str, Any]:
    """The script ``mac`` would get now (as a proven identity, as ``pbxfront scripts render``
    does) with the explain of every variable. Secret values come back as ``secrets`` so the
    console can redact them; the text is the device's exact reply otherwise."""
    if phase not in (STAGING, UPDATE):
        raise ValueError(f"phase: must be {STAGING} or {UPDATE}")
    store = ScriptStore(settings.update.scripts_dir)
    firmware = firmware_source(settings, pool)
    await asyncio.to_thread(store.refresh)
    await firmware.refresh()
    async with pool.acquire() as connection:
        snapshot = await SnapshotCache().get(connection)
    device = snapshot.by_mac.get(mac)
    if device is None:
        return {"found": False}
    resolved = snapshot.resolve(device)
    explain = [
        {
            "name": name,
            "value": item.value,
            "secret": item.secret,
            "layer": item.layer,
            "scope": item.scope,
        }
        for name, item in sorted(resolved.items())
    ]
    customer = snapshot.customers.get(device.customer)
    secrets = [item.value for item in resolved.values() if item.secret and item.value]
    if customer is not None:
        secrets += [v for v in (customer.registration_password, customer.login_password) if v]
    identity = DeviceIdentity(Proof.PROVEN, device.mac, device.hardware_id, device.device_type)
    base = (settings.update.public_url or "https://frontend.invalid").rstrip("/")
    text: str | None = None
    error: str | None = None
    try:
        context = look_up(
            snapshot,
            device,
            identity,
            PollArguments(),
            phase,
            Urls(base),
            Lifecycle.from_settings(settings.update),
        )
        reply = reply_for(store, context, firmware.listed)
        text = reply.text.replace("\r\n", "\n")
    except (ScriptError, PolicyError, SecretRequired) as problem:
        error = str(problem)
    return {
        "found": True,
        "phase": phase,
        "text": text,
        "error": error,
        "explain": explain,
        "secrets": secrets,
    }


async def firmware_store(
    settings: Settings, pool: asyncpg.Pool | None = None
) -> list[dict[str, Any]]:
    """The files of the firmware store (build, name, sha256, size): the shared one in
    PostgreSQL with ``update.firmware_source = "database"``, else this node's folder."""
    if settings.update.firmware_source == "database" and pool is not None:
        shared = await SharedFirmwareRepository(pool).files()
        return [
            {"build": f.build, "name": f.name, "sha256": f.sha256, "size": f.size} for f in shared
        ]
    store = FirmwareStore(settings.update.firmware_dir)
    files = await asyncio.to_thread(store.list)
    return [{"build": f.build, "name": f.name, "sha256": f.sha256, "size": f.size} for f in files]


async def firmware_builds(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await UpdateRepository(pool).firmware_builds()
    return [{"device_type": t, "build": b, "devices": n} for t, b, n in rows]
