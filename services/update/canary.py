"""Canary roll-outs of a published script version (issue #15 item 4).

A roll-out moves devices from the current version to a new one in waves: named devices or
customers first, then shares of the rest (``10%``, ``50%``, ``100%``). A wave's devices get the
new version at once; the wave advances only when every one of them polled on it and came back in
sync (after the reset its script asked for) and none raised a new alarm within the soak time. A
wave whose devices do not all come back within the wave timeout, or that raised an alarm, halts
the roll-out, with the reason; it never proceeds by time alone. ``resume`` watches the wave
again, ``abort`` sends every device back to the version before. After the last wave the new
version becomes the current one for every device, new ones included.

State lives in PostgreSQL (migration 020), so every node serves each device the same version:
:class:`CanaryState` is this node's copy, reloaded after ``NOTIFY pbxfront_rollouts``. One node
advances the roll-outs at a time (:func:`advance`, under an advisory lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.core import errors
from services.core.db import acquire
from services.core.inventory import InventoryRepository

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: one node advances the roll-outs at a time.
ADVANCE_LOCK_ID = 0x70627866_0014
_WAVE = re.compile(r"(mac|customer):([A-Za-z0-9._,:-]+)|(\d{1,3})%")


@dataclass(frozen=True)
class Wave:
    label: str
    macs: tuple[str, ...] = ()
    customers: tuple[str, ...] = ()
    percent: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "macs": list(self.macs),
            "customers": list(self.customers),
            "percent": self.percent,
        }


def parse_waves(specs: Sequence[str]) -> list[Wave]:
    """``mac:009033010203,009033010204``, ``customer:Kuenkel00001``, ``10%`` ... in order; the
    last wave must be ``100%`` so the roll-out reaches every device."""
    waves: list[Wave] = []
    previous_percent = 0
    for spec in specs:
        match = _WAVE.fullmatch(spec.strip())
        if match is None:
            raise errors.Invalid(f"wave {spec!r}: mac:MAC[,MAC], customer:ID[,ID] or N%")
        if match.group(3) is not None:
            percent = int(match.group(3))
            if not previous_percent < percent <= 100:
                raise errors.Invalid(f"wave {spec!r}: shares must grow, up to 100%")
            previous_percent = percent
            waves.append(Wave(spec, percent=percent))
        elif match.group(1) == "mac":
            macs = tuple(
                m.replace(":", "").replace("-", "").lower() for m in match.group(2).split(",")
            )
            if not all(re.fullmatch(r"[0-9a-f]{12}", m) for m in macs):
                raise errors.Invalid(f"wave {spec!r}: MACs are 12 hex digits")
            waves.append(Wave(spec, macs=macs))
        else:
            waves.append(Wave(spec, customers=tuple(match.group(2).split(","))))
    if not waves or waves[-1].percent != 100:
        raise errors.Invalid("the last wave must be 100% (every device)")
    return waves


def share_order(rollout_id: int, mac: str) -> str:
    """A stable order of the devices for share waves, different for every roll-out."""
    return hashlib.sha256(f"{rollout_id}:{mac}".encode()).hexdigest()


def wave_members(
    wave: Wave,
    rollout_id: int,
    devices: Sequence[tuple[str, str]],
    assigned: set[str],
) -> list[str]:
    """MACs the wave adds (pure). ``devices``: (mac, customer) of the inventory."""
    if wave.percent is not None:
        wanted = math.ceil(len(devices) * wave.percent / 100)
        ordered = sorted((mac for mac, _ in devices), key=lambda m: share_order(rollout_id, m))
        return [mac for mac in ordered[:wanted] if mac not in assigned]
    known = {mac for mac, _ in devices}
    if wave.macs:
        return [mac for mac in wave.macs if mac in known and mac not in assigned]
    customers = set(wave.customers)
    return [mac for mac, customer in devices if customer in customers and mac not in assigned]


@dataclass(frozen=True)
class Rollout:
    id: int
    kind: str  # scripts | firmware
    from_version: int | None
    to_version: int | None
    device_type: str | None
    firmware_kind: str | None
    build: str | None
    waves: tuple[Wave, ...]
    soak_seconds: int
    wave_timeout_seconds: int
    state: str
    wave: int
    wave_started_at: datetime
    wave_synced_at: datetime | None
    reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    assigned: int = 0

    @property
    def open(self) -> bool:
        return self.state in ("running", "halted")

    @property
    def target(self) -> str:
        if self.kind == "firmware":
            return f"{self.device_type} fw-{self.firmware_kind} {self.build}"
        return f"version {self.to_version}"

    @property
    def change(self) -> str:
        if self.kind == "firmware":
            return f"{self.device_type} fw-{self.firmware_kind} -> {self.build}"
        return f"v{self.from_version} -> v{self.to_version}"

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["waves"] = [w.as_json() for w in self.waves]
        for name in ("wave_started_at", "wave_synced_at", "created_at", "updated_at"):
            value = data[name]
            data[name] = value.isoformat() if value is not None else None
        return data


def _rollout(row: Any) -> Rollout:
    data = dict(row)
    waves = data["waves"]
    if isinstance(waves, str):
        waves = json.loads(waves)
    data["waves"] = tuple(
        Wave(w["label"], tuple(w["macs"]), tuple(w["customers"]), w["percent"]) for w in waves
    )
    return Rollout(**data)


_SELECT = """
    SELECT r.id, r.kind, r.from_version, r.to_version, r.device_type, r.firmware_kind, r.build,
           r.waves, r.soak_seconds, r.wave_timeout_seconds,
           r.state, r.wave, r.wave_started_at, r.wave_synced_at, r.reason, r.created_by,
           r.created_at, r.updated_at,
           (SELECT count(*) FROM script_rollout_devices d WHERE d.rollout_id = r.id) AS assigned
    FROM script_rollouts r
"""


@dataclass(frozen=True)
class WaveProgress:
    """Where the watched wave stands: devices not yet back in sync on the new version, and new
    alarms raised by its devices since it started."""

    members: int
    waiting: tuple[str, ...]
    alarms: tuple[str, ...]


class CanaryRepository:
    """``script_rollouts``, ``script_rollout_devices`` (migration 020). Reads the inventory,
    ``device_status`` and the events service's ``events`` table (alarms) to judge a wave."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def open_rollout(self) -> Rollout | None:
        row = await self._db.fetchrow(_SELECT + " WHERE r.state IN ('running', 'halted')")
        return _rollout(row) if row is not None else None

    async def get(self, rollout_id: int) -> Rollout:
        row = await self._db.fetchrow(_SELECT + " WHERE r.id = $1", rollout_id)
        if row is None:
            raise errors.NotFound(f"no roll-out {rollout_id}")
        return _rollout(row)

    async def list(self, limit: int = 20) -> list[Rollout]:
        rows = await self._db.fetch(_SELECT + " ORDER BY r.id DESC LIMIT $1", limit)
        return [_rollout(row) for row in rows]

    async def assigned(self, rollout_id: int) -> set[str]:
        rows = await self._db.fetch(
            "SELECT mac FROM script_rollout_devices WHERE rollout_id = $1", rollout_id
        )
        return {row["mac"] for row in rows}

    async def start(
        self,
        to_version: int,
        waves: Sequence[Wave],
        *,
        soak_seconds: int,
        wave_timeout_seconds: int,
        by: str,
    ) -> Rollout:
        """Start a roll-out from the current version; its first wave gets the new one now.
        Conflict while another roll-out is open; Invalid when the version is the current one."""
        async with self._db.transaction():
            current = await self._db.fetchval("SELECT current_version FROM script_state FOR UPDATE")
            if current is None:
                raise errors.Invalid("nothing is published yet: pbxfront scripts publish")
            if current == to_version:
                raise errors.Invalid(f"version {to_version} is the current version already")
            if not await self._db.fetchval(
                "SELECT true FROM script_versions WHERE id = $1", to_version
            ):
                raise errors.NotFound(f"no script version {to_version}")
            if await self.open_rollout() is not None:
                raise errors.Conflict("a roll-out is in progress: halt, abort or finish it first")
            rollout_id = await self._db.fetchval(
                """
                INSERT INTO script_rollouts (from_version, to_version, waves, soak_seconds,
                    wave_timeout_seconds, state, created_by)
                VALUES ($1, $2, $3::jsonb, $4, $5, 'running', $6) RETURNING id
                """,
                current,
                to_version,
                json.dumps([w.as_json() for w in waves]),
                soak_seconds,
                wave_timeout_seconds,
                by[:200],
            )
            await self._assign(int(rollout_id), 0, waves[0], None)
        return await self.get(int(rollout_id))

    async def start_firmware(
        self,
        device_type: str,
        firmware_kind: str,
        build: str,
        waves: Sequence[Wave],
        *,
        soak_seconds: int,
        wave_timeout_seconds: int,
        by: str,
    ) -> Rollout:
        """Roll ``fw-<firmware_kind> = build`` out to the devices of ``device_type``, wave by
        wave. Conflict while another roll-out is open; Invalid for a type without devices."""
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", build):
            raise errors.Invalid(f"build {build!r}: letters, digits, . _ - (as devices report it)")
        device_type = device_type.upper()
        async with self._db.transaction():
            await self._db.execute("SELECT 1 FROM script_state FOR UPDATE")
            if not await self._db.fetchval(
                "SELECT true FROM devices WHERE device_type = $1 LIMIT 1", device_type
            ):
                raise errors.Invalid(f"no device of type {device_type} in the inventory")
            if await self.open_rollout() is not None:
                raise errors.Conflict("a roll-out is in progress: halt, abort or finish it first")
            rollout_id = await self._db.fetchval(
                """
                INSERT INTO script_rollouts (kind, device_type, firmware_kind, build, waves,
                    soak_seconds, wave_timeout_seconds, state, created_by)
                VALUES ('firmware', $1, $2, $3, $4::jsonb, $5, $6, 'running', $7) RETURNING id
                """,
                device_type,
                firmware_kind,
                build,
                json.dumps([w.as_json() for w in waves]),
                soak_seconds,
                wave_timeout_seconds,
                by[:200],
            )
            await self._assign(int(rollout_id), 0, waves[0], device_type)
        return await self.get(int(rollout_id))

    async def _assign(
        self, rollout_id: int, index: int, wave: Wave, device_type: str | None
    ) -> int:
        devices = [
            (row["mac"], row["customer"])
            for row in await self._db.fetch(
                "SELECT mac, customer FROM devices WHERE $1::text IS NULL OR device_type = $1",
                device_type,
            )
        ]
        members = wave_members(wave, rollout_id, devices, await self.assigned(rollout_id))
        await self._db.executemany(
            "INSERT INTO script_rollout_devices (rollout_id, mac, wave) VALUES ($1, $2, $3)",
            [(rollout_id, mac, index) for mac in members],
        )
        return len(members)

    async def progress(self, rollout: Rollout) -> WaveProgress:
        rows = await self._db.fetch(
            """
            SELECT d.mac, s.last_seen, s.in_sync, s.script_version, s.prot, s.boot
            FROM script_rollout_devices d
            JOIN devices i ON i.mac = d.mac
            LEFT JOIN device_status s ON s.mac = d.mac
            WHERE d.rollout_id = $1 AND d.wave = $2
            ORDER BY d.mac
            """,
            rollout.id,
            rollout.wave,
        )

        def arrived(row: Any) -> bool:
            if rollout.kind == "firmware":
                # Back after the reset that loaded the build, reporting it.
                return bool(row[rollout.firmware_kind or "prot"] == rollout.build)
            return bool(row["script_version"] == rollout.to_version)

        waiting = tuple(
            row["mac"]
            for row in rows
            if not (
                row["in_sync"]
                and arrived(row)
                and row["last_seen"] is not None
                and row["last_seen"] > rollout.wave_started_at
            )
        )
        alarms = await self._db.fetch(
            """
            SELECT DISTINCT e.device_mac, e.code
            FROM events e JOIN script_rollout_devices d
                 ON d.mac = e.device_mac AND d.rollout_id = $1 AND d.wave = $2
            WHERE e.kind = 'alarm-set' AND e.repeat_of IS NULL AND e.received_at > $3
            ORDER BY e.device_mac
            """,
            rollout.id,
            rollout.wave,
            rollout.wave_started_at,
        )
        return WaveProgress(
            len(rows),
            waiting,
            tuple(f"{row['device_mac']} (alarm {row['code'] or '-'})" for row in alarms),
        )

    async def set_state(
        self, rollout_id: int, state: str, reason: str | None, *, restart_wave: bool = False
    ) -> None:
        await self._db.execute(
            """
            UPDATE script_rollouts SET state = $2, reason = $3, updated_at = now(),
                wave_started_at = CASE WHEN $4 THEN now() ELSE wave_started_at END,
                wave_synced_at = CASE WHEN $4 THEN NULL ELSE wave_synced_at END
            WHERE id = $1
            """,
            rollout_id,
            state,
            reason,
            restart_wave,
        )

    async def mark_synced(self, rollout_id: int, at: datetime) -> None:
        await self._db.execute(
            "UPDATE script_rollouts SET wave_synced_at = $2, updated_at = now() WHERE id = $1",
            rollout_id,
            at,
        )

    async def next_wave(self, rollout: Rollout) -> int:
        """Move on to the next wave (assigning its devices); the number of devices it adds."""
        index = rollout.wave + 1
        added = await self._assign(rollout.id, index, rollout.waves[index], rollout.device_type)
        await self._db.execute(
            """UPDATE script_rollouts SET wave = $2, wave_started_at = now(),
               wave_synced_at = NULL, updated_at = now() WHERE id = $1""",
            rollout.id,
            index,
        )
        return added

    async def finish(self, rollout: Rollout, by: str) -> None:
        """The last wave held: the new version (or build) is every device's now; a build is
        written to the device_type layer of the inventory, where firmware policy lives."""
        if rollout.device_type and rollout.firmware_kind and rollout.build:  # kind firmware
            await InventoryRepository(self._db).set_variable(
                "device_type", rollout.device_type, f"fw-{rollout.firmware_kind}", rollout.build
            )
        else:
            await self._db.execute(
                """UPDATE script_state SET current_version = $1, changed_at = now(),
                   changed_by = $2""",
                rollout.to_version,
                by[:200],
            )
        await self.set_state(rollout.id, "done", None)


async def advance(connection: asyncpg.Connection, now: datetime, by: str = "rollouts") -> str:
    """One step for the open roll-out, on one node at a time; what happened, as a sentence."""
    async with connection.transaction():
        if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", ADVANCE_LOCK_ID):
            return "another node is advancing the roll-outs"
        repository = CanaryRepository(connection)
        rollout = await repository.open_rollout()
        if rollout is None:
            return "no roll-out in progress"
        if rollout.state != "running":
            return f"roll-out {rollout.id} is halted: {rollout.reason}"
        progress = await repository.progress(rollout)
        label = rollout.waves[rollout.wave].label
        if progress.alarms:
            reason = f"wave {label}: new alarms from {', '.join(progress.alarms[:10])}"
            await repository.set_state(rollout.id, "halted", reason)
            return f"roll-out {rollout.id} halted: {reason}"
        if progress.waiting:
            elapsed = (now - rollout.wave_started_at).total_seconds()
            if elapsed > rollout.wave_timeout_seconds:
                reason = (
                    f"wave {label}: not back in sync on {rollout.target} within "
                    f"{rollout.wave_timeout_seconds} s: {', '.join(progress.waiting[:10])}"
                    + (
                        f" and {len(progress.waiting) - 10} more"
                        if len(progress.waiting) > 10
                        else ""
                    )
                )
                await repository.set_state(rollout.id, "halted", reason)
                return f"roll-out {rollout.id} halted: {reason}"
            return (
                f"roll-out {rollout.id}, wave {label}: {len(progress.waiting)} of "
                f"{progress.members} devices not back in sync yet"
            )
        if rollout.wave_synced_at is None:
            await repository.mark_synced(rollout.id, now)
            if rollout.soak_seconds > 0:
                return (
                    f"roll-out {rollout.id}, wave {label}: in sync; soaking "
                    f"{rollout.soak_seconds} s"
                )
        elif (now - rollout.wave_synced_at).total_seconds() < rollout.soak_seconds:
            return f"roll-out {rollout.id}, wave {label}: soaking"
        if rollout.wave + 1 < len(rollout.waves):
            added = await repository.next_wave(rollout)
            return (
                f"roll-out {rollout.id}: wave {label} held; wave "
                f"{rollout.waves[rollout.wave + 1].label} started with {added} devices"
            )
        await repository.finish(rollout, by)
        return f"roll-out {rollout.id} done: {rollout.target} is current"


@dataclass
class CanaryState:
    """This node's copy of the open roll-out: which devices get which version."""

    rollout_id: int | None = None
    kind: str | None = None
    from_version: int | None = None
    to_version: int | None = None
    # A firmware roll-out: (fw-prot | fw-boot, build) for the devices in its waves.
    firmware: tuple[str, str] | None = None
    assigned: set[str] = field(default_factory=set)
    # Set by NOTIFY pbxfront_rollouts (and at start): reload before the next use.
    stale: bool = True

    async def reload(self, connection: asyncpg.Connection) -> None:
        repository = CanaryRepository(connection)
        rollout = await repository.open_rollout()
        if rollout is None:
            self.rollout_id = self.from_version = self.to_version = None
            self.kind, self.firmware, self.assigned = None, None, set()
        else:
            self.rollout_id, self.kind = rollout.id, rollout.kind
            self.from_version, self.to_version = rollout.from_version, rollout.to_version
            self.firmware = (
                (f"fw-{rollout.firmware_kind}", rollout.build or "")
                if rollout.kind == "firmware"
                else None
            )
            self.assigned = await repository.assigned(rollout.id)
        self.stale = False

    def version_for(self, mac: str, current: int) -> int:
        """The published version ``mac`` gets while a roll-out is open (else ``current``)."""
        if self.kind != "scripts" or self.from_version is None or self.to_version is None:
            return current
        return self.to_version if mac in self.assigned else self.from_version

    def firmware_for(self, mac: str) -> tuple[str, str] | None:
        """(variable, build) a firmware roll-out's wave gives ``mac``, else None."""
        return self.firmware if self.firmware is not None and mac in self.assigned else None


async def advance_with_pool(pool: asyncpg.Pool) -> None:
    """The background job: one step, logged when something happened."""
    async with acquire(pool) as connection:
        outcome = await advance(connection, datetime.now(UTC))
    if "halted" in outcome or "started" in outcome or "done" in outcome:
        log.warning("%s", outcome)
