"""The node's Prometheus metrics: one set for all worker processes of a node.

``pbxfront serve`` with several workers runs prometheus-client in multiprocess mode: the master
empties a per-node directory (``admin.metrics_dir``, default ``<data_dir>/metrics``) before it
forks, every process writes its values to its own files there, and ``/metrics`` (whichever worker
answers the scrape) adds them up. Counters and histograms are summed over every process that ever
ran since the start (a restarted worker does not reset them); the pool gauge counts live processes
only; the domain gauges keep the value most recently written.

The gauges that read PostgreSQL (devices by state, stale backups, events backlog, device
certificates) are computed by one :class:`NodeCollector` per node, a ``cleanup_ctx`` of the
listener that serves ``/metrics``, every ``admin.metrics_interval`` seconds; never per scrape.
The workers of a node agree on which of them runs it with a lock file in the metrics directory.
Services add what they know as *sources* when they are built (:meth:`Metrics.add_source`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import platform
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from services.core.periodic import PeriodicJob

log = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_FILE = "collector.lock"

# A source: reads PostgreSQL through its service's repository and sets gauges on ``metrics``.
Source = Callable[[asyncpg.Connection, "Metrics"], Awaitable[None]]


def version() -> str:
    try:
        return metadata.version("pbxfront")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def enable_multiprocess(directory: Path) -> None:
    """Blocking, in the master before the workers fork: an empty metrics directory for this
    node, and prometheus-client switched to file-backed values (it decides that at import, so
    the value class is swapped here; every metric created afterwards writes to the directory)."""
    directory = directory.resolve()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ[MULTIPROCESS_ENV] = str(directory)
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue()  # type: ignore[no-untyped-call]


def multiprocess_directory() -> Path | None:
    """The directory when this process runs in multiprocess mode (set by the master)."""
    value = os.environ.get(MULTIPROCESS_ENV)
    return Path(value) if value else None


def process_exited(pid: int) -> None:
    """A worker is gone: drop its live gauges (the pool gauge) from the sum."""
    directory = multiprocess_directory()
    if directory is not None:
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class Metrics:
    """The collectors of one process, kept on the listener applications (no module globals)."""

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_directory()
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "pbxfront_http_requests",
            "HTTP requests answered",
            ["service", "route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "pbxfront_http_request_duration_seconds",
            "Time from request start to response",
            ["service", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.polls = Counter(
            "pbxfront_update_polls",
            "Device polls of staging.txt / update.txt by result (script sent, nothing to do, "
            "refused, error)",
            ["kind", "result"],
            registry=registry,
        )
        self.tls_handshakes = Counter(
            "pbxfront_tls_handshakes",
            "TLS handshakes completed, by listener and whether the session was resumed",
            ["listener", "resumed"],
            registry=registry,
        )
        self.tls_failures = Counter(
            "pbxfront_tls_handshake_failures",
            "TLS handshakes that failed (unknown CA, timeout, protocol error)",
            ["listener"],
            registry=registry,
        )
        self.backup_puts = Counter(
            "pbxfront_backup_puts",
            "Config backups received, by result (stored as a new version, unchanged)",
            ["result"],
            registry=registry,
        )
        self.events_received = Counter(
            "pbxfront_events_received",
            "Events received and committed",
            ["outcome"],
            registry=registry,
        )
        self.events_commits = Counter(
            "pbxfront_events_commits", "Group-commit transactions", registry=registry
        )
        self.ldap_binds = Counter(
            "pbxfront_ldap_binds", "LDAP binds by result", ["result"], registry=registry
        )
        self.ldap_searches = Counter(
            "pbxfront_ldap_searches", "LDAP searches by result", ["result"], registry=registry
        )
        self.pool_connections = Gauge(
            "pbxfront_db_pool_connections",
            "PostgreSQL pool connections of the node's processes (open, idle, max)",
            ["state"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.build_info = Gauge(
            "pbxfront_build_info",
            "Always 1; the labels say which pbxfront and Python this node runs",
            ["version", "python"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.build_info.labels(version(), platform.python_version()).set(1)
        # Computed by the node collector from PostgreSQL (and certificate files).
        self.devices = Gauge(
            "pbxfront_devices",
            "Devices by state: in_sync, out_of_sync, stale (not seen for 3 poll intervals or "
            "never), unknown (polled, not in the inventory)",
            ["state"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.backups_stale = Gauge(
            "pbxfront_backups_stale",
            "Devices whose config backup is stale (alert raised, no PUT since)",
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.backups_stored = Gauge(
            "pbxfront_backup_versions",
            "Config backup versions stored (cluster-wide)",
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.events_backlog = Gauge(
            "pbxfront_events_backlog",
            "Events not yet delivered to a syslog destination",
            ["destination"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.events_oldest = Gauge(
            "pbxfront_events_oldest_undelivered_seconds",
            "Age of the oldest event not yet delivered to a destination (0: none)",
            ["destination"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.events_delivered = Gauge(
            "pbxfront_events_delivered",
            "Events delivered to a destination (cluster-wide)",
            ["destination"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.certificate_expiry = Gauge(
            "pbxfront_certificate_expiry_timestamp_seconds",
            "When a certificate expires (Unix time): kind ca or server by file, kind device the "
            "earliest unrevoked device certificate the provider CA issued",
            ["kind", "name"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.collector_success = Gauge(
            "pbxfront_metrics_collector_last_success_timestamp_seconds",
            "When the node's metrics collector last read PostgreSQL successfully",
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self._shared: dict[str, Any] = {}
        self._sources: dict[str, Source] = {}
        self.certificate_files: dict[tuple[str, str], Path] = {}
        self._pools: list[asyncpg.Pool] = []

    def shared(self, key: str, build: Callable[[CollectorRegistry], Any]) -> Any:
        """The one object ``build`` made for ``key`` on this registry: a service mounted on
        several listeners of a node registers its collectors once and shares them."""
        if key not in self._shared:
            self._shared[key] = build(self.registry)
        return self._shared[key]

    def add_source(self, name: str, source: Source) -> None:
        """A source for the node collector; a service built twice (two listeners) adds it once."""
        self._sources.setdefault(name, source)

    def add_certificate(self, kind: str, name: str, path: Path) -> None:
        """A certificate file whose expiry the node collector reports."""
        self.certificate_files[(kind, name)] = path

    def watch_pool(self, pool: asyncpg.Pool) -> None:
        if pool not in self._pools:
            self._pools.append(pool)

    def update_pools(self) -> None:
        size = sum(pool.get_size() for pool in self._pools)
        idle = sum(pool.get_idle_size() for pool in self._pools)
        limit = sum(pool.get_max_size() for pool in self._pools)
        self.pool_connections.labels("open").set(size)
        self.pool_connections.labels("idle").set(idle)
        self.pool_connections.labels("in_use").set(size - idle)
        self.pool_connections.labels("max").set(limit)

    def render(self) -> bytes:
        """The exposition for a scrape: every process of the node added up (multiprocess), or
        this process's registry."""
        self.update_pools()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    async def collect_sources(self, pool: asyncpg.Pool) -> None:
        """One run of every source (each on its own; one failing does not stop the others)."""
        ok = True
        for name, source in list(self._sources.items()):
            try:
                async with pool.acquire(timeout=5.0) as connection:
                    await source(connection, self)
            except Exception as error:  # a metric must never take the node down
                ok = False
                log.warning("metrics: source %s failed: %s", name, error)
        expiries = await asyncio.to_thread(_read_expiries, dict(self.certificate_files))
        for (kind, name), expiry in expiries.items():
            self.certificate_expiry.labels(kind, name).set(expiry)
        if ok:
            self.collector_success.set(time.time())


def _read_expiries(files: dict[tuple[str, str], Path]) -> dict[tuple[str, str], float]:
    from cryptography import x509

    found: dict[tuple[str, str], float] = {}
    for key, path in files.items():
        try:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as error:
            log.warning("metrics: cannot read certificate %s: %s", path, error)
            continue
        found[key] = certificate.not_valid_after_utc.timestamp()
    return found


def seconds_since(moment: datetime | None) -> float:
    return (datetime.now(UTC) - moment).total_seconds() if moment is not None else 0.0


METRICS_KEY = web.AppKey("metrics", Metrics)


def node_collector(metrics: Metrics, pool: asyncpg.Pool | None, interval: float) -> PeriodicJob:
    """The one job per node that computes the PostgreSQL gauges every ``interval`` seconds (and
    this process's pool gauge), first right at start.

    Every worker of a node runs it; the one holding the lock file in the metrics directory reads
    PostgreSQL (the lock goes with the process, so another worker takes over when it dies).
    Without multiprocess mode (one process) there is nobody to agree with."""
    lock: list[IO[bytes]] = []

    async def holds_lock() -> bool:
        directory = metrics.multiprocess_dir
        if directory is None or lock:
            return True
        handle = await asyncio.to_thread(open, directory / LOCK_FILE, "ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        lock.append(handle)  # held (open) for the life of this process
        return True

    async def collect(job_pool: asyncpg.Pool) -> None:
        metrics.update_pools()
        if await holds_lock():
            await metrics.collect_sources(job_pool)

    if pool is not None:
        metrics.watch_pool(pool)
    return PeriodicJob("metrics collector", interval, collect, pool, first_run=0.0)
