"""The bench's Frontend: a real ``pbxfront serve`` and nginx on loopback, set up for a scenario.

Everything runs in one work directory (``<data_dir>/bench``): its own embedded PostgreSQL, a
synthetic inventory, a bench CA with RSA 4096 (the seed's size) and RSA 2048 server
certificates, and one client certificate per simulated device (CN = its hardware id). The
devices share one RSA 2048 key so that 10,000 certificates are made in seconds, not hours; the
server's work per handshake (verifying the chain and the client's signature) is the same as with
distinct keys. Certificates are cached between runs.

Baselines are measured in the same run: nginx (from the distribution) serving the same bytes as
static files with the same certificates and client-certificate settings and as many worker
processes as pbxfront, and pbxfront's own no-op endpoint (same middleware, no storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil

from services.bench.load import Call, LoadSpec, Target
from services.core import pki
from services.core.identity import DeviceIdentity, Proof
from services.core.inventory import Customer, Device, Frontend, Inventory, Variable

PUBLIC_URL = "https://frontend.bench.invalid"


@dataclass(frozen=True)
class BenchOptions:
    work_dir: Path
    scripts_dir: Path
    devices: int = 1000
    duration: float = 10.0
    workers: int = 0  # 0 = one per core
    processes: int = 0  # load generator processes; 0 = one per core
    concurrency: int = 32
    rate: float = 1000.0
    nginx: bool = True
    json_path: Path | None = None
    mappings: int = 1_000_000  # redirect: registered devices
    versions: int = 10_000  # archive: versions per device (of ``devices`` devices)
    contacts: int = 50_000  # contacts: rows of the uploaded export; directory: per customer
    resume: bool = False  # polls: also measure polls that resume their TLS session
    directory_customers: int = 100  # directory: customers with ``contacts`` contacts each

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def process_count(self) -> int:
        return self.processes or os.cpu_count() or 1


# --- certificates and inventory ----------------------------------------------------------------


def device_mac(index: int) -> str:
    return f"0090{(index + 1):08x}"


def device_hardware_id(index: int) -> str:
    mac = device_mac(index)
    return f"IP232-{mac[6:8]}-{mac[8:10]}-{mac[10:12]}"


@dataclass(frozen=True)
class BenchPki:
    ca: Path
    server: dict[int, tuple[Path, Path]]  # key bits -> (certificate, key)
    device_key: Path
    device_certificates: list[Path]


def ensure_bench_pki(directory: Path, devices: int) -> BenchPki:
    """Blocking; reuses what an earlier run made."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_paths = (directory / "ca.pem", directory / "ca.key")
    if all(p.exists() for p in ca_paths):
        ca = pki.load_issued(*ca_paths)
    else:
        ca = pki.create_root_ca(country="DE", organization="pbxfront bench", key_bits=2048)
        pki.write_pem_files(ca, *ca_paths)
    server: dict[int, tuple[Path, Path]] = {}
    for bits in (4096, 2048):
        paths = (directory / f"server-{bits}.pem", directory / f"server-{bits}.key")
        if not all(p.exists() for p in paths):
            issued = pki.issue_certificate(
                ca,
                common_name="127.0.0.1",
                ip_addresses=["127.0.0.1"],
                dns_names=["localhost"],
                key_bits=bits,
                client=False,
            )
            pki.write_pem_files(issued, *paths)
        server[bits] = paths
    device_key_path = directory / "device.key"
    if device_key_path.exists():
        device_key = pki.load_key(device_key_path)
    else:
        device_key = pki.generate_key("rsa", 2048)
        first = pki.issue_certificate(ca, common_name="key-holder", key=device_key, server=False)
        pki.write_pem_files(first, directory / "key-holder.pem", device_key_path)
    certificates: list[Path] = []
    device_dir = directory / "devices"
    device_dir.mkdir(exist_ok=True)
    for index in range(devices):
        name = device_hardware_id(index)
        path = device_dir / f"{name}.pem"
        if not path.exists():
            issued = pki.issue_certificate(ca, common_name=name, key=device_key, server=False)
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(issued.certificate_pem())
            os.replace(temporary, path)
        certificates.append(path)
    return BenchPki(ca_paths[0], server, device_key_path, certificates)


def bench_inventory(devices: int) -> Inventory:
    """``devices`` IP232 phones spread over customers of 100 devices each, on Frontend sb1."""
    customers = max(1, (devices + 99) // 100)
    return Inventory(
        frontends=(Frontend("sb1", "192.0.2.10", "10.0.0.10", 1),),
        customers=tuple(
            Customer(
                id=f"Bench{c:05d}",
                frontend="sb1",
                name=f"Bench customer {c}",
                system_name=f"bench{c}.example",
                country_code="49",
                area_code="7031",
                registration_password="bench-registration",  # noqa: S106 - synthetic data
            )
            for c in range(customers)
        ),
        devices=tuple(
            Device(
                mac=device_mac(i),
                device_type="IP232",
                device_class="phone",
                customer=f"Bench{i // 100:05d}",
                cpe_id=f"Bench{i // 100:05d}-{i % 100:03d}",
            )
            for i in range(devices)
        ),
        variables=BENCH_VARIABLES,
    )


# The seed's update variables for the bench Frontend sb1 (the scripts render with them).
BENCH_VARIABLES = (
    Variable("global", "", "h-domain", "hoster.tld"),
    Variable("global", "", "h-kerberos1ip", "10.0.0.2"),
    Variable("global", "", "h-kerberos2ip", "10.0.0.3"),
    Variable("global", "", "h-poll", "15"),
    Variable("frontend", "sb1", "h-ntp", "192.0.2.10"),
    Variable("frontend", "sb1", "h-sbcextip", "192.0.2.10"),
    Variable("frontend", "sb1", "h-sbcindex", "1"),
    Variable("device_class", "phone", "h-rasport", "1819"),
)


# --- the environment ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


def ensure_nginx(log: Any) -> str | None:
    """nginx from the distribution; installed with apt-get when missing and we are root."""
    found = find_nginx()
    if found is not None:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("nginx is not installed; installing it with apt-get (Debian package nginx) ...")
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=environment)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
            check=False,
            env=environment,
        )
        return find_nginx()
    log("nginx is not installed: `apt-get install nginx` (as root) to measure the baseline")
    return None


@dataclass
class Environment:
    options: BenchOptions
    certificates: BenchPki
    dsn: str
    serve: subprocess.Popen[bytes]
    pbxfront: dict[int, Target]  # server key bits -> listener
    nginx: subprocess.Popen[bytes] | None = None
    nginx_targets: dict[int, Target] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # MAC -> update.txt hash
    urls: dict[str, str] = field(default_factory=dict)  # listener name -> its URL
    serve_config: Path | None = None
    nginx_command: list[str] = field(default_factory=list)

    def restart_pbxfront(self) -> None:
        """Stop ``pbxfront serve`` and start it again on the same ports (a new process: new
        TLS contexts, with the session-ticket keys kept in PostgreSQL)."""
        assert self.serve_config is not None
        _stop_process(self.serve, signal.SIGTERM, 30)
        ports = [
            f"--set=listeners.rsa{bits}.port={target.port}"
            for bits, target in self.pbxfront.items()
        ]
        self.serve, _urls = _start_serve(self.options, self.serve_config, ports)

    def restart_nginx(self) -> None:
        """Stop nginx and start it again (it reads its ticket key file again)."""
        assert self.nginx is not None
        _stop_process(self.nginx, signal.SIGQUIT, 10)
        self.nginx = subprocess.Popen(
            self.nginx_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for target in self.nginx_targets.values():
            _wait_for_port(target.port)

    def target(self, listener: str) -> Target:
        """A listener of the scenario's own (``environment(listeners=...)``)."""
        url = self.urls[listener]
        tls = url.startswith("https://")
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        return Target(host, int(port), tls, self.certificates.ca if tls else None)

    def server_processes(self, which: str) -> list[psutil.Process]:
        process = self.serve if which == "pbxfront" else self.nginx
        if process is None:
            return []
        root = psutil.Process(process.pid)
        return [root, *root.children(recursive=True)]


def _write_serve_config(
    options: BenchOptions, certificates: BenchPki, dsn: str, extra: str = ""
) -> Path:
    def listener(bits: int) -> str:
        certificate, key = certificates.server[bits]
        return (
            f'[listeners.rsa{bits}]\nhost = "127.0.0.1"\nport = 0\n'
            f'services = ["backup", "update", "noop"]\ntls = true\n'
            f'certificate = "{certificate}"\nkey = "{key}"\n'
            f'request_client_certificate = true\nclient_ca = ["{certificates.ca}"]\n\n'
        )

    config = options.work_dir / "serve.toml"
    config.write_text(
        f'data_dir = "{options.work_dir}"\nworkers = {options.worker_count}\n\n'
        f'[database]\nurl = "{dsn}"\npool_max_size = 20\n\n'
        f'[logging]\nlevel = "WARNING"\naccess_log = false\n\n'
        f'[update]\nscripts_dir = "{options.scripts_dir}"\n'
        f'firmware_dir = "{options.work_dir / "firmware"}"\npublic_url = "{PUBLIC_URL}"\n\n'
        + listener(4096)
        + listener(2048)
        + extra
    )
    return config


def _nginx_config(options: BenchOptions, certificates: BenchPki, ports: dict[int, int]) -> Path:
    directory = options.work_dir / "nginx"
    directory.mkdir(exist_ok=True)
    # nginx's shared session-ticket key (80 bytes), so its sessions resume across a restart.
    ticket_key = directory / "ticket.key"
    if not ticket_key.exists():
        descriptor = os.open(ticket_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(secrets.token_bytes(80))
    servers = ""
    for bits, port in ports.items():
        certificate, key = certificates.server[bits]
        servers += f"""
    server {{
        listen 127.0.0.1:{port} ssl reuseport;
        ssl_certificate {certificate};
        ssl_certificate_key {key};
        ssl_client_certificate {certificates.ca};
        ssl_verify_client optional;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_ticket_key {ticket_key};
        root {directory / "static"};
        location / {{ }}
    }}
"""
    user = "user root;\n" if os.geteuid() == 0 else ""
    config = directory / "nginx.conf"
    config.write_text(
        f"{user}worker_processes {options.worker_count};\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} warn;\ndaemon off;\n"
        "events { worker_connections 8192; }\n"
        "http {\n    access_log off;\n    default_type text/plain;\n"
        "    keepalive_requests 1000000;\n    keepalive_timeout 15;\n"
        f"    client_body_temp_path {directory / 'tmp'};\n"
        f"    proxy_temp_path {directory / 'tmp'};\n    fastcgi_temp_path {directory / 'tmp'};\n"
        f"    uwsgi_temp_path {directory / 'tmp'};\n    scgi_temp_path {directory / 'tmp'};\n"
        + servers
        + "}\n"
    )
    (directory / "tmp").mkdir(exist_ok=True)
    return config


# A scenario's own data, loaded after the inventory and before the server starts.
Prepare = Callable[[asyncpg.Connection], Awaitable[None]]


async def _prepare_database(dsn: str, devices: int, prepare: Prepare | None) -> None:
    from services.core.config import DatabaseSettings
    from services.core.db import create_pool, migrate
    from services.core.inventory import apply_inventory

    pool = await create_pool(dsn, DatabaseSettings(command_timeout=1800))
    try:
        async with pool.acquire() as connection:
            await migrate(connection)
            await apply_inventory(connection, bench_inventory(devices))
            if prepare is not None:
                await prepare(connection)
    finally:
        await pool.close()


async def _update_hashes(dsn: str, scripts_dir: Path) -> dict[str, str]:
    """Each device's update.txt hash, computed by the same pipeline the server runs."""
    from services.core.config import DatabaseSettings
    from services.core.db import create_pool
    from services.update.provisioning import (
        UPDATE,
        Lifecycle,
        PollArguments,
        Urls,
        look_up,
        reply_for,
    )
    from services.update.scripts import ScriptStore
    from services.update.state import SnapshotCache

    store = ScriptStore(scripts_dir)
    await asyncio.to_thread(store.refresh)
    pool = await create_pool(dsn, DatabaseSettings())
    try:
        async with pool.acquire() as connection:
            snapshot = await SnapshotCache().get(connection)
    finally:
        await pool.close()
    hashes: dict[str, str] = {}
    for device in snapshot.inventory.devices:
        identity = DeviceIdentity(Proof.PROVEN, device.mac, device.hardware_id, device.device_type)
        reply = reply_for(
            store,
            look_up(
                snapshot, device, identity, PollArguments(), UPDATE, Urls(PUBLIC_URL), Lifecycle()
            ),
            lambda build, name: False,
        )
        assert reply.hash_sent is not None
        hashes[device.mac] = reply.hash_sent
    return hashes


@contextlib.contextmanager
def environment(
    options: BenchOptions,
    log: Any,
    *,
    listeners: str = "",
    prepare: Prepare | None = None,
) -> Iterator[Environment]:
    """The bench's Frontend: ``listeners`` (TOML) are opened besides the two device listeners,
    ``prepare`` loads scenario data; their addresses end up in ``Environment.urls``."""
    from services.core.db import EmbeddedPostgres

    options.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    certificates = ensure_bench_pki(options.work_dir / "pki", options.devices)
    log(f"certificates ready for {options.devices} devices ({time.monotonic() - started:.1f} s)")
    embedded = EmbeddedPostgres(options.work_dir)
    dsn = embedded.start()
    serve: subprocess.Popen[bytes] | None = None
    nginx: subprocess.Popen[bytes] | None = None
    env: Environment | None = None
    try:
        started = time.monotonic()
        asyncio.run(_prepare_database(dsn, options.devices, prepare))
        log(f"database ready ({time.monotonic() - started:.1f} s)")
        hashes = asyncio.run(_update_hashes(dsn, options.scripts_dir))
        config = _write_serve_config(options, certificates, dsn, listeners)
        (options.work_dir / "serve.log").unlink(missing_ok=True)
        serve, urls = _start_serve(options, config)
        targets = {}
        for bits in (4096, 2048):
            host, port = urls[f"rsa{bits}"]["url"].removeprefix("https://").rsplit(":", 1)
            targets[bits] = Target(host, int(port), True, certificates.ca)
        env = Environment(
            options,
            certificates,
            dsn,
            serve,
            targets,
            hashes=hashes,
            urls={name: entry["url"] for name, entry in urls.items()},
            serve_config=config,
        )
        if options.nginx:
            binary = ensure_nginx(log)
            if binary is not None:
                ports = {4096: free_port(), 2048: free_port()}
                nginx_config = _nginx_config(options, certificates, ports)
                env.nginx_command = [
                    binary,
                    "-c",
                    str(nginx_config),
                    "-p",
                    str(nginx_config.parent),
                ]
                nginx = subprocess.Popen(
                    env.nginx_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                env.nginx = nginx
                env.nginx_targets = {
                    bits: Target("127.0.0.1", port, True, certificates.ca)
                    for bits, port in ports.items()
                }
                _wait_for_port(ports[2048])
        yield env
    finally:
        # The processes running now (a restart replaced the first ones).
        if env is not None:
            nginx, serve = env.nginx, env.serve
        if nginx is not None:
            _stop_process(nginx, signal.SIGQUIT, 10)
        if serve is not None:
            _stop_process(serve, signal.SIGTERM, 30)
        embedded.stop()


def _stop_process(process: subprocess.Popen[bytes], signum: int, timeout: float) -> None:
    process.send_signal(signum)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    if process.poll() is None:
        process.kill()
        process.wait()


def _start_serve(
    options: BenchOptions, config: Path, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Blocking: ``pbxfront serve`` with ``config`` (and ``extra`` arguments), once it is ready;
    its stderr goes to <work_dir>/serve.log."""
    ready = options.work_dir / "serve-ready.json"
    ready.unlink(missing_ok=True)
    with open(options.work_dir / "serve.log", "ab") as log_file:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "serve",
                "--config",
                str(config),
                "--ready-file",
                str(ready),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if serve.poll() is not None or time.monotonic() > deadline:
            _stop_process(serve, signal.SIGTERM, 10)
            raise RuntimeError(f"pbxfront serve did not start; see {options.work_dir}/serve.log")
        time.sleep(0.1)
    urls: dict[str, Any] = json.loads(ready.read_text())
    return serve, urls


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on 127.0.0.1:{port}")


def device_load(
    env: Environment,
    target: Target,
    calls: list[Call],
    *,
    keepalive: bool = False,
    rate: float | None = None,
    resume: bool = False,
) -> LoadSpec:
    """Simulated devices with their certificates for the scenario's duration: a new TLS
    connection per call (resuming the device's session with ``resume``) or, with
    ``keepalive``, one kept-alive connection each; flat out or at a fixed ``rate``."""
    options = env.options
    return LoadSpec(
        target,
        calls,
        key=env.certificates.device_key,
        duration=options.duration,
        processes=options.process_count,
        concurrency=options.concurrency,
        keepalive=keepalive,
        rate=rate,
        resume=resume,
    )


def server_files(options: BenchOptions) -> tuple[Path, Path]:
    """The bench's RSA 2048 server certificate (made by ``ensure_bench_pki``)."""
    directory = options.work_dir / "pki"
    return directory / "server-2048.pem", directory / "server-2048.key"


def listener(
    name: str, services: Sequence[str], options: BenchOptions | None = None, extra: str = ""
) -> str:
    """A scenario's own listener (TOML) on a port the OS chooses: plain, or with ``options``
    over TLS with the bench's RSA 2048 server certificate; ``extra`` lines go at its end."""
    names = ", ".join(f'"{service}"' for service in services)
    toml = f'[listeners.{name}]\nhost = "127.0.0.1"\nport = 0\nservices = [{names}]\n'
    if options is None:
        toml += "tls = false\n"
    else:
        certificate, key = server_files(options)
        toml += f'tls = true\ncertificate = "{certificate}"\nkey = "{key}"\n'
    return toml + extra + "\n"


async def add_operator(connection: asyncpg.Connection, name: str, password: str) -> None:
    """An operator account ``name`` with ``password`` (replacing an earlier run's, whose
    password the bench no longer knows)."""
    from services.core.auth import AccountRepository, Role

    accounts = AccountRepository(connection)
    await accounts.remove(name)
    await accounts.add(name, frozenset({Role.OPERATOR}), password)


Result = TypeVar("Result")


def with_connection(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[Result]]) -> Result:
    """Blocking: ``work`` on one connection to the bench's database (scenario checks)."""

    async def run() -> Result:
        connection = await asyncpg.connect(dsn)
        try:
            return await work(connection)
        finally:
            await connection.close()

    return asyncio.run(run())
