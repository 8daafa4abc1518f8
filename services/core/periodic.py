"""Work a service repeats every so often (retention, staleness checks), on every node and worker.

A :class:`PeriodicJob` is built with its application (pool in hand) and runs as that
application's ``cleanup_ctx``: it starts with the node, so a node that gets no traffic after a
restart still applies retention and raises its alerts. Every node and worker runs the loop; the
job itself takes an advisory lock so one of them works at a time. On shutdown the loop is told to
stop and a run in progress may finish (a task cancelled inside ``pool.acquire`` can lose a
connection, and closing the pool would then wait forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web

from services.core.db import DatabaseUnavailable

log = logging.getLogger(__name__)

# How long shutdown waits for a run in progress before cancelling it.
STOP_TIMEOUT = 10.0


class PeriodicJob:
    def __init__(
        self,
        what: str,
        interval: float,
        job: Callable[[asyncpg.Pool], Awaitable[object]],
        pool: asyncpg.Pool | None,
        *,
        first_run: float | None = None,
    ) -> None:
        """``job(pool)`` every ``interval`` seconds (never when 0, or without a pool); ``what``
        names it in logs. The first run comes ``first_run`` seconds after start (default: one
        interval)."""
        self._what = what
        self._interval = interval
        self._first_run = interval if first_run is None else first_run
        self._job = job
        self._pool = pool
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _loop(self, pool: asyncpg.Pool) -> None:
        wait = self._first_run
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
            wait = self._interval
            if self._stop.is_set():
                return
            try:
                await self._job(pool)
            except DatabaseUnavailable as error:
                log.warning("%s: database unavailable: %s", self._what, error)
            except Exception:  # keep the loop; the next run retries
                log.exception("%s failed", self._what)

    async def context(self, _app: web.Application) -> AsyncIterator[None]:
        """The cleanup_ctx: start the loop with the application, stop it with it."""
        if self._pool is not None and self._interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._loop(self._pool))
        yield
        self._stop.set()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=STOP_TIMEOUT)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
