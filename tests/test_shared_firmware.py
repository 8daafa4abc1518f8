"""Firmware shared by every Frontend (issue #17 item 5, update.firmware_source = "database"): added
once on one node, stored in PostgreSQL, served byte-identical (same ETag, Range, 304) by another
node from its SHA-256-checked cache; a damaged cached copy is fetched again; cached files are still
served while PostgreSQL is down; `firmware remove` reaches every node."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest

from services.core import db
from services.core.config import DatabaseSettings, ListenerSettings, Settings, UpdateSettings
from services.core.inventory import InventoryRepository, apply_inventory, read_inventory_file
from services.core.runner import Node, start_node
from services.serve import service_factories
from services.update import console
from services.update.cli import register
from services.update.firmware import FirmwareStore
from services.update.repository import CHUNK_BYTES, SharedFirmwareRepository
from tests.conftest import DEVICE_A, SessionPki, curl_with_headers, run_wired_cli, until
from tests.simulator import SimulatedDevice

MAC_A = "009033010203"
SHARED = 'update.firmware_source="database"'


@dataclass
class SharedNode:
    node: Node
    cache: Path

    @property
    def base(self) -> str:
        return self.node.addresses["devices"]

    def cached(self, build: str, name: str) -> Path:
        return self.cache / "firm" / build / name


async def start(
    pool: asyncpg.Pool, pki: SessionPki, scripts: Path, root: Path, name: str
) -> SharedNode:
    cache = root / name / "cache"
    settings = Settings(
        data_dir=root / name,
        update=UpdateSettings(
            scripts_dir=scripts,
            firmware_dir=root / name / "firmware",
            firmware_source="database",
            firmware_cache_dir=cache,
            reload_interval=0.1,
            grace_seconds=0,
        ),
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
    node = await start_node(settings, pool, {"devices": listener}, service_factories())
    return SharedNode(node, cache)


@dataclass
class Cluster:
    nodes: list[SharedNode]
    pki: SessionPki
    database_url: str
    tmp_path: Path

    async def cli(self, *argv: str) -> int:
        return await asyncio.to_thread(
            run_wired_cli, register, self.database_url, *argv, "--set", SHARED
        )

    async def get(
        self, node: SharedNode, path: str, *headers: str, options: tuple[str, ...] = ()
    ) -> tuple[int, bytes, str]:
        """curl (a real client, verifying the server) against ``node``: (status, body, headers)."""
        arguments = ["--cacert", str(self.pki.ca), *options]
        for header in headers:
            arguments += ["-H", header]
        return await curl_with_headers(*arguments, node.base + path)

    def device(self, node: SharedNode) -> SimulatedDevice:
        return SimulatedDevice(
            mac=MAC_A,
            hardware_id=DEVICE_A,
            device_type="IP232",
            url=f"{node.base}/DRIVE/CF0/update/update.txt?sn=#m&hwid=#h&type=#t&ip=#i",
            ca=self.pki.ca,
            certificate=self.pki.devices[DEVICE_A],
        )

    def image(self, name: str, size: int) -> tuple[Path, bytes]:
        content = os.urandom(size)
        path = self.tmp_path / "upload" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        return path, content


def header(headers: str, name: str) -> str:
    for line in headers.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise AssertionError(f"no {name} header in {headers!r}")


@pytest.fixture
async def cluster(
    pool: asyncpg.Pool,
    session_pki: SessionPki,
    repo_root: Path,
    tmp_path: Path,
    database_url: str,
) -> AsyncIterator[Cluster]:
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    scripts = tmp_path / "staging_scripts"
    shutil.copytree(repo_root / "staging_scripts", scripts)
    nodes = [await start(pool, session_pki, scripts, tmp_path, name) for name in ("a", "b")]
    try:
        yield Cluster(nodes, session_pki, database_url, tmp_path)
    finally:
        for running in nodes:
            await running.node.stop()


FILE_PATH = "/DRIVE/CF0/update/firm/131500/ip232.bin"


async def test_added_on_one_node_served_identically_by_the_other(
    cluster: Cluster, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    node_a, node_b = cluster.nodes
    # Over one chunk, so the copy is put together from several rows.
    image, content = cluster.image("ip232.bin", CHUNK_BYTES * 2 + 12345)
    capsys.readouterr()
    assert (
        await cluster.cli("firmware", "add", str(image), "--build", "131500", "--type", "IP232")
        == 0
    )
    out = capsys.readouterr().out
    assert hashlib.sha256(content).hexdigest() in out
    assert "every Frontend" in out
    # Nothing was written on either node's disk: the file is in the database.
    assert not node_a.cached("131500", "ip232.bin").exists()

    # A device polling node B is sent to the file, and fetches it from node B.
    async with pool.acquire() as connection:
        await InventoryRepository(connection).set_variable(
            "device_type", "IP232", "fw-prot", "131500", False
        )
    device = cluster.device(node_b)

    async def installed() -> bool:
        await device.poll()
        return device.prot == "131500"

    await until(installed, timeout=10)  # the list refreshes every reload_interval
    assert device.firmware_fetched[-1] == (node_b.base + FILE_PATH, 200)
    assert node_b.cached("131500", "ip232.bin").read_bytes() == content

    status_b, body_b, headers_b = await cluster.get(node_b, FILE_PATH)
    status_a, body_a, headers_a = await cluster.get(node_a, FILE_PATH)
    assert (status_a, status_b) == (200, 200)
    assert body_a == body_b == content
    # The same validators on both nodes: a download may resume on the other one.
    etag = header(headers_a, "ETag")
    assert header(headers_b, "ETag") == etag
    assert header(headers_b, "Last-Modified") == header(headers_a, "Last-Modified")
    status, part, _ = await cluster.get(node_a, FILE_PATH, "Range: bytes=1048570-1048600")
    assert (status, part) == (206, content[1048570:1048601])
    status, _, _ = await cluster.get(node_b, FILE_PATH, f"If-None-Match: {etag}")
    assert status == 304

    capsys.readouterr()
    assert await cluster.cli("firmware", "list") == 0
    listing = capsys.readouterr().out
    assert (
        f"131500/ip232.bin  {len(content)} bytes  sha256 {hashlib.sha256(content).hexdigest()}"
        in listing
    )
    assert str(node_a.cache.absolute()) in listing
    assert str(node_b.cache.absolute()) in listing


async def test_a_damaged_cached_copy_is_fetched_again(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    node = cluster.nodes[1]
    image, content = cluster.image("boot232.bin", 70_000)
    assert (
        await cluster.cli(
            "firmware", "add", str(image), "--build", "140", "--type", "IP232", "--kind", "boot"
        )
        == 0
    )
    path = "/DRIVE/CF0/update/firm/140/boot232.bin"

    async def served() -> bool:
        return (await cluster.get(node, path))[0] == 200

    await until(served, timeout=10)
    cached = node.cached("140", "boot232.bin")
    stat = cached.stat()
    # The same size and modification time, one byte different: only the hash can tell.
    damaged = bytearray(content)
    damaged[5000] ^= 0xFF
    cached.write_bytes(bytes(damaged))
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caplog.set_level(logging.WARNING, logger="services.update.shared_firmware")
    status, body, _ = await cluster.get(node, path)
    assert (status, body) == (200, content)
    assert cached.read_bytes() == content
    assert any("is not the stored file" in r.getMessage() for r in caplog.records)


async def test_a_replaced_cached_copy_is_detected_and_fetched_again(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    node = cluster.nodes[0]
    image, content = cluster.image("ip222.bin", 50_000)
    assert (
        await cluster.cli("firmware", "add", str(image), "--build", "131500", "--type", "IP222")
        == 0
    )
    path = "/DRIVE/CF0/update/firm/131500/ip222.bin"

    async def served() -> bool:
        return (await cluster.get(node, path))[0] == 200

    await until(served, timeout=10)
    cached = node.cached("131500", "ip222.bin")
    caplog.set_level(logging.WARNING, logger="services.update.shared_firmware")
    cached.write_bytes(b"not the firmware")
    status, body, _ = await cluster.get(node, path)
    assert status == 200
    assert body == content
    assert cached.read_bytes() == content
    assert any("is not the stored file" in r.getMessage() for r in caplog.records)


async def test_remove_reaches_every_node(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _content = cluster.image("ip232.bin", 1000)
    assert await cluster.cli("firmware", "add", str(image), "--build", "9", "--type", "IP232") == 0
    path = "/DRIVE/CF0/update/firm/9/ip232.bin"
    for node in cluster.nodes:

        async def served(node: SharedNode = node) -> bool:
            return (await cluster.get(node, path))[0] == 200

        await until(served, timeout=10)
    capsys.readouterr()
    assert await cluster.cli("firmware", "remove", "9", "ip232.bin") == 0
    assert "removed" in capsys.readouterr().out
    for node in cluster.nodes:

        async def gone(node: SharedNode = node) -> bool:
            return (await cluster.get(node, path))[0] == 404

        def dropped(node: SharedNode = node) -> bool:
            return not node.cached("9", "ip232.bin").exists()

        await until(gone, timeout=10)
        await until(dropped, timeout=10)
    assert await cluster.cli("firmware", "remove", "9", "ip232.bin") == 1
    assert "not in the firmware store" in capsys.readouterr().out


async def test_bad_input_stores_nothing(
    cluster: Cluster, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _ = cluster.image("ip232.bin", 100)
    capsys.readouterr()
    assert (
        await cluster.cli("firmware", "add", str(image), "--build", "../x", "--type", "IP232") == 2
    )
    assert "build '../x'" in capsys.readouterr().out
    missing = cluster.tmp_path / "nope.bin"
    assert (
        await cluster.cli("firmware", "add", str(missing), "--build", "1", "--type", "IP232") == 2
    )
    assert f"{missing}: no such file" in capsys.readouterr().out
    assert (
        await cluster.cli(
            "firmware", "add", str(image), "--build", "1", "--type", "IP232", "--name", "x.exe"
        )
        == 2
    )
    assert "file 'x.exe'" in capsys.readouterr().out
    assert await cluster.cli("firmware", "remove", "1", "../../etc/passwd") == 2
    assert await SharedFirmwareRepository(pool).files() == []
    assert await pool.fetchval("SELECT count(*) FROM firmware_chunks") == 0


async def test_same_content_is_stored_once_and_replacing_drops_the_old(
    cluster: Cluster, pool: asyncpg.Pool
) -> None:
    image, content = cluster.image("ip232.bin", 3000)
    for build in ("1", "2"):
        assert (
            await cluster.cli("firmware", "add", str(image), "--build", build, "--type", "IP232")
            == 0
        )
    assert await pool.fetchval("SELECT count(*) FROM firmware_blobs") == 1
    other, _ = cluster.image("other.bin", 4000)
    assert await cluster.cli("firmware", "add", str(other), "--build", "1", "--type", "IP232") == 0
    assert await cluster.cli("firmware", "add", str(other), "--build", "2", "--type", "IP232") == 0
    # The first content is no longer used by any file: gone.
    assert await pool.fetchval("SELECT count(*) FROM firmware_blobs") == 1
    assert (
        await pool.fetchval("SELECT sha256 FROM firmware_blobs")
        == hashlib.sha256(other.read_bytes()).hexdigest()
    )
    assert content != other.read_bytes()


class DatabaseLink:
    """A TCP hop between a node and the test's PostgreSQL that can be cut: while it is down every
    connection through it is dropped and new ones are refused, as when the database host goes
    away (the session's PostgreSQL itself keeps running for the other tests)."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        self._socket = f"{query['host']}/.s.PGSQL.{parts.port or 5432}" if "host" in query else None
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._parts = parts
        self._server: asyncio.Server | None = None
        self._transports: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def dsn(self) -> str:
        user = self._parts.username or "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}{self._parts.path}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._transports:
            writer.transport.abort()
        self._transports.clear()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._socket is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self._socket)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._transports += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_cached_files_are_served_while_the_database_is_down(
    session_pki: SessionPki,
    repo_root: Path,
    tmp_path: Path,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = DatabaseLink(database_url)
    await link.up()
    pool = await db.create_pool(link.dsn, DatabaseSettings(connect_timeout=1.0))
    scripts = tmp_path / "staging_scripts"
    shutil.copytree(repo_root / "staging_scripts", scripts)
    node = await start(pool, session_pki, scripts, tmp_path, "a")
    cluster = Cluster([node], session_pki, database_url, tmp_path)
    cut = False
    try:
        image, content = cluster.image("ip232.bin", 200_000)
        other, _ = cluster.image("ip222.bin", 1000)
        # ip222 first: a list that has ip232 (served below) has it too.
        for source, device_type in ((other, "IP222"), (image, "IP232")):
            added = await cluster.cli(
                "firmware", "add", str(source), "--build", "1", "--type", device_type
            )
            assert added == 0
        path = "/DRIVE/CF0/update/firm/1/ip232.bin"

        async def served() -> bool:
            return (await cluster.get(node, path))[0] == 200

        await until(served, timeout=10)
        caplog.set_level(logging.WARNING, logger="services.update.shared_firmware")
        await link.down()
        cut = True
        await until(
            lambda: any("database unavailable" in r.getMessage() for r in caplog.records),
            timeout=10,
        )
        status, body, _ = await cluster.get(node, path)
        assert (status, body) == (200, content)
        # Listed, never cached, no database: try again later.
        status, body, headers = await cluster.get(node, "/DRIVE/CF0/update/firm/1/ip222.bin")
        assert status == 503, body
        assert header(headers, "Retry-After")
        assert body.startswith(b"# firmware not available right now")
        # A node restarted during the outage serves its cache from the list it kept.
        await node.node.stop()
        node = await start(pool, session_pki, scripts, tmp_path, "a")
        status, body, _ = await cluster.get(node, path)
        assert (status, body) == (200, content)
        status, _, _ = await cluster.get(node, "/DRIVE/CF0/update/firm/1/ip222.bin")
        assert status == 503
        await link.up()
        cut = False

        async def back() -> bool:
            found = await cluster.get(node, "/DRIVE/CF0/update/firm/1/ip222.bin")
            return found[0] == 200 and found[1] == other.read_bytes()

        await until(back, timeout=20)
    finally:
        if cut:
            await link.up()
        await node.node.stop()
        await pool.close()
        await link.down()


def test_the_local_store_removes_a_file(tmp_path: Path) -> None:
    store = FirmwareStore(tmp_path)
    image = tmp_path / "in.bin"
    image.write_bytes(b"x" * 10)
    store.add(image, "5", "ip232.bin")
    store.add(image, "5", "ip222.bin")
    assert store.remove("5", "ip232.bin") is True
    assert store.find("5", "ip232.bin") is None
    assert not (tmp_path / "firm" / "5" / "ip232.bin").exists()
    assert store.find("5", "ip222.bin") is not None
    assert store.remove("5", "ip232.bin") is False


async def test_import_shares_a_node_store_and_skips_a_damaged_file(
    cluster: Cluster, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    old = FirmwareStore(cluster.tmp_path / "old-store")
    image, content = cluster.image("ip232.bin", 5000)
    other, _ = cluster.image("ip222.bin", 6000)
    await asyncio.to_thread(old.add, image, "77", "ip232.bin")
    await asyncio.to_thread(old.add, other, "77", "ip222.bin")
    # Damaged after it was recorded: its SHA256SUMS line no longer matches.
    (old.firm / "77" / "ip222.bin").write_bytes(b"damaged")
    capsys.readouterr()
    folder = f'update.firmware_dir="{old.root}"'
    assert await cluster.cli("firmware", "import", "--set", folder) == 1
    out = capsys.readouterr().out
    assert "77/ip232.bin  sha256" in out
    assert "ip222.bin: SHA-256" in out
    assert "skipped" in out
    assert [(f.build, f.name) for f in await SharedFirmwareRepository(pool).files()] == [
        ("77", "ip232.bin")
    ]
    node = cluster.nodes[1]

    async def served() -> bool:
        status, body, _ = await cluster.get(node, "/DRIVE/CF0/update/firm/77/ip232.bin")
        return status == 200 and body == content

    await until(served, timeout=10)
    assert await cluster.cli("firmware", "import", "--set", folder) == 1
    assert "77/ip232.bin: already stored" in capsys.readouterr().out
    # The console's firmware page lists the shared store.
    settings = Settings(update=UpdateSettings(firmware_source="database"))
    listed = await console.firmware_store(settings, pool)
    assert listed == [
        {
            "build": "77",
            "name": "ip232.bin",
            "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content),
        }
    ]


async def test_devices_asking_at_once_share_one_fetch(
    cluster: Cluster, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    node = cluster.nodes[1]
    image, content = cluster.image("ip232.bin", CHUNK_BYTES * 3)
    assert await cluster.cli("firmware", "add", str(image), "--build", "5", "--type", "IP232") == 0
    async with pool.acquire() as connection:
        await InventoryRepository(connection).set_variable(
            "device_type", "IP232", "fw-prot", "5", False
        )
    certificate, key = cluster.pki.devices[DEVICE_A]
    poll = "/DRIVE/CF0/update/update.txt?sn=009033010203&hwid=IP232-01-02-03&PROT=1&BOOT=1"

    async def listed() -> bool:
        # The node names the file in the device's script once its list has it (no fetch yet).
        status, body, _ = await cluster.get(
            node, poll, options=("--cert", str(certificate), "--key", str(key))
        )
        # (A file not listed yet is named in a comment only, never in a command.)
        return status == 200 and any(
            line.startswith(b"mod cmd UP0 prot ") and b"/firm/5/ip232.bin" in line
            for line in body.splitlines()
        )

    await until(listed, timeout=10)
    assert not node.cached("5", "ip232.bin").exists()
    caplog.set_level(logging.INFO, logger="services.update.shared_firmware")
    path = "/DRIVE/CF0/update/firm/5/ip232.bin"
    results = await asyncio.gather(*(cluster.get(node, path) for _ in range(8)))
    assert [(status, body == content) for status, body, _ in results] == [(200, True)] * 8
    fetched = [r for r in caplog.records if r.getMessage().startswith("shared firmware: cached")]
    assert len(fetched) == 1, [r.getMessage() for r in fetched]
