"""Canary roll-outs of a published script version (issue #15 item 4), on two Frontends sharing
one database: the first wave's devices get the new version, the others keep the old one until
the wave is back in sync; an alarm or a wave that does not come back halts it; abort sends
everybody back. Steps are taken with `pbxfront rollouts advance` (the service's own job is off),
so every transition is the test's."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from services.core.config import ListenerSettings, Settings, UpdateSettings
from services.core.inventory import (
    Device,
    InventoryRepository,
    apply_inventory,
    read_inventory_file,
)
from services.core.runner import Node, start_node
from services.serve import service_factories
from services.update.cli import register
from services.update.firmware import FirmwareStore
from services.update.repository import UpdateRepository
from tests.conftest import DEVICE_A, DEVICE_C, SessionPki, run_wired_cli, until
from tests.simulator import SimulatedDevice

MAC_A = "009033010203"
MAC_C = "009033010204"
MAC_E = "00903301020e"
# The example inventory's devices: (MAC, hardware id, type); A and C have certificates.
DEVICES = [
    (MAC_A, DEVICE_A, "IP232"),
    (MAC_C, DEVICE_C, "IP222"),
    ("009033010205", "IP112-01-02-05", "IP112"),
    ("009033a85a38", "IPVA-a8-5a-38", "IPVA"),
    (MAC_E, "IP232-01-02-0e", "IP232"),
]


@dataclass
class Fleet:
    nodes: list[Node]
    tree: Path
    pki: SessionPki
    database_url: str
    pool: asyncpg.Pool
    devices: dict[str, SimulatedDevice]

    async def cli(self, *argv: str) -> int:
        return await asyncio.to_thread(
            run_wired_cli,
            register,
            self.database_url,
            *argv,
            "--set",
            f'update.scripts_dir="{self.tree}"',
        )

    def publish_ntp(self, address: str) -> None:
        (self.tree / "set-Kuenkel00001.txt").write_text(f"config change NTP0 /server {address}\n")

    async def sync(self, *macs: str) -> None:
        """Poll the devices (alternating between the nodes) until each is in sync."""
        for mac in macs:
            device = self.devices[mac]

            async def in_sync(device: SimulatedDevice = device) -> bool:
                return (await device.poll()).changes == []

            await until(in_sync, timeout=10)

    def ntp(self, mac: str) -> str | None:
        lines = [c for c in self.devices[mac].executed if c.startswith("config change NTP0 ")]
        return lines[-1].split()[-1] if lines else None


@pytest.fixture
async def fleet(
    pool: asyncpg.Pool,
    session_pki: SessionPki,
    repo_root: Path,
    tmp_path: Path,
    database_url: str,
) -> AsyncIterator[Fleet]:
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    tree = tmp_path / "published"
    shutil.copytree(repo_root / "staging_scripts", tree)
    # A second IP232 (without a certificate), and a build for them in the store.
    async with pool.acquire() as connection:
        await InventoryRepository(connection).upsert_device(
            Device(MAC_E, "IP232", "phone", "Kuenkel00001")
        )

    def add_firmware() -> None:
        source = tmp_path / "ip232.bin"
        source.write_bytes(b"\x7fFIRMWARE" * 100)
        FirmwareStore(tmp_path / "firmware").add(source, "135312", "ip232.bin")

    await asyncio.to_thread(add_firmware)
    settings = Settings(
        update=UpdateSettings(
            scripts_dir=tree,
            firmware_dir=tmp_path / "firmware",
            scripts_source="database",
            rollout_check_interval=0,
            reload_interval=0.1,
            grace_seconds=0,
        )
    )
    listener = ListenerSettings(
        port=0,
        services=("update", "events"),
        tls=True,
        certificate=session_pki.server_certificate,
        key=session_pki.server_key,
        request_client_certificate=True,
        client_ca=(session_pki.ca,),
    )
    nodes = [
        await start_node(settings, pool, {"devices": listener}, service_factories())
        for _ in range(2)
    ]
    devices = {}
    for index, (mac, hardware_id, device_type) in enumerate(DEVICES):
        node = nodes[index % 2]
        devices[mac] = SimulatedDevice(
            mac=mac,
            hardware_id=hardware_id,
            device_type=device_type,
            url=f"{node.addresses['devices']}/DRIVE/CF0/update/update.txt"
            "?sn=#m&hwid=#h&type=#t&ip=#i",
            ca=session_pki.ca,
            certificate=session_pki.devices.get(hardware_id),
        )
    try:
        yield Fleet(nodes, tree, session_pki, database_url, pool, devices)
    finally:
        for node in nodes:
            await node.stop()


async def alarm(fleet: Fleet) -> None:
    """Device A raises an alarm, proven by its certificate."""
    context = ssl.create_default_context(cafile=str(fleet.pki.ca))
    context.load_cert_chain(*(str(p) for p in fleet.pki.devices[DEVICE_A]))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.post(
            f"{fleet.nodes[0].addresses['devices']}/events?sn={MAC_A}",
            data="type=set&code=4711&severity=Major&source=SIP&text=Registration+lost",
        ) as response,
    ):
        assert response.status == 201, await response.text()


async def test_waves_advance_only_when_their_devices_are_back_in_sync(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.publish_ntp("10.0.0.1")
    assert await fleet.cli("scripts", "publish") == 0
    await fleet.sync(*(mac for mac, _, _ in DEVICES))
    fleet.publish_ntp("10.0.0.2")
    assert await fleet.cli("scripts", "publish", "--staged") == 0
    assert "not current yet" in capsys.readouterr().out
    args = ("--wave", f"mac:{MAC_A}", "--wave", "100%", "--soak", "0", "--wave-timeout", "60")
    assert await fleet.cli("rollouts", "start", "2", *args) == 0
    assert "wave mac:009033010203 has 1 devices" in capsys.readouterr().out

    # Only the canary gets the new version; the rest (on both nodes) keep the old one.
    await fleet.sync(*(mac for mac, _, _ in DEVICES))
    assert fleet.ntp(MAC_A) == "10.0.0.2"
    assert fleet.ntp(MAC_C) == "10.0.0.1"

    async def step() -> str:
        capsys.readouterr()
        assert await fleet.cli("rollouts", "advance") == 0
        return capsys.readouterr().out

    async def recorded_on_new_version() -> bool:
        statuses = await UpdateRepository(fleet.pool).statuses(mac=MAC_A)
        return statuses[0].in_sync and statuses[0].script_version == 2

    await until(recorded_on_new_version)
    assert "wave 100% started with 4 devices" in await step()
    await fleet.sync(*(mac for mac, _, _ in DEVICES))
    assert {fleet.ntp(mac) for mac, _, _ in DEVICES} == {"10.0.0.2"}

    async def done() -> bool:
        return "done: version 2 is current" in await step()

    await until(done, timeout=10)
    assert await fleet.cli("scripts", "versions") == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:2] == ["*", "2"]
    assert await fleet.cli("devices", "list") == 0
    assert "v2" in capsys.readouterr().out


async def test_an_alarm_halts_and_abort_sends_everybody_back(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.publish_ntp("10.0.0.1")
    assert await fleet.cli("scripts", "publish") == 0
    fleet.publish_ntp("10.0.0.3")
    assert await fleet.cli("scripts", "publish", "--staged") == 0
    waves = ("--wave", f"mac:{MAC_A}", "--wave", "100%", "--soak", "3600")
    assert await fleet.cli("rollouts", "start", "2", *waves) == 0
    await fleet.sync(MAC_A)
    assert fleet.ntp(MAC_A) == "10.0.0.3"
    await alarm(fleet)
    capsys.readouterr()
    assert await fleet.cli("rollouts", "advance") == 0
    assert f"halted: wave mac:{MAC_A}: new alarms from {MAC_A} (alarm 4711)" in (
        capsys.readouterr().out
    )
    assert await fleet.cli("rollouts", "status") == 0
    assert "halted" in capsys.readouterr().out
    # Halted: nothing advances; the canary keeps what it has, the others the old version.
    assert await fleet.cli("rollouts", "advance") == 0
    assert "is halted" in capsys.readouterr().out
    await fleet.sync(MAC_C)
    assert fleet.ntp(MAC_C) == "10.0.0.1"
    assert await fleet.cli("rollouts", "abort") == 0
    await fleet.sync(MAC_A)
    assert fleet.ntp(MAC_A) == "10.0.0.1"
    # Another roll-out may start now; a second one while it is open may not.
    assert await fleet.cli("rollouts", "start", "2", "--wave", "100%") == 0
    assert await fleet.cli("rollouts", "start", "2", "--wave", "100%") == 2
    assert "in progress" in capsys.readouterr().out


async def test_a_wave_that_does_not_come_back_halts_it_never_proceeds(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.publish_ntp("10.0.0.1")
    assert await fleet.cli("scripts", "publish") == 0
    fleet.publish_ntp("10.0.0.4")
    assert await fleet.cli("scripts", "publish", "--staged") == 0
    waves = ("--wave", f"mac:{MAC_A}", "--wave", "100%", "--soak", "0", "--wave-timeout", "1")
    assert await fleet.cli("rollouts", "start", "2", *waves) == 0
    # The canary never polls.

    async def halted() -> bool:
        capsys.readouterr()
        assert await fleet.cli("rollouts", "advance") == 0
        return "not back in sync on version 2 within 1 s: 009033010203" in capsys.readouterr().out

    await until(halted, timeout=10)
    for bad in (["start", "9"], ["start", "2", "--wave", "50%"], ["start", "2", "--wave", "x"]):
        assert await fleet.cli("rollouts", *bad) == 2


async def test_a_firmware_build_rolls_out_wave_by_wave(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await fleet.cli("scripts", "publish") == 0
    await fleet.sync(MAC_A, MAC_E)
    waves = ("--wave", f"mac:{MAC_A}", "--wave", "100%", "--soak", "0")
    assert (
        await fleet.cli("rollouts", "start", "--firmware", "IP232", "--build", "135312", *waves)
        == 0
    )
    assert "IP232 fw-prot -> 135312" in capsys.readouterr().out
    # The canary loads the build; the other IP232 does not yet.
    await fleet.sync(MAC_A, MAC_E)
    assert fleet.devices[MAC_A].prot == "135312"
    assert fleet.devices[MAC_E].prot != "135312"

    async def step(expected: str) -> bool:
        capsys.readouterr()
        assert await fleet.cli("rollouts", "advance") == 0
        return expected in capsys.readouterr().out

    async def wave_two() -> bool:
        return await step("wave 100% started with 1 devices")

    await until(wave_two, timeout=10)
    await fleet.sync(MAC_E)
    assert fleet.devices[MAC_E].prot == "135312"

    async def done() -> bool:
        return await step("done: IP232 fw-prot 135312 is current")

    await until(done, timeout=10)
    # The build is the inventory's now, on the device_type layer.
    async with fleet.pool.acquire() as connection:
        variables = await InventoryRepository(connection).list_variables("device_type", "IP232")
    assert any(
        (v.layer, v.scope, v.name, v.value) == ("device_type", "IP232", "fw-prot", "135312")
        for v in variables
    )
