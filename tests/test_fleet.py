"""Safe fleet changes (issue 15): inventory apply without surprises, archive and restore, the
audit log. Real PostgreSQL, the CLI as a subprocess, the admin API on a real TLS listener."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from services.contacts.domain import Entry
from services.contacts.repository import ContactsRepository, NewVersion
from services.core import audit
from services.core.auth import AccountRepository, Role
from services.core.inventory import (
    InventoryError,
    InventoryRepository,
    Scope,
    archived_customers,
    load_inventory,
    read_inventory_file,
    render_inventory,
    restore_customer,
)
from services.core.inventory.apply import Sources, apply_sources, read_sources
from tests.conftest import SessionPki, admin_listener

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "inventory.example.toml"
KUENKEL = "Kuenkel00001"
ACTOR = audit.Actor("tester", "cli")

NEW_CUSTOMER = """
[[customers]]
id = "Neu00001"
frontend = "sb1"
name = "Neu GmbH"
system_name = "neu.example"
country_code = "49"
area_code = "711"
registration_password = "neu-registration-secret"

[customers.variables]
h-neu = "1"
neu-pbx-password = { value = "neu-variable-secret", secret = true }

[[devices]]
mac = "00-90-33-0a-00-01"
type = "IP232"
class = "phone"
customer = "Neu00001"
cpe_id = "Neu00001-001"
"""
SECOND_DEVICE = """
[[devices]]
mac = "00-90-33-0a-00-02"
type = "IP232"
class = "phone"
customer = "Neu00001"
cpe_id = "Neu00001-002"
"""


async def pbxfront(
    database_url: str, *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``python -m services.cli …`` on the test database, stdin not a terminal."""
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
        env=None if env is None else {**os.environ, **env},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def customers_and_owners(pool: asyncpg.Pool) -> dict[str, str | None]:
    async with pool.acquire() as connection:
        rows = await connection.fetch("SELECT id, owner FROM customers ORDER BY id")
    return {row["id"]: row["owner"] for row in rows}


async def device_macs(pool: asyncpg.Pool, customer: str) -> list[str]:
    async with pool.acquire() as connection:
        rows = await connection.fetch(
            "SELECT mac FROM devices WHERE customer = $1 ORDER BY mac", customer
        )
    return [row["mac"] for row in rows]


async def audit_text(pool: asyncpg.Pool) -> str:
    async with pool.acquire() as connection:
        rows = await connection.fetch("SELECT to_jsonb(a)::text AS row FROM audit_log a")
    return "\n".join(row["row"] for row in rows)


async def test_a_one_customer_file_adds_and_prunes_only_its_own(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    code, out, err = await pbxfront(database_url, "inventory", "apply", str(EXAMPLE))
    assert code == 0, err
    new = tmp_path / "new.toml"
    new.write_text(NEW_CUSTOMER + SECOND_DEVICE)

    code, out, err = await pbxfront(database_url, "inventory", "apply", str(new))
    assert code == 0, err
    assert "+ customer Neu00001 [owner -> file:new.toml]" in out
    assert not [line for line in out.splitlines() if line.startswith("-")]
    assert await customers_and_owners(pool) == {
        KUENKEL: "file:inventory.example.toml",
        "Neu00001": "file:new.toml",
    }
    assert len(await device_macs(pool, KUENKEL)) == 4

    # Within its own scope nothing is missing: a prune of the same file removes nothing.
    code, out, _ = await pbxfront(database_url, "inventory", "apply", str(new), "--prune")
    assert (code, out.strip()) == (0, "no changes")

    new.write_text(NEW_CUSTOMER)  # the second phone left
    code, out, _ = await pbxfront(
        database_url, "inventory", "apply", str(new), "--prune", "--dry-run"
    )
    assert code == 0
    assert out.splitlines() == [
        "- device 0090330a0002",
        "0 to add, 0 to change, 1 to remove (devices 1)",
        "(apply would ask for confirmation of the removals, or take --yes)",
        "(dry run: nothing changed)",
    ]
    code, out, err = await pbxfront(database_url, "inventory", "apply", str(new), "--prune")
    assert code == 2
    assert "refusing to remove 1 object(s) without confirmation" in err
    assert "nothing was changed" in err
    assert await device_macs(pool, "Neu00001") == ["0090330a0001", "0090330a0002"]

    code, out, err = await pbxfront(
        database_url, "inventory", "apply", str(new), "--prune", "--yes"
    )
    assert code == 0, err
    assert out.splitlines()[-1] == "applied: 0 to add, 0 to change, 1 to remove (devices 1)"
    assert await device_macs(pool, "Neu00001") == ["0090330a0001"]
    assert len(await device_macs(pool, KUENKEL)) == 4

    # The audit log has every change, secrets redacted, as the CLI shows it.
    code, out, err = await pbxfront(
        database_url, "audit", "--object", "customer/Neu00001", "--since", "1h", "--json"
    )
    assert code == 0, err
    entries = json.loads(out)
    assert [e["action"] for e in entries] == ["inventory.add"]
    assert entries[0]["origin"] == "cli"
    assert entries[0]["after"]["registration_password"] == "***"
    assert entries[0]["after"]["owner"] == "file:new.toml"
    code, out, _ = await pbxfront(database_url, "audit", "--object", "variable")
    assert "inventory.add variable customer/Neu00001/neu-pbx-password" in out
    code, out, _ = await pbxfront(database_url, "audit", "--object", "inventory")
    assert [line.split(" ", 3)[3] for line in out.splitlines()] == [
        "inventory.apply inventory file:inventory.example.toml",
        "inventory.apply inventory file:new.toml",
        "inventory.prune inventory file:new.toml",
    ]
    text = await audit_text(pool)
    assert "neu-registration-secret" not in text
    assert "neu-variable-secret" not in text
    assert "change-me" not in text  # the example's passwords


def without_customers() -> str:
    """The example file with its customers and devices dropped (Frontends, globals kept)."""
    inventory = read_inventory_file(EXAMPLE)
    kept = dataclasses.replace(
        inventory,
        customers=(),
        devices=(),
        variables=tuple(v for v in inventory.variables if v.layer not in ("customer", "device")),
    )
    return render_inventory(kept)


async def store_contacts(pool: asyncpg.Pool, customer: str) -> int:
    entry = Entry(1 + 1, "Muster", "Max", "ACME", "07031 123", "+497031123", "", None)
    async with pool.acquire() as connection:
        return await ContactsRepository(connection).store(
            NewVersion(customer, "test", None, b"\x01" * 32, "utf-8", 0, [entry]), 5
        )


async def test_a_large_prune_needs_force_and_a_removed_customer_is_restorable(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    code, _, err = await pbxfront(database_url, "inventory", "apply", str(EXAMPLE))
    assert code == 0, err
    version = await store_contacts(pool, KUENKEL)
    async with pool.acquire() as connection:
        await connection.execute(
            """INSERT INTO backup_devices (mac, hardware_id, customer, device_type, first_put_at,
                   last_put_at) VALUES ('009033010203', 'IP232-01-02-03', $1, 'IP232', now(),
                   now())""",
            KUENKEL,
        )
        before = await load_inventory(connection)

    # Same file name, so the same owner: the customer is in its scope.
    smaller = tmp_path / "inventory.example.toml"
    smaller.write_text(without_customers())
    code, _, err = await pbxfront(
        database_url, "inventory", "apply", str(smaller), "--prune", "--yes"
    )
    assert code == 2
    assert "would remove 5 of 5 stored customers and devices (100%)" in err
    assert "inventory.max_prune_share (20%)" in err
    async with pool.acquire() as connection:
        assert await load_inventory(connection) == before

    code, out, err = await pbxfront(
        database_url, "inventory", "apply", str(smaller), "--prune", "--yes", "--force"
    )
    assert code == 0, err
    assert f"- customer {KUENKEL} [archived]" in out
    assert await customers_and_owners(pool) == {}
    async with pool.acquire() as connection:
        # Contact history and backups outlive the customer; the directory stops serving it.
        assert await connection.fetchval(
            "SELECT count(*) FROM contact_versions WHERE customer = $1", KUENKEL
        )
        assert await connection.fetchval("SELECT count(*) FROM contact_current") == 0
        assert await connection.fetchval("SELECT count(*) FROM backup_devices") == 1

    code, out, _ = await pbxfront(database_url, "inventory", "archived")
    assert out.startswith(f"{KUENKEL}\t")
    assert "4 device(s)" in out
    code, out, _ = await pbxfront(database_url, "inventory", "archived", "--json")
    (archived,) = json.loads(out)
    assert list(archived) == [
        "customer",
        "archived_at",
        "archived_by",
        "owner",
        "devices",
        "contacts_version",
    ]
    assert (archived["customer"], len(archived["devices"])) == (KUENKEL, 4)
    # The archived id cannot come back through a file by accident.
    code, _, err = await pbxfront(database_url, "inventory", "apply", str(EXAMPLE))
    assert code == 2
    assert f"customer {KUENKEL}: archived; restore it first" in err

    code, out, err = await pbxfront(database_url, "inventory", "restore", KUENKEL)
    assert code == 0, err
    assert f"contacts version {version}" in out
    async with pool.acquire() as connection:
        assert await load_inventory(connection) == before
        assert (
            await connection.fetchval(
                "SELECT version FROM contact_current WHERE customer = $1", KUENKEL
            )
            == version
        )
        assert await archived_customers(connection) == []
    assert await customers_and_owners(pool) == {KUENKEL: "file:inventory.example.toml"}
    code, out, _ = await pbxfront(database_url, "inventory", "apply", str(EXAMPLE))
    assert (code, out.strip()) == (0, "no changes")

    # --purge deletes what archiving keeps.
    code, out, err = await pbxfront(
        database_url, "inventory", "apply", str(smaller), "--prune", "--yes", "--force", "--purge"
    )
    assert code == 0, err
    assert f"- customer {KUENKEL} [purged]" in out
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM contact_versions") == 0
        assert await connection.fetchval("SELECT count(*) FROM backup_devices") == 0
        assert await archived_customers(connection) == []
        actions = [
            row["action"]
            for row in await connection.fetch(
                "SELECT action FROM audit_log WHERE object_type = 'customer' ORDER BY id"
            )
        ]
    assert actions == ["inventory.add", "inventory.archive", "inventory.restore", "inventory.purge"]


def write_folder(folder: Path, customers: dict[str, str]) -> None:
    folder.mkdir(exist_ok=True)
    for path in folder.glob("*.toml"):
        path.unlink()
    for customer, number in customers.items():
        (folder / f"set-{customer}.toml").write_text(
            NEW_CUSTOMER.replace("Neu00001", customer).replace("0a-00-01", f"0b-00-{number}")
        )


async def test_a_folder_owns_its_customers(pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with pool.acquire() as connection:
        await apply_sources(connection, read_sources(EXAMPLE), actor=ACTOR)
        folder = tmp_path / "customers"
        write_folder(folder, {"Alpha00001": "01", "Beta00001": "02"})
        plan = await apply_sources(connection, read_sources(folder), actor=ACTOR)
        assert plan.counts() == {"add": 8, "change": 0, "remove": 0}
        assert (await customers_and_owners(pool))[
            "Beta00001"
        ] == "file:customers/set-Beta00001.toml"

        # Beta's file leaves the folder: a prune of the folder removes Beta, nothing else.
        write_folder(folder, {"Alpha00001": "01"})
        dry = await apply_sources(
            connection, read_sources(folder), actor=ACTOR, prune=True, dry_run=True
        )
        assert [str(c) for c in dry.changes] == [
            "- customer Beta00001",
            "- device 0090330b0002",
            "- variable customer/Beta00001/h-neu",
            "- variable customer/Beta00001/neu-pbx-password",
        ]
        assert dry.too_large  # 2 of 9 customers and devices
        with pytest.raises(InventoryError, match="pass --force"):
            await apply_sources(connection, read_sources(folder), actor=ACTOR, prune=True)
        await apply_sources(connection, read_sources(folder), actor=ACTOR, prune=True, force=True)
        assert sorted(await customers_and_owners(pool)) == ["Alpha00001", KUENKEL]

        # A customer in two files of the folder is an error; nothing changes.
        (folder / "again.toml").write_text(NEW_CUSTOMER.replace("Neu00001", "Alpha00001"))
        with pytest.raises(InventoryError) as caught:
            await apply_sources(connection, read_sources(folder), actor=ACTOR)
        assert any("also in file:customers/" in p for p in caught.value.problems)

        # A file may not change another file's customer unless it claims it.
        thief = tmp_path / "thief.toml"
        thief.write_text(NEW_CUSTOMER.replace("Neu00001", "Alpha00001").replace("0a-00", "0b-00"))
        with pytest.raises(InventoryError) as caught:
            await apply_sources(connection, read_sources(thief), actor=ACTOR)
        assert caught.value.problems == [
            "file:thief.toml: customer Alpha00001: owned by file:customers/set-Alpha00001.toml; "
            "this file may not change it (--claim takes it over)"
        ]
        plan = await apply_sources(connection, read_sources(thief), actor=ACTOR, claim=True)
        assert [str(c) for c in plan.changes] == ["~ customer Alpha00001 (owner)"]


async def test_a_prune_refuses_a_plan_that_changed_meanwhile(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        sources = read_sources(EXAMPLE)
        shown = await apply_sources(connection, sources, actor=ACTOR, dry_run=True)
        await apply_sources(connection, sources, actor=ACTOR)  # someone else applied first
        with pytest.raises(InventoryError, match="changed since the plan was shown"):
            await apply_sources(connection, sources, actor=ACTOR, expected=shown.changes)


def basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ADMIN = basic("admin", "admin password 123")
OPERATOR = basic("operator", "operator password 123")


@pytest.fixture
async def api(
    pool: asyncpg.Pool, session_pki: SessionPki
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    accounts = AccountRepository(pool)
    await accounts.add("admin", frozenset({Role.ADMIN}), "admin password 123")
    await accounts.add("operator", frozenset({Role.OPERATOR}), "operator password 123")
    async with admin_listener(pool, session_pki) as api_client:
        yield api_client


API_CUSTOMER = {
    "frontend": "sb1",
    "name": "Portal AG",
    "system_name": "portal.example",
    "country_code": "49",
    "area_code": "30",
    "registration_password": "api-registration-secret",
}


async def test_an_api_customer_is_never_touched_by_files_and_everything_is_audited(
    api: tuple[str, aiohttp.ClientSession], pool: asyncpg.Pool
) -> None:
    base, session = api
    async with pool.acquire() as connection:
        await apply_sources(connection, read_sources(EXAMPLE), actor=ACTOR)
    async with session.post(base + "/api/v1/tokens", headers=OPERATOR) as response:
        assert response.status == 201
        token = (await response.json())["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    async with session.put(
        base + "/api/v1/customers/Portal00001", json=API_CUSTOMER, headers=bearer
    ) as response:
        assert response.status == 201, await response.text()
    async with session.put(
        base + "/api/v1/variables/customer/Portal00001/portal-secret",
        json={"value": "api-variable-secret", "secret": True},
        headers=ADMIN,
    ) as response:
        assert response.status == 200, await response.text()
    assert (await customers_and_owners(pool))["Portal00001"] == "api"

    # A file prune with every scope it can have leaves the API's customer alone.
    async with pool.acquire() as connection:
        sources = read_sources(EXAMPLE)
        scoped = Sources(
            tuple(
                dataclasses.replace(s, scope=dataclasses.replace(s.scope or Scope(), shared=True))
                for s in sources.sources
            )
        )
        plan = await apply_sources(connection, scoped, actor=ACTOR, prune=True, force=True)
        assert plan.changes == ()
        repository = InventoryRepository(connection)
        assert await repository.get_customer("Portal00001") is not None

    # DELETE archives; restore brings it back; both audited with the caller and its address.
    async with session.delete(base + "/api/v1/customers/Portal00001", headers=ADMIN) as response:
        assert response.status == 204
    async with session.get(base + "/api/v1/archived-customers", headers=OPERATOR) as response:
        assert [c["id"] for c in (await response.json())["customers"]] == ["Portal00001"]
    async with session.put(
        base + "/api/v1/customers/Portal00001", json=API_CUSTOMER, headers=ADMIN
    ) as response:
        assert response.status == 422
        assert "archived" in (await response.json())["error"]
    async with session.post(
        base + "/api/v1/customers/Portal00001/restore", headers=ADMIN
    ) as response:
        assert response.status == 200, await response.text()
    async with session.post(base + "/api/v1/customers/Nobody/restore", headers=ADMIN) as response:
        assert response.status == 404
    async with pool.acquire() as connection:
        restored = await InventoryRepository(connection).get_customer("Portal00001")
        assert restored is not None
        assert restored.registration_password == "api-registration-secret"
        variables = await InventoryRepository(connection).list_variables("customer", "Portal00001")
        assert [v.value for v in variables] == ["api-variable-secret"]
    assert (await customers_and_owners(pool))["Portal00001"] == "api"

    async with session.get(base + "/api/v1/audit", headers=OPERATOR) as response:
        assert response.status == 403
    async with session.get(base + "/api/v1/audit?since=yesterday", headers=ADMIN) as response:
        assert response.status == 400
        assert "since" in (await response.json())["error"]
    async with session.get(
        base + "/api/v1/audit?object=customer/Portal00001", headers=ADMIN
    ) as response:
        assert response.status == 200
        entries = (await response.json())["entries"]
    assert [(e["actor"], e["action"]) for e in entries] == [
        ("operator (token)", "inventory.add"),
        ("admin", "inventory.archive"),
        ("admin", "inventory.restore"),
    ]
    assert {e["origin"] for e in entries} == {"127.0.0.1"}
    assert entries[0]["after"]["registration_password"] == "***"
    async with session.get(
        base + "/api/v1/audit?actor=operator&object=account", headers=ADMIN
    ) as response:
        tokens = (await response.json())["entries"]
    assert [(e["action"], e["object_id"]) for e in tokens] == [("token.issue", "operator")]
    async with session.get(base + "/api/v1/audit?object=variable", headers=ADMIN) as response:
        variable_entries = (await response.json())["entries"]
    assert variable_entries[-1]["after"] == {
        "layer": "customer",
        "name": "portal-secret",
        "scope": "Portal00001",
        "secret": True,
        "value": "***",
    }
    text = await audit_text(pool)
    for secret in ("api-registration-secret", "api-variable-secret", token):
        assert secret not in text

    # A file naming the API's customer is refused, unless it claims it.
    async with pool.acquire() as connection:
        claimer = Sources(
            (
                dataclasses.replace(
                    read_sources(EXAMPLE).sources[0],
                    name="file:portal.toml",
                    inventory=dataclasses.replace(
                        read_sources(EXAMPLE).sources[0].inventory,
                        customers=(dataclasses.replace(restored, name="Renamed"),),
                        devices=(),
                        variables=(),
                    ),
                ),
            )
        )
        with pytest.raises(InventoryError, match="owned by api"):
            await apply_sources(connection, claimer, actor=ACTOR)
        with pytest.raises(InventoryError, match="not archived"):
            await restore_customer(connection, "Portal00001", actor=ACTOR)


async def test_every_kind_of_change_is_audited_from_the_cli(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async def cli(*argv: str, env: dict[str, str] | None = None) -> str:
        code, out, err = await pbxfront(
            database_url,
            *argv,
            "--set",
            f"data_dir={json.dumps(str(tmp_path / 'var'))}",
            "--set",
            f"update.firmware_dir={json.dumps(str(tmp_path / 'firmware'))}",
            env=env,
        )
        assert code == 0, err
        return out

    await cli("inventory", "apply", str(EXAMPLE))
    await cli(
        "accounts", "add", "ops", "--role", "operator",
        env={"PBXFRONT_ACCOUNT_PASSWORD": "ops-account-secret"},
    )  # fmt: skip
    await cli("devices", "restage", "00-90-33-01-02-03")
    await cli(
        "devices", "adopt", "00-90-33-0c-00-01", "--customer", KUENKEL, "--type", "IP232",
        "--class", "phone",
    )  # fmt: skip
    image = tmp_path / "ip232.bin"
    image.write_bytes(b"firmware image" * 100)
    await cli("firmware", "add", str(image), "--build", "131500", "--type", "IP232")
    await cli("ca", "init", "--country", "DE", "--organization", "Hoster", "--key-type", "ecdsa")
    issued = await cli(
        "ca", "issue", "device", "--device", "00-90-33-01-02-03", "--key-type", "ecdsa",
        "--out", str(tmp_path / "issued"),
    )  # fmt: skip
    match = re.search(r"serial ([0-9a-f]+)", issued)
    assert match is not None
    await cli("ca", "revoke", match.group(1))
    await store_contacts(pool, KUENKEL)
    await store_contacts(pool, KUENKEL)
    await cli("contacts", "rollback", KUENKEL)
    await cli("redirect", "register", "00-90-33-0d-00-01", "--frontend", "sb1")
    await cli("redirect", "transfer-token", "00-90-33-0d-00-01")
    await cli("redirect", "deregister", "00-90-33-0d-00-01")

    entries = json.loads(await cli("audit", "--json"))
    assert {e["origin"] for e in entries} == {"cli"}
    assert len({e["actor"] for e in entries}) == 1
    kinds = [(e["action"], e["object_type"]) for e in entries if e["object_type"] != "variable"]
    for expected in [
        ("inventory.apply", "inventory"),
        ("account.add", "account"),
        ("device.restage", "device"),
        ("inventory.add", "device"),  # the adoption
        ("firmware.add", "firmware"),
        ("ca.init", "certificate"),
        ("ca.issue", "certificate"),
        ("ca.revoke", "certificate"),
        ("contacts.rollback", "contacts"),
        ("redirect.created", "redirect-mapping"),
        ("redirect.transfer-token", "redirect-mapping"),
        ("redirect.deregister", "redirect-mapping"),
    ]:
        assert expected in kinds
    rollback = next(e for e in entries if e["action"] == "contacts.rollback")
    assert (rollback["before"], rollback["after"]) == ({"version": 2}, {"version": 1})
    text = await audit_text(pool)
    assert "ops-account-secret" not in text
    only_accounts = await cli("audit", "--object", "account/ops")
    assert len(only_accounts.splitlines()) == 1
    assert (await cli("audit", "--actor", "nobody-at-all")) == ""


async def test_scripts_plan_lists_changed_devices_with_redacted_diffs(
    database_url: str, tmp_path: Path
) -> None:
    import shutil

    pending = tmp_path / "pending"
    shutil.copytree(ROOT / "staging_scripts", pending)
    (pending / f"set-{KUENKEL}.txt").write_text(
        "config change PHONE /name {{ device.cpe_id or device.hardware_id }}\n"
        "config change H323 /pwd {{ customer.registration_password }} #(pbx-password)\n"
    )

    async def cli(*argv: str) -> tuple[int, str]:
        code, out, err = await pbxfront(
            database_url,
            *argv,
            "--set",
            f"update.scripts_dir={json.dumps(str(ROOT / 'staging_scripts'))}",
            "--set",
            f"update.firmware_dir={json.dumps(str(tmp_path / 'firmware'))}",
        )
        assert not err, err
        return code, out

    await cli("inventory", "apply", str(EXAMPLE))
    code, out = await cli("scripts", "plan", "--scripts", str(pending), "--diff")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[-1] == "4 of 4 device(s) get a changed script"
    headlines = [line for line in lines if line.startswith("~ ")]
    assert len(headlines) == 4
    assert headlines[0].startswith("~ IP232-01-02-03 (009033010203) customer Kuenkel00001: ")
    assert "    +config change PHONE /name Kuenkel00001-001" in lines
    assert "    +config change H323 /pwd *** ***" in lines
    assert "change-me" not in out

    # Unchanged tree: nothing to do; the live tree against what devices were sent (nothing yet).
    code, out = await cli("scripts", "plan", "--scripts", str(ROOT / "staging_scripts"))
    assert out.splitlines()[-1] == "0 of 4 device(s) get a changed script"
    code, out = await cli("scripts", "plan", "--json", "--customer", KUENKEL)
    data = json.loads(out)
    assert data["devices"] == 4
    assert {row["before"] for row in data["changes"]} == {None}

    # With published versions, the plan compares the files with the version devices get.
    code, out = await cli("scripts", "publish", "--comment", "baseline")
    assert code == 0, out
    code, out = await cli(
        "scripts", "plan", "--scripts", str(pending), "--set", 'update.scripts_source="database"'
    )
    assert out.splitlines()[-1] == "4 of 4 device(s) get a changed script"

    # A tree that does not render is reported once, with the devices it affects.
    (pending / f"set-{KUENKEL}.txt").write_text("config change X /y {{ no_such_name }}\n")
    code, out = await cli("scripts", "plan", "--scripts", str(pending))
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("! ")]
    assert len(problems) == 1
    assert "no_such_name" in problems[0]
    assert "(4 device(s): " in problems[0]


async def test_a_prune_asks_on_a_terminal(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    import pty

    async with pool.acquire() as connection:
        await apply_sources(connection, read_sources(EXAMPLE), actor=ACTOR)
    new = tmp_path / "new.toml"
    new.write_text(NEW_CUSTOMER + SECOND_DEVICE)
    code, _, err = await pbxfront(database_url, "inventory", "apply", str(new))
    assert code == 0, err
    new.write_text(NEW_CUSTOMER)

    async def answer(reply: bytes) -> tuple[int, str]:
        controller, terminal = pty.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli", "inventory", "apply", str(new), "--prune",
                "--set", f"database.url={json.dumps(database_url)}",
                stdin=terminal, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )  # fmt: skip
            os.write(controller, reply)
            out, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            os.close(terminal)
            os.close(controller)
        assert process.returncode is not None
        return process.returncode, out.decode()

    code, out = await answer(b"n\n")
    assert code == 1
    assert "nothing was changed" in out
    assert await device_macs(pool, "Neu00001") == ["0090330a0001", "0090330a0002"]
    code, out = await answer(b"y\n")
    assert code == 0, out
    assert await device_macs(pool, "Neu00001") == ["0090330a0001"]
