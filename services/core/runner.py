"""Run service applications on listeners: sockets, workers, signals, systemd notification.

One node = one master process plus ``workers`` worker processes. The master binds every listener
once (port 0 becomes a real port here), starts the embedded PostgreSQL and applies migrations, then
forks the workers. Each worker binds its own SO_REUSEPORT socket on the same address (the kernel
spreads connections over them), opens its own pool and serves. SIGTERM/SIGINT: stop accepting,
finish in-flight requests and exit, all within ``limits.shutdown_timeout`` whatever state the
node is in (what is left then is cancelled, the pool terminated; the master kills a worker that
overstays). SIGHUP: reload TLS certificates
for new connections. A worker that dies unexpectedly is restarted after a short pause.

TLS session resumption across workers: the master builds every listener's server context before
it forks, with a session-ticket key per listener (``core/ticketkeys.py``) that every node on the
database shares and keeps across restarts (``core/ticketstore.py``: the master takes the keys
from PostgreSQL before it forks, each worker checks them every ``tls.ticket_key_check_seconds``
and rebuilds its contexts on a new or rotated key), and every context rebuilt on SIGHUP (in the
workers, and in the master for workers it starts later) keeps it. A device's ticket therefore
resumes on every worker, before and after a reload and a restart, and on every Frontend (and on
no other listener).

With ``workers = 1`` everything runs in the master process (what the tests and the demo use).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import asyncpg
from aiohttp import web

from services.core.config import STREAM_SCHEMES, ConfigError, ListenerSettings, Settings
from services.core.db import pool_ctx
from services.core.guard import ConnectionGuard
from services.core.http import AccessLogger, create_listener_app
from services.core.metrics import Metrics, enable_multiprocess, node_collector, process_exited
from services.core.resources import Resources
from services.core.revocation import Revocations, RevocationWatcher
from services.core.ticketstore import TicketKeyWatcher, adopt_shared_keys
from services.core.tls import (
    ContextHolder,
    GuardedSite,
    TlsCounters,
    TlsFiles,
    bind_socket,
    build_server_context,
    node_ticket_keys,
)

log = logging.getLogger(__name__)


@runtime_checkable
class StreamService(Protocol):
    """A service that speaks its own protocol on its listeners instead of HTTP (the LDAP
    directory). One instance per process serves every listener naming it: ``start`` is called
    once per listener with that listener's socket (bound, not yet listening), its TLS context
    holder (None for plain TCP; reloaded on SIGHUP like the HTTP listeners') and its settings
    (handshake_timeout), ``close`` once when the node stops."""

    async def start(
        self,
        sock: socket.socket,
        tls: ContextHolder | None,
        pool: asyncpg.Pool | None,
        listener: ListenerSettings,
    ) -> None: ...

    async def close(self) -> None: ...


# name -> factory building that service's application (or stream service) from the settings and
# the process's resources (pool, metrics), so its background jobs start with the node.
ServiceFactories = Mapping[str, Callable[[Settings, Resources], web.Application | StreamService]]


def sd_notify(message: str) -> None:
    """Tell systemd about our state when run as ``Type=notify`` (no-op otherwise)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


@dataclass
class Node:
    """The listeners one process serves."""

    runners: list[web.AppRunner] = field(default_factory=list)
    holders: list[ContextHolder] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    # Stream services by service name, shared by the listeners that name them.
    streams: dict[str, StreamService] = field(default_factory=dict)
    # The connection guard of each listener (HTTP ones; the directory keeps its own).
    guards: dict[str, ConnectionGuard] = field(default_factory=dict)
    # Revoked client certificates, for the listeners that ask for them (core/revocation.py).
    revocations: RevocationWatcher | None = None
    # Background work of a node whose listeners are all stream services (no HTTP application
    # whose cleanup_ctx could run it): the ticket key check.
    background: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def reload_tls(self) -> bool:
        """Reload every listener's certificates; False if any kept its old ones."""
        results = [holder.reload() for holder in self.holders]
        return all(results)

    async def stop(self) -> None:
        for stream in reversed(list(self.streams.values())):
            await stream.close()
        self.streams.clear()
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()
        if self.revocations is not None:
            watcher, self.revocations = self.revocations, None
            await watcher.close()
        await self.background.aclose()


def check_tls(listeners: Mapping[str, ListenerSettings]) -> None:
    """Load every listener's certificates once, so a bad file stops ``serve`` with one line
    before any worker starts (TlsConfigError names the file)."""
    for listener in listeners.values():
        files = tls_files(listener)
        if files is not None:
            build_server_context(files)


def build_holders(listeners: Mapping[str, ListenerSettings]) -> dict[str, ContextHolder]:
    """Every TLS listener's context holder, each with a new session-ticket key of its own (see
    the module docstring); built once per node, before any worker starts.

    One key per listener, never one for all: Python gives every context the same session id
    context, and OpenSSL does not verify a client certificate again when a session resumes, so
    a ticket from a listener that trusts one CA (or asks for no certificate) must not resume on
    a listener that trusts another."""
    files = {name: tls_files(listener) for name, listener in listeners.items()}
    present = {name: item for name, item in files.items() if item is not None}
    keys = node_ticket_keys(next(iter(present.values()), None))
    return {
        name: ContextHolder(item, keys.another() if keys is not None else None)
        for name, item in present.items()
    }


def tls_files(listener: ListenerSettings) -> TlsFiles | None:
    if not listener.tls:
        return None
    assert listener.certificate is not None
    assert listener.key is not None
    return TlsFiles(
        listener.certificate,
        listener.key,
        listener.client_ca,
        listener.request_client_certificate,
    )


async def start_node(
    settings: Settings,
    pool: asyncpg.Pool | None,
    listeners: Mapping[str, ListenerSettings],
    factories: ServiceFactories,
    sockets: Mapping[str, socket.socket] | None = None,
    holders: Mapping[str, ContextHolder] | None = None,
) -> Node:
    """Build and start one application per listener. ``sockets`` are pre-bound ones to use,
    ``holders`` the TLS contexts to use (from ``build_holders``; built here when missing)."""
    if holders is None:
        holders = build_holders(listeners)
    node = Node()
    metrics = Metrics()
    resources = Resources(pool, metrics)
    collector_started = False
    # The shared ticket keys (core/ticketstore.py): checked by the first HTTP application.
    key_watcher = TicketKeyWatcher(holders, settings.tls)
    key_job = key_watcher.job(pool) if key_watcher.active and pool is not None else None
    ca_certificate = settings.ca.paths(settings.data_dir)[0]
    if await asyncio.to_thread(ca_certificate.is_file):
        metrics.add_certificate("ca", "root", ca_certificate)
    try:
        asking = any(item.tls and item.request_client_certificate for item in listeners.values())
        if asking and pool is not None:
            node.revocations = RevocationWatcher(Revocations())
            await node.revocations.start(pool)
        for name, listener in listeners.items():
            if _stream_service(listener) is not None:
                await _start_stream(
                    node, settings, resources, name, listener, factories, sockets, holders
                )
                continue
            services: dict[str, web.Application] = {}
            for service in listener.services:
                built = factories[service](settings, resources)
                if not isinstance(built, web.Application):
                    raise ConfigError(
                        f"listeners.{name}.services: {service!r} is not an HTTP service"
                    )
                services[service] = built
            serve_metrics = "admin" in listener.services
            app = create_listener_app(
                settings.limits, services, metrics=metrics, serve_metrics=serve_metrics
            )
            if serve_metrics and not collector_started:
                # One collector per process; the workers of a node elect one (metrics.py).
                collector_started = True
                job = node_collector(metrics, pool, settings.admin.metrics_interval)
                app.cleanup_ctx.append(job.context)
            if key_job is not None:
                app.cleanup_ctx.append(key_job.context)
                key_job = None
            if pool is not None:
                app.cleanup_ctx.append(pool_ctx(pool))
            runner = web.AppRunner(
                app,
                access_log_class=AccessLogger,
                access_log=logging.getLogger("pbxfront.access")
                if settings.logging.access_log
                else None,
                shutdown_timeout=settings.limits.shutdown_timeout,
                handle_signals=False,
            )
            try:
                await runner.setup()
            except BaseException:
                # aiohttp leaves a root whose start failed as it is: undo what did start (the
                # services mounted before the failing one, their listening connections...).
                await app.cleanup()
                raise
            node.runners.append(runner)
            holder = holders.get(name)
            if holder is not None:
                node.holders.append(holder)
                metrics.add_certificate("server", name, holder.files.certificate)
                for anchor in holder.files.client_ca:
                    # The first certificate of a trust-anchor bundle (e.g. the demo CA).
                    metrics.add_certificate("ca", anchor.name, anchor)
            sock = (sockets or {}).get(name) or bind_socket(
                listener.host, listener.port, reuse_port=False
            )
            guard = ConnectionGuard(
                name,
                max_connections=settings.limits.max_connections,
                max_per_address=settings.limits.max_connections_per_address,
            )
            node.guards[name] = guard
            site = GuardedSite(
                runner,
                sock,
                holder,
                handshake_timeout=listener.handshake_timeout,
                header_timeout=settings.limits.header_timeout,
                guard=guard,
                revocations=node.revocations.revocations
                if node.revocations is not None and listener.request_client_certificate
                else None,
                observer=TlsCounters(metrics, name),
            )
            await site.start()
            node.addresses[name] = site.name
        if key_job is not None:
            # Only stream listeners: the same cleanup_ctx, run by the node itself.
            job_context = contextlib.asynccontextmanager(key_job.context)
            await node.background.enter_async_context(job_context(web.Application()))
    except BaseException:
        await node.stop()
        raise
    return node


def _stream_service(listener: ListenerSettings) -> str | None:
    return next((service for service in listener.services if service in STREAM_SCHEMES), None)


def listener_url(listener: ListenerSettings, host: str, port: int) -> str:
    """``https://127.0.0.1:8443``, or a stream service's own scheme (``ldaps://…``)."""
    stream = _stream_service(listener)
    if stream is None:
        return ("https" if listener.tls else "http") + f"://{host}:{port}"
    plain, secure = STREAM_SCHEMES[stream]
    if ":" in host:
        host = f"[{host}]"
    return f"{secure if listener.tls else plain}://{host}:{port}"


async def _start_stream(
    node: Node,
    settings: Settings,
    resources: Resources,
    name: str,
    listener: ListenerSettings,
    factories: ServiceFactories,
    sockets: Mapping[str, socket.socket] | None,
    holders: Mapping[str, ContextHolder],
) -> None:
    """Hand a listener's socket to its stream service (config validation keeps it alone there)."""
    service_name = _stream_service(listener)
    assert service_name is not None
    if len(listener.services) != 1:
        raise ConfigError(
            f"listeners.{name}.services: {service_name!r} cannot share a listener "
            "with other services"
        )
    service = node.streams.get(service_name)
    if service is None:
        built = factories[service_name](settings, resources)
        if not isinstance(built, StreamService) or isinstance(built, web.Application):
            raise ConfigError(f"listeners.{name}.services: {service_name!r} is not a stream")
        service = built
        node.streams[service_name] = service
    holder = holders.get(name)
    if holder is not None:
        node.holders.append(holder)
    sock = (sockets or {}).get(name) or bind_socket(listener.host, listener.port, reuse_port=False)
    host, port = sock.getsockname()[:2]
    await service.start(sock, holder, resources.pool, listener)
    node.addresses[name] = listener_url(listener, host, port)


def write_ready_file(
    path: Path, addresses: Mapping[str, str], listeners: Mapping[str, ListenerSettings]
) -> None:
    """Where each listener ended up (port 0 resolved), for scripts and tests."""
    data = {
        name: {"url": url, "services": list(listeners[name].services)}
        for name, url in addresses.items()
    }
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)


async def serve_forever(
    settings: Settings,
    listeners: Mapping[str, ListenerSettings],
    factories: ServiceFactories,
    dsn: str,
    sockets: Mapping[str, socket.socket] | None,
    on_ready: Callable[[Node], None],
    holders: Mapping[str, ContextHolder] | None = None,
) -> None:
    """One process's life: pool, listeners, wait for a signal, graceful stop."""
    from services.core.db import create_pool

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    node_holder: list[Node] = []
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def reload_tls() -> None:
        for node in node_holder:
            node.reload_tls()

    loop.add_signal_handler(signal.SIGHUP, reload_tls)
    pool = await create_pool(dsn, settings.database)
    deadline: float | None = None
    try:
        node = await start_node(settings, pool, listeners, factories, sockets, holders)
        node_holder.append(node)
        on_ready(node)
        await stop.wait()
        log.info("stopping: no new connections, finishing requests in flight")
        deadline = loop.time() + settings.limits.shutdown_timeout
        await stop_node(node, deadline)
    finally:
        if deadline is None:
            deadline = loop.time() + settings.limits.shutdown_timeout
        await close_pool(pool, deadline)


async def stop_node(node: Node, deadline: float) -> None:
    """``node.stop()``, cut off at ``deadline`` (loop time): requests in flight and background
    work that outlive ``limits.shutdown_timeout`` are cancelled, never waited for."""
    try:
        async with asyncio.timeout_at(deadline):
            await node.stop()
    except TimeoutError:
        log.warning("stopping: limits.shutdown_timeout reached; cancelling what is left")


async def close_pool(pool: asyncpg.Pool, deadline: float) -> None:
    """Close the pool gracefully until ``deadline``, then terminate its connections: a pool whose
    server went away (or whose connections are stuck in a query) must not hold up the exit."""
    remaining = max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        async with asyncio.timeout(remaining):
            await pool.close()
    except TimeoutError:
        log.warning("stopping: database pool did not close in time; terminating its connections")
        pool.terminate()


def run_node(
    settings: Settings,
    listeners: Mapping[str, ListenerSettings],
    factories: ServiceFactories,
    dsn: str,
    *,
    workers: int,
    ready_file: Path | None,
    announce: Callable[[Mapping[str, str]], None],
) -> int:
    """Blocking: serve until SIGTERM/SIGINT. Returns the exit status."""
    import uvloop

    holders = build_holders(listeners)
    # Before any worker forks: every one starts with the keys the cluster shares.
    asyncio.run(
        adopt_shared_keys(dsn, holders, settings.tls, 2 * settings.database.connect_timeout + 10)
    )
    if workers <= 1:

        def ready(node: Node) -> None:
            if ready_file is not None:
                write_ready_file(ready_file, node.addresses, listeners)
            announce(node.addresses)
            sd_notify("READY=1")

        uvloop.run(serve_forever(settings, listeners, factories, dsn, None, ready, holders))
        sd_notify("STOPPING=1")
        return 0
    return _run_workers(settings, listeners, factories, dsn, workers, ready_file, announce, holders)


def _run_workers(
    settings: Settings,
    listeners: Mapping[str, ListenerSettings],
    factories: ServiceFactories,
    dsn: str,
    workers: int,
    ready_file: Path | None,
    announce: Callable[[Mapping[str, str]], None],
    holders: Mapping[str, ContextHolder],
) -> int:
    import uvloop

    # Reserve each address (resolving port 0) with a bound, never-listening socket; workers bind
    # their own SO_REUSEPORT sockets to the same address.
    reserved: dict[str, socket.socket] = {}
    resolved: dict[str, ListenerSettings] = {}
    for name, listener in listeners.items():
        sock = bind_socket(listener.host, listener.port, reuse_port=True)
        reserved[name] = sock
        _host, port = sock.getsockname()[:2]
        resolved[name] = dataclasses.replace(listener, port=port)

    # One metrics directory per node, emptied now: /metrics adds up every worker's files.
    enable_multiprocess(settings.admin.metrics_dir or settings.data_dir / "metrics")
    ready_read, ready_write = os.pipe()

    def spawn() -> int:
        pid = os.fork()
        if pid:
            return pid
        # Worker: own sockets, own loop, own pool.
        code = 0
        try:
            os.close(ready_read)
            for sock in reserved.values():
                sock.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            sockets = {
                name: bind_socket(item.host, item.port, reuse_port=True)
                for name, item in resolved.items()
            }

            def ready(node: Node) -> None:
                os.write(ready_write, b"r")

            # The master's contexts, and with them its session-ticket key (module docstring).
            uvloop.run(serve_forever(settings, resolved, factories, dsn, sockets, ready, holders))
        except BaseException:
            log.exception("worker %d failed", os.getpid())
            code = 1
        finally:
            os._exit(code)

    children = {spawn() for _ in range(workers)}
    ready_count = 0
    deadline = time.monotonic() + 60
    while ready_count < workers:
        readable, _, _ = select.select([ready_read], [], [], 0.2)
        if readable:
            ready_count += len(os.read(ready_read, workers - ready_count))
            continue
        pid, _status = os.waitpid(-1, os.WNOHANG)
        if pid or time.monotonic() > deadline:
            # A worker that dies before it is ready will not do better on a restart.
            log.error("a worker failed to start (%d of %d ready); stopping", ready_count, workers)
            children.discard(pid)
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            for child in children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child, 0)
            for sock in reserved.values():
                sock.close()
            return 1
    addresses = {name: listener_url(item, item.host, item.port) for name, item in resolved.items()}
    if ready_file is not None:
        write_ready_file(ready_file, addresses, resolved)
    announce(addresses)
    sd_notify("READY=1")

    stopping = False
    # When the workers told to stop are killed: each has limits.shutdown_timeout, plus a moment
    # to exit.
    kill_at = float("inf")

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping, kill_at
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not stopping:
                kill_at = time.monotonic() + settings.limits.shutdown_timeout + 1.0
            stopping = True
            sd_notify("STOPPING=1")
        if signum == signal.SIGHUP:
            # Workers started after this (a restart) must not come up with the old certificates.
            for holder in holders.values():
                holder.reload()
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    status = 0
    while children:
        # Polled rather than a blocking wait(), so the kill deadline is kept however the
        # workers behave.
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if time.monotonic() > kill_at:
                log.error("workers still running after limits.shutdown_timeout; killing them")
                for child in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                kill_at = float("inf")
            time.sleep(0.05)
            continue
        children.discard(pid)
        process_exited(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            continue
        log.error("worker %d exited with %d; starting a new one", pid, code)
        status = 1
        time.sleep(1.0)
        children.add(spawn())
    for sock in reserved.values():
        sock.close()
    os.close(ready_read)
    os.close(ready_write)
    return 0 if stopping else status


def configure_logging(level: str) -> None:
    from services.core.http import RequestIdFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
