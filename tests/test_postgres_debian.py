"""Production with Debian's PostgreSQL: a throwaway cluster of the distribution's own server
(package ``postgresql``) with password (SCRAM) logins on loopback TCP, reached by a DSN from
``database.url_file`` as a production node would be: ``db migrate``, ``inventory apply``,
``serve`` and a device poll, and ``db backup`` / ``db restore`` (also of an embedded database's
backup into this one, the move from a trial install to production).

PostgreSQL refuses to run as root (CI runs as root): the cluster then runs as the ``postgres``
user (runuser) in a directory it owns."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import DEVICE_A, SessionPki, free_port

ROOT = Path(__file__).resolve().parent.parent
PBXFRONT = [sys.executable, "-m", "services.cli"]
INVENTORY = ROOT / "config" / "inventory.example.toml"


def debian_postgres_bin() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with initdb: skip locally when the package is
    missing, fail in CI (.ci/run installs it)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    message = "Debian PostgreSQL not installed (apt-get install postgresql)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run installs it, so CI must have it")
    pytest.skip(message)


@dataclass(frozen=True)
class DebianPostgres:
    bin: Path
    directory: Path
    port: int
    password: str

    def dsn(self, database: str) -> str:
        return f"postgresql://pbxfront:{self.password}@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="module")
def debian_postgres() -> Iterator[DebianPostgres]:
    """A fresh cluster for this module: initdb with a SCRAM password for role ``pbxfront``,
    pg_ctl start on a loopback port, stopped and removed afterwards."""
    bin_dir = debian_postgres_bin()
    # Outside pytest's 0700 temp root: the postgres user must reach it.
    directory = Path(tempfile.mkdtemp(prefix="pbxfront-debian-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_urlsafe(18)
    password_file = directory / "password"
    password_file.write_text(password)
    if as_user:
        os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)

    def postgres_command(*command: str) -> None:
        result = subprocess.run(
            [*as_user, *command], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"{command[0]}: {result.stdout}{result.stderr}"

    data = directory / "data"
    postgres_command(
        str(bin_dir / "initdb"),
        "--pgdata",
        str(data),
        "--username",
        "pbxfront",
        f"--pwfile={password_file}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--no-sync",
    )
    password_file.unlink()
    port = free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={directory} "
        "-c fsync=off"
    )
    postgres_command(
        str(bin_dir / "pg_ctl"),
        "--pgdata",
        str(data),
        "--log",
        str(directory / "log"),
        "--wait",
        "--timeout=60",
        "-o",
        options,
        "start",
    )
    server = DebianPostgres(bin_dir, directory, port, password)
    try:
        yield server
    finally:
        postgres_command(
            str(bin_dir / "pg_ctl"), "--pgdata", str(data), "--mode=fast", "--wait", "stop"
        )
        shutil.rmtree(directory, ignore_errors=True)


async def _admin(server: DebianPostgres, sql: str) -> None:
    connection = await asyncpg.connect(server.dsn("postgres"))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture
def production(
    debian_postgres: DebianPostgres, tmp_path: Path, session_pki: SessionPki
) -> Iterator[tuple[list[str], str]]:
    """A fresh database on the Debian server and the settings of a node using it by DSN (in
    database.url_file, as production keeps its password): (--config arguments, DSN)."""
    name = f"pbxfront_{secrets.token_hex(6)}"
    asyncio.run(_admin(debian_postgres, f"CREATE DATABASE {name}"))
    dsn = debian_postgres.dsn(name)
    url_file = tmp_path / "database-url"
    url_file.write_text(dsn + "\n")
    url_file.chmod(0o600)
    config = tmp_path / "pbxfront.toml"
    config.write_text(
        f"""
data_dir = "{tmp_path / "var"}"
frontend = "sb1"

[database]
url_file = "{url_file}"

[update]
scripts_dir = "{ROOT / "staging_scripts"}"

[listeners.devices]
host = "127.0.0.1"
port = 0
services = ["backup", "update", "contacts", "events"]
tls = true
certificate = "{session_pki.server_certificate}"
key = "{session_pki.server_key}"
request_client_certificate = true
client_ca = ["{session_pki.ca}"]
"""
    )
    yield ["--config", str(config)], dsn
    asyncio.run(_admin(debian_postgres, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def pbxfront(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PBXFRONT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


async def fetchval(dsn: str, sql: str) -> object:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


def test_migrate_inventory_serve_and_a_device_poll(
    production: tuple[list[str], str], tmp_path: Path, session_pki: SessionPki
) -> None:
    config, dsn = production
    migrated = pbxfront("db", "migrate", *config)
    assert migrated.returncode == 0, migrated.stderr
    assert "pending" not in migrated.stdout
    assert "001_inventory: applied" in migrated.stdout
    applied = pbxfront("inventory", "apply", str(INVENTORY), *config)
    assert applied.returncode == 0, applied.stderr
    # Nothing embedded was started: the node used the Debian server only.
    assert not (tmp_path / "var" / "postgres").exists()

    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [*PBXFRONT, "serve", *config, "--workers", "1", "--ready-file", str(ready)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"serve did not become ready:\n{process.communicate()[0]}")
            time.sleep(0.1)
        url = json.loads(ready.read_text())["devices"]["url"] + "/DRIVE/CF0/update/update.txt"
        certificate, key = session_pki.devices[DEVICE_A]
        polled = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--fail-with-body", "--cacert",
             str(session_pki.ca), "--cert", str(certificate), "--key", str(key), url],
            capture_output=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert polled.returncode == 0, polled.stderr
        body = polled.stdout.decode()
        assert f"for {DEVICE_A} (009033010203), customer Kuenkel00001, identity proven" in body
        # A backup while serve runs; a restore is refused, naming serve's sessions.
        backup = tmp_path / "live.dump"
        saved = pbxfront("db", "backup", str(backup), *config)
        assert saved.returncode == 0, saved.stderr
        refused = pbxfront("db", "restore", str(backup), *config)
        assert refused.returncode == 2
        assert "other session(s): pid " in refused.stderr
        assert "(pbxfront, pbxfront, from 127.0.0.1)" in refused.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    # The poll was recorded in the Debian server's database.
    proof = asyncio.run(fetchval(dsn, "SELECT proof FROM device_status WHERE mac = '009033010203'"))
    assert proof == "proven"


CUSTOMER_NAME = "SELECT name FROM customers WHERE id = 'Kuenkel00001'"


def test_backup_change_restore(production: tuple[list[str], str], tmp_path: Path) -> None:
    config, dsn = production
    assert pbxfront("inventory", "apply", str(INVENTORY), *config).returncode == 0
    original = asyncio.run(fetchval(dsn, CUSTOMER_NAME))
    assert isinstance(original, str)
    backup = tmp_path / "pbxfront.dump"
    saved = pbxfront("db", "backup", str(backup), *config)
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.startswith(f"wrote {backup} (")

    asyncio.run(fetchval(dsn, "UPDATE customers SET name = 'changed' RETURNING 1"))
    asyncio.run(fetchval(dsn, "DELETE FROM devices WHERE mac = '009033010203' RETURNING 1"))
    restored = pbxfront("db", "restore", str(backup), *config)
    assert restored.returncode == 0, restored.stderr
    assert asyncio.run(fetchval(dsn, CUSTOMER_NAME)) == original
    assert asyncio.run(fetchval(dsn, "SELECT count(*) FROM devices WHERE mac = '009033010203'"))
    status = pbxfront("db", "status", *config)
    assert status.returncode == 0, status.stdout

    # A damaged backup changes nothing. Cut in half, its table of contents is incomplete and it
    # is refused before the database is touched; missing only its last bytes (the end of the
    # table data), pg_restore fails part-way and its one transaction rolls back.
    asyncio.run(fetchval(dsn, "UPDATE customers SET name = 'kept' RETURNING 1"))
    whole = backup.read_bytes()
    halved, cut = tmp_path / "halved.dump", tmp_path / "cut.dump"
    halved.write_bytes(whole[: len(whole) // 2])
    cut.write_bytes(whole[:-200])
    failed = pbxfront("db", "restore", str(halved), *config)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"pbxfront: db restore: {halved}: not a readable backup: ")
    failed = pbxfront("db", "restore", str(cut), *config)
    assert failed.returncode == 2
    assert failed.stderr.startswith(
        "pbxfront: db restore: pg_restore failed, the database is unchanged: "
    ), failed.stderr
    assert asyncio.run(fetchval(dsn, CUSTOMER_NAME)) == "kept"


def test_restore_refuses_a_database_in_use(
    production: tuple[list[str], str], tmp_path: Path
) -> None:
    config, dsn = production
    assert pbxfront("db", "migrate", *config).returncode == 0
    backup = tmp_path / "pbxfront.dump"
    assert pbxfront("db", "backup", str(backup), *config).returncode == 0

    async def hold_and_restore(*extra: str) -> subprocess.CompletedProcess[str]:
        # Another session (as a running serve keeps) is connected meanwhile.
        connection = await asyncpg.connect(dsn, server_settings={"application_name": "a-node"})
        try:
            return await asyncio.to_thread(pbxfront, "db", "restore", str(backup), *config, *extra)
        finally:
            await connection.close()

    refused = asyncio.run(hold_and_restore())
    assert refused.returncode == 2
    assert "in use by 1 other session(s)" in refused.stderr
    assert "a-node" in refused.stderr
    assert "stop 'pbxfront serve' on every node first (or give --force)" in refused.stderr
    forced = asyncio.run(hold_and_restore("--force"))
    assert forced.returncode == 0, forced.stderr


def test_an_embedded_backup_restores_into_debian_postgres(
    production: tuple[list[str], str], tmp_path: Path
) -> None:
    """From a trial install on the embedded PostgreSQL to production: back up there, restore
    here (objects become the production role's)."""
    config, dsn = production
    embedded = ["--set", f'data_dir="{tmp_path / "trial"}"']
    assert pbxfront("inventory", "apply", str(INVENTORY), *embedded).returncode == 0
    backup = tmp_path / "trial.dump"
    saved = pbxfront("db", "backup", str(backup), *embedded)
    assert saved.returncode == 0, saved.stderr
    restored = pbxfront("db", "restore", str(backup), *config)
    assert restored.returncode == 0, restored.stderr
    count = asyncio.run(fetchval(dsn, "SELECT count(*) FROM devices"))
    assert isinstance(count, int)
    assert count > 0
    assert (
        asyncio.run(fetchval(dsn, "SELECT tableowner FROM pg_tables WHERE tablename = 'devices'"))
        == "pbxfront"
    )
    status = pbxfront("db", "status", *config)
    assert status.returncode == 0, status.stdout


def test_the_password_goes_to_pg_dump_by_environment_not_argv() -> None:
    from services.core.db.dump import _libpq_target

    target, environment = _libpq_target("postgresql://pbxfront:s%40cret@db.internal:5433/pbx")
    assert target == "postgresql://pbxfront@db.internal:5433/pbx"
    assert environment == {"PGPASSWORD": "s@cret"}
    target, environment = _libpq_target("postgresql:///pbx?host=/run/pg&password=x&sslmode=require")
    assert target == "postgresql:///pbx?host=%2Frun%2Fpg&sslmode=require"
    assert environment == {"PGPASSWORD": "x"}
    # The embedded server's DSN has an empty password: nothing to pass.
    assert _libpq_target("postgresql://postgres:@/postgres?host=/tmp/s") == (
        "postgresql://postgres@/postgres?host=%2Ftmp%2Fs",
        {},
    )
