"""The device lifecycle end to end (issue #14), with the device model of tests/devicemodel.py
against a real node (redirect, update, backup; real TLS, real PostgreSQL):

factory-new -> redirect -> staging -> update -> firmware upgrade -> script change -> restage ->
PHPUS leftovers, with and without a maintenance window, and many devices at once. Every walk
asserts: the normal poll interval, provision off, the clean update URL, no reply that resets the
device more than once, and convergence within a stated number of polls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from services.core.config import ListenerSettings, RedirectSettings, Settings, UpdateSettings
from services.core.inventory import (
    Device,
    InventoryRepository,
    apply_inventory,
    read_inventory_file,
)
from services.core.metrics import METRICS_KEY
from services.core.runner import Node, start_node
from services.core.tls import bind_socket
from services.redirect.handover import check_mapping
from services.redirect.repository import MappingRepository
from services.serve import service_factories
from services.update.cli import register
from services.update.firmware import FirmwareStore
from services.update.repository import UpdateRepository
from tests.conftest import DEVICE_A, SessionPki, service_cli, until
from tests.devicemodel import DeviceModel

MAC_A = "009033010203"
# The example inventory's h-poll for phones.
INTERVAL = 15
# factory-new: redirect, staging, first update (fast polling off), a poll that changes nothing.
POLLS_TO_CONVERGE = 4


@dataclass
class Frontend:
    node: Node
    pool: asyncpg.Pool
    scripts: Path
    firmware: Path
    pki: SessionPki
    port: int

    @property
    def update_url(self) -> str:
        return (
            f"https://127.0.0.1:{self.port}/DRIVE/CF0/update/update.txt?sn=#m&hwid=#h&type=#t&ip=#i"
        )

    def factory_new(
        self,
        mac: str = MAC_A,
        hardware_id: str = DEVICE_A,
        *,
        certificate: bool = True,
        hour: int | None = None,
    ) -> DeviceModel:
        return DeviceModel(
            mac=mac,
            hardware_id=hardware_id,
            device_type=hardware_id.split("-")[0],
            url=f"{self.node.addresses['redirect']}/redirect.php?sn=#m&hwid=#h",
            ca=self.pki.ca,
            certificate=self.pki.devices[hardware_id] if certificate else None,
            hour=hour,
        )

    async def register(self, mac: str) -> None:
        await MappingRepository(self.pool).register("local", check_mapping(mac, "sb1"), "test")

    async def set_variable(self, layer: str, scope: str, name: str, value: str) -> None:
        await self.set_variables((layer, scope, name, value))

    async def set_variables(self, *variables: tuple[str, str, str, str]) -> None:
        """In one transaction: devices see all of them from the same poll on."""
        async with self.pool.acquire() as connection, connection.transaction():
            repository = InventoryRepository(connection)
            for layer, scope, name, value in variables:
                await repository.set_variable(layer, scope, name, value, False)


@pytest.fixture
async def frontend(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> AsyncIterator[Frontend]:
    scripts = tmp_path / "staging_scripts"
    shutil.copytree(repo_root / "staging_scripts", scripts)
    firmware = tmp_path / "firmware"
    # Two builds in the store from the start (the node lists it when it starts), and a customer
    # script whose change an update variable switches on: a test changes what devices get in
    # one inventory transaction, with no waiting for the folders to be re-read.

    def prepare() -> None:
        for build in ("135312", "135400"):
            source = tmp_path / f"ip232-{build}.bin"
            source.write_bytes(b"\x7fFIRMWARE" + build.encode() * 100)
            FirmwareStore(firmware).add(source, build, "ip232.bin")
        (scripts / "set-Kuenkel00001.txt").write_text(
            '{% if "ntp-override" in vars %}config change NTP0 /server #(ntp-override)\n{% endif %}'
        )

    await asyncio.to_thread(prepare)
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    devices_socket = bind_socket("127.0.0.1", 0, reuse_port=False)
    port = devices_socket.getsockname()[1]
    settings = Settings(
        update=UpdateSettings(
            scripts_dir=scripts, firmware_dir=firmware, reload_interval=0.1, grace_seconds=0
        ),
        redirect=RedirectSettings(
            frontend_url=f"https://127.0.0.1:{port}/DRIVE/CF0/update/staging.txt"
        ),
    )
    listeners = {
        "devices": ListenerSettings(
            port=0,
            services=("update", "backup"),
            tls=True,
            certificate=session_pki.server_certificate,
            key=session_pki.server_key,
            request_client_certificate=True,
            client_ca=(session_pki.ca,),
        ),
        "redirect": ListenerSettings(port=0, services=("redirect",), tls=False),
    }
    node = await start_node(
        settings, pool, listeners, service_factories(), sockets={"devices": devices_socket}
    )
    try:
        yield Frontend(node, pool, scripts, firmware, session_pki, port)
    finally:
        await node.stop()
        devices_socket.close()


async def walk_to_sync(frontend: Frontend, device: DeviceModel, limit: int) -> int:
    """Poll until the device is converged and its poll changes nothing; the number of polls."""
    for count in range(1, limit + 1):
        outcome = await device.poll()
        assert outcome.status < 500, outcome.text
        if device.converged(INTERVAL, frontend.update_url) and outcome.changes == []:
            return count
    raise AssertionError(f"{device.hardware_id} did not converge in {limit} polls: {device}")


async def test_factory_new_to_in_sync_then_firmware_script_change_restage(
    frontend: Frontend,
) -> None:
    await frontend.register(MAC_A)
    device = frontend.factory_new()
    polls = await walk_to_sync(frontend, device, POLLS_TO_CONVERGE + 1)
    assert polls == POLLS_TO_CONVERGE
    assert device.poll_minutes == INTERVAL
    assert device.provision == 0
    assert device.url == frontend.update_url
    assert device.check
    # Every poll's `scfg` line made the device upload its configuration; each was taken.
    assert device.uploads
    assert all(status in (200, 201, 204) for status in device.uploads), device.uploads
    staged_resets = device.resets

    # Firmware roll-out: the script is current, so the reply has the firmware lines only; the
    # device loads it and resets once; then it reports the build and nothing more is sent.
    await frontend.set_variable("device_type", "IP232", "fw-prot", "135312")

    async def firmware_offered() -> bool:
        outcome = await device.poll()
        return outcome.reset

    await until(firmware_offered, timeout=10)
    assert device.prot == "135312"
    assert device.firmware_fetches == [200]
    assert await walk_to_sync(frontend, device, 2) == 1

    # A script change and a new firmware in one reply (PHPUS's order): firmware lines, iresetn,
    # then the script with its check; one reset covers both.
    await frontend.set_variables(
        ("device_type", "IP232", "fw-prot", "135400"),
        ("customer", "Kuenkel00001", "ntp-override", "10.0.0.9"),
    )

    async def both_in_one_reply() -> bool:
        outcome = await device.poll()
        if not outcome.reset:
            return False
        commands = outcome.commands
        prot = next(i for i, c in enumerate(commands) if c.startswith("mod cmd UP0 prot "))
        script = commands.index("config change NTP0 /server 10.0.0.9")
        assert prot < commands.index("iresetn") < script < len(commands) - 1
        assert commands[-2].startswith("mod cmd UP1 check ser ")
        assert commands[-1] == "iresetn"
        return True

    await until(both_in_one_reply, timeout=10)
    assert device.prot == "135400"
    assert device.settings["NTP0 /server"] == "10.0.0.9"
    assert await walk_to_sync(frontend, device, 2) == 1

    # Restage: back to staging with fast polling, then the first update turns it off again;
    # the script did not change, so the device does not run it again (no reset).
    assert await UpdateRepository(frontend.pool).request_restage(MAC_A)
    moved = await device.poll()
    assert "/DRIVE/CF0/update/staging.txt" in device.url
    assert device.provision == 5
    assert device.poll_minutes == 1
    assert "mod cmd UP1 provision 5" in moved.commands
    polls = await walk_to_sync(frontend, device, 4)
    assert polls == 3  # staging, first update (script run again, fast polling off), in sync
    # Staging set the NTP server back; the first update after it ran the script again.
    assert device.settings["NTP0 /server"] == "10.0.0.9"
    assert device.resets == staged_resets + 2 + 2  # two firmware roll-outs, one restage
    device.assert_no_reset_loop()


async def test_without_h_poll_the_setting_is_the_interval(frontend: Frontend) -> None:
    # An inventory without h-poll: the default global.txt and the first update reply both use
    # update.poll_interval (15) instead of failing to render.
    async with frontend.pool.acquire() as connection:
        assert await InventoryRepository(connection).delete_variable("global", "", "h-poll")
    await frontend.register(MAC_A)
    device = frontend.factory_new()
    assert await walk_to_sync(frontend, device, POLLS_TO_CONVERGE) == POLLS_TO_CONVERGE
    assert device.poll_minutes == UpdateSettings().poll_interval
    device.assert_no_reset_loop()


async def test_a_script_that_cannot_render_answers_comments_and_normal_polling(
    frontend: Frontend,
) -> None:
    await frontend.register(MAC_A)
    device = frontend.factory_new()
    await device.poll()  # redirect
    staging = await device.poll()
    assert staging.status == 200
    assert device.provision > 0
    assert device.poll_minutes == 1
    # The operator breaks the device's variables before its first update.
    await frontend.set_variable("device", MAC_A, "h-poll", "every hour")
    broken = await device.poll()
    assert broken.status == 200, broken.text
    assert "cannot be rendered" in broken.text
    assert not broken.reset
    assert "iresetn" not in broken.commands
    assert not any(c.startswith(("mod cmd UP1 check", "config change")) for c in broken.commands)
    # Not left polling every minute while it waits for the fix, and never a 5xx loop.
    assert device.converged(UpdateSettings().poll_interval, frontend.update_url), device
    repository = UpdateRepository(frontend.pool)

    async def error_recorded() -> bool:
        statuses = await repository.statuses(mac=MAC_A)
        return bool(statuses) and "h-poll" in (statuses[0].last_error or "")

    await until(error_recorded)
    # The device got a 200; the operator's metrics count each such poll as an error.
    # One registry per process, shared by its listeners.
    registries = {
        id(r.app[METRICS_KEY].registry): r.app[METRICS_KEY].registry
        for r in frontend.node.runners
        if METRICS_KEY in r.app
    }.values()
    errors = sum(
        registry.get_sample_value(
            "pbxfront_update_polls_total", {"kind": "update", "result": "error"}
        )
        or 0
        for registry in registries
    )
    assert errors == 1
    again = await device.poll()
    assert again.status == 200
    assert again.commands == []
    await frontend.set_variable("device", MAC_A, "h-poll", "20")
    fixed = await device.poll()
    assert fixed.status == 200
    assert any(c.startswith("mod cmd UP1 check ser ") for c in fixed.commands)
    assert device.poll_minutes == 20
    device.assert_no_reset_loop()


async def test_phpus_leftover_arguments_are_normalised_once(frontend: Frontend) -> None:
    await frontend.register(MAC_A)
    device = frontend.factory_new()
    await walk_to_sync(frontend, device, POLLS_TO_CONVERGE + 1)
    check = device.check
    # A device that carries PHPUS's state arguments and provision mode (protocol.md §10).
    device.url = frontend.update_url + "&phase=update&polling=5"
    device.provision, device.poll_minutes = 5, 1
    outcome = await device.poll()
    assert "mod cmd UP1 provision 0" in outcome.commands
    assert f"config add UP1 /poll {INTERVAL}" in outcome.commands
    assert not outcome.reset  # its script is not run again
    assert device.check == check
    assert device.converged(INTERVAL, frontend.update_url)
    again = await device.poll()
    assert "mod cmd UP1 provision 0" not in again.commands


async def test_a_device_polling_phpus_update_php_moves_over_without_running_its_script(
    frontend: Frontend,
) -> None:
    """Migration from PHPUS (protocol.md §10): a device whose update URL still names PHPUS's
    update.php, in provision mode, is moved to update.txt, leaves fast polling and converges,
    with its CHECK left valid (no reset)."""
    await frontend.register(MAC_A)
    device = frontend.factory_new()
    await walk_to_sync(frontend, device, POLLS_TO_CONVERGE + 1)
    check, resets = device.check, device.resets
    device.url = (
        f"https://127.0.0.1:{frontend.port}/DRIVE/CF0/update/update.php"
        "?sn=#m&hwid=#h&type=#t&ip=#i&phase=update&polling=5"
    )
    device.provision, device.poll_minutes = 5, 1
    moved = await device.poll()
    assert moved.status == 200, moved.text
    assert "mod cmd UP1 provision 0" in moved.commands
    assert not moved.reset
    assert device.url == frontend.update_url
    assert await walk_to_sync(frontend, device, 2) == 1
    assert (device.check, device.resets) == (check, resets)
    device.assert_no_reset_loop()


@pytest.mark.parametrize("hour", [None, 3], ids=["no-clock", "outside-window"])
async def test_a_maintenance_window_never_blocks_staging(
    frontend: Frontend, hour: int | None
) -> None:
    await frontend.set_variable("global", "", "update-allow", "12,22,23")
    await frontend.set_variable("global", "", "update-initial", "6")
    await frontend.register(MAC_A)
    device = frontend.factory_new(hour=hour)
    await device.poll()  # redirect
    staged = await device.poll()
    assert "mod cmd UP1 times /initial 6" in staged.commands
    assert staged.stopped_at is None
    first = await device.poll()
    assert "mod cmd UP1 times /initial 6" in first.commands
    assert first.stopped_at is None
    assert device.converged(INTERVAL, frontend.update_url)
    # From the normal phase on the hours apply: outside them a script change waits.
    await frontend.set_variable("customer", "Kuenkel00001", "ntp-override", "10.0.0.9")
    normal = await device.poll()
    assert "mod cmd UP1 times /allow 12,22,23 /initial 6" in normal.commands
    if hour is None:
        assert device.settings.get("NTP0 /server") == "10.0.0.9"
        return
    assert normal.stopped_at is not None
    assert device.settings.get("NTP0 /server") != "10.0.0.9"
    device.hour = 22
    inside = await device.poll()
    assert inside.stopped_at is None
    assert device.settings.get("NTP0 /server") == "10.0.0.9"
    assert await walk_to_sync(frontend, device, 2) == 1


async def test_ver_naming_the_build_with_an_odd_prot_stops_after_attempts(
    frontend: Frontend, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await frontend.register(MAC_A)
    device = frontend.factory_new()
    await walk_to_sync(frontend, device, POLLS_TO_CONVERGE + 1)
    # The device runs 135312 (its ver says so) but reports an empty PROT.
    device.prot, device.reported_prot = "135312", ""
    await frontend.set_variable("device_type", "IP232", "fw-prot", "135312")
    offered = 0
    repository = UpdateRepository(frontend.pool)
    for _ in range(8):
        outcome = await device.poll()
        offered += any(c.startswith("mod cmd UP0 prot ") for c in outcome.commands)
        polls = device.polls - 1  # the redirect's poll is not the update service's

        async def recorded(expected: int = polls) -> bool:
            statuses = await repository.statuses(mac=MAC_A)
            return statuses[0].polls == expected

        await until(recorded)  # the next poll's decision reads the attempts written
    assert offered == 3  # update.firmware_attempts
    statuses = await UpdateRepository(frontend.pool).statuses(mac=MAC_A)
    assert statuses[0].firmware_stuck == "135312"
    assert device.converged(INTERVAL, frontend.update_url)
    run = service_cli(register, database_url, capsys)
    code, listing = await run("devices", "list")
    assert code == 0
    assert "stuck:135312" in listing


async def test_staging_goes_on_during_a_firmware_roll_out(frontend: Frontend) -> None:
    await frontend.set_variable("device_type", "IP232", "fw-prot", "135312")
    await frontend.register(MAC_A)
    device = frontend.factory_new()
    await device.poll()  # redirect
    staged = await device.poll()
    commands = staged.commands
    # Firmware, reset, then the staging script and the move to update.txt, in one reply.
    assert commands[0].startswith("mod cmd UP0 prot ")
    assert "config change NTP0 /server 192.0.2.10" in commands
    assert "mod cmd UP1 provision 5" in commands
    assert staged.reset
    assert device.prot == "135312"
    assert await walk_to_sync(frontend, device, 3) == 2
    device.assert_no_reset_loop()


async def test_many_devices_converge_without_corrupting_each_other(
    frontend: Frontend, pool: asyncpg.Pool
) -> None:
    count = 30
    macs = [f"0090330b{index:04x}" for index in range(count)]
    async with pool.acquire() as connection:
        repository = InventoryRepository(connection)
        for mac in macs:
            await repository.upsert_device(Device(mac, "IP232", "phone", "Kuenkel00001"))
    for mac in macs:
        await frontend.register(mac)
    devices = [
        dataclasses.replace(
            frontend.factory_new(certificate=False),
            mac=mac,
            hardware_id=f"IP232-0b-{mac[8:10]}-{mac[10:12]}",
        )
        for mac in macs
    ]
    polls = await asyncio.gather(
        *(walk_to_sync(frontend, device, POLLS_TO_CONVERGE + 1) for device in devices)
    )
    assert all(p == POLLS_TO_CONVERGE for p in polls)

    async def all_recorded() -> bool:
        statuses = {s.mac: s for s in await UpdateRepository(pool).statuses()}
        return all(mac in statuses and statuses[mac].in_sync for mac in macs)

    await until(all_recorded, timeout=10)
    statuses = {s.mac: s for s in await UpdateRepository(pool).statuses()}
    for device in devices:
        status = statuses[device.mac]
        assert status.hardware_id == device.hardware_id
        assert status.device_check == device.check
        device.assert_no_reset_loop()


@pytest.mark.parametrize(
    "query",
    [
        "ver=%00%ff%fe&PROT=ip999-garbage",
        "polling=-5",
        "polling=99999999999999999999",
        "phase=%3Cscript%3E&polling=abc",
        "PROT=" + "9" * 5000,
    ],
)
async def test_garbage_poll_arguments_get_a_comment_never_a_5xx(
    frontend: Frontend, query: str
) -> None:
    device = frontend.factory_new()
    device.url = frontend.update_url + "&" + query
    outcome = await device.poll()
    assert outcome.status in (200, 400, 414), outcome.text
    assert all(line.startswith("#") or line[:1].isalpha() for line in outcome.text.splitlines())
    if outcome.status == 200:
        assert device.converged(INTERVAL, frontend.update_url)
