"""``pbxfront bench console``: the operator console's fleet page over a large inventory.

The bench Frontend (environment.environment) runs with an admin listener carrying the console and
the no-op endpoint. Once it is up, ``options.devices`` devices (100,000 by default) with status
rows, certificate roll-outs, several customers, types and firmware builds are written straight
into the tables (a few set-based statements, as seed.py does; the inventory's own write path
would take far longer and is not what is measured). The bench logs in as an operator through the
login form, as a browser does (login cookie, form token, then the session cookie), and requests
fleet pages at a fixed rate: the first page, deep pages, searches, filters, sorts and a mix of
all, each timed from its scheduled start to the last byte of the page (so queueing counts),
against the no-op endpoint at the same rate on the same listener.

Every request opens a new TLS connection: the load generator gives kept-alive clients that share
one certificate the same sequence of calls, which would send each page several times in a row;
a new connection per page keeps the mix as drawn, at the cost of one handshake per page, which
the no-op baseline pays as well.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import os
import random
import re
import secrets
import ssl
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import asyncpg

from services.bench.environment import BenchOptions, add_operator, environment, listener
from services.bench.load import Call, LoadSpec, Target, run_load
from services.bench.measure import Row, fixed_rate, measure

# The fleet's devices: MACs under a prefix no other bench device uses, customers of their own.
MAC_PREFIX = "0091"
CUSTOMER_PREFIX = "Fleet"
# (type, class, share in percent); hardware ids start with the type (protocol.md §3).
DEVICE_TYPES = (
    ("IP232", "phone", 40),
    ("IP222", "phone", 25),
    ("IP112", "phone", 15),
    ("IP1060", "phone", 10),
    ("IP811", "gateway", 7),
    ("IPVA", "pbx", 3),
)
FIRMWARE_BUILDS = ("13r2 sr10", "13r3 sr4", "14r1 sr2", "14r2 sr1")
SESSION_COOKIE = "__Host-pbxfront_console"
LOGIN_COOKIE = "__Host-pbxfront_login"
ACCOUNT = "bench-operator"
GOAL_P99_MS = 300.0


# Added to a device's number: hardware ids carry the MAC's last three bytes and are unique in
# the inventory, so they stay clear of the bench's own devices (numbered from 1).
MAC_OFFSET = 0x400000


def fleet_mac(index: int) -> str:
    return f"{MAC_PREFIX}{MAC_OFFSET + index:08x}"


def fleet_customers(devices: int) -> int:
    """One customer per 200 devices (500 for 100,000), of very different sizes."""
    return max(2, devices // 200)


def fleet_customer(number: int) -> str:
    return f"{CUSTOMER_PREFIX}{number:05d}"


async def seed_fleet(connection: asyncpg.Connection, devices: int) -> None:
    """``devices`` devices of ``fleet_customers(devices)`` customers on Frontend sb1 (replacing
    an earlier run's): 95 % have polled (10 % of those not for days: stale), 1 in 9 out of sync,
    1 in 7 claimed, 1 in 50 in staging, four firmware builds, a third with a certificate
    roll-out, every fourth with a seat name; and a few unknown devices."""
    customers = fleet_customers(devices)
    types = [name for name, _, share in DEVICE_TYPES for _ in range(share)]
    classes = [device_class for _, device_class, share in DEVICE_TYPES for _ in range(share)]
    async with connection.transaction():
        await remove_fleet(connection)
        await connection.execute(
            """
            INSERT INTO customers (id, frontend, name, system_name, country_code, area_code)
            SELECT $1 || lpad(c::text, 5, '0'), 'sb1', 'Fleet customer ' || c,
                   'fleet' || c || '.example', '49', '7031'
            FROM generate_series(0, $2 - 1) AS c
            """,
            CUSTOMER_PREFIX,
            customers,
        )
        # Customer sizes are skewed (the square of an even spread): a few customers hold
        # thousands of devices, most a few dozen.
        await connection.execute(
            """
            INSERT INTO devices (mac, hardware_id, device_type, device_class, customer, cpe_id,
                                 name)
            SELECT m.mac,
                   t.type || '-' || substr(m.mac, 7, 2) || '-' || substr(m.mac, 9, 2) || '-'
                       || substr(m.mac, 11, 2),
                   t.type, t.class, c.id, c.id || '-' || lpad(i::text, 6, '0'),
                   CASE WHEN i % 4 = 0 THEN 'seat ' || lpad(i::text, 6, '0') END
            FROM generate_series(0, $1 - 1) AS i
            CROSS JOIN LATERAL (SELECT $2 || lpad(to_hex($7 + i), 8, '0') AS mac) AS m
            CROSS JOIN LATERAL (
                SELECT ($3::text[])[1 + (i * 7) % 100] AS type,
                       ($4::text[])[1 + (i * 7) % 100] AS class
            ) AS t
            CROSS JOIN LATERAL (
                SELECT $5 || lpad(floor($6 * power(((i * 7919) % $1)::float8 / $1, 2))::text,
                                  5, '0') AS id
            ) AS c
            """,
            devices,
            MAC_PREFIX,
            types,
            classes,
            CUSTOMER_PREFIX,
            customers,
            MAC_OFFSET,
        )
        await connection.execute(
            """
            INSERT INTO device_status (mac, first_seen, last_seen, polls, source_address, proof,
                                       phase, version, prot, boot, device_check, hash_sent,
                                       in_sync, last_proven)
            SELECT d.mac, now() - interval '90 days', s.seen, 10 + i % 5000,
                   '10.' || (i / 65536) % 256 || '.' || (i / 256) % 256 || '.' || i % 256,
                   CASE WHEN i % 7 = 0 THEN 'claimed' ELSE 'proven' END,
                   CASE WHEN i % 50 = 0 THEN 'staging' ELSE 'update' END,
                   b.build, b.build, b.build, md5(d.mac),
                   CASE WHEN i % 9 = 0 THEN md5(d.mac || 'new') ELSE md5(d.mac) END,
                   i % 9 <> 0,
                   CASE WHEN i % 7 <> 0 THEN s.seen END
            FROM generate_series(0, $1 - 1) AS i
            JOIN devices d ON d.mac = $2 || lpad(to_hex($4 + i), 8, '0')
            CROSS JOIN LATERAL (
                SELECT CASE WHEN i % 10 = 1 THEN now() - make_interval(hours => 2 + i % 500)
                            ELSE now() - make_interval(secs => i % 2400) END AS seen
            ) AS s
            CROSS JOIN LATERAL (SELECT ($3::text[])[1 + (i / 3) % 4] AS build) AS b
            WHERE i % 20 <> 0
            """,
            devices,
            MAC_PREFIX,
            list(FIRMWARE_BUILDS),
            MAC_OFFSET,
        )
        await connection.execute(
            """
            INSERT INTO certificate_rollouts (mac, state, common_name, attempts)
            SELECT $2 || lpad(to_hex($3 + i), 8, '0'),
                   (ARRAY['current', 'current', 'current', 'current', 'current', 'requesting',
                          'installing', 'error', 'refused'])[1 + (i / 3) % 9],
                   'fleet-' || i, 0
            FROM generate_series(0, $1 - 1, 3) AS i
            """,
            devices,
            MAC_PREFIX,
            MAC_OFFSET,
        )
        await connection.execute(
            """
            INSERT INTO unknown_devices (service, key, mac, hardware_id, device_type, last_seen,
                                         polls, source_address, proof)
            SELECT 'update', '00a1' || lpad(to_hex(i), 8, '0'), '00a1' || lpad(to_hex(i), 8, '0'),
                   'IP232-' || lpad(to_hex(i), 2, '0') || '-00-00', 'IP232',
                   now() - make_interval(mins => i), 3, '192.0.2.' || i, 'claimed'
            FROM generate_series(1, 20) AS i
            """
        )
    # As autovacuum leaves a settled fleet: statistics current, visibility map set.
    await connection.execute(
        "VACUUM ANALYZE customers, devices, device_status, certificate_rollouts, unknown_devices"
    )


async def remove_fleet(connection: asyncpg.Connection) -> None:
    """The rows ``seed_fleet`` wrote (status and roll-outs go with their devices)."""
    await connection.execute("DELETE FROM devices WHERE mac LIKE $1", f"{MAC_PREFIX}%")
    await connection.execute("DELETE FROM customers WHERE id LIKE $1", f"{CUSTOMER_PREFIX}%")
    await connection.execute("DELETE FROM unknown_devices WHERE key LIKE '00a1%'")


async def _with_connection(dsn: str, devices: int | None) -> None:
    connection = await asyncpg.connect(dsn, command_timeout=1800)
    try:
        if devices is None:
            async with connection.transaction():
                await remove_fleet(connection)
        else:
            await seed_fleet(connection, devices)
    finally:
        await connection.close()


# --- the browser's part --------------------------------------------------------------------------


def _context(target: Target) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(target.ca) if target.ca else None)


def _cookies(response: http.client.HTTPResponse) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_all("Set-Cookie") or ():
        jar.load(header)
    return {name: morsel.value for name, morsel in jar.items() if morsel.value}


def console_login(target: Target, name: str, password: str) -> str:
    """Log in through the console's form as a browser does; the session cookie's value.
    Blocking (the bench's setup, outside any event loop)."""
    connection = http.client.HTTPSConnection(
        target.host, target.port, context=_context(target), timeout=60
    )
    try:
        connection.request("GET", "/ui/login?next=/ui/fleet")
        response = connection.getresponse()
        page = response.read().decode()
        login_token = _cookies(response).get(LOGIN_COOKIE)
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        if response.status != 200 or login_token is None or found is None:
            raise RuntimeError(f"console login page: HTTP {response.status}, no form token")
        form = urlencode(
            {"csrf": found.group(1), "next": "/ui/fleet", "name": name, "password": password}
        )
        connection.request(
            "POST",
            "/ui/login",
            body=form,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"{LOGIN_COOKIE}={login_token}",
            },
        )
        response = connection.getresponse()
        response.read()
        session = _cookies(response).get(SESSION_COOKIE)
        if response.status != 303 or session is None:
            raise RuntimeError(f"console login refused: HTTP {response.status}")
        return session
    finally:
        connection.close()


def fleet_total(target: Target, session: str) -> int:
    """The device count the first fleet page shows (its ``#total``); proves the session works."""
    connection = http.client.HTTPSConnection(
        target.host, target.port, context=_context(target), timeout=60
    )
    try:
        connection.request("GET", "/ui/fleet", headers={"Cookie": f"{SESSION_COOKIE}={session}"})
        response = connection.getresponse()
        page = response.read().decode()
    finally:
        connection.close()
    found = re.search(r'id="total">([\d,]+) device', page)
    if response.status != 200 or found is None:
        raise RuntimeError(f"fleet page with the session: HTTP {response.status}")
    return int(found.group(1).replace(",", ""))


# --- what an operator asks for -------------------------------------------------------------------


def fleet_requests(devices: int, count: int, seed: int) -> dict[str, list[str]]:
    """``count`` fleet page paths of each kind (first page, deep pages, search, filters,
    sorts), drawn at random over the seeded fleet."""
    chooser = random.Random(seed)  # noqa: S311 - which pages an operator opens, not a secret
    customers = fleet_customers(devices)
    pages_of = max(1, devices // 50)

    def mac(index: int) -> str:
        return fleet_mac(index)

    def device() -> int:
        return chooser.randrange(devices)

    def first() -> str:
        return chooser.choice(
            ("/ui/fleet", "/ui/fleet?per_page=200", "/ui/fleet?per_page=100&order=desc")
        )

    def deep() -> str:
        per_page = chooser.choice((50, 50, 100, 200))
        last = max(1, devices // per_page)
        page = chooser.choice((last, chooser.randint(1, last)))
        return f"/ui/fleet?per_page={per_page}&page={page}"

    def search() -> str:
        index = device()
        m = mac(index)
        term = chooser.choice(
            (
                m[6:8] + "-" + m[8:10],  # part of a hardware id
                "-".join(m[i : i + 2] for i in range(0, 12, 2)),  # a MAC as printed
                f"seat {index - index % 4:06d}",  # a seat name
                fleet_customer(chooser.randrange(customers)).lower(),  # a customer id
                f"10.{(index // 65536) % 256}.{(index // 256) % 256}.",  # an address prefix
                "ip1060-" + m[6:8],  # type and first byte
            )
        )
        return "/ui/fleet?" + urlencode({"q": term})

    def filtered() -> str:
        query = chooser.choice(
            (
                {"customer": fleet_customer(chooser.randrange(min(customers, 20)))},
                {"customer": fleet_customer(chooser.randrange(customers))},
                {"stale": "yes"},
                {"in_sync": "no"},
                {"stale": "yes", "page": str(chooser.randint(1, 100))},
                {"in_sync": "no", "type": "IP222"},
                {"phase": "staging"},
                {"proof": "claimed", "page": str(chooser.randint(1, 100))},
                {"certificate": "error"},
                {"type": "IP811", "stale": "no"},
            )
        )
        return "/ui/fleet?" + urlencode(query)

    def sorted_() -> str:
        sort = chooser.choice(("last_seen", "firmware", "certificate", "hardware_id", "type"))
        query = {
            "sort": sort,
            "order": chooser.choice(("asc", "desc")),
            "page": str(chooser.choice((1, chooser.randint(1, pages_of)))),
        }
        if chooser.random() < 0.3:
            query["customer"] = fleet_customer(chooser.randrange(min(customers, 50)))
            query["page"] = "1"
        return "/ui/fleet?" + urlencode(query)

    kinds = {
        "first page": first,
        "deep pages": deep,
        "search": search,
        "filters": filtered,
        "sorts": sorted_,
    }
    drawn = {name: [make() for _ in range(count)] for name, make in kinds.items()}
    mix = [path for paths in drawn.values() for path in paths]
    chooser.shuffle(mix)
    drawn["mix"] = mix
    return drawn


# --- the scenario --------------------------------------------------------------------------------


def _pages_only(row: Row) -> Row:
    """A fleet row is met only when every answer was the page itself (a 303 to the login form
    would count as a success for the load generator)."""
    if set(row.result.statuses) - {200} and row.met:
        row.met = False
    return row


def scenario_console(options: BenchOptions, log: Any) -> list[Row]:
    devices = options.devices
    password = secrets.token_urlsafe(18)
    admin = listener("admin", ["admin", "noop"], options)

    async def prepare(connection: asyncpg.Connection) -> None:
        await add_operator(connection, ACCOUNT, password)

    # The environment's own inventory is one device (no certificates, no script hashes for
    # the fleet: the console never polls); the fleet goes in once the server is up, straight
    # into the tables, and out again at the end so other scenarios start from their own.
    frontend = dataclasses.replace(options, devices=1)
    rows: list[Row] = []
    with environment(frontend, log, listeners=admin, prepare=prepare) as env:
        log(f"console: loading {devices:,} devices with status ...")
        asyncio.run(_with_connection(env.dsn, devices))
        try:
            target = env.target("admin")
            session = console_login(target, ACCOUNT, password)
            shown = fleet_total(target, session)
            # The environment's one device besides the fleet.
            if shown != devices + 1:
                raise RuntimeError(f"the fleet page shows {shown} devices, not {devices + 1}")
            cookie = (f"Cookie: {SESSION_COOKIE}={session}",)
            count = max(50, int(options.rate * options.duration) + 10)
            drawn = fleet_requests(devices, count, seed=3)

            def spec(paths: list[str], headers: tuple[str, ...] = cookie) -> LoadSpec:
                return LoadSpec(
                    target,
                    [Call(path, headers=headers) for path in paths],
                    duration=options.duration,
                    processes=options.process_count,
                    concurrency=options.concurrency,
                    rate=options.rate,
                )

            # Each server process's first pages fill its pool and caches; not measured.
            run_load(dataclasses.replace(spec(drawn["mix"][:40]), duration=2.0))
            rate = f"{options.rate:,.0f}/s"
            # The machine's load tells how far the numbers are the console's own.
            load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
            log(f"console: fleet pages of {devices:,} devices at {rate}, new TLS each")
            log(f"console: load average {load} on {os.cpu_count()} cores before measuring")
            rows.append(
                measure(env, f"pbxfront no-op at {rate}", "pbxfront", spec(["/noop"] * 64, ()), log)
            )
            for kind in ("first page", "deep pages", "search", "filters", "sorts", "mix"):
                row = measure(env, f"fleet at {rate}, {kind}", "pbxfront", spec(drawn[kind]), log)
                rows.append(_pages_only(fixed_rate(row, options.rate, GOAL_P99_MS)))
        finally:
            asyncio.run(_with_connection(env.dsn, None))
    return rows
