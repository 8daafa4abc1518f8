"""The commands a new user runs, as subprocesses: the demo, inventory apply, accounts, db status,
scripts check, systemd notification, workers, graceful stop. Each run uses its own data dir and
OS-chosen ports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
PBXFRONT = [sys.executable, "-m", "services.cli"]
DEMO = ROOT / "config" / "demo.toml"


def zero_ports(data_dir: Path) -> list[str]:
    return [
        "--config",
        str(DEMO),
        "--set",
        f'data_dir="{data_dir}"',
        "--set",
        "listeners.devices.port=0",
        "--set",
        "listeners.devices_claimed.port=0",
        "--set",
        "listeners.admin.port=0",
        "--set",
        "listeners.redirect.port=0",
        "--set",
        "listeners.directory.port=0",
        "--set",
        "listeners.directory_tls.port=0",
    ]


def run(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PBXFRONT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=stdin,
        check=False,
    )


@dataclass
class Served:
    process: subprocess.Popen[str]
    urls: dict[str, str]
    data_dir: Path
    args: list[str]
    # What serve printed; a file, not a pipe nobody reads while it runs (a full pipe would
    # block the node's logging mid-test).
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def ca(self) -> Path:
        return self.data_dir / "pki" / "ca.pem"

    def device(self, name: str) -> list[str]:
        directory = self.data_dir / "pki" / "devices"
        return ["--cert", str(directory / f"{name}.pem"), "--key", str(directory / f"{name}.key")]


def start(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    ready = data_dir.parent / f"{data_dir.name}-ready.json"
    log = data_dir.parent / f"{data_dir.name}-serve.log"
    args = zero_ports(data_dir)
    with log.open("w") as output:
        process = subprocess.Popen(
            [*PBXFRONT, "serve", *args, "--ready-file", str(ready), *extra],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + 90
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"serve did not become ready:\n{log.read_text()}")
        time.sleep(0.1)
    urls = {name: item["url"] for name, item in json.loads(ready.read_text()).items()}
    return Served(process, urls, data_dir, args, log)


def stop(served: Served) -> str:
    served.process.send_signal(signal.SIGTERM)
    served.process.wait(timeout=30)
    output = served.output()
    assert served.process.returncode == 0, output
    return output


def curl(*args: str) -> tuple[int, str]:
    # Bytes, not text mode: text mode would turn the scripts' CRLF into LF.
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        timeout=30,
        check=False,
    )
    body, _, code = result.stdout.decode().rpartition("\n")
    return int(code or 0), body


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start(tmp_path_factory.mktemp("demo") / "var")
    yield served
    stop(served)


def test_demo_serves_healthz_and_prints_try_it(demo: Served) -> None:
    status, body = curl("--cacert", str(demo.ca), demo.urls["admin"] + "/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "database": "ok"}


def test_demo_device_walkthrough(demo: Served) -> None:
    url = demo.urls["devices"] + "/DRIVE/CF0/update/update.txt"
    status, body = curl("--cacert", str(demo.ca), *demo.device("IP232-01-02-03"), url)
    assert status == 200
    check = next(line for line in body.split("\r\n") if line.startswith("mod cmd UP1 check ser"))
    status, body = curl(
        "--cacert",
        str(demo.ca),
        *demo.device("IP232-01-02-03"),
        url + "?CHECK=" + check.split()[-1],
    )
    assert status == 200
    commands = [line for line in body.split("\r\n") if line and not line.startswith("#")]
    assert len(commands) == 1
    assert commands[0].startswith("mod cmd UP0 scfg ")  # sent on every poll, PHPUS-style


def test_inventory_apply_twice_says_no_changes(demo: Served) -> None:
    first = run("inventory", "apply", "config/inventory.example.toml", *demo.args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "no changes"  # the demo applied it at start
    exported = run("inventory", "export", *demo.args)
    assert exported.returncode == 0
    assert 'id = "Kuenkel00001"' in exported.stdout
    assert "change-me-registration" in exported.stdout  # export is a full backup of the inventory


def test_inventory_errors_change_nothing(demo: Served, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    text = (ROOT / "config" / "inventory.example.toml").read_text()
    broken.write_text(text.replace('mac = "009033010205"', 'mac = "00-90-33-01-02-03"'))
    result = run("inventory", "apply", str(broken), *demo.args)
    assert result.returncode == 2
    assert "broken.toml: devices[" in result.stderr
    assert "duplicate" in result.stderr
    again = run("inventory", "apply", "config/inventory.example.toml", "--dry-run", *demo.args)
    assert again.stdout.strip() == "no changes"


def test_accounts_and_admin_roles(demo: Served, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("a long admin password\n")
    added = run(
        "accounts",
        "add",
        "ops",
        "--role",
        "operator",
        "--password-file",
        str(password_file),
        *demo.args,
    )
    assert added.returncode == 0, added.stderr
    sender = run(
        "accounts",
        "add",
        "cpe",
        "--role",
        "event-sender",
        *demo.args,
        env={"PBXFRONT_ACCOUNT_PASSWORD": "a long sender password"},
    )
    assert sender.returncode == 0, sender.stderr
    # Bound to a customer, the sender may write for that customer's devices only.
    unknown = run("accounts", "bind", "cpe", "--customer", "Nobody", *demo.args)
    assert unknown.returncode == 2
    assert "no customer Nobody in the inventory" in unknown.stderr
    neither = run("accounts", "bind", "cpe", *demo.args)
    assert neither.returncode == 2
    bound = run("accounts", "bind", "cpe", "--customer", "Kuenkel00001", *demo.args)
    assert bound.returncode == 0, bound.stderr
    assert "cpe may write events and backups for: Kuenkel00001" in bound.stdout
    device = demo.urls["devices_claimed"] + "/events?sn=009033010203"
    status, _ = curl(
        "--cacert", str(demo.ca), "-u", "cpe:a long sender password", "-d", "text=hi", device
    )
    assert status == 201
    unbound = run("accounts", "unbind", "cpe", *demo.args)
    assert "removed 1 binding(s); account cpe: unbound" in unbound.stdout
    # Bindings are cached per process for a few seconds (deviceauth.SCOPE_TTL).
    deadline = time.monotonic() + 15
    while True:
        status, body = curl(
            "--cacert", str(demo.ca), "-u", "cpe:a long sender password", "-d", "text=hi", device
        )
        if status != 201 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 403
    assert "bound to no customer" in body
    weak = run("accounts", "add", "weak", "--role", "admin", *demo.args, stdin="short\n")
    assert weak.returncode == 2
    assert "at least 12 characters" in weak.stderr
    listing = run("accounts", "list", *demo.args)
    assert "ops\toperator" in listing.stdout
    admin = demo.urls["admin"] + "/api/v1/devices"
    assert curl("--cacert", str(demo.ca), admin)[0] == 401
    assert curl("--cacert", str(demo.ca), "-u", "cpe:a long sender password", admin)[0] == 403
    status, body = curl("--cacert", str(demo.ca), "-u", "ops:a long admin password", admin)
    assert status == 200
    assert len(json.loads(body)["devices"]) == 4


def test_db_status_and_scripts_check(demo: Served) -> None:
    status = run("db", "status", *demo.args)
    assert status.returncode == 0
    assert "001_inventory: applied" in status.stdout
    check = run("scripts", "check", *demo.args)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("ok:")
    render = run(
        "scripts",
        "render",
        "--device",
        "00:90:33:01:02:03",
        "--explain",
        "--phase",
        "staging",
        *demo.args,
    )
    assert render.returncode == 0, render.stderr
    assert "h-rasport = 1819    <- device_class phone" in render.stdout
    assert "config add H323 /ras-port 1819" in render.stdout


def test_bad_config_and_unreachable_database_say_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[database]\npool_max_size = 'x'\n")
    result = run("db", "status", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "pbxfront: database.pool_max_size: must be an integer, not 'x'"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run(
        "db", "status", "--set", f'database.url="postgresql://nobody:secret@127.0.0.1:{port}/none"'
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pbxfront: database postgresql://nobody:***@127.0.0.1:")
    assert "secret" not in result.stderr


def test_unreadable_certificate_is_named(tmp_path: Path) -> None:
    config = tmp_path / "pbxfront.toml"
    config.write_text(
        f'data_dir = "{tmp_path}/var"\n[listeners.admin]\nport = 0\nservices = ["admin"]\n'
        f'certificate = "{tmp_path}/missing.pem"\nkey = "{tmp_path}/missing.key"\n'
    )
    result = run("serve", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("missing.pem: no such file"), result.stderr


def test_systemd_notify_workers_and_graceful_stop(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify))
    receiver.settimeout(60)
    try:
        served = start(tmp_path / "var", "--workers", "2", env={"NOTIFY_SOCKET": str(notify)})
        assert receiver.recv(100) == b"READY=1"
        workers = [
            child
            for child in psutil.Process(served.process.pid).children()
            if "python" in child.name()
        ]
        assert len(workers) == 2
        for _ in range(20):
            status, _body = curl("--cacert", str(served.ca), served.urls["admin"] + "/healthz")
            assert status == 200
        served.process.send_signal(signal.SIGTERM)
        assert receiver.recv(100) == b"STOPPING=1"
        served.process.wait(timeout=30)
        assert served.process.returncode == 0, served.output()
        assert not any(worker.is_running() for worker in workers)
    finally:
        receiver.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "pbxfront.service").read_text()
    # verify checks that ExecStart exists; point it at this checkout's console script.
    copy = tmp_path / "pbxfront.service"
    copy.write_text(unit.replace("/opt/pbxfront/bin/pbxfront", shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for line in (
        "Type=notify",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "StateDirectory=pbxfront",
    ):
        assert line in unit


async def test_cli_runs_next_to_serve_on_the_same_embedded_database(demo: Served) -> None:
    """`serve` and a CLI command share the embedded PostgreSQL: what the CLI writes, serve sees."""
    process = await asyncio.create_subprocess_exec(
        *PBXFRONT,
        "devices",
        "restage",
        "009033010204",
        *demo.args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 0, err
    status, body = curl(
        "--cacert",
        str(demo.ca),
        *demo.device("IP222-01-02-04"),
        demo.urls["devices"] + "/DRIVE/CF0/update/update.txt",
    )
    assert status == 200
    assert "restaging requested by an operator" in body
