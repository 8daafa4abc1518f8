"""Bulk data for the bench scenarios, written straight into the tables in a few statements.

Going through the services' own write paths would take hours for a million rows; what the
benchmarks measure is reading them. The rows satisfy every constraint of the schema, so the
services treat them like any others.
"""

from __future__ import annotations

import hashlib

import asyncpg

from services.backup.normalize import compress
from services.contacts.domain import ENTRY_COLUMNS


def redirect_mac(index: int) -> str:
    """MACs of the redirect scenario's mappings (a prefix no bench device uses)."""
    return f"00a0{index:08x}"


async def redirect_mappings(connection: asyncpg.Connection, count: int) -> None:
    """``count`` mappings of the single-provider installation, to 50 Frontend URLs (instead of
    an earlier run's: the bench database is the bench's own)."""
    await connection.execute("TRUNCATE redirect_mappings CASCADE")
    await connection.execute(
        """
        INSERT INTO redirect_mappings (mac, provider, url)
        SELECT '00a0' || lpad(to_hex(i), 8, '0'), 'local',
               'https://fe' || (i % 50) || '.hoster.example/DRIVE/CF0/update/staging.txt'
        FROM generate_series(0, $1 - 1) AS i
        """,
        count,
    )
    await connection.execute("ANALYZE redirect_mappings")


def archive_config(variant: int, size: int = 50_000) -> bytes:
    """Config text of one archive version: the same lines but one, so diffs are small."""
    lines = [f"config change NTP0 /server 192.0.2.{variant % 250}"]
    number = 0
    while sum(len(line) + 2 for line in lines) < size:
        lines.append(f"mod cmd FLASHDIR0 add-item 101 (cn=user{number})(h323=user{number})")
        number += 1
    return ("\r\n".join(lines) + "\r\n").encode()


async def backup_archive(
    connection: asyncpg.Connection,
    devices: list[tuple[str, str, str]],
    versions_per_device: int,
    contents: int = 50,
) -> None:
    """``versions_per_device`` versions for each (mac, hardware id, customer), one per hour back
    from now, cycling through ``contents`` distinct 50 KB configs (stored once each)."""
    rows = []
    for variant in range(contents):
        body = archive_config(variant)
        rows.append((hashlib.sha256(body).digest(), len(body), compress(body)))
    await connection.executemany(
        "INSERT INTO backup_contents (sha256, size, compressed) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING",
        rows,
    )
    digests = [row[0] for row in rows]
    async with connection.transaction():
        # An earlier run's archive goes first: the bench database is the bench's own.
        await connection.execute("TRUNCATE backup_versions, backup_devices, backup_alerts")
        await connection.executemany(
            """INSERT INTO backup_devices (mac, hardware_id, customer, device_type, first_put_at,
                   last_put_at, puts)
               VALUES ($1, $2, $3, 'IP232', now() - make_interval(hours => $4), now(), $4)""",
            [
                (mac, hardware_id, customer, versions_per_device)
                for mac, hardware_id, customer in devices
            ],
        )
        await connection.execute(
            """
            INSERT INTO backup_versions (mac, content_sha256, normalized_sha256, received_at,
                last_seen_at, size, encoding, upload_name, proof, lines_added, lines_removed)
            SELECT d.mac, c.sha256, c.sha256, now() - make_interval(hours => $2 - v),
                   now() - make_interval(hours => $2 - v), bc.size, 'utf-8', 'bench.txt',
                   'certificate', 1, 1
            FROM unnest($1::text[]) AS d (mac)
            CROSS JOIN generate_series(1, $2) AS v
            JOIN unnest($3::bytea[]) WITH ORDINALITY AS c (sha256, n) ON c.n = v % $4 + 1
            JOIN backup_contents bc ON bc.sha256 = c.sha256
            ORDER BY d.mac, v
            """,
            [mac for mac, _, _ in devices],
            versions_per_device,
            digests,
            contents,
        )
        await connection.execute(
            """UPDATE backup_devices d SET latest_version =
                   (SELECT max(id) FROM backup_versions v WHERE v.mac = d.mac)"""
        )
    await connection.execute("ANALYZE backup_devices, backup_versions")


async def version_range(connection: asyncpg.Connection, mac: str) -> tuple[int, int]:
    """The first and last version id of one device."""
    row = await connection.fetchrow(
        "SELECT min(id), max(id) FROM backup_versions WHERE mac = $1", mac
    )
    assert row is not None
    return int(row[0]), int(row[1])


SURNAMES = [
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Schäfer",
    "Koch",
    "Bauer",
    "Richter",
    "Klein",
    "Wolf",
    "Schröder",
    "Neumann",
    "Schwarz",
    "Zimmermann",
    "Braun",
    "Krüger",
    "Hofmann",
    "Hartmann",
    "Lange",
    "Schmitt",
    "Werner",
    "Schmitz",
    "Krause",
    "Meier",
    "Lehmann",
    "Schmid",
    "Schulze",
    "Maier",
    "Köhler",
    "Herrmann",
    "König",
    "Walter",
    "Mayer",
    "Huber",
    "Kaiser",
    "Fuchs",
    "Peters",
    "Lang",
    "Scholz",
    "Möller",
    "Weiß",
    "Jung",
    "Hahn",
    "Schubert",
]
GIVEN_NAMES = [
    "Jürgen",
    "Anna",
    "Lukas",
    "Marie",
    "Jörg",
    "Sophie",
    "Paul",
    "Lea",
    "Jan",
    "Mia",
    "Tim",
    "Emma",
    "Özlem",
    "Ben",
    "Lina",
]


def directory_customer(index: int) -> str:
    return f"Dir{index:05d}"


def directory_number(customer: int, contact: int) -> str:
    """The business number of one contact: 7031 (customer) (contact), E.164."""
    return f"+497031{customer:03d}{contact:05d}"


async def directory_contacts(
    connection: asyncpg.Connection, customers: int, contacts: int, password: str
) -> None:
    """``customers`` inventory customers (Dir00000, ...) with ``contacts`` current contacts each,
    a business and a mobile number apiece (instead of an earlier run's)."""
    from services.core.inventory import Customer, InventoryRepository

    inventory = InventoryRepository(connection)
    for c in range(customers):
        await inventory.upsert_customer(
            Customer(
                id=directory_customer(c),
                frontend="sb1",
                name=f"Directory customer {c}",
                system_name=f"dir{c}.example",
                country_code="49",
                area_code="7031",
                registration_password=password,
            )
        )
    names = [directory_customer(c) for c in range(customers)]
    async with connection.transaction():
        await connection.execute(
            "DELETE FROM contact_current WHERE customer = ANY($1::text[])", names
        )
        await connection.execute(
            "DELETE FROM contact_versions WHERE customer = ANY($1::text[])", names
        )
        await connection.executemany(
            """INSERT INTO contact_versions (customer, version, uploaded_by, source_sha256,
                   source_encoding, accepted, rejected)
               VALUES ($1, 1, 'bench', $2, 'utf-8', $3, 0)""",
            [(name, hashlib.sha256(name.encode()).digest(), contacts) for name in names],
        )
        for c, name in enumerate(names):
            rows = []
            for n in range(contacts):
                surname = f"{SURNAMES[n % len(SURNAMES)]}-{n:05d}"
                given = GIVEN_NAMES[n % len(GIVEN_NAMES)]
                business = directory_number(c, n)
                mobile = f"+49171{c:03d}{n:05d}"
                rows.append(
                    (
                        name,
                        1,
                        n + 2,
                        surname,
                        given,
                        f"Firma {n % 300}",
                        business,
                        business,
                        mobile,
                        mobile,
                    )
                )
            await connection.copy_records_to_table(
                "contact_entries",
                records=rows,
                columns=ENTRY_COLUMNS,
            )
        await connection.executemany(
            "INSERT INTO contact_current (customer, version) VALUES ($1, 1)",
            [(name,) for name in names],
        )
    await connection.execute("ANALYZE contact_entries")


async def clear_events(connection: asyncpg.Connection) -> None:
    """No events and no forwarding cursors of an earlier run (the events scenario counts what
    its own run stored and forwarded)."""
    await connection.execute("TRUNCATE events, event_destinations")


async def events_stored(connection: asyncpg.Connection) -> int:
    """Events the bench's Frontend has committed (the events scenario's durable count)."""
    count: int = await connection.fetchval("SELECT count(*) FROM events")
    return count
