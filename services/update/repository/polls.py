"""Poll status writes (``device_status``) and the status history (``device_status_history``).

Poll status is written in batches (``record_polls``, one upsert statement for many devices);
polls of one device are counted, never lost, and rows serialise on ``ON CONFLICT … DO UPDATE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.update.repository.base import Repository


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


class PollRepository(Repository):
    """What a poll writes: the batched status upsert, the history of status changes, the
    firmware attempts counted."""

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

    async def firmware_attempts(self, mac: str, build: str) -> int:
        """Firmware replies already sent to the device for ``build`` while its ``ver`` named it
        (0 when the last poll was about another build or none)."""
        value = await self._db.fetchval(
            "SELECT firmware_attempts FROM device_status WHERE mac = $1 AND firmware_suspect = $2",
            mac,
            build,
        )
        return int(value or 0)


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
