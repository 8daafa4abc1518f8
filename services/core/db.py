"""PostgreSQL: the embedded server, the asyncpg pool, migrations.

With ``database.url`` empty, pbxfront runs PostgreSQL itself from the ``pgserver`` package in
``<data_dir>/postgres``. pgserver counts the processes using one data directory, so ``pbxfront
serve`` and any CLI command share the same server, and it stops when the last of them exits.
With a DSN, any PostgreSQL 14+ is used and nothing is started.

Migrations are ``migrations/NNN_name.sql`` applied in order, each in its own transaction, under a
cluster-wide advisory lock so two nodes starting at once never race. An applied file whose text
changed is an error, not silently ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from services.core.config import DatabaseSettings, Settings

log = logging.getLogger(__name__)

POOL_KEY = web.AppKey("pool", asyncpg.Pool)

# Any constant works as long as every pbxfront node uses the same one.
MIGRATION_LOCK_ID = 0x70627866  # "pbxf"

_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or did not answer in time; callers answer 503."""


class DatabaseConfigError(Exception):
    """The configured database cannot be used at all (bad DSN, refused login, no server)."""


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


class EmbeddedPostgres:
    """The pgserver-managed PostgreSQL in ``<data_dir>/postgres``; blocking, call in a thread."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: Any = None

    def start(self) -> str:
        # Imported here: only the embedded mode needs it. pgserver keeps its lock file in the
        # user runtime dir; without XDG_RUNTIME_DIR (services, CI) platformdirs falls back to
        # /tmp/runtime-<uid> and warns, which is fine for us.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from pgserver.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = get_server(self.pgdata, cleanup_mode="stop")
        except Exception as error:
            raise DatabaseConfigError(
                f"embedded PostgreSQL in {self.pgdata} did not start: {error} "
                f"(its log: {self.pgdata / 'log'})"
            ) from error
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        """Release this process's handle; pgserver stops the server with the last one."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (None when it is not running)."""
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None or not info.is_running():
            return None
        return int(info.pid) if info.pid is not None else None

    def restart_if_down(self) -> bool:
        """Start the server again if its postmaster is gone (killed, crashed); True if it was.
        PostgreSQL's crash recovery replays the WAL, so every committed write is still there.
        Raises if it cannot start yet (e.g. the old backends still hold its shared memory)."""
        if self._server is None or self.postmaster_pid() is not None:
            return False
        with self._server._lock:
            self._server.ensure_postgres_running()
        return True


class PostgresSupervisor:
    """Restarts the embedded PostgreSQL that ``serve`` owns when its postmaster dies, checking
    every ``interval`` seconds, in a thread of the master process (no event loop there with
    several workers; pgserver's calls block). The pools reconnect by themselves: requests get
    503 while it is down and are served again once it is back, with nobody at the console."""

    def __init__(self, embedded: EmbeddedPostgres, interval: float = 0.5) -> None:
        import threading

        self._embedded = embedded
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="postgres-supervisor", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=30)

    def _watch(self) -> None:
        down_since: float | None = None
        while not self._stopped.wait(self._interval):
            try:
                if self._embedded.postmaster_pid() is not None:
                    continue
                if down_since is None:
                    down_since = time.monotonic()
                    log.error(
                        "embedded PostgreSQL in %s is not running; restarting it",
                        self._embedded.pgdata,
                    )
                if self._stopped.is_set():
                    return
                if self._embedded.restart_if_down():
                    self.restarts += 1
                    log.warning(
                        "embedded PostgreSQL restarted after %.1f s down",
                        time.monotonic() - down_since,
                    )
                down_since = None
            except Exception as error:  # not up yet: old backends still exiting; try again
                log.info("embedded PostgreSQL did not start yet: %s", error)


def configured_dsn(settings: DatabaseSettings) -> str:
    if settings.url_file is not None:
        try:
            return settings.url_file.read_text("utf-8").strip()
        except OSError as error:
            raise DatabaseConfigError(
                f"database.url_file: cannot read {settings.url_file}: {error.strerror}"
            ) from None
    return settings.url


@contextlib.asynccontextmanager
async def database_dsn(settings: Settings) -> AsyncIterator[str]:
    """Yield the DSN to use, starting (and afterwards releasing) the embedded server if needed."""
    dsn = configured_dsn(settings.database)
    if dsn:
        yield dsn
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    dsn = await asyncio.to_thread(embedded.start)
    try:
        yield dsn
    finally:
        await asyncio.to_thread(embedded.stop)


def _describe_dsn(dsn: str) -> str:
    """The DSN without its password, for error messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog"
    )


def _json_dumps(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_loads(value: str) -> Any:
    import json

    return json.loads(value)


async def create_pool(dsn: str, settings: DatabaseSettings) -> asyncpg.Pool:
    """Open a pool; raise :class:`DatabaseConfigError` with one line saying why if it cannot."""
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
            init=_init_connection,
            # Named in pg_stat_activity (what `db restore` shows when it refuses a database in
            # use), unless the DSN names the sessions itself.
            server_settings={} if "application_name=" in dsn else {"application_name": "pbxfront"},
        )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        reason = str(error) or type(error).__name__
        raise DatabaseConfigError(
            f"database {_describe_dsn(dsn)}: cannot connect: {reason}"
        ) from None
    return pool


@contextlib.asynccontextmanager
async def open_database(
    settings: Settings, *, run_migrations: bool = True
) -> AsyncIterator[asyncpg.Pool]:
    """DSN (embedded or configured) + pool + migrations, for ``serve`` and every CLI command."""
    async with database_dsn(settings) as dsn:
        pool = await create_pool(dsn, settings.database)
        try:
            if run_migrations:
                async with pool.acquire() as connection:
                    await migrate(connection)
            yield pool
        finally:
            await pool.close()


def pool_ctx(pool: asyncpg.Pool) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that puts an already open, process-wide pool on an application."""

    async def attach(app: web.Application) -> AsyncIterator[None]:
        app[POOL_KEY] = pool
        yield

    return attach


# Errors meaning "PostgreSQL is not there right now" as opposed to a bug in a query.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
)


@contextlib.asynccontextmanager
async def acquire(pool: asyncpg.Pool, wait: float = 2.0) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection; connection-level failures become :class:`DatabaseUnavailable`."""
    try:
        async with pool.acquire(timeout=wait) as connection:
            yield connection
    except _UNAVAILABLE as error:
        # A lost server (restarted, failed over) breaks every pooled connection, not just this
        # one: replace them all on their next use instead of failing one request each. (Not for
        # a timeout: a busy pool or a slow server keeps its connections.)
        if not isinstance(error, TimeoutError):
            with contextlib.suppress(Exception):
                await pool.expire_connections()
        raise DatabaseUnavailable(str(error) or type(error).__name__) from error


@contextlib.asynccontextmanager
async def transaction(db: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``db``: a pool lends a connection for it, a connection is used as is
    (a nested call becomes a savepoint)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as connection, connection.transaction():
            yield connection
    else:
        async with db.transaction():
            yield db


# --- backup and restore ----------------------------------------------------------------------

# pg_dump's custom format (-Fc) starts with these bytes; anything else is not a pbxfront backup.
_CUSTOM_FORMAT_MAGIC = b"PGDMP"


class BackupError(Exception):
    """A backup or restore cannot be done; the message names the file or the tool and why."""


@dataclass(frozen=True)
class PostgresTools:
    """pg_dump and pg_restore of one PostgreSQL version."""

    pg_dump: Path
    pg_restore: Path
    major_version: int


def _tool_directories() -> list[Path]:
    """Where pg_dump may be: next to the embedded server (pgserver ships the client programs),
    Debian's per-version directories, then PATH."""
    import importlib.util
    import os

    directories: list[Path] = []
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        directories.append(Path(spec.origin).parent / "pginstall" / "bin")
    directories.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin")))
    directories.extend(
        Path(entry) for entry in os.environ.get("PATH", "").split(os.pathsep) if entry
    )
    return directories


def _major_version_of(program: Path) -> int | None:
    import subprocess

    try:
        result = subprocess.run(
            [str(program), "--version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # "pg_dump (PostgreSQL) 16.2", "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    match = re.search(rb"\(PostgreSQL\) (\d+)", result.stdout)
    return int(match.group(1)) if result.returncode == 0 and match else None


def _newest_tools() -> PostgresTools | None:
    best: PostgresTools | None = None
    seen: set[Path] = set()
    for directory in _tool_directories():
        dump, restore = directory / "pg_dump", directory / "pg_restore"
        if dump in seen or not (dump.is_file() and restore.is_file()):
            continue
        seen.add(dump)
        version = _major_version_of(dump)
        if version is not None and (best is None or version > best.major_version):
            best = PostgresTools(dump, restore, version)
    return best


async def find_postgres_tools(server_major_version: int) -> PostgresTools:
    """The newest pg_dump/pg_restore pair found (see :func:`_tool_directories`); it must be at
    least the server's version, as pg_dump refuses newer servers. BackupError if there is none."""
    best = await asyncio.to_thread(_newest_tools)
    if best is None:
        raise BackupError(
            "pg_dump and pg_restore not found (next to the embedded PostgreSQL, in "
            "/usr/lib/postgresql/*/bin or on PATH); install postgresql-client"
        )
    if best.major_version < server_major_version:
        raise BackupError(
            f"{best.pg_dump} is version {best.major_version}, older than the database server "
            f"({server_major_version}); install postgresql-client-{server_major_version}"
        )
    return best


def _libpq_target(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN for libpq's --dbname without its password, and the environment carrying the
    password instead (PGPASSWORD), so it never shows on a command line."""
    from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

    parts = urlsplit(dsn)
    environment: dict[str, str] = {}
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if colon and password:
            environment["PGPASSWORD"] = unquote(password)
        netloc = f"{user}@{hostinfo}" if user else hostinfo
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            environment["PGPASSWORD"] = value
        else:
            query.append((key, value))
    # Not urlunsplit: it drops the "//" of an empty host (a socket DSN, "postgresql:///db").
    target = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        target += f"?{urlencode(query)}"
    return target, environment


async def _run_tool(program: Path, arguments: list[str], environment: dict[str, str]) -> str:
    """Run a PostgreSQL client program; its standard error when it fails, else ''."""
    import os

    process = await asyncio.create_subprocess_exec(
        str(program),
        *arguments,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **environment},
    )
    _, err = await process.communicate()
    if process.returncode == 0:
        return ""
    return err.decode("utf-8", "replace").strip() or f"exit status {process.returncode}"


async def _server_major_version(connection: asyncpg.Connection) -> int:
    number: str = await connection.fetchval("SHOW server_version_num")
    return int(number) // 10000


async def backup_database(dsn: str, file: Path) -> PostgresTools:
    """Write the whole database to ``file`` with ``pg_dump -Fc`` (consistent snapshot, the
    server keeps serving). Written to a temporary file beside it and renamed when complete, so a
    failed backup never leaves a truncated file under that name."""
    import os

    folder = file.parent
    if not await asyncio.to_thread(folder.is_dir):
        raise BackupError(f"{folder}: no such directory")
    if not await asyncio.to_thread(os.access, folder, os.W_OK | os.X_OK):
        raise BackupError(f"{folder}: not writable")
    connection = await asyncpg.connect(dsn)
    try:
        tools = await find_postgres_tools(await _server_major_version(connection))
    finally:
        await connection.close()
    target, environment = _libpq_target(dsn)
    partial = file.with_name(f".{file.name}.partial")
    try:
        failure = await _run_tool(
            tools.pg_dump,
            ["--format=custom", f"--file={partial}", f"--dbname={target}"],
            environment,
        )
        if failure:
            raise BackupError(f"pg_dump failed: {failure}")
        await asyncio.to_thread(os.replace, partial, file)
    except OSError as error:
        raise BackupError(f"{error.filename or file}: {error.strerror or error}") from None
    finally:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
    return tools


async def _check_backup_file(file: Path) -> None:
    def head() -> bytes:
        with file.open("rb") as handle:
            return handle.read(len(_CUSTOM_FORMAT_MAGIC))

    try:
        start = await asyncio.to_thread(head)
    except OSError as error:
        raise BackupError(f"{file}: {error.strerror or error}") from None
    if start != _CUSTOM_FORMAT_MAGIC:
        raise BackupError(
            f"{file}: not a pbxfront database backup (pg_dump custom format, as "
            "'pbxfront db backup' writes it)"
        )


async def other_sessions(connection: asyncpg.Connection) -> list[str]:
    """Who else is connected to this database (a running serve, another command), described."""
    rows = await connection.fetch(
        "SELECT pid, usename, application_name, client_addr FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return [
        f"pid {row['pid']} ({row['usename']}"
        + (f", {row['application_name']}" if row["application_name"] else "")
        + (f", from {row['client_addr']}" if row["client_addr"] else "")
        + ")"
        for row in rows
    ]


async def restore_database(dsn: str, file: Path, *, force: bool = False) -> PostgresTools:
    """Replace the database's pbxfront objects with those in ``file`` (``pg_restore --clean
    --if-exists`` in one transaction: it is restored completely or not at all). Objects are
    owned by the connecting role, so a backup of the embedded database restores into a
    production one. Refused while other sessions use the database (a running serve would see
    its tables vanish mid-request) unless ``force``."""
    await _check_backup_file(file)
    connection = await asyncpg.connect(dsn)
    try:
        tools = await find_postgres_tools(await _server_major_version(connection))
        others = await other_sessions(connection)
    finally:
        await connection.close()
    if others and not force:
        raise BackupError(
            f"the database is in use by {len(others)} other session(s): {', '.join(others)}; "
            "stop 'pbxfront serve' on every node first (or give --force)"
        )
    target, environment = _libpq_target(dsn)
    failure = await _run_tool(tools.pg_restore, ["--list", str(file)], environment)
    if failure:
        raise BackupError(f"{file}: not a readable backup: {failure}")
    failure = await _run_tool(
        tools.pg_restore,
        [
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--no-owner",
            "--no-privileges",
            f"--dbname={target}",
            str(file),
        ],
        environment,
    )
    if failure:
        raise BackupError(f"pg_restore failed, the database is unchanged: {failure}")
    return tools
