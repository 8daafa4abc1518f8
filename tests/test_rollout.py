"""The certificate roll-out (protocol.md §9) end to end: a simulated device with a real key and
real signing requests, real TLS with the device's current certificate, real PostgreSQL, the real
openssl binary on what was issued; plus hostile uploads, refusals, errors and the CRL."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from services.core import pki
from services.core.config import CaSettings, ListenerSettings, Settings, UpdateSettings
from services.core.inventory import InventoryRepository, apply_inventory, read_inventory_file
from services.core.runner import Node, start_node
from services.core.tls import TlsConfigError
from services.serve import service_factories
from services.update.repository import RolloutRepository
from services.update.rollout import (
    QueryReport,
    RolloutInputError,
    after_query,
    needs_certificate,
    parse_query_report,
    parse_vardump,
)
from services.update.rollout import (
    RolloutState as State,
)
from tests.conftest import DEVICE_A, DEVICE_C, SessionPki
from tests.simulator import SimulatedDevice

MAC_A = "009033010203"
MAC_C = "009033010204"
FRONTEND_PUBLIC = "192.0.2.10"  # sb1 in config/inventory.example.toml
DEVICE_IP = "192.0.2.50"  # what the simulated device reports as #i
CA_NAME = "Hoster Device Certification Authority"


def openssl(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, arguments)], capture_output=True, text=True, timeout=60, check=False
    )


@dataclass
class Frontend:
    node: Node
    pool: asyncpg.Pool
    pki: SessionPki
    root: Path
    data_dir: Path

    @property
    def proven_base(self) -> str:
        return self.node.addresses["devices"]

    @property
    def claimed_base(self) -> str:
        return self.node.addresses["claimed"]

    def device(
        self, name: str = DEVICE_A, mac: str = MAC_A, device_type: str = "IP232"
    ) -> SimulatedDevice:
        return SimulatedDevice(
            mac=mac,
            hardware_id=name,
            device_type=device_type,
            url=f"{self.proven_base}/DRIVE/CF0/update/update.txt?sn=#m&hwid=#h&type=#t&ip=#i",
            ca=self.pki.ca,
            certificate=self.pki.devices[name],
            ip=DEVICE_IP,
            state_dir=self.data_dir / "device",
        )

    async def state(self, mac: str = MAC_A) -> State | None:
        statuses = await RolloutRepository(self.pool).statuses(mac=mac)
        return statuses[0].rollout


def make_provider_ca(directory: Path) -> tuple[Path, Path]:
    ca = pki.create_root_ca(country="DE", organization="Hoster", key_bits=2048)
    paths = (directory / "ca" / "root.pem", directory / "ca" / "root.key")
    pki.write_pem_files(ca, *paths)
    return paths


REPO_ROOT = Path(__file__).resolve().parent.parent


async def start_frontend(
    pool: asyncpg.Pool,
    session_pki: SessionPki,
    data_dir: Path,
    ca: CaSettings,
    *,
    trust_provider_root: bool = True,
) -> Node:
    repo_root = REPO_ROOT
    scripts = data_dir / "staging_scripts"
    if not scripts.exists():
        shutil.copytree(repo_root / "staging_scripts", scripts)
    settings = Settings(
        data_dir=data_dir,
        ca=ca,
        update=UpdateSettings(
            grace_seconds=0, scripts_dir=scripts, firmware_dir=data_dir / "firmware"
        ),
    )
    claimed = ListenerSettings(
        port=0,
        services=("update",),
        tls=True,
        certificate=session_pki.server_certificate,
        key=session_pki.server_key,
    )
    # The trust store of the device listener: the (imitated) innovaphone device CA bundle and
    # the provider RootCA, as listeners.*.client_ca lists them.
    listeners = {
        "devices": dataclasses.replace(
            claimed,
            request_client_certificate=True,
            client_ca=(session_pki.ca, data_dir / "ca" / "root.pem")
            if trust_provider_root
            else (session_pki.ca,),
        ),
        "claimed": claimed,
    }
    return await start_node(settings, pool, listeners, service_factories())


@pytest.fixture
async def frontend(
    pool: asyncpg.Pool, session_pki: SessionPki, tmp_path: Path
) -> AsyncIterator[Frontend]:
    repo_root = REPO_ROOT
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    root, _key = make_provider_ca(tmp_path)
    node = await start_frontend(pool, session_pki, tmp_path, CaSettings(rollout=True))
    yield Frontend(node, pool, session_pki, root, tmp_path)
    await node.stop()


def x509_lines(commands: list[str]) -> list[str]:
    return [c for c in commands if "X509" in c or "x509" in c]


async def poll_until_current(device: SimulatedDevice, frontend: Frontend, limit: int = 8) -> int:
    for number in range(1, limit + 1):
        result = await device.poll()
        assert result.status == 200, result.text
        state = await frontend.state(device.mac)
        if state is not None and state.state == "current":
            return number
    raise AssertionError(f"not current after {limit} polls: {await frontend.state(device.mac)}")


async def test_device_ends_with_a_provider_certificate(frontend: Frontend) -> None:
    device = frontend.device()
    polls = await poll_until_current(device, frontend)
    # query, create the request, fetch and sign, push + confirming query: four polls.
    assert polls == 4
    x509_uploads = [status for url, status in device.uploads if "/x509/" in url]
    # query, request error + request, confirming query
    assert x509_uploads == [200] * 4, device.uploads
    assert len(device.installed) == 1
    certificate_path = device.certificate[0] if device.certificate else None
    assert certificate_path is not None
    assert certificate_path.name.endswith("-provider.pem")

    verified = openssl("verify", "-x509_strict", "-CAfile", frontend.root, certificate_path)
    assert verified.returncode == 0, verified.stderr
    text = openssl("x509", "-in", certificate_path, "-noout", "-text").stdout
    assert "Subject: C = DE, O = Hoster, CN = IP232-01-02-03" in text
    assert f"Issuer: C = DE, O = Hoster, CN = {CA_NAME}" in text
    # The seed: DNS 1 / IP 1 = external (the Frontend for a device behind it), DNS 2 / IP 2 =
    # internal (what the device reports).
    assert (
        f"DNS:{FRONTEND_PUBLIC}, DNS:{DEVICE_IP}, IP Address:{FRONTEND_PUBLIC}, "
        f"IP Address:{DEVICE_IP}" in text
    )
    assert "Public-Key: (2048 bit)" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text

    state = await frontend.state()
    assert state is not None
    assert state.device_issuer == CA_NAME
    assert state.error is None
    assert state.device_not_after is not None
    row = await frontend.pool.fetchrow(
        "SELECT kind, source, device_mac, common_name FROM ca_certificates"
    )
    assert row is not None
    assert dict(row) == {
        "kind": "device",
        "source": "rollout",
        "device_mac": MAC_A,
        "common_name": DEVICE_A,
    }
    # The request and its key were cleaned up on the device.
    assert "X509/REQUEST" not in device.variables
    assert "X509/REQUESTKEY" not in device.variables

    # The next poll uses the new certificate, is proven by it, and the roll-out is quiet.
    result = await device.poll()
    assert result.status == 200
    assert "identity proven" in result.text
    assert x509_lines(result.commands) == []


async def test_the_walk_step_by_step(frontend: Frontend) -> None:
    device = frontend.device()
    first = await device.poll()
    query = [c for c in first.commands if c.startswith("mod cmd UP0 scfg ") and "X509" in c]
    assert len(query) == 1, query
    assert query[0].endswith(" ser nop /always mod%20cmd%20X509%20xml-info")
    assert "/x509/#m?mode=query&sn=#m&hwid=#h&id=certs" in query[0]
    assert (await frontend.state()).state == "requesting"  # type: ignore[union-attr]

    second = await device.poll()
    create = [c for c in second.commands if c.startswith("mod cmd X509 servercert-create")]
    assert create == [
        "mod cmd X509 servercert-create /cmd servercert-create /redirect /target device "
        "/type Signing%20request /key 2048-bit /signature SHA256 /dn-cn IP232-01-02-03 "
        f"/dn-o Hoster /dn-c DE /san-dns {FRONTEND_PUBLIC} /san-dns {DEVICE_IP} "
        f"/san-ip {FRONTEND_PUBLIC} /san-ip {DEVICE_IP}"
    ]
    assert (await frontend.state()).state == "fetching"  # type: ignore[union-attr]

    third = await device.poll()
    fetches = [c for c in third.commands if "mode=vardump" in c]
    assert [c.rsplit(" ", 1)[1] for c in fetches] == [
        "vars%20read%20X509%2FREQUESTERROR",
        "vars%20read%20X509%2FREQUEST",
    ]
    state = await frontend.state()
    assert state is not None
    assert state.state == "signed"
    assert len(state.chain_hex) == 2

    fourth = await device.poll()
    pushed = [c for c in fourth.commands if c.startswith("vars ")]
    assert [c.split()[:3] for c in pushed] == [
        ["vars", "create", "X509/REQUESTRESPONSE/00000"],
        ["vars", "create", "X509/REQUESTRESPONSE/00001"],
        ["vars", "del", "X509/REQUEST"],
        ["vars", "del", "X509/REQUESTKEY"],
    ]
    root_hex = x509.load_pem_x509_certificate(frontend.root.read_bytes())
    assert pushed[1].split()[4] == pki.certificate_to_hex_der(root_hex)
    assert (await frontend.state()).state == "current"  # type: ignore[union-attr]


async def test_roll_out_is_off_by_default_and_on_per_customer(
    pool: asyncpg.Pool, session_pki: SessionPki, tmp_path: Path
) -> None:
    repo_root = REPO_ROOT
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    root, _ = make_provider_ca(tmp_path)
    node = await start_frontend(pool, session_pki, tmp_path, CaSettings())
    try:
        frontend = Frontend(node, pool, session_pki, root, tmp_path)
        device = frontend.device()
        result = await device.poll()
        assert x509_lines(result.commands) == []
        assert await frontend.state() is None
        async with pool.acquire() as connection:
            await InventoryRepository(connection).set_variable(
                "customer", "Kuenkel00001", "cert-rollout", "on", False
            )
        result = await device.poll()
        assert len(x509_lines(result.commands)) == 1
        assert await frontend.state() is not None
    finally:
        await node.stop()


async def test_request_for_another_device_is_refused_and_never_signed(
    frontend: Frontend, caplog: pytest.LogCaptureFixture
) -> None:
    device = frontend.device()
    device.request_names = (DEVICE_C, (FRONTEND_PUBLIC,), (FRONTEND_PUBLIC,))
    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        for _ in range(3):
            await device.poll()
    assert [status for url, status in device.uploads if "/x509/" in url and status != 200] == [403]
    state = await frontend.state()
    assert state is not None
    assert state.state == "refused"
    assert state.error is not None
    assert DEVICE_C in state.error
    assert await frontend.pool.fetchval("SELECT count(*) FROM ca_certificates") == 0
    assert any("csr-refused" in record.getMessage() for record in caplog.records)
    # Stopped: later polls carry no roll-out command until an operator resets it.
    later = await device.poll()
    assert x509_lines(later.commands) == []
    assert "certificate roll-out stopped" in later.text
    assert await RolloutRepository(frontend.pool).reset(MAC_A)
    device.request_names = None
    assert await poll_until_current(device, frontend) == 4


async def test_device_request_error_stops_the_roll_out(frontend: Frontend) -> None:
    device = frontend.device()
    device.request_error = "key generation failed"
    for _ in range(3):
        await device.poll()
    state = await frontend.state()
    assert state is not None
    assert state.state == "error"
    assert state.error == "device: key generation failed"
    later = await device.poll()
    assert x509_lines(later.commands) == []
    assert await frontend.pool.fetchval("SELECT count(*) FROM ca_certificates") == 0


async def test_a_silent_device_ends_in_error(
    pool: asyncpg.Pool, session_pki: SessionPki, tmp_path: Path, repo_root: Path
) -> None:
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    root, _ = make_provider_ca(tmp_path)
    node = await start_frontend(
        pool, session_pki, tmp_path, CaSettings(rollout=True, max_attempts=2)
    )
    try:
        frontend = Frontend(node, pool, session_pki, root, tmp_path)
        url = f"{frontend.proven_base}/DRIVE/CF0/update/update.txt?sn={MAC_A}"
        context = ssl.create_default_context(cafile=str(session_pki.ca))
        context.load_cert_chain(*map(str, session_pki.devices[DEVICE_A]))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            for _ in range(3):  # polls whose scfg commands are never run
                async with session.get(url) as response:
                    assert response.status == 200
        state = await frontend.state()
        assert state is not None
        assert state.state == "error"
        assert state.error is not None
        assert "did not upload" in state.error
    finally:
        await node.stop()


async def test_claimed_devices_take_no_part(frontend: Frontend) -> None:
    device = frontend.device()
    device.url = device.url.replace(frontend.proven_base, frontend.claimed_base)
    device.certificate = None
    result = await device.poll()
    assert result.status == 200
    assert x509_lines(result.commands) == []
    assert await frontend.state() is None


# --- hostile uploads ---------------------------------------------------------------------------


async def _put(
    frontend: Frontend,
    path: str,
    body: bytes,
    *,
    certificate: tuple[Path, Path] | None,
    base: str | None = None,
    method: str = "PUT",
) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(frontend.pki.ca))
    if certificate is not None:
        context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    url = (base or frontend.proven_base) + path
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.request(method, url, data=body) as response,
    ):
        return response.status, await response.text()


QUERY = f"/DRIVE/CF0/update/x509/{MAC_A}?mode=query&sn={MAC_A}&id=certs"
FETCH = f"/DRIVE/CF0/update/x509/{MAC_A}?mode=vardump&sn={MAC_A}&var=X509/REQUEST"


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        (QUERY, b"<info><servercert>", 400, "not XML"),
        (QUERY, b"", 400, "empty upload"),
        (
            QUERY,
            b'<!DOCTYPE x [<!ENTITY a "aaaa">]><info>&a;</info>',
            400,
            "DTDs and entities",
        ),
        (QUERY, b"x" * (64 * 1024 + 1), 413, "larger than"),
        (
            QUERY,
            b'<info><servercert><certificate subject_cn="a" issuer_cn="b" not_after="soon"/>'
            b"</servercert></info>",
            400,
            "not understood",
        ),
        (QUERY.replace("id=certs", "id=other"), b"<info/>", 400, "id=certs"),
        (QUERY.replace("mode=query", "mode=shell"), b"<info/>", 400, "mode: query or vardump"),
        (FETCH.replace("X509/REQUEST", "TLS0/KEY"), b"x", 400, "var:"),
        ("/DRIVE/CF0/update/x509/009033aabbcc?mode=query&id=certs", b"<info/>", 403, "not this"),
    ],
)
async def test_hostile_uploads_get_a_precise_answer(
    frontend: Frontend, path: str, body: bytes, status: int, text: str
) -> None:
    await frontend.device().poll()  # the roll-out is now waiting for the query
    before = await frontend.state()
    got, answer = await _put(frontend, path, body, certificate=frontend.pki.devices[DEVICE_A])
    assert got == status, answer
    assert text in answer
    assert all(line.startswith("#") for line in answer.splitlines())
    assert await frontend.state() == before


async def test_malformed_request_uploads_are_refused(frontend: Frontend) -> None:
    device = frontend.device()
    await device.poll()
    await device.poll()  # the request is created; the roll-out waits for it
    certificate = frontend.pki.devices[DEVICE_A]
    for body, text in (
        (b"X509/REQUEST pb 3082zz", "not hex digits"),
        (b"X509/REQUEST pb 308", "not hex digits"),
        (b"X509/REQUEST pb 30820101", "not a DER PKCS#10 request"),
    ):
        status, answer = await _put(frontend, FETCH, body, certificate=certificate)
        assert (status, text in answer) == (400, True), answer
    state = await frontend.state()
    assert state is not None
    assert state.state == "fetching"
    assert await frontend.pool.fetchval("SELECT count(*) FROM ca_certificates") == 0


async def test_uploads_need_the_device_certificate(frontend: Frontend) -> None:
    await frontend.device().poll()
    status, answer = await _put(frontend, QUERY, b"<info/>", certificate=None)
    assert status == 403
    assert "proven by its certificate" in answer
    status, _ = await _put(
        frontend, QUERY, b"<info/>", certificate=None, base=frontend.claimed_base
    )
    assert status == 403
    # Another device's certificate for this device's path.
    other = f"/DRIVE/CF0/update/x509/{MAC_A}?mode=query&id=certs"
    status, answer = await _put(
        frontend, other, b"<info/>", certificate=frontend.pki.devices[DEVICE_C]
    )
    assert status == 403, answer
    status, answer = await _put(
        frontend, QUERY, b"", certificate=frontend.pki.devices[DEVICE_A], method="GET"
    )
    assert status == 405
    assert "write-only" in answer


async def test_upload_without_a_roll_out_is_a_conflict(frontend: Frontend) -> None:
    status, answer = await _put(
        frontend, QUERY, b"<info/>", certificate=frontend.pki.devices[DEVICE_A]
    )
    assert status == 409
    assert "no certificate roll-out" in answer


# --- CRL and CA files --------------------------------------------------------------------------


async def test_crl_lists_revoked_certificates(frontend: Frontend, tmp_path: Path) -> None:
    device = frontend.device()
    await poll_until_current(device, frontend)
    serial = await frontend.pool.fetchval("SELECT serial FROM ca_certificates")
    await frontend.pool.execute(
        "UPDATE ca_certificates SET revoked_at = now(), revocation_reason = 'key_compromise'"
    )
    context = ssl.create_default_context(cafile=str(frontend.pki.ca))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(frontend.claimed_base + "/DRIVE/CF0/update/ca.crl") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/pkix-crl"
        der = await response.read()
    crl_path = tmp_path / "ca.crl"
    crl_path.write_bytes(der)
    checked = openssl("crl", "-inform", "DER", "-in", crl_path, "-CAfile", frontend.root, "-noout")
    assert checked.returncode == 0
    assert "verify OK" in checked.stderr + checked.stdout
    text = openssl("crl", "-inform", "DER", "-in", crl_path, "-noout", "-text").stdout
    assert f"Serial Number: {serial.upper().zfill(len(serial) + len(serial) % 2)}" in text
    assert "Key Compromise" in text
    # openssl verify with the CRL refuses the revoked device certificate.
    assert device.certificate is not None
    pem_crl = tmp_path / "ca-crl.pem"
    openssl("crl", "-inform", "DER", "-in", crl_path, "-out", pem_crl)
    refused = openssl(
        "verify", "-crl_check", "-CAfile", frontend.root, "-CRLfile", pem_crl, device.certificate[0]
    )
    assert refused.returncode != 0
    assert "revoked" in refused.stdout + refused.stderr


async def test_ca_key_readable_by_others_refuses_to_start(
    pool: asyncpg.Pool, session_pki: SessionPki, tmp_path: Path
) -> None:
    _root, key = make_provider_ca(tmp_path)
    key.chmod(0o644)
    with pytest.raises(pki.PkiError, match=r"root.key: mode 0644 is readable by others; chmod 600"):
        await start_frontend(pool, session_pki, tmp_path, CaSettings())


async def test_roll_out_without_a_ca_refuses_to_start(
    pool: asyncpg.Pool, session_pki: SessionPki, tmp_path: Path
) -> None:
    # The listener trusts the provider RootCA's file, which does not exist either: the node
    # refuses to start, naming that file (TLS contexts are built first, before any fork).
    with pytest.raises(TlsConfigError, match=r"ca/root\.pem: no such file"):
        await start_frontend(pool, session_pki, tmp_path, CaSettings(rollout=True))
    # A listener that does not trust it: the roll-out itself says what it misses.
    with pytest.raises(pki.PkiError, match=r"ca\.rollout = true needs the RootCA"):
        await start_frontend(
            pool, session_pki, tmp_path, CaSettings(rollout=True), trust_provider_root=False
        )


# --- the decisions, without HTTP ---------------------------------------------------------------

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def report(issuer: str, not_after: datetime) -> QueryReport:
    xml = (
        f'<info><servercert><certificate subject_cn="{DEVICE_A}" issuer_cn="{issuer}" '
        f'not_before="2026-01-01 00:00:00" not_after="{not_after:%Y-%m-%d %H:%M:%S}"/>'
        f'<certificate subject_cn="{issuer}" issuer_cn="{issuer}" '
        f'not_before="2020-01-01T00:00:00Z" not_after="2040-01-01T00:00:00Z"/>'
        "</servercert></info>"
    )
    return parse_query_report(xml.encode())


@pytest.mark.parametrize(
    ("issuer", "days", "needed"),
    [
        (CA_NAME, 365, None),
        ("innovaphone Device Certification Authority", 365, "issued by"),
        (CA_NAME, -1, "expired"),
        (CA_NAME, 10, "within 30 days"),
    ],
)
def test_when_a_device_needs_a_certificate(issuer: str, days: int, needed: str | None) -> None:
    found = report(issuer, NOW + timedelta(days=days))
    assert found.certificates[0].subject_cn == DEVICE_A  # the leaf first
    reason = needs_certificate(found, ca_common_name=CA_NAME, renew_days=30, now=NOW)
    if needed is None:
        assert reason is None
    else:
        assert reason is not None
        assert needed in reason
    state = after_query(
        State(mac=MAC_A, state="querying"), found, ca_common_name=CA_NAME, renew_days=30, now=NOW
    )
    assert state.state == ("current" if needed is None else "requesting")


def test_parsing_device_uploads() -> None:
    empty = parse_query_report(b"<info><servercert/></info>")
    assert empty.certificates == ()
    assert needs_certificate(empty, ca_common_name=CA_NAME, renew_days=30, now=NOW)
    busy = parse_query_report(
        b"<?xml version='1.0'?><info><busy/><requests><request/></requests>"
        b"<request-error>no key</request-error></info>"
    )
    assert (busy.busy, busy.request_pending, busy.request_error) == (True, True, "no key")
    assert parse_vardump(b"X509/REQUEST pb 3082\r\n", "X509/REQUEST") == "3082"
    assert parse_vardump(b"vars create X509/REQUEST pb 3082\r\n", "X509/REQUEST") == "3082"
    assert parse_vardump(b"", "X509/REQUEST") is None
    assert parse_vardump(b"X509/REQUESTERROR p bad thing\n", "X509/REQUESTERROR") == "bad thing"
    with pytest.raises(RolloutInputError):
        parse_query_report(b"<info><servercert><certificate not_after='x'/></servercert></info>")


async def test_status_in_the_admin_api_and_the_cli(
    frontend: Frontend, database_url: str, tmp_path: Path
) -> None:
    from services.core.auth import AccountRepository, Role

    device = frontend.device()
    await poll_until_current(device, frontend)
    await AccountRepository(frontend.pool).add("ops", frozenset({Role.OPERATOR}), "ops-password")
    admin = ListenerSettings(
        port=0,
        services=("admin",),
        tls=True,
        certificate=frontend.pki.server_certificate,
        key=frontend.pki.server_key,
    )
    node = await start_node(Settings(), frontend.pool, {"admin": admin}, service_factories())
    try:
        base = node.addresses["admin"]
        context = ssl.create_default_context(cafile=str(frontend.pki.ca))
        token = base64.b64encode(b"ops:ops-password").decode()
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            headers={"Authorization": f"Basic {token}"},
        ) as session:
            async with session.get(f"{base}/api/v1/devices/00-90-33-01-02-03/certificate") as got:
                assert got.status == 200
                body = await got.json()
            assert body["rollout"]["state"] == "current"
            assert body["rollout"]["device_issuer"] == CA_NAME
            assert body["rollout"]["device_not_after"] is not None
            assert "chain_hex" not in body["rollout"]
            async with session.get(f"{base}/api/v1/certificates/rollouts") as got:
                listing = await got.json()
            states = {d["mac"]: (d["rollout"] or {}).get("state") for d in listing["devices"]}
            assert states[MAC_A] == "current"
            assert states[MAC_C] is None
            async with session.post(f"{base}/api/v1/devices/{MAC_A}/certificate/reset") as got:
                assert got.status == 202
            async with session.get(f"{base}/api/v1/devices/009033ffffff/certificate") as got:
                assert got.status == 404
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
            session.get(f"{base}/api/v1/certificates/rollouts") as got,
        ):
            assert got.status == 401
    finally:
        await node.stop()
    assert await frontend.state() is None

    await poll_until_current(device, frontend)
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.cli",
            "devices",
            "certificates",
            "--set",
            f'database.url="{database_url}"',
            "--set",
            f'data_dir="{tmp_path}"',
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith(MAC_A))
    assert "current" in row
    assert CA_NAME in row


async def test_a_retired_root_issues_nothing(frontend: Frontend) -> None:
    from services.ca.repository import CaRepository

    root = x509.load_pem_x509_certificate(frontend.root.read_bytes())
    repository = CaRepository(frontend.pool)
    await repository.record(
        root, ca_fingerprint=pki.certificate_fingerprint(root), kind="root", source="cli"
    )
    await repository.revoke(format(root.serial_number, "x"), "superseded")
    result = await frontend.device().poll()
    assert x509_lines(result.commands) == []
    assert "the RootCA was retired" in result.text
    assert await frontend.state() is None


async def test_an_expired_root_signs_nothing(
    pool: asyncpg.Pool, session_pki: SessionPki, tmp_path: Path
) -> None:
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(REPO_ROOT / "config" / "inventory.example.toml")
        )
    key = pki.generate_key("rsa", 2048)
    name = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Hoster"),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, CA_NAME),
        ]
    )
    now = datetime.now(UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=400))
        .not_valid_after(now - timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    root = tmp_path / "ca" / "root.pem"
    pki.write_pem_files(pki.IssuedCertificate(expired, key), root, tmp_path / "ca" / "root.key")
    node = await start_frontend(pool, session_pki, tmp_path, CaSettings(rollout=True))
    try:
        frontend = Frontend(node, pool, session_pki, root, tmp_path)
        device = frontend.device()
        for _ in range(3):
            await device.poll()
        state = await frontend.state()
        assert state is not None
        assert state.state == "error"
        assert state.error is not None
        assert "expired on" in state.error
        assert await pool.fetchval("SELECT count(*) FROM ca_certificates") == 0
        assert device.installed == []
    finally:
        await node.stop()
