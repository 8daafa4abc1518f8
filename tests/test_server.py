"""The listener machinery against real peers: TLS with client certificates (curl and Python ssl),
identity from certificate and URL, limits, slow clients, certificate reload, graceful stop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from services.core import identity
from services.core.config import DatabaseSettings, LimitSettings, ListenerSettings, Settings
from services.core.http import query_arguments
from services.core.resources import Resources
from services.core.runner import Node, start_node
from tests.conftest import DEVICE_A, DEVICE_B, SessionPki, until


def probe_app(_settings: Settings, _resources: Resources) -> web.Application:
    """A service that answers with the caller's device identity (what every device service uses)."""

    async def whoami(request: web.Request) -> web.Response:
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        found = identity.identify(peercert, query_arguments(request))
        return web.json_response(
            {"proof": found.proof.value, "mac": found.mac, "hardware_id": found.hardware_id}
        )

    async def slow(request: web.Request) -> web.Response:
        SLOW_STARTED.append(request.path)
        await asyncio.sleep(float(request.query.get("seconds", "0.5")))
        return web.Response(text="done")

    async def upload(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(text=str(len(body)))

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/slow", slow)
    app.router.add_put("/upload", upload)
    return app


FACTORIES = {"probe": probe_app}
SLOW_STARTED: list[str] = []  # one entry per /slow request the probe has begun to handle


def listeners(pki: SessionPki) -> dict[str, ListenerSettings]:
    return {
        "devices": ListenerSettings(
            port=0,
            services=("probe",),
            tls=True,
            certificate=pki.server_certificate,
            key=pki.server_key,
            request_client_certificate=True,
            client_ca=(pki.ca,),
            handshake_timeout=2.0,
        ),
        "claimed": ListenerSettings(
            port=0,
            services=("probe",),
            tls=True,
            certificate=pki.server_certificate,
            key=pki.server_key,
        ),
        "plain": ListenerSettings(port=0, services=("probe",), tls=False),
    }


SETTINGS = Settings(
    limits=LimitSettings(
        max_body_bytes=1024,
        max_query_bytes=256,
        max_header_bytes=2048,
        header_timeout=0.5,
        request_timeout=2.0,
    )
)


@pytest.fixture
async def node(pool: asyncpg.Pool, session_pki: SessionPki) -> AsyncIterator[Node]:
    running = await start_node(SETTINGS, pool, listeners(session_pki), FACTORIES)
    yield running
    await running.stop()


async def curl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "10",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def device_args(pki: SessionPki, name: str) -> list[str]:
    certificate, key = pki.devices[name]
    return ["--cacert", str(pki.ca), "--cert", str(certificate), "--key", str(key)]


async def test_curl_with_device_certificate_is_proven(node: Node, session_pki: SessionPki) -> None:
    url = node.addresses["devices"] + "/whoami"
    code, out, err = await curl(*device_args(session_pki, DEVICE_A), url)
    assert code == 0, err
    assert '"proof": "proven"' in out
    assert f'"hardware_id": "{DEVICE_A}"' in out


async def test_without_certificate_is_claimed_or_anonymous(
    node: Node, session_pki: SessionPki
) -> None:
    base = node.addresses["devices"]
    code, out, err = await curl(
        "--cacert", str(session_pki.ca), base + "/whoami?sn=00-90-33-01-02-03"
    )
    assert code == 0, err
    assert '"proof": "claimed"' in out
    assert '"mac": "009033010203"' in out
    code, out, _ = await curl("--cacert", str(session_pki.ca), base + "/whoami")
    assert '"proof": "anonymous"' in out


async def test_certificate_of_a_naming_b_is_refused(
    node: Node, session_pki: SessionPki, caplog: pytest.LogCaptureFixture
) -> None:
    url = node.addresses["devices"] + "/whoami?sn=00903300aabb"
    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        code, out, _ = await curl("-w", "%{http_code}", *device_args(session_pki, DEVICE_A), url)
    assert code == 0
    assert out.endswith("403")
    assert "certificate names IP232-01-02-03" in out
    lines = [r.getMessage() for r in caplog.records if r.name == "pbxfront.security"]
    assert any(
        "identity-conflict from 127.0.0.1" in line and "claimed=00903300aabb" in line
        for line in lines
    ), lines
    # The matching claim is fine.
    code, out, _ = await curl(
        *device_args(session_pki, DEVICE_B), node.addresses["devices"] + "/whoami?sn=0090330a0b0c"
    )
    assert '"proof": "proven"' in out


@pytest.mark.parametrize("which", ["foreign", "expired"])
async def test_bad_client_certificate_fails_handshake_and_server_goes_on(
    node: Node, session_pki: SessionPki, caplog: pytest.LogCaptureFixture, which: str
) -> None:
    certificate, key = (
        session_pki.foreign_device if which == "foreign" else session_pki.expired_device
    )
    url = node.addresses["devices"] + "/whoami"
    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        code, _, err = await curl(
            "--cacert", str(session_pki.ca), "--cert", str(certificate), "--key", str(key), url
        )
    assert code != 0, "the handshake should have failed"
    lines = [r.getMessage() for r in caplog.records if r.name == "pbxfront.security"]
    assert any("tls-handshake-failed from 127.0.0.1" in line for line in lines), lines
    # Others are still served.
    code, out, err = await curl(*device_args(session_pki, DEVICE_A), url)
    assert code == 0, err
    assert '"proof": "proven"' in out


async def test_listener_without_certificate_request_serves_claims(
    node: Node, session_pki: SessionPki
) -> None:
    url = node.addresses["claimed"] + "/whoami?hwid=IP232-01-02-03"
    # A foreign certificate is not even asked for here, so the handshake works.
    certificate, key = session_pki.foreign_device
    code, out, err = await curl(
        "--cacert", str(session_pki.ca), "--cert", str(certificate), "--key", str(key), url
    )
    assert code == 0, err
    assert '"proof": "claimed"' in out


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["-H", "X-Big: " + "x" * 3000], "431"),
        (["-H", "X-Big: " + "x" * 30000], "400"),  # beyond aiohttp's own line limit
        (["--data-binary", "x" * 2000, "-X", "PUT"], "413"),
    ],
)
async def test_limits(node: Node, args: list[str], status: str) -> None:
    url = (
        node.addresses["plain"] + "/upload"
        if "PUT" in args
        else node.addresses["plain"] + "/whoami"
    )
    code, out, err = await curl("-o", "/dev/null", "-w", "%{http_code}", *args, url)
    assert code == 0, err
    assert out == status


async def test_long_query_and_bad_utf8(node: Node) -> None:
    base = node.addresses["plain"]
    _, out, _ = await curl("-w", "%{http_code}", base + "/whoami?x=" + "a" * 300)
    assert out.endswith("414")
    _, out, _ = await curl("-w", "%{http_code}", base + "/whoami?sn=%ff%fe")
    assert out.endswith("400")
    assert "not valid UTF-8" in out
    _code, out, _ = await curl("-w", "%{http_code}", base + "/whoami?sn=not-a-mac%0d%0aX")
    assert out.endswith("400")
    assert "\\x0d\\x0a" in out  # control characters are escaped in the answer


async def test_chunked_body_over_limit_is_413(node: Node) -> None:
    async with aiohttp.ClientSession() as session:

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 512

        async with session.put(node.addresses["plain"] + "/upload", data=chunks()) as response:
            assert response.status == 413


async def test_slow_headers_are_cut_off(node: Node) -> None:
    host, port = node.addresses["plain"].removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /whoami HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=5)
    assert data == b""  # closed by the server without an answer
    writer.close()


async def test_slow_request_gets_408(node: Node) -> None:
    _code, out, _ = await curl("-w", "%{http_code}", node.addresses["plain"] + "/slow?seconds=5")
    assert out.endswith("408")


async def test_graceful_stop_finishes_requests_in_flight(
    pool: asyncpg.Pool, session_pki: SessionPki
) -> None:
    running = await start_node(SETTINGS, pool, listeners(session_pki), FACTORIES)
    url = running.addresses["plain"] + "/slow?seconds=0.5"
    async with aiohttp.ClientSession() as session:
        started = len(SLOW_STARTED)
        request = asyncio.create_task(session.get(url))
        await until(lambda: len(SLOW_STARTED) > started)
        await running.stop()
        response = await request
        assert response.status == 200
        assert await response.text() == "done"
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


async def test_certificate_reload_for_new_connections(
    pool: asyncpg.Pool, session_pki: SessionPki, tmp_path: Path
) -> None:
    from services.core import pki

    certificate = tmp_path / "server.pem"
    key = tmp_path / "server.key"
    shutil.copy(session_pki.server_certificate, certificate)
    shutil.copy(session_pki.server_key, key)
    key.chmod(0o600)
    config = {
        "tls": ListenerSettings(
            port=0, services=("probe",), tls=True, certificate=certificate, key=key
        )
    }
    running = await start_node(SETTINGS, pool, config, FACTORIES)
    try:
        host, port = running.addresses["tls"].removeprefix("https://").rsplit(":", 1)
        client = ssl.create_default_context(cafile=str(session_pki.ca))

        async def served_fingerprint() -> str:
            _reader, writer = await asyncio.open_connection(host, int(port), ssl=client)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            from cryptography import x509

            return pki.certificate_fingerprint(x509.load_der_x509_certificate(der))

        before = await served_fingerprint()
        # An open keep-alive connection made before the reload.
        reader, writer = await asyncio.open_connection(host, int(port), ssl=client)
        ca = pki.load_issued(session_pki.ca, session_pki.ca.with_name("ca.key"))
        renewed = pki.issue_certificate(ca, common_name="127.0.0.1", ip_addresses=["127.0.0.1"])
        pki.write_pem_files(renewed, certificate, key)
        running.reload_tls()
        after = await served_fingerprint()
        assert before != after
        assert after == pki.certificate_fingerprint(renewed.certificate)
        writer.write(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        assert answer.startswith(b"HTTP/1.1 200")
        writer.close()
        # A broken file keeps the old context.
        key.write_text("garbage")
        assert running.reload_tls() is False
        assert await served_fingerprint() == after
    finally:
        await running.stop()


async def test_healthz_and_database_outage(session_pki: SessionPki, tmp_path: Path) -> None:
    """PostgreSQL going away: 503 within 2 s, never a hang; back by itself when it returns."""
    from services.core import db

    embedded = db.EmbeddedPostgres(tmp_path)
    dsn = await asyncio.to_thread(embedded.start)
    pool = await db.create_pool(dsn, DatabaseSettings(connect_timeout=1.0))
    config = {"plain": ListenerSettings(port=0, services=("probe",), tls=False)}
    running = await start_node(SETTINGS, pool, config, FACTORIES)
    url = running.addresses["plain"] + "/healthz"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 200
            await asyncio.to_thread(embedded.stop)
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with session.get(url) as response:
                assert response.status == 503
            assert loop.time() - started < 2.5
            dsn_again = await asyncio.to_thread(embedded.start)
            assert dsn_again == dsn

            async def healthy() -> bool:
                async with session.get(url) as response:
                    return response.status == 200

            from tests.conftest import until

            await until(healthy, timeout=10)
    finally:
        await running.stop()
        await pool.close()
        await asyncio.to_thread(embedded.stop)


def test_identity_rules() -> None:
    assert identity.normalize_mac("00:90:33:0A:0B:0C") == "0090330a0b0c"
    assert identity.normalize_hardware_id("ip232s-01-02-03") == "IP232-01-02-03"
    with pytest.raises(identity.IdentityError):
        identity.normalize_mac("../../etc/passwd")
    cert = {"subject": ((("commonName", "IP232s-01-02-03"),),)}
    proven = identity.identify(cert, {"sn": "009033010203"})
    assert proven.proven
    assert proven.hardware_id == "IP232-01-02-03"
    with pytest.raises(identity.IdentityConflict):
        identity.identify(cert, {"hwid": "IP232-01-02-04"})
    # Unexpanded placeholders count as absent.
    assert identity.identify(None, {"sn": "#m", "hwid": "#h"}).proof is identity.Proof.ANONYMOUS
    with pytest.raises(identity.IdentityError):
        identity.parse_claimed({"sn": "009033010203", "hwid": "IP232-0a-0b-0c"})


def test_bind_socket_port_zero() -> None:
    from services.core.tls import bind_socket

    sock = bind_socket("127.0.0.1", 0, reuse_port=True)
    try:
        assert sock.getsockname()[1] > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        sock.close()


def test_listener_settings_are_frozen() -> None:
    listener = ListenerSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        listener.port = 1  # type: ignore[misc]
