"""One-step onboarding and replacement (issue 15, item 5): real PostgreSQL, the CLI as a
subprocess, the admin API on a real TLS listener."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from services.ca.repository import CaRepository
from services.core import pki
from services.core.auth import AccountRepository, Role
from services.core.inventory import (
    Device,
    InventoryRepository,
    apply_inventory,
    read_inventory_file,
)
from services.redirect.handover import check_mapping
from services.redirect.repository import MappingRepository
from services.update.repository import RolloutRepository
from services.update.rollout import RolloutState
from tests.conftest import DEVICE_B, DEVICE_C, SessionPki, admin_listener, until
from tests.test_backup import ADMIN_PASSWORD as BACKUP_ADMIN_PASSWORD
from tests.test_backup import OPERATOR_PASSWORD, SiteFactory
from tests.test_backup import start_site as start_site
from tests.test_update import MAC_A, running_frontend

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "inventory.example.toml"
KUENKEL = "Kuenkel00001"
OTHER = "Other00001"
HEADER = "mac,type,customer,cpe_id,class,name\n"


async def pbxfront(database_url: str, *argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *argv,
        "--set",
        f"database.url={json.dumps(database_url)}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def fleet(pool: asyncpg.Pool) -> asyncpg.Pool:
    inventory = await asyncio.to_thread(read_inventory_file, EXAMPLE)
    async with pool.acquire() as connection, connection.transaction():
        await apply_inventory(connection, inventory)
    repository = InventoryRepository(pool)
    kuenkel = await repository.get_customer(KUENKEL)
    assert kuenkel is not None
    await repository.upsert_customer(dataclasses.replace(kuenkel, id=OTHER, name="Other"))
    return pool


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    return (
        await pool.fetchval("SELECT count(*) FROM devices"),
        await pool.fetchval("SELECT count(*) FROM redirect_mappings"),
        await pool.fetchval("SELECT count(*) FROM audit_log"),
    )


async def test_onboard_csv_all_or_nothing(
    fleet: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    before = await counts(fleet)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        HEADER + "00-90-33-11-00-01,IP232,Kuenkel00001,K-101,phone,Desk 1\n"
        "not-a-mac,IP232,Kuenkel00001,K-102,phone,\n"
        "009033110003,IP232,Nobody00001,K-103,phone,\n"
        "009033110001,IP232,Kuenkel00001,K-104,phone,\n"
        "009033010203,IP232,Other00001,K-105,phone,\n"
        "009033110006,IP232,Kuenkel00001,Kuenkel00001-001,phone,\n"
    )
    code, out, err = await pbxfront(database_url, "devices", "onboard", str(bad))
    assert code == 2, out
    # Syntax first: the file's own problems, each as file:line: field: why.
    assert f"{bad}:3: mac: " in err
    assert f"{bad}:5: mac: 009033110001 is already in {bad}:2" in err
    assert "nothing changed" in err
    assert await counts(fleet) == before

    # Syntax fixed: the database's objections, every row at once.
    bad.write_text(
        HEADER + "00-90-33-11-00-01,IP232,Kuenkel00001,K-101,phone,Desk 1\n"
        "009033110003,IP232,Nobody00001,K-103,phone,\n"
        "009033010203,IP232,Other00001,K-105,phone,\n"
        "009033110006,IP232,Kuenkel00001,Kuenkel00001-001,phone,\n"
    )
    code, out, err = await pbxfront(database_url, "devices", "onboard", str(bad))
    assert code == 2, out
    assert f"{bad}:3: customer: no customer Nobody00001" in err
    assert f"{bad}:4: mac: 009033010203 is already a device of customer {KUENKEL}" in err
    assert f"{bad}:5: cpe_id: Kuenkel00001-001 belongs to device 009033010203" in err
    assert f"{bad}:2" not in err
    assert await counts(fleet) == before

    missing = tmp_path / "missing.csv"
    missing.write_text("mac,type,customer\n009033110001,IP232,Kuenkel00001\n")
    code, _out, err = await pbxfront(database_url, "devices", "onboard", str(missing))
    assert code == 2
    assert f"{missing}:1: cpe_id: missing column" in err
    assert await counts(fleet) == before

    good = tmp_path / "good.csv"
    good.write_text(  # as a spreadsheet saves it: a BOM, CRLF
        "\ufeff" + HEADER + "00-90-33-11-00-01,IP232,Kuenkel00001,K-101,phone,Desk 1\n"
        "009033110002,IP811,Kuenkel00001,K-102,phone,\n",
        newline="\r\n",
    )
    code, out, err = await pbxfront(database_url, "devices", "onboard", str(good), "--dry-run")
    assert code == 0, err
    assert "dry run" in out
    assert await counts(fleet) == before

    code, out, err = await pbxfront(database_url, "devices", "onboard", str(good))
    assert code == 0, err
    assert "009033110001: device created, mapping created" in out
    device = await InventoryRepository(fleet).get_device("009033110001")
    assert device is not None
    assert (device.customer, device.cpe_id, device.name, device.hardware_id) == (
        KUENKEL,
        "K-101",
        "Desk 1",
        "IP232-11-00-01",
    )
    mapping = await MappingRepository(fleet).get("009033110001")
    assert mapping is not None
    assert (mapping.provider, mapping.frontend) == ("local", "sb1")
    actions = [
        row["action"]
        for row in await fleet.fetch(
            "SELECT action FROM audit_log WHERE object_id = '009033110001' ORDER BY id"
        )
    ]
    assert actions == ["inventory.add", "device.onboard"]

    # The same file again: unchanged, no new audit rows.
    audit_rows = (await counts(fleet))[2]
    code, out, err = await pbxfront(database_url, "devices", "onboard", str(good))
    assert code == 0, err
    assert "009033110001: device unchanged, mapping unchanged" in out
    assert (await counts(fleet))[2] == audit_rows


async def test_replace_moves_cpe_id_variables_and_mapping(
    fleet: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    inventory = InventoryRepository(fleet)
    csv = tmp_path / "one.csv"
    csv.write_text(HEADER + "009033110001,IP232,Kuenkel00001,K-101,phone,Desk 1\n")
    code, _out, err = await pbxfront(database_url, "devices", "onboard", str(csv))
    assert code == 0, err
    await inventory.set_variable("device", "009033110001", "h-ext", "201")
    await inventory.set_variable("device", "009033110001", "h-sip-pw", "s3cret", secret=True)

    code, _out, err = await pbxfront(
        database_url, "devices", "replace", "009033110001", "009033010203"
    )
    assert code == 2
    assert "new_mac: 009033010203 is already in the inventory" in err
    code, _out, err = await pbxfront(
        database_url, "devices", "replace", "009033999999", "009033220001"
    )
    assert code == 2
    assert "old_mac: no device 009033999999 in the inventory" in err

    code, out, err = await pbxfront(
        database_url, "devices", "replace", "00:90:33:11:00:01", "009033220001", "--type", "IP232"
    )
    assert code == 0, err
    assert "009033220001 replaces 009033110001" in out
    assert await inventory.get_device("009033110001") is None
    new = await inventory.get_device("009033220001")
    assert new is not None
    assert (new.customer, new.cpe_id, new.name, new.hardware_id) == (
        KUENKEL,
        "K-101",
        "Desk 1",
        "IP232-22-00-01",
    )
    variables = {v.name: (v.value, v.secret) for v in await inventory.list_variables("device")}
    assert variables["h-ext"] == ("201", False)
    assert variables["h-sip-pw"] == ("s3cret", True)
    assert not await inventory.list_variables("device", "009033110001")
    redirect = MappingRepository(fleet)
    assert await redirect.get("009033110001") is None
    moved = await redirect.get("009033220001")
    assert moved is not None
    assert moved.frontend == "sb1"
    row = await fleet.fetchrow(
        "SELECT before, after FROM audit_log WHERE action = 'device.replace' "
        "AND object_id = '009033220001'"
    )
    assert row is not None
    after = json.loads(row["after"]) if isinstance(row["after"], str) else row["after"]
    assert after["old"] == "009033110001"
    assert "s3cret" not in str(row["after"])


def basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
async def api(
    fleet: asyncpg.Pool, session_pki: SessionPki
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    await AccountRepository(fleet).add("operator", frozenset({Role.OPERATOR}), "operator pw 1234")
    async with admin_listener(fleet, session_pki) as api_client:
        yield api_client


async def test_onboard_api(fleet: asyncpg.Pool, api: tuple[str, aiohttp.ClientSession]) -> None:
    base, session = api
    headers = basic("operator", "operator pw 1234")
    url = f"{base}/api/v1/devices/onboard"
    before = await counts(fleet)
    rows = [
        {"mac": "009033110001", "type": "IP232", "customer": KUENKEL, "cpe_id": "K-1"},
        {"mac": "bogus", "type": "IP232", "customer": KUENKEL},
    ]
    async with session.post(url, json=rows, headers=headers) as response:
        assert response.status == 422
        body = await response.json()
    assert body["problems"][0].startswith("rows[1]: mac: ")
    assert await counts(fleet) == before

    async with session.post(url, data=b"{", headers=headers) as response:
        assert response.status == 400
        assert "body" in (await response.json())["error"]

    async with session.post(f"{url}?dry_run=1", json=rows[:1], headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["dry_run"] is True
    assert await counts(fleet) == before

    async with session.post(url, json=rows[:1], headers=headers) as response:
        assert response.status == 201, await response.text()
        body = await response.json()
    assert body["devices"] == [{"mac": "009033110001", "device": "created", "mapping": "created"}]
    assert await MappingRepository(fleet).get("009033110001") is not None
    assert await InventoryRepository(fleet).get_device("009033110001") is not None

    async with session.post(url, json=rows[:1]) as response:
        assert response.status == 401

    async with session.get(f"{base}/api/v1/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert "post" in document["paths"]["/api/v1/devices/onboard"]


async def test_auto_adopt_a_proven_device_named_by_its_mapping(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> None:
    async with running_frontend(pool, session_pki, repo_root, tmp_path, auto_adopt=True) as fe:
        inventory = InventoryRepository(pool)
        assert await inventory.delete_device(MAC_A)
        await MappingRepository(pool).register(
            "local", check_mapping(MAC_A, "sb1", None, {"customer": KUENKEL}), "tester"
        )
        # Only claimed (no client certificate): stays unknown.
        claimed = await fe.device(certificate=False).poll()
        assert claimed.status == 404, claimed.text
        assert await inventory.get_device(MAC_A) is None
        # Proven: adopted for the customer the mapping names, audited.
        first = await fe.device().poll()
        assert first.status == 503, first.text
        assert "adopted" in first.text
        device = await inventory.get_device(MAC_A)
        assert device is not None
        assert (device.customer, device.device_type) == (KUENKEL, "IP232")
        assert (
            await pool.fetchval(
                "SELECT actor FROM audit_log WHERE action = 'device.auto_adopt' AND object_id = $1",
                MAC_A,
            )
            == "auto-adopt"
        )

        async def configured() -> bool:
            return (await fe.device().poll()).status == 200

        await until(configured)


OLD_MAC, NEW_MAC = "009033010204", "0090330a0b0c"  # DEVICE_C (in the example), DEVICE_B (not)
CONFIG = "config change PHONE /name Desk\nconfig change NTP0 /server 10.0.0.1\n"


async def test_replace_moves_backup_history_and_certificate_rollout(
    start_site: SiteFactory, pool: asyncpg.Pool, database_url: str
) -> None:
    site = await start_site()
    # OLD sent two configs; its certificate roll-out is done and a certificate was issued to it.
    assert (await site.put(CONFIG, device=DEVICE_C, name=f"{DEVICE_C}.txt"))[0] in (200, 201)
    changed = CONFIG + "config change NTP1 /server 10.0.0.2\n"
    assert (await site.put(changed, device=DEVICE_C, name=f"{DEVICE_C}.txt"))[0] in (200, 201)
    old_versions = [v.id for v in await site.versions(OLD_MAC)]
    assert len(old_versions) == 2
    ca = pki.create_root_ca(country="DE", organization="pbxfront test", key_bits=2048)
    issued = pki.issue_certificate(ca, common_name=DEVICE_C, server=False)
    async with pool.acquire() as connection:
        await CaRepository(connection).record(
            issued.certificate, ca_fingerprint="ab" * 32, kind="device", device_mac=OLD_MAC
        )
    now = datetime.now(UTC)
    await RolloutRepository(pool).save(
        RolloutState(
            mac=OLD_MAC,
            state="current",
            device_subject=f"CN={DEVICE_C}",
            device_issuer="CN=pbxfront test",
            queried_at=now,
            started_at=now - timedelta(days=30),
        )
    )

    code, out, err = await pbxfront(database_url, "devices", "replace", OLD_MAC, NEW_MAC)
    assert code == 0, err
    assert "2 backup version(s) moved" in out
    assert "certificate roll-out from current, asks NEW for its certificates" in out
    assert f"pbxfront ca revoke {format(issued.certificate.serial_number, 'x')}" in out

    # The history is NEW's now: CLI, API and WebDAV.
    code, out, err = await pbxfront(database_url, "backups", "versions", NEW_MAC, "--json")
    assert code == 0, err
    assert [v["id"] for v in json.loads(out)] == sorted(old_versions, reverse=True)
    session = await site.session()
    operator = basic("operator", OPERATOR_PASSWORD)
    api = f"{site.admin}/api/v1/backups/devices"
    async with session.get(f"{api}/{NEW_MAC}/versions", headers=operator) as response:
        assert response.status == 200
        page = await response.json()
    assert [v["id"] for v in page["versions"]] == sorted(old_versions, reverse=True)
    async with session.get(f"{api}/{OLD_MAC}/versions", headers=operator) as response:
        assert response.status == 404
    async with session.request(
        "PROPFIND",
        f"{site.admin}/dav/backups/{KUENKEL}/{NEW_MAC}/",
        headers={**basic("admin", BACKUP_ADMIN_PASSWORD), "Depth": "1"},
    ) as response:
        assert response.status == 207
        assert (await response.text()).count("<D:href>") == 3  # the folder and two versions

    # NEW sending OLD's last config continues the history: no new version; a change is one,
    # compared with OLD's last.
    status, _ = await site.put(changed, device=DEVICE_B, name=f"{DEVICE_B}.txt")
    assert status in (200, 201)
    assert [v.id for v in await site.versions(NEW_MAC)] == sorted(old_versions, reverse=True)
    status, _ = await site.put(
        changed + "config change NTP2 /server 10.0.0.3\n", device=DEVICE_B, name=f"{DEVICE_B}.txt"
    )
    assert status == 201
    latest = (await site.versions(NEW_MAC))[0]
    assert (latest.lines_added, latest.lines_removed) == (1, 0)

    # The roll-out goes on for NEW from the query; OLD's row went with OLD.
    (carried,) = await RolloutRepository(pool).statuses(mac=NEW_MAC)
    assert carried.rollout is not None
    assert carried.rollout.state == "querying"
    assert carried.rollout.device_subject is None
    assert carried.rollout.started_at is not None
    assert carried.rollout.started_at < now - timedelta(days=29)
    assert (
        await pool.fetchval("SELECT count(*) FROM certificate_rollouts WHERE mac = $1", OLD_MAC)
        == 0
    )
    row = await pool.fetchrow(
        "SELECT before, after FROM audit_log WHERE action = 'device.replace' AND object_id = $1",
        NEW_MAC,
    )
    assert row is not None
    before, after = row["before"], row["after"]
    assert before["certificate_rollout"] == "current"
    assert after["certificate_rollout"] == {"from": "current", "to": "querying"}
    assert after["backups"] == {"versions": 2, "ids": sorted(old_versions)}


async def test_replace_refuses_a_new_device_with_another_customers_backups(
    start_site: SiteFactory, pool: asyncpg.Pool, database_url: str
) -> None:
    site = await start_site()
    assert (await site.put(CONFIG, device=DEVICE_C, name=f"{DEVICE_C}.txt"))[0] in (200, 201)
    # NEW's MAC once sent backups for another customer (a device since removed from it).
    inventory = InventoryRepository(pool)
    kuenkel = await inventory.get_customer(KUENKEL)
    assert kuenkel is not None
    await inventory.upsert_customer(dataclasses.replace(kuenkel, id=OTHER, name="Other"))
    await inventory.upsert_device(Device(NEW_MAC, "IP222", "phone", OTHER))
    assert (await site.put(CONFIG, device=DEVICE_B, name=f"{DEVICE_B}.txt"))[0] in (200, 201)
    assert await inventory.delete_device(NEW_MAC)
    audit_rows = await pool.fetchval("SELECT count(*) FROM audit_log")

    code, _out, err = await pbxfront(database_url, "devices", "replace", OLD_MAC, NEW_MAC)
    assert code == 2
    assert f"new_mac: {NEW_MAC} has stored backups of customer {OTHER}" in err
    # Nothing changed.
    assert await inventory.get_device(OLD_MAC) is not None
    assert len(await site.versions(OLD_MAC)) == 1
    assert len(await site.versions(NEW_MAC)) == 1
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == audit_rows


async def test_replace_merges_backups_new_sent_for_the_same_customer(
    start_site: SiteFactory, pool: asyncpg.Pool, database_url: str
) -> None:
    site = await start_site()
    inventory = InventoryRepository(pool)
    # NEW was tried out for this customer first (a backup), then taken out again.
    await inventory.upsert_device(Device(NEW_MAC, "IP222", "phone", KUENKEL))
    assert (await site.put(CONFIG, device=DEVICE_B, name=f"{DEVICE_B}.txt"))[0] == 201
    assert await inventory.delete_device(NEW_MAC)
    changed = CONFIG + "config change NTP1 /server 10.0.0.2\n"
    assert (await site.put(changed, device=DEVICE_C, name=f"{DEVICE_C}.txt"))[0] == 201
    (new_first,) = [v.id for v in await site.versions(NEW_MAC)]
    (old_latest,) = [v.id for v in await site.versions(OLD_MAC)]

    code, out, err = await pbxfront(database_url, "devices", "replace", OLD_MAC, NEW_MAC)
    assert code == 0, err
    assert "1 backup version(s) moved" in out
    assert [v.id for v in await site.versions(NEW_MAC)] == [old_latest, new_first]
    row = await pool.fetchrow(
        "SELECT latest_version, puts FROM backup_devices WHERE mac = $1", NEW_MAC
    )
    assert row is not None
    assert (row["latest_version"], row["puts"]) == (old_latest, 2)
    assert await pool.fetchval("SELECT count(*) FROM backup_devices WHERE mac = $1", OLD_MAC) == 0
    # The next backup is compared with the newest of the merged history.
    assert (await site.put(changed, device=DEVICE_B, name=f"{DEVICE_B}.txt"))[0] == 200
