"""The backup service: the write-only intake for devices, the archive for operators, and the
periodic maintenance (retention, stale-backup alerts) that one node of the cluster runs at a time.

Two applications:

- :func:`create_app` — the device side, ``PUT /DRIVE/CF0/update/backup/<name>`` (mounted on the
  device listeners, before ``update``);
- :func:`create_archive_app` — the operator side, ``/api/v1/backups/…`` and the read-only WebDAV
  view ``/dav/backups/…`` (mounted into the admin listener's application by ``serve.py``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
from aiohttp import web

from services.backup import dav, phpus
from services.backup.archive_api import ENDPOINTS, PRUNE_KEY
from services.backup.diff import Redaction
from services.backup.gauges import backups_source, count_puts
from services.backup.handlers import (
    BACKUP_PREFIX,
    DEVICE_AUTH_KEY,
    LOOKUP_KEY,
    NORMALIZER_KEY,
    REDACTION_KEY,
    SETTINGS_KEY,
    UNCHANGED_KEY,
    backup_resource,
)
from services.backup.lookup import IntakeLookup
from services.backup.normalize import Normalizer
from services.backup.repository import (
    IntakeRepository,
    MaintenanceRepository,
    SeenUnchanged,
    Version,
)
from services.backup.retention import Policy, policy_for, versions_to_delete
from services.core.api import endpoints_app
from services.core.batch import BackgroundBatches, Fold
from services.core.config import Settings
from services.core.db import acquire
from services.core.deviceauth import DeviceAuth
from services.core.digest import PostgresNonceCounter
from services.core.inventory.variables import LayeredVariables, customer_scopes
from services.core.periodic import PeriodicJob
from services.core.phpus import route_paths as phpus_route_paths
from services.core.resources import Resources

log = logging.getLogger(__name__)


@dataclass
class PrunedDevice:
    mac: str
    customer: str
    versions: list[Version]

    def as_json(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "customer": self.customer,
            "versions": [
                {"id": v.id, "received_at": v.received_at.isoformat()} for v in self.versions
            ],
        }


@dataclass
class MaintenanceReport:
    """What one run did (or, dry, would do). ``ran`` False: another node holds the lock."""

    ran: bool
    dry_run: bool
    pruned: list[PrunedDevice] = field(default_factory=list)
    contents_removed: int = 0
    stale_alerts: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "ran": self.ran,
            "dry_run": self.dry_run,
            "pruned": [p.as_json() for p in self.pruned],
            "versions_deleted": sum(len(p.versions) for p in self.pruned),
            "contents_removed": self.contents_removed,
            "stale_alerts": self.stale_alerts,
        }


async def run_maintenance(
    pool: asyncpg.Pool,
    settings: Settings,
    now: datetime,
    *,
    dry_run: bool = False,
    customer: str | None = None,
) -> MaintenanceReport:
    """Retention for every device (or one customer's), stale-backup alerts, expired Digest
    nonces. Runs on one node at a time: when another holds the lock, nothing is done
    (``ran`` False). A dry run changes nothing and needs no lock. ``now`` is the clock."""
    report = MaintenanceReport(ran=True, dry_run=dry_run)
    async with acquire(pool) as connection:
        repository = MaintenanceRepository(connection)
        if not dry_run and not await repository.try_maintenance_lock():
            log.info("backup maintenance: another node is running it")
            return MaintenanceReport(ran=False, dry_run=dry_run)
        try:
            policy = await _policies(repository, settings)
            await _prune(repository, policy, now, report, customer)
            if not dry_run:
                report.contents_removed = await repository.collect_garbage()
            await _alert_stale(repository, policy, now, report, customer)
            if not dry_run:
                await PostgresNonceCounter(pool).forget_expired(now)
        finally:
            if not dry_run:
                await repository.release_maintenance_lock()
    return report


async def _policies(
    repository: MaintenanceRepository, settings: Settings
) -> Callable[[str], Policy]:
    """Each customer's retention policy: backup settings under its layered update variables."""
    defaults = Policy.defaults(settings.backup)
    variables, frontends = await repository.policy_variables()
    layered = LayeredVariables(variables)

    def policy(customer_id: str) -> Policy:
        scopes = customer_scopes(customer_id, frontends.get(customer_id, ""))
        return policy_for(defaults, layered.values(scopes))

    return policy


async def _prune(
    repository: MaintenanceRepository,
    policy: Callable[[str], Policy],
    now: datetime,
    report: MaintenanceReport,
    customer: str | None,
) -> None:
    """Versions past their owner's policy deleted (a dry run: only listed in ``report``)."""
    for mac, owner in await repository.devices_with_versions(1, customer):
        owner_policy = policy(owner)
        deleted = await repository.prune_device(
            mac, partial(versions_to_delete, policy=owner_policy, now=now), dry_run=report.dry_run
        )
        if deleted:
            report.pruned.append(PrunedDevice(mac, owner, deleted))
            if not report.dry_run:
                log.info(
                    "backup retention: deleted %d version(s) of %s (customer %s): %s",
                    len(deleted),
                    mac,
                    owner,
                    ", ".join(str(v.id) for v in deleted),
                )


async def _alert_stale(
    repository: MaintenanceRepository,
    policy: Callable[[str], Policy],
    now: datetime,
    report: MaintenanceReport,
    customer: str | None,
) -> None:
    """An alert (and a warning line) for each device without a PUT for its policy's
    stale_after_hours, unless a PUT or another run came first (a dry run: only listed)."""
    for owner in await repository.backup_customers():
        if customer is not None and owner != customer:
            continue
        hours = policy(owner).stale_after_hours
        for device in await repository.stale_devices(owner, now - timedelta(hours=hours)):
            report.stale_alerts.append(device.mac)
            if report.dry_run:
                continue
            last = device.last_put_at.astimezone(UTC).isoformat(timespec="seconds")
            message = (
                f"backup of {device.hardware_id} ({owner}) is stale: no PUT since "
                f"{last} (policy: {hours:g} h)"
            )
            if await repository.raise_stale(device, now, message) is not None:
                log.warning("%s", message)


async def run_maintenance_json(
    pool: asyncpg.Pool, settings: Settings, now: datetime, dry_run: bool, customer: str | None
) -> dict[str, Any]:
    report = await run_maintenance(pool, settings, now, dry_run=dry_run, customer=customer)
    return report.as_json()


def _shared_state(app: web.Application, settings: Settings) -> None:
    app[SETTINGS_KEY] = settings
    app[NORMALIZER_KEY] = Normalizer.build(settings.backup.ignore_patterns)
    app[REDACTION_KEY] = Redaction.build(
        settings.backup.secret_options, settings.backup.secret_var_flags
    )


def create_app(settings: Settings, resources: Resources) -> web.Application:
    """The device side: the write-only backup folder, and the maintenance job, which starts with
    the application (stale-backup alerts exist for exactly the node that gets no uploads)."""
    app = web.Application(middlewares=[count_puts(resources.metrics)])
    resources.metrics.add_source("backups", backups_source)
    _shared_state(app, settings)
    pool = resources.require_pool("the backup service")
    device_auth = DeviceAuth(
        pool, settings.backup.digest_algorithms, settings.backup.digest_nonce_lifetime
    )
    app[DEVICE_AUTH_KEY] = device_auth
    app.cleanup_ctx.append(device_auth.context)
    unchanged = BackgroundBatches[SeenUnchanged](
        "backup unchanged uploads",
        _record_unchanged,
        fold=Fold(key=lambda seen: seen.device.mac, merge=_fold_unchanged),
    )
    app[UNCHANGED_KEY] = unchanged
    app[LOOKUP_KEY] = IntakeLookup()

    async def close_unchanged(_app: web.Application) -> AsyncIterator[None]:
        yield
        await unchanged.close()

    app.cleanup_ctx.append(close_unchanged)
    # Every backup.prune_interval seconds, one node of the cluster at a time (advisory lock).
    job = PeriodicJob(
        "backup maintenance",
        settings.backup.prune_interval,
        lambda pool: run_maintenance(pool, settings, datetime.now(UTC)),
        pool,
    )
    app.cleanup_ctx.append(job.context)
    # Every method on every path below the folder lands here: PUT stores, the rest is refused
    # with one answer (nothing about what exists leaks).
    app.router.add_route("*", BACKUP_PREFIX + "/{name:.+}", backup_resource)
    app.router.add_route("*", BACKUP_PREFIX + "{tail:/?}", backup_resource)
    # PHPUS's backup URL (update.php?mode=backup), by PUT or POST; GET there is the update
    # service's (a listener's services share a path with different methods).
    for path in phpus_route_paths(settings.update.phpus_paths):
        app.router.add_put(path, phpus.backup)
        app.router.add_post(path, phpus.backup)
    return app


async def _record_unchanged(connection: asyncpg.Connection, seen: list[SeenUnchanged]) -> None:
    await IntakeRepository(connection).record_unchanged(seen)


def _fold_unchanged(earlier: SeenUnchanged, later: SeenUnchanged) -> SeenUnchanged:
    return SeenUnchanged(later.device, later.version_id, later.at, earlier.puts + later.puts)


def create_archive_app(settings: Settings) -> web.Application:
    """The operator side: ``/api/v1/backups/…`` and ``/dav/backups/…`` (admin listener)."""
    app = endpoints_app("backup", ENDPOINTS)
    _shared_state(app, settings)
    app[PRUNE_KEY] = run_maintenance_json
    dav.add_routes(app)
    return app
