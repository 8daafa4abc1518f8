"""What a service's CLI module needs from ``services/cli.py``, without importing it.

A service registers its sub-commands with ``register(commands, common, bind)``; ``bind`` turns an
async ``work(args, settings, pool)`` into an argparse handler that loads the settings, opens the
same database as ``serve`` (the embedded PostgreSQL included) and maps domain errors to one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

import asyncpg

from services.core.config import Settings

Work = Callable[[argparse.Namespace, Settings, asyncpg.Pool], Awaitable[int]]
Handler = Callable[[argparse.Namespace], int]
Bind = Callable[[Work], Handler]
