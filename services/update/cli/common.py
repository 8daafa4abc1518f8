"""What the update command groups share: the inventory snapshot, the stores, the base URL,
MAC parsing, the operator's name, ages and tables."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from services.core import audit
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.identity import IdentityError, normalize_mac
from services.update.firmware import FirmwareSource
from services.update.provisioning import Snapshot
from services.update.scripts import ScriptStore
from services.update.shared_firmware import firmware_source


async def _snapshot(pool: asyncpg.Pool) -> Snapshot:
    from services.update.state import SnapshotCache

    async with pool.acquire() as connection:
        return await SnapshotCache().get(connection)


def _base_url(settings: Settings, given: str | None) -> str:
    if given:
        return given.rstrip("/")
    if settings.update.public_url:
        return settings.update.public_url.rstrip("/")
    return "https://frontend.invalid"


async def _stores(settings: Settings, pool: asyncpg.Pool) -> tuple[ScriptStore, FirmwareSource]:
    store = ScriptStore(settings.update.scripts_dir)
    firmware = firmware_source(settings, pool)
    await asyncio.to_thread(store.refresh)
    await firmware.refresh()
    return store, firmware


def _mac(value: str) -> str:
    try:
        return normalize_mac(value)
    except IdentityError as error:
        raise UsageError(str(error)) from None


def _operator() -> str:
    """Who runs the command: the OS user (the CLI runs on the Frontend), as the audit log has
    it."""
    return f"cli:{audit.cli_actor().name}"


def _age(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _table(rows: list[tuple[str, ...]]) -> None:
    """``rows`` (the header first) as columns, each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
