"""The contacts drop end to end: the seed's `curl -k -T` against a real HTTPS listener, real
PostgreSQL (versions, NOTIFY), the directory reader's GET, refusals of bad, oversized and hostile
uploads, the admin API, the CLI, and the LDIF loaded into a real OpenLDAP slapd and found again
with ldapsearch. Parsing and number rules are also tested on plain values."""

from __future__ import annotations

import asyncio
import base64
import codecs
import dataclasses
import json
import logging
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.contacts.cli import register
from services.contacts.domain import Difference, Entry, check_upload, difference, render_ldif
from services.contacts.numbers import Normalizer, NumberError
from services.contacts.parse import read_table
from services.core import errors
from services.core.auth import AccountRepository, Role
from services.core.config import (
    ContactsSettings,
    LimitSettings,
    Settings,
)
from services.core.inventory import apply_inventory, read_inventory_file
from services.core.numbering import NumberingPlan
from services.core.runner import Node
from tests.conftest import (
    SessionPki,
    curl,
    free_port,
    peer_program,
    service_cli,
    start_services,
    tls_listener,
    until,
)

DATA = Path(__file__).resolve().parent / "data" / "contacts"
GERMAN = DATA / "outlook-de-cp1252.csv"
ENGLISH = DATA / "outlook-en-utf8-bom.csv"
CUSTOMER = "Kuenkel00001"
# config/inventory.example.toml
REGISTRATION_PASSWORD = "change-me-registration"
READER_PASSWORD = "reader password 123"
OPERATOR_PASSWORD = "operator password 123"
FOLDER = "/DRIVE/CF0/directory"
SEED_CSV = (
    '"Surname","Firstname","Company","Busines Phone ","Mobile Phone"\r\n'
    '"Meier","Max","Kuenkel GmbH","+49703173009123",""\r\n'
    '"Schulz","Sara","","07031 730090","0171 7654321"\r\n'
)


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@dataclass
class Site:
    node: Node
    pool: asyncpg.Pool
    pki: SessionPki
    directory: Path
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def devices(self) -> str:
        return self.node.addresses["devices"]

    @property
    def admin(self) -> str:
        return self.node.addresses["admin"]

    def file(self, content: bytes | str | Path) -> Path:
        """The content as a file named contacts.csv: curl appends that name to the folder URL."""
        if isinstance(content, Path):
            content = content.read_bytes()
        folder = self.directory / secrets.token_hex(4)
        folder.mkdir()
        path = folder / "contacts.csv"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    async def upload(
        self,
        content: bytes | str | Path,
        *,
        user: str | None = f"{CUSTOMER}:{REGISTRATION_PASSWORD}",
        url: str = f"{FOLDER}/{CUSTOMER}/",
        extra: tuple[str, ...] = (),
    ) -> tuple[int, str]:
        """The seed's line: curl -k https://<frontend>/DRIVE/CF0/directory/<id>/ -T file."""
        path = self.file(content)
        auth = ("-u", user) if user is not None else ()
        status, body = await curl("-k", *auth, *extra, "-T", str(path), self.devices + url)
        return status, body.decode(errors="replace")

    async def fetch(
        self, user: str | None, customer: str = CUSTOMER
    ) -> tuple[int, str, dict[str, str]]:
        session = await self.session()
        headers = basic(*user.split(":", 1)) if user else {}
        url = f"{self.devices}{FOLDER}/{customer}/contacts.csv"
        async with session.get(url, headers=headers) as response:
            return response.status, await response.text(), dict(response.headers)

    async def current(self) -> int | None:
        version: int | None = await self.pool.fetchval(
            "SELECT version FROM contact_current WHERE customer = $1", CUSTOMER
        )
        return version

    async def session(self) -> aiohttp.ClientSession:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        self.sessions.append(session)
        return session


SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def start_site(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> AsyncIterator[SiteFactory]:
    accounts = AccountRepository(pool)
    await accounts.add("reader", frozenset({Role.DIRECTORY_READER}), READER_PASSWORD)
    await accounts.add("operator", frozenset({Role.OPERATOR}), OPERATOR_PASSWORD)
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    sites: list[Site] = []

    async def start(limits: LimitSettings | None = None, **contacts: Any) -> Site:
        settings = Settings(contacts=ContactsSettings(**contacts), limits=limits or LimitSettings())
        listeners = {
            "devices": tls_listener(session_pki, "contacts"),
            "admin": tls_listener(session_pki, "admin"),
        }
        node = await start_services(settings, pool, listeners)
        site = Site(node, pool, session_pki, tmp_path)
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


# --- the seed's flow -----------------------------------------------------------------------------


async def test_seed_curl_line_uploads_german_export_reader_gets_e164(site: Site) -> None:
    status, text = await site.upload(GERMAN)
    assert status == 201, text
    assert text.splitlines()[0] == f"contacts.csv for {CUSTOMER}: accepted 4, rejected 0"
    assert "read as cp1252, semicolon-separated" in text
    assert "stored as version 1, now current" in text
    assert await site.current() == 1

    status, body, headers = await site.fetch(f"reader:{READER_PASSWORD}")
    assert status == 200
    assert headers["X-Contacts-Version"] == "1"
    lines = body.split("\r\n")
    assert lines[0] == '"Surname","Firstname","Company","Business Phone","Mobile Phone"'
    assert '"Müller","Jürgen","Kuenkel GmbH","+497031730090","+491711234567"' in lines
    assert '"Özdemir","Änne","Bäckerei Groß & Söhne","+497111234560",""' in lines
    assert '"Schäfer","Stefan","Kuenkel GmbH","+49703173009012",""' in lines

    # Write-only: the customer's own credentials never read it back.
    status, body, _ = await site.fetch(f"{CUSTOMER}:{REGISTRATION_PASSWORD}")
    assert status == 403
    assert "Müller" not in body
    status, _, headers = await site.fetch(None)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic")
    status, _, _ = await site.fetch(f"operator:{OPERATOR_PASSWORD}")
    assert status == 403
    status, _, _ = await site.fetch(f"reader:{READER_PASSWORD}x")
    assert status == 401
    # Listing and probing the folder: one answer whatever exists.
    for path in (f"{FOLDER}/", f"{FOLDER}/{CUSTOMER}/", f"{FOLDER}/Nobody/", f"{FOLDER}/x/y.csv"):
        status, body_bytes = await curl(
            "-k", "-u", f"reader:{READER_PASSWORD}", site.devices + path
        )
        assert (status, body_bytes.decode()) == (404, (await _folder_text())), path


async def _folder_text() -> str:
    from services.contacts.handlers import FOLDER_TEXT

    return FOLDER_TEXT + "\n"


async def test_seed_file_and_english_export_with_json_report(site: Site) -> None:
    status, text = await site.upload(SEED_CSV)
    assert status == 201, text
    status, text = await site.upload(ENGLISH, extra=("-H", "Accept: application/json"))
    assert status == 201, text
    report = json.loads(text)
    assert report["outcome"] == "stored"
    assert (report["accepted"], report["rejected"], report["skipped_without_number"]) == (4, 1, 1)
    assert report["encoding"] == "utf-8-sig"
    assert report["columns"]["surname"] == "Last Name"
    # The quoted notes with line breaks span lines 2-4: the next record starts on line 5.
    assert report["rejections"] == [
        {
            "line": 9,
            "reason": "Business Phone: letters in a number (write an extension as part of the "
            "number)",
        }
    ]
    assert report["difference"] == {"added": 4, "changed": 0, "removed": 2}
    assert report["version"] == 2
    rows = await site.pool.fetch(
        "SELECT line, surname, business_phone, business_e164, mobile_e164 FROM contact_entries "
        "WHERE customer = $1 AND version = 2 ORDER BY line",
        CUSTOMER,
    )
    assert [tuple(r) for r in rows] == [
        (2, "Anderson", "+1 (212) 555-0100", "+12125550100", "+19175550111"),
        (5, "Brösel", "+49 (0) 7031 730090", "+497031730090", "+491712345678"),
        (7, "Cruz", "", None, "+34612345678"),
        (10, "", "+44 20 7946 0958", "+442079460958", None),
    ]


async def test_unchanged_upload_keeps_version_dry_run_changes_nothing(site: Site) -> None:
    assert (await site.upload(SEED_CSV))[0] == 201
    status, text = await site.upload(SEED_CSV.replace("\r\n", "\n").replace('","', '";"'))
    assert status == 200, text
    assert "unchanged: version 1 stays current" in text
    changed = SEED_CSV.replace("0171 7654321", "0171 1111111") + '"Neu","Nora","","0711 2222",""\n'
    status, text = await site.upload(changed, url=f"{FOLDER}/{CUSTOMER}/contacts.csv?dry-run=1")
    assert status == 200, text
    assert "difference to the current version: added 1, changed 1, removed 0" in text
    assert "dry run: nothing was changed" in text
    assert await site.current() == 1
    assert await site.pool.fetchval("SELECT count(*) FROM contact_versions") == 1


# --- who may upload ------------------------------------------------------------------------------


async def test_unknown_customer_and_wrong_password_get_the_same_401(site: Site) -> None:
    wrong = await site.upload(SEED_CSV, user=f"{CUSTOMER}:wrong")
    unknown = await site.upload(SEED_CSV, user="Nobody:wrong", url=f"{FOLDER}/Nobody/")
    other = await site.upload(SEED_CSV, user=f"Nobody:{REGISTRATION_PASSWORD}")
    assert wrong == unknown == other
    assert wrong[0] == 401
    anonymous = await site.upload(SEED_CSV, user=None)
    anonymous_unknown = await site.upload(SEED_CSV, user=None, url=f"{FOLDER}/Nobody/")
    assert anonymous == anonymous_unknown
    assert anonymous[0] == 401
    # A directory reader cannot upload; an operator can, on the customer's behalf.
    assert (await site.upload(SEED_CSV, user=f"reader:{READER_PASSWORD}"))[0] == 401
    assert (await site.upload(SEED_CSV, user=f"operator:{OPERATOR_PASSWORD}"))[0] == 201
    assert await site.current() == 1


async def test_anonymous_upload_where_the_customer_allows_it(site: Site) -> None:
    await site.pool.execute(
        "UPDATE customers SET allow_anonymous_contacts = true WHERE id = $1", CUSTOMER
    )
    status, text = await site.upload(GERMAN, user=None)
    assert status == 201, text
    assert await site.pool.fetchval("SELECT uploaded_by FROM contact_versions") == "anonymous"


async def test_failed_passwords_are_rate_limited(start_site: SiteFactory) -> None:
    site = await start_site(LimitSettings(auth_failure_burst=2, auth_failure_per_second=0.001))
    for _ in range(2):
        assert (await site.upload(SEED_CSV, user=f"{CUSTOMER}:wrong"))[0] == 401
    status, text = await site.upload(SEED_CSV)
    assert status == 429, text
    assert await site.current() is None


# --- bad input leaves the current version -------------------------------------------------------


BAD_FILES: list[tuple[str, bytes, int, str]] = [
    ("empty", b"", 422, "the file is empty"),
    ("blank lines", b"\r\n\r\n  \r\n", 422, "the file is empty"),
    ("header only", b'"Surname","Firstname","Business Phone"\r\n', 422, "header line but no"),
    ("binary", bytes(range(256)) * 4, 422, "not a CSV text file"),
    ("gzip", b"\x1f\x8b\x08\x00" + os.urandom(200), 422, "not a CSV text file"),
    (
        "no known column",
        b"Name,Phone,Email\r\nMax,0711 1234,max@example.com\r\n",
        422,
        "expected a name column (Surname",
    ),
    ("unterminated quote", b'Surname,Business Phone\r\n"Meier,0711\r\nx,y', 422, "line 2: not"),
    (
        "wrong field counts",
        b"Surname,Business Phone\r\nA,07031 1234567,extra\r\nB\r\nC,07031 7654321\r\n",
        422,
        "67% of the contacts are invalid",
    ),
    (
        "invalid numbers",
        b"Surname,Business Phone\r\nA,0000\r\nB,+49 1\r\nC,07031 7654321\r\n",
        422,
        "line 3: Business Phone: +491 is not a valid number",
    ),
]


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
async def test_bad_uploads_leave_the_current_version(
    site: Site, content: bytes, status: int, message: str
) -> None:
    assert (await site.upload(GERMAN))[0] == 201
    got, text = await site.upload(content)
    assert got == status, text
    assert message in text
    assert await site.current() == 1
    assert await site.pool.fetchval("SELECT count(*) FROM contact_versions") == 1


async def test_refused_upload_reports_every_row_and_names_the_kept_version(site: Site) -> None:
    assert (await site.upload(SEED_CSV))[0] == 201
    content = "Surname;Business Phone\r\nA;07031 x1\r\nB;\r\nC;07031 7654321\r\nD;123\r\n"
    status, text = await site.upload(content, extra=("-H", "Accept: application/json"))
    assert status == 422
    report = json.loads(text)
    assert report["outcome"] == "refused"
    assert [r["line"] for r in report["rejections"]] == [2, 5]
    assert "short internal number" in report["rejections"][1]["reason"]
    assert report["message"].endswith("version 1 stays current")


async def test_body_and_row_limits(start_site: SiteFactory) -> None:
    site = await start_site(max_body_bytes=4096, max_rows=10)
    assert (await site.upload(SEED_CSV))[0] == 201
    big = "Surname,Business Phone\r\n" + "".join(f"N{i},07031 {100000 + i}\r\n" for i in range(300))
    status, text = await site.upload(big)
    assert status == 413
    assert "larger than 4096 bytes" in text
    # Chunked (no Content-Length): cut off while streaming, the same answer.
    status, text = await site.upload(big, extra=("-H", "Transfer-Encoding: chunked"))
    assert status == 413, text
    rows = "Surname,Business Phone\r\n" + "".join(f"N{i},07031 {100000 + i}\r\n" for i in range(11))
    status, text = await site.upload(rows)
    assert status == 413
    assert "more than 10 contacts" in text
    assert await site.current() == 1


async def test_contacts_limit_replaces_the_listener_body_limit(start_site: SiteFactory) -> None:
    site = await start_site(limits=LimitSettings(max_body_bytes=1024), max_body_bytes=64 * 1024)
    rows = "Surname,Business Phone\r\n" + "".join(
        f"N{i},07031 {100000 + i}\r\n" for i in range(200)
    )
    assert len(rows) > 1024
    status, text = await site.upload(rows)
    assert status == 201, text
    assert await site.current() == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"{FOLDER}/../update/contacts.csv", 404),
        (f"{FOLDER}/..%2f..%2fetc/contacts.csv", 400),
        (f"{FOLDER}/Kuenkel00001%2f..%2fOther/contacts.csv", 400),
        (f"{FOLDER}/-x/contacts.csv", 400),
        (f"{FOLDER}/K%C3%BCnkel/contacts.csv", 400),
        (f"{FOLDER}/{CUSTOMER}/../{CUSTOMER}/contacts.csv", 404),
        (f"{FOLDER}/{CUSTOMER}/other.csv", 404),
    ],
)
async def test_odd_customer_ids_and_traversal_are_refused(
    site: Site, path: str, status: int
) -> None:
    got, text = await site.upload(SEED_CSV, url=path, extra=("--path-as-is",))
    assert got == status, text
    assert ("customer id" if status == 400 else "write-only") in text
    assert await site.pool.fetchval("SELECT count(*) FROM contact_versions") == 0


async def test_other_methods_and_head(site: Site) -> None:
    assert (await site.upload(SEED_CSV))[0] == 201
    session = await site.session()
    url = f"{site.devices}{FOLDER}/{CUSTOMER}/contacts.csv"
    customer = basic(CUSTOMER, REGISTRATION_PASSWORD)
    for method in ("DELETE", "POST", "PROPFIND", "MOVE"):
        async with session.request(method, url, headers=customer) as response:
            assert response.status == 405
            assert response.headers["Allow"] == "PUT, GET"
    async with session.head(url, headers=customer) as response:
        assert response.status == 403
    async with session.head(url, headers=basic("reader", READER_PASSWORD)) as response:
        assert response.status == 200
        assert response.headers["X-Contacts-Version"] == "1"
    assert await site.current() == 1


async def test_concurrent_uploads_get_consecutive_versions(site: Site) -> None:
    results = await asyncio.gather(site.upload(GERMAN), site.upload(ENGLISH), site.upload(SEED_CSV))
    assert [status for status, _ in results] == [201, 201, 201]
    versions = await site.pool.fetch("SELECT version FROM contact_versions ORDER BY version")
    assert [row["version"] for row in versions] == [1, 2, 3]
    assert await site.current() == 3


async def test_aborted_upload_changes_nothing(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.contacts")
    assert (await site.upload(SEED_CSV))[0] == 201
    host, port = site.devices.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(site.pki.ca))
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    head = (
        f"PUT {FOLDER}/{CUSTOMER}/contacts.csv HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {basic(CUSTOMER, REGISTRATION_PASSWORD)['Authorization']}\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    writer.write(head.encode() + SEED_CSV.encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await until(lambda: "aborted after a partial body" in caplog.text)
    assert await site.pool.fetchval("SELECT count(*) FROM contact_versions") == 1
    assert (await site.upload(GERMAN))[0] == 201  # the service is fine afterwards


def test_serve_knows_the_service(repo_root: Path) -> None:
    from services.core.config import load_settings
    from services.serve import service_factories

    assert "contacts" in service_factories()
    demo = load_settings([repo_root / "config" / "demo.toml"], environ={})
    assert "contacts" in demo.listeners["devices"].services
    assert "contacts" in demo.listeners["devices_claimed"].services
    from services.cli import build_parser

    args = build_parser().parse_args(["contacts", "ldif", CUSTOMER, "-o", "x.ldif"])
    assert (args.action, args.customer, args.output) == ("ldif", CUSTOMER, "x.ldif")


def test_difference_pairs_equal_names() -> None:
    def entry(line: int, surname: str, number: str) -> Entry:
        return Entry(line, surname, "", "", number, number, "", None)

    old = [entry(2, "A", "+1"), entry(3, "A", "+2"), entry(4, "B", "+3"), entry(5, "C", "+4")]
    new = [entry(2, "A", "+2"), entry(3, "B", "+9"), entry(4, "D", "+5"), entry(5, "A", "+1")]
    assert difference(old, new) == Difference(added=1, changed=1, removed=1)
    assert difference(old, old).empty


# --- versions, rollback, NOTIFY, admin API, CLI ---------------------------------------------------


async def test_versions_rollback_and_notify(site: Site, database_url: str) -> None:
    received: list[str] = []
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(
        "pbxfront_contacts", lambda _c, _p, _ch, payload: received.append(payload)
    )
    try:
        assert (await site.upload(SEED_CSV))[0] == 201
        await until(lambda: received == [CUSTOMER])
        assert (await site.upload(GERMAN))[0] == 201
        await until(lambda: len(received) == 2)

        session = await site.session()
        operator = basic("operator", OPERATOR_PASSWORD)
        api = f"{site.admin}/api/v1/contacts/{CUSTOMER}"
        async with session.get(f"{api}/versions", headers=operator) as response:
            assert response.status == 200
            versions = (await response.json())["versions"]
        assert [(v["version"], v["current"]) for v in versions] == [(2, True), (1, False)]
        assert versions[0]["source_encoding"] == "cp1252"
        async with session.post(f"{api}/rollback", headers=operator) as response:
            assert response.status == 200
            assert await response.json() == {"customer": CUSTOMER, "previous": 2, "current": 1}
        await until(lambda: len(received) == 3)
        assert await site.current() == 1
        async with session.post(f"{api}/rollback", headers=operator) as response:
            assert response.status == 409
        async with session.get(api, headers=operator) as response:
            entries = (await response.json())["entries"]
        assert [e["surname"] for e in entries] == ["Meier", "Schulz"]
        async with session.get(f"{api}/ldif", headers=operator) as response:
            assert response.status == 200
            assert f"dn: dc={CUSTOMER}" in await response.text()
        async with session.get(api, headers=basic("reader", READER_PASSWORD)) as response:
            assert response.status == 403
        async with session.get(f"{site.admin}/api/v1/contacts/Nobody", headers=operator) as r:
            assert r.status == 404
    finally:
        await listener.close()


async def test_old_versions_are_pruned(start_site: SiteFactory) -> None:
    site = await start_site(keep_versions=1)
    for number in range(3):
        content = SEED_CSV + f'"V{number}","","","0711 12345{number}",""\r\n'
        assert (await site.upload(content))[0] == 201
    versions = await site.pool.fetch("SELECT version FROM contact_versions ORDER BY version")
    assert [row["version"] for row in versions] == [2, 3]
    assert await site.pool.fetchval("SELECT count(*) FROM contact_entries WHERE version = 1") == 0


async def test_cli(
    site: Site, database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert (await site.upload(SEED_CSV))[0] == 201
    assert (await site.upload(GERMAN))[0] == 201

    run = service_cli(register, database_url, capsys)

    code, out = await run("contacts", "history", CUSTOMER)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "VERSION",
        "UPLOADED",
        "(UTC)",
        "BY",
        "ACCEPTED",
        "REJECTED",
        "ENCODING",
    ]
    assert lines[1].split()[:2] == ["2", "current"]
    assert lines[1].split()[-3:] == ["4", "0", "cp1252"]
    code, out = await run("contacts", "show", CUSTOMER)
    assert '"Müller","Jürgen","Kuenkel GmbH","+497031730090","+491711234567"' in out
    code, out = await run("contacts", "rollback", CUSTOMER)
    assert out == f"{CUSTOMER}: version 1 is current again (was 2)\n"
    assert await site.current() == 1
    code, out = await run("contacts", "ldif", CUSTOMER, "--version", "2", "-o", str(tmp_path / "x"))
    assert code == 0
    assert "sn:: " in (tmp_path / "x").read_text()  # Müller: base64, not SAFE-STRING
    code, out = await run("contacts", "rollback", CUSTOMER, "--to", "2")
    assert await site.current() == 2


# --- the LDIF in a real OpenLDAP ----------------------------------------------------------------


async def run_program(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


@pytest.fixture
async def slapd(tmp_path: Path) -> AsyncIterator[str]:
    """A real slapd on loopback with an mdb database for dc=Kuenkel00001."""
    program = peer_program("slapd", "slapd")
    peer_program("ldapadd", "ldap-utils")
    schema = Path("/etc/ldap/schema")
    directory = tmp_path / "slapd"
    (directory / "db").mkdir(parents=True)
    config = directory / "slapd.conf"
    config.write_text(
        "\n".join(
            [
                f"include {schema / 'core.schema'}",
                f"include {schema / 'cosine.schema'}",
                f"include {schema / 'inetorgperson.schema'}",
                f"pidfile {directory / 'slapd.pid'}",
                "modulepath /usr/lib/ldap",
                "moduleload back_mdb",
                "database mdb",
                "maxsize 10485760",
                f'suffix "dc={CUSTOMER}"',
                f'rootdn "cn=admin,dc={CUSTOMER}"',
                "rootpw secret",
                f"directory {directory / 'db'}",
                "",
            ]
        )
    )
    url = f"ldap://127.0.0.1:{free_port()}/"
    process = await asyncio.create_subprocess_exec(
        program,
        "-f",
        str(config),
        "-h",
        url,
        "-d",
        "0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def answers() -> bool:
        assert process.returncode is None, "slapd exited"
        code, _ = await run_program("ldapsearch", "-x", "-H", url, "-b", "", "-s", "base")
        return code == 0

    try:
        await until(answers, timeout=10)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_ldif_loads_into_openldap_and_finds_names_and_numbers(
    site: Site, slapd: str, tmp_path: Path
) -> None:
    assert (await site.upload(GERMAN))[0] == 201
    session = await site.session()
    async with session.get(
        f"{site.admin}/api/v1/contacts/{CUSTOMER}/ldif",
        headers=basic("operator", OPERATOR_PASSWORD),
    ) as response:
        ldif = await response.text()
    path = tmp_path / "contacts.ldif"
    path.write_text(ldif, encoding="utf-8")
    bind = ("-x", "-H", slapd, "-D", f"cn=admin,dc={CUSTOMER}", "-w", "secret")
    code, out = await run_program("ldapadd", *bind, "-f", str(path))
    assert code == 0, out

    async def search(ldap_filter: str) -> str:
        code, out = await run_program(
            "ldapsearch",
            *bind,
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-b",
            f"dc={CUSTOMER}",
            ldap_filter,
            "uid",
            "telephoneNumber",
            "mobile",
            "sn",
        )
        assert code == 0, out
        return out

    by_name = await search("(sn=Mül*)")
    assert "telephoneNumber: +497031730090" in by_name
    assert "mobile: +491711234567" in by_name
    by_number = await search("(telephoneNumber=+497031730090)")
    assert by_number.count("dn: ") == 1
    assert "uid: c2" in by_number
    by_given_name = await search("(givenName=Zo*)")
    assert "telephoneNumber: +41446681800" in by_given_name
    everyone = await search("(objectClass=inetOrgPerson)")
    assert everyone.count("dn: ") == 4


# --- parsing and numbers on plain values -------------------------------------------------------


PLAN = NumberingPlan("49", "7031")


def test_encodings_and_delimiters() -> None:
    text = "Nachname\tVorname\tTelefon geschäftlich\r\nWeiß\tZoë\t07031 730090\r\n"
    for encoded in (
        text.encode("utf-8"),
        codecs.BOM_UTF8 + text.encode("utf-8"),
        text.encode("utf-16"),  # with BOM
        text.encode("cp1252"),
    ):
        upload = check_upload(encoded, PLAN, 10)
        assert upload.delimiter == "\t"
        assert [(e.surname, e.given_name, e.business_e164) for e in upload.entries] == [
            ("Weiß", "Zoë", "+497031730090")
        ]
    with pytest.raises(errors.Unprocessable, match="UTF-16 needs a byte order mark"):
        read_table(text.encode("utf-16-le"), 10)


def test_header_aliases_ignore_case_space_and_unknown_columns() -> None:
    content = (
        b'"x","  LAST   name ","first NAME","COMPANY","business phone","Mobile  Phone","y"\n'
        b'1,"Doe, John","J","A ""quoted"" Co","07031 730090","",2\n'
    )
    upload = check_upload(content, PLAN, 10)
    assert upload.entries[0].surname == "Doe, John"
    assert upload.entries[0].company == 'A "quoted" Co'


def test_numbers() -> None:
    normalizer = Normalizer(PLAN)
    assert normalizer.normalize("07031 730090") == "+497031730090"
    assert normalizer.normalize("+49 (0) 7031 730090") == "+497031730090"
    assert normalizer.normalize("0049 7031 730090") == "+497031730090"
    assert normalizer.normalize("730090") == "+497031730090"
    assert normalizer.normalize("  ") is None
    for bad, reason in [
        ("123", "short internal number"),
        ("07031 730090 ext 5", "letters"),
        ("07031#5", "unexpected character '#'"),
        ("+49 1", "not a valid number"),
    ]:
        with pytest.raises(NumberError, match=reason):
            normalizer.normalize(bad)
    short = Normalizer(dataclasses.replace(PLAN, short_max_digits=3))
    assert short.normalize("123") == "123"
    us = Normalizer(NumberingPlan("1", "212", "011", "1"))
    assert us.normalize("555 0100") == "+12125550100"
    assert us.normalize("1 (917) 555-0111") == "+19175550111"
    assert us.normalize("011 49 7031 730090") == "+497031730090"


async def test_short_number_policy_is_a_customer_variable(site: Site) -> None:
    content = "Surname,Business Phone\r\nPforte,12\r\nA,0711 1234567\r\n"
    assert (await site.upload(content))[0] == 422
    await site.pool.execute(
        "INSERT INTO variables (layer, scope, name, value) VALUES ('customer', $1, $2, '3')",
        CUSTOMER,
        "contacts-short-digits",
    )
    status, text = await site.upload(content)
    assert status == 201, text
    assert await site.pool.fetchval("SELECT business_e164 FROM contact_entries WHERE line = 2") == (
        "12"
    )


def test_ldif_escapes_and_encodes() -> None:
    upload = check_upload(SEED_CSV.encode(), PLAN, 10)
    ldif = render_ldif("a.b-1", "Name, with comma", upload.entries)
    assert ldif.startswith("dn: dc=a.b-1\n")
    assert "o: Name, with comma\n" in ldif
    assert "dn: uid=c2,dc=a.b-1\ncn: Max Meier\n" in ldif.replace(
        "objectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n"
        "objectClass: inetOrgPerson\nuid: c2\n",
        "",
    )
