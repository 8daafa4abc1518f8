"""The CA key on one signing node only (issue #17 item 5, ca.signer): a Frontend without the key
queues a device's checked signing request in PostgreSQL; while no signing node runs the request
waits and `pbxfront ca queue` and the roll-out say so; the signing node, once up, signs it (and,
woken by NOTIFY, every later one at once); the device installs the certificate from the node
without the key, and the real openssl verifies it and the CRL that node serves."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from services.ca.cli import register as register_ca
from services.core import db, pki
from services.core.config import CaSettings, DatabaseSettings
from services.core.inventory import apply_inventory, read_inventory_file
from services.core.runner import Node
from services.update.cli import register as register_update
from tests.conftest import DEVICE_A, DEVICE_C, SessionPki, run_wired_cli, until
from tests.test_rollout import (
    MAC_A,
    MAC_C,
    REPO_ROOT,
    Frontend,
    make_provider_ca,
    openssl,
    start_frontend,
)

# The signing node sweeps rarely: what it signs at once, NOTIFY (or its start) told it about.
SLOW_SWEEP = 3600.0


@dataclass
class Cluster:
    pool: asyncpg.Pool
    database_url: str
    pki: SessionPki
    tmp_path: Path
    root: Path
    queue_node: Frontend
    nodes: list[Node]

    async def start_signer(self) -> Frontend:
        node = await start_frontend(
            self.pool,
            self.pki,
            self.tmp_path / "signer",
            CaSettings(rollout=True, signer="sign", queue_interval=SLOW_SWEEP),
        )
        self.nodes.append(node)
        return Frontend(node, self.pool, self.pki, self.root, self.tmp_path / "signer")

    async def queue(self, *argv: str) -> int:
        return await asyncio.to_thread(
            run_wired_cli, register_ca, self.database_url, "ca", "queue", *argv
        )


@pytest.fixture
async def cluster(
    session_pki: SessionPki, tmp_path: Path, database_url: str
) -> AsyncIterator[Cluster]:
    # Two nodes each holding LISTEN connections: a pool of their own, larger than the fixture's.
    pool = await db.create_pool(database_url, DatabaseSettings(pool_max_size=12))
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(REPO_ROOT / "config" / "inventory.example.toml")
        )
    # The signing node holds root.pem and root.key; the other node only a copy of root.pem.
    root, _key = make_provider_ca(tmp_path / "signer")
    queue_dir = tmp_path / "queue"
    (queue_dir / "ca").mkdir(parents=True)
    shutil.copy(root, queue_dir / "ca" / "root.pem")
    assert not (queue_dir / "ca" / "root.key").exists()
    node = await start_frontend(pool, session_pki, queue_dir, CaSettings(rollout=True))
    nodes = [node]
    try:
        yield Cluster(
            pool,
            database_url,
            session_pki,
            tmp_path,
            root,
            Frontend(node, pool, session_pki, root, queue_dir),
            nodes,
        )
    finally:
        for running in nodes:
            await running.stop()
        await pool.close()


async def crl_from(frontend: Frontend) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(frontend.pki.ca))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(frontend.claimed_base + "/DRIVE/CF0/update/ca.crl") as response,
    ):
        return response.status, await response.read()


async def test_requests_wait_for_the_signing_node_and_are_signed_when_it_comes(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    frontend = cluster.queue_node
    device = frontend.device()
    # query, create the request, upload it: queued, since this node has no key.
    for _ in range(3):
        assert (await device.poll()).status == 200
    state = await frontend.state()
    assert state is not None
    assert state.state == "queued", state
    assert [s for url, s in device.uploads if "/x509/" in url] == [200, 200, 200]
    # The signing node is down: the request waits, however many polls come.
    for _ in range(3):
        waiting = await device.poll()
        assert "signing request waiting for the signing node since" in waiting.text
    assert (await frontend.state()).state == "queued"  # type: ignore[union-attr]
    assert device.installed == []
    assert await cluster.pool.fetchval("SELECT count(*) FROM ca_certificates") == 0

    capsys.readouterr()
    assert await cluster.queue() == 1
    report = capsys.readouterr().out
    assert "waiting" in report
    assert DEVICE_A in report
    assert "1 waiting, the oldest for" in report
    assert "1 request(s) wait for a signing node that is not running" in report
    assert "no signing node holds it" in report
    assert (
        await asyncio.to_thread(
            run_wired_cli, register_update, cluster.database_url, "devices", "certificates"
        )
        == 0
    )
    listing = capsys.readouterr().out
    line = next(line for line in listing.splitlines() if line.startswith(MAC_A))
    assert "queued" in line
    assert "request waits for the signing node (pbxfront ca queue)" in line
    # Nobody could sign a CRL yet either.
    status, _ = await crl_from(frontend)
    assert status == 503

    # The signing node starts: it sweeps the queue at once.
    signer = await cluster.start_signer()

    async def signed() -> bool:
        current = await frontend.state()
        return current is not None and current.state == "signed"

    await until(signed, timeout=15)
    # The device installs the certificate from the node without the key.
    for _ in range(3):
        await device.poll()
        current = await frontend.state()
        if current is not None and current.state == "current":
            break
    assert (await frontend.state()).state == "current"  # type: ignore[union-attr]
    assert len(device.installed) == 1
    assert device.certificate is not None
    verified = openssl("verify", "-x509_strict", "-CAfile", cluster.root, device.certificate[0])
    assert verified.returncode == 0, verified.stderr
    text = openssl("x509", "-in", device.certificate[0], "-noout", "-subject").stdout
    assert "CN = IP232-01-02-03" in text
    row = await cluster.pool.fetchrow(
        "SELECT kind, source, device_mac FROM ca_certificates WHERE device_mac = $1", MAC_A
    )
    assert row is not None
    assert dict(row) == {
        "kind": "device",
        "source": "rollout",
        "device_mac": MAC_A,
    }

    # A second device, queued while the signing node runs: NOTIFY wakes it (its sweep interval
    # is an hour).
    other = frontend.device(DEVICE_C, MAC_C)
    for _ in range(3):
        await other.poll()

    async def other_signed() -> bool:
        current = await frontend.state(MAC_C)
        return current is not None and current.state in ("signed", "installing", "current")

    await until(other_signed, timeout=10)

    capsys.readouterr()
    assert await cluster.queue("--all", "--json") == 0
    queue = json.loads(capsys.readouterr().out)
    assert queue["waiting"] == 0
    assert queue["signing_node_alive"] is True
    assert queue["waiting_without_signer"] == 0
    assert [s["alive"] for s in queue["signers"]] == [True]
    assert sorted(r["state"] for r in queue["requests"]) == ["signed", "signed"]
    assert all(r["serial"] for r in queue["requests"])

    # The node without the key serves the CRL the signing node stored; openssl checks it.
    async def crl_served() -> bool:
        return (await crl_from(frontend))[0] == 200

    await until(crl_served, timeout=10)
    _, der = await crl_from(frontend)
    crl_path = cluster.tmp_path / "queue.crl"
    crl_path.write_bytes(der)
    checked = openssl("crl", "-inform", "DER", "-in", crl_path, "-CAfile", cluster.root, "-noout")
    assert checked.returncode == 0
    assert "verify OK" in checked.stderr + checked.stdout
    assert signer.node is cluster.nodes[1]


async def test_a_request_to_the_signing_node_itself_is_signed_at_once(cluster: Cluster) -> None:
    signer = await cluster.start_signer()
    device = signer.device()
    for _ in range(3):
        await device.poll()
    state = await signer.state()
    assert state is not None
    assert state.state == "signed"
    assert await cluster.pool.fetchval("SELECT count(*) FROM ca_signing_requests") == 0


async def test_sign_without_a_key_refuses_to_start(
    pool: asyncpg.Pool, session_pki: SessionPki, tmp_path: Path
) -> None:
    root, key = make_provider_ca(tmp_path)
    key.unlink()
    with pytest.raises(pki.PkiError, match=r"root\.key"):
        await start_frontend(pool, session_pki, tmp_path, CaSettings(rollout=True, signer="sign"))
    assert root.exists()


async def test_queue_mode_refuses_a_certificate_that_is_no_ca(
    pool: asyncpg.Pool, session_pki: SessionPki, tmp_path: Path
) -> None:
    (tmp_path / "ca").mkdir()
    shutil.copy(session_pki.server_certificate, tmp_path / "ca" / "root.pem")
    with pytest.raises(pki.PkiError, match="not a CA certificate"):
        await start_frontend(pool, session_pki, tmp_path, CaSettings(rollout=True))


async def test_a_signing_node_that_went_down_is_reported_and_requests_wait(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    signer = await cluster.start_signer()
    await until(
        lambda: cluster.pool.fetchval("SELECT count(*) = 1 FROM ca_signers"),
        timeout=10,
    )
    await signer.node.stop()
    cluster.nodes.remove(signer.node)
    # Its last sweep, as it looks ten minutes later.
    await cluster.pool.execute("UPDATE ca_signers SET seen_at = now() - interval '10 minutes'")
    device = cluster.queue_node.device()
    for _ in range(5):
        await device.poll()
    state = await cluster.queue_node.state()
    assert state is not None
    assert state.state == "queued"
    capsys.readouterr()
    assert await cluster.queue() == 1
    report = capsys.readouterr().out
    assert re.search(r"last sweep 6\d\d s ago", report), report
    assert "NOT SEEN recently (down?)" in report
    assert "1 request(s) wait for a signing node that is not running" in report
    assert device.installed == []
