"""The update service end to end: a simulated device with a real client certificate, curl, real
PostgreSQL; convergence, firmware, staging, secrets, hostile input, concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.core.config import ListenerSettings, Settings, UpdateSettings
from services.core.inventory import InventoryRepository, apply_inventory, read_inventory_file
from services.core.runner import Node, start_node
from services.core.unknown import REDIRECT as REDIRECT_SERVICE
from services.core.unknown import UPDATE as UPDATE_SERVICE
from services.core.unknown import UnknownDeviceRepository
from services.serve import service_factories
from services.update.firmware import FirmwareStore
from services.update.gauges import DeviceGaugeRepository
from services.update.repository import UpdateRepository
from services.update.scripts import script_hash
from tests.conftest import DEVICE_A, DEVICE_B, DEVICE_C, SessionPki, until
from tests.simulator import SimulatedDevice

MAC_A = "009033010203"
MAC_C = "009033010204"


@dataclass
class Frontend:
    node: Node
    pool: asyncpg.Pool
    scripts: Path
    firmware: Path
    pki: SessionPki

    @property
    def proven_base(self) -> str:
        return self.node.addresses["devices"]

    @property
    def claimed_base(self) -> str:
        return self.node.addresses["claimed"]

    def device(
        self,
        name: str = DEVICE_A,
        *,
        certificate: bool = True,
        script: str = "update.txt",
        mac: str = MAC_A,
        device_type: str = "IP232",
    ) -> SimulatedDevice:
        base = self.proven_base if certificate else self.claimed_base
        return SimulatedDevice(
            mac=mac,
            hardware_id=name,
            device_type=device_type,
            url=f"{base}/DRIVE/CF0/update/{script}?sn=#m&hwid=#h&type=#t&ip=#i",
            ca=self.pki.ca,
            certificate=self.pki.devices[name] if certificate else None,
        )

    async def set_variable(
        self, layer: str, scope: str, name: str, value: str, secret: bool = False
    ) -> None:
        async with self.pool.acquire() as connection:
            await InventoryRepository(connection).set_variable(layer, scope, name, value, secret)


@contextlib.asynccontextmanager
async def running_frontend(
    pool: asyncpg.Pool,
    session_pki: SessionPki,
    repo_root: Path,
    tmp_path: Path,
    **update: Any,
) -> AsyncIterator[Frontend]:
    scripts = tmp_path / "staging_scripts"
    shutil.copytree(repo_root / "staging_scripts", scripts)
    firmware = tmp_path / "firmware"
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    settings = Settings(
        update=UpdateSettings(
            grace_seconds=0,
            scripts_dir=scripts,
            firmware_dir=firmware,
            reload_interval=0.1,
            **update,
        )
    )
    claimed = ListenerSettings(
        port=0,
        services=("update",),
        tls=True,
        certificate=session_pki.server_certificate,
        key=session_pki.server_key,
    )
    listeners = {
        "devices": dataclasses.replace(
            claimed, request_client_certificate=True, client_ca=(session_pki.ca,)
        ),
        "claimed": claimed,
    }
    node = await start_node(settings, pool, listeners, service_factories())
    try:
        yield Frontend(node, pool, scripts, firmware, session_pki)
    finally:
        await node.stop()


@pytest.fixture
async def frontend(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> AsyncIterator[Frontend]:
    async with running_frontend(pool, session_pki, repo_root, tmp_path) as running:
        yield running


async def status_of(
    pool: asyncpg.Pool, mac: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The device's status once ``ready`` says the expected polls were written (status is
    written in batches after the answer)."""
    found: dict[str, Any] = {}

    async def written() -> bool:
        statuses = await UpdateRepository(pool).statuses(mac=mac)
        assert len(statuses) == 1
        found.update(dataclasses.asdict(statuses[0]))
        return ready(found)

    await until(written, timeout=5)
    return found


def polls(count: int) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status["polls"] == count


async def test_convergence_with_the_run_once_guard(frontend: Frontend) -> None:
    device = frontend.device()
    first = await device.poll()
    assert first.status == 200, first.text
    assert "config change NTP0" not in first.text  # staging content is not in update.txt
    assert first.commands[-3:] == [
        "config activate",
        f"mod cmd UP1 check ser {device.check}",
        "iresetn",
    ]
    lines = first.text.split("\r\n")
    # The hash covers the script body (its comments included): after the backup line that goes
    # out on every poll, up to pbxfront's end marker.
    scfg = next(i for i, line in enumerate(lines) if line.startswith("mod cmd UP0 scfg"))
    body = lines[scfg + 1 : lines.index("# end of script")]
    assert device.check == script_hash("\n".join(body))
    assert "config add UP1 /poll 15" in first.commands
    status = await status_of(frontend.pool, MAC_A, polls(1))
    assert status["proof"] == "proven"
    assert status["hash_sent"] == device.check
    assert status["in_sync"] is False

    second = await device.poll()
    assert second.status == 200
    assert second.changes == []
    assert f"nothing to do: CHECK {device.check} is current" in second.text
    status = await status_of(frontend.pool, MAC_A, polls(2))
    assert status["in_sync"] is True
    assert status["polls"] == 2

    # A variable change reaches the device exactly once.
    old_check = device.check
    await frontend.set_variable("device", MAC_A, "h-poll", "7")
    third = await device.poll()
    assert "config add UP1 /poll 7" in third.commands
    assert device.check != old_check
    fourth = await device.poll()
    assert fourth.changes == []
    assert device.poll_minutes == 7


async def test_firmware_policy_brings_prot_lines_once(frontend: Frontend, tmp_path: Path) -> None:
    image = tmp_path / "ip232.bin"
    image.write_bytes(os.urandom(4096))
    store = FirmwareStore(frontend.firmware)
    await asyncio.to_thread(store.add, image, "131500", "ip232.bin")
    await frontend.set_variable("device_type", "IP232", "fw-prot", "131500")

    device = frontend.device()

    async def fresh_policy() -> bool:
        result = await device.poll()
        return any("prot" in line for line in result.commands) or device.prot == "131500"

    await until(fresh_policy, timeout=5)  # the store index refreshes in the background
    assert device.prot == "131500"
    assert device.firmware_fetched[-1][1] == 200
    assert device.firmware_fetched[-1][0].endswith("/DRIVE/CF0/update/firm/131500/ip232.bin")
    after = await device.poll()
    assert not any(line.startswith("mod cmd UP0 prot") for line in after.changes)
    assert device.check  # the script itself followed the firmware
    last = await device.poll()
    assert last.changes == []


async def test_firmware_missing_from_store_does_not_block_the_script_and_is_logged(
    frontend: Frontend, caplog: pytest.LogCaptureFixture
) -> None:
    await frontend.set_variable("device", MAC_A, "fw-prot", "999999")
    with caplog.at_level(logging.ERROR):
        result = await frontend.device().poll()
    assert result.status == 200
    assert "not in the firmware store" in result.text
    assert not any(c.startswith("mod cmd UP0 prot") for c in result.commands)
    assert any(c.startswith("mod cmd UP1 check ser") for c in result.commands)
    assert any("firmware/firm/999999/ip232.bin" in r.getMessage() for r in caplog.records)
    status = await status_of(frontend.pool, MAC_A, polls(1))
    assert "999999" in str(status["last_error"])


async def test_staging_then_update(frontend: Frontend) -> None:
    device = frontend.device(script="staging.txt")
    staged = await device.poll()
    assert staged.status == 200
    assert "config change NTP0 /server 192.0.2.10" in staged.commands
    assert "config add H323 /ras-port 1819" in staged.commands
    assert "kerberos1i.hoster.tld" in staged.text
    assert not any("UP1 check" in line for line in staged.commands)  # staging has no guard
    # protocol.md §10: staging turns fast polling on and says so in the update URL.
    assert device.url.endswith(
        "/DRIVE/CF0/update/update.txt?sn=#m&hwid=#h&type=#t&ip=#i&polling=5&staged=1"
    )
    assert "mod cmd UP1 provision 5" in staged.commands
    assert device.poll_minutes == 1
    status = await status_of(frontend.pool, MAC_A, polls(1))
    assert status["phase"] == "staging"
    assert status["staged_at"] is not None
    update = await device.poll()
    assert any(line.startswith("mod cmd UP1 check ser") for line in update.commands)
    # ... and the first update reply turns it off again, whatever the templates contain.
    assert "mod cmd UP1 provision 0" in update.commands
    assert "config rem UP1 /provision" in update.commands
    assert device.url.endswith("/DRIVE/CF0/update/update.txt?sn=#m&hwid=#h&type=#t&ip=#i")
    assert device.poll_minutes == 15
    assert (await status_of(frontend.pool, MAC_A, polls(2)))["phase"] == "update"


async def test_restage(frontend: Frontend) -> None:
    device = frontend.device()
    await device.poll()
    assert await UpdateRepository(frontend.pool).request_restage(MAC_A)
    back = await device.poll()
    assert "/DRIVE/CF0/update/staging.txt" in device.url
    assert back.commands[-1] == "iresetn"
    await device.poll()  # staging
    assert (await status_of(frontend.pool, MAC_A, polls(3)))["restage_requested"] is False


async def test_secrets_only_for_proven_devices(frontend: Frontend) -> None:
    (frontend.scripts / "set-Kuenkel00001.txt").write_text(
        "{% if secrets_allowed %}\n"
        "vars create PHONE/PWD p {{ customer.registration_password }}\n"
        "{% else %}\n# registration needs the device certificate\n{% endif %}\n"
        "config change X /y #(pbx-password)\n"
    )
    proven = frontend.device()

    async def rendered_with_secret() -> bool:
        result = await proven.poll()
        return "vars create PHONE/PWD p change-me-registration" in result.commands

    await until(rendered_with_secret, timeout=5)

    claimed = frontend.device(certificate=False)
    result = await claimed.poll()
    assert result.status == 403
    assert "pbx-password" in result.text
    assert "change-me" not in result.text
    assert all(line.startswith("#") for line in result.text.splitlines())
    # The device has proven itself: URL arguments alone no longer change its status (issue
    # #21): the claimed poll is kept apart.
    status = await status_of(
        frontend.pool, MAC_A, lambda status: status["claimed_seen"] is not None
    )
    assert status["proof"] == "proven"
    assert status["claimed_address"] == "127.0.0.1"

    # A reduced script without secrets is fine for a claimed device.
    (frontend.scripts / "set-Kuenkel00001.txt").write_text(
        "{% if proven %}config change X /y #(pbx-password){% endif %}\n# reduced\n"
    )

    async def reduced() -> bool:
        return (await claimed.poll()).status == 200

    await until(reduced, timeout=5)


async def test_customer_may_allow_claimed_secrets(frontend: Frontend) -> None:
    (frontend.scripts / "set-Kuenkel00001.txt").write_text("config change X /y #(pbx-password)\n")
    async with frontend.pool.acquire() as connection:
        repository = InventoryRepository(connection)
        customer = await repository.get_customer("Kuenkel00001")
        assert customer is not None
        await repository.upsert_customer(dataclasses.replace(customer, allow_claimed_secrets=True))
    claimed = frontend.device(certificate=False)

    async def served() -> bool:
        result = await claimed.poll()
        return "config change X /y change-me-pbx-password" in result.commands

    await until(served, timeout=5)


async def test_unknown_device_is_404_and_recorded(frontend: Frontend) -> None:
    stranger = frontend.device(DEVICE_B, mac="0090330a0b0c", device_type="IP222")
    result = await stranger.poll()
    assert result.status == 404
    assert result.text.startswith("# ")
    unknown = await UnknownDeviceRepository(frontend.pool).sightings(UPDATE_SERVICE)
    assert [(u.mac, u.hardware_id, u.proof) for u in unknown] == [
        ("0090330a0b0c", DEVICE_B, "proven")
    ]


async def test_certificate_of_a_with_sn_of_b_is_403(
    frontend: Frontend, caplog: pytest.LogCaptureFixture
) -> None:
    # The certificate of A, the URL arguments of C.
    device = frontend.device(DEVICE_C, mac=MAC_C, device_type="IP222")
    device.certificate = frontend.pki.devices[DEVICE_A]
    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        result = await device.poll()
    assert result.status == 403
    assert result.text.startswith("# certificate names IP232-01-02-03")
    assert any("identity-conflict" in r.getMessage() for r in caplog.records)


async def test_update_htm_alias_any_case(frontend: Frontend) -> None:
    device = frontend.device(DEVICE_C, mac=MAC_C, device_type="IP222", script="UPDATE-ip222.HTM")
    result = await device.poll()
    assert result.status == 200
    assert any(line.startswith("mod cmd UP1 check ser") for line in result.commands)


async def test_template_error_is_never_sent(
    frontend: Frontend, caplog: pytest.LogCaptureFixture
) -> None:
    (frontend.scripts / "set-Kuenkel00001.txt").write_text(
        "config change A /b 1\nconfig change C /d {{ no_such_thing }}\n"
    )
    device = frontend.device()

    async def failing() -> bool:
        with caplog.at_level(logging.ERROR):
            result = await device.poll()
        return "cannot be rendered" in result.text

    await until(failing, timeout=5)
    result = await device.poll()
    # A 200 of comments: a 5xx would only make the device retry into a loop.
    assert result.status == 200
    assert "config change A" not in result.text
    assert all(line.startswith("#") for line in result.text.splitlines())
    messages = [r.getMessage() for r in caplog.records]
    assert any("set-Kuenkel00001.txt:2" in m and "no_such_thing" in m for m in messages), messages


async def test_concurrent_polls_of_one_device_lose_nothing(frontend: Frontend) -> None:
    device = frontend.device()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=device.ssl_context(), limit=50)
    ) as session:

        async def one() -> int:
            async with session.get(device.poll_url()) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(40)))
    assert statuses == [200] * 40
    status = await status_of(frontend.pool, MAC_A, polls(40))
    assert status["polls"] == 40


@pytest.mark.parametrize(
    "path",
    [
        "/DRIVE/CF0/update/firm/../../../etc/passwd",
        "/DRIVE/CF0/update/firm/%2e%2e/%2e%2e/etc/passwd",
        "/DRIVE/CF0/update/firm/131500/..%2f..%2fsecret.bin",
        "/DRIVE/CF0/update/firm/131500/..%5c..%5csecret.bin",
        "/DRIVE/CF0/update/firm/131500/ip232.bin%00.txt",
        "/DRIVE/CF0/update/firm//etc/passwd",
        "/DRIVE/CF0/update/firm/131500/escape.bin",
        "/DRIVE/CF0/update/firm/131500/SHA256SUMS",
        "/DRIVE/CF0/update/%2e%2e/%2e%2e/etc/passwd",
        "/DRIVE/CF0/update/staging.txt/../../../../etc/passwd",
    ],
)
async def test_firmware_path_traversal(frontend: Frontend, tmp_path: Path, path: str) -> None:
    image = tmp_path / "ip232.bin"
    image.write_bytes(b"firmware")
    await asyncio.to_thread(FirmwareStore(frontend.firmware).add, image, "131500", "ip232.bin")
    secret = frontend.firmware / "secret.bin"
    secret.write_text("do not serve")
    (frontend.firmware / "firm" / "131500" / "escape.bin").symlink_to(secret)
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "--path-as-is",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--cacert",
        str(frontend.pki.ca),
        frontend.claimed_base + path,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    body, _, status = out.decode(errors="replace").rpartition("\n")
    assert status in ("400", "404"), (path, status)
    assert "do not serve" not in body
    assert "root:" not in body


async def test_firmware_download_range_and_etag(frontend: Frontend, tmp_path: Path) -> None:
    image = tmp_path / "boot232.bin"
    content = os.urandom(10000)
    image.write_bytes(content)
    await asyncio.to_thread(FirmwareStore(frontend.firmware).add, image, "140", "boot232.bin")
    url = frontend.claimed_base + "/DRIVE/CF0/update/firm/140/boot232.bin"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=frontend.device(certificate=False).ssl_context())
    ) as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.read() == content
            etag = response.headers["ETag"]
            assert response.headers["Last-Modified"]
        async with session.get(url, headers={"Range": "bytes=100-199"}) as response:
            assert response.status == 206
            assert await response.read() == content[100:200]
        async with session.get(url, headers={"If-None-Match": etag}) as response:
            assert response.status == 304


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("", 400, "cannot tell which device"),
        ("?sn=%ff%fe", 400, "not valid UTF-8"),
        ("?sn=../../etc/passwd", 400, "not a MAC address"),
        ("?sn=009033010203&hwid=IP232-0a-0b-0c", 400, "does not belong"),
        ("?sn=#m&hwid=#h", 400, "cannot tell which device"),
        ("?sn=009033010203&x=" + "a" * 5000, 414, "query string longer"),
    ],
)
async def test_bad_poll_arguments(frontend: Frontend, query: str, status: int, text: str) -> None:
    url = frontend.claimed_base + "/DRIVE/CF0/update/update.txt" + query
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=frontend.device(certificate=False).ssl_context())
        ) as session,
        session.get(url) as response,
    ):
        body = await response.text()
        assert response.status == status, body
    assert text in body
    assert all(line.startswith("#") for line in body.splitlines())


async def test_curl_walkthrough(frontend: Frontend) -> None:
    """The README's walk-through: curl with the device certificate gets the guarded script."""
    certificate, key = frontend.pki.devices[DEVICE_A]
    url = frontend.proven_base + "/DRIVE/CF0/update/update.txt"
    base = [
        "curl",
        "-sS",
        "--cacert",
        str(frontend.pki.ca),
        "--cert",
        str(certificate),
        "--key",
        str(key),
    ]
    process = await asyncio.create_subprocess_exec(*base, url, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    text = out.decode()
    check = next(line for line in text.split("\r\n") if line.startswith("mod cmd UP1 check ser"))
    digest = check.split()[-1]
    process = await asyncio.create_subprocess_exec(
        *base, f"{url}?CHECK={digest}", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    lines = [line for line in out.decode().split("\r\n") if line]
    # Nothing to do: comments, and the backup line that goes out on every poll.
    assert [line for line in lines if not line.startswith("#")] == [
        next(line for line in lines if line.startswith("mod cmd UP0 scfg "))
    ]


async def test_device_backs_up_through_the_scfg_line(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path
) -> None:
    """update + backup on one listener, as a Frontend runs them: the device PUTs its config at
    every poll and a version is kept only when it changed."""
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    listener = ListenerSettings(
        port=0,
        services=("backup", "update"),
        tls=True,
        certificate=session_pki.server_certificate,
        key=session_pki.server_key,
        request_client_certificate=True,
        client_ca=(session_pki.ca,),
    )
    node = await start_node(Settings(), pool, {"devices": listener}, service_factories())
    try:
        device = SimulatedDevice(
            mac=MAC_A,
            hardware_id=DEVICE_A,
            device_type="IP232",
            url=node.addresses["devices"] + "/DRIVE/CF0/update/update.txt?sn=#m&hwid=#h",
            ca=session_pki.ca,
            certificate=session_pki.devices[DEVICE_A],
        )
        await device.poll()
        await device.poll()
        device.config += "config change PHONE /tone 2\r\n"
        await device.poll()
        assert len(device.uploads) == 3
        assert all(200 <= status < 300 for _, status in device.uploads), device.uploads
        versions = await pool.fetchval("SELECT count(*) FROM backup_versions WHERE mac = $1", MAC_A)
        assert versions == 2
    finally:
        await node.stop()


# --- unknown devices and claimed polls (issues #14 item 8, #21 item 3) ------------------------


async def test_unknown_devices_script_reveals_no_customer_and_is_recorded(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> None:
    async with running_frontend(
        pool, session_pki, repo_root, tmp_path, unknown_devices="script"
    ) as frontend:
        (frontend.scripts / "unknown.txt").write_text(
            "# not registered yet: ask the operator to adopt {{ device.hardware_id }}\n"
            "config change NTP0 /server #(h-domain)\n"
        )
        stranger = frontend.device(certificate=False, mac="009033aabbcc", name="IP232-aa-bb-cc")

        async def served() -> bool:
            return "config change NTP0 /server hoster.tld" in (await stranger.poll()).commands

        await until(served, timeout=5)
        result = await stranger.poll()  # its CHECK is current now
        assert result.status == 200
        assert result.commands == []
        assert "Kuenkel" not in result.text
        unknown = await UnknownDeviceRepository(pool).sightings(UPDATE_SERVICE)
        assert [u.mac for u in unknown] == ["009033aabbcc"]


async def test_unknown_lookups_are_rate_limited_and_bounded(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> None:
    async with running_frontend(
        pool,
        session_pki,
        repo_root,
        tmp_path,
        unknown_burst=15,
        unknown_per_second=0.001,
        unknown_max_rows=10,
    ) as frontend:
        statuses = []
        for index in range(20):
            stranger = frontend.device(
                certificate=False, mac=f"0090330c{index:04x}", name=f"IP232-0c-00-{index:02x}"
            )
            statuses.append((await stranger.poll()).status)
        assert statuses == [404] * 15 + [429] * 5
        assert len(await UnknownDeviceRepository(pool).sightings(UPDATE_SERVICE)) == 10
        # The known device from the same address is still served (only misses spend tokens,
        # but a limited address is refused everything on the unknown path only).
        known = await frontend.device().poll()
        assert known.status == 200


async def test_a_claimed_staging_poll_cannot_clear_a_restage(frontend: Frontend) -> None:
    device = frontend.device()
    await device.poll()
    before = await status_of(frontend.pool, MAC_A, polls(1))
    assert await UpdateRepository(frontend.pool).request_restage(MAC_A)
    stranger = frontend.device(certificate=False, script="staging.txt")
    # A stranger claiming the device's MAC, reporting other firmware from another address.
    stranger.prot, stranger.boot, stranger.ip = "999999", "999", "198.51.100.7"
    result = await stranger.poll()
    assert result.status == 200
    assert "Kuenkel00001" not in result.text.splitlines()[0]  # the header names no customer
    status = await status_of(frontend.pool, MAC_A, lambda s: s["claimed_seen"] is not None)
    assert status["restage_requested"] is True
    # What only the proven device may change stays as it left it.
    for field in ("proof", "last_seen", "source_address", "prot", "boot", "phase", "polls"):
        assert status[field] == before[field], field
    assert status["proof"] == "proven"
    back = await device.poll()
    assert "/DRIVE/CF0/update/staging.txt" in device.url
    assert back.status == 200


async def test_scripts_get_the_frontend_plan_as_template_data(frontend: Frontend) -> None:
    # serve.py composes the Frontend plan into the update renderer (issue #19 item 3): the
    # customer's LDAPS port map by the seed's scheme (h-pbxip 10.0.1.1 -> 9001).
    (frontend.scripts / "set-Kuenkel00001.txt").write_text(
        "config change LDAP0 /port {{ nat.ldaps }}\n"
    )
    device = frontend.device()

    async def served() -> bool:
        return "config change LDAP0 /port 9001" in (await device.poll()).commands

    await until(served, timeout=5)


async def test_firmware_add_names_files_as_phpus_and_refuses_models_without_firmware(
    database_url: str, tmp_path: Path
) -> None:
    """`pbxfront firmware add` as an operator runs it: the file name follows PHPUS's rule for
    the type (ipva.bin for IPVA, ip29.bin for IP29-4), a per-model override wins, and a model
    on update.firmware_none is refused unless a name is given."""
    image = tmp_path / "image.bin"
    image.write_bytes(b"\x7fFIRMWARE" * 100)
    store = tmp_path / "firmware"

    async def add(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "firmware",
            "add",
            str(image),
            "--build",
            "135312",
            *args,
            "--set",
            f'update.firmware_dir="{store}"',
            "--set",
            'update.firmware_names=["mypbxa=mypbx.apk"]',
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PBXFRONT_DATABASE__URL": database_url, "PBXFRONT_CONFIG": ""},
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode or 0, out.decode()

    for device_type, expected in (
        ("IPVA", "ipva.bin"),
        ("IP29-4", "ip29.bin"),
        ("myPBXa", "mypbx.apk"),
    ):
        code, out = await add("--type", device_type)
        assert code == 0, out
        assert (store / "firm" / "135312" / expected).read_bytes() == image.read_bytes(), out
    code, out = await add("--type", "SWPHONE")
    assert code == 2
    assert "this model gets no firmware (update.firmware_none)" in out
    assert not list((store / "firm" / "135312").glob("swphone*"))
    code, out = await add("--type", "SWPHONE", "--name", "swphone.bin")
    assert code == 0, out


async def test_the_unknown_devices_gauge_counts_update_sightings_only(frontend: Frontend) -> None:
    async with frontend.pool.acquire() as connection:
        sightings = UnknownDeviceRepository(connection)
        for service, key in ((REDIRECT_SERVICE, "009033aa0001"), (UPDATE_SERVICE, "009033aa0002")):
            await sightings.record(
                service,
                key,
                mac=key,
                hardware_id=None,
                device_type="IP232",
                source_address="127.0.0.1",
                proof="claimed",
                version=None,
            )
        states, _expiry = await DeviceGaugeRepository(connection).states(2700.0)
    # The redirect's sighting is a device not registered with a provider, not one that polled.
    assert states["unknown"] == 1
