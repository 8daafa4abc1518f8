"""SQL of the events service: the append-only event log, alarm deduplication, retention and
queries (the delivery cursors are ``delivery.py``'s).

Contract of :meth:`EventRepository.append`: one transaction per batch, holding the append lock
(an advisory transaction lock) from the first id it takes to its commit, so ids become visible in
id order cluster-wide and a reader of "id > cursor" can never skip a row that commits later.
It sends ``NOTIFY pbxfront_events`` with the newest id in the same transaction.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.events.parse import ALARM_CLEAR, ALARM_SET, EVENT, ParsedEvent

# Advisory lock ids ("pbxe"): the append lock, retention, and a class for per-destination
# forwarding locks (second key: CRC-32 of the destination name).
APPEND_LOCK_ID = 0x70627865
RETENTION_LOCK_ID = 0x70627866
FORWARD_LOCK_CLASS = 0x70627867
NOTIFY_CHANNEL = "pbxfront_events"
# A batch's transaction opens with the append lock in the same round trip (append()).
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK_ID:d})"

_COLUMNS = (
    "received_at, kind, event_time, time_flag, code, severity, syslog_severity, source, text, "
    "details, device_mac, device_hardware_id, device_ip, remote_hardware_id, remote_ip, "
    "customer, proof, account, source_address, content_type, raw, fields, problems, alarm_key, "
    "active, last_seen_at, repeat_of"
)
OUTGOING_COLUMNS = (
    "id, received_at, kind, event_time, time_flag, code, severity, syslog_severity, source, "
    "text, details, device_mac, device_hardware_id, remote_hardware_id, customer, repeats, "
    "repeat_of"
)
# The customer from the inventory, by MAC, else by hardware id (both indexed).
_CUSTOMER = """COALESCE(
    (SELECT d.customer FROM devices d WHERE d.mac = {mac}),
    (SELECT d.customer FROM devices d WHERE d.hardware_id = {hwid}))"""


def backup_alert_event(alert: Any, received_at: datetime) -> NewEvent:
    """The event for one ``backup_alerts`` row: ``backup-changed`` (notice), ``backup-stale`` or
    ``backup-drift`` (warning), source ``backup``, the alert's own fields kept."""
    fields = {key: str(value) for key, value in dict(alert).items() if value is not None}
    # drift: a stored config contradicts the Frontend plan (services/frontend/, migration 013).
    warning = alert["kind"] in ("stale", "drift")
    parsed = ParsedEvent(
        kind=EVENT,
        syslog_severity=4 if warning else 5,
        fields=fields,
        event_time=alert["created_at"],
        code=f"backup-{alert['kind']}",
        severity="warning" if warning else "notice",
        source="backup",
        text=alert["message"],
        device_hardware_id=alert["hardware_id"],
        device_mac=alert["mac"],
    )
    return NewEvent(
        received_at=received_at,
        parsed=parsed,
        device_mac=alert["mac"],
        device_hardware_id=alert["hardware_id"],
        device_ip=None,
        proof="internal",
        account=None,
        source_address=None,
        content_type="application/json",
        raw=json.dumps(fields, sort_keys=True).encode(),
    )


def audit_event(entry: Any, received_at: datetime) -> NewEvent:
    """The event for one ``audit_log`` row (migration 015): code and source ``audit``, notice;
    the text says who changed what from where; the row (secrets redacted by its writer) is the
    raw body."""
    fields = {
        "audit_id": str(entry["id"]),
        "actor": entry["actor"],
        "origin": entry["origin"],
        "action": entry["action"],
        "object_type": entry["object_type"],
        "object_id": entry["object_id"],
    }
    parsed = ParsedEvent(
        kind=EVENT,
        syslog_severity=5,
        fields=fields,
        event_time=entry["at"],
        code="audit",
        severity="notice",
        source="audit",
        text=(
            f"{entry['actor']}@{entry['origin']} {entry['action']} "
            f"{entry['object_type']} {entry['object_id']}"
        ),
    )
    raw = {**fields, "before": entry["before"], "after": entry["after"]}
    return NewEvent(
        received_at=received_at,
        parsed=parsed,
        device_mac=None,
        device_hardware_id=None,
        device_ip=None,
        proof="internal",
        account=entry["actor"],
        source_address=None if entry["origin"] == "cli" else entry["origin"],
        content_type="application/json",
        raw=raw_json(raw),
    )


def raw_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, default=str).encode()


@dataclass(frozen=True)
class NewEvent:
    """One received event, ready to store."""

    received_at: datetime
    parsed: ParsedEvent
    device_mac: str | None
    device_hardware_id: str | None
    device_ip: str | None
    proof: str  # certificate | credentials
    account: str | None
    source_address: str | None
    content_type: str
    raw: bytes

    @property
    def alarm_key(self) -> str | None:
        if self.parsed.kind not in (ALARM_SET, ALARM_CLEAR):
            return None
        device = self.device_mac or self.device_hardware_id or f"addr:{self.source_address}"
        parts = (device, self.parsed.remote_hardware_id, self.parsed.code, self.parsed.source)
        return "|".join(part or "" for part in parts)

    def values(self) -> tuple[Any, ...]:
        """Column values in ``_COLUMNS`` order (customer, active, repeat_of filled in SQL)."""
        p = self.parsed
        return (
            self.received_at,
            p.kind,
            p.event_time,
            p.time_flag,
            p.code,
            p.severity,
            p.syslog_severity,
            p.source,
            p.text,
            p.details,
            self.device_mac,
            self.device_hardware_id,
            self.device_ip,
            p.remote_hardware_id,
            p.remote_ip,
            self.proof,
            self.account,
            self.source_address,
            self.content_type,
            self.raw,
            json.dumps(p.fields, ensure_ascii=False),
            json.dumps(p.problems, ensure_ascii=False),
            self.alarm_key,
        )


@dataclass(frozen=True)
class Stored:
    """What became of one event: a new row, or a repeat counted on an active alarm."""

    id: int
    repeat: bool
    repeats: int = 0
    # The alarm a clear closed, if any.
    cleared: int | None = None


@dataclass(frozen=True)
class DeviceRef:
    mac: str
    hardware_id: str
    customer: str


# Only the constant fragments above are interpolated into SQL here and below.
_PLAIN_INSERT = f"""
INSERT INTO events ({_COLUMNS})
SELECT u.received_at, u.kind, u.event_time, u.time_flag, u.code, u.severity, u.syslog_severity,
       u.source, u.text, u.details,
       COALESCE(u.device_mac,
                (SELECT d.mac FROM devices d WHERE d.hardware_id = u.device_hardware_id)),
       COALESCE(u.device_hardware_id,
                (SELECT d.hardware_id FROM devices d WHERE d.mac = u.device_mac)),
       u.device_ip,
       u.remote_hardware_id, u.remote_ip,
       {_CUSTOMER.format(mac="u.device_mac", hwid="u.device_hardware_id")},
       u.proof, u.account, u.source_address, u.content_type, u.raw, u.fields::jsonb,
       ARRAY(SELECT jsonb_array_elements_text(u.problems::jsonb)), u.alarm_key, false,
       u.received_at, NULL
FROM unnest($1::timestamptz[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
            $6::text[], $7::smallint[], $8::text[], $9::text[], $10::text[], $11::text[],
            $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
            $18::text[], $19::text[], $20::bytea[], $21::text[], $22::text[], $23::text[])
     WITH ORDINALITY AS u(received_at, kind, event_time, time_flag, code, severity,
                          syslog_severity, source, text, details, device_mac,
                          device_hardware_id, device_ip, remote_hardware_id, remote_ip, proof,
                          account, source_address, content_type, raw, fields, problems,
                          alarm_key, position)
ORDER BY u.position
RETURNING id
"""  # noqa: S608

# A batch of plain events (no alarms) as one statement, so one round trip: outside a
# transaction it commits on its own. The append lock comes first (every row of the insert's
# input joins the lock's row and the input is sorted before the first id is drawn); the NOTIFY
# is sent on that commit; the ids come back in batch order.
_LOCKED_PLAIN_INSERT = f"""
WITH append_lock AS MATERIALIZED (SELECT pg_advisory_xact_lock({APPEND_LOCK_ID:d})),
inserted AS (
{_PLAIN_INSERT.replace("FROM unnest(", "FROM append_lock, unnest(", 1)}),
announced AS MATERIALIZED (
    SELECT pg_notify('{NOTIFY_CHANNEL}', max(id)::text) FROM inserted
)
SELECT id FROM inserted, announced ORDER BY id
"""  # noqa: S608

_SINGLE_VALUES = f"""
SELECT $1::timestamptz, $2::text, $3::timestamptz, $4::text, $5::text, $6::text, $7::smallint,
       $8::text, $9::text, $10::text,
       COALESCE($11::text, (SELECT d.mac FROM devices d WHERE d.hardware_id = $12::text)),
       COALESCE($12::text, (SELECT d.hardware_id FROM devices d WHERE d.mac = $11::text)),
       $13::text, $14::text, $15::text,
       {_CUSTOMER.format(mac="$11::text", hwid="$12::text")},
       $16::text, $17::text, $18::text, $19::text, $20::bytea, $21::text::jsonb,
       ARRAY(SELECT jsonb_array_elements_text($22::text::jsonb)), $23::text"""  # noqa: S608

_ALARM_REPEAT = """
UPDATE events SET repeats = repeats + 1, last_seen_at = $2
WHERE alarm_key = $1 AND active
RETURNING id, repeats
"""

_ALARM_INSERT = f"""
INSERT INTO events ({_COLUMNS})
{_SINGLE_VALUES}, $24::boolean, $1::timestamptz, $25::bigint
RETURNING id
"""

_ALARM_CLOSE = """
UPDATE events SET active = false, cleared_at = $2, cleared_by = $3
WHERE alarm_key = $1 AND active
RETURNING id
"""


def _newest(results: Sequence[Stored], forward_repeats: bool) -> int:
    """The newest id a batch gives the forwarders (0: none)."""
    return max((r.id for r in results if not r.repeat or forward_repeats), default=0)


class EventRepository:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    # --- intake --------------------------------------------------------------------------------

    async def import_backup_alerts(self, received_at: datetime, limit: int = 1000) -> int:
        """Turn config-backup alerts not imported yet into events (in alert order); how many.
        The import cursor's row lock lets one node at a time do it, each alert exactly once."""
        async with self._db.transaction():
            last = await self._db.fetchval(
                "SELECT last_id FROM event_imports WHERE source = 'backup_alerts' FOR UPDATE"
            )
            rows = await self._db.fetch(
                """SELECT id, kind, mac, hardware_id, customer, created_at, version_id,
                          previous_version_id, lines_added, lines_removed, last_put_at, message
                   FROM backup_alerts WHERE id > $1 ORDER BY id LIMIT $2""",
                last,
                limit,
            )
            if not rows:
                return 0
            await self.append(
                [backup_alert_event(row, received_at) for row in rows], forward_repeats=False
            )
            await self._db.execute(
                "UPDATE event_imports SET last_id = $1 WHERE source = 'backup_alerts'",
                rows[-1]["id"],
            )
        return len(rows)

    async def import_audit(self, received_at: datetime, limit: int = 1000) -> int:
        """Turn audit rows not imported yet into events (in id order); how many. Like
        :meth:`import_backup_alerts`: the cursor's row lock makes each row one event."""
        async with self._db.transaction():
            last = await self._db.fetchval(
                "SELECT last_id FROM event_imports WHERE source = 'audit_log' FOR UPDATE"
            )
            if last is None:
                return 0
            rows = await self._db.fetch(
                """SELECT id, at, actor, origin, action, object_type, object_id,
                          before::text AS before, after::text AS after
                   FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2""",
                last,
                limit,
            )
            if not rows:
                return 0
            events = [
                audit_event(
                    {
                        **dict(row),
                        "before": None if row["before"] is None else json.loads(row["before"]),
                        "after": None if row["after"] is None else json.loads(row["after"]),
                    },
                    received_at,
                )
                for row in rows
            ]
            await self.append(events, forward_repeats=False)
            await self._db.execute(
                "UPDATE event_imports SET last_id = $1 WHERE source = 'audit_log'", rows[-1]["id"]
            )
        return len(rows)

    async def append(self, batch: Sequence[NewEvent], *, forward_repeats: bool) -> list[Stored]:
        """Store ``batch`` in one transaction (see the module docstring); results in order.
        Inside a caller's transaction (the imports) it is a savepoint of that one."""
        if self._db.is_in_transaction():
            async with self._db.transaction():
                await self._db.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK_ID)
                results = await self._insert_batch(batch, forward_repeats)
                newest = _newest(results, forward_repeats)
                if newest:
                    await self._db.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(newest))
            return results
        # Every node's batches wait for the append lock, so each round trip from taking it to
        # the commit is one the whole cluster waits for. Plain events: one statement that
        # commits on its own (lock, rows, NOTIFY). With alarms: BEGIN goes with the lock and the
        # NOTIFY with the COMMIT (simple-query strings of constants and an id). A failure rolls
        # back; nothing of the batch stays.
        if batch and all(event.parsed.kind not in (ALARM_SET, ALARM_CLEAR) for event in batch):
            columns = list(zip(*(event.values() for event in batch), strict=True))
            rows = await self._db.fetch(_LOCKED_PLAIN_INSERT, *(list(c) for c in columns))
            return [Stored(row["id"], repeat=False) for row in rows]
        await self._db.execute(_BEGIN_LOCKED)
        try:
            results = await self._insert_batch(batch, forward_repeats)
            newest = _newest(results, forward_repeats)
            notify = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '{newest:d}'); " if newest else ""
            await self._db.execute(notify + "COMMIT")
        except BaseException:
            if not self._db.is_closed() and self._db.is_in_transaction():
                with contextlib.suppress(Exception):
                    await self._db.execute("ROLLBACK")
            raise
        return results

    async def _insert_batch(self, batch: Sequence[NewEvent], forward_repeats: bool) -> list[Stored]:
        results: list[Stored] = []
        run: list[NewEvent] = []
        for event in batch:
            if event.parsed.kind in (ALARM_SET, ALARM_CLEAR):
                results.extend(await self._insert_plain(run))
                run = []
                results.append(await self._alarm(event, forward_repeats))
            else:
                run.append(event)
        results.extend(await self._insert_plain(run))
        return results

    async def _insert_plain(self, run: list[NewEvent]) -> list[Stored]:
        if not run:
            return []
        columns = list(zip(*(event.values() for event in run), strict=True))
        rows = await self._db.fetch(_PLAIN_INSERT, *(list(column) for column in columns))
        return [Stored(row["id"], repeat=False) for row in rows]

    async def _alarm(self, event: NewEvent, forward_repeats: bool) -> Stored:
        key = event.alarm_key
        if event.parsed.kind == ALARM_SET:
            hit = await self._db.fetchrow(_ALARM_REPEAT, key, event.received_at)
            if hit is None:
                new_id = await self._db.fetchval(_ALARM_INSERT, *event.values(), True, None)
                return Stored(new_id, repeat=False)
            if forward_repeats:
                # Kept as its own (inactive) row so the forwarder sends it again.
                await self._db.fetchval(_ALARM_INSERT, *event.values(), False, hit["id"])
            return Stored(hit["id"], repeat=True, repeats=hit["repeats"])
        new_id = await self._db.fetchval(_ALARM_INSERT, *event.values(), False, None)
        closed = await self._db.fetchval(_ALARM_CLOSE, key, event.received_at, new_id)
        return Stored(new_id, repeat=False, cleared=closed)

    async def known_devices(
        self, keys: Sequence[tuple[str | None, str | None]]
    ) -> dict[tuple[str | None, str | None], DeviceRef]:
        """The inventory devices with these (MAC, hardware id) keys (by MAC when given, else by
        hardware id; both given must agree), in one query. Unknown keys are absent."""
        macs = [mac for mac, _ in keys if mac is not None]
        hardware_ids = [hwid for mac, hwid in keys if mac is None and hwid is not None]
        rows = await self._db.fetch(
            """SELECT mac, hardware_id, customer FROM devices
               WHERE mac = ANY($1::text[]) OR hardware_id = ANY($2::text[])""",
            macs,
            hardware_ids,
        )
        by_mac = {
            row["mac"]: DeviceRef(row["mac"], row["hardware_id"], row["customer"]) for row in rows
        }
        by_hwid = {device.hardware_id: device for device in by_mac.values()}
        result: dict[tuple[str | None, str | None], DeviceRef] = {}
        for mac, hardware_id in keys:
            device = by_mac.get(mac) if mac is not None else by_hwid.get(hardware_id or "")
            if device is not None and (hardware_id is None or device.hardware_id == hardware_id):
                result[(mac, hardware_id)] = device
        return result

    # --- queries -------------------------------------------------------------------------------

    async def query(
        self,
        *,
        device: tuple[str | None, str | None] | None = None,
        customer: str | None = None,
        max_severity: int | None = None,
        since: datetime | None = None,
        active: bool = False,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        include_repeats: bool = False,
    ) -> list[asyncpg.Record]:
        """Newest first (or, with ``after``, oldest first from there), filtered."""
        mac, hardware_id = device if device is not None else (None, None)
        order = "ASC" if after is not None else "DESC"
        rows: list[asyncpg.Record] = await self._db.fetch(
            f"""SELECT id, received_at, kind, event_time, time_flag, code, severity,
                       syslog_severity, source, text, details, device_mac, device_hardware_id,
                       device_ip, remote_hardware_id, remote_ip, customer, proof, account,
                       source_address, content_type, problems, active, repeats, last_seen_at,
                       cleared_at, cleared_by, repeat_of, fields
                FROM events
                WHERE ($1::text IS NULL OR device_mac = $1)
                  AND ($2::text IS NULL OR device_hardware_id = $2)
                  AND ($3::text IS NULL OR customer = $3)
                  AND ($4::int IS NULL OR syslog_severity <= $4)
                  AND ($5::timestamptz IS NULL OR last_seen_at >= $5)
                  AND (NOT $6 OR active)
                  AND ($7::bigint IS NULL OR id > $7)
                  AND ($8::bigint IS NULL OR id < $8)
                  AND ($9 OR repeat_of IS NULL)
                ORDER BY id {order} LIMIT $10""",  # noqa: S608
            mac,
            hardware_id,
            customer,
            max_severity,
            since,
            active,
            after,
            before,
            include_repeats,
            limit,
        )
        return rows

    async def raw(self, event_id: int) -> bytes | None:
        raw: bytes | None = await self._db.fetchval(
            "SELECT raw FROM events WHERE id = $1", event_id
        )
        return raw

    async def newest_id(self) -> int:
        newest: int = await self._db.fetchval("SELECT COALESCE(max(id), 0) FROM events")
        return newest

    # --- retention -----------------------------------------------------------------------------

    async def prune(
        self,
        now: datetime,
        *,
        days: float,
        per_device: int,
        destinations: Sequence[str],
        dry_run: bool = False,
    ) -> int | None:
        """Delete what retention allows; None when another node is running it. Never deletes an
        active alarm nor an event some configured destination has not been given yet."""
        async with self._db.transaction():
            if not await self._db.fetchval(
                "SELECT pg_try_advisory_xact_lock($1)", RETENTION_LOCK_ID
            ):
                return None
            protected: int | None = await self._db.fetchval(
                """SELECT min(delivered_id) FROM event_destinations WHERE name = ANY($1)""",
                list(destinations),
            )
            if destinations and protected is None:
                protected = 0  # a destination without a cursor yet has been given nothing
            cutoff = now - timedelta(days=days) if days > 0 else None
            doomed = """
                SELECT id FROM events
                WHERE NOT active
                  AND ($3::bigint IS NULL OR id <= $3)
                  AND (($1::timestamptz IS NOT NULL AND last_seen_at < $1)
                       OR ($2 > 0 AND id IN (
                           SELECT id FROM (
                               SELECT id, row_number() OVER (
                                   PARTITION BY COALESCE(device_mac, device_hardware_id,
                                                         source_address)
                                   ORDER BY id DESC) AS position
                               FROM events) ranked
                           WHERE position > $2)))"""
            if dry_run:
                count: int = await self._db.fetchval(
                    f"SELECT count(*) FROM ({doomed}) d",  # noqa: S608
                    cutoff,
                    per_device,
                    protected,
                )
                return count
            status: str = await self._db.execute(
                f"DELETE FROM events WHERE id IN ({doomed})",  # noqa: S608
                cutoff,
                per_device,
                protected,
            )
            return int(status.rsplit(" ", 1)[-1])
