"""Firmware shared by every Frontend (``update.firmware_source = "database"``, migration 022).

``pbxfront firmware add`` on any node stores the file in PostgreSQL (content by SHA-256, in
chunks of 1 MiB) and bumps ``firmware_state.version``. Every node keeps the list in memory
(re-read when the version changes, checked every ``update.reload_interval``) and serves a file
from its cache folder (``update.firmware_cache_dir``, default ``<data_dir>/firmware-cache``,
the seed's ``firm/<build>/<file>`` layout):

- a file not in the cache is fetched from the database into a temporary file, its SHA-256 and
  size checked, then renamed into place (a device never gets a half-fetched file);
- a cached file is hashed again before it is served when its size, modification or change time
  (ctime: any write, even one that puts the old mtime back) or inode changed since it was last
  checked, or ``update.firmware_verify_interval`` passed; a copy that
  does not match is removed and fetched again;
- the cached copy's modification time is the time the file was added, so Last-Modified and the
  ETag are the same on every node and a device may resume (Range) on another one;
- while PostgreSQL is unreachable, cached files are still served (the list last read stays, and
  a node starting meanwhile reads it from ``index.json`` in the cache folder); a listed file
  that is not cached answers 503 until the database is back.

The store's SQL lives in :class:`~services.update.repository.SharedFirmwareRepository`; this
module is the nodes' side: ``pbxfront firmware add`` and each worker's checked cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import asyncpg

from services.core.config import Settings
from services.core.db import DatabaseUnavailable, acquire
from services.update.firmware import (
    FirmwareError,
    FirmwareFile,
    FirmwareSource,
    FirmwareStore,
    FirmwareUnavailable,
    LocalFirmware,
    check_build,
    check_file_name,
)
from services.update.repository.shared_firmware import CHUNK_BYTES, SharedFile

# `pbxfront firmware` (update/cli/firmware.py) imports the repository from here.
from services.update.repository.shared_firmware import (
    SharedFirmwareRepository as SharedFirmwareRepository,
)

log = logging.getLogger(__name__)

# Fetch attempts with no database are not retried sooner than this (per file, per worker).
FETCH_RETRY_SECONDS = 5.0
# Shutdown waits this long for a fetch in progress, then stops it (its temporary file goes).
CLOSE_TIMEOUT = 10.0


def file_sha256(path: Path) -> tuple[str, int]:
    """Blocking: (SHA-256 hex, size) of a file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _mtime_ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


async def add_file(
    pool: asyncpg.Pool,
    source: Path,
    build: str,
    name: str,
    *,
    by: str,
    device_type: str | None = None,
) -> tuple[SharedFile, str | None]:
    """``pbxfront firmware add`` with the shared store: check the names, measure the file (in a
    thread), store it. Raises FirmwareError naming the problem."""
    check_build(build)
    check_file_name(name)
    if not await asyncio.to_thread(source.is_file):
        raise FirmwareError(f"{source}: no such file")
    try:
        sha256, size = await asyncio.to_thread(file_sha256, source)
    except OSError as error:
        raise FirmwareError(f"{source}: unreadable: {error}") from None
    return await SharedFirmwareRepository(pool).store(
        source, sha256, size, build, name, by=by, device_type=device_type
    )


@dataclass
class _Checked:
    """What was true of a cached file when it was last hashed."""

    sha256: str
    size: int
    mtime_ns: int
    # Changes with every write and every utime, and nobody can set it back.
    ctime_ns: int
    inode: int
    at: float


@dataclass
class SharedFirmware(FirmwareSource):
    """One worker's view of the shared store: the list (in memory) and its cache folder."""

    pool: asyncpg.Pool | None
    cache_root: Path
    frontend: str
    verify_interval: float = 3600.0
    node: str = ""
    _files: dict[tuple[str, str], SharedFile] = field(default_factory=dict)
    _version: int | None = None
    _checked: dict[tuple[str, str], _Checked] = field(default_factory=dict)
    _fetching: dict[tuple[str, str], asyncio.Task[FirmwareFile]] = field(default_factory=dict)
    _failed_at: dict[tuple[str, str], float] = field(default_factory=dict)
    _unavailable_logged: bool = False

    def __post_init__(self) -> None:
        self.firm = self.cache_root / "firm"
        self.index = self.cache_root / "index.json"
        self.where = f"the database (cache {self.firm})"
        if not self.node:
            self.node = f"{socket.gethostname()}:{self.cache_root.absolute()}"

    def listed(self, build: str, name: str) -> bool:
        return (build, name) in self._files

    def files(self) -> list[SharedFile]:
        return [self._files[key] for key in sorted(self._files)]

    async def refresh(self) -> bool:
        """Re-read the list when ``firmware_state.version`` changed; with no database the list
        last read stays (logged once per outage)."""
        if self.pool is None:
            return False
        try:
            async with acquire(self.pool) as connection:
                repository = SharedFirmwareRepository(connection)
                version = await repository.version()
                if version == self._version:
                    changed = False
                else:
                    files = await repository.files()
                    changed = True
        except DatabaseUnavailable as error:
            if not self._unavailable_logged:
                self._unavailable_logged = True
                log.warning("shared firmware: database unavailable, serving the cache: %s", error)
            if self._version is None and not self._files:
                # Started during an outage: the list the cache was last filled from.
                self._files = await asyncio.to_thread(self._read_index)
                if self._files:
                    log.warning(
                        "shared firmware: serving the %d cached file(s) of %s until the "
                        "database is back",
                        len(self._files),
                        self.index,
                    )
                    return True
            return False
        if self._unavailable_logged:
            self._unavailable_logged = False
            log.info("shared firmware: database reachable again")
        if not changed:
            return False
        new = {(f.build, f.name): f for f in files}
        changed = new != self._files or self._version is None
        self._files = new
        self._version = version
        for key in list(self._checked):
            if key not in new or new[key].sha256 != self._checked[key].sha256:
                del self._checked[key]
        await asyncio.to_thread(self._prune)
        await asyncio.to_thread(self._write_index)
        return changed

    def _write_index(self) -> None:
        """Blocking: the list as last read, next to the cache (read back only by a node that
        starts while the database is unreachable)."""
        entries = [
            {**f.as_json(), "cached_on": []} for f in sorted(self._files.values(), key=_sort_key)
        ]
        self.cache_root.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=self.cache_root, prefix=".index-")
        with os.fdopen(descriptor, "w", encoding="utf-8") as writer:
            json.dump(entries, writer, indent=1)
        os.replace(name, self.index)

    def _read_index(self) -> dict[tuple[str, str], SharedFile]:
        """Blocking: the list :meth:`_write_index` left; empty when there is none or it cannot
        be read (then nothing is served until the database is back)."""
        try:
            entries = json.loads(self.index.read_text("utf-8"))
            files = [
                SharedFile(
                    build=check_build(e["build"]),
                    name=check_file_name(e["name"]),
                    sha256=str(e["sha256"]),
                    size=int(e["size"]),
                    added_at=datetime.fromisoformat(e["added_at"]),
                    added_by=str(e["added_by"]),
                    device_type=e["device_type"],
                )
                for e in entries
            ]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, FirmwareError) as error:
            log.error("shared firmware: %s unusable: %s", self.index, error)
            return {}
        return {(f.build, f.name): f for f in files}

    def _prune(self) -> None:
        """Blocking: remove cached files that are no longer in the store."""
        if not self.firm.is_dir():
            return
        for build_dir in self.firm.iterdir():
            if not build_dir.is_dir():
                continue
            for path in build_dir.iterdir():
                # Temporary files (".incoming-…") belong to a fetch in progress.
                if path.name.startswith("."):
                    continue
                if (build_dir.name, path.name) not in self._files:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    log.info("shared firmware: removed %s from the cache", path)

    async def find(self, build: str, name: str) -> FirmwareFile | None:
        try:
            check_build(build)
            check_file_name(name)
        except FirmwareError:
            return None
        entry = self._files.get((build, name))
        if entry is None:
            return None
        key = (build, name)
        # One check (and fetch) per file at a time: the devices asking meanwhile share its
        # result, and one leaving early does not cancel it for the others.
        running = self._fetching.get(key)
        if running is None:
            running = asyncio.get_running_loop().create_task(self._obtain(entry))
            self._fetching[key] = running
            running.add_done_callback(functools.partial(self._obtained, key))
        return await asyncio.shield(running)

    async def close(self) -> None:
        pending = list(self._fetching.values())
        if not pending:
            return
        _done, running = await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)

    def _obtained(self, key: tuple[str, str], task: asyncio.Task[FirmwareFile]) -> None:
        if self._fetching.get(key) is task:
            del self._fetching[key]
        # Retrieved here, so a failure nobody waited for is not reported as never retrieved.
        if not task.cancelled():
            task.exception()

    async def _obtain(self, entry: SharedFile) -> FirmwareFile:
        key = (entry.build, entry.name)
        try:
            cached = await asyncio.to_thread(self._cached, entry)
        except OSError as error:
            log.error("shared firmware: cached firm/%s/%s unreadable: %s", *key, error)
            raise FirmwareUnavailable(
                f"firm/{entry.build}/{entry.name}: cache unreadable"
            ) from None
        if cached is not None:
            return cached
        failed = self._failed_at.get(key)
        if failed is not None and time.monotonic() - failed < FETCH_RETRY_SECONDS:
            raise FirmwareUnavailable(
                f"firm/{entry.build}/{entry.name}: not cached, database unavailable"
            )
        try:
            fetched = await self._fetch(entry)
        except FirmwareUnavailable:
            self._failed_at[key] = time.monotonic()
            raise
        self._failed_at.pop(key, None)
        return fetched

    def _cached(self, entry: SharedFile) -> FirmwareFile | None:
        """Blocking: the cached copy if it is the listed content (hashed again when it changed
        on disk or was last checked too long ago); a copy that is not is removed."""
        key = (entry.build, entry.name)
        path = self.firm / entry.build / entry.name
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._checked.pop(key, None)
            return None
        checked = self._checked.get(key)
        if (
            checked is not None
            and checked.sha256 == entry.sha256
            and (checked.size, checked.mtime_ns, checked.ctime_ns, checked.inode)
            == (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
            and time.monotonic() - checked.at < self.verify_interval
        ):
            return FirmwareFile(entry.build, entry.name, path, entry.sha256, entry.size)
        sha256, size = file_sha256(path)
        if sha256 != entry.sha256 or size != entry.size:
            log.warning(
                "shared firmware: cached %s is not the stored file (sha256 %s, %d bytes; "
                "expected %s, %d bytes): removed, fetching it again",
                path,
                sha256,
                size,
                entry.sha256,
                entry.size,
            )
            self._checked.pop(key, None)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        return self._mark_checked(entry, path)

    def _mark_checked(self, entry: SharedFile, path: Path) -> FirmwareFile:
        """Blocking: give the checked copy the store's time and remember what it looks like."""
        mtime = _mtime_ns(entry.added_at)
        if path.stat().st_mtime_ns != mtime:
            os.utime(path, ns=(mtime, mtime))
        stat = path.stat()
        self._checked[(entry.build, entry.name)] = _Checked(
            entry.sha256,
            stat.st_size,
            stat.st_mtime_ns,
            stat.st_ctime_ns,
            stat.st_ino,
            time.monotonic(),
        )
        return FirmwareFile(entry.build, entry.name, path, entry.sha256, entry.size)

    async def _fetch(self, entry: SharedFile) -> FirmwareFile:
        """Copy the stored content into the cache, checked; FirmwareUnavailable when the
        database cannot be read (the cache keeps nothing half-fetched)."""
        if self.pool is None:
            raise FirmwareUnavailable("no database")
        directory = self.firm / entry.build
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        writer, temporary = await asyncio.to_thread(_temporary, directory)
        digest = hashlib.sha256()
        size = 0
        done = False
        try:
            try:
                async with acquire(self.pool) as connection:
                    repository = SharedFirmwareRepository(connection)
                    seq = 0
                    while size < entry.size:
                        chunk = await repository.chunk(entry.sha256, seq)
                        if not chunk:
                            break
                        digest.update(chunk)
                        size += len(chunk)
                        await asyncio.to_thread(writer.write, chunk)
                        seq += 1
            except DatabaseUnavailable as error:
                raise FirmwareUnavailable(
                    f"firm/{entry.build}/{entry.name}: not cached, database unavailable: {error}"
                ) from None
            await asyncio.to_thread(_close_synced, writer)
            if digest.hexdigest() != entry.sha256 or size != entry.size:
                # The content changed (removed, replaced) while it was read: the next refresh
                # brings the new list.
                raise FirmwareUnavailable(
                    f"firm/{entry.build}/{entry.name}: fetched {size} bytes that are not the "
                    "listed file; it changed in the store"
                )
            path = directory / entry.name
            await asyncio.to_thread(os.chmod, temporary, 0o644)
            await asyncio.to_thread(os.replace, temporary, path)
            done = True
        finally:
            if not done:
                await asyncio.to_thread(_discard, writer, temporary)
        found = await asyncio.to_thread(self._mark_checked, entry, path)
        log.info("shared firmware: cached %s (%d bytes, sha256 %s)", path, entry.size, entry.sha256)
        with contextlib.suppress(DatabaseUnavailable):
            async with acquire(self.pool) as connection:
                await SharedFirmwareRepository(connection).record_cached(
                    self.node, self.frontend, entry.sha256
                )
        return found


def _sort_key(item: SharedFile) -> tuple[str, str]:
    return (item.build, item.name)


def _temporary(directory: Path) -> tuple[BinaryIO, Path]:
    """Blocking: a new hidden file in ``directory`` (the prune skips hidden files)."""
    descriptor, name = tempfile.mkstemp(dir=directory, prefix=".incoming-")
    return os.fdopen(descriptor, "wb"), Path(name)


def _close_synced(writer: BinaryIO) -> None:
    writer.flush()
    os.fsync(writer.fileno())
    writer.close()


def _discard(writer: BinaryIO, path: Path) -> None:
    writer.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def cache_dir(settings: Settings) -> Path:
    return settings.update.firmware_cache_dir or settings.data_dir / "firmware-cache"


def firmware_source(settings: Settings, pool: asyncpg.Pool | None) -> FirmwareSource:
    """The firmware the update service serves, as ``update.firmware_source`` says."""
    if settings.update.firmware_source == "database":
        return SharedFirmware(
            pool,
            cache_dir(settings),
            settings.frontend,
            verify_interval=settings.update.firmware_verify_interval,
        )
    return LocalFirmware(FirmwareStore(settings.update.firmware_dir))
