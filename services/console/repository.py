"""SQL of the console: its server-side sessions (migration 012) and who else uses the database
(PostgreSQL's pg_stat_activity, for the System page). Everything else the console shows comes
from the owning services' repositories, handed in by services/serve.py."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.core.auth import Account, Role


@dataclass(frozen=True)
class DatabaseClient:
    """pbxfront's sessions on this database from one client address: the nodes (``serve``) and
    running commands sharing it. Sessions name themselves ``pbxfront`` (services/core/db.py);
    two processes on one host share a row."""

    address: str
    sessions: int
    active: int
    connected_since: datetime
    this_node: bool


async def database_clients(connection: asyncpg.Connection) -> list[DatabaseClient]:
    """From pg_stat_activity, grouped by client address (``local`` for a Unix socket)."""
    rows = await connection.fetch(
        """
        SELECT COALESCE(host(client_addr), 'local') AS address, count(*) AS sessions,
               count(*) FILTER (WHERE state = 'active') AS active,
               min(backend_start) AS connected_since,
               bool_or(pid = pg_backend_pid()) AS this_node
        FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'pbxfront'
        GROUP BY 1 ORDER BY 1
        """
    )
    return [DatabaseClient(**dict(row)) for row in rows]


@dataclass(frozen=True)
class Session:
    account: Account
    csrf_token: str
    created_at: datetime
    expires_at: datetime


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class SessionRepository:
    """Console sessions, keyed by the SHA-256 of the cookie value. Each method is one
    statement, so it is atomic on its own."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def create(
        self, account: str, lifetime: float, source_address: str | None
    ) -> tuple[str, str]:
        """A new session for ``account``: (cookie value, CSRF token)."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        await self._db.execute(
            """INSERT INTO console_sessions
                   (token_sha256, account, csrf_token, source_address, expires_at)
               VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))""",
            _digest(token),
            account,
            csrf,
            source_address,
            lifetime,
        )
        return token, csrf

    async def use(self, token: str, idle_seconds: float) -> Session | None:
        """The live session of this cookie value, its last use stamped now; None when there is
        none, it expired, sat idle too long, or its account changed since it began."""
        row = await self._db.fetchrow(
            """UPDATE console_sessions s SET last_seen_at = now()
               FROM accounts a
               WHERE s.token_sha256 = $1 AND a.name = s.account
                 AND s.expires_at > now()
                 AND s.last_seen_at > now() - make_interval(secs => $2)
                 AND a.updated_at <= s.created_at
               RETURNING a.name, a.roles, s.csrf_token, s.created_at, s.expires_at""",
            _digest(token),
            idle_seconds,
        )
        if row is None:
            return None
        account = Account(row["name"], frozenset(Role(r) for r in row["roles"]))
        return Session(account, row["csrf_token"], row["created_at"], row["expires_at"])

    async def end(self, token: str) -> bool:
        status: str = await self._db.execute(
            "DELETE FROM console_sessions WHERE token_sha256 = $1", _digest(token)
        )
        return not status.endswith(" 0")

    async def prune(self, idle_seconds: float) -> int:
        """Drop expired and idle sessions; how many."""
        status: str = await self._db.execute(
            """DELETE FROM console_sessions
               WHERE expires_at <= now()
                  OR last_seen_at <= now() - make_interval(secs => $1)""",
            idle_seconds,
        )
        return int(status.split()[-1])
