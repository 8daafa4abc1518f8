"""What a node hands every service application when it builds it.

``serve.py``'s factories are called as ``factory(settings, resources)``: the process-wide pool
(None only for a node without a database, as some tests run) and the process's metrics. An
application keeps what it needs from here on itself, so its background jobs (``cleanup_ctx``)
start with the node, before and without any request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from services.core.metrics import Metrics


@dataclass(frozen=True)
class Resources:
    pool: asyncpg.Pool | None
    metrics: Metrics = field(default_factory=Metrics)

    def require_pool(self, what: str) -> asyncpg.Pool:
        """The pool, or a clear error naming the service that cannot run without one."""
        if self.pool is None:
            raise RuntimeError(f"{what} needs a database pool")
        return self.pool
