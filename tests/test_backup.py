"""The backup service end to end: real listeners with real TLS and device certificates, curl -T
and curl --digest, real PostgreSQL; store-on-change, write-only refusals, identities, limits,
aborted uploads, concurrency, retention with a controlled clock, alerts, the archive API, the
WebDAV view (webdav4) and the CLI."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from services.backup.app import run_maintenance
from services.backup.cli import register
from services.backup.diff import DiffStat, Redaction, Side, diffstat, unified_diff
from services.backup.handlers import ContentCpu
from services.backup.normalize import Normalizer, prepare
from services.backup.repository import (
    ArchiveRepository,
    IntakeRepository,
    InventoryDevice,
    Upload,
)
from services.core import db
from services.core.auth import AccountRepository, Role
from services.core.config import (
    AdminSettings,
    BackupSettings,
    DatabaseSettings,
    Settings,
    UpdateSettings,
)
from services.core.digest import NonceSigner, compute_response, load_secret
from services.core.inventory import InventoryRepository, apply_inventory, read_inventory_file
from services.core.runner import Node
from services.core.senderscope import SenderScopeRepository
from tests.conftest import (
    DEVICE_A,
    DEVICE_B,
    DEVICE_C,
    SessionPki,
    assert_golden,
    curl,
    service_cli,
    start_services,
    tls_listener,
    until,
)

MAC_A = "009033010203"
MAC_C = "009033010204"
ADMIN_PASSWORD = "admin password 123"
OPERATOR_PASSWORD = "operator password 123"
SENDER_PASSWORD = "sender password 123"
GOLDEN = Path(__file__).resolve().parent / "golden" / "backup"
PATH = "/DRIVE/CF0/update/backup"

CONFIG_1 = (
    "config change IP0 /addr 192.0.2.50 /mask 255.255.255.0\r\n"
    "config change ADMIN /user admin /pwd s3cret-admin\r\n"
    "vars create PHONE/REG-PWD pb s3cret-registration\r\n"
    "config change UP1 /url https://fe.example/update.txt /poll 15\r\n"
    "vars create UPDATE/CHECK p 1111\r\n"
    "vars create TLS0/TICKET/0 p aaaa\r\n"
    "mod cmd FLASHDIR0 add-item 101 (cn=Alice)(type=missed)(info=2024-05-01 10:00)\r\n"
    "config change NTP0 /server 192.0.2.10\r\n"
)


def volatile_only_change(config: str) -> str:
    return (
        config.replace("1111", "2222")
        .replace("aaaa", "bbbb")
        .replace("/poll 15", "/poll 7")
        .replace("(cn=Alice)(type=missed)(info=2024-05-01 10:00)", "(cn=Bob)(type=in)(info=x)")
    )


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@dataclass
class Site:
    node: Node
    pool: asyncpg.Pool
    pki: SessionPki
    settings: Settings
    directory: Path
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def proven(self) -> str:
        return self.node.addresses["devices"]

    @property
    def claimed(self) -> str:
        return self.node.addresses["claimed"]

    @property
    def admin(self) -> str:
        return self.node.addresses["admin"]

    def certificate(self, name: str = DEVICE_A) -> list[str]:
        certificate, key = self.pki.devices[name]
        return ["--cert", str(certificate), "--key", str(key)]

    def file(self, content: bytes | str, name: str = "config.txt") -> Path:
        path = self.directory / f"{secrets.token_hex(4)}-{name}"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    async def put(
        self,
        content: bytes | str,
        *,
        device: str | None = DEVICE_A,
        name: str = f"{DEVICE_A}.txt",
        query: str = "",
        extra: tuple[str, ...] = (),
    ) -> tuple[int, str]:
        base = self.proven if device else self.claimed
        cert = self.certificate(device) if device else []
        status, body = await curl(
            "--cacert",
            str(self.pki.ca),
            *cert,
            *extra,
            "-T",
            str(self.file(content)),
            f"{base}{PATH}/{name}{query}",
        )
        return status, body.decode(errors="replace")

    async def versions(self, mac: str = MAC_A) -> list[Any]:
        async with self.pool.acquire() as connection:
            return await ArchiveRepository(connection).versions(mac, limit=1000)

    async def session(self, certificate: str | None = None) -> aiohttp.ClientSession:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        if certificate is not None:
            context.load_cert_chain(*map(str, self.pki.devices[certificate]))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        self.sessions.append(session)
        return session


SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def start_site(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> AsyncIterator[SiteFactory]:
    accounts = AccountRepository(pool)
    await accounts.add("admin", frozenset({Role.ADMIN}), ADMIN_PASSWORD)
    await accounts.add("operator", frozenset({Role.OPERATOR}), OPERATOR_PASSWORD)
    await accounts.add("sender", frozenset({Role.EVENT_SENDER}), SENDER_PASSWORD)
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    await SenderScopeRepository(pool).bind("sender", ["Kuenkel00001"])
    sites: list[Site] = []

    async def start(admin: AdminSettings | None = None, **backup: Any) -> Site:
        settings = Settings(
            admin=admin or AdminSettings(),
            update=UpdateSettings(
                grace_seconds=0,
                scripts_dir=repo_root / "staging_scripts",
                firmware_dir=tmp_path / "firmware",
            ),
            backup=BackupSettings(**{"prune_interval": 0.0, **backup}),
        )
        listeners = {
            "devices": tls_listener(session_pki, "backup", "update", client_certificates=True),
            "claimed": tls_listener(session_pki, "backup", "update"),
            "admin": tls_listener(session_pki, "admin"),
        }
        node = await start_services(settings, pool, listeners)
        site = Site(node, pool, session_pki, settings, tmp_path)
        sites.append(site)
        return site

    yield start
    for site in sites:
        for session in site.sessions:
            await session.close()
        await site.node.stop()


@pytest.fixture
async def site(start_site: SiteFactory) -> Site:
    return await start_site()


# --- store only on change --------------------------------------------------------------------


async def test_same_config_twice_is_one_version_a_change_is_two(site: Site) -> None:
    assert await site.put(CONFIG_1) == (201, "stored as version 1\n")
    status, text = await site.put(CONFIG_1)
    assert (status, text) == (200, "unchanged: same as version 1\n")
    # Only volatile lines differ (protocol.md §5): still unchanged, and LF instead of CRLF too.
    status, _ = await site.put(volatile_only_change(CONFIG_1).replace("\r\n", "\n"))
    assert status == 200

    async def both_counted() -> bool:
        # A byte-for-byte repeat is recorded in the next batch (a few ms), not in its request.
        return [v.unchanged_puts for v in await site.versions()] == [2]

    await until(both_counted)
    versions = await site.versions()
    assert versions[0].proof == "certificate"
    changed = CONFIG_1.replace("192.0.2.10", "192.0.2.11")
    status, text = await site.put(changed)
    assert (status, text) == (201, "stored as version 2\n")
    versions = await site.versions()
    assert [v.id for v in versions] == [2, 1]
    assert (versions[0].lines_added, versions[0].lines_removed) == (1, 1)
    async with site.pool.acquire() as connection:
        repository = ArchiveRepository(connection)
        assert await repository.content(versions[0].content_sha256) == changed.encode()
        device = await repository.device(MAC_A)
        stored_contents = await connection.fetchval("SELECT count(*) FROM backup_contents")
    assert device is not None
    assert (device.puts, device.versions, device.latest_version) == (4, 2, 2)
    assert device.last_unchanged_at is not None
    assert stored_contents == 2


async def test_post_is_taken_like_put_and_blank_lines_make_no_version(site: Site) -> None:
    # protocol.md §10: PHPUS takes the body whatever the method; some devices POST.
    assert await site.put(CONFIG_1, extra=("-X", "POST")) == (201, "stored as version 1\n")
    spaced = CONFIG_1.replace("\r\n", "\r\n\r\n  \r\n", 2) + "\r\n\r\n"
    assert (await site.put(spaced))[0] == 200
    assert (await site.put(spaced, extra=("-X", "POST")))[0] == 200
    assert len(await site.versions()) == 1
    # An empty body is still the clear 400, and no credentials still 401, for POST too.
    assert (await site.put(b"", extra=("-X", "POST")))[0] == 400
    assert (await site.put(CONFIG_1, device=None, extra=("-X", "POST")))[0] == 401


async def test_identical_content_of_two_devices_is_stored_once(site: Site) -> None:
    assert (await site.put(CONFIG_1))[0] == 201
    status, _ = await site.put(CONFIG_1, device=DEVICE_C, name=f"{DEVICE_C}.txt")
    assert status == 201
    async with site.pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM backup_versions") == 2
        assert await connection.fetchval("SELECT count(*) FROM backup_contents") == 1


async def test_change_raises_an_alert_with_diffstat_and_notify(
    site: Site, database_url: str
) -> None:
    notified: list[str] = []
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener(
            "pbxfront_backup_alert", lambda _c, _p, _ch, payload: notified.append(payload)
        )
        await site.put(CONFIG_1)
        assert notified == []  # a first backup is not a change
        changed = CONFIG_1.replace("192.0.2.10", "192.0.2.11") + "config change X /y 1\r\n"
        await site.put(changed)
        await until(lambda: len(notified) == 1)
    finally:
        await listener.close()
    async with site.pool.acquire() as connection:
        alerts = await ArchiveRepository(connection).alerts()
    assert [a.id for a in alerts] == [int(notified[0])]
    alert = alerts[0]
    assert (alert.kind, alert.mac, alert.customer) == ("changed", MAC_A, "Kuenkel00001")
    assert (alert.version_id, alert.previous_version_id) == (2, 1)
    assert (alert.lines_added, alert.lines_removed) == (2, 1)
    assert "+2 -1" in alert.message


# --- write-only --------------------------------------------------------------------------------


@pytest.mark.parametrize("certificate", [DEVICE_A, None])
async def test_write_only_refusals_are_identical(site: Site, certificate: str | None) -> None:
    assert (await site.put(CONFIG_1))[0] == 201
    session = await site.session(certificate)
    base = site.proven if certificate else site.claimed
    answers = set()
    for path in (
        f"{PATH}/{DEVICE_A}.txt",  # exists
        f"{PATH}/{DEVICE_C}.txt",  # does not
        f"{PATH}/nothing-here.txt",
        f"{PATH}/",
        PATH,
        f"{PATH}/a/b",
    ):
        for method in ("GET", "HEAD", "PROPFIND", "DELETE", "MOVE", "COPY", "OPTIONS", "PATCH"):
            headers = {"Destination": base + f"{PATH}/x.txt", "Depth": "1"}
            async with session.request(method, base + path, headers=headers) as response:
                body = await response.read()
                answers.add(
                    (
                        response.status,
                        response.headers.get("Allow"),
                        body if method != "HEAD" else b"(head)",
                    )
                )
    assert answers == {
        (
            405,
            "PUT, POST",
            b"the backup folder is write-only: devices PUT their configuration here\n",
        ),
        (405, "PUT, POST", b"(head)"),
    }
    assert len(await site.versions()) == 1


# --- identity ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "query"),
    [
        (f"{DEVICE_C}.txt", ""),  # the name names C
        ("config.txt", f"?sn={MAC_C}"),  # the URL names C
        (f"{DEVICE_A}.txt", f"?hwid={DEVICE_C}"),
        (f"{MAC_C}.cfg", ""),
    ],
)
async def test_certificate_of_a_naming_b_is_403(
    site: Site, caplog: pytest.LogCaptureFixture, name: str, query: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        status, text = await site.put(CONFIG_1, name=name, query=query)
    assert status == 403, text
    assert "certificate names" in text
    assert any("identity-conflict" in r.getMessage() for r in caplog.records)
    assert await site.versions(MAC_A) == []
    assert await site.versions(MAC_C) == []


async def test_own_name_and_arguments_are_fine(site: Site) -> None:
    status, _ = await site.put(
        CONFIG_1, name=f"{MAC_A}.txt", query=f"?sn={MAC_A}&hwid={DEVICE_A}&type=IP232"
    )
    assert status == 201
    assert (await site.versions())[0].upload_name == f"{MAC_A}.txt"


async def test_device_not_in_inventory_is_refused(site: Site) -> None:
    status, text = await site.put(CONFIG_1, device=DEVICE_B, name="config.txt")
    assert status == 403
    assert "not in this provider's inventory" in text


@pytest.mark.parametrize(
    ("name", "status"),
    [("..", 404), ("%2e%2e%2fupdate.txt", 400), ("a%00b.txt", 400), ("-leading.txt", 400)],
)
async def test_odd_names(site: Site, name: str, status: int) -> None:
    code, _ = await curl(
        "--path-as-is",
        "--cacert",
        str(site.pki.ca),
        *site.certificate(),
        "-T",
        str(site.file(CONFIG_1)),
        f"{site.proven}{PATH}/{name}",
    )
    assert code == status
    assert await site.versions() == []


async def test_put_to_the_folder_itself_needs_a_name(site: Site) -> None:
    session = await site.session(DEVICE_A)
    for url in (f"{site.proven}{PATH}/", f"{site.proven}{PATH}"):
        async with session.put(url, data=CONFIG_1.encode()) as response:
            assert response.status == 400
            assert "backup name" in await response.text()
    assert await site.versions() == []


async def test_database_down_is_503(
    database_url: str, session_pki: SessionPki, start_site: SiteFactory
) -> None:
    site = await start_site()
    own_pool = await db.create_pool(database_url, DatabaseSettings(pool_max_size=2))
    listeners = {"devices": tls_listener(session_pki, "backup", client_certificates=True)}
    node = await start_services(site.settings, own_pool, listeners)
    try:
        await own_pool.close()
        session = await site.session(DEVICE_A)
        url = node.addresses["devices"] + f"{PATH}/{DEVICE_A}.txt"
        async with session.put(url, data=CONFIG_1.encode()) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "5"
    finally:
        await node.stop()
    assert await site.versions() == []


# --- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithms", "expected"), [(("SHA-256", "MD5"), "SHA-256"), (("MD5",), "MD5")]
)
async def test_digest_with_curl(
    start_site: SiteFactory, algorithms: tuple[str, ...], expected: str
) -> None:
    site = await start_site(digest_algorithms=algorithms)
    args = ("--digest", "-u", f"sender:{SENDER_PASSWORD}")
    status, text = await site.put(
        CONFIG_1, device=None, name="config.txt", query=f"?sn={MAC_A}", extra=args
    )
    assert status == 201, text
    version = (await site.versions())[0]
    assert (version.proof, version.account) == ("credentials", "sender")
    # The challenge curl answered offers the expected algorithm first.
    session = await site.session()
    async with session.put(f"{site.claimed}{PATH}/{DEVICE_A}.txt", data=b"x") as response:
        assert response.status == 401
        challenges = response.headers.getall("WWW-Authenticate")
    assert challenges[0].startswith("Digest ")
    assert f"algorithm={expected}," in challenges[0]
    assert challenges[-1].startswith("Basic ")
    status, _ = await site.put(
        CONFIG_1,
        device=None,
        name="config.txt",
        query=f"?sn={MAC_A}",
        extra=("--digest", "-u", "sender:wrong password!"),
    )
    assert status == 401


def digest_header(
    challenge: str, uri: str, *, nonce_count: int = 1, name: str = "sender"
) -> dict[str, str]:
    params = dict(part.strip().split("=", 1) for part in challenge[len("Digest ") :].split(", "))
    nonce = params["nonce"].strip('"')
    algorithm = params["algorithm"]
    from services.core.digest import compute_ha1

    ha1 = compute_ha1(algorithm, name, "pbxfront", SENDER_PASSWORD)
    cnonce = secrets.token_hex(8)
    nc = f"{nonce_count:08x}"
    response = compute_response(
        algorithm, ha1, nonce=nonce, nonce_count=nc, cnonce=cnonce, method="PUT", uri=uri
    )
    value = (
        f'Digest username="{name}", realm="pbxfront", nonce="{nonce}", uri="{uri}", '
        f'algorithm={algorithm}, response="{response}", qop=auth, nc={nc}, cnonce="{cnonce}", '
        f"opaque={params['opaque']}"
    )
    return {"Authorization": value}


async def test_digest_replay_is_refused_and_a_higher_count_accepted(site: Site) -> None:
    session = await site.session()
    uri = f"{PATH}/{DEVICE_A}.txt?sn={MAC_A}"
    url = site.claimed + uri
    async with session.put(url, data=b"") as response:
        assert response.status == 401
        challenge = response.headers.getall("WWW-Authenticate")[0]
    first = digest_header(challenge, uri)
    async with session.put(url, data=CONFIG_1.encode(), headers=first) as response:
        assert response.status == 201, await response.text()
    async with session.put(url, data=CONFIG_1.encode(), headers=first) as response:
        assert response.status == 401
        assert "replayed" in await response.text()
    # A request that was captured and replayed against another path fails as well.
    async with session.put(
        f"{site.claimed}{PATH}/other.txt?sn={MAC_A}", data=b"x", headers=first
    ) as response:
        assert response.status == 401
    second = digest_header(challenge, uri, nonce_count=2)
    async with session.put(url, data=CONFIG_1.encode(), headers=second) as response:
        assert response.status == 200, await response.text()
    assert len(await site.versions()) == 1


async def test_stale_nonce_gets_stale_true(site: Site) -> None:
    async with site.pool.acquire() as connection:
        secret = await load_secret(connection)
    signer = NonceSigner(secret, site.settings.backup.digest_nonce_lifetime)
    old_nonce = signer.issue(datetime.now(UTC).timestamp() - 3600)
    uri = f"{PATH}/{DEVICE_A}.txt?sn={MAC_A}"
    challenge = (
        f'Digest realm="pbxfront", qop="auth", algorithm=SHA-256, nonce="{old_nonce}", '
        f'opaque="{signer.opaque}"'
    )
    session = await site.session()
    async with session.put(
        site.claimed + uri, data=CONFIG_1.encode(), headers=digest_header(challenge, uri)
    ) as response:
        assert response.status == 401
        challenges = response.headers.getall("WWW-Authenticate")
    assert all("stale=true" in c for c in challenges if c.startswith("Digest"))
    # A forged nonce (not signed by the cluster's key) is not merely stale.
    forged = NonceSigner(b"x" * 32, 300).issue(datetime.now(UTC).timestamp())
    async with session.put(
        site.claimed + uri,
        data=CONFIG_1.encode(),
        headers=digest_header(challenge.replace(old_nonce, forged), uri),
    ) as response:
        assert response.status == 401
        assert not any("stale=true" in c for c in response.headers.getall("WWW-Authenticate"))
    assert await site.versions() == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (basic("sender", SENDER_PASSWORD), 201),
        (basic("sender", "wrong password!"), 401),
        (basic("operator", OPERATOR_PASSWORD), 401),  # right password, wrong role
        (basic("nobody", SENDER_PASSWORD), 401),
        ({"Authorization": "Bearer something"}, 401),
        ({}, 401),
    ],
)
async def test_basic_credentials(site: Site, headers: dict[str, str], status: int) -> None:
    session = await site.session()
    async with session.put(
        f"{site.claimed}{PATH}/{DEVICE_A}.txt", data=CONFIG_1.encode(), headers=headers
    ) as response:
        assert response.status == status, await response.text()
        if status == 401:
            offered = response.headers.getall("WWW-Authenticate")
            assert [c.split()[0] for c in offered] == ["Digest", "Digest", "Basic"]
    assert len(await site.versions()) == (1 if status == 201 else 0)


async def add_other_customer(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """INSERT INTO customers (id, frontend, name, system_name, country_code, area_code)
           VALUES ('Other00002', 'sb1', 'Other', 'other.example', '49', '30')"""
    )


async def test_senders_write_only_for_their_customers(
    start_site: SiteFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17: credentials bound to customer B cannot write a backup for A's device; an
    unbound sender is refused unless admin.unbound_senders_any_customer keeps the old reach."""
    site = await start_site()
    await add_other_customer(site.pool)
    accounts = AccountRepository(site.pool)
    scopes = SenderScopeRepository(site.pool)
    await accounts.add("sender-b", frozenset({Role.EVENT_SENDER}), SENDER_PASSWORD)
    await scopes.bind("sender-b", ["Other00002"])
    await accounts.add("legacy", frozenset({Role.EVENT_SENDER}), SENDER_PASSWORD)
    await accounts.add("everyone", frozenset({Role.EVENT_SENDER}), SENDER_PASSWORD)
    await scopes.bind("everyone", None)
    session = await site.session()
    url = f"{site.claimed}{PATH}/{DEVICE_A}.txt"

    async def put(name: str, text: str = CONFIG_1) -> tuple[int, str]:
        headers = basic(name, SENDER_PASSWORD)
        async with session.put(url, data=text.encode(), headers=headers) as response:
            return response.status, await response.text()

    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        status, text = await put("sender-b")
        assert (status, text) == (
            403,
            "account sender-b may not write for this device's customer\n",
        )
        status, text = await put("legacy")
        assert status == 403
        assert "bound to no customer" in text
    lines = [r.getMessage() for r in caplog.records if "sender-forbidden" in r.getMessage()]
    assert any("account=sender-b customer=Kuenkel00001 reason=other-customer" in m for m in lines)
    assert any("account=legacy" in m and "reason=unbound" in m for m in lines)
    assert await site.versions() == []  # nothing stored by a refused sender
    assert (await put("sender"))[0] == 201  # bound to Kuenkel00001
    assert (await put("everyone", CONFIG_1 + "x\r\n"))[0] == 201
    # The config switch for a migration period: unbound senders keep today's reach.
    legacy = await start_site(admin=AdminSettings(unbound_senders_any_customer=True))
    legacy_session = await legacy.session()
    async with legacy_session.put(
        f"{legacy.claimed}{PATH}/{DEVICE_A}.txt",
        data=(CONFIG_1 + "y\r\n").encode(),
        headers=basic("legacy", SENDER_PASSWORD),
    ) as response:
        assert response.status == 201, await response.text()


async def test_credentials_need_a_device_name(site: Site) -> None:
    session = await site.session()
    async with session.put(
        f"{site.claimed}{PATH}/config.txt", data=b"x", headers=basic("sender", SENDER_PASSWORD)
    ) as response:
        assert response.status == 400
        assert "name the device" in await response.text()


async def test_anonymous_only_where_the_customer_allows_it(site: Site) -> None:
    # Unknown and known devices get the same answer while anonymous backups are off.
    known = await site.put(CONFIG_1, device=None, name=f"{DEVICE_A}.txt")
    unknown = await site.put(CONFIG_1, device=None, name=f"{DEVICE_B}.txt")
    assert known[0] == unknown[0] == 401
    assert known[1] == unknown[1]
    async with site.pool.acquire() as connection:
        repository = InventoryRepository(connection)
        customer = await repository.get_customer("Kuenkel00001")
        assert customer is not None
        await repository.upsert_customer(dataclasses.replace(customer, allow_anonymous_backup=True))
    status, _ = await site.put(CONFIG_1, device=None, name=f"{DEVICE_A}.txt")
    assert status == 201
    assert (await site.versions())[0].proof == "anonymous"
    assert (await site.put(CONFIG_1, device=None, name=f"{DEVICE_B}.txt"))[0] == 401


# --- bodies ------------------------------------------------------------------------------------


async def test_oversized_bodies_are_413_and_empty_is_400(start_site: SiteFactory) -> None:
    site = await start_site(max_body_bytes=1000)
    status, text = await site.put("x" * 1001)
    assert status == 413
    assert "body larger than 1000 bytes" in text
    status, _ = await site.put(
        "y" * 5000, extra=("-H", "Transfer-Encoding: chunked")
    )  # no Content-Length: counted while reading
    assert status == 413
    status, text = await site.put("")
    assert status == 400
    assert "empty body" in text
    assert (await site.put("z" * 1000))[0] == 201
    assert len(await site.versions()) == 1


async def test_chunked_upload_is_stored(site: Site) -> None:
    status, _ = await site.put(CONFIG_1, extra=("-H", "Transfer-Encoding: chunked"))
    assert status == 201
    async with site.pool.acquire() as connection:
        content = await ArchiveRepository(connection).content(
            (await site.versions())[0].content_sha256
        )
    assert content == CONFIG_1.encode()


async def test_binary_and_non_utf8_bodies(site: Site) -> None:
    binary = b"config change X /y 1\r\n\x00\x01\x02\xff binary\r\n"
    assert (await site.put(binary))[0] == 201
    latin1 = "config change X /name M\xfcller\r\n".encode("latin-1")
    assert (await site.put(latin1))[0] == 201
    assert (await site.put(CONFIG_1))[0] == 201
    versions = await site.versions()
    assert [v.encoding for v in versions] == ["utf-8", "other", "binary"]
    session = await site.session()
    auth = basic("admin", ADMIN_PASSWORD)
    api = f"{site.admin}/api/v1/backups/devices/{DEVICE_A}"
    async with session.get(f"{api}/diff?from=1&to=2", headers=auth) as response:
        assert response.status == 200
        assert (await response.text()).startswith("Binary configurations differ")
    async with session.get(f"{api}/diff?from=2&to=3", headers=auth) as response:
        text = await response.text()
        assert response.status == 200
        assert "-config change X /name M\ufffdller" in text
    async with session.get(f"{api}/versions/1?show_secrets=1", headers=auth) as response:
        assert await response.read() == binary
        assert response.headers["X-Backup-Encoding"] == "binary"
    async with site.pool.acquire() as connection:
        shown = await connection.fetch(
            "SELECT actor, origin FROM audit_log WHERE action = 'backup.show-secrets'"
        )
    assert [(r["actor"], r["origin"]) for r in shown] == [("admin", "127.0.0.1")]


async def test_aborted_upload_stores_nothing(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    host, port = urlsplit(site.proven).hostname, urlsplit(site.proven).port
    assert host is not None
    assert port is not None
    context = ssl.create_default_context(cafile=str(site.pki.ca))
    context.load_cert_chain(*map(str, site.pki.devices[DEVICE_A]))
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    head = f"PUT {PATH}/{DEVICE_A}.txt HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10000\r\n\r\n"
    writer.write(head.encode() + b"config change A /b 1\r\n" * 20)
    await writer.drain()
    await asyncio.sleep(0.2)
    with caplog.at_level(logging.INFO, logger="services.backup.handlers"):
        writer.transport.abort()
        await until(lambda: any("aborted" in r.getMessage() for r in caplog.records))
    assert await site.versions() == []
    # The service is fine afterwards.
    assert (await site.put(CONFIG_1))[0] == 201
    del reader


async def test_concurrent_puts_of_one_device(site: Site) -> None:
    session = await site.session(DEVICE_A)
    url = f"{site.proven}{PATH}/{DEVICE_A}.txt"

    async def put(body: str) -> int:
        async with session.put(url, data=body.encode()) as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(put(CONFIG_1) for _ in range(20)))
    assert sorted(statuses) == [200] * 19 + [201]
    assert len(await site.versions()) == 1
    # Twenty PUTs of a changed config, all compared against the same latest version: without
    # the per-device lock several would store it.
    changed = CONFIG_1.replace("192.0.2.10", "192.0.2.99")
    statuses = await asyncio.gather(*(put(changed) for _ in range(20)))
    assert sorted(statuses) == [200] * 19 + [201]
    assert len(await site.versions()) == 2
    distinct = [CONFIG_1 + f"config change X /n {i}\r\n" for i in range(10)]
    statuses = await asyncio.gather(*(put(body) for body in distinct))
    assert statuses == [201] * 10
    versions = await site.versions()
    assert len(versions) == 12
    async with site.pool.acquire() as connection:
        repository = ArchiveRepository(connection)
        stored = {await repository.content(v.content_sha256) for v in versions}

        async def every_put_counted() -> bool:
            # Repeats of the latest version are counted in batches, a few ms after the answer.
            found = await repository.device(MAC_A)
            return found is not None and found.puts == 50

        await until(every_put_counted)
        device = await repository.device(MAC_A)
    assert stored == {body.encode() for body in [CONFIG_1, changed, *distinct]}
    assert device is not None
    assert device.latest_version == versions[0].id


# --- retention and alerts with a controlled clock ----------------------------------------------


async def store_at(pool: asyncpg.Pool, moment: datetime, text: str, mac: str = MAC_A) -> int:
    device = InventoryDevice(
        mac, DEVICE_A if mac == MAC_A else DEVICE_C, "IP232", "Kuenkel00001", False
    )
    normalizer = Normalizer.build()
    upload = Upload(
        device,
        text.encode(),
        prepare(text.encode(), normalizer),
        "t.txt",
        "certificate",
        None,
        None,
    )
    async with pool.acquire() as connection:
        result = await IntakeRepository(connection).store_if_changed(
            upload, moment, ContentCpu(normalizer)
        )
    assert result.changed
    return result.version_id


async def test_retention_with_a_controlled_clock(
    pool: asyncpg.Pool, start_site: SiteFactory
) -> None:
    del start_site  # only the inventory and accounts
    now = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
    # One version every 12 hours for 400 days back (801 versions), newest last.
    moments = [now - timedelta(hours=12 * i) for i in range(800, -1, -1)]
    ids = [
        await store_at(pool, moment, f"config change X /n {i}\r\n")
        for i, moment in enumerate(moments)
    ]
    settings = Settings(backup=BackupSettings(keep_last=5, keep_days=3, keep_months=2))
    dry = await run_maintenance(pool, settings, now, dry_run=True)
    assert len(await all_versions(pool)) == 801  # nothing deleted by a dry run
    report = await run_maintenance(pool, settings, now)
    assert report.ran
    assert report.as_json()["versions_deleted"] == dry.as_json()["versions_deleted"]
    kept = await all_versions(pool)
    kept_times = sorted(v.received_at for v in kept)
    # last 5 (2.5 days) + newest of each of 3 days (covered) + newest of June and of May.
    expected = sorted(
        {moments[-i] for i in range(1, 6)} | {datetime(2024, 5, 31, 12, 0, tzinfo=UTC)}
    )
    assert kept_times == expected
    assert ids[-1] in {v.id for v in kept}
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM backup_contents") == 6

    # The customer's Frontend layer counts too (global < frontend < customer).
    async with pool.acquire() as connection:
        await InventoryRepository(connection).set_variable(
            "frontend", "sb1", "backup-keep-last", "3"
        )
    report = await run_maintenance(
        pool, Settings(backup=BackupSettings(keep_days=0, keep_months=0)), now
    )
    assert {v.id for v in await all_versions(pool)} == set(ids[-3:])

    # A customer variable beats it; the newest is never deleted even with keep_last = 1.
    async with pool.acquire() as connection:
        await InventoryRepository(connection).set_variable(
            "customer", "Kuenkel00001", "backup-keep-last", "1"
        )
    report = await run_maintenance(
        pool, Settings(backup=BackupSettings(keep_days=0, keep_months=0)), now
    )
    assert [v.id for v in await all_versions(pool)] == [ids[-1]]


async def all_versions(pool: asyncpg.Pool) -> list[Any]:
    async with pool.acquire() as connection:
        return await ArchiveRepository(connection).versions(MAC_A, limit=100000)


async def test_prune_runs_on_one_node_at_a_time(
    pool: asyncpg.Pool, start_site: SiteFactory
) -> None:
    del start_site
    async with pool.acquire() as holder:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", 0x70627862)
        report = await run_maintenance(pool, Settings(), datetime.now(UTC))
        assert not report.ran
        await holder.execute("SELECT pg_advisory_unlock($1)", 0x70627862)
    assert (await run_maintenance(pool, Settings(), datetime.now(UTC))).ran


async def test_stale_backup_alert(pool: asyncpg.Pool, start_site: SiteFactory) -> None:
    del start_site
    start = datetime(2024, 6, 1, tzinfo=UTC)
    await store_at(pool, start, CONFIG_1)
    settings = Settings(backup=BackupSettings(stale_after_hours=24))
    report = await run_maintenance(pool, settings, start + timedelta(hours=23))
    assert report.stale_alerts == []
    report = await run_maintenance(pool, settings, start + timedelta(hours=25), dry_run=True)
    assert report.stale_alerts == [MAC_A]
    async with pool.acquire() as connection:
        assert await ArchiveRepository(connection).alerts() == []
    report = await run_maintenance(pool, settings, start + timedelta(hours=25))
    assert report.stale_alerts == [MAC_A]
    # Once until the next PUT.
    assert (await run_maintenance(pool, settings, start + timedelta(hours=30))).stale_alerts == []
    async with pool.acquire() as connection:
        alerts = await ArchiveRepository(connection).alerts()
    assert [(a.kind, a.mac) for a in alerts] == [("stale", MAC_A)]
    assert "no PUT since 2024-06-01T00:00:00+00:00" in alerts[0].message


async def test_restarted_node_raises_the_stale_alert_without_any_request(
    pool: asyncpg.Pool, start_site: SiteFactory
) -> None:
    """Issue 17: the maintenance job starts with the node. A node restarted after the device
    stopped uploading raises the stale alert on its own, before any request reaches it."""
    first = await start_site()
    assert (await first.put(CONFIG_1))[0] == 201
    await first.node.stop()
    # The device's last PUT is now two hours old (its policy: stale after one hour).
    async with pool.acquire() as connection:
        await connection.execute(
            "UPDATE backup_devices SET last_put_at = now() - interval '2 hours' WHERE mac = $1",
            MAC_A,
        )
        assert await ArchiveRepository(connection).alerts() == []
    second = await start_site(stale_after_hours=1.0, prune_interval=0.2)

    async def stale_alerts() -> list[str]:
        async with pool.acquire() as connection:
            alerts = await ArchiveRepository(connection).alerts()
        return [alert.mac for alert in alerts if alert.kind == "stale"]

    async def alerted() -> bool:
        return await stale_alerts() == [MAC_A]

    await until(alerted, timeout=10)
    assert second.sessions == []  # nothing was asked of the restarted node


# --- the archive API ---------------------------------------------------------------------------


async def test_archive_api(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(5):
        await site.put(CONFIG_1.replace("192.0.2.10", f"192.0.2.{20 + i}"))
    await site.put(CONFIG_1.replace("s3cret-admin", "n3w-secret"))
    session = await site.session()
    admin = basic("admin", ADMIN_PASSWORD)
    operator = basic("operator", OPERATOR_PASSWORD)
    api = f"{site.admin}/api/v1/backups"
    async with session.get(f"{api}/devices", headers=operator) as response:
        assert response.status == 200
        devices = (await response.json())["devices"]
    assert [(d["mac"], d["versions"], d["latest_version"]) for d in devices] == [(MAC_A, 6, 6)]
    assert 0 <= devices[0]["age_seconds"] < 60
    async with session.get(f"{api}/devices/{MAC_A}/versions?limit=4", headers=operator) as r:
        page = await r.json()
    assert [v["id"] for v in page["versions"]] == [6, 5, 4, 3]
    async with session.get(
        f"{api}/devices/{DEVICE_A}/versions?limit=4&before={page['next_before']}", headers=operator
    ) as response:
        page = await response.json()
    assert [v["id"] for v in page["versions"]] == [2, 1]
    assert page["next_before"] is None
    async with session.get(f"{api}/devices/{MAC_A}/versions/latest", headers=operator) as r:
        text = await r.text()
    assert "/pwd ********" in text
    assert "n3w-secret" not in text
    assert "vars create PHONE/REG-PWD pb ********" in text
    async with session.get(f"{api}/devices/{MAC_A}/diff", headers=operator) as response:
        diff = await response.text()
        assert response.headers["X-Backup-From"] == "5"
    # Only the password changed: the line shows as changed, neither value does.
    assert "-config change ADMIN /user admin /pwd ********\n" in diff
    assert "+config change ADMIN /user admin /pwd ********\n" in diff
    assert "s3cret" not in diff
    assert "n3w-secret" not in diff
    async with session.get(f"{api}/devices/{MAC_A}/diff?from=1&to=2", headers=operator) as r:
        diff = await r.text()
    assert "-config change NTP0 /server 192.0.2.20" in diff
    assert "+config change NTP0 /server 192.0.2.21" in diff
    assert "s3cret" not in diff
    for url in (
        f"{api}/devices/{MAC_A}/diff?show_secrets=1",
        f"{api}/devices/{MAC_A}/versions/1?show_secrets=1",
    ):
        async with session.get(url, headers=operator) as response:
            assert response.status == 403
    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        async with session.get(f"{api}/devices/{MAC_A}/diff?show_secrets=1", headers=admin) as r:
            diff = await r.text()
    assert "-config change ADMIN /user admin /pwd s3cret-admin" in diff
    assert "+config change ADMIN /user admin /pwd n3w-secret" in diff
    assert any(
        "secrets-shown" in r.getMessage() and "account=admin" in r.getMessage()
        for r in caplog.records
    )
    async with session.get(f"{api}/devices/{MAC_C}/versions") as response:
        assert response.status == 401
    async with session.get(f"{api}/devices/{MAC_C}/versions", headers=operator) as response:
        assert response.status == 404
    async with session.get(f"{api}/devices/not-a-device/versions", headers=operator) as response:
        assert response.status == 400
    async with session.get(f"{api}/alerts", headers=operator) as response:
        assert len((await response.json())["alerts"]) == 5
    async with session.post(f"{api}/prune?dry_run=1", headers=operator) as response:
        assert response.status == 403
    async with session.post(f"{api}/prune?dry_run=1", headers=admin) as response:
        assert (await response.json())["dry_run"] is True
    # The archive is not on the device listeners.
    device_session = await site.session(DEVICE_A)
    async with device_session.get(f"{site.proven}/api/v1/backups/devices", headers=admin) as r:
        assert r.status == 404


async def test_openapi_of_the_archive(site: Site) -> None:
    session = await site.session()
    async with session.get(f"{site.admin}/api/v1/backups/openapi.json") as response:
        document = await response.json()
    from services.backup.archive_api import ENDPOINTS

    documented = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert documented == {(e.method, e.path) for e in ENDPOINTS}
    for method, path in sorted(documented - {("GET", "/api/v1/backups/openapi.json")}):
        concrete = path.replace("{device}", MAC_A).replace("{version}", "1")
        async with session.request(method, site.admin + concrete) as response:
            assert response.status == 401, (method, concrete)


# --- diff and redaction golden files -----------------------------------------------------------


def golden(name: str, actual: str) -> None:
    assert_golden(GOLDEN / name, actual)


OLD = (GOLDEN / "old.txt").read_bytes() if (GOLDEN / "old.txt").exists() else b""
NEW = (GOLDEN / "new.txt").read_bytes() if (GOLDEN / "new.txt").exists() else b""
REDACTION = Redaction.build(BackupSettings().secret_options, BackupSettings().secret_var_flags)


@pytest.mark.parametrize(
    ("name", "volatile", "redacted"),
    [
        ("diff-redacted.diff", False, True),
        ("diff-all-lines-redacted.diff", True, True),
        ("diff-secrets.diff", False, False),
    ],
)
def test_diff_golden(name: str, volatile: bool, redacted: bool) -> None:
    text = unified_diff(
        Side(OLD, "IP232-01-02-03 version 1"),
        Side(NEW, "IP232-01-02-03 version 2"),
        normalizer=None if volatile else Normalizer.build(),
        redaction=REDACTION if redacted else None,
    )
    golden(name, text)


@pytest.mark.parametrize(
    ("extra", "joined"),
    [
        ((), True),
        ((r"^config change NTP0 ",), True),
        # A backreference or a global flag cannot live inside an alternation.
        ((r"^(vars) create \1",), False),
        ((r"(?i)^CONFIG CHANGE NTP0 ",), False),
    ],
)
def test_volatile_lines_are_the_same_whether_patterns_are_joined_or_not(
    extra: tuple[str, ...], joined: bool
) -> None:
    normalizer = Normalizer.build(extra)
    assert (normalizer.combined is not None) is joined
    config = (
        b"config change CMD0 /name IP232-01-02-03\r\n"
        b"mod cmd FLASHDIR0 add-item 101 (cn=a)(type=x)(info=y)\r\n"
        b"vars create UPDATE/CHECK p 1234\r\n"
        b"vars create vars create x\r\n"
        b"config change NTP0 /server 192.0.2.1\r\n"
        b"config change UP1 /url x\r\n"
        b"config change IP0 /addr 192.0.2.2\r\n"
    )
    one_by_one = [
        line
        for line in config.decode().splitlines()
        if not any(pattern.search(line) for pattern in normalizer.patterns)
    ]
    assert normalizer.lines(config) == one_by_one
    assert "config change IP0 /addr 192.0.2.2" in one_by_one
    assert not any(line.startswith("config change UP1") for line in one_by_one)
    if extra:
        assert len(one_by_one) == 3


def test_redaction_golden() -> None:
    from services.backup.diff import redact_content

    golden("new-redacted.txt", redact_content(NEW, REDACTION).decode())
    assert (
        hashlib.sha256(redact_content(NEW, Redaction.build([], []))).digest()
        == hashlib.sha256(NEW).digest()
    )


# --- WebDAV ------------------------------------------------------------------------------------


async def test_webdav_with_a_real_client(site: Site) -> None:
    from webdav4.client import Client  # type: ignore[import-untyped]

    await site.put(CONFIG_1)
    await site.put(CONFIG_1 + "config change X /y 2\r\n")
    await site.put(CONFIG_1, device=DEVICE_C, name=f"{DEVICE_C}.txt")
    versions = await site.versions()

    def browse() -> tuple[list[str], list[dict[str, Any]], bytes, dict[str, Any]]:
        client = Client(
            site.admin + "/dav/backups",
            auth=("admin", ADMIN_PASSWORD),
            verify=ssl.create_default_context(cafile=str(site.pki.ca)),
        )
        try:
            customers = client.ls("/", detail=False)
            files = client.ls(f"/Kuenkel00001/{MAC_A}", detail=True)
            newest = sorted(f["name"] for f in files)[-1]
            import io

            buffer = io.BytesIO()
            client.download_fileobj(newest, buffer)
            info = client.info(newest)
            return customers, files, buffer.getvalue(), info
        finally:
            client.http.close()

    customers, files, content, info = await asyncio.to_thread(browse)
    assert [c.rstrip("/") for c in customers] == ["Kuenkel00001"]
    assert len(files) == 2
    assert all(f["type"] == "file" for f in files)
    assert all(f["name"].endswith("Z.txt") for f in files)
    assert content == (CONFIG_1 + "config change X /y 2\r\n").encode()  # unredacted for admins
    assert info["content_length"] == versions[0].size
    assert info["etag"].strip('"') == versions[0].content_sha256.hex()


async def test_webdav_raw_requests(site: Site) -> None:
    await site.put(CONFIG_1)
    session = await site.session()
    admin = basic("admin", ADMIN_PASSWORD)
    base = f"{site.admin}/dav/backups"
    async with session.request("PROPFIND", f"{base}/", headers={**admin, "Depth": "1"}) as r:
        assert r.status == 207
        body = await r.text()
    assert "<D:href>/dav/backups/Kuenkel00001/</D:href>" in body
    async with session.request(
        "PROPFIND", f"{base}/Kuenkel00001/", headers={**admin, "Depth": "1"}
    ) as r:
        assert f"<D:href>/dav/backups/Kuenkel00001/{MAC_A}/</D:href>" in await r.text()
    async with session.request("PROPFIND", f"{base}/", headers=admin) as r:
        assert r.status == 403  # Depth infinity
        assert "propfind-finite-depth" in await r.text()
    async with session.request(
        "PROPFIND", f"{base}/", headers={**basic("operator", OPERATOR_PASSWORD), "Depth": "0"}
    ) as r:
        assert r.status == 403
    async with session.request("PROPFIND", f"{base}/", headers={"Depth": "0"}) as r:
        assert r.status == 401
    for method in ("PUT", "DELETE", "MKCOL", "MOVE", "COPY", "PROPPATCH", "LOCK"):
        async with session.request(method, f"{base}/Kuenkel00001/x.txt", headers=admin) as r:
            assert r.status == 405
            assert r.headers["Allow"] == "OPTIONS, PROPFIND, GET, HEAD"
    for path in (
        "/Other/",
        f"/Kuenkel00001/{MAC_C}/",
        f"/Kuenkel00001/{MAC_A}/20000101T000000.000000Z.txt",
        "/a/b/c/d",
    ):
        async with session.request("PROPFIND", base + path, headers={**admin, "Depth": "0"}) as r:
            assert r.status == 404, path
    assert len(await site.versions()) == 1


# --- CLI ---------------------------------------------------------------------------------------


async def test_cli(
    site: Site,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await site.put(CONFIG_1)
    await site.put(CONFIG_1.replace("192.0.2.10", "192.0.2.11").replace("s3cret-admin", "other"))

    run = service_cli(register, database_url, capsys)

    code, out = await run("backups", "list")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["MAC", "HARDWARE", "ID"]
    assert f"{MAC_A}  {DEVICE_A}  Kuenkel00001  2 " in out
    code, out = await run("backups", "versions", "00-90-33-01-02-03")
    assert [line.split()[0] for line in out.splitlines()] == ["ID", "2", "1"]
    code, out = await run("backups", "diff", DEVICE_A)
    golden("cli-diff.diff", "\n".join(out.splitlines()[2:]) + "\n")
    assert out.splitlines()[0].startswith(f"--- {DEVICE_A} version 1 (")
    code, out = await run("backups", "show", MAC_A, "1")
    assert "/pwd ********" in out
    with caplog.at_level(logging.WARNING, logger="pbxfront.security"):
        code, out = await run("backups", "show", MAC_A, "1", "--show-secrets")
    assert "/pwd s3cret-admin" in out
    assert any("secrets-shown from cli" in r.getMessage() for r in caplog.records)
    async with site.pool.acquire() as connection:
        shown = await connection.fetch(
            "SELECT origin, object_id, after::text AS after FROM audit_log "
            "WHERE action = 'backup.show-secrets'"
        )
    assert [(r["origin"], r["object_id"]) for r in shown] == [("cli", MAC_A)]
    code, out = await run("backups", "prune", "--dry-run")
    assert code == 0
    assert "would delete 0 version(s) in total (dry run: nothing changed)" in out
    code, out = await run("backups", "alerts", "--json")
    assert json.loads(out)[0]["kind"] == "changed"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (b"a\nb\nc\n", b"a\nb\nc\n", DiffStat(0, 0)),
        (b"a\nb\nc\n", b"x\nb\nc\n", DiffStat(1, 1)),
        (b"a\nb\nc\n", b"a\nb\nx\n", DiffStat(1, 1)),
        (b"a\nb\nc\n", b"a\nx\ny\nc\n", DiffStat(2, 1)),
        (b"a\na\na\n", b"a\na\n", DiffStat(0, 1)),
        (b"a\nb\n", b"b\na\nb\n", DiffStat(1, 0)),
        (b"", b"a\nb\n", DiffStat(2, 0)),
        (b"a\nb\n", b"", DiffStat(0, 2)),
    ],
)
def test_diffstat_counts_only_the_lines_between_common_start_and_end(
    old: bytes, new: bytes, expected: DiffStat
) -> None:
    assert diffstat(old, new, Normalizer.build()) == expected
