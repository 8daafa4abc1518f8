"""The events service end to end: real listeners with real TLS and device certificates, curl with
Basic and Digest credentials, real PostgreSQL, and a real rsyslogd on loopback receiving what is
forwarded (TCP with octet counting, UDP), across a restart of rsyslogd; plus the lenient parser
and the syslog formatter on hostile input."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.core import db
from services.core.auth import AccountRepository, Role
from services.core.config import (
    AdminSettings,
    ConfigError,
    DatabaseSettings,
    EventsSettings,
    LimitSettings,
    Settings,
    UpdateSettings,
)
from services.core.inventory import apply_inventory, read_inventory_file
from services.core.resources import Resources
from services.core.runner import Node
from services.core.senderscope import SenderScopeRepository
from services.events.app import create_app
from services.events.cli import register
from services.events.delivery import DeliveryRepository
from services.events.parse import parse_event
from services.events.repository import EventRepository, NewEvent
from services.events.retention import run_retention
from services.events.syslog import (
    OutgoingEvent,
    format_event,
    octet_counted,
    parse_destination,
)
from services.events.writer import GroupWriter
from tests.conftest import (
    DEVICE_A,
    DEVICE_B,
    DEVICE_C,
    SessionPki,
    curl_with_headers,
    free_port,
    peer_program,
    service_cli,
    start_services,
    tls_listener,
    until,
)

MAC_A = "009033010203"
ADMIN_PASSWORD = "admin password 123"
SENDER_PASSWORD = "sender password 123"
OPERATOR_PASSWORD = "operator password 123"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


SENDER = basic("sender", SENDER_PASSWORD)


def parse(body: bytes | str, content_type: str = "", query: dict[str, str] | None = None) -> Any:
    raw = body.encode() if isinstance(body, str) else body
    return parse_event(
        raw, content_type, query or {}, NOW, future_limit=3600, past_limit=30 * 86400
    )


# --- the lenient parser ------------------------------------------------------------------------


def test_form_alarm() -> None:
    event = parse("type=set&code=1234&severity=Major&source=SIP&text=Registration+lost")
    assert (event.kind, event.code, event.severity, event.syslog_severity) == (
        "alarm-set",
        "1234",
        "Major",
        3,
    )
    assert (event.source, event.text, event.problems) == ("SIP", "Registration lost", [])


def test_xml_alarm_with_remote_device() -> None:
    body = (
        '<?xml version="1.0"?><alarm type="clear" code="77" severity="Minor" time="1777636800">'
        "<source>GW1</source><text>Link up</text><details>again</details>"
        '<remote hwid="IP222-01-02-04" ip="192.0.2.7"/></alarm>'
    )
    event = parse(body, "text/xml")
    assert (event.kind, event.code, event.source, event.details) == (
        "alarm-clear",
        "77",
        "GW1",
        "again",
    )
    assert (event.remote_hardware_id, event.remote_ip) == ("IP222-01-02-04", "192.0.2.7")
    assert event.event_time == datetime.fromtimestamp(1777636800, UTC)
    assert event.syslog_severity == 5


def test_json_event() -> None:
    event = parse(json.dumps({"event": {"severity": "Critical", "code": 9, "msg": "fan"}}))
    assert (event.kind, event.code, event.severity, event.syslog_severity) == (
        "alarm-set",
        "9",
        "Critical",
        2,
    )


def test_innovaphone_log_line_as_query_and_as_raw_body() -> None:
    query = {
        "event": "syslog",
        "time": "1777636800",
        "date": "20260501-120000",
        "from": DEVICE_A,
        "msg": "SIP: a&b registered",
    }
    event = parse(b"", query=query)
    assert (event.kind, event.text, event.device_hardware_id) == (
        "log",
        "SIP: a&b registered",
        DEVICE_A,
    )
    # protocol.md §6: the same string as a raw POST body, not form-encoded: "&" stays in msg.
    line = f"event=syslog&time=1777636800&date=20260501-120000&from={DEVICE_A}&msg=x & y=z 100%"
    event = parse(line)
    assert (event.kind, event.text) == ("log", "x & y=z 100%")
    assert event.event_time == NOW


def test_xml_bomb_and_external_entity_are_refused_but_kept() -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><alarm>&b;</alarm>'
    )
    external = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    )
    for body in (bomb, external):
        event = parse(body, "application/xml")
        assert any("XML refused" in p for p in event.problems), event.problems
        assert "root:" not in json.dumps(event.fields)


def test_invalid_utf8_nul_and_absurd_fields() -> None:
    event = parse(b"code=1&severity=Bogus&text=caf\xe9\x00&time=not-a-time")
    assert any("UTF-8" in p for p in event.problems)
    assert any("severity not known" in p for p in event.problems)
    assert event.time_flag == "unreadable"
    assert "\x00" not in (event.text or "")
    future = parse("text=x&time=4102444800")  # 2100
    assert future.time_flag == "future"
    past = parse("text=x&time=946684800")  # 2000
    assert past.time_flag == "past"


def test_garbage_is_kept_as_text() -> None:
    event = parse("{not json")
    assert event.text == "{not json"
    assert event.problems


# --- syslog formatting -------------------------------------------------------------------------


def outgoing(**overrides: Any) -> OutgoingEvent:
    values: dict[str, Any] = {
        "id": 7,
        "received_at": NOW,
        "kind": "alarm-set",
        "event_time": None,
        "time_flag": None,
        "code": "1234",
        "severity": "Major",
        "syslog_severity": 3,
        "source": "SIP",
        "text": "Registration lost",
        "details": None,
        "device_mac": MAC_A,
        "device_hardware_id": DEVICE_A,
        "remote_hardware_id": None,
        "customer": "Kuenkel00001",
        "repeats": 0,
        "repeat_of": None,
    }
    values.update(overrides)
    return OutgoingEvent(**values)


def test_rfc5424_message() -> None:
    message = format_event(
        outgoing(), message_format="rfc5424", facility="local0", max_bytes=8192
    ).decode()
    assert message == (
        f"<131>1 2026-05-01T12:00:00.000000Z {DEVICE_A} pbxfront - alarm-set "
        f'[pbxfront@32473 id="7" kind="alarm-set" device="{DEVICE_A}" mac="{MAC_A}" '
        'customer="Kuenkel00001" code="1234" severity="Major" source="SIP" '
        'received="2026-05-01T12:00:00+00:00"] Registration lost'
    )


def test_device_text_cannot_forge_lines_or_structured_data() -> None:
    hostile = outgoing(
        text="ok\r\n<11>1 2026-01-01T00:00:00Z evil x - - - forged\x00\u2028",
        source='a"] [x@1 y="z',
    )
    for message_format in ("rfc5424", "rfc3164"):
        message = format_event(
            hostile, message_format=message_format, facility="local0", max_bytes=8192
        )
        assert not re.search(rb"[\x00-\x1f\x7f]", message)
        assert "\u2028" not in message.decode()
        assert b"\\x0d\\x0a<11>" in message
    sd = format_event(hostile, message_format="rfc5424", facility="local0", max_bytes=8192)
    assert b'source="a\\"\\] [x@1 y=\\"z"' in sd
    assert octet_counted(b"abc") == b"3 abc"


def test_long_text_is_cut_at_a_character_boundary() -> None:
    message = format_event(
        outgoing(text="ä" * 5000), message_format="rfc5424", facility="local0", max_bytes=1000
    )
    assert len(message) <= 1000
    message.decode("utf-8")


def test_destination_urls() -> None:
    tls = parse_destination("tls://127.0.0.1:6514?ca=/x/ca.pem&name=siem")
    assert (tls.scheme, tls.port, tls.name, str(tls.ca)) == ("tls", 6514, "siem", "/x/ca.pem")
    assert parse_destination("udp://[::1]:514").host == "::1"
    for bad in ("http://x:1", "udp://x", "udp://x:1?ca=/y", "tcp://x:1?colour=red"):
        with pytest.raises(ConfigError, match=r"^events\.destinations: .*(udp|port|ca|option)"):
            parse_destination(bad)
    with pytest.raises(ConfigError, match="share the name"):
        create_app(
            Settings(events=EventsSettings(destinations=("udp://a:1?name=x", "tcp://b:2?name=x"))),
            Resources(None),
        )


# --- a real rsyslogd ---------------------------------------------------------------------------


@dataclass
class Rsyslog:
    directory: Path
    tcp_port: int
    udp_port: int
    # (CA, certificate, key): the TCP input speaks TLS (RFC 5425) with these.
    tls: tuple[Path, Path, Path] | None = None
    process: asyncio.subprocess.Process | None = None

    @property
    def output(self) -> Path:
        return self.directory / "received.log"

    def config(self) -> str:
        tls_global = tls_input = ""
        if self.tls is not None:
            ca, certificate, key = self.tls
            tls_global = (
                f'defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{ca}" '
                f'defaultNetstreamDriverCertFile="{certificate}" '
                f'defaultNetstreamDriverKeyFile="{key}"'
            )
            tls_input = (
                'streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon"'
            )
        return f"""
global(workDirectory="{self.directory / "work"}" maxMessageSize="16k" {tls_global})
module(load="imtcp" {tls_input})
module(load="imudp")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="events") {{
    action(type="omfile" file="{self.output}" template="raw" flushOnTXEnd="on"
           asyncWriting="off")
}}
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="events")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="events")
"""

    async def start(self) -> None:
        program = peer_program("rsyslogd", "rsyslog")
        (self.directory / "work").mkdir(parents=True, exist_ok=True)
        conf = self.directory / "rsyslog.conf"
        conf.write_text(self.config())
        self.process = await asyncio.create_subprocess_exec(
            program,
            "-n",
            "-f",
            str(conf),
            "-i",
            str(self.directory / "rsyslogd.pid"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

        async def listening() -> bool:
            with socket.socket() as probe:
                probe.setblocking(False)
                try:
                    await asyncio.get_running_loop().sock_connect(
                        probe, ("127.0.0.1", self.tcp_port)
                    )
                except OSError:
                    return False
            return True

        await until(listening, timeout=15)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 15)
        self.process = None

    def lines(self) -> list[str]:
        if not self.output.exists():
            return []
        return [line for line in self.output.read_text("utf-8").splitlines() if line]

    def ids(self) -> list[int]:
        """Event ids in order of first arrival (at-least-once: a repeat is a re-send)."""
        seen: list[int] = []
        for line in self.lines():
            match = re.search(r'\[pbxfront@32473 id="(\d+)"', line)
            if match and int(match.group(1)) not in seen:
                seen.append(int(match.group(1)))
        return seen


@pytest.fixture
async def rsyslog(tmp_path: Path) -> AsyncIterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog", free_port(), free_port(socket.SOCK_DGRAM))
    server.directory.mkdir()
    await server.start()
    yield server
    await server.stop()


# --- a site: the events service on real listeners ----------------------------------------------


async def curl(*args: str) -> tuple[int, str, str]:
    """(status, body as text without its final newline, response headers)."""
    status, body, headers = await curl_with_headers(*args)
    return status, body.decode(errors="replace").removesuffix("\n"), headers


@dataclass
class Site:
    node: Node
    pool: asyncpg.Pool
    pki: SessionPki
    settings: Settings
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

    async def session(self, certificate: str | None = None) -> aiohttp.ClientSession:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        if certificate is not None:
            context.load_cert_chain(*map(str, self.pki.devices[certificate]))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        self.sessions.append(session)
        return session

    async def rows(self, **filters: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as connection:
            rows = await EventRepository(connection).query(limit=10000, **filters)
        return list(reversed(rows))


SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def start_site(
    pool: asyncpg.Pool,
    database_url: str,
    session_pki: SessionPki,
    repo_root: Path,
    tmp_path: Path,
) -> AsyncIterator[SiteFactory]:
    accounts = AccountRepository(pool)
    await accounts.add("admin", frozenset({Role.ADMIN}), ADMIN_PASSWORD)
    await accounts.add("operator", frozenset({Role.OPERATOR}), OPERATOR_PASSWORD)
    await accounts.add("sender", frozenset({Role.EVENT_SENDER}), SENDER_PASSWORD)
    await SenderScopeRepository(pool).bind("sender", None)
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    sites: list[Site] = []
    own_pools: list[asyncpg.Pool] = []

    async def start(
        site_pool: asyncpg.Pool | None = None,
        limits: LimitSettings | None = None,
        warm_pool: int = 0,
        **events: Any,
    ) -> Site:
        """``warm_pool``: the node gets a pool of its own with that many connections opened up
        front (pool_min_size = pool_max_size)."""
        if warm_pool:
            sizes = DatabaseSettings(pool_min_size=warm_pool, pool_max_size=warm_pool)
            site_pool = await db.create_pool(database_url, sizes)
            own_pools.append(site_pool)
        settings = Settings(
            limits=limits or LimitSettings(),
            database=DatabaseSettings(url=database_url),
            admin=AdminSettings(metrics_interval=1.0),
            update=UpdateSettings(
                grace_seconds=0,
                scripts_dir=repo_root / "staging_scripts",
                firmware_dir=tmp_path / "firmware",
            ),
            events=EventsSettings(
                **{
                    "confirm_delay": 0.3,
                    "reconnect_max_delay": 0.3,
                    "retention_interval": 0.0,
                    **events,
                }
            ),
        )
        listeners = {
            "devices": tls_listener(session_pki, "events", client_certificates=True),
            "claimed": tls_listener(session_pki, "events"),
            "admin": tls_listener(session_pki, "admin"),
        }
        node = await start_services(settings, site_pool or pool, listeners)
        site = Site(node, pool, session_pki, settings)
        sites.append(site)
        return site

    yield start
    for site in sites:
        for session in site.sessions:
            await session.close()
        await site.node.stop()
    for own in own_pools:
        await own.close()


@pytest.fixture
async def site(start_site: SiteFactory) -> Site:
    return await start_site()


ALARM = "type=set&code=1234&severity=Major&source=SIP&text=Registration+lost"


# --- intake, authentication, deduplication -----------------------------------------------------


async def test_demo_flow_with_curl(site: Site) -> None:
    url = f"{site.claimed}/events?sn={MAC_A}"
    common = ("--cacert", str(site.pki.ca))
    status, body, _ = await curl(*common, "-u", f"sender:{SENDER_PASSWORD}", "-d", ALARM, url)
    assert (status, body) == (201, "stored as event 1")
    # The device re-sends its active alarm (every ~30 min): counted, not a new row.
    status, body, _ = await curl(*common, "-u", f"sender:{SENDER_PASSWORD}", "-d", ALARM, url)
    assert (status, body) == (200, "repeat of active alarm 1 (repeats: 1)")
    rows = await site.rows()
    assert len(rows) == 1
    row = rows[0]
    assert (row["device_hardware_id"], row["customer"], row["active"], row["repeats"]) == (
        DEVICE_A,
        "Kuenkel00001",
        True,
        1,
    )
    assert (row["proof"], row["account"]) == ("credentials", "sender")
    # Without credentials: 401 offering Digest and Basic.
    status, _, headers = await curl(*common, "-d", ALARM, url)
    assert status == 401
    challenges = [h for h in headers.splitlines() if h.lower().startswith("www-authenticate")]
    assert any("Digest" in h and "SHA-256" in h for h in challenges)
    assert any("Basic" in h for h in challenges)
    # The clear closes the alarm; a later set is a new alarm.
    clear = ALARM.replace("type=set", "type=clear")
    status, body, _ = await curl(*common, "-u", f"sender:{SENDER_PASSWORD}", "-d", clear, url)
    assert (status, body) == (201, "stored as event 2")
    status, body, _ = await curl(*common, "-u", f"sender:{SENDER_PASSWORD}", "-d", ALARM, url)
    assert (status, body) == (201, "stored as event 3")
    rows = await site.rows()
    assert [(r["kind"], r["active"], r["cleared_by"]) for r in rows] == [
        ("alarm-set", False, 2),
        ("alarm-clear", False, None),
        ("alarm-set", True, None),
    ]
    assert len(await site.rows(active=True)) == 1


async def test_forward_repeats_keeps_each_repeat_as_its_own_row(start_site: SiteFactory) -> None:
    site = await start_site(forward_repeats=True)
    session = await site.session()
    for expected in (201, 200, 200):
        async with session.post(
            site.claimed + f"/events?sn={MAC_A}", data=ALARM, headers=SENDER
        ) as response:
            assert response.status == expected
    assert [(r["id"], r["repeats"]) for r in await site.rows()] == [(1, 2)]
    rows = await site.rows(include_repeats=True)
    assert [(r["id"], r["repeat_of"], r["active"]) for r in rows] == [
        (1, None, True),
        (2, 1, False),
        (3, 1, False),
    ]


async def test_digest_with_curl_and_replay(site: Site) -> None:
    status, body, _ = await curl(
        "--cacert",
        str(site.pki.ca),
        "--digest",
        "-u",
        f"sender:{SENDER_PASSWORD}",
        "-d",
        ALARM,
        f"{site.claimed}/events?hwid={DEVICE_A}",
    )
    assert (status, body) == (201, "stored as event 1")
    session = await site.session()
    uri = f"/events?sn={MAC_A}"
    async with session.post(site.claimed + uri, data=b"text=x") as response:
        assert response.status == 401
        challenge = response.headers.getall("WWW-Authenticate")[0]
    header = digest_header(challenge, uri)
    async with session.post(site.claimed + uri, data=b"text=x", headers=header) as response:
        assert response.status == 201
    async with session.post(site.claimed + uri, data=b"text=y", headers=header) as response:
        assert response.status == 401
        assert "replayed" in await response.text()
    assert [r["text"] for r in await site.rows()] == ["Registration lost", "x"]


def digest_header(challenge: str, uri: str, nonce_count: int = 1) -> dict[str, str]:
    from services.core.digest import compute_ha1, compute_response

    params = dict(part.strip().split("=", 1) for part in challenge[len("Digest ") :].split(", "))
    nonce, algorithm = params["nonce"].strip('"'), params["algorithm"]
    ha1 = compute_ha1(algorithm, "sender", "pbxfront", SENDER_PASSWORD)
    nc = f"{nonce_count:08x}"
    response = compute_response(
        algorithm, ha1, nonce=nonce, nonce_count=nc, cnonce="c0ffee", method="POST", uri=uri
    )
    return {
        "Authorization": (
            f'Digest username="sender", realm="pbxfront", nonce="{nonce}", uri="{uri}", '
            f'algorithm={algorithm}, response="{response}", qop=auth, nc={nc}, '
            f'cnonce="c0ffee", opaque={params["opaque"]}'
        )
    }


async def test_client_certificate_of_an_inventory_device(
    site: Site, start_site: SiteFactory
) -> None:
    proven = await site.session(DEVICE_A)
    async with proven.post(site.proven + "/events", data=ALARM) as response:
        assert response.status == 201
    row = (await site.rows())[0]
    assert (row["proof"], row["device_mac"], row["customer"]) == (
        "certificate",
        MAC_A,
        "Kuenkel00001",
    )
    # DEVICE_B has a valid certificate but is not in the inventory: credentials needed.
    unknown = await site.session(DEVICE_B)
    async with unknown.post(site.proven + "/events", data=ALARM) as response:
        assert response.status == 401
    # Concurrent first requests of several devices share one inventory lookup; each gets its
    # own answer.
    fresh = await start_site()
    sessions = [(await fresh.session(name), name) for name in (DEVICE_A, DEVICE_C, DEVICE_B)]

    async def post(session: aiohttp.ClientSession, number: int) -> int:
        async with session.post(fresh.proven + "/events", data=f"text=n{number}") as response:
            return response.status

    statuses = await asyncio.gather(
        *(post(session, n) for n in range(4) for session, _ in sessions)
    )
    assert statuses == [201, 201, 401] * 4
    devices = {r["device_hardware_id"] for r in await fresh.rows()}
    assert devices == {DEVICE_A, DEVICE_C}


@pytest.mark.parametrize(
    "headers",
    [
        basic("sender", "wrong password!"),
        basic("operator", OPERATOR_PASSWORD),  # right password, not an event sender
        basic("nobody", SENDER_PASSWORD),
        {"Authorization": "Bearer something"},
    ],
)
async def test_wrong_credentials(site: Site, headers: dict[str, str]) -> None:
    session = await site.session()
    async with session.post(site.claimed + "/events", data=ALARM, headers=headers) as response:
        assert response.status == 401
    assert await site.rows() == []


async def test_failures_are_rate_limited_per_address(start_site: SiteFactory) -> None:
    site = await start_site(
        limits=LimitSettings(auth_failure_burst=3, auth_failure_per_second=0.01)
    )
    session = await site.session()
    wrong = basic("sender", "wrong password!")
    statuses = []
    for _ in range(4):
        async with session.post(site.claimed + "/events", data=ALARM, headers=wrong) as response:
            statuses.append(response.status)
    assert statuses == [401, 401, 401, 429]
    # Out of tokens, right credentials are refused as well (a guesser learns nothing).
    async with session.post(site.claimed + "/events", data=ALARM, headers=SENDER) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1


async def test_bad_input(start_site: SiteFactory) -> None:
    site = await start_site(max_body_bytes=1024)
    session = await site.session()
    url = site.claimed + f"/events?sn={MAC_A}"
    async with session.post(url, data=b"x" * 2000, headers=SENDER) as response:
        assert response.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 200

    async with session.post(url, data=chunks(), headers=SENDER) as response:
        assert response.status == 413
    async with session.post(url, data=b"", headers=SENDER) as response:
        assert response.status == 400
    bomb = '<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><alarm>&b;</alarm>'
    async with session.post(
        url, data=bomb, headers={**SENDER, "Content-Type": "application/xml"}
    ) as response:
        assert response.status == 201
    async with session.post(url, data=b"text=\xff\xfe&time=99999999999", headers=SENDER) as r:
        assert r.status == 201
    async with session.post(site.claimed + "/events?sn=nonsense", data=ALARM, headers=SENDER) as r:
        assert r.status == 400
    rows = await site.rows()
    assert len(rows) == 2
    assert any("XML refused" in p for p in rows[0]["problems"])
    assert any("UTF-8" in p for p in rows[1]["problems"])
    async with site.pool.acquire() as connection:
        assert await EventRepository(connection).raw(rows[0]["id"]) == bomb.encode()


async def test_get_log_format(site: Site) -> None:
    session = await site.session()
    query = f"event=syslog&time=1777636800&date=20260501-120000&from={DEVICE_A}&msg=SIP%20up"
    async with session.get(f"{site.claimed}/events?{query}", headers=SENDER) as response:
        assert response.status == 201
    row = (await site.rows())[0]
    assert (row["kind"], row["text"], row["device_hardware_id"], row["customer"]) == (
        "log",
        "SIP up",
        DEVICE_A,
        "Kuenkel00001",
    )


async def test_concurrent_requests_are_all_committed(start_site: SiteFactory) -> None:
    # Connections opened up front: what is tested is the commit of concurrent events, not how
    # fast a busy machine opens new connections within database.acquire_timeout.
    site = await start_site(warm_pool=5, commit_window=0.02)
    session = await site.session()

    async def post(number: int) -> int:
        async with session.post(
            site.claimed + f"/events?sn={MAC_A}", data=f"text=n{number}", headers=SENDER
        ) as response:
            return response.status

    assert await asyncio.gather(*(post(n) for n in range(40))) == [201] * 40
    rows = await site.rows()
    assert sorted(r["text"] for r in rows) == sorted(f"n{n}" for n in range(40))
    async with session.get(
        site.admin + "/metrics", headers=basic("admin", ADMIN_PASSWORD)
    ) as response:
        metrics = await response.text()
    # How many transactions the 40 requests took depends on how their TLS handshakes spread
    # over time on the test machine; the grouping itself is proven by the writer test below.
    commits = re.search(r"^pbxfront_events_commits_total (\S+)$", metrics, re.M)
    assert commits is not None
    assert 1 <= float(commits.group(1)) <= 40
    assert 'pbxfront_events_received_total{outcome="stored"} 40.0' in metrics


def _new_event(text: str) -> NewEvent:
    received_at = datetime.now(UTC)
    parsed = parse_event(
        f"text={text}".encode(), "", {}, received_at, future_limit=60, past_limit=86400
    )
    return NewEvent(
        received_at=received_at,
        parsed=parsed,
        device_mac=MAC_A.lower(),
        device_hardware_id=None,
        device_ip=None,
        proof="credentials",
        account="sender",
        source_address="127.0.0.1",
        content_type="application/x-www-form-urlencoded",
        raw=f"text={text}".encode(),
    )


async def test_events_arriving_within_the_window_share_one_transaction(
    pool: asyncpg.Pool,
) -> None:
    commits: list[tuple[int, int]] = []
    writer = GroupWriter(
        window=0.02,
        batch=16,
        forward_repeats=False,
        on_commit=lambda stored, repeats: commits.append((stored, repeats)),
    )
    writer.start(pool)
    try:
        stored = await asyncio.gather(*(writer.submit(_new_event(f"g{n}")) for n in range(40)))
    finally:
        await writer.close()
    assert all(not result.repeat for result in stored)
    # 40 events queued before the window closed: batches of at most `batch`, in order.
    assert commits == [(16, 0), (16, 0), (8, 0)]
    assert writer.batches == 3
    async with pool.acquire() as connection:
        texts = await connection.fetch("SELECT text FROM events WHERE text LIKE 'g%'")
    assert sorted(r["text"] for r in texts) == sorted(f"g{n}" for n in range(40))


async def test_database_down_is_503(
    database_url: str, session_pki: SessionPki, start_site: SiteFactory
) -> None:
    site = await start_site()
    own_pool = await db.create_pool(database_url, DatabaseSettings(pool_max_size=2))
    node = await start_services(
        site.settings, own_pool, {"claimed": tls_listener(session_pki, "events")}
    )
    try:
        session = await site.session()
        url = node.addresses["claimed"] + f"/events?sn={MAC_A}"
        async with session.post(url, data=b"text=before", headers=SENDER) as response:
            assert response.status == 201
        await own_pool.close()
        async with session.post(url, data=b"text=lost?", headers=SENDER) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "5"
    finally:
        await node.stop()
    assert [r["text"] for r in await site.rows()] == ["before"]


# --- forwarding to a real rsyslogd -------------------------------------------------------------


async def post_numbered(site: Site, numbers: range) -> None:
    session = await site.session()

    async def post(number: int) -> None:
        async with session.post(
            site.claimed + f"/events?sn={MAC_A}", data=f"text=seq {number}", headers=SENDER
        ) as response:
            assert response.status == 201, await response.text()

    for start in range(numbers.start, numbers.stop, 20):
        await asyncio.gather(*(post(n) for n in range(start, min(start + 20, numbers.stop))))


async def test_forwarding_over_tcp_survives_a_receiver_restart(
    start_site: SiteFactory, rsyslog: Rsyslog
) -> None:
    site = await start_site(destinations=(f"tcp://127.0.0.1:{rsyslog.tcp_port}",))
    await post_numbered(site, range(150))
    await until(lambda: len(rsyslog.ids()) == 150, timeout=20)
    # The receiver goes away for a while; events keep being accepted and stored.
    await rsyslog.stop()
    await post_numbered(site, range(150, 300))
    await asyncio.sleep(0.5)
    await rsyslog.start()
    await until(lambda: len(rsyslog.ids()) == 300, timeout=30)
    stored = [r["id"] for r in await site.rows()]
    assert rsyslog.ids() == stored  # every event, in order, no gaps
    lines = rsyslog.lines()
    assert all(line.startswith("<") and "Kuenkel00001" in line for line in lines)
    await until(lambda: destination_delivered(site, 300), timeout=10)
    session = await site.session()

    async def backlog_reported() -> bool:
        async with session.get(
            site.admin + "/metrics", headers=basic("admin", ADMIN_PASSWORD)
        ) as response:
            text = await response.text()
        return 'pbxfront_events_backlog{destination="tcp://127.0.0.1' in text

    await until(backlog_reported)


async def raise_backup_alert(pool: asyncpg.Pool, kind: str, message: str) -> int:
    """A row of backup_alerts, announced as the backup service announces it."""
    async with pool.acquire() as connection, connection.transaction():
        alert_id: int = await connection.fetchval(
            """INSERT INTO backup_alerts (kind, mac, hardware_id, customer, created_at, message)
               VALUES ($1, $2, 'IP232-01-02-03', 'Kuenkel00001', now(), $3) RETURNING id""",
            kind,
            MAC_A,
            message,
        )
        await connection.execute("SELECT pg_notify('pbxfront_backup_alert', $1)", str(alert_id))
    return alert_id


async def test_backup_alerts_become_events_and_are_forwarded_once(
    pool: asyncpg.Pool, start_site: SiteFactory, rsyslog: Rsyslog
) -> None:
    # Raised before any forwarder runs: imported when forwarding starts.
    await raise_backup_alert(pool, "changed", "config changed")
    site = await start_site(destinations=(f"tcp://127.0.0.1:{rsyslog.tcp_port}",))
    await until(lambda: len(rsyslog.ids()) == 1, timeout=20)
    # Raised while forwarding runs: imported on its NOTIFY.
    await raise_backup_alert(pool, "stale", "no backup for 49 hours")
    await until(lambda: len(rsyslog.ids()) == 2, timeout=20)
    await post_numbered(site, range(1))
    await until(lambda: len(rsyslog.ids()) == 3, timeout=20)
    lines = rsyslog.lines()
    assert 'code="backup-changed"' in lines[0]
    assert "config changed" in lines[0]
    assert 'code="backup-stale"' in lines[1]
    assert lines[1].startswith("<132>")  # local0.warning
    rows = await site.rows()
    assert [r["proof"] for r in rows] == ["internal", "internal", "credentials"]
    assert {r["customer"] for r in rows} == {"Kuenkel00001"}
    # Every alert is imported once, whoever asks again.
    async with pool.acquire() as connection:
        assert await EventRepository(connection).import_backup_alerts(datetime.now(UTC)) == 0


async def test_forwarding_over_tls_with_certificate_verification(
    start_site: SiteFactory, session_pki: SessionPki, tmp_path: Path
) -> None:
    server = Rsyslog(
        tmp_path / "rsyslog-tls",
        free_port(),
        free_port(socket.SOCK_DGRAM),
        tls=(session_pki.ca, session_pki.server_certificate, session_pki.server_key),
    )
    server.directory.mkdir()
    await server.start()
    try:
        # A CA that did not issue the receiver's certificate: nothing is sent.
        foreign_ca = session_pki.foreign_device[0]
        wrong = await start_site(
            destinations=(f"tls://127.0.0.1:{server.tcp_port}?ca={foreign_ca}&name=wrong",)
        )
        await post_numbered(wrong, range(5))
        await asyncio.sleep(1.0)
        assert server.lines() == []
        await wrong.node.stop()
        site = await start_site(
            destinations=(f"tls://127.0.0.1:{server.tcp_port}?ca={session_pki.ca}",)
        )
        await post_numbered(site, range(5, 25))
        await until(lambda: len(server.ids()) == 25, timeout=20)
        assert server.ids() == [r["id"] for r in await site.rows()]
        async with site.pool.acquire() as connection:
            cursors = {c.name: c for c in await DeliveryRepository(connection).cursors()}
        assert cursors["wrong"].delivered_id == 0
        assert "certificate verify failed" in (cursors["wrong"].last_error or "")
    finally:
        await server.stop()


async def destination_delivered(site: Site, count: int) -> bool:
    async with site.pool.acquire() as connection:
        cursors = await DeliveryRepository(connection).cursors()
    return bool(cursors) and cursors[0].delivered_id == count and cursors[0].backlog == 0


async def test_backlog_is_delivered_after_a_restart_of_pbxfront(
    start_site: SiteFactory, rsyslog: Rsyslog
) -> None:
    """Events stored while no forwarder ran (or the receiver was down) go out when one runs."""
    site = await start_site()  # no destination configured yet
    await post_numbered(site, range(40))
    await site.node.stop()
    second = await start_site(
        destinations=(f"udp://127.0.0.1:{rsyslog.udp_port}?name=siem",),
    )
    await until(lambda: len(rsyslog.ids()) == 40, timeout=20)
    assert rsyslog.ids() == [r["id"] for r in await second.rows()]
    await until(lambda: destination_delivered(second, 40), timeout=10)


async def test_one_forwarder_per_destination_and_takeover(
    start_site: SiteFactory, rsyslog: Rsyslog
) -> None:
    destination = (f"tcp://127.0.0.1:{rsyslog.tcp_port}",)
    first = await start_site(destinations=destination)

    async def one_holder() -> bool:
        return await holders(first) == 1

    await until(one_holder, timeout=10)
    second = await start_site(destinations=destination)
    await post_numbered(second, range(30))
    await until(lambda: len(rsyslog.ids()) == 30, timeout=20)
    # Only one process sent them: no event arrived twice.
    assert len(rsyslog.lines()) == 30
    await first.node.stop()  # the forwarding node goes away: the other one takes over
    await post_numbered(second, range(30, 60))
    await until(lambda: len(rsyslog.ids()) == 60, timeout=20)
    assert rsyslog.ids() == [r["id"] for r in await second.rows()]


async def holders(site: Site) -> int:
    async with site.pool.acquire() as connection:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 "
            "AND granted",
            0x70627867,
        )
    return count


# --- retention, admin API, CLI -----------------------------------------------------------------


async def test_retention_keeps_active_alarms_and_undelivered_events(
    start_site: SiteFactory,
) -> None:
    site = await start_site(retention_per_device=2, retention_days=1.0)
    session = await site.session()
    url = site.claimed + f"/events?sn={MAC_A}"
    async with session.post(url, data=ALARM, headers=SENDER) as response:
        assert response.status == 201
    for number in range(5):
        async with session.post(url, data=f"text=n{number}", headers=SENDER) as response:
            assert response.status == 201
    assert await run_retention(site.pool, site.settings, datetime.now(UTC), dry_run=True) == 3
    assert await run_retention(site.pool, site.settings, datetime.now(UTC)) == 3
    assert [r["text"] for r in await site.rows()] == ["Registration lost", "n3", "n4"]
    later = datetime.now(UTC) + timedelta(days=2)
    assert await run_retention(site.pool, site.settings, later) == 2
    assert [r["kind"] for r in await site.rows()] == ["alarm-set"]
    # With a destination that has not had them yet, nothing undelivered is deleted.
    undelivered = dataclasses.replace(
        site.settings,
        events=dataclasses.replace(site.settings.events, destinations=("udp://127.0.0.1:9",)),
    )
    async with session.post(url, data=b"text=kept", headers=SENDER) as response:
        assert response.status == 201
    assert await run_retention(site.pool, undelivered, later + timedelta(days=9)) == 0


async def test_admin_api_and_cli(
    site: Site, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    session = await site.session()
    url = site.claimed + f"/events?sn={MAC_A}"
    async with session.post(url, data=ALARM, headers=SENDER) as response:
        assert response.status == 201
    async with session.post(url, data="text=hello\r\nforged line", headers=SENDER) as response:
        assert response.status == 201
    operator = basic("operator", OPERATOR_PASSWORD)
    async with session.get(
        site.admin + "/api/v1/events?severity=Major&active=1", headers=operator
    ) as response:
        assert response.status == 200
        events = (await response.json())["events"]
    assert [e["code"] for e in events] == ["1234"]
    async with session.get(site.admin + "/api/v1/events?after=1&wait=1", headers=operator) as r:
        assert [e["id"] for e in (await r.json())["events"]] == [2]
    async with session.get(site.admin + "/api/v1/events", headers=SENDER) as response:
        assert response.status == 403
    async with session.get(site.admin + "/api/v1/events?severity=bad", headers=operator) as r:
        assert r.status == 400
    async with session.get(site.admin + "/api/v1/events/1/raw", headers=operator) as response:
        assert await response.read() == ALARM.encode()

    run = service_cli(register, database_url, capsys)

    code, out = await run("events", "list", "--device", DEVICE_A)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert "Registration lost ACTIVE" in lines[0]
    assert "Kuenkel00001" in lines[0]
    assert "hello\\x0d\\x0aforged line" in lines[1]  # a device cannot forge a second line
    code, out = await run("events", "list", "--active", "--severity", "Major", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [1]
    code, out = await run("events", "list", "--customer", "Nobody")
    assert out == ""
    code, out = await run("events", "tail", "-n", "1")
    assert "forged line" in out
    assert "Registration" not in out


async def test_cli_tail_follows_new_events(site: Site, repo_root: Path, database_url: str) -> None:
    environment = {
        **os.environ,
        "PBXFRONT_DATABASE__URL": database_url,
        "PBXFRONT_CONFIG": "",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "events",
        "tail",
        "-f",
        "-n",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    try:
        session = await site.session()
        assert process.stdout is not None
        reading = asyncio.ensure_future(process.stdout.readline())
        # Events sent before `tail -f` is following are not shown (-n 0): send one every so
        # often until the first arrives; from there on every event follows, in order.
        sent = -1
        while sent < 40 and not reading.done():
            sent += 1
            async with session.post(
                site.claimed + f"/events?sn={MAC_A}", data=f"text=followed {sent}", headers=SENDER
            ) as response:
                assert response.status == 201
            await asyncio.wait([reading], timeout=0.5)
        line = await asyncio.wait_for(reading, 5)
        first = int(line.split(b"followed ")[1].split()[0])
        async with session.post(
            site.claimed + f"/events?sn={MAC_A}", data="text=followed last", headers=SENDER
        ) as response:
            assert response.status == 201
        expected = [f"followed {n}" for n in range(first + 1, sent + 1)] + ["followed last"]
        for text in expected:
            line = await asyncio.wait_for(process.stdout.readline(), 10)
            assert text.encode() in line, (text, line)
    finally:
        process.terminate()
        await process.wait()


# --- kill -9 under load ------------------------------------------------------------------------


async def test_kill_9_loses_no_acknowledged_event(
    pool: asyncpg.Pool,
    database_url: str,
    session_pki: SessionPki,
    repo_root: Path,
    tmp_path: Path,
) -> None:
    """A real `pbxfront serve`, numbered events posted concurrently, SIGKILL in the middle: every
    event that got a 2xx is in the table after the restart."""
    await AccountRepository(pool).add("sender", frozenset({Role.EVENT_SENDER}), SENDER_PASSWORD)
    await SenderScopeRepository(pool).bind("sender", None)
    config = tmp_path / "serve.toml"
    config.write_text(
        f"""
data_dir = "{tmp_path / "var"}"
workers = 1
[database]
url = "{database_url}"
[logging]
access_log = false
[listeners.devices]
port = 0
services = ["events"]
certificate = "{session_pki.server_certificate}"
key = "{session_pki.server_key}"
"""
    )
    ready = tmp_path / "ready.json"

    async def serve() -> tuple[asyncio.subprocess.Process, str]:
        ready.unlink(missing_ok=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await until(ready.exists, timeout=30)
        return process, json.loads(ready.read_text())["devices"]["url"]

    process, url = await serve()
    acknowledged: set[int] = set()
    context = ssl.create_default_context(cafile=str(session_pki.ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:

        async def post(number: int) -> None:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.post(
                    f"{url}/events?sn={MAC_A}",
                    data=f"text=seq {number}",
                    headers=SENDER,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    if response.status in (200, 201):
                        acknowledged.add(number)

        async def load() -> None:
            for start in range(0, 400, 16):
                await asyncio.gather(*(post(n) for n in range(start, start + 16)))

        task = asyncio.create_task(load())
        await until(lambda: len(acknowledged) >= 100, timeout=60)
        process.kill()
        await process.wait()
        await task
        assert 100 <= len(acknowledged) < 400
        process, url = await serve()
        try:
            await post(1000)
            assert 1000 in acknowledged  # recovered by itself
        finally:
            process.terminate()
            await process.wait()
    async with pool.acquire() as connection:
        texts = {row["text"] for row in await connection.fetch("SELECT text FROM events")}
    missing = [n for n in sorted(acknowledged) if f"seq {n}" not in texts]
    assert missing == []


async def test_audit_rows_become_events_and_are_forwarded_once(
    pool: asyncpg.Pool, start_site: SiteFactory, rsyslog: Rsyslog
) -> None:
    from services.core import audit

    async def change(name: str, secret: str) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await audit.record(
                connection,
                actor=audit.Actor("ops", "192.0.2.7"),
                action="inventory.change",
                object_type="customer",
                object_id="Kuenkel00001",
                before={"name": "Old", "registration_password": secret},
                after={"name": name, "registration_password": secret},
            )

    await change("Before forwarding", "audit-secret-1")  # imported when forwarding starts
    await start_site(destinations=(f"tcp://127.0.0.1:{rsyslog.tcp_port}",))
    await until(lambda: len(rsyslog.ids()) == 1, timeout=20)
    await change("While forwarding", "audit-secret-2")  # imported on its NOTIFY
    await until(lambda: len(rsyslog.ids()) == 2, timeout=20)
    lines = rsyslog.lines()
    assert all('code="audit"' in line for line in lines)
    assert "ops@192.0.2.7 inventory.change customer Kuenkel00001" in lines[1]
    assert lines[1].startswith("<133>")  # local0.notice
    assert not any("audit-secret" in line for line in lines)
    async with pool.acquire() as connection:
        stored = await connection.fetch("SELECT raw, fields::text AS fields FROM events")
        assert len(stored) == 2
        for row in stored:
            assert b"audit-secret" not in row["raw"]
            assert b'"registration_password": "***"' in row["raw"]
            assert "audit-secret" not in row["fields"]
        assert await EventRepository(connection).import_audit(datetime.now(UTC)) == 0
