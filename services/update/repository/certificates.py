"""The certificate roll-out's rows (``certificate_rollouts``) and the CA records it shares with
``pbxfront ca``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509

from services.core.pki import RevokedEntry, certificate_der, certificate_names
from services.update.repository.base import Repository
from services.update.rollout import RolloutState

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


class RolloutRepository(Repository):
    """The certificate roll-out's rows (``certificate_rollouts``) and the provider CA's
    records it shares with ``pbxfront ca`` (``ca_certificates``, migration 008; that table is
    the contract between the two, neither imports the other).

    ``lock`` must run inside a transaction: it holds the device's row until the commit, so two
    nodes answering the same device one after the other never advance it twice."""

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
