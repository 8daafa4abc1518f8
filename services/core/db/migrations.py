"""Migrations: ``core/migrations/NNN_name.sql`` applied in order, each in its own transaction,
under an advisory lock, checksums kept."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from services.core.db.base import (
    DatabaseConfigError,
)

log = logging.getLogger(__name__)


# Any constant works as long as every pbxfront node uses the same one.
MIGRATION_LOCK_ID = 0x70627866  # "pbxf"


_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    found: list[Migration] = []
    folder = resources.files("services.core").joinpath("migrations")
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseConfigError("migrations: two files share one version number")
    return found


_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(connection: asyncpg.Connection) -> list[Migration]:
    """Apply pending migrations; return those applied. Safe to run from several nodes at once."""
    applied_now: list[Migration] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await connection.execute(_SCHEMA_TABLE)
        rows = await connection.fetch("SELECT version, name, checksum FROM schema_migrations")
        done = {row["version"]: row for row in rows}
        for migration in load_migrations():
            row = done.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise DatabaseConfigError(
                        f"migration {migration.version:03d}_{migration.name}.sql was changed "
                        "after it was applied; add a new migration instead"
                    )
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %03d_%s", migration.version, migration.name)
            applied_now.append(migration)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: str | None


async def migration_status(
    connection: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[MigrationStatus]:
    """Every known migration and when it was applied; ``migrations`` (read at start-up with
    :func:`load_migrations`) spares a request the file reads."""
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied: dict[int, Any] = {}
    if exists:
        rows = await connection.fetch("SELECT version, applied_at FROM schema_migrations")
        applied = {row["version"]: row["applied_at"] for row in rows}
    return [
        MigrationStatus(
            m.version,
            m.name,
            applied[m.version].isoformat() if m.version in applied else None,
        )
        for m in (migrations if migrations is not None else load_migrations())
    ]
