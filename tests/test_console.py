"""The operator console in a real headless Chromium (Debian's, driven by playwright) against a
real admin listener with real TLS and real PostgreSQL; forged requests with curl and aiohttp."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import importlib.metadata
import logging
import re
import secrets
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.core.auth import AccountRepository, Role
from services.core.config import (
    AdminSettings,
    BackupSettings,
    ListenerSettings,
    Settings,
    UpdateSettings,
)
from services.core.inventory import (
    Device,
    InventoryRepository,
    apply_inventory,
    read_inventory_file,
)
from services.core.runner import Node, start_node
from services.core.unknown import UPDATE as UPDATE_SERVICE
from services.core.unknown import UnknownDeviceRepository
from services.events.delivery import DeliveryRepository
from services.serve import service_factories
from services.update.console import FleetPages
from services.update.repository import (
    FLEET_SORTS,
    FleetQuery,
    PollRecord,
    RolloutRepository,
    UpdateRepository,
)
from services.update.rollout import RolloutState
from tests.conftest import (
    DEVICE_A,
    DEVICE_B,
    SessionPki,
    curl,
    curl_with_headers,
    peer_program,
    until,
)

playwright_api = pytest.importorskip("playwright.async_api")

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_PASSWORD = "admin console pass"
OPERATOR_PASSWORD = "operator console pass"
READER_PASSWORD = "reader console pass"
MAC_A = "009033010203"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"

CONFIG_1 = (
    "config change NTP0 /server 192.0.2.10\r\n"
    "config change SIP0 /user alice /pwd topsecret123\r\n"
    "config change PHONE0 /name reception\r\n"
)
CONFIG_2 = CONFIG_1.replace("192.0.2.10", "192.0.2.11") + "config change HTTP0 /port 8080\r\n"


def _spki_hash(certificate: Path) -> str:
    loaded = x509.load_pem_x509_certificate(certificate.read_bytes())
    der = loaded.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
async def browser(session_pki: SessionPki) -> AsyncIterator[Any]:
    """One Chromium for the module. It trusts exactly the session's server key (SPKI pin), so
    TLS is verified, not switched off."""
    executable = peer_program("chromium", "chromium")
    async with playwright_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable,
            args=[
                *ARGS,
                f"--ignore-certificate-errors-spki-list={_spki_hash(session_pki.server_certificate)}",
            ],
        )
        yield launched
        await launched.close()


@dataclasses.dataclass
class Console:
    node: Node
    pool: asyncpg.Pool
    pki: SessionPki
    tmp: Path

    @property
    def base(self) -> str:
        return self.node.addresses["admin"]

    @property
    def devices(self) -> str:
        return self.node.addresses["devices"]

    def url(self, path: str) -> str:
        return self.base + path

    def session(self, source: str | None = None) -> aiohttp.ClientSession:
        """A client (from the loopback address ``source`` if given)."""
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        local = (source, 0) if source is not None else None
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, local_addr=local),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )

    async def post_alarm(self, text: str) -> int:
        certificate, key = self.pki.devices[DEVICE_A]
        status, _ = await curl(
            "--cacert",
            str(self.pki.ca),
            "--cert",
            str(certificate),
            "--key",
            str(key),
            "--data",
            f"type=set&code=1234&severity=Major&source=SIP&text={text}",
            f"{self.devices}/events",
        )
        return status

    async def post_event(self, form: str) -> int:
        """One event as DEVICE_A sends it (its client certificate), e.g. ``type=syslog&...``."""
        certificate, key = self.pki.devices[DEVICE_A]
        status, _ = await curl(
            "--cacert",
            str(self.pki.ca),
            "--cert",
            str(certificate),
            "--key",
            str(key),
            "--data",
            form,
            f"{self.devices}/events",
        )
        return status

    async def api(self, path: str) -> Any:
        """The admin API's JSON for ``path`` (as the admin, Basic auth), to compare pages with."""
        credentials = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        async with (
            self.session() as client,
            client.get(self.url(path), headers={"Authorization": f"Basic {credentials}"}) as r,
        ):
            assert r.status == 200, await r.text()
            return await r.json()

    async def audit_rows(self, action: str) -> list[dict[str, Any]]:
        """The audit trail's rows for one console action, as the admin API lists them."""
        listed = await self.api("/api/v1/audit?limit=1000")
        return [e for e in listed["entries"] if e["action"] == action]

    async def upload_contacts(self, content: str) -> int:
        folder = self.tmp / secrets.token_hex(4)
        await asyncio.to_thread(folder.mkdir)
        await asyncio.to_thread((folder / "contacts.csv").write_text, content)
        status, _ = await curl(
            "--cacert",
            str(self.pki.ca),
            "-u",
            "Kuenkel00001:change-me-registration",
            "-T",
            str(folder / "contacts.csv"),
            f"{self.devices}/DRIVE/CF0/directory/Kuenkel00001/",
        )
        return status

    async def put_backup(self, content: str) -> int:
        path = self.tmp / f"{secrets.token_hex(4)}.txt"
        await asyncio.to_thread(path.write_text, content)
        certificate, key = self.pki.devices[DEVICE_A]
        status, _ = await curl(
            "--cacert",
            str(self.pki.ca),
            "--cert",
            str(certificate),
            "--key",
            str(key),
            "-T",
            str(path),
            f"{self.devices}/DRIVE/CF0/update/backup/{DEVICE_A}.txt",
        )
        return status


@pytest.fixture
async def console(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> AsyncIterator[Console]:
    accounts = AccountRepository(pool)
    await accounts.add("admin", frozenset({Role.ADMIN}), ADMIN_PASSWORD)
    await accounts.add("ops", frozenset({Role.OPERATOR}), OPERATOR_PASSWORD)
    await accounts.add("reader", frozenset({Role.DIRECTORY_READER}), READER_PASSWORD)
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    tls = ListenerSettings(
        port=0,
        services=("admin",),
        tls=True,
        certificate=session_pki.server_certificate,
        key=session_pki.server_key,
    )
    listeners = {
        "admin": tls,
        "devices": dataclasses.replace(
            tls,
            services=("update", "backup", "events", "contacts"),
            request_client_certificate=True,
            client_ca=(session_pki.ca,),
        ),
    }
    settings = Settings(
        update=UpdateSettings(
            scripts_dir=repo_root / "staging_scripts", firmware_dir=tmp_path / "firmware"
        ),
        backup=BackupSettings(prune_interval=0.0),
        # The System page lists them.
        listeners=listeners,
        admin=AdminSettings(console_login_failure_burst=3, console_login_failure_per_second=0.01),
    )
    node = await start_node(settings, pool, listeners, service_factories())
    yield Console(node, pool, session_pki, tmp_path)
    await node.stop()


async def _context(browser: Any, console: Console, **options: Any) -> tuple[Any, list[str]]:
    """A browser context that records every request it makes."""
    context = await browser.new_context(**options)
    context.set_default_timeout(10_000)
    requested: list[str] = []

    async def record(route: Any) -> None:
        requested.append(route.request.url)
        await route.continue_()

    await context.route("**/*", record)
    return context, requested


async def _login(page: Any, console: Console, name: str, password: str) -> None:
    await page.goto(console.url("/ui/login"))
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def _screenshot(page: Any, name: str, *, full_page: bool = True) -> None:
    """For looking at, not comparing: written to var/screenshots/ on every run."""
    await asyncio.to_thread(SCREENSHOTS.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


# --- login, session, logout --------------------------------------------------------------------


async def test_login_session_cookie_csp_and_logout(browser: Any, console: Console) -> None:
    context, requested = await _context(browser, console)
    page = await context.new_page()
    response = await page.goto(console.url("/ui/fleet"))
    assert response is not None
    # Not logged in: the login form, and back to the page asked for afterwards.
    assert urlsplit(page.url).path == "/ui/login"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    await page.fill("input[name=name]", "ops")
    await page.fill("input[name=password]", OPERATOR_PASSWORD)
    await page.click("button[type=submit]")
    assert urlsplit(page.url).path == "/ui/fleet"
    assert await page.inner_text("h1") == "Fleet 4 devices"
    cookies = {c["name"]: c for c in await context.cookies()}
    session = cookies["__Host-pbxfront_console"]
    assert session["httpOnly"] is True
    assert session["secure"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/"
    # The cookie is not a session id in the database: only its SHA-256 is.
    async with console.pool.acquire() as connection:
        stored = await connection.fetchval("SELECT token_sha256 FROM console_sessions")
    assert stored == hashlib.sha256(session["value"].encode()).digest()
    await page.click("text=Log out")
    assert urlsplit(page.url).path == "/ui/login"
    async with console.pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM console_sessions") == 0
    await page.goto(console.url("/ui/fleet"))
    assert urlsplit(page.url).path == "/ui/login"
    # Every request went to the listener itself: no CDN, no other host.
    assert requested
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


async def test_wrong_password_is_limited_per_account_and_logged(
    console: Console, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pbxfront.security")
    async with console.session() as client:

        async def attempt(name: str, password: str) -> int:
            async with client.get(console.url("/ui/login")) as page:
                token = re.search(r'name="csrf" value="([^"]+)"', await page.text())
            assert token is not None
            form = {"csrf": token.group(1), "name": name, "password": password, "next": "/ui/"}
            async with client.post(
                console.url("/ui/login"), data=form, allow_redirects=False
            ) as response:
                return response.status

        assert await attempt("ops", "wrong password 1") == 401
        assert await attempt("ops", "wrong password 2") == 401
        assert await attempt("ops", "wrong password 3") == 401
        # The burst (3) is spent: even the right password is refused for now.
        assert await attempt("ops", OPERATOR_PASSWORD) == 429
    failed = [r for r in caplog.records if "console-login-failed" in r.getMessage()]
    limited = [r for r in caplog.records if "console-login-limited" in r.getMessage()]
    assert len(failed) == 3
    assert "account=ops" in failed[0].getMessage()
    assert limited
    assert all(OPERATOR_PASSWORD not in r.getMessage() for r in caplog.records)
    assert all("wrong password" not in r.getMessage() for r in caplog.records)


async def _logged_in(
    console: Console, client: aiohttp.ClientSession, name: str, password: str
) -> str:
    """Log in over HTTP; the session's CSRF token (as the pages carry it)."""
    async with client.get(console.url("/ui/login")) as page:
        token = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert token is not None
    form = {"csrf": token.group(1), "name": name, "password": password, "next": "/ui/"}
    async with client.post(console.url("/ui/login"), data=form) as response:
        assert response.status == 200, await response.text()
        found = re.search(r'name="csrf" value="([^"]+)"', await response.text())
    assert found is not None
    return found.group(1)


async def test_forged_posts_are_refused(console: Console) -> None:
    restage = console.url(f"/ui/devices/{MAC_A}/restage")
    async with console.session() as client:
        csrf = await _logged_in(console, client, "ops", OPERATOR_PASSWORD)
        cookie = next(c for c in client.cookie_jar if c.key == "__Host-pbxfront_console")
        for form in ({}, {"csrf": "forged"}, {"csrf": csrf[:-1]}):
            async with client.post(restage, data=form, allow_redirects=False) as response:
                assert response.status == 403
                assert "CSRF" in await response.text()
    # The same with curl: the session cookie alone does not make a POST.
    status, body = await curl(
        "--cacert",
        str(console.pki.ca),
        "-b",
        f"__Host-pbxfront_console={cookie.value}",
        "-d",
        "csrf=nothing",
        restage,
    )
    assert status == 403
    assert b"CSRF" in body
    status, _ = await curl("--cacert", str(console.pki.ca), "-d", f"csrf={csrf}", restage)
    assert status == 403  # a token without its session
    assert await UpdateRepository(console.pool).pending_restages() == set()
    # With both, it works.
    status, _ = await curl(
        "--cacert",
        str(console.pki.ca),
        "-b",
        f"__Host-pbxfront_console={cookie.value}",
        "-d",
        f"csrf={csrf}",
        restage,
    )
    assert status == 303
    assert await UpdateRepository(console.pool).pending_restages() == {MAC_A}
    async with console.pool.acquire() as connection:
        rows = await connection.fetch("SELECT actor, action, object_id FROM audit_log")
    assert [(r["action"], r["object_id"]) for r in rows] == [("console.restage", MAC_A)]
    assert rows[0]["actor"].endswith(" (console)")


async def test_session_ends_when_it_expires_or_the_account_changes(console: Console) -> None:
    async with console.session() as client:
        await _logged_in(console, client, "ops", OPERATOR_PASSWORD)
        async with client.get(console.url("/ui/fleet"), allow_redirects=False) as response:
            assert response.status == 200
        # The clock moves past the session's end (done to the row: the lifetime is hours).
        async with console.pool.acquire() as connection:
            await connection.execute("UPDATE console_sessions SET expires_at = now()")
        async with client.get(console.url("/ui/fleet"), allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/ui/login?next=/ui/fleet"
    async with console.session() as client:
        await _logged_in(console, client, "ops", OPERATOR_PASSWORD)
        await AccountRepository(console.pool).set_password("ops", "a new password 42")
        async with client.get(console.url("/ui/fleet"), allow_redirects=False) as response:
            assert response.status == 303


async def test_events_live_tail_and_active_alarms(browser: Any, console: Console) -> None:
    context, requested = await _context(browser, console)
    page = await context.new_page()
    await _login(page, console, "ops", OPERATOR_PASSWORD)
    await page.goto(console.url("/ui/events"))
    await page.wait_for_selector("#live >> text=Live")
    assert await console.post_alarm("Registration+lost") == 201
    # Pushed over server-sent events into the open page, no reload.
    row = page.locator("#latest tr", has_text="Registration lost")
    await row.wait_for()
    assert "IP232-01-02-03" in await row.inner_text()
    await _screenshot(page, "events")
    await page.reload()
    alarms = await page.locator("table.events").first.inner_text()
    assert "Registration lost" in alarms
    assert "active" in alarms
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


async def test_directory_reader_sees_only_the_directory(console: Console) -> None:
    async with console.session() as client:
        csrf = await _logged_in(console, client, "reader", READER_PASSWORD)
        # Actions too, with a valid CSRF token.
        async with client.post(
            console.url(f"/ui/devices/{MAC_A}/restage"), data={"csrf": csrf}, allow_redirects=False
        ) as response:
            assert response.status == 403
        for path in ("/ui/fleet", f"/ui/devices/{MAC_A}", "/ui/events", "/ui/system"):
            async with client.get(console.url(path), allow_redirects=False) as response:
                assert response.status == 403, path
        async with client.get(console.url("/ui/")) as response:
            assert response.url.path == "/ui/directory"
            text = await response.text()
        assert "Fleet" not in text
        assert "Directory test search" in text


async def test_secrets_only_for_admins(console: Console, caplog: pytest.LogCaptureFixture) -> None:
    assert await console.put_backup(CONFIG_1) == 201
    assert await console.put_backup(CONFIG_2) == 201
    diff = f"/ui/devices/{MAC_A}/diff"
    async with console.session() as client:
        await _logged_in(console, client, "ops", OPERATOR_PASSWORD)
        async with client.get(console.url(diff)) as response:
            text = await response.text()
        assert "topsecret123" not in text
        assert "********" in text
        async with client.get(console.url(diff + "?show_secrets=1")) as response:
            assert response.status == 403
    caplog.set_level(logging.INFO, logger="pbxfront.security")
    device = f"/ui/devices/{MAC_A}"
    async with console.session() as client:
        await _logged_in(console, client, "ops", OPERATOR_PASSWORD)
        async with client.get(console.url(device)) as response:
            assert "change-me-pbx-password" not in await response.text()
        async with client.get(console.url(device + "?show_secrets=1")) as response:
            assert response.status == 403
    assert not [r for r in caplog.records if "secrets-shown" in r.getMessage()]
    async with console.session() as client:
        await _logged_in(console, client, "admin", ADMIN_PASSWORD)
        async with client.get(console.url(diff + "?show_secrets=1")) as response:
            assert "topsecret123" in await response.text()
        async with client.get(console.url(device + "?show_secrets=1")) as response:
            assert "change-me-pbx-password" in await response.text()
    # Each look at the secrets is one line in the security log: who, which device, which
    # versions; the secret itself never.
    shown = [r.getMessage() for r in caplog.records if "secrets-shown" in r.getMessage()]
    assert len(shown) == 2
    assert all("account=admin" in line and f"device={MAC_A}" in line for line in shown)
    assert "versions=" in shown[0]
    forbidden = [r.getMessage() for r in caplog.records if "forbidden" in r.getMessage()]
    assert any("account=ops" in line for line in forbidden)
    assert all("topsecret123" not in r.getMessage() for r in caplog.records)
    assert all("change-me-pbx-password" not in r.getMessage() for r in caplog.records)


# --- fleet -------------------------------------------------------------------------------------


async def _seed_fleet(pool: asyncpg.Pool, count: int) -> None:
    async with pool.acquire() as connection:
        repository = InventoryRepository(connection)
        async with connection.transaction():
            for index in range(count):
                mac = f"0090340{index:05x}"
                await repository.upsert_device(
                    Device(
                        mac=mac,
                        device_type="IP232" if index % 2 else "IP222",
                        device_class="phone",
                        customer="Kuenkel00001",
                        name=f"seat {index:04d}",
                    )
                )


async def test_fleet_search_sort_and_paging_with_many_devices(
    browser: Any, console: Console
) -> None:
    await _seed_fleet(console.pool, 2000)
    # Paging happens in the query: the repository returns one page and the total.
    rows, total = await UpdateRepository(console.pool).fleet(
        FleetQuery(sort="hardware_id", limit=50, offset=1950)
    )
    assert total == 2004
    assert len(rows) == 50
    assert rows == sorted(rows, key=lambda r: (r.hardware_id, r.mac))
    context, requested = await _context(browser, console)
    page = await context.new_page()
    await _login(page, console, "ops", OPERATOR_PASSWORD)
    assert await page.inner_text("#total") == "2004 devices"
    assert await page.locator("#fleet tbody tr").count() == 50
    assert await page.inner_text("#page") == "page 1 of 41"
    await page.click("a[rel=next]")
    assert await page.inner_text("#page") == "page 2 of 41"
    # Sort by hardware id, descending (a second click on the column).
    await page.click("#fleet th >> text=Hardware id")
    await page.click("#fleet th >> text=Hardware id")
    first = await page.inner_text("#fleet tbody tr:first-child td[data-label='Hardware id'] a")
    newest, _ = await UpdateRepository(console.pool).fleet(
        FleetQuery(sort="hardware_id", descending=True, limit=1)
    )
    assert first == newest[0].hardware_id == "IPVA-a8-5a-38"
    # Search (server-side): one seat by name, then a MAC written with dashes.
    await page.fill("input[name=q]", "seat 0042")
    await page.click("form.filters button")
    assert await page.inner_text("#total") == "1 device"
    await page.fill("input[name=q]", "00-90-33-01-02-03")
    await page.click("form.filters button")
    assert await page.inner_text("#total") == "1 device"
    await page.select_option("select[name=type]", "IP222")
    await page.fill("input[name=q]", "")
    await page.click("form.filters button")
    # 1000 seeded IP222 and the example's one.
    assert await page.inner_text("#total") == "1001 devices"
    await page.set_viewport_size({"width": 390, "height": 844})
    await _screenshot(page, "fleet-phone", full_page=False)
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(console.url("/ui/fleet"))
    await _screenshot(page, "fleet")
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


# --- device --------------------------------------------------------------------------------------


async def test_device_page_script_backup_diff_and_restage(browser: Any, console: Console) -> None:
    assert await console.put_backup(CONFIG_1) == 201
    assert await console.put_backup(CONFIG_2) == 201
    context, requested = await _context(browser, console)
    page = await context.new_page()
    await _login(page, console, "ops", OPERATOR_PASSWORD)
    await page.goto(console.url(f"/ui/devices/{MAC_A}"))
    script = await page.inner_text("#script")
    assert "pbxfront update.txt for IP232-01-02-03" in script
    assert "config write" in script
    explain = await page.inner_text("#explain")
    assert "global" in explain
    await _screenshot(page, "device")
    await page.click("#versions >> text=diff with 1")
    assert urlsplit(page.url).path == f"/ui/devices/{MAC_A}/diff"
    changed = page.locator("#diff tr.changed")
    assert await changed.count() == 1
    assert "192.0.2.10" in await changed.locator("td.old").inner_text()
    assert "192.0.2.11" in await changed.locator("td.new").inner_text()
    assert "8080" in await page.locator("#diff tr.added td.new").inner_text()
    body = await page.inner_text("body")
    assert "topsecret123" not in body
    assert "********" in body
    await _screenshot(page, "diff")
    await page.goto(console.url(f"/ui/devices/{MAC_A}"))
    await page.click("#restage")
    assert "Restage requested" in await page.inner_text("p.notice")
    assert await UpdateRepository(console.pool).pending_restages() == {MAC_A}
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


async def test_pages_read_without_javascript(browser: Any, console: Console) -> None:
    assert await console.put_backup(CONFIG_1) == 201
    context, requested = await _context(browser, console, java_script_enabled=False)
    page = await context.new_page()
    await _login(page, console, "admin", ADMIN_PASSWORD)
    assert urlsplit(page.url).path == "/ui/fleet"
    assert await page.locator("#fleet tbody tr").count() == 4
    for path, heading in (
        (f"/ui/devices/{MAC_A}", "IP232-01-02-03"),
        ("/ui/customers/Kuenkel00001", "Kuenkel00001"),
        ("/ui/events", "Events"),
        ("/ui/backups", "Backups"),
        ("/ui/firmware", "Firmware"),
        ("/ui/system", "System"),
        ("/ui/directory?customer=Kuenkel00001&q=Mue", "Directory test search"),
    ):
        response = await page.goto(console.url(path))
        assert response is not None, path
        assert response.status == 200, path
        assert (await page.inner_text("h1")).startswith(heading), path
        await _screenshot(page, "page-" + path.split("?")[0].strip("/").replace("/", "-"))
    await page.goto(console.url("/ui/system"))
    assert "console_sessions" in await page.inner_text("body")
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


async def test_console_headers_on_every_page(console: Console) -> None:
    status, _, headers = await curl_with_headers(
        "--cacert", str(console.pki.ca), console.url("/ui/login")
    )
    assert status == 200
    lowered = headers.lower()
    assert "content-security-policy: default-src 'self'" in lowered
    assert "x-frame-options: deny" in lowered
    assert "cache-control: no-store" in lowered


async def test_fleet_query_filters_both_paths(console: Console) -> None:
    """The devices-only path and the joined path agree; status filters and sorts work."""
    repository = UpdateRepository(console.pool)
    await repository.record_polls(
        [
            PollRecord(
                mac=MAC_A,
                source_address="198.51.100.7",
                proof="proven",
                phase="update",
                version="13r2",
                prot="13r2 sr5",
                boot=None,
                device_check="abc",
                cfg=None,
                hash_sent="abc",
                in_sync=True,
            )
        ],
        [3],
    )
    everything, total = await repository.fleet(FleetQuery(limit=200))
    assert total == 4
    by_status, _ = await repository.fleet(FleetQuery(sort="last_seen", limit=200))
    assert {r.mac for r in by_status} == {r.mac for r in everything}
    assert by_status[0].mac == MAC_A  # the only one seen; never-seen devices sort last
    polled = next(r for r in everything if r.mac == MAC_A)
    assert (polled.proof, polled.prot, polled.in_sync, polled.stale) == (
        "proven",
        "13r2 sr5",
        True,
        False,
    )
    for query, expected in (
        (FleetQuery(in_sync=True), {MAC_A}),
        (FleetQuery(stale=False), {MAC_A}),
        (FleetQuery(phase="update", proof="proven"), {MAC_A}),
        (FleetQuery(search="198.51.100"), {MAC_A}),
        (FleetQuery(search="reception"), {MAC_A}),
        (FleetQuery(certificate="none", search="ip232-01"), {MAC_A}),
        (FleetQuery(device_type="IPVA"), {"009033a85a38"}),
        (FleetQuery(search="50%_"), set()),
    ):
        rows, count = await repository.fleet(query)
        assert {r.mac for r in rows} == expected, query
        assert count == len(expected), query
    stale, count = await repository.fleet(FleetQuery(stale=True))
    assert count == 3
    assert MAC_A not in {r.mac for r in stale}


async def test_fleet_query_agrees_with_a_plain_reading(console: Console) -> None:
    """Every sort, both directions, paged, and searches long and short (the trigram index of
    migration 024 and the plain scan) give what reading all devices in Python gives."""
    await _seed_fleet(console.pool, 120)
    repository = UpdateRepository(console.pool)
    await repository.record_polls(
        [
            PollRecord(
                mac=f"0090340{index:05x}",
                source_address=f"198.51.100.{index}",
                proof="proven" if index % 3 else "claimed",
                phase="update" if index % 4 else "staging",
                version=None,
                prot=f"13r{index % 3} sr1",
                boot=None,
                device_check=None,
                cfg=None,
                hash_sent=None,
                in_sync=bool(index % 5),
            )
            for index in range(0, 120, 2)
        ],
        [1] * 60,
    )
    everything, total = await repository.fleet(FleetQuery(limit=1000))
    assert total == len(everything) == 124
    fields = {"type": "device_type", "firmware": "prot", "certificate": "certificate_state"}
    pages_from_one_reading = FleetPages()
    for sort in FLEET_SORTS:
        field = fields.get(sort, sort)

        def order(row: Any, field: str = field) -> tuple[Any, ...]:
            # Ascending: by the value, NULLs last, then by MAC; descending is the exact reverse.
            value = getattr(row, field)
            return (1, row.mac) if value is None else (0, value, row.mac)

        ascending = [r.mac for r in sorted(everything, key=order)]
        for descending in (False, True):
            pages: list[str] = []
            for offset in range(0, 124, 50):
                page, count = await repository.fleet(
                    FleetQuery(sort=sort, descending=descending, limit=50, offset=offset)
                )
                assert count == 124
                pages += [r.mac for r in page]
            assert pages == (ascending[::-1] if descending else ascending), (sort, descending)
            # The console cuts a status sort's pages from one reading of the order: the same.
            cut: list[str] = []
            for offset in range(0, 124, 50):
                cut_rows, count = await pages_from_one_reading.fleet(
                    console.pool,
                    Settings(),
                    {"sort": sort, "descending": descending, "limit": 50, "offset": offset},
                )
                assert count == 124
                cut += [row["mac"] for row in cut_rows]
            assert cut == pages, (sort, descending)
    for term in ("a8", "5", "seat 004", "ip222-0", "0090340", "198.51.100.1", "50%_", "00003"):
        rows, count = await repository.fleet(FleetQuery(search=term, limit=200))

        def matches(row: Any, term: str = term) -> bool:
            text = " ".join(
                (row.mac, row.hardware_id, row.customer, row.cpe_id or "", row.name or "")
            ).lower()
            address = all(c in "0123456789.:" for c in term)
            return term in text or (address and term in (row.source_address or ""))

        assert {r.mac for r in rows} == {r.mac for r in everything if matches(r)}, term
        assert count == len(rows), term


async def test_a_status_sort_is_cut_from_one_reading_at_most_order_seconds_old(
    console: Console,
) -> None:
    repository = UpdateRepository(console.pool)

    async def poll(mac: str, prot: str) -> None:
        record = PollRecord(
            mac=mac,
            source_address="198.51.100.9",
            proof="proven",
            phase="update",
            version=None,
            prot=prot,
            boot=None,
            device_check=None,
            cfg=None,
            hash_sent=None,
            in_sync=True,
        )
        await repository.record_polls([record], [1])

    everything, _ = await repository.fleet(FleetQuery(limit=1000))
    first, second = sorted(r.mac for r in everything)[:2]
    await poll(first, "0001")
    await poll(second, "0002")
    filters = {"sort": "firmware", "descending": False, "limit": 2, "offset": 0}
    pages = FleetPages(order_seconds=3600)
    rows, _ = await pages.fleet(console.pool, Settings(), filters)
    assert [r["mac"] for r in rows] == [first, second]
    await poll(first, "0003")
    # Within order_seconds the order is the one read; the rows themselves are read fresh.
    rows, _ = await pages.fleet(console.pool, Settings(), filters)
    assert [(r["mac"], r["prot"]) for r in rows] == [(first, "0003"), (second, "0002")]
    # Once it is due, the page that notices is served from the old order while the new one is
    # read; the next page has it.
    pages.order_seconds = 0
    await pages.fleet(console.pool, Settings(), filters)

    async def reordered() -> bool:
        rows, _ = await pages.fleet(console.pool, Settings(), filters)
        return [r["mac"] for r in rows] == [second, first]

    await until(reordered, timeout=5)
    direct, _ = await repository.fleet(FleetQuery(sort="firmware", limit=2))
    assert [r.mac for r in direct] == [second, first]


CONTACTS_1 = (
    '"Surname","Firstname","Company","Busines Phone ","Mobile Phone"\r\n'
    '"Meier","Max","Kuenkel GmbH","+49703173009123",""\r\n'
)
CONTACTS_2 = CONTACTS_1 + '"Schulz","Sara","","07031 730090","0171 7654321"\r\n'


async def test_contacts_rollback_and_directory_search(console: Console) -> None:
    assert await console.upload_contacts(CONTACTS_1) == 201
    assert await console.upload_contacts(CONTACTS_2) == 201
    async with console.session() as client:
        csrf = await _logged_in(console, client, "ops", OPERATOR_PASSWORD)
        async with client.get(console.url("/ui/directory?customer=Kuenkel00001&q=Schulz")) as r:
            assert "Schulz" in await r.text()
        # A number as a phone's reverse lookup sends it.
        async with client.get(
            console.url("/ui/directory?customer=Kuenkel00001&q=%2B49703173009123")
        ) as response:
            text = await response.text()
        assert "Meier" in text
        assert "1 entry" in text
        async with client.get(console.url("/ui/customers/Kuenkel00001")) as response:
            text = await response.text()
        assert "2 accepted, 0 rejected" in text
        assert "1 accepted, 0 rejected" in text
        rollback = console.url("/ui/customers/Kuenkel00001/rollback")
        async with client.post(
            rollback, data={"csrf": csrf, "version": "1"}, allow_redirects=False
        ) as response:
            assert response.status == 303
        async with client.get(console.url("/ui/directory?customer=Kuenkel00001&q=Schulz")) as r:
            assert "Nothing found" in await r.text()
        async with client.post(
            rollback, data={"csrf": csrf, "version": "99"}, allow_redirects=False
        ) as response:
            assert response.status == 404
            assert "no version 99" in await response.text()
        async with client.post(
            rollback, data={"csrf": csrf, "version": "x"}, allow_redirects=False
        ) as response:
            assert response.status == 400
            assert "version: must be a whole number" in await response.text()
    # One audit row, for the rollback that happened; the refused ones left none.
    rows = await console.audit_rows("console.contacts-rollback")
    assert len(rows) == 1
    assert (rows[0]["object_type"], rows[0]["object_id"]) == ("customer", "Kuenkel00001")
    assert rows[0]["before"] == {"contacts_version": 2}
    assert rows[0]["after"] == {"contacts_version": 1}
    assert rows[0]["actor"] == "ops (console)"
    assert rows[0]["origin"] == "127.0.0.1"


async def test_adopt_an_unknown_device(console: Console) -> None:
    certificate, key = console.pki.devices[DEVICE_B]
    status, _ = await curl(
        "--cacert",
        str(console.pki.ca),
        "--cert",
        str(certificate),
        "--key",
        str(key),
        f"{console.devices}/DRIVE/CF0/update/update.txt?sn=0090330a0b0c&type=IP222",
    )
    assert status == 404
    async with console.session() as client:
        csrf = await _logged_in(console, client, "ops", OPERATOR_PASSWORD)
        async with client.get(console.url("/ui/fleet")) as response:
            assert "0090330a0b0c" in await response.text()
        adopt = console.url("/ui/fleet/adopt")
        form = {"csrf": csrf, "mac": "00-90-33-0a-0b-0c", "customer": "Kuenkel00001"}
        async with client.post(
            adopt, data={**form, "device_class": "toaster"}, allow_redirects=False
        ) as response:
            assert response.status == 400
            assert "device_class: must be one of" in await response.text()
        async with client.post(
            adopt, data={**form, "device_class": "phone"}, allow_redirects=False
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/ui/devices/0090330a0b0c?done=adopted"
        async with client.post(
            adopt, data={**form, "device_class": "phone"}, allow_redirects=False
        ) as response:
            assert response.status == 422
            assert "in the inventory already" in await response.text()
    device = await InventoryRepository(console.pool).get_device("0090330a0b0c")
    assert device is not None
    assert (device.device_type, device.customer, device.hardware_id) == (
        "IP222",
        "Kuenkel00001",
        DEVICE_B,
    )
    assert await UnknownDeviceRepository(console.pool).sightings(UPDATE_SERVICE) == []
    # The adoption is in the audit trail once (the refused attempts left nothing), with the
    # device as it was created.
    rows = await console.audit_rows("console.adopt")
    assert len(rows) == 1
    assert (rows[0]["object_type"], rows[0]["object_id"]) == ("device", "0090330a0b0c")
    assert rows[0]["actor"] == "ops (console)"
    assert rows[0]["before"] is None
    assert {k: rows[0]["after"][k] for k in ("mac", "customer", "device_type", "device_class")} == {
        "mac": "0090330a0b0c",
        "customer": "Kuenkel00001",
        "device_type": "IP222",
        "device_class": "phone",
    }


# --- pages against the API ---------------------------------------------------------------------


def _poll(mac: str, **changes: Any) -> PollRecord:
    values: dict[str, Any] = {
        "mac": mac,
        "source_address": "198.51.100.7",
        "proof": "proven",
        "phase": "update",
        "version": "13r2",
        "prot": "13r2 sr5",
        "boot": None,
        "device_check": "abc",
        "cfg": None,
        "hash_sent": "abc",
        "in_sync": True,
    }
    return PollRecord(**{**values, **changes})


async def _cells(row: Any) -> dict[str, str]:
    """A table row's cells by their data-label."""
    cells = row.locator("td[data-label]")
    found: dict[str, str] = {}
    for index in range(await cells.count()):
        cell = cells.nth(index)
        found[str(await cell.get_attribute("data-label"))] = (await cell.inner_text()).strip()
    return found


async def test_pages_show_what_the_api_returns(browser: Any, console: Console) -> None:
    await UpdateRepository(console.pool).record_polls([_poll(MAC_A)], [3])
    assert await console.post_alarm("Registration+lost") == 201
    assert await console.post_event("type=syslog&severity=info&text=Config+saved") == 201
    context, requested = await _context(browser, console)
    page = await context.new_page()
    await _login(page, console, "ops", OPERATOR_PASSWORD)

    # Fleet: every row as /api/v1/status has the device.
    api_devices = {d["mac"]: d for d in (await console.api("/api/v1/status"))["devices"]}
    await page.goto(console.url("/ui/fleet?sort=hardware_id"))
    rows = page.locator("#fleet tbody tr")
    assert await rows.count() == len(api_devices) == 4
    for index in range(await rows.count()):
        shown = await _cells(rows.nth(index))
        href = await rows.nth(index).locator("td[data-label='Hardware id'] a").get_attribute("href")
        expected = api_devices[str(href).rsplit("/", 1)[1]]
        assert shown["Customer"] == expected["customer"]
        assert shown["Type"] == expected["device_type"]
        assert shown["Hardware id"].split()[0] == expected["hardware_id"]
        assert shown["Proof"] == (expected["proof"] or "-")
        assert shown["Phase"] == (expected["phase"] or "-")
        assert shown["In sync"] == ("yes" if expected["in_sync"] else "no")
        assert shown["Firmware"] == (expected["prot"] or "-")

    # Device: the status card is the API's status of that device.
    status = await console.api(f"/api/v1/devices/{MAC_A}/status")
    await page.goto(console.url(f"/ui/devices/{MAC_A}"))
    assert (await page.inner_text("h1")).startswith(status["hardware_id"])
    field = page.locator("#status [data-field]")
    shown = {
        str(await field.nth(i).get_attribute("data-field")): (await field.nth(i).inner_text())
        for i in range(await field.count())
    }
    assert shown["polls"] == str(status["polls"]) == "3"
    assert shown["source_address"] == status["source_address"]
    assert shown["proof"] == status["proof"]
    assert shown["phase"] == status["phase"]
    assert shown["prot"] == status["prot"]
    assert shown["version"] == status["version"]
    assert shown["hash_sent"] == status["hash_sent"]
    assert shown["in_sync"] == "yes"
    assert status["in_sync"] is True
    stamp = await page.get_attribute("#status [data-field=last_seen]", "title")
    assert stamp == status["last_seen"][:19].replace("T", " ") + " UTC"

    # Customer: its name, Frontend and devices as the API has them.
    customer = await console.api("/api/v1/customers/Kuenkel00001")
    its_devices = (await console.api("/api/v1/status?customer=Kuenkel00001"))["devices"]
    await page.goto(console.url("/ui/customers/Kuenkel00001"))
    assert await page.inner_text("#customer-name") == customer["name"]
    assert await page.inner_text("#customer-frontend") == customer["frontend"]
    listed = page.locator("#devices tbody td[data-label='Hardware id']")
    assert sorted(await listed.all_inner_texts()) == sorted(d["hardware_id"] for d in its_devices)

    # Events: the latest events in the API's order, and the active alarm.
    api_events = (await console.api("/api/v1/events"))["events"]
    assert [e["text"] for e in api_events] == ["Config saved", "Registration lost"]
    await page.goto(console.url("/ui/events"))
    latest = page.locator("#latest tbody tr")
    assert await latest.count() == len(api_events)
    for index, event in enumerate(api_events):
        shown = await _cells(latest.nth(index))
        assert event["text"] in shown["Text"]
        assert shown["Device"] == event["device_hardware_id"]
        assert shown["Customer"] == event["customer"]
    api_alarms = (await console.api("/api/v1/events?active=1"))["events"]
    alarms = page.locator("table.events").first.locator("tbody tr")
    assert await alarms.count() == len(api_alarms) == 1
    assert api_alarms[0]["text"] in await alarms.inner_text()
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


async def test_events_page_filters(browser: Any, console: Console) -> None:
    assert await console.post_alarm("Registration+lost") == 201
    assert await console.post_event("type=syslog&severity=info&text=Config+saved") == 201
    assert await console.post_event("type=syslog&severity=warning&text=Fan+slow") == 201
    context, requested = await _context(browser, console)
    page = await context.new_page()
    await _login(page, console, "ops", OPERATOR_PASSWORD)
    await page.goto(console.url("/ui/events"))

    async def latest() -> list[str]:
        texts = await page.locator("#latest tbody td[data-label='Text']").all_inner_texts()
        return [str(text).strip() for text in texts]

    async def api(query: str) -> list[str]:
        events = (await console.api(f"/api/v1/events?{query}"))["events"]
        return [f"{e['code']} {e['text']}" if e["code"] else e["text"] for e in events]

    assert await latest() == await api("") == ["Fan slow", "Config saved", "1234 Registration lost"]
    # Severity: warning and worse (syslog 4) drops the info line.
    await page.select_option("select[name=severity]", "4")
    await page.click("form.filters button")
    assert urlsplit(page.url).query.startswith("customer=&device=&severity=4")
    assert await latest() == await api("severity=4") == ["Fan slow", "1234 Registration lost"]
    # Active alarms only, on top of that.
    await page.check("input[name=active]")
    await page.click("form.filters button")
    assert await latest() == await api("severity=4&active=1") == ["1234 Registration lost"]
    # The device by its hardware id, then a customer with no events.
    await page.goto(console.url("/ui/events"))
    await page.fill("input[name=device]", "IP232-01-02-03")
    await page.click("form.filters button")
    assert await latest() == await api("device=IP232-01-02-03")
    assert len(await latest()) == 3
    await page.fill("input[name=device]", "")
    await page.fill("input[name=customer]", "Nobody0001")
    await page.click("form.filters button")
    assert await api("customer=Nobody0001") == []
    assert "No events." in await page.inner_text("#latest")
    # The form shows the filters it applied.
    assert await page.input_value("input[name=customer]") == "Nobody0001"
    response = await page.goto(console.url("/ui/events?severity=9"))
    assert response is not None
    assert response.status == 400
    assert "severity: must be 0..7" in await page.inner_text("body")
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


async def test_certificate_reset_in_the_browser_and_the_audit_trail(
    browser: Any, console: Console
) -> None:
    rollouts = RolloutRepository(console.pool)
    await rollouts.save(
        RolloutState(mac=MAC_A, state="error", attempts=3, error="device refused the request")
    )
    context, requested = await _context(browser, console)
    page = await context.new_page()
    await _login(page, console, "ops", OPERATOR_PASSWORD)
    await page.goto(console.url(f"/ui/devices/{MAC_A}"))
    api = await console.api(f"/api/v1/devices/{MAC_A}/certificate")
    assert api["rollout"]["state"] == "error"
    assert await page.inner_text("#certificate [data-field=state]") == "error"
    assert "device refused the request" in await page.inner_text("#certificate")
    await page.click("#certificate-reset")
    assert "Certificate roll-out reset" in await page.inner_text("p.notice")
    assert (await rollouts.statuses(mac=MAC_A))[0].rollout is None
    assert (await console.api(f"/api/v1/devices/{MAC_A}/certificate"))["rollout"] is None
    assert "No certificate roll-out" in await page.inner_text("section.cards")
    await _screenshot(page, "device-certificate-reset")
    # Again: nothing to reset, said so; the attempt is in the trail too.
    await page.click("#certificate-reset")
    assert "no certificate roll-out to reset" in await page.inner_text("p.notice")
    rows = await console.audit_rows("console.certificate-reset")
    assert [(r["object_type"], r["object_id"], r["actor"]) for r in rows] == [
        ("device", MAC_A, "ops (console)"),
        ("device", MAC_A, "ops (console)"),
    ]
    assert rows[0]["before"]["state"] == "error"
    assert rows[0]["before"]["attempts"] == 3
    assert rows[0]["after"] == {"certificate_rollout": None}
    assert rows[1]["before"] is None
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


# --- status history ----------------------------------------------------------------------------


async def _history(pool: asyncpg.Pool, rows: int) -> list[dict[str, Any]]:
    """The device's history once it has ``rows`` rows (the status writer flushes every 50 ms;
    bounded wait, no fixed sleep)."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while True:
        found = [c.as_json() for c in await UpdateRepository(pool).status_history(MAC_A)]
        if len(found) >= rows or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_device_page_shows_the_status_history(browser: Any, console: Console) -> None:
    certificate, key = console.pki.devices[DEVICE_A]

    async def poll(arguments: str) -> int:
        status, _ = await curl(
            "--cacert",
            str(console.pki.ca),
            "--cert",
            str(certificate),
            "--key",
            str(key),
            f"{console.devices}/DRIVE/CF0/update/update.txt?sn={MAC_A}&type=IP232&{arguments}",
        )
        return status

    # Real polls through the devices listener and the batched status writer.
    assert await poll("ver=13r2&PROT=13r2+sr5") == 200
    first = await _history(console.pool, 1)
    assert [(h["proof"], h["phase"], h["prot"], h["polls"]) for h in first] == [
        ("proven", "update", "13r2 sr5", 1)
    ]
    # The same poll again changes nothing that the history records: no row per poll.
    assert await poll("ver=13r2&PROT=13r2+sr5") == 200
    deadline = asyncio.get_running_loop().time() + 10.0
    while (await UpdateRepository(console.pool).statuses(mac=MAC_A))[0].polls < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert len(await _history(console.pool, 1)) == 1
    # New firmware: a row.
    assert await poll("ver=14r1&PROT=14r1+sr2") == 200
    history = await _history(console.pool, 2)
    assert [h["prot"] for h in history] == ["14r1 sr2", "13r2 sr5"]
    assert history[0]["polls"] == 3

    context, requested = await _context(browser, console)
    page = await context.new_page()
    await _login(page, console, "ops", OPERATOR_PASSWORD)
    await page.goto(console.url(f"/ui/devices/{MAC_A}"))
    rows = page.locator("#history tbody tr")
    assert await rows.count() == len(history)
    for index, change in enumerate(history):
        shown = await _cells(rows.nth(index))
        assert shown["Firmware"] == change["prot"]
        assert shown["Polls"] == str(change["polls"])
        assert shown["Proof"] == change["proof"]
        assert shown["Phase"] == change["phase"]
        assert shown["In sync"] == ("yes" if change["in_sync"] else "no")
        assert shown["Address"] == change["source_address"]
    await _screenshot(page, "device-history")
    # A device that never polled says so.
    await page.goto(console.url("/ui/devices/009033a85a38"))
    assert "No status recorded yet" in await page.inner_text("body")
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


async def test_status_history_is_kept_per_change_and_pruned_per_device(
    console: Console,
) -> None:
    repository = UpdateRepository(console.pool)
    other = "009033a85a38"
    for build in range(5):
        async with console.pool.acquire() as connection, connection.transaction():
            writer = UpdateRepository(connection)
            await writer.record_polls(
                [_poll(MAC_A, prot=f"build {build}"), _poll(other, prot="steady")], [1, 1]
            )
            added = await writer.record_history([MAC_A, other], keep=3)
        # The other device's status stays the same after its first row.
        assert added == (2 if build == 0 else 1)
    kept = await repository.status_history(MAC_A)
    assert [c.prot for c in kept] == ["build 4", "build 3", "build 2"]
    assert [c.polls for c in kept] == [5, 4, 3]
    assert [c.prot for c in await repository.status_history(other)] == ["steady"]
    # An error, then in sync again, are changes too.
    for changes in ({"last_error": "script: no update.txt for IP232"}, {}):
        await repository.record_polls([_poll(MAC_A, prot="build 4", **changes)], [1])
        assert await repository.record_history([MAC_A], keep=3) == 1
    newest = await repository.status_history(MAC_A)
    assert [c.last_error for c in newest] == [None, "script: no update.txt for IP232", None]
    # The history goes with the device.
    await InventoryRepository(console.pool).delete_device(MAC_A)
    assert await repository.status_history(MAC_A) == []


# --- system ------------------------------------------------------------------------------------


async def test_system_page_nodes_destinations_migrations_version(
    browser: Any, console: Console
) -> None:
    assert await console.post_alarm("Registration+lost") == 201
    assert await console.post_event("type=syslog&severity=info&text=Config+saved") == 201
    # A syslog destination another node forwards to, two events behind.
    async with console.pool.acquire() as connection:
        await DeliveryRepository(connection).ensure_cursor(
            "central", "udp://127.0.0.1:5514", from_end=False, holder="node-b:4242"
        )
        address = await connection.fetchval("SELECT COALESCE(host(inet_client_addr()), 'local')")
    context, requested = await _context(browser, console)
    page = await context.new_page()
    await _login(page, console, "ops", OPERATOR_PASSWORD)
    await page.goto(console.url("/ui/system"))
    heading = await page.inner_text("h1")
    assert heading.startswith("System")
    assert f"pbxfront {importlib.metadata.version('pbxfront')}" in heading
    # The nodes sharing the database, from PostgreSQL's own view of its sessions.
    clients = page.locator("#clients tbody tr")
    assert await clients.count() >= 1
    this = await _cells(clients.filter(has_text="this node"))
    assert this["Address"].split()[0] == address
    assert int(this["Sessions"]) >= 1
    # This node's listeners as configured.
    body = await page.inner_text("body")
    assert "update, backup, events, contacts" in body
    # Syslog destinations with their backlog, as the events API has them.
    api = (await console.api("/api/v1/events/destinations"))["destinations"]
    assert [(d["name"], d["backlog"], d["holder"]) for d in api] == [("central", 2, "node-b:4242")]
    shown = await _cells(page.locator("#destinations tbody tr"))
    assert (shown["Name"], shown["Backlog"], shown["Forwarded by"]) == (
        "central",
        "2",
        "node-b:4242",
    )
    # Every migration, applied.
    names = await page.locator("#migrations td[data-label='Name']").all_inner_texts()
    assert "device_status_history" in names
    applied = await page.locator("#migrations td[data-label='Applied']").all_inner_texts()
    assert all(text.endswith("UTC") for text in applied)
    await _screenshot(page, "system")
    assert {_origin(url) for url in requested} == {console.base}
    await context.close()


async def test_login_failures_share_the_nodes_budget(console: Console) -> None:
    """Console logins and the admin API count failures in one guard per node: an address that
    spent the node's budget guessing API passwords cannot move over to the login form."""
    async with console.session("127.0.0.9") as client:
        wrong = {"Authorization": "Basic " + base64.b64encode(b"ops:a wrong password").decode()}
        statuses = []
        for _ in range(25):
            async with client.get(console.url("/api/v1/devices"), headers=wrong) as response:
                statuses.append(response.status)
        assert statuses[0] == 401
        assert statuses[-1] == 429
        async with client.get(console.url("/ui/login")) as page:
            token = re.search(r'name="csrf" value="([^"]+)"', await page.text())
        assert token is not None
        form = {"csrf": token.group(1), "name": "ops", "password": OPERATOR_PASSWORD}
        async with client.post(
            console.url("/ui/login"), data=form, allow_redirects=False
        ) as response:
            assert response.status == 429
