"""``pbxfront db backup`` / ``db restore``: pg_dump and pg_restore of the matching major
version, checked before anything is replaced."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)


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
