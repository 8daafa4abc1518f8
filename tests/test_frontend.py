"""The Frontend plan: the seed's scheme (9007 -> 10.0.0.7:636), budgets, violations, the CLI as
a subprocess, the admin API over real TLS, and stored backups checked against the plan."""

from __future__ import annotations

import asyncio
import base64
import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.backup.handlers import ContentCpu
from services.backup.normalize import Normalizer, prepare
from services.backup.repository import (
    IntakeRepository,
    InventoryDevice,
    Upload,
)
from services.core import pki
from services.core.auth import AccountRepository, Role
from services.core.config import FrontendPlanSettings, Settings
from services.core.identity import DeviceIdentity, Proof
from services.core.inventory import Inventory, apply_inventory, parse_inventory
from services.events.repository import EventRepository
from services.frontend.backups import check_backups, session_borders
from services.frontend.context import PlanCache, context_additions
from services.frontend.plan import (
    FrontendPlan,
    NatMap,
    build_plan,
    plan_csv,
    plan_json,
    plan_text,
    scheme_port,
)
from services.frontend.repository import FrontendRepository
from services.serve import frontend_plan_additions
from services.update.provisioning import (
    Lifecycle,
    PollArguments,
    Snapshot,
    Urls,
    look_up,
    reply_for,
)
from services.update.repository import PollRecord, UpdateRepository
from services.update.scripts import ScriptStore, SecretRequired
from tests.conftest import SessionPki, admin_listener, assert_golden, until
from tests.test_lifecycle import INTERVAL, POLLS_TO_CONVERGE
from tests.test_lifecycle import Frontend as LifecycleFrontend

# The real node of the lifecycle tests (a fixture, re-exported so pytest finds it here).
from tests.test_lifecycle import frontend as frontend

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "inventory.example.toml"
PBXFRONT = [sys.executable, "-m", "services.cli"]
SETTINGS = FrontendPlanSettings()
REGISTRATION_PASSWORD = "reg-secret-4711"

HEAD = """
[variables]
h-domain = "hoster.tld"
h-kerberos1ip = "10.0.0.2"
h-kerberos2ip = "10.0.0.3"

[device_classes.phone.variables]
h-rasport = "1819"

[[frontends]]
id = "sb1"
public_address = "192.0.2.10"
internal_address = "10.0.0.10"
index = 1
"""


def customer(
    number: int,
    address: str | None,
    *,
    password: bool = True,
    extra: str = "",
) -> str:
    customer_id = f"Kunde{number:05d}"
    text = f"""
[[customers]]
id = "{customer_id}"
frontend = "sb1"
name = "Kunde {number}"
system_name = "kunde{number}.example"
country_code = "49"
area_code = "7031"
"""
    if password:
        text += f'registration_password = "{REGISTRATION_PASSWORD}"\n'
    variables = extra
    if address is not None:
        variables = f'h-pbxip = "{address}"\n' + variables
    if variables:
        text += "[customers.variables]\n" + variables
    return text


def phone(number: int, mac_suffix: int, cpe_id: str | None = "") -> str:
    cpe = f"Kunde{number:05d}-{mac_suffix:03d}" if cpe_id == "" else cpe_id
    text = f"""
[[devices]]
mac = "00-90-33-{number // 256:02x}-{number % 256:02x}-{mac_suffix:02x}"
type = "IP232"
class = "phone"
customer = "Kunde{number:05d}"
"""
    if cpe is not None:
        text += f'cpe_id = "{cpe}"\n'
    return text


def inventory(*parts: str) -> Inventory:
    return parse_inventory(HEAD + "".join(parts), "test.toml")


def plan_of(*parts: str, settings: FrontendPlanSettings = SETTINGS) -> FrontendPlan:
    return build_plan(inventory(*parts), "sb1", settings)


def codes(plan: FrontendPlan) -> list[str]:
    return [v.code for v in plan.violations]


# --- the scheme, golden ------------------------------------------------------------------------


def test_seed_example_9007_maps_to_10_0_0_7_636() -> None:
    assert scheme_port(9, "10.0.0.7") == 9007
    assert scheme_port(8, "10.0.0.7") == 8007
    plan = plan_of(customer(7, "10.0.0.7"), phone(7, 1))
    assert plan.violations == ()
    assert plan.customers[0].maps == (
        NatMap("tcp", 8007, "10.0.0.7", 443, "https", "Kunde00007", "scheme"),
        NatMap("tcp", 9007, "10.0.0.7", 636, "ldaps", "Kunde00007", "scheme"),
    )
    # The seed's Kerberos maps, addresses from h-kerberos1ip / h-kerberos2ip.
    assert [(m.external_port, m.address, m.internal_port) for m in plan.shared_maps] == [
        (7465, "10.0.0.3", 464),
        (7464, "10.0.0.2", 464),
        (7089, "10.0.0.3", 88),
        (7088, "10.0.0.2", 88),
    ]
    (border,) = plan.session_borders
    assert (border.long_name, border.internal_name, border.external_name) == (
        "Kunde00007-001",
        "Kunde00007-001",
        "IP232-00-07-01",
    )
    assert border.password == REGISTRATION_PASSWORD
    assert border.pbx_password is True
    assert border.internal_pbx == "10.0.0.7"
    assert plan.ras_port_alt == 1819
    assert (plan.udp_nat_first, plan.udp_nat_last) == (40000, 40134)
    assert (plan.budget.maps_used, plan.budget.customers) == (6, 1)


def test_example_inventory_plans_without_violations() -> None:
    example = parse_inventory(EXAMPLE.read_text(), str(EXAMPLE))
    plan = build_plan(example, "sb1", SETTINGS)
    assert plan.violations == ()
    # h-ldapport = "9001" overrides; it equals what the scheme gives for 10.0.1.1.
    assert {(m.service, m.external_port, m.source) for m in plan.customers[0].maps} == {
        ("https", 8001, "scheme"),
        ("ldaps", 9001, "variable h-ldapport"),
    }
    # The PBX gets no SessionBorder object; the three phones do.
    assert [b.long_name for b in plan.session_borders] == [
        "Kuenkel00001-001",
        "Kuenkel00001-002",
        "Kuenkel00001-003",
    ]
    # IP112 stays on 1719, the others use 1819: one alternate port.
    assert plan.ras_port_alt == 1819


def test_csv_masks_the_password_unless_asked() -> None:
    plan = plan_of(customer(7, "10.0.0.7"), phone(7, 1))
    rows = list(csv.DictReader(io.StringIO(plan_csv(plan))))
    borders = [r for r in rows if r["kind"] == "sessionborder"]
    assert borders[0]["password"] == "***"
    assert REGISTRATION_PASSWORD not in plan_csv(plan)
    assert REGISTRATION_PASSWORD in plan_csv(plan, show_secrets=True)
    nat = {r["external_port"]: r for r in rows if r["kind"] == "nat"}
    assert (nat["9007"]["address"], nat["9007"]["internal_port"]) == ("10.0.0.7", "636")


# --- budgets -----------------------------------------------------------------------------------


def test_135_customers_fit_and_the_136th_is_refused() -> None:
    customers = [customer(n, f"10.0.0.{n}") for n in range(1, 136)]
    full = plan_of(*customers)
    assert full.violations == ()
    assert (full.budget.customers, full.budget.maps_used) == (135, 274)
    over = plan_of(*customers, customer(136, "10.0.0.136"))
    # The UDP NAT range is sized for the budget too (one port per SIP trunk).
    assert codes(over) == ["too-many-customers", "udp-nat-too-small"]
    assert "136 customers, the limit is 135" in str(over.violations[0])


def test_map_budget_and_shared_reserve_are_settings() -> None:
    settings = dataclasses.replace(SETTINGS, max_maps=7, shared_reserve=3)
    plan = plan_of(customer(1, "10.0.0.1"), customer(2, "10.0.0.2"), settings=settings)
    assert sorted(codes(plan)) == ["too-many-maps", "too-many-shared-maps"]


# --- violations --------------------------------------------------------------------------------


def test_two_customers_sharing_an_ldaps_port_map_is_named() -> None:
    plan = plan_of(
        customer(1, "10.0.0.1"),
        customer(2, "10.0.0.2", extra='h-ldapport = "9001"\n'),
    )
    (clash,) = plan.violations
    assert clash.code == "port-clash"
    assert "tcp port 9001" in clash.message
    assert "Kunde00001" in clash.message
    assert "Kunde00002" in clash.message
    assert "would read" in clash.message


def test_same_last_octet_in_two_subnets_clashes() -> None:
    plan = plan_of(customer(1, "10.0.0.7"), customer(2, "10.0.1.7"))
    assert codes(plan) == ["port-clash", "port-clash"]
    assert {v.subject for v in plan.violations} == {"tcp port 8007", "tcp port 9007"}


@pytest.mark.parametrize(("address", "count"), [("pbx.kunde.example", 1), ("fd00::7", 2)])
def test_an_address_the_scheme_cannot_encode(address: str, count: int) -> None:
    plan = plan_of(customer(1, address))
    assert codes(plan) == ["unencodable-address"] * count
    assert plan.customers[0].maps == ()


def test_missing_password_cpe_id_and_address() -> None:
    plan = plan_of(customer(1, None, password=False), phone(1, 1, cpe_id=None))
    assert sorted(codes(plan)) == ["no-cpe-id", "no-pbx-address", "no-registration-password"]
    assert plan.session_borders == ()
    assert any("IP232-00-01-01" in str(v) for v in plan.violations)


def test_udp_range_overlapping_rtp_and_too_small() -> None:
    settings = dataclasses.replace(SETTINGS, udp_nat_first=32000, udp_nat_size=1)
    plan = plan_of(customer(1, "10.0.0.1"), customer(2, "10.0.0.2"), settings=settings)
    assert sorted(codes(plan)) == ["udp-nat-overlaps-rtp", "udp-nat-too-small"]


def test_a_shared_map_on_a_customer_port_clashes() -> None:
    # The seed's own template example puts Metadir on 9007, a customer's LDAPS port.
    settings = dataclasses.replace(
        SETTINGS, shared_maps=("metadir tcp 9007 10.0.0.20 714",), directory_map="metadir"
    )
    plan = plan_of(customer(7, "10.0.0.7"), settings=settings)
    (clash,) = plan.violations
    assert "shared map metadir" in clash.message
    assert "customer Kunde00007" in clash.message


# --- through the database, the CLI and the API -------------------------------------------------


async def apply(pool: asyncpg.Pool, text: str) -> None:
    async with pool.acquire() as connection:
        await apply_inventory(connection, parse_inventory(text, "test.toml"))


def pbxfront(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PBXFRONT, *args, "--set", f"database.url={json.dumps(database_url)}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("PBXFRONT_")},
        check=False,
    )


async def test_cli_plan_and_check_as_subprocesses(pool: asyncpg.Pool, database_url: str) -> None:
    await apply(pool, EXAMPLE.read_text() + customer(7, "10.0.0.7") + phone(7, 1))
    result = pbxfront(database_url, "frontend", "plan", "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    maps = {m["external_port"]: m for m in plan["nat_maps"]}
    assert (maps[9007]["address"], maps[9007]["internal_port"]) == ("10.0.0.7", 636)
    assert maps[9001]["customer"] == "Kuenkel00001"
    assert {b["password"] for b in plan["session_borders"]} == {"***"}
    assert "change-me-registration" not in result.stdout
    assert plan["budget"]["customers"] == {"used": 2, "limit": 135}

    shown = pbxfront(database_url, "frontend", "plan", "--show-secrets")
    assert shown.returncode == 0, shown.stderr
    assert "9007      10.0.0.7:636" in shown.stdout
    assert REGISTRATION_PASSWORD in shown.stdout
    assert "change-me-registration" in shown.stdout

    assert pbxfront(database_url, "frontend", "check").returncode == 0

    # A second customer takes Kunde00007's LDAPS map: check and scripts check name it.
    await apply(
        pool,
        EXAMPLE.read_text()
        + customer(7, "10.0.0.7")
        + phone(7, 1)
        + customer(8, "10.0.0.8", extra='h-ldapport = "9007"\n'),
    )
    check = pbxfront(database_url, "frontend", "check")
    assert check.returncode == 1
    assert "tcp port 9007 is mapped more than once" in check.stdout
    assert "Kunde00007" in check.stdout
    assert "Kunde00008" in check.stdout
    scripts = pbxfront(database_url, "scripts", "check")
    assert scripts.returncode == 1
    assert "frontend sb1: tcp port 9007" in scripts.stdout

    unknown = pbxfront(database_url, "frontend", "plan", "--frontend", "sb9")
    assert unknown.returncode == 2
    assert "no Frontend sb9" in unknown.stderr


ADMIN_PASSWORD = "correct horse battery"


def basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
async def api(pool: asyncpg.Pool, session_pki: SessionPki) -> AsyncIterator[tuple[str, Any]]:
    accounts = AccountRepository(pool)
    await accounts.add("admin", frozenset({Role.ADMIN}), ADMIN_PASSWORD)
    await accounts.add("sender", frozenset({Role.EVENT_SENDER}), ADMIN_PASSWORD)
    await apply(pool, EXAMPLE.read_text() + customer(7, "10.0.0.7") + phone(7, 1))
    async with admin_listener(pool, session_pki) as api_client:
        yield api_client


async def test_api_plan_json_csv_and_roles(api: tuple[str, Any]) -> None:
    base, session = api
    url = f"{base}/api/v1/frontends/sb1/plan"
    admin = basic("admin", ADMIN_PASSWORD)
    async with session.get(url) as response:
        assert response.status == 401
    async with session.get(url, headers=basic("sender", ADMIN_PASSWORD)) as response:
        assert response.status == 403
    async with session.get(url, headers=admin) as response:
        assert response.status == 200
        text = await response.text()
        plan = json.loads(text)
    assert REGISTRATION_PASSWORD not in text
    assert "change-me-registration" not in text
    assert {m["external_port"]: m["address"] for m in plan["nat_maps"]}[9007] == "10.0.0.7"
    assert plan["violations"] == []
    for params, accept in (({"format": "csv"}, "*/*"), ({}, "text/csv")):
        async with session.get(url, params=params, headers={**admin, "Accept": accept}) as response:
            assert response.status == 200
            assert response.content_type == "text/csv"
            rows = list(csv.DictReader(io.StringIO(await response.text())))
        assert {"9007", "9001", "8001", "8007"} <= {r["external_port"] for r in rows}
        assert {r["password"] for r in rows if r["kind"] == "sessionborder"} == {"***"}
    async with session.get(url, headers=admin, params={"format": "xml"}) as response:
        assert response.status == 400
        assert "format" in (await response.json())["error"]
    async with session.get(f"{base}/api/v1/frontends/sb9/plan", headers=admin) as response:
        assert response.status == 404
    async with session.get(f"{base}/api/v1/frontends/sb1/check", headers=admin) as response:
        assert (await response.json())["ok"] is True
    findings_url = f"{base}/api/v1/frontends/sb1/findings"
    async with session.get(findings_url, headers=admin) as response:
        assert (await response.json())["findings"] == []
    async with session.get(findings_url, headers=admin, params={"device": "xyz"}) as response:
        assert response.status == 400
        assert (await response.json())["error"].startswith("device:")
    async with session.get(f"{base}/api/v1/frontends/sb9/findings", headers=admin) as response:
        assert response.status == 404
    async with session.get(f"{base}/api/v1/openapi.json") as response:
        paths = (await response.json())["paths"]
    assert "/api/v1/frontends/{frontend_id}/plan" in paths
    assert "403" in paths["/api/v1/frontends/{frontend_id}/plan"]["get"]["responses"]


# --- backups -----------------------------------------------------------------------------------

FRONTEND_MAC = "009033fe0001"
PBX_MAC = "009033a85a38"
# The example's three phones as SessionBorder objects, in the form frontend.txt sends ([NC]).
SESSION_BORDERS = "".join(
    f"mod cmd FLASHDIR0 add-item 101 (cn=Kuenkel00001-00{n})(h323={hardware_id})(node=root)"
    f"(pbx=<sessionborder int-name='Kuenkel00001-00{n}' int-pbx-pwd='true'/>)\r\n"
    for n, hardware_id in ((1, "IP232-01-02-03"), (2, "IP222-01-02-04"), (3, "IP112-01-02-05"))
)
GOOD_FRONTEND = (
    "config change H323 /gk-id sb1 /ras-port-alt 1819\r\nconfig change PBX0 /nopwd 0\r\n"
    + SESSION_BORDERS
)
GOOD_PBX = (
    "config change NTP0 /server 10.0.0.10\r\n"
    "config add PBX0 /ldap-default-addr 10.0.0.20 /ldap-default-port 714\r\n"
)


async def store(pool: asyncpg.Pool, mac: str, hardware_id: str, text: str) -> None:
    normalizer = Normalizer.build()
    content = text.encode()
    upload = Upload(
        InventoryDevice(mac, hardware_id, "IPVA", "Kuenkel00001", False),
        content,
        prepare(content, normalizer),
        "backup.txt",
        "certificate",
        None,
        None,
    )
    async with pool.acquire() as connection:
        await IntakeRepository(connection).store_if_changed(
            upload, datetime.now(UTC), ContentCpu(normalizer)
        )


async def findings(pool: asyncpg.Pool, settings: FrontendPlanSettings) -> list[str]:
    async with pool.acquire() as connection:
        repository = FrontendRepository(connection)
        inventory = await repository.inventory()
        plan = build_plan(inventory, "sb1", settings)
        backups = await repository.latest_backups([FRONTEND_MAC, PBX_MAC])
        builds = await repository.reported_builds([FRONTEND_MAC, PBX_MAC])
    return [f"{f.code}: {f}" for f in check_backups(plan, inventory, backups, settings, builds)]


async def test_backups_checked_against_the_plan(pool: asyncpg.Pool, database_url: str) -> None:
    text = EXAMPLE.read_text().replace(
        "[frontends.variables]\n", f'[frontends.variables]\nfrontend-mac = "{FRONTEND_MAC}"\n'
    )
    await apply(pool, text)
    settings = dataclasses.replace(
        SETTINGS,
        shared_maps=(*SETTINGS.shared_maps, "metadir tcp 7714 10.0.0.20 714"),
        directory_map="metadir",
        regs_without_password_option="nopwd",
    )
    # Nothing stored yet: both devices are reported as unchecked.
    assert [f.split(":")[0] for f in await findings(pool, settings)] == ["no-backup"] * 2
    await store(pool, FRONTEND_MAC, "IPVA-fe-00-01", GOOD_FRONTEND)
    await store(pool, PBX_MAC, "IPVA-a8-5a-38", GOOD_PBX)
    assert await findings(pool, settings) == []
    # Drift: the Frontend lost its alternate RAS port and allows registrations without
    # password; the PBX points myPBX at another directory and takes time from elsewhere.
    await store(
        pool, FRONTEND_MAC, "IPVA-fe-00-01", "config change PBX0 /nopwd 5\r\n" + SESSION_BORDERS
    )
    await store(
        pool,
        PBX_MAC,
        "IPVA-a8-5a-38",
        "config change NTP0 /server 192.0.2.99\r\n"
        "config add PBX0 /ldap-default-addr 10.0.0.21 /ldap-default-port 714\r\n",
    )
    found = await findings(pool, settings)
    assert [f.split(":")[0] for f in found] == [
        "ras-port-alt",
        "registrations-without-password",
        "ldap-default",
        "ntp",
    ]
    assert any("/ldap-default-addr is 10.0.0.21, the plan wants 10.0.0.20" in f for f in found)
    # Not config text: stored as ever, reported as unchecked.
    await store(pool, PBX_MAC, "IPVA-a8-5a-38", "\x00\x01binary")
    assert any(f.startswith("unchecked:") for f in await findings(pool, settings))

    result = pbxfront(database_url, "frontend", "check", "--backups")
    assert result.returncode == 1
    assert "backup: frontend sb1 gateway 009033fe0001" in result.stdout
    assert "/ras-port-alt" in result.stdout

    # Recorded once per backup version: a drift alert, then an event, each exactly once.
    first = pbxfront(database_url, "frontend", "check", "--backups", "--record")
    assert first.returncode == 1
    assert "recorded 2 new finding(s)" in first.stderr
    again = pbxfront(database_url, "frontend", "check", "--backups", "--record")
    assert "recorded 0 new finding(s)" in again.stderr
    async with pool.acquire() as connection:
        alerts = await connection.fetch(
            "SELECT mac, message FROM backup_alerts WHERE kind = 'drift' ORDER BY id"
        )
        assert [a["mac"] for a in alerts] == [FRONTEND_MAC, PBX_MAC]
        assert "/ras-port-alt" in alerts[0]["message"]
        assert "[unchecked]" in alerts[1]["message"]
        events = EventRepository(connection)
        await events.import_backup_alerts(datetime.now(UTC))
        await events.import_backup_alerts(datetime.now(UTC))
        codes = await connection.fetch(
            "SELECT severity, device_mac FROM events WHERE code = 'backup-drift' ORDER BY id"
        )
    assert [(row["device_mac"], row["severity"]) for row in codes] == [
        (FRONTEND_MAC, "warning"),
        (PBX_MAC, "warning"),
    ]
    listed = pbxfront(database_url, "frontend", "findings", "--json", "--device", PBX_MAC)
    assert listed.returncode == 0, listed.stderr
    assert [f["code"] for f in json.loads(listed.stdout)] == ["unchecked"]


# --- golden files ------------------------------------------------------------------------------
# Regenerate with PBXFRONT_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_frontend.py

GOLDEN = Path(__file__).resolve().parent / "golden" / "frontend"


def golden_plan() -> FrontendPlan:
    """The example inventory plus the seed's own example customer PBX 10.0.0.7."""
    example = parse_inventory(
        EXAMPLE.read_text() + customer(7, "10.0.0.7") + phone(7, 1), str(EXAMPLE)
    )
    return build_plan(example, "sb1", SETTINGS)


@pytest.mark.parametrize("form", ["txt", "json", "csv"])
def test_plan_matches_golden_files(form: str) -> None:
    plan = golden_plan()
    if form == "txt":
        text = plan_text(plan)
    elif form == "json":
        text = json.dumps(plan_json(plan), indent=2) + "\n"
    else:
        text = plan_csv(plan).replace("\r\n", "\n")
    assert_golden(GOLDEN / f"plan-sb1.{form}", text)


# --- template data -----------------------------------------------------------------------------

TEMPLATE = """\
{% if frontend_plan is defined %}config add H323 /ras-port-alt {{ frontend_plan.ras_port_alt }}
{% for d in frontend_plan.devices %}# SessionBorder [NC] {{ d.long_name }} {{ d.external_name }} \
{{ d.password }} pbx-pwd={{ d.pbx_password }}
{% endfor %}{% endif %}{% if config_template is defined %}\
<loc cc='{{ config_template.loc.cc }}' ac='{{ config_template.loc.ac }}' \
ntp='{{ config_template.loc.ntp }}' itp='{{ config_template.loc.itp }}' \
pbx='{{ config_template.loc.pbx }}'/><ldap id='2' tls='1' port='{{ nat.ldaps }}'/>
config add PBX0 /ldap-default-addr {{ ldap_default.addr }} /ldap-default-port \
{{ ldap_default.port }}
{% endif %}"""


def test_context_additions_render_through_the_script_renderer(tmp_path: Path) -> None:
    from services.update.provisioning import template_context
    from services.update.scripts import Secret

    (tmp_path / "update.txt").write_text(TEMPLATE)
    store = ScriptStore(tmp_path)
    store.refresh()
    text = EXAMPLE.read_text().replace(
        "[frontends.variables]\n", f'[frontends.variables]\nfrontend-mac = "{FRONTEND_MAC}"\n'
    ) + (
        f'[[devices]]\nmac = "{FRONTEND_MAC}"\ntype = "IPVA"\nclass = "gateway"\n'
        'customer = "Kuenkel00001"\nhardware_id = "IPVA-fe-00-01"\n'
    )
    example = parse_inventory(text, "test.toml")
    settings = dataclasses.replace(
        SETTINGS,
        shared_maps=("metadir tcp 7714 10.0.0.20 714",),
        directory_map="metadir",
    )
    cache = PlanCache(settings)
    plan = cache.plan(1, example, "sb1")
    assert cache.plan(1, example, "sb1") is plan
    snapshot = Snapshot.build(1, example)

    def render(mac: str, proof: Proof) -> str:
        device = snapshot.by_mac[mac]
        identity = DeviceIdentity(proof, device.mac, device.hardware_id, device.device_type)
        context, variables = template_context(
            snapshot, device, identity, "update", Urls("https://192.0.2.10"), 15
        )
        allowed = identity.proven

        def secret(name: str, value: str) -> object:
            return Secret(name, value, allowed)

        context.update(context_additions(plan, example, device, secret))
        return store.render("update.txt", context, variables)

    gateway = render(FRONTEND_MAC, Proof.PROVEN)
    assert gateway.splitlines()[0] == "config add H323 /ras-port-alt 1819"
    assert (
        "# SessionBorder [NC] Kuenkel00001-001 IP232-01-02-03 change-me-registration "
        "pbx-pwd=True" in gateway
    )
    with pytest.raises(SecretRequired):
        render(FRONTEND_MAC, Proof.CLAIMED)
    pbx = render("009033a85a38", Proof.PROVEN)
    assert pbx == (
        "<loc cc='49' ac='7031' ntp='0' itp='00' pbx='73009'/><ldap id='2' tls='1' port='9001'/>\n"
        "config add PBX0 /ldap-default-addr 10.0.0.20 /ldap-default-port 714\n"
    )
    # A phone gets its customer's maps only.
    phone_device = snapshot.by_mac["009033010203"]
    assert context_additions(plan, example, phone_device, lambda n, v: v) == {
        "nat": {"https": 8001, "ldaps": 9001}
    }


# --- the default script tree with the plan -----------------------------------------------------

FRONTEND_HARDWARE_ID = "IPVA-fe-00-01"
# The example inventory with its Frontend gateway (an IPVA of class gateway) in it.
GATEWAY_INVENTORY = EXAMPLE.read_text().replace(
    "[frontends.variables]\n", f'[frontends.variables]\nfrontend-mac = "{FRONTEND_MAC}"\n'
) + (
    f'[[devices]]\nmac = "{FRONTEND_MAC}"\ntype = "IPVA"\nclass = "gateway"\n'
    f'customer = "Kuenkel00001"\nhardware_id = "{FRONTEND_HARDWARE_ID}"\nname = "Frontend sb1"\n'
)
# With the seed's Metadir as the shared directory map.
DIRECTORY = dataclasses.replace(
    SETTINGS,
    shared_maps=(*SETTINGS.shared_maps, "metadir tcp 7714 10.0.0.20 714"),
    directory_map="metadir",
)
PHONE_MAC = "009033010203"


def rendered(
    text: str,
    mac: str,
    phase: str = "update",
    *,
    settings: FrontendPlanSettings = DIRECTORY,
    proof: Proof = Proof.PROVEN,
) -> str:
    """What the shipped staging_scripts/ send ``mac``: the update service's pipeline with the
    plan as template data, composed as ``pbxfront serve`` composes it."""
    inventory = parse_inventory(text, "test.toml")
    snapshot = Snapshot.build(1, inventory)
    device = snapshot.by_mac[mac]
    scripts = ScriptStore(ROOT / "staging_scripts")
    scripts.refresh()
    assert not scripts.problems
    identity = DeviceIdentity(proof, device.mac, device.hardware_id, device.device_type)
    context = look_up(
        snapshot,
        device,
        identity,
        PollArguments(),
        phase,
        Urls("https://192.0.2.10"),
        Lifecycle(),
        additions=frontend_plan_additions(Settings(frontend_plan=settings)),
    )
    reply = reply_for(scripts, context, lambda build, name: False)
    assert reply.status == 200
    return reply.text.replace("\r\n", "\n")


@pytest.mark.parametrize(
    ("mac", "hardware_id"),
    [(FRONTEND_MAC, FRONTEND_HARDWARE_ID), (PBX_MAC, "IPVA-a8-5a-38")],
    ids=["gateway", "pbx"],
)
def test_frontend_and_pbx_scripts_match_golden_files(mac: str, hardware_id: str) -> None:
    text = rendered(GATEWAY_INVENTORY, mac)
    assert_golden(GOLDEN / f"{hardware_id}.update.txt", text)


def test_the_default_tree_renders_the_plan() -> None:
    gateway = rendered(GATEWAY_INVENTORY, FRONTEND_MAC).splitlines()
    assert "config add H323 /ras-port-alt 1819" in gateway
    (nat,) = [line for line in gateway if line.startswith("config change NAT0 ")]
    assert nat.split(" /map ")[1:] == [
        "tcp,8001,10.0.1.1,443",
        "tcp,9001,10.0.1.1,636",
        "udp,7465,10.0.0.3,464",
        "udp,7464,10.0.0.2,464",
        "udp,7089,10.0.0.3,88",
        "udp,7088,10.0.0.2,88",
        "tcp,7714,10.0.0.20,714",
    ]
    borders = [line for line in gateway if line.startswith("mod cmd FLASHDIR0 add-item ")]
    # What the backup check reads back is what the plan says (the gateway itself is no CPE).
    assert session_borders(borders) == {
        "Kuenkel00001-001": "IP232-01-02-03",
        "Kuenkel00001-002": "IP222-01-02-04",
        "Kuenkel00001-003": "IP112-01-02-05",
    }
    for line in borders:
        assert "int-addr='10.0.1.1' int-pbx-pwd='true' pwd='change-me-registration'" in line
    # Registration passwords go only to a gateway that proved who it is.
    with pytest.raises(SecretRequired):
        rendered(GATEWAY_INVENTORY, FRONTEND_MAC, proof=Proof.CLAIMED)

    pbx = rendered(GATEWAY_INVENTORY, PBX_MAC)
    assert (
        "(pbx=<config critical='true' store-phone-config='true' access='@kuenkel.example'><phone>"
        "<loc cc='49' ac='7031' ntp='0' itp='00' pbx='73009'/><ldap id='2' tls='1' port='9001'/>"
        "<ldap id='3' enable='1' tls='1' mode='basic' addr='192.0.2.10' port='7714' "
        "dn='Kuenkel00001' base='dc=Kuenkel00001' attr='sn,givenName,company' "
        "phone='telephoneNumber:D,mobile:M,:@'/></phone></config>)" in pbx
    )
    assert "config add PBX0 /ldap-default-addr 10.0.0.20 /ldap-default-port 714" in pbx
    assert "change-me-registration" not in pbx
    # Without a directory map: no ldap id 3, no ldap-default line.
    plain = rendered(GATEWAY_INVENTORY, PBX_MAC, settings=SETTINGS)
    assert "<ldap id='2' tls='1' port='9001'/></phone>" in plain
    assert "ldap-default" not in plain

    # A phone gets none of it, only its alternate RAS port in staging.
    phone_update = rendered(GATEWAY_INVENTORY, PHONE_MAC)
    assert "FLASHDIR0" not in phone_update
    assert "ras-port" not in phone_update
    assert "config add H323 /ras-port 1819" in rendered(GATEWAY_INVENTORY, PHONE_MAC, "staging")


def test_each_nc_part_is_switched_off_by_a_variable() -> None:
    off = GATEWAY_INVENTORY.replace(
        "[frontends.variables]\n",
        '[frontends.variables]\nfe-ras-port-alt = "off"\nfe-nat-maps = "off"\n'
        'fe-sessionborders = "off"\n',
    ).replace(
        "\n[customers.variables]\n",
        '\n[customers.variables]\npbx-config-template = "off"\npbx-ldap-default = "off"\n',
    )
    gateway = rendered(off, FRONTEND_MAC)
    assert "ras-port-alt" not in gateway
    assert "NAT0" not in gateway
    assert "FLASHDIR0" not in gateway
    pbx = rendered(off, PBX_MAC)
    assert "FLASHDIR0" not in pbx
    assert "ldap-default" not in pbx
    # With nothing secret left, a claimed gateway gets its script.
    assert "config add UP1 /no-dhcp" in rendered(off, FRONTEND_MAC, proof=Proof.CLAIMED)
    phones_off = GATEWAY_INVENTORY.replace('h-rasport = "1819"', 'h-rasport = "off"')
    assert "ras-port" not in rendered(phones_off, PHONE_MAC, "staging")
    # The directory login in the template only when the provider asks for it (seed: critical).
    with_password = GATEWAY_INVENTORY.replace(
        "\n[customers.variables]\n", '\n[customers.variables]\npbx-template-ldap-password = "on"\n'
    )
    assert "dn='Kuenkel00001' pw='change-me-registration' base=" in rendered(with_password, PBX_MAC)
    with pytest.raises(SecretRequired):
        rendered(with_password, PBX_MAC, proof=Proof.CLAIMED)


# --- backups against the plan: SessionBorder objects, firmware, trust list ---------------------

TRUST_ROOT = "3082010a0282010100c0ffee" * 4


def checked_inventory(*extra: str) -> str:
    """The gateway inventory with a firmware target for IPVAs and a trust list."""
    variables = (
        f'[frontends.variables]\ntrust-root = "{TRUST_ROOT}"\n'
        'trust-command = "mod cmd X509 add-trusted"\n' + "".join(extra)
    )
    return GATEWAY_INVENTORY.replace("[frontends.variables]\n", variables) + (
        '\n[device_types.IPVA.variables]\nfw-prot = "135400"\n'
    )


async def record_poll(pool: asyncpg.Pool, mac: str, prot: str) -> None:
    await UpdateRepository(pool).record_polls(
        [
            PollRecord(
                mac,
                "10.0.0.50",
                Proof.PROVEN.value,
                "update",
                None,
                prot,
                None,
                None,
                None,
                None,
                True,
            )
        ],
        [1],
    )


async def test_backups_checked_for_session_borders_firmware_and_trust_list(
    pool: asyncpg.Pool, database_url: str
) -> None:
    text = checked_inventory()
    await apply(pool, text)
    await record_poll(pool, FRONTEND_MAC, "135400")
    await record_poll(pool, PBX_MAC, "135312")
    # The gateway keeps everything its scripts sent (staging with the trust list, update with
    # the plan): nothing is wrong with it.
    gateway = rendered(text, FRONTEND_MAC, "staging", settings=SETTINGS) + rendered(
        text, FRONTEND_MAC, settings=SETTINGS
    )
    assert f"mod cmd X509 add-trusted {TRUST_ROOT}" in gateway
    await store(pool, FRONTEND_MAC, FRONTEND_HARDWARE_ID, gateway)
    # The PBX never got the trust list and runs an older build.
    pbx = "config change NTP0 /server 10.0.0.10\n" + rendered(text, PBX_MAC, settings=SETTINGS)
    await store(pool, PBX_MAC, "IPVA-a8-5a-38", pbx)
    found = await findings(pool, SETTINGS)
    assert [f.split(":")[0] for f in found] == ["firmware", "trust-list"]
    assert "runs firmware build 135312 (PROT of its last poll), the target is 135400" in found[0]
    assert "customer Kuenkel00001 PBX IPVA-a8-5a-38" in found[1]

    # The gateway lost one object, has one nobody planned and one registering under a wrong
    # name; the hex DER as a device may print it (upper case, colons) still counts.
    lines = gateway.replace(
        TRUST_ROOT, ":".join(TRUST_ROOT.upper()[i : i + 2] for i in range(0, len(TRUST_ROOT), 2))
    )
    lines = "\n".join(line for line in lines.splitlines() if "(cn=Kuenkel00001-003)" not in line)
    lines = lines.replace("(h323=IP222-01-02-04)", "(h323=IP222-ff-ff-ff)")
    lines += (
        "\nmod cmd FLASHDIR0 add-item 101 (cn=Kuenkel00009-001)(h323=IP232-09-09-09)(node=root)"
        "(pbx=<sessionborder int-name='Kuenkel00009-001'/>)\n"
    )
    await store(pool, FRONTEND_MAC, FRONTEND_HARDWARE_ID, lines)
    found = await findings(pool, SETTINGS)
    assert [f.split(":")[0] for f in found] == [
        "sessionborder-missing",
        "sessionborder-extra",
        "sessionborder-external-name",
        "firmware",
        "trust-list",
    ]
    assert "1 SessionBorder object(s) missing: Kuenkel00001-003" in found[0]
    assert "not in the plan: Kuenkel00009-001" in found[1]
    assert "Kuenkel00001-002 registers as IP222-ff-ff-ff, not IP222-01-02-04" in found[2]

    # Recorded, and shown per device in `devices list` (table and JSON).
    result = pbxfront(database_url, "frontend", "check", "--backups", "--record")
    assert result.returncode == 1
    assert "recorded 5 new finding(s)" in result.stderr
    listing = pbxfront(database_url, "devices", "list")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    column = header.index("FINDINGS")
    by_mac = {row.split()[0]: row[column:].split()[0] for row in rows}
    assert by_mac[PBX_MAC] == "firmware,trust-list"
    assert by_mac[FRONTEND_MAC] == (
        "sessionborder-external-name,sessionborder-extra,sessionborder-missing"
    )
    assert by_mac[PHONE_MAC] == "-"
    as_json = pbxfront(database_url, "devices", "list", "--json")
    statuses = {s["mac"]: s for s in json.loads(as_json.stdout)}
    assert statuses[PBX_MAC]["findings"] == ["firmware", "trust-list"]

    # A provider that configures SessionBorder objects some other way switches the check off
    # with the template part.
    await apply(pool, checked_inventory('fe-sessionborders = "off"\n'))
    assert [f.split(":")[0] for f in await findings(pool, SETTINGS)] == ["firmware", "trust-list"]
    # Restaged and upgraded, the PBX is as planned.
    await record_poll(pool, PBX_MAC, "135400")
    await store(pool, PBX_MAC, "IPVA-a8-5a-38", pbx + f"mod cmd X509 add-trusted {TRUST_ROOT}\n")
    assert await findings(pool, SETTINGS) == []


# --- the Frontend gateway's lifecycle with the plan in its script ------------------------------


async def test_the_frontend_gateway_converges_with_its_plan(
    frontend: LifecycleFrontend, pool: asyncpg.Pool
) -> None:
    """The device model walks the Frontend gateway factory-new -> redirect -> staging -> update
    against a real node, the plan's lines in its script: in sync like every device, and a new
    CPE makes it run its script once more, with no reset loop."""
    await apply(pool, GATEWAY_INVENTORY)

    def certificate() -> tuple[Path, Path]:
        ca = pki.load_issued(frontend.pki.ca, frontend.pki.ca.parent / "ca.key")
        paths = (
            frontend.scripts.parent / f"{FRONTEND_HARDWARE_ID}.pem",
            frontend.scripts.parent / f"{FRONTEND_HARDWARE_ID}.key",
        )
        pki.write_pem_files(
            pki.issue_certificate(ca, common_name=FRONTEND_HARDWARE_ID, server=False), *paths
        )
        return paths

    paths = await asyncio.to_thread(certificate)
    await frontend.register(FRONTEND_MAC)
    device = dataclasses.replace(
        frontend.factory_new(),
        mac=FRONTEND_MAC,
        hardware_id=FRONTEND_HARDWARE_ID,
        device_type="IPVA",
        certificate=paths,
    )
    redirected = await device.poll()
    assert "staging.txt" in device.url, redirected.text

    async def node_knows_the_gateway() -> bool:
        # A probe (a copy of the device) until the node's snapshot has the applied inventory.
        outcome = await dataclasses.replace(device).poll()
        return f"{FRONTEND_HARDWARE_ID} ({FRONTEND_MAC}), customer Kuenkel00001" in outcome.text

    await until(node_knows_the_gateway, timeout=10)
    first_update: list[str] = []
    for _ in range(POLLS_TO_CONVERGE):
        outcome = await device.poll()
        assert outcome.status == 200, outcome.text
        if "update.txt for" in outcome.text and not first_update:
            first_update = outcome.commands
        if device.converged(INTERVAL, frontend.update_url) and outcome.changes == []:
            break
    assert device.converged(INTERVAL, frontend.update_url), device
    assert "config add H323 /ras-port-alt 1819" in first_update
    assert device.settings["H323 /ras-port-alt"] == "1819"
    assert device.settings["NAT0 /map"].startswith("tcp,8001,10.0.1.1,443 /map tcp,9001,")
    assert sum(c.startswith("mod cmd FLASHDIR0 add-item ") for c in first_update) == 3

    # A new phone: its SessionBorder object reaches the gateway with the next poll, once.
    await apply(
        pool,
        GATEWAY_INVENTORY
        + '[[devices]]\nmac = "00-90-33-01-02-06"\ntype = "IP232"\nclass = "phone"\n'
        'customer = "Kuenkel00001"\ncpe_id = "Kuenkel00001-004"\n',
    )

    async def new_object_sent() -> bool:
        outcome = await device.poll()
        return any("(cn=Kuenkel00001-004)" in c for c in outcome.commands)

    await until(new_object_sent, timeout=10)
    again = await device.poll()
    assert again.changes == [], again.text
    assert device.converged(INTERVAL, frontend.update_url)
    device.assert_no_reset_loop()
