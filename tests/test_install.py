"""A real install: the wheel carries what a Frontend needs besides the code, `pbxfront init`
writes a starter set from it, relative paths resolve against a documented base, and the command
line explains itself (--version, --help, help on every argument)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

import asyncpg
import pytest

from services.cli import build_parser
from services.core import db
from services.core.config import ConfigError, load_settings
from tests.conftest import DEVICE_A, SessionPki, peer_program

ROOT = Path(__file__).resolve().parent.parent
PBXFRONT = [sys.executable, "-m", "services.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PBXFRONT, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def build_wheel(directory: Path) -> Path:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(directory), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = directory.glob("pbxfront-*.whl")
    return wheel


def test_the_wheel_ships_scripts_config_unit_and_migrations(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        requires = [
            line
            for line in archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
            .decode()
            .splitlines()
            if line.startswith("Requires-Dist:")
        ]
    share = next(n for n in names if ".data/data/share/pbxfront/" in n).split("share/pbxfront/")[0]
    shipped = {path for path in (ROOT / "staging_scripts").rglob("*") if path.is_file()} | {
        ROOT / "config" / "pbxfront.example.toml",
        ROOT / "config" / "inventory.example.toml",
        ROOT / "systemd" / "pbxfront.service",
        *(ROOT / "config" / "monitoring").iterdir(),
    }
    for path in shipped:
        assert f"{share}share/pbxfront/{path.relative_to(ROOT)}" in names, path
    migrations = sorted((ROOT / "services" / "core" / "migrations").glob("*.sql"))
    for migration in migrations:
        assert f"services/core/migrations/{migration.name}" in names
    assert "services/cli.py" in names
    # Declared only what is imported: aiofiles was never used (files are read in a thread).
    assert not any("aiofiles" in line for line in requires)
    assert any(line.startswith("Requires-Dist: aiohttp") for line in requires)


def test_version_and_help() -> None:
    version = run("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"pbxfront {metadata.version('pbxfront')}"
    helped = run("--help")
    assert helped.returncode == 0
    text = helped.stdout
    assert "``" not in text  # no RST markup
    assert "on the same database as 'pbxfront serve' with those settings." in text
    assert "init" in text
    assert "Passwords and other secrets are never read from the command line." in text


def test_every_argument_has_help() -> None:
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {action.dest}")
            elif action.help:
                assert "``" not in action.help, f"{path} {action.dest}"
                # %(default)s and friends must expand (argparse raises on a bad one).
                parser.format_help()

    walk(build_parser(), "pbxfront")
    assert missing == []


def test_init_writes_a_starter_set_once(tmp_path: Path) -> None:
    etc, var = tmp_path / "etc" / "pbxfront", tmp_path / "var" / "lib" / "pbxfront"
    first = run("init", "--config-dir", str(etc), "--data-dir", str(var))
    assert first.returncode == 0, first.stderr
    for name in ("pbxfront.toml", "pbxfront.example.toml", "inventory.example.toml"):
        assert (etc / name).is_file()
    assert (etc / "pbxfront.service").read_text() == (
        ROOT / "systemd" / "pbxfront.service"
    ).read_text()
    assert (etc / "monitoring" / "alerts.yml").is_file()
    assert (var / "staging_scripts" / "update.txt").read_text() == (
        ROOT / "staging_scripts" / "update.txt"
    ).read_text()
    assert (var / "staging_scripts" / "staging" / "cfg-phone.txt").is_file()
    assert (var / "firmware" / "firm").is_dir()
    # Its settings load, and every relative path lands under the data directory.
    settings = load_settings([etc / "pbxfront.toml"], environ={})
    assert settings.update.scripts_dir == var / "staging_scripts"
    assert settings.update.firmware_dir == var / "firmware"
    assert settings.data_dir == var
    # A second run overwrites nothing.
    (etc / "pbxfront.toml").write_text('frontend = "sb2"\n')
    again = run("init", "--config-dir", str(etc), "--data-dir", str(var))
    assert again.returncode == 0
    assert "wrote" not in again.stdout
    assert f"kept  {etc / 'pbxfront.toml'} (exists)" in again.stdout
    assert (etc / "pbxfront.toml").read_text() == 'frontend = "sb2"\n'


def test_init_where_it_cannot_write_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run("init", "--config-dir", str(blocker / "etc"), "--data-dir", str(tmp_path / "v"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"pbxfront: init: cannot write {blocker / 'etc'}")
    assert "Traceback" not in result.stderr


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    environ = {"PBXFRONT_BASE_DIR": str(tmp_path)}
    settings = load_settings([], environ=environ)
    assert settings.data_dir == tmp_path / "var"
    assert settings.update.scripts_dir == tmp_path / "staging_scripts"
    # Without a base, relative paths stay relative to the working directory (the demo's way).
    assert load_settings([], environ={}).data_dir == Path("var")
    with pytest.raises(ConfigError, match=r"^base_dir: must be an absolute path"):
        load_settings([], environ={"PBXFRONT_BASE_DIR": "relative"})


# --- the built wheel in a fresh venv -----------------------------------------------------------


def test_the_wheel_in_a_fresh_venv_inits_serves_and_answers_a_device(
    tmp_path: Path, session_pki: SessionPki
) -> None:
    """What an operator does on a new Frontend: install the wheel into its own venv (outside any
    checkout; its dependencies from the package index), `pbxfront init`, add listeners with
    the Frontend's certificates, apply the inventory, `serve`; a device with its client
    certificate gets its update script."""
    curl = peer_program("curl", "curl")
    wheel = build_wheel(tmp_path / "wheel")
    venv = tmp_path / "venv"
    # Nothing of the checkout may leak in: no PYTHONPATH, the working directory is elsewhere.
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    site = tmp_path / "site"
    site.mkdir()

    def venv_run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            cwd=site,
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    created = venv_run(sys.executable, "-m", "venv", str(venv))
    assert created.returncode == 0, created.stderr
    installed = venv_run(
        str(venv / "bin" / "pip"),
        "install",
        "-q",
        "--disable-pip-version-check",
        str(wheel),
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    where = venv_run(
        str(venv / "bin" / "python"), "-c", "import services; print(services.__file__)"
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    pbxfront = str(venv / "bin" / "pbxfront")

    etc, var = site / "etc" / "pbxfront", site / "var" / "lib" / "pbxfront"
    initialised = venv_run(pbxfront, "init", "--config-dir", str(etc), "--data-dir", str(var))
    assert initialised.returncode == 0, initialised.stderr
    assert (var / "staging_scripts" / "update.txt").is_file()
    # The starter set has no listeners (ports and certificates are the operator's to choose);
    # this one is the Frontend's device port, on loopback and an OS-chosen port.
    (etc / "listeners.toml").write_text(
        f"""
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
    config = ["--config", str(etc / "pbxfront.toml"), "--config", str(etc / "listeners.toml")]
    applied = venv_run(pbxfront, "inventory", "apply", str(etc / "inventory.example.toml"), *config)
    assert applied.returncode == 0, applied.stderr

    ready = site / "ready.json"
    process = subprocess.Popen(
        [pbxfront, "serve", *config, "--workers", "1", "--ready-file", str(ready)],
        cwd=site,
        env=environ,
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
            [
                curl,
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "--cacert",
                str(session_pki.ca),
                "--cert",
                str(certificate),
                "--key",
                str(key),
                url,
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        body, _, status = polled.stdout.decode().rpartition("\n")
        assert status == "200", (status, body, polled.stderr)
        # The device's own script, rendered from the shipped templates and the inventory.
        assert "mod cmd UP1 check ser" in body
        assert f"for {DEVICE_A} (009033010203), customer Kuenkel00001, identity proven" in body
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output


# --- db backup / restore on the embedded PostgreSQL --------------------------------------------


def test_db_backup_and_restore_on_the_embedded_database(tmp_path: Path) -> None:
    data = ["--set", f'data_dir="{tmp_path / "var"}"']
    # This test holds the embedded server too (pgserver shares it), to look at the data.
    embedded = db.EmbeddedPostgres(tmp_path / "var")
    dsn = embedded.start()

    async def query(sql: str) -> object:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetchval(sql)
        finally:
            await connection.close()

    try:
        applied = run("inventory", "apply", "config/inventory.example.toml", *data)
        assert applied.returncode == 0, applied.stderr
        devices = asyncio.run(query("SELECT count(*) FROM devices"))
        assert isinstance(devices, int)
        assert devices > 0
        backup = tmp_path / "backups" / "pbxfront.dump"
        backup.parent.mkdir()
        saved = run("db", "backup", str(backup), *data)
        assert saved.returncode == 0, saved.stderr
        assert backup.read_bytes().startswith(b"PGDMP")
        assert [p.name for p in backup.parent.iterdir()] == ["pbxfront.dump"]  # no partial left

        asyncio.run(query("DELETE FROM devices RETURNING 1"))
        assert asyncio.run(query("SELECT count(*) FROM devices")) == 0
        restored = run("db", "restore", str(backup), *data)
        assert restored.returncode == 0, restored.stderr
        assert asyncio.run(query("SELECT count(*) FROM devices")) == devices

        missing = run("db", "restore", str(tmp_path / "nope.dump"), *data)
        assert missing.returncode == 2
        assert missing.stderr == (
            f"pbxfront: db restore: {tmp_path / 'nope.dump'}: No such file or directory\n"
        )
        wrong = tmp_path / "inventory.toml"
        wrong.write_text((ROOT / "config" / "inventory.example.toml").read_text())
        refused = run("db", "restore", str(wrong), *data)
        assert refused.returncode == 2
        assert refused.stderr == (
            f"pbxfront: db restore: {wrong}: not a pbxfront database backup (pg_dump custom "
            "format, as 'pbxfront db backup' writes it)\n"
        )
        nowhere = run("db", "backup", str(tmp_path / "no-such-dir" / "x.dump"), *data)
        assert nowhere.returncode == 2
        assert (
            nowhere.stderr
            == f"pbxfront: db backup: {tmp_path / 'no-such-dir'}: no such directory\n"
        )
        assert asyncio.run(query("SELECT count(*) FROM devices")) == devices
    finally:
        embedded.stop()
