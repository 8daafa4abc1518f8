"""The redirect service end to end: factory-new devices over plain HTTP and real TLS with client
certificates, the HMAC-signed provider API, ownership and transfers, bulk import, abuse limits,
the CLI, curl, and the walk from factory-new to in sync on the update service."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import secrets
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from yarl import URL

from services.core import errors
from services.core.config import (
    ListenerSettings,
    RedirectSettings,
    Settings,
    UpdateSettings,
)
from services.core.identity import DeviceIdentity, Proof
from services.core.inventory import apply_inventory, read_inventory_file
from services.core.ratelimit import AddressLimiter
from services.core.runner import Node
from services.core.tls import bind_socket
from services.core.unknown import REDIRECT, UnknownDeviceRepository
from services.redirect import cli as redirect_cli
from services.redirect.handover import (
    DeviceKey,
    DeviceTarget,
    check_facts,
    check_mapping,
    choose_mapping,
    device_key,
    from_version,
    handover_script,
    parse_import,
)
from services.redirect.repository import (
    ApiKeyRepository,
    Handover,
    HandoverRepository,
    MappingRepository,
    ProviderRepository,
)
from services.redirect.signing import (
    SCOPES,
    authorization,
    parse_authorization,
    sign,
    string_to_sign,
)
from services.update.repository import UpdateRepository
from tests.conftest import (
    DEVICE_A,
    SessionPki,
    run_wired_cli,
    start_services,
    tls_listener,
    until,
)
from tests.simulator import SimulatedDevice

MAC_A = "009033010203"  # DEVICE_A, IP232-01-02-03
MAC_C = "009033010204"  # DEVICE_C, IP222-01-02-04
GOLDEN = Path(__file__).parent / "golden" / "redirect" / "signatures.json"
STAGING_SB1 = "https://192.0.2.10/DRIVE/CF0/update/staging.txt?sn=#m&hwid=#h&type=#t&ip=#i"
STAGING_SB1_ENCODED = (
    "https%3A%2F%2F192.0.2.10%2FDRIVE%2FCF0%2Fupdate%2Fstaging.txt"
    "%3Fsn%3D%23m%26hwid%3D%23h%26type%3D%23t%26ip%3D%23i"
)


# --- a running redirect service ---------------------------------------------------------------


@dataclass
class Key:
    key_id: str
    secret: str
    provider: str


@dataclass
class Response:
    status: int
    text: str
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Redirect:
    node: Node
    pool: asyncpg.Pool
    pki: SessionPki
    session: aiohttp.ClientSession

    @property
    def http(self) -> str:
        return self.node.addresses["redirect"]

    @property
    def https(self) -> str:
        return self.node.addresses["redirect_tls"]

    @property
    def admin(self) -> str:
        return self.node.addresses["admin"]

    @property
    def providers(self) -> ProviderRepository:
        return ProviderRepository(self.pool)

    @property
    def keys(self) -> ApiKeyRepository:
        return ApiKeyRepository(self.pool)

    @property
    def mappings(self) -> MappingRepository:
        return MappingRepository(self.pool)

    @property
    def handovers(self) -> HandoverRepository:
        return HandoverRepository(self.pool)

    async def device(self, url: str, certificate: str | None = None) -> Response:
        """A GET as a device makes it: with its client certificate when given."""
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        if certificate is not None:
            context.load_cert_chain(*(str(p) for p in self.pki.devices[certificate]))
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
            session.get(URL(url, encoded=True)) as response,
        ):
            return Response(response.status, await response.text(), dict(response.headers))

    async def key(self, provider: str, scopes: tuple[str, ...] = SCOPES) -> Key:
        if await self.providers.get_provider(provider) is None:
            await self.providers.upsert_provider(provider, provider.title(), {})
        key_id, secret = await self.keys.add_key(provider, scopes, None)
        return Key(key_id, secret, provider)

    async def api(
        self,
        key: Key,
        method: str,
        target: str,
        body: bytes | str | dict[str, Any] | list[Any] | None = None,
        *,
        content_type: str | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
        base: str | None = None,
        secret: str | None = None,
    ) -> Response:
        """A signed provider API request (target = path and query, exactly as sent)."""
        if isinstance(body, dict | list):
            raw = json.dumps(body).encode()
            content_type = content_type or "application/json"
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = body or b""
        header = authorization(
            key.key_id,
            secret or key.secret,
            method,
            target,
            raw,
            int(time.time()) if timestamp is None else timestamp,
            nonce or secrets.token_urlsafe(16),
        )
        return await self.raw(method, target, raw, header, content_type=content_type, base=base)

    async def raw(
        self,
        method: str,
        target: str,
        body: bytes,
        header: str | None,
        *,
        content_type: str | None = None,
        base: str | None = None,
    ) -> Response:
        headers = {"Authorization": header} if header else {}
        # aiohttp warns about large raw bodies; a file-like one is streamed.
        data: bytes | io.BytesIO = io.BytesIO(body) if len(body) > 256 * 1024 else body
        if content_type:
            headers["Content-Type"] = content_type
        url = URL((base or self.admin) + target, encoded=True)
        async with self.session.request(method, url, data=data, headers=headers) as response:
            return Response(response.status, await response.text(), dict(response.headers))


def listeners(pki: SessionPki) -> dict[str, ListenerSettings]:
    """The device part on a plain and an mTLS listener, the provider API on the admin one."""
    return {
        "redirect": ListenerSettings(port=0, services=("redirect",), tls=False),
        "redirect_tls": tls_listener(pki, "redirect", client_certificates=True),
        "admin": tls_listener(pki, "admin"),
    }


@contextlib.asynccontextmanager
async def running(
    pool: asyncpg.Pool, pki: SessionPki, settings: Settings | None = None
) -> AsyncIterator[Redirect]:
    node = await start_services(settings or Settings(), pool, listeners(pki))
    context = ssl.create_default_context(cafile=str(pki.ca))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            yield Redirect(node, pool, pki, session)
    finally:
        await node.stop()


@pytest.fixture
async def inventory(pool: asyncpg.Pool, repo_root: Path) -> None:
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )


@pytest.fixture
async def redirect(
    pool: asyncpg.Pool, session_pki: SessionPki, inventory: None
) -> AsyncIterator[Redirect]:
    settings = Settings(redirect=RedirectSettings(extra_paths=("/provisioning/init",)))
    async with running(pool, session_pki, settings) as service:
        yield service


async def register(
    service: Redirect,
    mac: str,
    frontend: str | None = "sb1",
    *,
    provider: str = "local",
    url: str | None = None,
    facts: Mapping[str, str] | None = None,
) -> None:
    await service.mappings.register(
        provider, check_mapping(mac, frontend, url, dict(facts or {})), "test"
    )


# --- the device side ---------------------------------------------------------------------------


async def logged_handovers(repository: HandoverRepository, mac: str, count: int) -> list[Handover]:
    """The hand-over log of ``mac`` once it holds ``count`` lines (it is written in batches a
    moment after the answer)."""
    found: list[Handover] = []

    async def logged() -> bool:
        found[:] = await repository.handovers(mac)
        return len(found) >= count

    await until(logged, timeout=10)
    assert len(found) == count
    return found


async def test_handover_script_exact_lines(redirect: Redirect) -> None:
    await redirect.providers.upsert_provider("local", "this installation", {"r-site": "hq"})
    await register(redirect, MAC_A, facts={"type": "IP232"})
    response = await redirect.device(f"{redirect.http}/redirect.php?sn=00-90-33-01-02-03")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == (
        "# pbxfront redirect: hand-over of 009033010203\r\n"
        f"# to {STAGING_SB1}\r\n"
        "mod cmd UP1 setvar r-site hq\r\n"
        "mod cmd UP1 setvar r-type IP232\r\n"
        f"config add UP1 /url {STAGING_SB1_ENCODED}\r\n"
        "config add UP1 /no-dhcp\r\n"
        "config write\r\n"
        "config activate\r\n"
    )
    # The same from /init, from a configured alias, and with the argument's name in upper case.
    for path in ("/init?sn=009033010203", "/provisioning/init?SN=009033010203"):
        again = await redirect.device(redirect.http + path)
        assert again.text == response.text, path
    handovers = await logged_handovers(redirect.handovers, MAC_A, 3)
    assert {(h.proof, h.source_address, h.target) for h in handovers} == {
        ("claimed", "127.0.0.1", STAGING_SB1)
    }


async def test_mapping_fact_overrides_provider_fact_and_explicit_url(redirect: Redirect) -> None:
    await redirect.providers.upsert_provider("local", "x", {"r-type": "generic", "r-a": "1"})
    await register(
        redirect,
        MAC_A,
        None,
        url="https://fe.example:8443/custom/staging.txt?id=#m",
        facts={"r-type": "IP232"},
    )
    response = await redirect.device(f"{redirect.http}/redirect.php?mac={MAC_A}")
    lines = response.text.split("\r\n")
    assert "mod cmd UP1 setvar r-type IP232" in lines
    assert "mod cmd UP1 setvar r-a 1" in lines
    assert "mod cmd UP1 setvar r-type generic" not in lines
    # An explicit URL with a query is sent as it is (no arguments appended).
    assert (
        "config add UP1 /url https%3A%2F%2Ffe.example%3A8443%2Fcustom%2Fstaging.txt%3Fid%3D%23m"
        in lines
    )


async def test_proven_by_certificate_without_arguments(redirect: Redirect) -> None:
    await register(redirect, MAC_A)
    response = await redirect.device(f"{redirect.https}/init", certificate=DEVICE_A)
    assert response.status == 200, response.text
    assert f"config add UP1 /url {STAGING_SB1_ENCODED}" in response.text.split("\r\n")
    (handover,) = await logged_handovers(redirect.handovers, MAC_A, 1)
    assert handover.proof == "proven"
    # Without a certificate and without arguments nothing tells who asks.
    anonymous = await redirect.device(f"{redirect.https}/init")
    assert anonymous.status == 400
    assert "cannot tell which device" in anonymous.text
    assert all(line.startswith("#") for line in anonymous.text.splitlines())


async def test_certificate_contradicting_sn_is_403_and_logged(
    redirect: Redirect, caplog: pytest.LogCaptureFixture
) -> None:
    await register(redirect, MAC_A)
    await register(redirect, MAC_C)
    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        response = await redirect.device(
            f"{redirect.https}/redirect.php?sn={MAC_C}", certificate=DEVICE_A
        )
    assert response.status == 403
    assert response.text.startswith(f"# certificate names {DEVICE_A} but the request claims")
    assert "config add" not in response.text
    assert any(
        "identity-conflict" in r.getMessage() and MAC_C in r.getMessage() for r in caplog.records
    )
    assert await redirect.handovers.handovers(MAC_C) == []


async def test_hardware_id_inside_ver(redirect: Redirect) -> None:
    await register(redirect, MAC_A)
    ver = "13r2 sr7 IP232[130000], Bootcode[140], HW[IP232-01-02-03]"
    response = await redirect.device(f"{redirect.http}/init?ver={ver.replace(' ', '%20')}")
    assert response.status == 200, response.text
    assert "config add UP1 /no-dhcp" in response.text
    # A ver with nothing that names the device: the device cannot be identified.
    plain = "7.00 dvl-sr1 IP6000[07-60600.03], Bootcode[145], HW[1]"
    unknown = await redirect.device(f"{redirect.http}/init?ver={plain.replace(' ', '%20')}")
    assert unknown.status == 400


async def test_unknown_device_is_404_and_recorded(redirect: Redirect) -> None:
    for _ in range(2):
        response = await redirect.device(f"{redirect.http}/redirect.php?sn=0090330a0b0c&type=IP222")
        assert response.status == 404
        assert response.text == (
            "# pbxfront redirect: device 0090330a0b0c is not registered here\r\n"
        )
    (unknown,) = await UnknownDeviceRepository(redirect.pool).sightings(REDIRECT)
    assert (unknown.mac, unknown.device_type, unknown.polls, unknown.source_address) == (
        "0090330a0b0c",
        "IP222",
        2,
        "127.0.0.1",
    )
    assert unknown.first_seen <= unknown.last_seen
    # A provider claims it: it is no longer unknown, and the next request gets its hand-over.
    await register(redirect, "0090330a0b0c")
    assert await UnknownDeviceRepository(redirect.pool).sightings(REDIRECT) == []
    claimed = await redirect.device(f"{redirect.http}/redirect.php?sn=0090330a0b0c")
    assert claimed.status == 200


async def test_unusable_mapping_looks_like_an_unknown_device(
    redirect: Redirect, caplog: pytest.LogCaptureFixture
) -> None:
    async with redirect.pool.acquire() as connection:
        # A mapping whose Frontend left the inventory (no foreign key, by design).
        await connection.execute(
            "INSERT INTO redirect_mappings (mac, provider, frontend) VALUES ($1, 'local', 'gone')",
            MAC_A,
        )
    with caplog.at_level(logging.ERROR):
        foreign = await redirect.device(f"{redirect.http}/redirect.php?sn={MAC_A}")
    unknown = await redirect.device(f"{redirect.http}/redirect.php?sn={MAC_C}")
    assert foreign.status == unknown.status == 404
    assert foreign.text.replace(MAC_A, "X") == unknown.text.replace(MAC_C, "X")
    assert any("Frontend gone" in r.getMessage() for r in caplog.records)


async def test_unknown_lookups_are_rate_limited_per_address(
    pool: asyncpg.Pool, session_pki: SessionPki, inventory: None
) -> None:
    settings = Settings(redirect=RedirectSettings(unknown_burst=3, unknown_per_second=0.01))
    async with running(pool, session_pki, settings) as service:
        await register(service, MAC_A)
        known = f"{service.http}/redirect.php?sn={MAC_A}"
        # Registered devices never spend tokens.
        for _ in range(10):
            assert (await service.device(known)).status == 200
        for number in range(3):
            stranger = f"{service.http}/redirect.php?sn=0090330000{number:02d}"
            assert (await service.device(stranger)).status == 404
        limited = await service.device(f"{service.http}/redirect.php?sn=009033000099")
        assert limited.status == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert all(line.startswith("#") for line in limited.text.splitlines())
        # Out of tokens, a registered device is refused the same way: nothing to learn.
        refused = await service.device(known)
        assert (refused.status, refused.text) == (429, limited.text)
        assert len(await UnknownDeviceRepository(service.pool).sightings(REDIRECT)) == 3


def test_limiter_refills_and_counts_ipv6_per_64() -> None:
    now = [0.0]
    limiter = AddressLimiter(2, 0.5, clock=lambda: now[0])
    for _ in range(2):
        assert limiter.allows("2001:db8::1")
        limiter.spend("2001:db8::1")
    assert not limiter.allows("2001:db8::ffff")  # same /64
    assert limiter.allows("2001:db8:0:1::1")
    assert limiter.allows("192.0.2.1")
    assert limiter.retry_after("2001:db8::1") == 2
    now[0] = 2.0
    assert limiter.allows("2001:db8::1")


def test_identification_from_ver_is_lenient() -> None:
    assert from_version("13r2 sr7 IP232[130000], Bootcode[140], HW[IP232-01-02-03]") == (
        None,
        "IP232-01-02-03",
        "IP232",
    )
    assert from_version("V10 IP222s[10.1], HW[00:90:33:01:02:04]") == (MAC_C, None, "IP222S")
    assert from_version("7.00 dvl-sr1 IP6000[07-60600.03], Bootcode[145], HW[1]") == (
        None,
        None,
        "IP6000",
    )
    assert from_version(None) == (None, None, None)
    identity = DeviceIdentity(Proof.ANONYMOUS)
    key = device_key(identity, "x IP232[1] HW[ip232s-01-02-03]")
    assert key == DeviceKey(Proof.CLAIMED, None, "IP232-01-02-03", "IP232")


def _target(mac: str) -> DeviceTarget:
    return DeviceTarget(mac, "p", "sb1", None, {}, {}, "192.0.2.10", 1)


def test_hardware_id_prefers_innovaphone_oui_and_refuses_ambiguity() -> None:
    key = DeviceKey(Proof.PROVEN, None, "IP232-01-02-03", "IP232")
    ours, other, third = _target(MAC_A), _target("aabbcc010203"), _target("ddeeff010203")
    assert choose_mapping([other, ours], key) == ours
    assert choose_mapping([other], key) == other
    assert choose_mapping([other, third], key) is None


def test_handover_script_is_crlf_and_comments_cannot_break_lines() -> None:
    script = handover_script(MAC_A, "https://fe/x?sn=#m\r\nconfig reset", {})
    assert "\r\nconfig reset" not in script
    assert script.endswith("config activate\r\n")


# --- the provider API: signatures ---------------------------------------------------------------


def golden_vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(GOLDEN.read_text("utf-8"))["vectors"]
    return vectors


@pytest.mark.parametrize("vector", golden_vectors(), ids=lambda v: str(v["name"]))
def test_signature_golden_vectors(vector: dict[str, Any]) -> None:
    body = vector["body"].encode("utf-8")
    arguments = (
        vector["key_id"],
        vector["timestamp"],
        vector["nonce"],
        vector["method"],
        vector["target"],
        body,
    )
    assert string_to_sign(*arguments) == vector["string_to_sign"]
    assert sign(vector["secret"], *arguments) == vector["signature"]
    assert (
        authorization(
            vector["key_id"],
            vector["secret"],
            vector["method"],
            vector["target"],
            body,
            vector["timestamp"],
            vector["nonce"],
        )
        == vector["authorization"]
    )
    parsed = parse_authorization(vector["authorization"])
    assert (parsed.key_id, parsed.timestamp, parsed.nonce, parsed.signature) == (
        vector["key_id"],
        vector["timestamp"],
        vector["nonce"],
        vector["signature"],
    )
    # An independent implementation agrees: openssl over the documented string.
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", vector["secret"], "-r"],
        input=vector["string_to_sign"].encode("utf-8"),
        capture_output=True,
        check=True,
    ).stdout.split()[0]
    assert digest.decode() == vector["signature"]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "a signed request is required"),
        ("Basic YWRtaW46eA==", "must use PBXFRONT-HMAC-SHA256"),
        ("PBXFRONT-HMAC-SHA256 KeyId=rk_0011223344556677, Timestamp=1", "Nonce is missing"),
        (
            "PBXFRONT-HMAC-SHA256 KeyId=admin, Timestamp=1, Nonce=0123456789abcdef, Signature=00",
            "KeyId is not a key id",
        ),
    ],
)
async def test_unsigned_or_malformed_is_401(
    redirect: Redirect, header: str | None, reason: str
) -> None:
    response = await redirect.raw("GET", "/api/v1/redirect/whoami", b"", header)
    assert response.status == 401
    assert reason in response.json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("PBXFRONT-HMAC-SHA256")


async def test_golden_request_is_refused_for_its_old_timestamp(redirect: Redirect) -> None:
    vector = golden_vectors()[1]
    response = await redirect.raw(
        vector["method"],
        vector["target"],
        vector["body"].encode(),
        vector["authorization"],
        content_type="application/json",
    )
    assert response.status == 401
    assert "timestamp 1700000123 is more than 300 s away" in response.json()["error"]


async def test_signed_requests_expired_replayed_tampered(
    redirect: Redirect, caplog: pytest.LogCaptureFixture
) -> None:
    key = await redirect.key("acme")
    ok = await redirect.api(key, "GET", "/api/v1/redirect/whoami")
    assert ok.status == 200
    assert ok.json() == {"key": key.key_id, "provider": "acme", "scopes": sorted(SCOPES)}
    now = int(time.time())
    assert (
        await redirect.api(key, "GET", "/api/v1/redirect/whoami", timestamp=now - 250)
    ).status == 200
    for stale in (now - 400, now + 400):
        response = await redirect.api(key, "GET", "/api/v1/redirect/whoami", timestamp=stale)
        assert response.status == 401
        assert "away from the server's clock" in response.json()["error"]
    # The same signed request twice: the nonce is refused the second time.
    header = authorization(
        key.key_id, key.secret, "GET", "/api/v1/redirect/whoami", b"", now, "replay-nonce-00001"
    )
    first = await redirect.raw("GET", "/api/v1/redirect/whoami", b"", header)
    assert first.status == 200
    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        second = await redirect.raw("GET", "/api/v1/redirect/whoami", b"", header)
    assert second.status == 401
    assert "nonce already used" in second.json()["error"]
    assert any("auth-failed" in r.getMessage() for r in caplog.records)
    # A body other than the one signed, a wrong secret, a path other than the one signed.
    body = json.dumps({"frontend": "sb1"}).encode()
    signed_header = authorization(
        key.key_id, key.secret, "PUT", f"/api/v1/redirect/devices/{MAC_A}", body, now, "n" * 16
    )
    tampered = await redirect.raw(
        "PUT",
        f"/api/v1/redirect/devices/{MAC_A}",
        body.replace(b"sb1", b"sb2"),
        signed_header,
        content_type="application/json",
    )
    assert tampered.status == 401
    elsewhere = await redirect.raw(
        "PUT",
        f"/api/v1/redirect/devices/{MAC_C}",
        body,
        signed_header.replace("n" * 16, "m" * 16),
        content_type="application/json",
    )
    assert elsewhere.status == 401
    wrong = await redirect.api(key, "GET", "/api/v1/redirect/whoami", secret="rs_wrong")
    assert wrong.status == 401
    assert await redirect.mappings.get(MAC_A) is None
    # A revoked key is refused.
    assert await redirect.keys.revoke_key(key.key_id)
    assert (await redirect.api(key, "GET", "/api/v1/redirect/whoami")).status == 401


async def test_nonce_is_refused_on_another_node(
    redirect: Redirect, pool: asyncpg.Pool, session_pki: SessionPki
) -> None:
    key = await redirect.key("acme")
    header = authorization(
        key.key_id,
        key.secret,
        "GET",
        "/api/v1/redirect/whoami",
        b"",
        int(time.time()),
        "cross-node-nonce-1",
    )
    assert (await redirect.raw("GET", "/api/v1/redirect/whoami", b"", header)).status == 200
    async with running(pool, session_pki) as other:
        replay = await other.raw("GET", "/api/v1/redirect/whoami", b"", header)
    assert replay.status == 401


async def test_missing_scope_is_403_naming_it(redirect: Redirect) -> None:
    reader = await redirect.key("acme", ("redirect:read",))
    response = await redirect.api(
        reader, "PUT", f"/api/v1/redirect/devices/{MAC_A}", {"frontend": "sb1"}
    )
    assert response.status == 403
    assert response.json()["error"] == "this key lacks the scope redirect:write"
    token = await redirect.api(reader, "POST", f"/api/v1/redirect/devices/{MAC_A}/transfer-token")
    assert token.status == 403
    assert "redirect:transfer" in token.json()["error"]
    assert (await redirect.api(reader, "GET", "/api/v1/redirect/devices")).status == 200
    document = await redirect.raw("GET", "/api/v1/redirect/openapi.json", b"", None)
    put = document.json()["paths"]["/api/v1/redirect/devices/{device}"]["put"]
    assert put["security"] == [{"hmac": []}]
    assert put["responses"]["403"]["description"] == "needs scope: redirect:write"


# --- the provider API: mappings ------------------------------------------------------------------


async def test_register_get_move_deregister(redirect: Redirect) -> None:
    key = await redirect.key("acme")
    device = "/api/v1/redirect/devices/00-90-33-01-02-03"
    created = await redirect.api(
        key, "PUT", device, {"frontend": "sb1", "facts": {"type": "IP232"}}
    )
    assert created.status == 201, created.text
    assert created.json()["result"] == "created"
    assert created.json()["target"] == STAGING_SB1
    assert created.json()["facts"] == {"r-type": "IP232"}
    same = await redirect.api(key, "PUT", device, {"frontend": "sb1", "facts": {"r-type": "IP232"}})
    assert (same.status, same.json()["result"]) == (200, "unchanged")
    got = await redirect.api(key, "GET", f"/api/v1/redirect/devices/{MAC_A}")
    assert got.json()["provider"] == "acme"
    moved = await redirect.api(
        key, "POST", device + "/move", {"url": "https://fe2.example/DRIVE/CF0/update/staging.txt"}
    )
    assert moved.status == 200
    assert moved.json()["target"].startswith("https://fe2.example/DRIVE/CF0/update/staging.txt?sn=")
    assert moved.json()["facts"] == {"r-type": "IP232"}
    listing = await redirect.api(key, "GET", "/api/v1/redirect/devices?limit=10")
    assert [d["mac"] for d in listing.json()["devices"]] == [MAC_A]
    bad = await redirect.api(key, "PUT", device, {"frontend": "sb9"})
    assert bad.status == 422
    assert "no Frontend sb9" in bad.json()["error"]
    invalid = await redirect.api(key, "PUT", "/api/v1/redirect/devices/not-a-mac", {})
    assert invalid.status == 400
    assert (await redirect.api(key, "DELETE", device)).status == 204
    assert (await redirect.api(key, "GET", device)).status == 404
    history = await redirect.mappings.history(MAC_A)
    assert [(h.action, h.provider, h.actor) for h in history] == [
        ("register", "acme", f"key:{key.key_id}"),
        ("move", "acme", f"key:{key.key_id}"),
        ("deregister", "acme", f"key:{key.key_id}"),
    ]
    # The history outlives the mapping, for its provider too.
    own = await redirect.api(key, "GET", device + "/history")
    assert [h["action"] for h in own.json()["history"]] == ["register", "move", "deregister"]


async def test_ownership_conflict_and_foreign_devices_look_unknown(redirect: Redirect) -> None:
    acme = await redirect.key("acme")
    other = await redirect.key("other")
    device = f"/api/v1/redirect/devices/{MAC_A}"
    assert (await redirect.api(acme, "PUT", device, {"frontend": "sb1"})).status == 201
    taken = await redirect.api(other, "PUT", device, {"url": "https://evil.example/x"})
    assert taken.status == 409
    assert taken.json()["error"].startswith("owned_by_other_provider: ")
    foreign = await redirect.api(other, "GET", device)
    unknown = await redirect.api(other, "GET", f"/api/v1/redirect/devices/{MAC_C}")
    assert foreign.status == unknown.status == 404
    assert foreign.json()["error"].replace(MAC_A, "X") == unknown.json()["error"].replace(
        MAC_C, "X"
    )
    for method, path in (
        ("DELETE", device),
        ("GET", device + "/history"),
        ("POST", device + "/transfer-token"),
    ):
        assert (await redirect.api(other, method, path)).status == 404, (method, path)
    moved = await redirect.api(other, "POST", device + "/move", {"frontend": "sb1"})
    assert moved.status == 404
    stored = await redirect.mappings.get(MAC_A)
    assert stored is not None
    assert (stored.provider, stored.url) == ("acme", None)


async def test_transfer_needs_a_token_from_the_owner(redirect: Redirect) -> None:
    acme = await redirect.key("acme")
    other = await redirect.key("other")
    third = await redirect.key("third")
    device = f"/api/v1/redirect/devices/{MAC_A}"
    assert (await redirect.api(acme, "PUT", device, {"frontend": "sb1"})).status == 201
    wanted = {"url": "https://other.example/DRIVE/CF0/update/staging.txt"}
    forged = await redirect.api(other, "PUT", device, {**wanted, "transfer_token": "rt_forged"})
    assert forged.status == 409
    issued = await redirect.api(acme, "POST", device + "/transfer-token", {"to": "other"})
    assert issued.status == 201, issued.text
    token = issued.json()["token"]
    assert token.startswith("rt_")
    # Bound to "other": a third provider cannot use it.
    stolen = await redirect.api(third, "PUT", device, {**wanted, "transfer_token": token})
    assert stolen.status == 409
    taken = await redirect.api(other, "PUT", device, {**wanted, "transfer_token": token})
    assert taken.status == 201, taken.text
    assert (taken.json()["result"], taken.json()["provider"]) == ("transferred", "other")
    # The old owner has lost it; the token was single use.
    assert (await redirect.api(acme, "GET", device)).status == 404
    back = await redirect.api(acme, "PUT", device, {"frontend": "sb1", "transfer_token": token})
    assert back.status == 409
    history = await redirect.mappings.history(MAC_A)
    assert [(h.action, h.provider, h.previous_provider) for h in history] == [
        ("register", "acme", None),
        ("transfer", "other", "acme"),
    ]
    # Each provider sees the changes made while it owned the device, never the other's targets.
    mine = await redirect.api(other, "GET", device + "/history")
    assert [h["action"] for h in mine.json()["history"]] == ["transfer"]
    theirs = await redirect.api(acme, "GET", device + "/history")
    assert "other.example" not in theirs.text
    # The device now goes to the new owner's Frontend.
    response = await redirect.device(f"{redirect.http}/redirect.php?sn={MAC_A}")
    assert "other.example" in response.text


async def test_expired_transfer_token_is_refused(redirect: Redirect) -> None:
    await register(redirect, MAC_A, provider="local")
    await redirect.providers.upsert_provider("acme", "Acme", {})
    issued = await redirect.mappings.issue_transfer_token(MAC_A, None, None, 60)
    assert issued is not None
    token, _ = issued
    async with redirect.pool.acquire() as connection:
        await connection.execute(
            "UPDATE redirect_transfer_tokens SET expires_at = now() - interval '1 second'"
        )
    with pytest.raises(errors.Conflict, match="owned_by_other_provider"):
        await redirect.mappings.register("acme", check_mapping(MAC_A, "sb1"), "test", token)
    assert await redirect.keys.purge_expired() == 1


# --- bulk import ---------------------------------------------------------------------------------


async def test_bulk_import_csv_per_row_results_and_idempotence(redirect: Redirect) -> None:
    key = await redirect.key("acme")
    other = await redirect.key("other")
    assert (
        await redirect.api(other, "PUT", f"/api/v1/redirect/devices/{MAC_C}", {"frontend": "sb1"})
    ).status == 201
    csv_text = (
        "\ufeffMAC;Frontend;r-type;facts\n"
        "00-90-33-01-02-03;sb1;IP232;r-site=hq\n"
        "not-a-mac;sb1;;\n"
        "009033010203;sb1;IP232;\n"
        f"{MAC_C};sb1;;\n"
        "0090330a0b0c;sb9;;\n"
        "\n"
        "0090330a0b0d;;;\n"
        "0090330a0b0e;sb1;IP 222;\n"
        "0090330a0b0f;sb1;;r-x\n"
    )
    response = await redirect.api(
        key, "POST", "/api/v1/redirect/import", csv_text, content_type="text/csv"
    )
    assert response.status == 200, response.text
    data = response.json()
    assert (data["rows"], data["created"], data["error"]) == (8, 1, 7)
    results = {r["row"]: r for r in data["results"]}
    assert results[1]["result"] == "created"
    assert results[2]["error"] == "invalid"
    assert "not a MAC address" in results[2]["message"]
    assert results[3]["error"] == "duplicate"
    assert results[3]["message"] == "same device as row 1"
    assert results[4]["error"] == "owned_by_other_provider"
    assert results[5]["error"] == "unknown_frontend"
    assert results[6]["error"] == "invalid"
    assert "a Frontend id or a url" in results[6]["message"]
    assert results[7]["error"] == "invalid"
    assert "without spaces" in results[7]["message"]
    assert results[8]["error"] == "invalid"
    assert "expected name=value" in results[8]["message"]
    stored = await redirect.mappings.get(MAC_A)
    assert stored is not None
    assert dict(stored.facts) == {"r-site": "hq", "r-type": "IP232"}
    # Running the same import again changes nothing.
    again = await redirect.api(
        key, "POST", "/api/v1/redirect/import", csv_text, content_type="text/csv"
    )
    assert (again.json()["unchanged"], again.json()["created"], again.json()["updated"]) == (
        1,
        0,
        0,
    )
    assert len(await redirect.mappings.history(MAC_A)) == 1
    # JSON, and an update of the row imported before.
    rows = {"devices": [{"sn": MAC_A, "url": "https://x.example/s.txt"}, {"mac": 5}, "x"]}
    updated = await redirect.api(key, "POST", "/api/v1/redirect/import", rows)
    assert [r["result"] for r in updated.json()["results"]] == ["updated", "error", "error"]
    assert [h.action for h in await redirect.mappings.history(MAC_A)] == ["register", "update"]


async def test_bulk_import_of_the_maximum_and_413_beyond(redirect: Redirect) -> None:
    key = await redirect.key("acme")
    limit = RedirectSettings().import_max_rows
    assert limit == 50_000
    lines = ["mac,frontend"] + [f"0090{n:08x},sb1" for n in range(limit)]
    started = time.monotonic()
    response = await redirect.api(
        key, "POST", "/api/v1/redirect/import", "\n".join(lines) + "\n", content_type="text/csv"
    )
    assert response.status == 200, response.text[:300]
    assert response.json()["created"] == limit
    assert len(response.json()["results"]) == limit
    assert time.monotonic() - started < 60
    async with redirect.pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM redirect_mappings") == limit
        assert await connection.fetchval("SELECT count(*) FROM redirect_history") == limit
    over = "\n".join([*lines, "0090ffffffff,sb1"]) + "\n"
    too_many = await redirect.api(
        key, "POST", "/api/v1/redirect/import", over, content_type="text/csv"
    )
    assert too_many.status == 413
    assert "more than 50000 rows" in too_many.json()["error"]
    as_json = {"devices": [{"mac": f"0091{n:08x}", "frontend": "sb1"} for n in range(limit + 1)]}
    assert (await redirect.api(key, "POST", "/api/v1/redirect/import", as_json)).status == 413


def test_fact_values_are_one_word_of_one_line() -> None:
    assert check_facts({"site": "M\u00fcnchen"}) == {"r-site": "M\u00fcnchen"}
    for bad in ("two words", "line\u2028break", "", "x" * 201):
        with pytest.raises(errors.Invalid, match="without spaces"):
            check_facts({"r-site": bad})
    with pytest.raises(errors.Invalid, match="not a fact name"):
        check_facts({"r-": "x"})


def test_import_formats() -> None:
    tab = parse_import(b"sn\tfrontend\n009033010203\tsb1\n", "", 10)
    assert tab[0].mapping is not None
    assert tab[0].mapping.frontend == "sb1"
    with pytest.raises(errors.Invalid, match="column 'colour' is unknown"):
        parse_import(b"mac,colour\n009033010203,red\n", "text/csv", 10)
    with pytest.raises(errors.Invalid, match="header row with a mac"):
        parse_import(b"frontend\nsb1\n", "text/csv", 10)
    with pytest.raises(errors.Invalid, match="not UTF-8"):
        parse_import(b"mac\n\xff\n", "text/csv", 10)
    with pytest.raises(errors.Invalid, match="not JSON"):
        parse_import(b"[1,", "application/json", 10)
    short = parse_import(b"mac,frontend\n009033010203\n", "text/csv", 10)
    assert short[0].problem == "has 1 fields, the header 2"


# --- the operator's CLI --------------------------------------------------------------------------


def run_cli(database_url: str, *argv: str) -> int:
    return run_wired_cli(redirect_cli.register, database_url, *argv)


async def test_cli(
    redirect: Redirect,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def cli(*argv: str) -> tuple[int, str]:
        status = await asyncio.to_thread(run_cli, database_url, "redirect", *argv)
        return status, capsys.readouterr().out

    status, out = await cli(
        "register", "00-90-33-01-02-03", "--frontend", "sb1", "--fact", "r-type=IP232"
    )
    assert status == 0, out
    assert out == f"{MAC_A}: created for provider local -> {STAGING_SB1}\n"
    status, out = await cli("providers", "add", "acme", "--name", "Acme Telecom")
    assert (status, out) == (0, "provider acme added\n")
    status, out = await cli("register", MAC_A, "--frontend", "sb1", "--provider", "acme")
    assert status == 2
    assert "owned_by_other_provider" in out
    status, out = await cli("transfer-token", MAC_A, "--to", "acme")
    assert status == 0
    token_file = tmp_path / "token"
    token_file.write_text(out.strip() + "\n")
    status, out = await cli(
        "register", MAC_A, "--url", "https://acme.example/s.txt", "--provider", "acme",
        "--transfer-token-file", str(token_file),
    )  # fmt: skip
    assert status == 0, out
    assert "transferred for provider acme" in out
    status, out = await cli("show", MAC_A)
    assert "provider acme" in out
    assert "transfer" in out
    assert "register" in out
    status, out = await cli("list", "--json")
    assert [m["mac"] for m in json.loads(out)] == [MAC_A]
    imported = tmp_path / "devices.csv"
    imported.write_text("mac,frontend\n009033010204,sb1\nbad,sb1\n")
    status, out = await cli("import", str(imported))
    assert status == 1
    assert "row 2: bad: invalid" in out
    assert "2 rows: 1 created, 0 updated, 0 unchanged, 1 error" in out
    status, out = await cli("keys", "add", "acme", "--scope", "redirect:read")
    assert status == 0
    key_id = out.split("key id: ")[1].split()[0]
    secret = out.split("secret: ")[1].split()[0]
    key = Key(key_id, secret, "acme")
    assert (await redirect.api(key, "GET", "/api/v1/redirect/whoami")).status == 200
    status, out = await cli("keys", "list")
    assert key_id in out
    assert secret not in out
    status, out = await cli("keys", "revoke", key_id)
    assert status == 0
    assert (await redirect.api(key, "GET", "/api/v1/redirect/whoami")).status == 401
    status, out = await cli("keys", "add", "acme", "--scope", "redirect:everything")
    assert status == 2
    assert "unknown scope" in out
    await redirect.device(f"{redirect.http}/redirect.php?sn=0090330a0b0c")
    status, out = await cli("unknown")
    assert "0090330a0b0c" in out
    assert "127.0.0.1" in out
    status, out = await cli("deregister", MAC_A)
    assert (status, out) == (0, f"{MAC_A}: deregistered\n")
    status, out = await cli("register", "xyz", "--frontend", "sb1")
    assert status == 2
    assert "not a MAC address" in out


async def test_composition_api_on_admin_listener_devices_on_redirect_listener(
    pool: asyncpg.Pool, session_pki: SessionPki, inventory: None
) -> None:
    """serve.py's composition: the provider API inside the admin application, only the device
    part on the public redirect listener."""
    split = {key: value for key, value in listeners(session_pki).items() if key != "redirect_tls"}
    node = await start_services(Settings(), pool, split)
    context = ssl.create_default_context(cafile=str(session_pki.ca))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            service = Redirect(node, pool, session_pki, session)
            key = await service.key("acme")
            put = await service.api(
                key, "PUT", f"/api/v1/redirect/devices/{MAC_A}", {"frontend": "sb1"}
            )
            assert put.status == 201, put.text
            async with session.get(service.admin + "/api/v1/openapi.json") as response:
                assert response.status == 200  # the admin API is still there
            public = await service.api(key, "GET", "/api/v1/redirect/whoami", base=service.http)
            assert public.status == 404
            handed = await service.device(f"{service.http}/redirect.php?sn={MAC_A}")
            assert handed.status == 200
            on_admin = await service.raw("GET", f"/redirect.php?sn={MAC_A}", b"", None)
            assert on_admin.status == 404
    finally:
        await node.stop()


# --- curl, as the issue's "done when" has it -----------------------------------------------


async def test_curl_redirect_php(redirect: Redirect) -> None:
    await register(redirect, MAC_A)

    async def curl(url: str) -> tuple[str, str]:
        process = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-w", "\n%{http_code}", url, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        body, _, status = out.decode().rpartition("\n")
        return status, body

    status, body = await curl(f"{redirect.http}/redirect.php?sn={MAC_A}")
    assert status == "200"
    assert f"config add UP1 /url {STAGING_SB1_ENCODED}\r\n" in body
    status, body = await curl(f"{redirect.http}/redirect.php?sn=0090330a0b0c")
    assert status == "404"
    assert body.startswith("# ")


# --- the walk: factory-new -> redirect -> staging -> update, in sync -----------------------------


@pytest.mark.parametrize("first_url", ["https-init-with-certificate", "http-redirect-php"])
async def test_factory_new_device_walks_to_in_sync(
    pool: asyncpg.Pool,
    session_pki: SessionPki,
    inventory: None,
    repo_root: Path,
    tmp_path: Path,
    first_url: str,
) -> None:
    scripts = tmp_path / "staging_scripts"
    shutil.copytree(repo_root / "staging_scripts", scripts)
    devices_socket = bind_socket("127.0.0.1", 0, reuse_port=False)
    port = devices_socket.getsockname()[1]
    settings = Settings(
        update=UpdateSettings(
            grace_seconds=0,
            scripts_dir=scripts,
            firmware_dir=tmp_path / "firmware",
            reload_interval=0.1,
        ),
        redirect=RedirectSettings(
            frontend_url=f"https://127.0.0.1:{port}/DRIVE/CF0/update/staging.txt"
        ),
    )
    all_listeners = listeners(session_pki)
    all_listeners["devices"] = dataclasses.replace(
        all_listeners["redirect_tls"], services=("update",)
    )
    node = await start_services(settings, pool, all_listeners, sockets={"devices": devices_socket})
    try:
        await MappingRepository(pool).register(
            "local",
            check_mapping(MAC_A, "sb1"),
            "test",
        )
        first = (
            f"{node.addresses['redirect_tls']}/init"
            if first_url.startswith("https")
            else f"{node.addresses['redirect']}/redirect.php?sn=#m&hwid=#h"
        )
        device = SimulatedDevice(
            mac=MAC_A,
            hardware_id=DEVICE_A,
            device_type="IP232",
            url=first,
            ca=session_pki.ca,
            certificate=session_pki.devices[DEVICE_A],
        )
        handed_over = await device.poll()
        assert handed_over.status == 200, handed_over.text
        assert handed_over.commands[-2:] == ["config write", "config activate"]
        assert device.url == (
            f"https://127.0.0.1:{port}/DRIVE/CF0/update/staging.txt?sn=#m&hwid=#h&type=#t&ip=#i"
        )
        staged = await device.poll()
        assert staged.status == 200, staged.text
        assert "/DRIVE/CF0/update/update.txt" in device.url
        updated = await device.poll()
        assert updated.status == 200, updated.text
        assert device.check
        in_sync = await device.poll()
        assert in_sync.changes == []

        async def recorded_in_sync() -> bool:
            # The update service may write device status a moment after answering.
            statuses = await UpdateRepository(pool).statuses(mac=MAC_A)
            return len(statuses) == 1 and statuses[0].in_sync and statuses[0].proof == "proven"

        await until(recorded_in_sync, timeout=10)
        (handover,) = await logged_handovers(HandoverRepository(pool), MAC_A, 1)
        assert handover.proof == ("proven" if first_url.startswith("https") else "claimed")
    finally:
        await node.stop()
        with contextlib.suppress(OSError):
            devices_socket.close()
