"""What every repository of the update service starts from: a connection or a pool."""

from __future__ import annotations

import asyncpg


class Repository:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection
