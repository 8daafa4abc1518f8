"""What the update command groups share: the inventory snapshot, the stores, the base URL and
the operator's name (what every CLI shares is in ``services.core.commands``)."""

from __future__ import annotations

import asyncio

import asyncpg

from services.core import audit
from services.core.config import Settings
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


def _operator() -> str:
    """Who runs the command: the OS user (the CLI runs on the Frontend), as the audit log has
    it."""
    return f"cli:{audit.cli_actor().name}"
