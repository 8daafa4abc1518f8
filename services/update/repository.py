"""SQL of the update service: device status, unknown devices, restaging.

Poll status is written in batches (``record_polls``, one upsert statement for many devices);
polls of one device are counted, never lost, and rows serialise on ``ON CONFLICT … DO UPDATE``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography import x509

from services.core.pki import RevokedEntry, certificate_der, certificate_names
from services.update.rollout import RolloutState


@dataclass(frozen=True)
class PollRecord:
    mac: str
    source_address: str | None
    proof: str
    phase: str
    version: str | None
    prot: str | None
    boot: str | None
    device_check: str | None
    cfg: str | None
    hash_sent: str | None
    in_sync: bool
    last_error: str | None = None
    seen: datetime = field(default_factory=lambda: datetime.now(UTC))
    # A claimed poll the operator trusts (the customer allows claimed identities): it may change
    # the status of a device that has proven itself before.
    trusted: bool = False
    firmware_suspect: str | None = None
    firmware_stuck: str | None = None
    # Polls of this record's batch that were answered for firmware_suspect (the status writer
    # folds several polls of a device into one record; only these count as attempts).
    suspect_polls: int = 0
    # The published script version served (update.scripts_source = "database").
    script_version: int | None = None


@dataclass(frozen=True)
class DeviceStatus:
    mac: str
    hardware_id: str
    customer: str
    device_type: str
    device_class: str
    first_seen: datetime | None
    last_seen: datetime | None
    polls: int
    source_address: str | None
    proof: str | None
    phase: str | None
    version: str | None
    prot: str | None
    boot: str | None
    device_check: str | None
    hash_sent: str | None
    in_sync: bool
    restage_requested: bool
    staged_at: datetime | None
    last_error: str | None
    last_proven: datetime | None = None
    claimed_seen: datetime | None = None
    claimed_address: str | None = None
    firmware_attempts: int = 0
    firmware_stuck: str | None = None
    script_version: int | None = None

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("first_seen", "last_seen", "staged_at", "last_proven", "claimed_seen"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


# Status changes kept per device (device_status_history, migration 028).
HISTORY_KEEP = 50

# A row for each device whose status differs from its newest history row; then the rows beyond
# the newest $2 + 1 of those devices go. (The DELETE sees the table as it was before this
# statement, so "newest $2 old rows" plus the one just added is the kept $2 + 1.)
_RECORD_HISTORY = """
WITH changed AS (
    SELECT s.mac, s.last_seen, s.polls, s.source_address, s.proof, s.phase, s.in_sync, s.prot,
           s.hash_sent, s.last_error
    FROM device_status s
    LEFT JOIN LATERAL (
        SELECT h.id, h.proof, h.phase, h.in_sync, h.prot, h.hash_sent, h.last_error
        FROM device_status_history h WHERE h.mac = s.mac ORDER BY h.id DESC LIMIT 1
    ) newest ON true
    WHERE s.mac = ANY($1::text[]) AND s.polls > 0
      AND (newest.id IS NULL
           OR (s.proof, s.phase, s.in_sync, s.prot, s.hash_sent, s.last_error)
              IS DISTINCT FROM (newest.proof, newest.phase, newest.in_sync, newest.prot,
                                newest.hash_sent, newest.last_error))
), added AS (
    INSERT INTO device_status_history
        (mac, at, polls, source_address, proof, phase, in_sync, prot, hash_sent, last_error)
    SELECT mac, last_seen, polls, source_address, proof, phase, in_sync, prot, hash_sent,
           last_error
    FROM changed
    RETURNING mac
), pruned AS (
    DELETE FROM device_status_history h USING changed c
    WHERE h.mac = c.mac
      AND h.id <= (SELECT o.id FROM device_status_history o WHERE o.mac = c.mac
                   ORDER BY o.id DESC OFFSET $2 LIMIT 1)
)
SELECT count(*) FROM added
"""


@dataclass(frozen=True)
class StatusChange:
    """One row of a device's status history: its status as of the poll that changed it."""

    at: datetime
    polls: int
    source_address: str | None
    proof: str
    phase: str
    in_sync: bool
    prot: str | None
    hash_sent: str | None
    last_error: str | None

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "at": self.at.isoformat()}


class UpdateRepository:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def record_polls(self, records: Sequence[PollRecord], counts: Sequence[int]) -> None:
        """Upsert many devices' status (one statement per kind of poll). ``counts[i]`` polls are
        folded into ``records[i]`` (the latest poll of that device). A staging poll clears a
        pending restage and stamps ``staged_at``. Devices deleted meanwhile are skipped.

        A claimed poll of a device that has proven itself before (and whose poll is not
        ``trusted``) changes nothing but ``claimed_seen``, ``claimed_address`` and
        ``claimed_polls``: URL arguments cannot clear a restage or overwrite what the device's
        certificate established."""
        trusted = [i for i, r in enumerate(records) if r.proof == "proven" or r.trusted]
        untrusted = [i for i in range(len(records)) if i not in set(trusted)]
        for indexes, statement in ((trusted, _UPSERT_TRUSTED), (untrusted, _UPSERT_CLAIMED)):
            if not indexes:
                continue
            chosen = [records[i] for i in indexes]
            await self._db.execute(
                statement,
                [r.mac for r in chosen],
                [counts[i] for i in indexes],
                [r.source_address for r in chosen],
                [r.proof for r in chosen],
                [r.phase for r in chosen],
                [r.version for r in chosen],
                [r.prot for r in chosen],
                [r.boot for r in chosen],
                [r.device_check for r in chosen],
                [r.cfg for r in chosen],
                [r.hash_sent for r in chosen],
                [r.in_sync for r in chosen],
                [r.last_error for r in chosen],
                [r.seen for r in chosen],
                [r.firmware_suspect for r in chosen],
                [r.firmware_stuck for r in chosen],
                [r.script_version for r in chosen],
                [r.suspect_polls for r in chosen],
            )

    async def record_history(self, macs: Sequence[str], keep: int = HISTORY_KEEP) -> int:
        """After a status write: a ``device_status_history`` row (migration 028) for each of
        ``macs`` whose status differs from its newest row (proof, phase, in sync, firmware,
        script hash sent, last error), and only the newest ``keep`` rows per such device kept.
        One statement; the number of rows added."""
        if keep < 1:
            raise ValueError("keep: at least 1")
        added = await self._db.fetchval(_RECORD_HISTORY, list(macs), keep - 1)
        return int(added or 0)

    async def status_history(self, mac: str, limit: int = HISTORY_KEEP) -> list[StatusChange]:
        """The device's recorded status changes, newest first."""
        rows = await self._db.fetch(
            """
            SELECT at, polls, source_address, proof, phase, in_sync, prot, hash_sent, last_error
            FROM device_status_history WHERE mac = $1 ORDER BY id DESC LIMIT $2
            """,
            mac,
            limit,
        )
        return [StatusChange(**dict(row)) for row in rows]

    async def clear_restage(self, mac: str, *, trusted: bool) -> None:
        """A staging poll answered: the restage is done now, not when the batched status write
        comes, so the device's next poll (seconds later in fast polling) is not sent back. An
        untrusted claimed poll of a device that has proven itself clears nothing."""
        await self._db.execute(
            """
            UPDATE device_status SET restage_requested = false, staged_at = now()
            WHERE mac = $1 AND restage_requested AND ($2 OR last_proven IS NULL)
            """,
            mac,
            trusted,
        )

    async def firmware_attempts(self, mac: str, build: str) -> int:
        """Firmware replies already sent to the device for ``build`` while its ``ver`` named it
        (0 when the last poll was about another build or none)."""
        value = await self._db.fetchval(
            "SELECT firmware_attempts FROM device_status WHERE mac = $1 AND firmware_suspect = $2",
            mac,
            build,
        )
        return int(value or 0)

    async def poll_state(self, mac: str | None, hardware_id: str | None) -> tuple[int, bool]:
        """(inventory version, restage pending for the device) in one round trip."""
        row = await self._db.fetchrow(
            """
            SELECT (SELECT version FROM inventory_state) AS version,
                   COALESCE((SELECT s.restage_requested
                             FROM device_status s JOIN devices d ON d.mac = s.mac
                             WHERE d.mac = $1 OR d.hardware_id = $2
                             LIMIT 1), false) AS restage
            """,
            mac,
            hardware_id,
        )
        assert row is not None
        return int(row["version"]), bool(row["restage"])

    async def pending_restages(self) -> set[str]:
        """MACs of the devices an operator asked to restage that have not staged since."""
        rows = await self._db.fetch("SELECT mac FROM device_status WHERE restage_requested")
        return {row["mac"] for row in rows}

    async def request_restage(self, mac: str) -> bool:
        """Mark a known device for staging again; False if the device is not in the inventory."""
        marked = await self._db.fetchval(
            """
            WITH marked AS (
                INSERT INTO device_status (mac, proof, phase, restage_requested, polls)
                SELECT mac, 'anonymous', 'update', true, 0 FROM devices WHERE mac = $1
                ON CONFLICT (mac) DO UPDATE SET restage_requested = true
                RETURNING mac
            )
            SELECT pg_notify('pbxfront_restage', mac) IS NOT NULL FROM marked
            """,
            mac,
        )
        return bool(marked)

    async def statuses(
        self,
        *,
        customer: str | None = None,
        stale_after_seconds: float | None = None,
        mac: str | None = None,
        limit: int = 10000,
        offset: int = 0,
    ) -> list[DeviceStatus]:
        """Inventory devices joined with their status; ``stale_after_seconds`` keeps only
        devices not seen for longer (or never)."""
        rows = await self._db.fetch(
            """
            SELECT d.mac, d.hardware_id, d.customer, d.device_type, d.device_class,
                   CASE WHEN s.polls > 0 THEN s.first_seen END AS first_seen,
                   CASE WHEN s.polls > 0 THEN s.last_seen END AS last_seen,
                   COALESCE(s.polls, 0) AS polls, s.source_address,
                   s.proof, s.phase, s.version, s.prot, s.boot, s.device_check, s.hash_sent,
                   COALESCE(s.in_sync, false) AS in_sync,
                   COALESCE(s.restage_requested, false) AS restage_requested,
                   s.staged_at, s.last_error, s.last_proven, s.claimed_seen,
                   s.claimed_address, COALESCE(s.firmware_attempts, 0) AS firmware_attempts,
                   s.firmware_stuck, s.script_version
            FROM devices d LEFT JOIN device_status s ON s.mac = d.mac
            WHERE ($1::text IS NULL OR d.customer = $1)
              AND ($3::text IS NULL OR d.mac = $3)
              AND ($2::float8 IS NULL
                   OR s.last_seen IS NULL OR s.polls = 0
                   OR s.last_seen < now() - make_interval(secs => $2))
            ORDER BY d.customer, d.mac
            LIMIT $4 OFFSET $5
            """,
            customer,
            stale_after_seconds,
            mac,
            limit,
            offset,
        )
        return [DeviceStatus(**dict(row)) for row in rows]

    async def backup_findings(self) -> dict[str, list[str]]:
        """The codes of the Frontend plan's findings (``frontend check --backups --record``,
        table ``frontend_findings``) about each device's latest stored backup, by MAC; a device
        whose latest backup has none (or was not checked yet) is absent."""
        rows = await self._db.fetch(
            """SELECT f.mac, array_agg(f.code ORDER BY f.code) AS codes
               FROM frontend_findings f
               JOIN backup_devices b ON b.mac = f.mac AND b.latest_version = f.version_id
               GROUP BY f.mac"""
        )
        return {row["mac"]: list(row["codes"]) for row in rows}

    async def fleet(self, query: FleetQuery) -> tuple[list[FleetRow], int]:
        """One page of the fleet (inventory devices with status, firmware build and certificate
        roll-out state) and how many devices match in all. Filtering, sorting and paging happen
        in PostgreSQL (LIMIT/OFFSET on a total order: the sort column, then the MAC).

        The statement names only the filters that are set, so each shape gets a plan of its own
        (with the indexes of migration 024). The page is cut from narrow rows (MAC and sort key),
        joining the status and roll-out tables only when a filter or the sort needs them (both
        joins are on primary keys, so they never change the count), and only the page's rows
        are joined for the columns shown. Without filters the cut walks an index and the count
        reads ``devices`` alone; with filters one scan finds the matches, counts and cuts them."""
        fleet = _FleetStatement(query)
        sort = FLEET_SORTS[query.sort]
        direction = "DESC" if query.descending else "ASC"
        nulls = "NULLS LAST" if not query.descending else "NULLS FIRST"
        limit = fleet.parameter(query.limit)
        offset = fleet.parameter(query.offset)
        # Only constant fragments (FLEET_SORTS values, ASC/DESC, the SQL of _FleetStatement and
        # _FLEET_*) are interpolated; every value is a parameter.
        if not fleet.where:
            order = f"ORDER BY {sort} {direction} {nulls}, d.mac {direction}"
            rows = await self._db.fetch(
                f"""
                WITH cut AS (
                    SELECT d.mac FROM devices d {fleet.joins} {order}
                    LIMIT {limit} OFFSET {offset}
                )
                SELECT {_FLEET_COLUMNS} FROM cut m JOIN devices d ON d.mac = m.mac
                {_FLEET_JOINS} {order}
                """,  # noqa: S608
                *fleet.arguments,
            )
            total: int = await self._db.fetchval("SELECT count(*) FROM devices")
            return [FleetRow(**dict(row)) for row in rows], total
        rows = await self._db.fetch(
            f"""
            WITH matches AS MATERIALIZED (
                SELECT d.mac, {sort} AS sort_key FROM devices d {fleet.joins}
                WHERE {" AND ".join(fleet.where)}
            ), cut AS (
                SELECT mac, sort_key FROM matches
                ORDER BY sort_key {direction} {nulls}, mac {direction}
                LIMIT {limit} OFFSET {offset}
            )
            SELECT c.total, p.* FROM (SELECT count(*) AS total FROM matches) AS c
            LEFT JOIN LATERAL (
                SELECT {_FLEET_COLUMNS}, m.sort_key FROM cut m JOIN devices d ON d.mac = m.mac
                {_FLEET_JOINS}
            ) AS p ON true
            ORDER BY p.sort_key {direction} {nulls}, p.mac {direction}
            """,  # noqa: S608
            *fleet.arguments,
        )
        # One row at least: the count, with no device when the page is empty.
        total = int(rows[0]["total"])
        return [
            FleetRow(**{k: v for k, v in row.items() if k not in ("total", "sort_key")})
            for row in rows
            if row["mac"] is not None
        ], total

    async def device_types(self) -> list[str]:
        """The device types in the inventory (for the fleet page's filter)."""
        rows = await self._db.fetch("SELECT DISTINCT device_type FROM devices ORDER BY 1")
        return [row["device_type"] for row in rows]

    async def firmware_builds(self) -> list[tuple[str, str | None, int]]:
        """(device type, firmware build the device reported in PROT, devices) for every
        combination in the fleet; devices that never polled count under build None."""
        rows = await self._db.fetch(
            """SELECT d.device_type, s.prot, count(*) AS devices
               FROM devices d LEFT JOIN device_status s ON s.mac = d.mac
               GROUP BY d.device_type, s.prot ORDER BY d.device_type, s.prot NULLS LAST"""
        )
        return [(row["device_type"], row["prot"], int(row["devices"])) for row in rows]


# The fleet page's columns ($1: seconds after which a device is stale) over devices d and the
# joins below.
_FLEET_COLUMNS = """
    d.mac, d.hardware_id, d.customer, d.device_type, d.device_class, d.cpe_id, d.name,
    CASE WHEN s.polls > 0 THEN s.last_seen END AS last_seen,
    COALESCE(s.polls, 0) AS polls, s.source_address, s.proof, s.phase, s.prot,
    COALESCE(s.in_sync, false) AS in_sync,
    COALESCE(s.restage_requested, false) AS restage_requested,
    s.last_error, r.state AS certificate_state,
    (s.last_seen IS NULL OR s.polls = 0
     OR s.last_seen < now() - make_interval(secs => $1)) AS stale
"""
_STATUS_JOIN = "LEFT JOIN device_status s ON s.mac = d.mac"
_ROLLOUT_JOIN = "LEFT JOIN certificate_rollouts r ON r.mac = d.mac"
_FLEET_JOINS = f"{_STATUS_JOIN} {_ROLLOUT_JOIN}"
# What the search looks at: MAC, hardware id, customer, CPE id and name, lower case.
# (One lower() of the whole text: the same as lower() of each part, at a fifth of the calls.)
_SEARCH_TEXT = """lower(d.mac || ' ' || d.hardware_id || ' ' || d.customer || ' '
                         || COALESCE(d.cpe_id, '') || ' ' || COALESCE(d.name, ''))"""


class _FleetStatement:
    """The conditions of one fleet query, for the filters that are set only, with their
    arguments ($1 is always the stale age) and the joins they and the sort need."""

    def __init__(self, query: FleetQuery) -> None:
        self.arguments: list[Any] = [query.stale_after_seconds]
        self.where: list[str] = []
        status = query.sort not in DEVICE_SORTS and query.sort != "certificate"
        rollout = query.sort == "certificate"
        if query.search:
            term = query.search.lower()
            pattern = self.parameter(f"%{_like_escape(term)}%")
            condition = f"{_SEARCH_TEXT} LIKE {pattern}"
            if len(term) >= 3:
                # Migration 024's index finds the devices that have every trigram of the term.
                trigrams = self.parameter(term)
                condition = f"""fleet_trigrams({_SEARCH_TEXT}) @> fleet_trigrams({trigrams}::text)
                                AND {condition}"""
            if _may_be_address(term):
                # An address search also looks at the address of the last poll: one scan of
                # the status table, not a look-up per device.
                condition = f"""d.mac IN (SELECT d.mac FROM devices d WHERE {condition}
                                          UNION SELECT a.mac FROM device_status a
                                          WHERE a.source_address LIKE {pattern})"""  # noqa: S608
            self.where.append(f"({condition})")
        if query.customer is not None:
            self.where.append(f"d.customer = {self.parameter(query.customer)}")
        if query.device_type is not None:
            self.where.append(f"d.device_type = {self.parameter(query.device_type)}")
        if query.phase is not None:
            self.where.append(f"s.phase = {self.parameter(query.phase)}")
            status = True
        if query.proof is not None:
            self.where.append(f"s.proof = {self.parameter(query.proof)}")
            status = True
        if query.in_sync is not None:
            self.where.append(f"COALESCE(s.in_sync, false) = {self.parameter(query.in_sync)}")
            status = True
        if query.stale is True:
            self.where.append(
                "(s.last_seen IS NULL OR s.polls = 0"
                " OR s.last_seen < now() - make_interval(secs => $1))"
            )
            status = True
        elif query.stale is False:
            # The same test negated (a status row's last_seen and polls are never NULL).
            self.where.append(
                "(s.last_seen IS NOT NULL AND s.polls <> 0"
                " AND s.last_seen >= now() - make_interval(secs => $1))"
            )
            status = True
        if query.certificate == "none":
            self.where.append("r.state IS NULL")
            rollout = True
        elif query.certificate is not None:
            self.where.append(f"r.state = {self.parameter(query.certificate)}")
            rollout = True
        self.joins = " ".join(
            join for join, needed in ((_STATUS_JOIN, status), (_ROLLOUT_JOIN, rollout)) if needed
        )

    def parameter(self, value: Any) -> str:
        self.arguments.append(value)
        return f"${len(self.arguments)}"


def _may_be_address(term: str) -> bool:
    """Whether ``term`` (digits, dots, colons) can be part of an IPv4 or IPv6 address: more than
    four digits in a row cannot (IPv4 has at most three, IPv6 groups four hex digits), so a MAC
    typed as digits is not looked for among addresses."""
    return all(c in "0123456789.:" for c in term) and all(
        len(run) <= 4 for run in re.split(r"[.:]", term)
    )


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# The fleet page's sorts that need only the devices table.
DEVICE_SORTS = frozenset({"customer", "hardware_id", "mac", "type"})
# The fleet page's sortable columns and the SQL expression each sorts by.
FLEET_SORTS = {
    "customer": "d.customer",
    "hardware_id": "d.hardware_id",
    "mac": "d.mac",
    "type": "d.device_type",
    "last_seen": "CASE WHEN s.polls > 0 THEN s.last_seen END",
    "proof": "s.proof",
    "phase": "s.phase",
    "in_sync": "COALESCE(s.in_sync, false)",
    "firmware": "s.prot",
    "certificate": "r.state",
}


@dataclass(frozen=True)
class FleetQuery:
    """What the fleet page asks for; None means "any". ``search`` matches MAC, hardware id,
    customer, CPE id, name and address (case-insensitive substring)."""

    search: str | None = None
    customer: str | None = None
    device_type: str | None = None
    phase: str | None = None
    proof: str | None = None
    in_sync: bool | None = None
    stale: bool | None = None
    certificate: str | None = None
    sort: str = "customer"
    descending: bool = False
    limit: int = 50
    offset: int = 0
    stale_after_seconds: float = 2700.0


@dataclass(frozen=True)
class FleetRow:
    mac: str
    hardware_id: str
    customer: str
    device_type: str
    device_class: str
    cpe_id: str | None
    name: str | None
    last_seen: datetime | None
    polls: int
    source_address: str | None
    proof: str | None
    phase: str | None
    prot: str | None
    in_sync: bool
    restage_requested: bool
    last_error: str | None
    certificate_state: str | None
    stale: bool


# Columns a poll sets; a claimed poll of a device that has proven itself keeps the old values.
_POLL_COLUMNS = {
    "last_seen": "EXCLUDED.last_seen",
    "polls": "s.polls + EXCLUDED.polls",
    "source_address": "EXCLUDED.source_address",
    "proof": "EXCLUDED.proof",
    "phase": "EXCLUDED.phase",
    "version": "EXCLUDED.version",
    "prot": "EXCLUDED.prot",
    "boot": "EXCLUDED.boot",
    "device_check": "EXCLUDED.device_check",
    "cfg": "EXCLUDED.cfg",
    "hash_sent": "COALESCE(EXCLUDED.hash_sent, s.hash_sent)",
    "in_sync": "EXCLUDED.in_sync",
    "last_error": "EXCLUDED.last_error",
    "restage_requested": "CASE WHEN EXCLUDED.phase = 'staging' THEN false "
    "ELSE s.restage_requested END",
    "staged_at": "CASE WHEN EXCLUDED.phase = 'staging' THEN EXCLUDED.last_seen "
    "ELSE s.staged_at END",
    "firmware_attempts": "CASE WHEN EXCLUDED.firmware_suspect IS NULL THEN 0 "
    "WHEN EXCLUDED.firmware_suspect = s.firmware_suspect "
    "THEN s.firmware_attempts + EXCLUDED.firmware_attempts ELSE EXCLUDED.firmware_attempts END",
    "firmware_suspect": "EXCLUDED.firmware_suspect",
    "firmware_stuck": "EXCLUDED.firmware_stuck",
    "script_version": "EXCLUDED.script_version",
}


def _upsert_polls(keep: str) -> str:
    assignments = ",\n                ".join(
        f"{column} = CASE WHEN {keep} THEN s.{column} ELSE {value} END"
        for column, value in _POLL_COLUMNS.items()
    )
    return f"""
        INSERT INTO device_status AS s (
            mac, polls, source_address, proof, phase, version, prot, boot, device_check,
            cfg, hash_sent, in_sync, last_error, staged_at, last_seen, last_proven,
            claimed_seen, claimed_address, claimed_polls, firmware_suspect,
            firmware_attempts, firmware_stuck, script_version
        )
        SELECT r.mac, r.polls, r.source_address, r.proof, r.phase, r.version, r.prot,
               r.boot, r.device_check, r.cfg, r.hash_sent, r.in_sync, r.last_error,
               CASE WHEN r.phase = 'staging' THEN r.seen END, r.seen,
               CASE WHEN r.proof = 'proven' THEN r.seen END,
               CASE WHEN r.proof <> 'proven' THEN r.seen END,
               CASE WHEN r.proof <> 'proven' THEN r.source_address END,
               CASE WHEN r.proof <> 'proven' THEN r.polls ELSE 0 END,
               r.firmware_suspect,
               CASE WHEN r.firmware_suspect IS NULL THEN 0 ELSE r.suspect_polls END,
               r.firmware_stuck, r.script_version
        FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                    $11::text[], $12::boolean[], $13::text[], $14::timestamptz[],
                    $15::text[], $16::text[], $17::bigint[], $18::integer[])
             AS r(mac, polls, source_address, proof, phase, version, prot, boot,
                  device_check, cfg, hash_sent, in_sync, last_error, seen,
                  firmware_suspect, firmware_stuck, script_version, suspect_polls)
        JOIN devices d ON d.mac = r.mac
        ON CONFLICT (mac) DO UPDATE SET
                {assignments},
                last_proven = COALESCE(EXCLUDED.last_proven, s.last_proven),
                claimed_seen = COALESCE(EXCLUDED.claimed_seen, s.claimed_seen),
                claimed_address = COALESCE(EXCLUDED.claimed_address, s.claimed_address),
                claimed_polls = s.claimed_polls + EXCLUDED.claimed_polls
        """  # noqa: S608 - built from this module's constants only


_UPSERT_TRUSTED = _upsert_polls("false")
_UPSERT_CLAIMED = _upsert_polls("s.last_proven IS NOT NULL")

_ROLLOUT_COLUMNS = (
    "mac",
    "state",
    "device_subject",
    "device_issuer",
    "device_not_after",
    "queried_at",
    "common_name",
    "dns_names",
    "ip_addresses",
    "chain_hex",
    "serial",
    "attempts",
    "error",
    "started_at",
    "updated_at",
)


def _rollout(row: Any) -> RolloutState:
    data = dict(row)
    for key in ("dns_names", "ip_addresses", "chain_hex"):
        data[key] = tuple(data[key] or ())
    return RolloutState(**data)


@dataclass(frozen=True)
class RolloutStatus:
    """An inventory device with its certificate roll-out (None: never started)."""

    mac: str
    hardware_id: str
    customer: str
    rollout: RolloutState | None

    def as_json(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "hardware_id": self.hardware_id,
            "customer": self.customer,
            "rollout": self.rollout.as_json() if self.rollout else None,
        }


class RolloutRepository:
    """The certificate roll-out's rows (``certificate_rollouts``) and the provider CA's
    records it shares with ``pbxfront ca`` (``ca_certificates``, migration 008; that table is
    the contract between the two, neither imports the other).

    ``lock`` must run inside a transaction: it holds the device's row until the commit, so two
    nodes answering the same device one after the other never advance it twice."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def lock(self, mac: str) -> RolloutState | None:
        row = await self._db.fetchrow(
            """
            SELECT mac, state, device_subject, device_issuer, device_not_after, queried_at,
                   common_name, dns_names, ip_addresses, chain_hex, serial, attempts, error,
                   started_at, updated_at
            FROM certificate_rollouts WHERE mac = $1 FOR UPDATE
            """,
            mac,
        )
        return _rollout(row) if row is not None else None

    async def save(self, state: RolloutState) -> None:
        """Insert or replace the device's row (devices removed meanwhile are skipped)."""
        await self._db.execute(
            """
            INSERT INTO certificate_rollouts (mac, state, device_subject, device_issuer,
                device_not_after, queried_at, common_name, dns_names, ip_addresses, chain_hex,
                serial, attempts, error, started_at, updated_at)
            SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                   COALESCE($14, now()), COALESCE($15, now())
            FROM devices WHERE mac = $1
            ON CONFLICT (mac) DO UPDATE SET
                state = EXCLUDED.state, device_subject = EXCLUDED.device_subject,
                device_issuer = EXCLUDED.device_issuer,
                device_not_after = EXCLUDED.device_not_after,
                queried_at = EXCLUDED.queried_at, common_name = EXCLUDED.common_name,
                dns_names = EXCLUDED.dns_names, ip_addresses = EXCLUDED.ip_addresses,
                chain_hex = EXCLUDED.chain_hex, serial = EXCLUDED.serial,
                attempts = EXCLUDED.attempts, error = EXCLUDED.error,
                updated_at = EXCLUDED.updated_at
            """,
            state.mac,
            state.state,
            state.device_subject,
            state.device_issuer,
            state.device_not_after,
            state.queried_at,
            state.common_name,
            list(state.dns_names),
            list(state.ip_addresses),
            list(state.chain_hex),
            state.serial,
            state.attempts,
            state.error,
            state.started_at,
            state.updated_at,
        )

    async def statuses(
        self, *, customer: str | None = None, mac: str | None = None
    ) -> list[RolloutStatus]:
        rows = await self._db.fetch(
            """
            SELECT d.mac AS device_mac, d.hardware_id, d.customer, r.mac, r.state,
                   r.device_subject, r.device_issuer, r.device_not_after, r.queried_at,
                   r.common_name, r.dns_names, r.ip_addresses, r.chain_hex, r.serial,
                   r.attempts, r.error, r.started_at, r.updated_at
            FROM devices d LEFT JOIN certificate_rollouts r ON r.mac = d.mac
            WHERE ($1::text IS NULL OR d.customer = $1) AND ($2::text IS NULL OR d.mac = $2)
            ORDER BY d.customer, d.mac
            """,
            customer,
            mac,
        )
        result: list[RolloutStatus] = []
        for row in rows:
            rollout = None
            if row["mac"] is not None:
                rollout = _rollout({key: row[key] for key in _ROLLOUT_COLUMNS})
            result.append(
                RolloutStatus(row["device_mac"], row["hardware_id"], row["customer"], rollout)
            )
        return result

    async def reset(self, mac: str) -> bool:
        """Forget the device's roll-out (an operator cleared the device's error); the next
        poll starts over with a query. False when there was none."""
        deleted = await self._db.fetchval(
            "DELETE FROM certificate_rollouts WHERE mac = $1 RETURNING mac", mac
        )
        return deleted is not None

    async def record_issued(
        self, certificate: x509.Certificate, *, ca_fingerprint: str, mac: str
    ) -> None:
        """Store a certificate the roll-out signed (kind device, source rollout)."""
        names = certificate_names(certificate)
        await self._db.execute(
            """
            INSERT INTO ca_certificates (serial, ca_fingerprint, kind, source, common_name,
                dns_names, ip_addresses, device_mac, not_before, not_after, certificate)
            VALUES ($1, $2, 'device', 'rollout', $3, $4, $5, $6, $7, $8, $9)
            """,
            format(certificate.serial_number, "x"),
            ca_fingerprint,
            names.common_name,
            list(names.dns_names),
            list(names.ip_addresses),
            mac,
            certificate.not_valid_before_utc,
            certificate.not_valid_after_utc,
            certificate_der(certificate),
        )

    async def revoked(self, ca_fingerprint: str) -> list[RevokedEntry]:
        """The CA's revoked leaves, for its CRL."""
        rows = await self._db.fetch(
            """
            SELECT serial, revoked_at, revocation_reason FROM ca_certificates
            WHERE ca_fingerprint = $1 AND revoked_at IS NOT NULL AND kind <> 'root'
            ORDER BY serial
            """,
            ca_fingerprint,
        )
        return [
            RevokedEntry(int(row["serial"], 16), row["revoked_at"], row["revocation_reason"])
            for row in rows
        ]

    async def ca_retired(self, ca_serial: str) -> bool:
        """Whether an operator revoked the RootCA itself (`pbxfront ca revoke <root serial>`)."""
        revoked = await self._db.fetchval(
            "SELECT revoked_at IS NOT NULL FROM ca_certificates WHERE serial = $1", ca_serial
        )
        return bool(revoked)
