"""Where the database is: the embedded PostgreSQL (pgserver) with its supervisor, or the DSN
of the configuration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.core.config import DatabaseSettings, Settings
from services.core.db.base import (
    DatabaseConfigError,
)

log = logging.getLogger(__name__)


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


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for error messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
