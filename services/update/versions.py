"""Published script versions: one tree that every Frontend serves (``update.scripts_source =
"database"``), rolled back by making an earlier version current again.

``pbxfront scripts publish`` reads the scripts folder, checks it as ``scripts check`` does and
stores it as a new version in PostgreSQL (tables in migration 019); ``script_state`` names the
current version, and changing it sends ``NOTIFY pbxfront_scripts`` to every node. A node keeps the
versions it serves in memory (:class:`PublishedScripts`) and loads a new one on the first poll
after the change, so no node ever serves a half-published tree.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from services.core import errors
from services.update.scripts import ScriptStore, tree_sha256


@dataclass(frozen=True)
class ScriptVersion:
    id: int
    published_at: datetime
    published_by: str
    comment: str
    tree_sha256: str
    files: int
    bytes: int
    current: bool = False

    def as_json(self) -> dict[str, object]:
        return {**self.__dict__, "published_at": self.published_at.isoformat()}


_COLUMNS = "v.id, v.published_at, v.published_by, v.comment, v.tree_sha256, v.files, v.bytes"


class ScriptVersionRepository:
    """``script_versions``, ``script_files``, ``script_state``."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def current_id(self) -> int | None:
        value = await self._db.fetchval("SELECT current_version FROM script_state")
        return int(value) if value is not None else None

    async def publish(
        self, files: dict[str, bytes], *, by: str, comment: str = "", activate: bool = True
    ) -> tuple[ScriptVersion, bool]:
        """Store ``files`` as a new version and (with ``activate``) make it current; (version,
        True). When the current version holds exactly these files, nothing changes: (that
        version, False). Without ``activate`` the version waits for a canary roll-out
        (``pbxfront rollouts start``). One transaction: other nodes see all of it or none."""
        digest = tree_sha256(files)
        connection = self._connection()
        async with connection.transaction():
            await connection.execute("SELECT 1 FROM script_state FOR UPDATE")
            current = await connection.fetchrow(
                f"SELECT {_COLUMNS} FROM script_versions v JOIN script_state s "  # noqa: S608
                "ON s.current_version = v.id"
            )
            if current is not None and current["tree_sha256"] == digest:
                return ScriptVersion(**dict(current), current=True), False
            row = await connection.fetchrow(
                """
                INSERT INTO script_versions (published_by, comment, tree_sha256, files, bytes)
                VALUES ($1, $2, $3, $4, $5)
                RETURNING id, published_at, published_by, comment, tree_sha256, files, bytes
                """,
                by[:200],
                comment[:1000],
                digest,
                len(files),
                sum(len(content) for content in files.values()),
            )
            assert row is not None
            await connection.executemany(
                "INSERT INTO script_files (version_id, name, content) VALUES ($1, $2, $3)",
                [(row["id"], name, content) for name, content in sorted(files.items())],
            )
            if activate:
                await connection.execute(
                    """UPDATE script_state SET current_version = $1, changed_at = now(),
                       changed_by = $2""",
                    row["id"],
                    by[:200],
                )
        return ScriptVersion(**dict(row), current=activate), True

    async def activate(self, version_id: int, *, by: str) -> ScriptVersion:
        """Make an earlier (or any) version current again: a rollback. NotFound if none."""
        connection = self._connection()
        async with connection.transaction():
            row = await connection.fetchrow(
                f"SELECT {_COLUMNS} FROM script_versions v WHERE v.id = $1",  # noqa: S608
                version_id,
            )
            if row is None:
                raise errors.NotFound(f"no script version {version_id}")
            await connection.execute(
                """UPDATE script_state SET current_version = $1, changed_at = now(),
                   changed_by = $2""",
                version_id,
                by[:200],
            )
        return ScriptVersion(**dict(row), current=True)

    async def versions(self, limit: int = 50) -> list[ScriptVersion]:
        rows = await self._db.fetch(
            f"""SELECT {_COLUMNS}, v.id = s.current_version AS current
                FROM script_versions v CROSS JOIN script_state s
                ORDER BY v.id DESC LIMIT $1""",  # noqa: S608
            limit,
        )
        return [ScriptVersion(**dict(row)) for row in rows]

    async def files(self, version_id: int) -> dict[str, bytes]:
        rows = await self._db.fetch(
            "SELECT name, content FROM script_files WHERE version_id = $1", version_id
        )
        return {row["name"]: bytes(row["content"]) for row in rows}

    def _connection(self) -> asyncpg.Connection:
        if isinstance(self._db, asyncpg.Pool):
            raise TypeError("publishing needs a connection of its own, not the pool")
        return self._db


class PublishedScripts:
    """The published versions this node serves, loaded once each (the current one and, during a
    roll-out, the one before it). Least recently used versions are dropped first."""

    def __init__(self, root: Path, keep: int = 3) -> None:
        self._root = root
        self._keep = keep
        self._stores: OrderedDict[int, ScriptStore] = OrderedDict()
        self._lock = asyncio.Lock()

    def cached(self, version_id: int) -> ScriptStore | None:
        store = self._stores.get(version_id)
        if store is not None:
            self._stores.move_to_end(version_id)
        return store

    async def get(self, connection: asyncpg.Connection, version_id: int) -> ScriptStore:
        """The store serving ``version_id``, loaded from PostgreSQL the first time."""
        store = self.cached(version_id)
        if store is not None:
            return store
        async with self._lock:
            store = self.cached(version_id)
            if store is not None:
                return store
            files = await ScriptVersionRepository(connection).files(version_id)
            store = ScriptStore(self._root)
            problems = await asyncio.to_thread(store.install, files, version_id)
            if problems:
                # Publishing checks every file, so this is a version from another pbxfront.
                name, why = sorted(problems.items())[0]
                raise errors.Unprocessable(f"script version {version_id}: {name}: {why}")
            self._stores[version_id] = store
            while len(self._stores) > self._keep:
                self._stores.popitem(last=False)
            return store
