"""TLS session-ticket keys shared by every node through PostgreSQL, as nginx shares its
``ssl_session_ticket_key`` file: a device's ticket resumes after a restart of the node and on
every other Frontend on the same database (issue 18).

Table ``tls_ticket_keys`` (migrations 025, 029) holds one current key per listener name, with its
creation time, and the key it replaced (``previous_key``). Listeners keep a key each (never one
for all, runner.build_holders says why): a listener name must mean the same trust (client CA,
certificate request) on every Frontend.

- The first node to start creates a listener's key: ``INSERT … ON CONFLICT DO NOTHING`` with a
  new random key, then ``SELECT``: every node gets the row that won.
- The master takes the keys before it forks (``adopt_shared_keys``), so every worker starts with
  them; each worker (and a single-process node) then checks the rows every
  ``tls.ticket_key_check_seconds`` (a PeriodicJob, first run at start, so a worker the master
  restarts later takes the current key at once).
- Rotation: a node that finds a key older than ``tls.ticket_key_rotation_hours`` replaces it, with
  an UPDATE that holds only while the row is still that old, so one node wins, and moves the old
  key to ``previous_key``; the others take the new keys at their next check (up to
  ``ticket_key_check_seconds`` later). Every node keeps accepting tickets under the previous key
  (renewing them under the current one), so a rotation costs the devices nothing: their tickets
  resume on every node before and after it. A ticket survives one rotation, not two: a device
  that has not connected for two rotation periods gets a full handshake.
- On a new key, a worker builds each listener's server context again with it
  (``ContextHolder.rekey``, like a SIGHUP reload): new connections use it, open ones keep theirs.

Where OpenSSL's ticket-key callback cannot be proven on this Python (``core/ticketkeys.py``
falls back to its one-key ctrl, and says so at start), the previous key is not accepted: after a
rotation every ticket under the old key gets a full handshake, once per device (its next poll;
then it holds a ticket under the new key).

A damaged key (NULL, not KEY_LENGTH bytes, one repeated byte such as a zeroed key) is refused
with an error line naming the listener (never the key; not repeated at every check) and ignored:
the node keeps the key it has; the next rotation, or deleting the row, replaces it. A damaged
previous key is refused the same way and not accepted (the current one still is). Deleting the
row is also how to retire a key that must no longer be accepted: the new row has no previous key.
The keys are never logged: log lines name the listener and the key's creation time only. Whoever
reads the table (or a database backup) can decrypt the tickets under the current and the previous
key: the table is as secret as nginx's key file.

Where ticket keys cannot be set at all (TicketKeyError at start), none of this runs: the node
keeps today's behaviour (OpenSSL's own key per node, shared by its workers until a reload).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from services.core.config import TlsSettings
from services.core.db import acquire
from services.core.periodic import PeriodicJob
from services.core.ticketkeys import KEY_LENGTH, TicketKeyError
from services.core.tls import ContextHolder, TlsConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredKey:
    """One listener's row. ``key`` is a secret: excluded from the repr."""

    listener: str
    key: bytes | None
    created_at: datetime.datetime
    previous: bytes | None = None

    def __repr__(self) -> str:
        return f"StoredKey({self.listener!r}, <secret>, {self.created_at.isoformat()})"


def refusal(key: object) -> str | None:
    """Why ``key`` (a row's value) cannot be a ticket key, or None when it can. Says nothing
    about the bytes themselves."""
    if key is None:
        return "the key is NULL"
    if not isinstance(key, bytes):
        return f"the key is a {type(key).__name__}, not bytes"
    if len(key) != KEY_LENGTH:
        return f"the key has {len(key)} bytes, not {KEY_LENGTH}"
    if len(set(key)) == 1:
        return "the key is one repeated byte (zeroed?)"
    return None


class TicketKeyRepository:
    """The shared ticket keys (table ``tls_ticket_keys``). Idempotent, race-safe between nodes:
    every statement is one atomic row operation; concurrent callers end up with the same row."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._connection = connection

    async def current(self, listeners: list[str], rotation_hours: float) -> dict[str, StoredKey]:
        """Each listener's current key: created (with a new random key) when it has none,
        replaced when older than ``rotation_hours`` (one of the nodes asking at once wins), then
        read. Raises asyncpg / OSError errors as they come."""
        for listener in listeners:
            await self._connection.execute(
                "INSERT INTO tls_ticket_keys (listener, key) VALUES ($1, $2) "
                "ON CONFLICT (listener) DO NOTHING",
                listener,
                secrets.token_bytes(KEY_LENGTH),
            )
            # The age is PostgreSQL's clock for every node, so nodes' clocks do not matter.
            rotated = await self._connection.fetchval(
                "UPDATE tls_ticket_keys SET previous_key = key, key = $2, created_at = now() "
                "WHERE listener = $1 AND created_at <= now() - $3::float8 * interval '1 hour' "
                "RETURNING created_at",
                listener,
                secrets.token_bytes(KEY_LENGTH),
                rotation_hours,
            )
            if rotated is not None:
                log.info("TLS ticket key of listener %s rotated (new key of %s)", listener, rotated)
        rows = await self._connection.fetch(
            "SELECT listener, key, created_at, previous_key FROM tls_ticket_keys "
            "WHERE listener = ANY($1)",
            listeners,
        )
        return {
            row["listener"]: StoredKey(
                row["listener"], row["key"], row["created_at"], row["previous_key"]
            )
            for row in rows
        }


class TicketKeyWatcher:
    """Keeps the holders' ticket keys equal to the shared ones (module docstring)."""

    def __init__(self, holders: Mapping[str, ContextHolder], settings: TlsSettings) -> None:
        # Only holders whose key was set (a proven binding); the others keep OpenSSL's own.
        self._holders = {name: h for name, h in holders.items() if h.keys is not None}
        self._settings = settings
        # The last refusal logged per listener, so a damaged row is one line, not one a minute.
        self._refused: dict[str, tuple[datetime.datetime, str]] = {}
        self._refused_previous: dict[str, tuple[datetime.datetime, str]] = {}

    @property
    def active(self) -> bool:
        return bool(self._holders)

    def job(self, pool: asyncpg.Pool | None) -> PeriodicJob:
        """The check as a PeriodicJob (its ``context`` is the cleanup_ctx); first run at start."""
        return PeriodicJob(
            "TLS ticket key check",
            self._settings.ticket_key_check_seconds if self.active else 0,
            self._check_pooled,
            pool,
            first_run=0,
        )

    async def _check_pooled(self, pool: asyncpg.Pool) -> None:
        # A database outage is one warning per check (PeriodicJob), the keys stay as they are.
        async with acquire(pool) as connection:
            await self.check(connection)

    async def check(self, connection: asyncpg.Connection) -> list[str]:
        """Take the shared keys; the names of the listeners whose key changed."""
        stored = await TicketKeyRepository(connection).current(
            sorted(self._holders), self._settings.ticket_key_rotation_hours
        )
        changed: list[str] = []
        for name, holder in self._holders.items():
            row = stored.get(name)
            if row is None:  # deleted between the INSERT and the SELECT: the next check
                continue
            problem = refusal(row.key)
            if problem is not None:
                if self._refused.get(name) != (row.created_at, problem):
                    self._refused[name] = (row.created_at, problem)
                    log.error(
                        "TLS ticket key of listener %s in PostgreSQL (created %s) refused: %s; "
                        "keeping the current key (delete the row to have a new one made)",
                        name,
                        row.created_at.isoformat(),
                        problem,
                    )
                continue
            self._refused.pop(name, None)
            assert row.key is not None
            assert holder.keys is not None
            previous = self._previous_of(row)
            if holder.keys.matches(row.key, previous):
                continue
            try:
                await holder.rekey(holder.keys.of(row.key, previous))
            except (TicketKeyError, TlsConfigError) as error:
                log.error(
                    "TLS ticket key of listener %s (created %s) not applied, keeping the "
                    "current one: %s",
                    name,
                    row.created_at.isoformat(),
                    error,
                )
                continue
            log.info(
                "TLS ticket key of listener %s now the shared one created %s",
                name,
                row.created_at.isoformat(),
            )
            changed.append(name)
        return changed

    def _previous_of(self, row: StoredKey) -> bytes | None:
        """The row's previous key, or None when it has none or it is damaged (logged once)."""
        if row.previous is None:
            return None
        problem = refusal(row.previous)
        if problem is None:
            return row.previous
        if self._refused_previous.get(row.listener) != (row.created_at, problem):
            self._refused_previous[row.listener] = (row.created_at, problem)
            log.error(
                "previous TLS ticket key of listener %s in PostgreSQL (replaced %s) refused: %s; "
                "tickets under it get a full handshake",
                row.listener,
                row.created_at.isoformat(),
                problem,
            )
        return None


async def adopt_shared_keys(
    dsn: str, holders: Mapping[str, ContextHolder], settings: TlsSettings, wait: float
) -> None:
    """The master's one-off before it forks: set the shared keys into ``holders``, over one
    connection of its own, within ``wait`` seconds. A damaged row, or a database that does not
    answer, leaves the listeners with the node's own random keys (logged); the workers' checks
    take the shared ones as soon as they can."""
    watcher = TicketKeyWatcher(holders, settings)
    if not watcher.active:
        return
    try:
        async with asyncio.timeout(wait):
            connection = await asyncpg.connect(dsn)
            try:
                await watcher.check(connection)
            finally:
                await connection.close()
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        log.warning(
            "TLS ticket keys: the shared keys could not be read (%s); starting with this "
            "node's own until the workers' next check",
            error,
        )
