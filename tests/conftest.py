"""Shared fixtures: one real embedded PostgreSQL per test session, a fresh database per test."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.core import db, pki
from services.core.commands import Bind, Handler, Work
from services.core.config import DatabaseSettings, ListenerSettings, Settings
from services.core.errors import UsageError
from services.core.runner import Node, start_node

TEMPLATE_DATABASE = "pbxfront_template"


def dsn_for_database(dsn: str, database: str) -> str:
    """The same server, another database (works for socket and TCP DSNs)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on uvloop, as `pbxfront serve` does."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def postgres_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL (pgserver) for the whole session, with a migrated template database."""
    embedded = db.EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    dsn = embedded.start()

    async def prepare() -> None:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DATABASE}")
            await admin.execute(f"CREATE DATABASE {TEMPLATE_DATABASE}")
        finally:
            await admin.close()
        template = await asyncpg.connect(dsn_for_database(dsn, TEMPLATE_DATABASE))
        try:
            await db.migrate(template)
        finally:
            await template.close()

    asyncio.run(prepare())
    yield dsn
    embedded.stop()


@pytest.fixture
async def database_url(postgres_server_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DATABASE}")
    finally:
        await admin.close()
    yield dsn_for_database(postgres_server_dsn, name)
    admin = await asyncpg.connect(postgres_server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, DatabaseSettings(pool_min_size=1, pool_max_size=5))
    yield pool
    await pool.close()


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, interval: float = 0.02
) -> None:
    """Wait for an effect that happens later; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def until_blocking(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """:func:`until` for tests driving processes from blocking code; ``what`` names the effect."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


async def curl_with_headers(*args: str) -> tuple[int, bytes, str]:
    """Run the real curl: (status, body, response headers)."""
    handle, headers_path = tempfile.mkstemp(prefix="pbxfront-curl-")
    os.close(handle)
    try:
        process = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-o",
            "-",
            "-D",
            headers_path,
            "-w",
            "\n%{http_code}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        headers = await asyncio.to_thread(Path(headers_path).read_text, errors="replace")
    finally:
        await asyncio.to_thread(os.unlink, headers_path)
    body, _, code = out.rpartition(b"\n")
    assert code, err.decode()
    return int(code), body, headers


async def curl(*args: str) -> tuple[int, bytes]:
    """Run the real curl: (status, body)."""
    status, body, _ = await curl_with_headers(*args)
    return status, body


def service_cli(
    register: Callable[[Any, argparse.ArgumentParser, Bind], None],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., Awaitable[tuple[int, str]]]:
    """A service's commands as ``pbxfront`` would run them against the test database:
    ``await run("backups", "list")`` gives (exit code, standard output)."""

    def bind(work: Work) -> Handler:
        def handler(args: argparse.Namespace) -> int:
            async def run() -> int:
                pool = await db.create_pool(database_url, DatabaseSettings(pool_max_size=2))
                try:
                    return await work(args, Settings(), pool)
                finally:
                    await pool.close()

            return asyncio.run(run())

        return handler

    common = argparse.ArgumentParser(add_help=False)
    parser = argparse.ArgumentParser(prog="pbxfront")
    register(parser.add_subparsers(dest="command", required=True), common, bind)

    async def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(argv)
        code: int = await asyncio.to_thread(args.handler, args)
        return code, capsys.readouterr().out

    return run


def run_wired_cli(
    register: Callable[[Any, argparse.ArgumentParser, Bind], None], database_url: str, *argv: str
) -> int:
    """A service's commands wired as ``services/cli.py`` wires them (settings from ``--set``,
    the database, errors as one line), in-process on the test database; the exit code."""
    from services import cli as pbxfront_cli

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", action="append")
    common.add_argument("--set", action="append")
    parser = argparse.ArgumentParser(prog="pbxfront")
    register(parser.add_subparsers(dest="command", required=True), common, pbxfront_cli._bind)
    args = parser.parse_args([*argv, "--set", f"database.url={json.dumps(database_url)}"])
    try:
        status: int = args.handler(args)
    except UsageError as error:
        print(f"pbxfront: {error}")
        return 2
    return status


REGENERATE_GOLDEN = "PBXFRONT_REGENERATE_GOLDEN"


def assert_golden(path: Path, actual: str) -> None:
    """``actual`` must equal the golden file ``path`` (compared as text, UTF-8). With
    PBXFRONT_REGENERATE_GOLDEN=1 in the environment the file is rewritten first: review the
    change with git diff. The one golden-file switch of the suite."""
    if os.environ.get(REGENERATE_GOLDEN) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: run with {REGENERATE_GOLDEN}=1 and review"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path} differs ({REGENERATE_GOLDEN}=1 rewrites it); now:\n{actual}"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port the OS considers free now, for peers (rsyslogd, slapd) that cannot be
    told to take port 0 and report it."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def peer_program(name: str, package: str) -> str:
    """Path of a distribution program a test uses as a real peer (rsyslogd, slapd, ldapsearch).

    Missing locally, the test skips and says which package to install; in CI (``CI`` set, as
    ``.ci/run`` does) a missing peer is a failure, never a silent skip.
    """
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is not None:
        return found
    message = f"{name} not installed (apt-get install {package})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run installs it, so CI must have it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# --- certificates ------------------------------------------------------------------------------

DEVICE_A = "IP232-01-02-03"
DEVICE_B = "IP222-0a-0b-0c"
# In config/inventory.example.toml (DEVICE_A is too; DEVICE_B is not).
DEVICE_C = "IP222-01-02-04"


@dataclasses.dataclass(frozen=True)
class SessionPki:
    """The session's certificates: a demo CA with server and device certificates, plus a device
    certificate from a foreign CA and an expired one from the right CA."""

    ca: Path
    server_certificate: Path
    server_key: Path
    devices: dict[str, tuple[Path, Path]]
    foreign_device: tuple[Path, Path]
    expired_device: tuple[Path, Path]


def expired_certificate(ca: pki.IssuedCertificate, common_name: str) -> pki.IssuedCertificate:
    """A client certificate from ``ca`` that expired yesterday (pki refuses to make one)."""
    key = pki.generate_key("rsa", 2048)
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=60))
        .not_valid_after(now - timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return pki.IssuedCertificate(certificate, key)


@pytest.fixture(scope="session")
def session_pki(tmp_path_factory: pytest.TempPathFactory) -> SessionPki:
    directory = tmp_path_factory.mktemp("pki")
    demo = pki.ensure_demo_pki(
        directory / "demo",
        organization="pbxfront test",
        country="DE",
        server_names=["127.0.0.1", "localhost", "::1"],
        device_common_names=[DEVICE_A, DEVICE_B, DEVICE_C],
    )
    foreign_ca = pki.create_root_ca(country="DE", organization="Someone Else", key_bits=2048)
    foreign = pki.issue_certificate(foreign_ca, common_name=DEVICE_A, server=False)
    foreign_paths = (directory / "foreign.pem", directory / "foreign.key")
    pki.write_pem_files(foreign, *foreign_paths)
    ca = pki.load_issued(demo.ca_certificate, demo.ca_key)
    expired = expired_certificate(ca, DEVICE_A)
    expired_paths = (directory / "expired.pem", directory / "expired.key")
    pki.write_pem_files(expired, *expired_paths)
    return SessionPki(
        demo.ca_certificate,
        demo.server_certificate,
        demo.server_key,
        demo.device_certificates,
        foreign_paths,
        expired_paths,
    )


def tls_listener(
    pki: SessionPki, *services: str, client_certificates: bool = False, **changes: Any
) -> ListenerSettings:
    """A TLS listener on an OS-chosen loopback port with the session's server certificate for
    ``services``; ``client_certificates`` asks for (and verifies against the RootCA) a device
    certificate, as the device listeners of a Frontend do."""
    listener = ListenerSettings(
        port=0,
        services=services,
        tls=True,
        certificate=pki.server_certificate,
        key=pki.server_key,
        **changes,
    )
    if client_certificates:
        return dataclasses.replace(listener, request_client_certificate=True, client_ca=(pki.ca,))
    return listener


async def start_services(
    settings: Settings,
    pool: asyncpg.Pool,
    listeners: Mapping[str, ListenerSettings],
    sockets: Mapping[str, socket.socket] | None = None,
) -> Node:
    """A node composed exactly as `pbxfront serve` composes it: every service from
    ``serve.service_factories()``, on ``listeners``. The one harness the service tests share,
    so what they exercise is what ships."""
    from services.serve import service_factories

    return await start_node(settings, pool, listeners, service_factories(), sockets=sockets)


@contextlib.asynccontextmanager
async def admin_listener(
    pool: asyncpg.Pool, pki: SessionPki, settings: Settings | None = None
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """A node with the admin listener as serve.py composes it (real TLS), and a client that
    verifies it: (base URL, session)."""
    import ssl

    node = await start_services(settings or Settings(), pool, {"admin": tls_listener(pki, "admin")})
    context = ssl.create_default_context(cafile=str(pki.ca))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            yield node.addresses["admin"], session
    finally:
        await node.stop()
