"""Published script versions (issues #15 item 3, #17 item 5): two Frontends on one database
serve the version `pbxfront scripts publish` stored, never their own folders; a rollback reaches
both; a tree with a problem is not published."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from services.core.config import ListenerSettings, Settings, UpdateSettings
from services.core.inventory import apply_inventory, read_inventory_file
from services.core.runner import Node, start_node
from services.serve import service_factories
from services.update.cli import register
from tests.conftest import DEVICE_A, SessionPki, run_wired_cli, until
from tests.simulator import SimulatedDevice

MAC_A = "009033010203"


async def start(pool: asyncpg.Pool, pki: SessionPki, scripts: Path, firmware: Path) -> Node:
    settings = Settings(
        update=UpdateSettings(
            scripts_dir=scripts,
            firmware_dir=firmware,
            scripts_source="database",
            reload_interval=0.1,
            grace_seconds=0,
        )
    )
    listener = ListenerSettings(
        port=0,
        services=("update",),
        tls=True,
        certificate=pki.server_certificate,
        key=pki.server_key,
        request_client_certificate=True,
        client_ca=(pki.ca,),
    )
    return await start_node(settings, pool, {"devices": listener}, service_factories())


@dataclasses.dataclass
class Frontends:
    nodes: list[Node]
    tree: Path
    pki: SessionPki
    database_url: str

    def device(self, node: Node) -> SimulatedDevice:
        return SimulatedDevice(
            mac=MAC_A,
            hardware_id=DEVICE_A,
            device_type="IP232",
            url=f"{node.addresses['devices']}/DRIVE/CF0/update/update.txt?sn=#m&hwid=#h",
            ca=self.pki.ca,
            certificate=self.pki.devices[DEVICE_A],
        )

    async def cli(self, *argv: str) -> int:
        return await asyncio.to_thread(
            run_wired_cli,
            register,
            self.database_url,
            *argv,
            "--set",
            f'update.scripts_dir="{self.tree}"',
        )

    async def serve(self, text: str) -> None:
        """Until every node answers with ``text`` in its script."""
        for node in self.nodes:

            async def served(node: Node = node) -> bool:
                return text in (await self.device(node).poll()).text

            await until(served, timeout=10)


@pytest.fixture
async def frontends(
    pool: asyncpg.Pool,
    session_pki: SessionPki,
    repo_root: Path,
    tmp_path: Path,
    database_url: str,
) -> AsyncIterator[Frontends]:
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    tree = tmp_path / "published"
    shutil.copytree(repo_root / "staging_scripts", tree)
    (tree / "set-Kuenkel00001.txt").write_text("config change NTP0 /server 10.0.0.1\n")
    # Each node's own folder differs from what is published, and from the other's.
    folders = []
    for index in range(2):
        folder = tmp_path / f"node{index}"
        shutil.copytree(repo_root / "staging_scripts", folder)
        (folder / "set-Kuenkel00001.txt").write_text(f"config change NTP0 /server 10.9.9.{index}\n")
        folders.append(folder)
    nodes = [await start(pool, session_pki, f, tmp_path / "firmware") for f in folders]
    try:
        yield Frontends(nodes, tree, session_pki, database_url)
    finally:
        for node in nodes:
            await node.stop()


async def test_every_node_serves_the_published_version(
    frontends: Frontends, capsys: pytest.CaptureFixture[str]
) -> None:
    nothing = await frontends.device(frontends.nodes[0]).poll()
    assert nothing.status == 503
    assert "scripts publish" in nothing.text

    assert await frontends.cli("scripts", "publish", "--comment", "first") == 0
    assert "published version 1" in capsys.readouterr().out
    await frontends.serve("config change NTP0 /server 10.0.0.1")
    for node in frontends.nodes:
        assert "10.9.9." not in (await frontends.device(node).poll()).text

    assert await frontends.cli("scripts", "publish") == 0
    assert "no changes: version 1" in capsys.readouterr().out

    (frontends.tree / "set-Kuenkel00001.txt").write_text("config change NTP0 /server 10.0.0.2\n")
    assert await frontends.cli("scripts", "publish") == 0
    await frontends.serve("config change NTP0 /server 10.0.0.2")

    assert await frontends.cli("scripts", "rollback", "1") == 0
    await frontends.serve("config change NTP0 /server 10.0.0.1")
    capsys.readouterr()
    assert await frontends.cli("scripts", "versions") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[0] == "2"
    assert listing[1].split()[:2] == ["*", "1"]
    assert listing[1].endswith("first")


async def test_a_tree_with_a_problem_is_not_published(
    frontends: Frontends, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await frontends.cli("scripts", "publish") == 0
    (frontends.tree / "set-Kuenkel00001.txt").write_text("config change NTP0 /server {{ nope\n")
    assert await frontends.cli("scripts", "publish") == 2
    out = capsys.readouterr().out
    assert "set-Kuenkel00001.txt" in out
    assert "not published" in out
    await frontends.serve("config change NTP0 /server 10.0.0.1")
    assert await frontends.cli("scripts", "rollback", "7") == 2
    assert "no script version 7" in capsys.readouterr().out
