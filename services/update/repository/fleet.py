"""The console's fleet page: one page of devices filtered, sorted and counted in PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.update.repository.base import Repository


class FleetRepository(Repository):
    """The fleet page's queries (read only)."""

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

    async def fleet_order(self, sort: str, descending: bool) -> str:
        """Every inventory device's MAC in the order :meth:`fleet` pages ``sort`` in (the sort
        column, nulls last ascending and first descending, then the MAC), as one text of the
        MACs one after the other, for a console that cuts many pages from one reading
        (update/console.py). One value, so 100,000 devices cost no row decoding."""
        joins = _FleetStatement(FleetQuery(sort=sort)).joins
        direction = "DESC" if descending else "ASC"
        nulls = "NULLS LAST" if not descending else "NULLS FIRST"
        order: str | None = await self._db.fetchval(
            f"""SELECT string_agg(d.mac, '' ORDER BY {FLEET_SORTS[sort]} {direction} {nulls},
                                  d.mac {direction})
                FROM devices d {joins}"""  # noqa: S608
        )
        return order or ""

    async def fleet_rows(self, macs: Sequence[str], stale_after_seconds: float) -> list[FleetRow]:
        """The fleet page's rows of ``macs``, in their order (a device removed since is left
        out)."""
        rows = await self._db.fetch(
            f"""SELECT {_FLEET_COLUMNS}
                FROM unnest($2::text[]) WITH ORDINALITY AS m(mac, position)
                JOIN devices d ON d.mac = m.mac {_FLEET_JOINS}
                ORDER BY m.position""",  # noqa: S608
            stale_after_seconds,
            list(macs),
        )
        return [FleetRow(**dict(row)) for row in rows]

    async def device_types(self) -> list[str]:
        """The device types in the inventory (for the fleet page's filter)."""
        rows = await self._db.fetch("SELECT DISTINCT device_type FROM devices ORDER BY 1")
        return [row["device_type"] for row in rows]


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
