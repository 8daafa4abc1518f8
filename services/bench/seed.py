"""Bulk data for the bench scenarios, written straight into the tables in a few statements.

Going through the services' own write paths would take hours for a million rows; what the
benchmarks measure is reading them. The rows satisfy every constraint of the schema, so the
services treat them like any others.
"""

from __future__ import annotations

import hashlib

import asyncpg

from services.backup.normalize import compress


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
