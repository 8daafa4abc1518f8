"""The shared firmware store in PostgreSQL (``update.firmware_source = "database"``, migration
022): ``firm/<build>/<name>`` files, their content by SHA-256 in chunks of :data:`CHUNK_BYTES`,
the store's version (bumped by every change, so each node knows when to re-read the list) and
which node holds a checked copy. The nodes' caches are in ``update/shared_firmware.py``."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from services.core.db import transaction
from services.update.firmware import FirmwareError

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class SharedFile:
    build: str
    name: str
    sha256: str
    size: int
    added_at: datetime
    added_by: str
    device_type: str | None
    cached_on: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            **self.__dict__,
            "added_at": self.added_at.isoformat(),
            "cached_on": list(self.cached_on),
        }


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK_BYTES):
            yield chunk


class SharedFirmwareRepository:
    """``firmware_blobs``, ``firmware_chunks``, ``firmware_files``, ``firmware_state``,
    ``firmware_caches``."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def version(self) -> int:
        return int(await self._db.fetchval("SELECT version FROM firmware_state"))

    async def files(self, *, with_caches: bool = False) -> list[SharedFile]:
        rows = await self._db.fetch(
            """
            SELECT f.build, f.name, f.sha256, b.size, f.added_at, f.added_by, f.device_type,
                   CASE WHEN $1 THEN ARRAY(
                       SELECT c.frontend || ' ' || c.node FROM firmware_caches c
                       WHERE c.sha256 = f.sha256 ORDER BY c.frontend, c.node)
                   ELSE '{}'::text[] END AS cached_on
            FROM firmware_files f JOIN firmware_blobs b USING (sha256)
            ORDER BY f.build, f.name
            """,
            with_caches,
        )
        return [SharedFile(**{**dict(row), "cached_on": tuple(row["cached_on"])}) for row in rows]

    async def store(
        self,
        source: Path,
        sha256: str,
        size: int,
        build: str,
        name: str,
        *,
        by: str,
        device_type: str | None,
    ) -> tuple[SharedFile, str | None]:
        """Store ``source`` (whose SHA-256 and size the caller measured) as ``firm/<build>/
        <name>``; its content only if no file has it yet. Returns (the file, the SHA-256 it
        replaced or None). One transaction: other nodes see the file complete or not at all.
        Raises FirmwareError when the file changed while it was stored."""
        async with transaction(self._db) as connection:
            await self._store_content(connection, source, sha256, size)
            previous = await self._point_name(
                connection, build, name, sha256, by=by, device_type=device_type
            )
            if previous is not None and previous != sha256:
                await self._drop_unused(connection, previous)
            await self._changed(connection)
            stored = await self._one(connection, build, name)
            assert stored is not None
            return stored, previous if previous != sha256 else None

    @staticmethod
    async def _store_content(
        connection: asyncpg.Connection, source: Path, sha256: str, size: int
    ) -> None:
        """The content of ``source``, chunk by chunk, unless some file has it already; a
        FirmwareError when what was read is not ``sha256`` and ``size`` (the file changed after
        the caller measured it)."""
        chunks = (size + CHUNK_BYTES - 1) // CHUNK_BYTES
        new = await connection.fetchval(
            """INSERT INTO firmware_blobs (sha256, size, chunks) VALUES ($1, $2, $3)
               ON CONFLICT (sha256) DO NOTHING RETURNING sha256""",
            sha256,
            size,
            chunks,
        )
        if new is None:
            return
        digest = hashlib.sha256()
        reader = _chunks(source)
        seq = 0
        while (chunk := await asyncio.to_thread(next, reader, None)) is not None:
            digest.update(chunk)
            await connection.execute(
                "INSERT INTO firmware_chunks (sha256, seq, data) VALUES ($1, $2, $3)",
                sha256,
                seq,
                chunk,
            )
            seq += 1
        if digest.hexdigest() != sha256 or seq != chunks:
            raise FirmwareError(f"{source}: changed while it was stored; try again")

    @staticmethod
    async def _point_name(
        connection: asyncpg.Connection,
        build: str,
        name: str,
        sha256: str,
        *,
        by: str,
        device_type: str | None,
    ) -> str | None:
        """``firm/<build>/<name>`` is the content ``sha256`` from now on (added now, by ``by``);
        the SHA-256 it was before, None for a new name. The name's row is locked first."""
        previous: str | None = await connection.fetchval(
            "SELECT sha256 FROM firmware_files WHERE build = $1 AND name = $2 FOR UPDATE",
            build,
            name,
        )
        await connection.execute(
            """
            INSERT INTO firmware_files (build, name, sha256, added_by, device_type)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (build, name) DO UPDATE SET sha256 = EXCLUDED.sha256,
                added_at = now(), added_by = EXCLUDED.added_by,
                device_type = EXCLUDED.device_type
            """,
            build,
            name,
            sha256,
            by,
            device_type,
        )
        return previous

    async def remove(self, build: str, name: str) -> SharedFile | None:
        """Take ``firm/<build>/<name>`` out of the store (its content too when no other file
        has it). None when there is no such file."""
        async with transaction(self._db) as connection:
            found = await self._one(connection, build, name)
            if found is None:
                return None
            await connection.execute(
                "DELETE FROM firmware_files WHERE build = $1 AND name = $2", build, name
            )
            await self._drop_unused(connection, found.sha256)
            await self._changed(connection)
            return found

    async def chunk(self, sha256: str, seq: int) -> bytes | None:
        value = await self._db.fetchval(
            "SELECT data FROM firmware_chunks WHERE sha256 = $1 AND seq = $2", sha256, seq
        )
        return bytes(value) if value is not None else None

    async def record_cached(self, node: str, frontend: str, sha256: str) -> None:
        """This node holds a checked copy (ignored when the content was removed meanwhile)."""
        await self._db.execute(
            """
            INSERT INTO firmware_caches (node, frontend, sha256)
            SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM firmware_blobs WHERE sha256 = $3)
            ON CONFLICT (node, sha256) DO UPDATE SET cached_at = now(), frontend = $2
            """,
            node,
            frontend,
            sha256,
        )

    async def forget_cached(self, node: str, sha256: str) -> None:
        await self._db.execute(
            "DELETE FROM firmware_caches WHERE node = $1 AND sha256 = $2", node, sha256
        )

    async def _one(
        self, connection: asyncpg.Connection, build: str, name: str
    ) -> SharedFile | None:
        row = await connection.fetchrow(
            """
            SELECT f.build, f.name, f.sha256, b.size, f.added_at, f.added_by, f.device_type
            FROM firmware_files f JOIN firmware_blobs b USING (sha256)
            WHERE f.build = $1 AND f.name = $2
            """,
            build,
            name,
        )
        return SharedFile(**dict(row)) if row is not None else None

    @staticmethod
    async def _drop_unused(connection: asyncpg.Connection, sha256: str) -> None:
        await connection.execute(
            """DELETE FROM firmware_blobs b WHERE b.sha256 = $1
               AND NOT EXISTS (SELECT 1 FROM firmware_files f WHERE f.sha256 = b.sha256)""",
            sha256,
        )

    @staticmethod
    async def _changed(connection: asyncpg.Connection) -> None:
        await connection.execute(
            "UPDATE firmware_state SET version = version + 1, changed_at = now()"
        )
