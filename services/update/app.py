"""The update service: per-device staging.txt / update.txt, firmware files, device status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from services.core.config import Settings
from services.core.http import COMMENT_ERRORS_KEY
from services.core.periodic import PeriodicJob
from services.core.phpus import route_paths as phpus_route_paths
from services.core.ratelimit import AddressLimiter
from services.core.resources import Resources
from services.update import canary, certificates, handlers, phpus_route
from services.update.gauges import count_polls, devices_source
from services.update.provisioning import Adopter, BodyCache, ContextAdditions, Lifecycle
from services.update.scripts import ScriptStore
from services.update.shared_firmware import firmware_source
from services.update.state import (
    ADDITIONS_KEY,
    ADOPTER_KEY,
    BODIES_KEY,
    FIRMWARE_KEY,
    LIFECYCLE_KEY,
    PUBLISHED_KEY,
    SETTINGS_KEY,
    SNAPSHOTS_KEY,
    STORE_KEY,
    UNKNOWN_LIMITER_KEY,
    WATCH_KEY,
    ChangeWatch,
    SnapshotCache,
    change_watch_ctx,
)
from services.update.status import STATUS_KEY, StatusWriter, status_writer_ctx
from services.update.versions import PublishedScripts

log = logging.getLogger(__name__)


async def script_reloader(app: web.Application) -> AsyncIterator[None]:
    """Load scripts and the firmware index at start, then watch both in the background."""
    store = app[STORE_KEY]
    firmware = app[FIRMWARE_KEY]
    interval = app[SETTINGS_KEY].update.reload_interval
    # With published versions (update.scripts_source = "database") the folder is not served.
    folder = app[SETTINGS_KEY].update.scripts_source == "files"
    if folder:
        await asyncio.to_thread(store.refresh)
    await firmware.refresh()
    for name, problem in store.problems.items():
        log.error("scripts: %s: %s", name, problem)

    async def watch() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if folder and await asyncio.to_thread(store.refresh):
                    log.info("scripts reloaded from %s", store.root)
                if await firmware.refresh():
                    log.info("firmware store changed: %s", firmware.where)
            except Exception:  # keep watching; the old scripts stay in use
                log.exception("scripts: reload failed")

    task = asyncio.create_task(watch())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await firmware.close()


def create_app(
    settings: Settings,
    resources: Resources,
    additions: ContextAdditions | None = None,
    adopter: Adopter | None = None,
) -> web.Application:
    polls: dict[Handler, str] = {handlers.staging: "staging", handlers.update: "update"}
    app = web.Application(middlewares=[count_polls(resources.metrics, polls)])
    resources.metrics.add_source("devices", devices_source(settings.update.poll_interval))
    app[SETTINGS_KEY] = settings
    app[STORE_KEY] = ScriptStore(settings.update.scripts_dir, settings.update.grace_seconds)
    app[FIRMWARE_KEY] = firmware_source(settings, resources.pool)
    app[SNAPSHOTS_KEY] = SnapshotCache()
    app[BODIES_KEY] = BodyCache()
    app[STATUS_KEY] = StatusWriter(settings.update.status_flush_interval)
    app[WATCH_KEY] = ChangeWatch()
    app[LIFECYCLE_KEY] = Lifecycle.from_settings(settings.update)
    app[PUBLISHED_KEY] = PublishedScripts(settings.update.scripts_dir)
    app[ADDITIONS_KEY] = additions
    app[ADOPTER_KEY] = adopter
    # Canary roll-outs advance from node start (one node at a time, canary.advance).
    rollout_job = PeriodicJob(
        "script roll-outs",
        settings.update.rollout_check_interval,
        canary.advance_with_pool,
        resources.pool,
    )
    app.cleanup_ctx.append(rollout_job.context)
    app[UNKNOWN_LIMITER_KEY] = AddressLimiter(
        settings.update.unknown_burst, settings.update.unknown_per_second
    )
    app[COMMENT_ERRORS_KEY] = True
    app.cleanup_ctx.append(script_reloader)
    app.cleanup_ctx.append(status_writer_ctx)
    app.cleanup_ctx.append(change_watch_ctx(resources.pool))
    # The provider RootCA for the certificate roll-out and the CRL (refuses to start when the
    # [ca] files exist but cannot be used).
    app[certificates.LIMITER_KEY] = AddressLimiter(
        certificates.FAILURE_BURST, certificates.FAILURE_RATE
    )
    app.cleanup_ctx.append(certificates.authority_ctx)
    # ca.signer: a node holding the CA key signs what nodes without it queued.
    app.cleanup_ctx.append(certificates.signer_ctx(resources.pool))
    prefix = "/DRIVE/CF0/update"
    app.router.add_get(f"{prefix}/staging.txt", handlers.staging)
    app.router.add_get(f"{prefix}/update.txt", handlers.update)
    # protocol.md §1: a URL ending in "/" makes the device ask for update-<type>.htm.
    app.router.add_get(prefix + "/{page:(?i:update-[a-z0-9_]{1,32}\\.htm)}", handlers.update)
    app.router.add_get(prefix + "/firm/{build}/{file}", handlers.firmware)
    app.router.add_get(f"{prefix}/ca.crl", certificates.crl)
    # protocol.md §9: devices PUT command output (certificate list, signing request) here.
    app.router.add_route("*", prefix + "/x509/{name:[A-Za-z0-9._-]{1,64}}", certificates.upload)
    # Devices moved from PHPUS still poll its update.php (README "Moving from PHPUS").
    for path in phpus_route_paths(settings.update.phpus_paths):
        app.router.add_get(path, phpus_route.poll)
    return app
