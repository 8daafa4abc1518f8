"""PostgreSQL: the embedded server, the asyncpg pool, migrations.

With ``database.url`` empty, pbxfront runs PostgreSQL itself from the ``pgserver`` package in
``<data_dir>/postgres``. pgserver counts the processes using one data directory, so ``pbxfront
serve`` and any CLI command share the same server, and it stops when the last of them exits.
With a DSN, any PostgreSQL 14+ is used and nothing is started.

Migrations are ``migrations/NNN_name.sql`` applied in order, each in its own transaction, under a
cluster-wide advisory lock so two nodes starting at once never race. An applied file whose text
changed is an error, not silently ignored.
"""

from services.core.db.base import (
    DatabaseConfigError,
    DatabaseUnavailable,
    transaction,
)
from services.core.db.dump import (
    BackupError,
    PostgresTools,
    backup_database,
    find_postgres_tools,
    other_sessions,
    restore_database,
)
from services.core.db.migrations import (
    MIGRATION_LOCK_ID,
    Migration,
    MigrationStatus,
    load_migrations,
    migrate,
    migration_status,
)
from services.core.db.pool import (
    POOL_KEY,
    acquire,
    create_pool,
    open_database,
    pool_ctx,
)
from services.core.db.server import (
    EmbeddedPostgres,
    PostgresSupervisor,
    configured_dsn,
    database_dsn,
)

__all__ = [
    "MIGRATION_LOCK_ID",
    "POOL_KEY",
    "BackupError",
    "DatabaseConfigError",
    "DatabaseUnavailable",
    "EmbeddedPostgres",
    "Migration",
    "MigrationStatus",
    "PostgresSupervisor",
    "PostgresTools",
    "acquire",
    "backup_database",
    "configured_dsn",
    "create_pool",
    "database_dsn",
    "find_postgres_tools",
    "load_migrations",
    "migrate",
    "migration_status",
    "open_database",
    "other_sessions",
    "pool_ctx",
    "restore_database",
    "transaction",
]
