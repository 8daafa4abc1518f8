"""SQL of the provider CA: the certificates it issued and their revocations (migration 008), and
the signing queue of nodes without the CA key (migration 023; the update service queues and
signs, ``pbxfront ca queue`` reads here).

Every node reads the same rows, so every node serves the same CRL. The update service's roll-out
records the certificates it signs into the same table through its own repository (a service
never imports another; the table is the contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from cryptography import x509

from services.core.db import transaction
from services.core.pki import RevokedEntry, certificate_der, certificate_names


@dataclass(frozen=True)
class IssuedRecord:
    serial: str
    ca_fingerprint: str
    kind: str
    source: str
    common_name: str
    dns_names: list[str]
    ip_addresses: list[str]
    device_mac: str | None
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("not_before", "not_after", "issued_at", "revoked_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


def serial_hex(serial: int) -> str:
    """The form serials are stored and shown in: lowercase hex, as ``openssl x509 -serial``
    prints it apart from letter case."""
    return format(serial, "x")


class CaRepository:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def record(
        self,
        certificate: x509.Certificate,
        *,
        ca_fingerprint: str,
        kind: str,
        source: str = "cli",
        device_mac: str | None = None,
    ) -> None:
        """Store an issued certificate (its serial is random and unique per CA)."""
        names = certificate_names(certificate)
        await self._db.execute(
            """
            INSERT INTO ca_certificates (serial, ca_fingerprint, kind, source, common_name,
                dns_names, ip_addresses, device_mac, not_before, not_after, certificate)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            """,
            serial_hex(certificate.serial_number),
            ca_fingerprint,
            kind,
            source,
            names.common_name,
            list(names.dns_names),
            list(names.ip_addresses),
            device_mac,
            certificate.not_valid_before_utc,
            certificate.not_valid_after_utc,
            certificate_der(certificate),
        )

    async def issued(
        self, *, ca_fingerprint: str | None = None, include_revoked: bool = True
    ) -> list[IssuedRecord]:
        rows = await self._db.fetch(
            """
            SELECT serial, ca_fingerprint, kind, source, common_name, dns_names, ip_addresses,
                   device_mac, not_before, not_after, issued_at, revoked_at, revocation_reason
            FROM ca_certificates
            WHERE ($1::text IS NULL OR ca_fingerprint = $1)
              AND ($2 OR revoked_at IS NULL)
            ORDER BY issued_at, serial
            """,
            ca_fingerprint,
            include_revoked,
        )
        return [IssuedRecord(**dict(row)) for row in rows]

    async def revoke(self, serial: str, reason: str) -> tuple[IssuedRecord | None, bool]:
        """Mark a certificate revoked. Returns (record, newly revoked): (None, False) when no
        certificate has this serial, (record, False) when it was revoked before (idempotent:
        the first revocation's time and reason stay)."""
        async with transaction(self._db) as connection:
            row = await connection.fetchrow(
                "SELECT revoked_at FROM ca_certificates WHERE serial = $1 FOR UPDATE", serial
            )
            if row is None:
                return None, False
            newly = row["revoked_at"] is None
            if newly:
                await connection.execute(
                    """UPDATE ca_certificates SET revoked_at = now(), revocation_reason = $2
                       WHERE serial = $1""",
                    serial,
                    reason,
                )
            return await self.get(serial, connection), newly

    async def get(
        self, serial: str, connection: asyncpg.Connection | None = None
    ) -> IssuedRecord | None:
        row = await (connection or self._db).fetchrow(
            """
            SELECT serial, ca_fingerprint, kind, source, common_name, dns_names, ip_addresses,
                   device_mac, not_before, not_after, issued_at, revoked_at, revocation_reason
            FROM ca_certificates WHERE serial = $1
            """,
            serial,
        )
        return IssuedRecord(**dict(row)) if row is not None else None

    async def revoked(self, ca_fingerprint: str) -> list[RevokedEntry]:
        rows = await self._db.fetch(
            """
            SELECT serial, revoked_at, revocation_reason FROM ca_certificates
            WHERE ca_fingerprint = $1 AND revoked_at IS NOT NULL ORDER BY serial
            """,
            ca_fingerprint,
        )
        return [
            RevokedEntry(int(row["serial"], 16), row["revoked_at"], row["revocation_reason"])
            for row in rows
        ]


@dataclass(frozen=True)
class QueuedRequest:
    """A device's signing request in ``ca_signing_requests`` (``age`` in seconds: how long it
    waited, or waits)."""

    id: int
    mac: str
    hardware_id: str | None
    common_name: str
    ca_fingerprint: str
    state: str
    requested_by: str
    requested_at: datetime
    age: float
    signed_by: str | None
    done_at: datetime | None
    serial: str | None
    error: str | None

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("requested_at", "done_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


@dataclass(frozen=True)
class Signer:
    """A signing node as it last reported (``age``: seconds since)."""

    node: str
    ca_fingerprint: str
    seen_at: datetime
    age: float


class SigningQueueRepository:
    """``ca_signing_requests`` and ``ca_signers``, read-only here."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def requests(
        self, *, include_done: bool = False, limit: int = 100
    ) -> list[QueuedRequest]:
        """Waiting requests, oldest first; with ``include_done`` also the latest finished ones."""
        rows = await self._db.fetch(
            """
            SELECT q.id, q.mac, d.hardware_id, q.common_name, q.ca_fingerprint, q.state,
                   q.requested_by, q.requested_at,
                   extract(epoch FROM COALESCE(q.done_at, now()) - q.requested_at)::float8 AS age,
                   q.signed_by, q.done_at, q.serial, q.error
            FROM ca_signing_requests q LEFT JOIN devices d ON d.mac = q.mac
            WHERE q.state = 'waiting' OR $1
            ORDER BY q.state <> 'waiting', q.requested_at DESC, q.id DESC
            LIMIT $2
            """,
            include_done,
            limit,
        )
        found = [QueuedRequest(**dict(row)) for row in rows]
        waiting = sorted((r for r in found if r.state == "waiting"), key=lambda r: r.requested_at)
        return waiting + [r for r in found if r.state != "waiting"]

    async def signers(self) -> list[Signer]:
        rows = await self._db.fetch(
            """SELECT node, ca_fingerprint, seen_at,
                      extract(epoch FROM now() - seen_at)::float8 AS age
               FROM ca_signers ORDER BY seen_at DESC"""
        )
        return [Signer(**dict(row)) for row in rows]
