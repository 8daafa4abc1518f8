"""Inventory: the file format, declarative apply, the repository and variable resolution.

Everything that touches the database runs against the real PostgreSQL of conftest's ``pool``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.core.inventory import (
    NOTIFY_CHANNEL,
    Customer,
    Device,
    Frontend,
    Inventory,
    InventoryError,
    InventoryRepository,
    Variable,
    apply_inventory,
    diff_inventory,
    inventory_version,
    load_inventory,
    parse_inventory,
    read_inventory_file,
    render_inventory,
    resolve_variables,
    validate_inventory,
)
from services.core.inventory.variables import LayeredVariables
from tests.conftest import until

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "inventory.example.toml"

IP232 = "009033010203"
IP222 = "009033010204"
IP112 = "009033010205"
IPVA = "009033a85a38"

# A small valid inventory the bad-input cases below break one thing at a time.
BASE = """
[[frontends]]
id = "sb1"
public_address = "192.0.2.10"
internal_address = "10.0.0.10"
index = 1

[[customers]]
id = "Kuenkel00001"
frontend = "sb1"
name = "Kuenkel GmbH"
system_name = "kuenkel.example"
country_code = "49"
area_code = "7031"
"""


def device_entry(mac: str = "00-90-33-01-02-03", **fields: str) -> str:
    values = {"mac": mac, "type": "IP232", "class": "phone", "customer": "Kuenkel00001"}
    values.update(fields)
    body = "\n".join(f'{key} = "{value}"' for key, value in values.items())
    return f"\n[[devices]]\n{body}\n"


@pytest.fixture
def example() -> Inventory:
    return read_inventory_file(EXAMPLE)


async def test_example_file_parses(example: Inventory) -> None:
    assert [f.id for f in example.frontends] == ["sb1"]
    assert [c.id for c in example.customers] == ["Kuenkel00001"]
    customer = example.customers[0]
    assert (customer.country_code, customer.area_code, customer.subscriber_number) == (
        "49",
        "7031",
        "73009",
    )
    assert not customer.allow_claimed_secrets
    # MACs in three notations, normalised; hardware ids derived or given; types upper case.
    assert [(d.mac, d.hardware_id, d.device_type, d.device_class) for d in example.devices] == [
        (IP232, "IP232-01-02-03", "IP232", "phone"),
        (IP222, "IP222-01-02-04", "IP222", "phone"),
        (IP112, "IP112-01-02-05", "IP112", "phone"),
        (IPVA, "IPVA-a8-5a-38", "IPVA", "pbx"),
    ]
    variables = {variable.key: variable for variable in example.variables}
    assert variables["global/h-domain"].value == "hoster.tld"
    assert variables["global/pbx-password"].secret
    assert variables["frontend/sb1/h-sbcindex"].value == "1"
    assert variables["device_class/phone/h-rasport"].value == "1819"
    assert variables[f"device/{IPVA}/h-ntp"].value == "10.0.0.10"
    assert not variables["global/h-domain"].secret


async def test_apply_lists_changes_then_nothing(pool: asyncpg.Pool, example: Inventory) -> None:
    async with pool.acquire() as connection:
        assert await inventory_version(connection) == 0
        changes = await apply_inventory(connection, example)
        lines = [str(change) for change in changes]
        assert lines[:6] == [
            "+ frontend sb1",
            "+ customer Kuenkel00001",
            f"+ device {IP232}",
            f"+ device {IP222}",
            f"+ device {IP112}",
            f"+ device {IPVA}",
        ]
        assert "+ variable global/h-domain" in lines
        assert f"+ variable device/{IPVA}/h-ntp" in lines
        assert len(changes) == 6 + len(example.variables)
        # One bump per transaction, not per row.
        assert await inventory_version(connection) == 1
        assert await load_inventory(connection) == example

        assert await apply_inventory(connection, example) == []
        assert await inventory_version(connection) == 1


async def test_changes_name_fields(pool: asyncpg.Pool, example: Inventory) -> None:
    changed = dataclasses.replace(
        example,
        customers=(
            dataclasses.replace(
                example.customers[0], area_code="7032", registration_password="new-secret-1"
            ),
        ),
        devices=tuple(
            dataclasses.replace(device, device_type="IP240", hardware_id="")
            if device.mac == IP232
            else device
            for device in example.devices
        ),
    )
    async with pool.acquire() as connection:
        await apply_inventory(connection, example)
        changes = await apply_inventory(connection, changed)
        assert [str(change) for change in changes] == [
            "~ customer Kuenkel00001 (area_code, registration_password)",
            f"~ device {IP232} (type, hardware_id)",
        ]
        device = await InventoryRepository(connection).get_device(IP232)
    assert device is not None
    assert device.hardware_id == "IP240-01-02-03"


async def test_export_parses_to_the_same_inventory(pool: asyncpg.Pool, example: Inventory) -> None:
    async with pool.acquire() as connection:
        await apply_inventory(connection, example)
        exported = render_inventory(await load_inventory(connection))
    assert parse_inventory(exported, "export.toml") == example


def test_render_escapes_strings() -> None:
    tricky = Inventory(
        frontends=(Frontend("sb1", "fe.hoster.tld", "10.0.0.10", 1),),
        customers=(
            Customer(
                "Kuenkel00001",
                "sb1",
                'Küenkel "Nord" \\ # [x]',
                "kuenkel.example",
                "49",
                "",
                national_prefix="",
            ),
        ),
        devices=(Device(IP232, "IP232", "phone", "Kuenkel00001", name="Büro 'A'"),),
        variables=(
            Variable("global", "", "h.dotted", 'say "hi" \\ ünïcode'),
            Variable("device_type", "IP232", "h-x", "#(h-domain)", secret=True),
        ),
    )
    text = render_inventory(tricky)
    assert '"h.dotted" = ' in text
    assert parse_inventory(text, "tricky.toml") == validate_inventory(tricky)


async def test_dry_run_changes_nothing(pool: asyncpg.Pool, example: Inventory) -> None:
    async with pool.acquire() as connection:
        planned = await apply_inventory(connection, example, dry_run=True)
        assert len(planned) == 6 + len(example.variables)
        assert await load_inventory(connection) == Inventory()
        assert await inventory_version(connection) == 0
        assert await apply_inventory(connection, example) == planned


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            BASE + device_entry("00-90-33-01-02-03") + device_entry("009033010203"),
            "inventory.toml: devices[1] (mac 009033010203): mac: "
            "duplicate of devices[0] (mac 00-90-33-01-02-03)",
            id="duplicate-mac-two-notations",
        ),
        pytest.param(
            BASE + 'colour = "red"\n',
            "inventory.toml: customers[0] (id Kuenkel00001): colour: unknown key (known here: "
            "id, frontend, name, system_name, country_code, area_code, international_prefix, "
            "national_prefix, subscriber_number, registration_password, login_password, "
            "allow_claimed_secrets, allow_anonymous_backup, allow_anonymous_contacts, variables)",
            id="unknown-key",
        ),
        pytest.param(
            "[frontend]\nid = 'sb1'\n",
            "inventory.toml: frontend: unknown key (known here: variables, frontends, customers, "
            "devices, device_classes, device_types, scope)",
            id="unknown-top-level-key",
        ),
        pytest.param(
            BASE + device_entry(customer="Nobody00001"),
            "inventory.toml: devices[0] (mac 00-90-33-01-02-03): customer: "
            "no customer 'Nobody00001' in this inventory",
            id="unknown-customer",
        ),
        pytest.param(
            BASE.replace('frontend = "sb1"', 'frontend = "sb9"'),
            "inventory.toml: customers[0] (id Kuenkel00001): frontend: "
            "no frontend 'sb9' in this inventory",
            id="unknown-frontend",
        ),
        pytest.param(
            BASE + device_entry(**{"class": "fax"}),
            "inventory.toml: devices[0] (mac 00-90-33-01-02-03): class: "
            "must be one of phone, gateway, pbx, not 'fax'",
            id="bad-class",
        ),
        pytest.param(
            BASE + device_entry(hardware_id="IP232-01-02-04"),
            "inventory.toml: devices[0] (mac 00-90-33-01-02-03): hardware_id: IP232-01-02-04 "
            "does not belong to mac 009033010203 (a hardware id ends in the MAC's last three "
            "bytes: 01-02-03)",
            id="hardware-id-mac-mismatch",
        ),
        pytest.param(
            BASE.replace('id = "Kuenkel00001"', 'id = "../x"'),
            "inventory.toml: customers[0] (id ../x): id: must be a safe id (letters, digits, "
            "'.', '_', '-', starting with a letter or digit; at most 64), not '../x'",
            id="customer-id-traversal",
        ),
        pytest.param(
            BASE + device_entry(mac="00-90-33-01-02-0g"),
            "inventory.toml: devices[0] (mac 00-90-33-01-02-0g): mac: "
            "not a MAC address: '00-90-33-01-02-0g'",
            id="bad-mac",
        ),
        pytest.param(
            BASE.replace("index = 1", 'index = "1"'),
            "inventory.toml: frontends[0] (id sb1): index: must be an integer, not string '1'",
            id="wrong-type-integer",
        ),
        pytest.param(
            BASE.replace('country_code = "49"', "country_code = 49"),
            "inventory.toml: customers[0] (id Kuenkel00001): country_code: "
            "must be a string, not integer 49",
            id="wrong-type-string",
        ),
        pytest.param(
            BASE + "\n[variables]\nh-poll = 15\n",
            "inventory.toml: variables: h-poll: must be a string, not integer 15",
            id="wrong-type-variable",
        ),
        pytest.param(
            BASE + '\n[device_types.IP232.variables]\nh-x = { value = "1", secert = true }\n',
            "inventory.toml: device_types.IP232: variables.h-x.secert: "
            "unknown key (known here: value, secret)",
            id="variable-table-typo",
        ),
        pytest.param(
            BASE + '\n[device_types.IP232.variables]\nh-x = "1"\n'
            '[device_types.ip232.variables]\nh-y = "2"\n',
            "inventory.toml: device_types.ip232: duplicate of device_types.IP232",
            id="duplicate-device-type",
        ),
        pytest.param(
            BASE
            + device_entry(cpe_id="Kuenkel00001-001")
            + device_entry("00-90-33-01-02-04", type="IP222", cpe_id="Kuenkel00001-001"),
            "inventory.toml: devices[1] (mac 00-90-33-01-02-04): cpe_id: Kuenkel00001-001 is "
            "also used by devices[0] (mac 00-90-33-01-02-03)",
            id="duplicate-cpe-id",
        ),
        pytest.param(
            BASE + '\n[variables]\nh-x = "two\\nlines"\n',
            "inventory.toml: variables: h-x: "
            "must not contain control characters (scripts are line based)",
            id="variable-newline",
        ),
        pytest.param(
            BASE + "[[devices]\n",
            "inventory.toml: invalid TOML: Expected ']]' at the end of an array declaration "
            "(at line 15, column 10)",
            id="invalid-toml",
        ),
    ],
)
def test_bad_input_is_a_precise_problem(text: str, problem: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, "inventory.toml")
    assert caught.value.problems == [problem]


def test_every_problem_is_reported_at_once() -> None:
    text = (
        BASE.replace("index = 1", "index = -1")
        + device_entry(**{"class": "fax"})
        + device_entry("00:90:33:01:02:03", customer="Nobody00001")
    )
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, "inventory.toml")
    assert caught.value.problems == [
        "inventory.toml: frontends[0] (id sb1): index: must be 0..9999",
        "inventory.toml: devices[0] (mac 00-90-33-01-02-03): class: "
        "must be one of phone, gateway, pbx, not 'fax'",
        "inventory.toml: devices[1] (mac 00:90:33:01:02:03): mac: "
        "duplicate of devices[0] (mac 00-90-33-01-02-03)",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        read_inventory_file(tmp_path / "missing.toml")
    assert caught.value.problems == [
        f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"
    ]


async def test_invalid_inventory_changes_nothing(pool: asyncpg.Pool, example: Inventory) -> None:
    bad = dataclasses.replace(
        example,
        devices=(
            *example.devices,
            Device("00-90-33-01-02-09", "IP232", "phone", "Nobody00001", cpe_id="Kuenkel00001-001"),
        ),
    )
    async with pool.acquire() as connection:
        await apply_inventory(connection, example)
        with pytest.raises(InventoryError) as caught:
            await apply_inventory(connection, bad)
        assert caught.value.problems == [
            # Inventory objects have no file order: entries are checked sorted by MAC as given.
            f"device {IP232}: cpe_id: Kuenkel00001-001 is also used by device 009033010209",
            "device 009033010209: customer: no customer 'Nobody00001' in this inventory",
        ]
        assert await load_inventory(connection) == example
        assert await inventory_version(connection) == 1


async def test_database_refusal_changes_nothing(pool: asyncpg.Pool, example: Inventory) -> None:
    """A row another table still references is not removed, and nothing else changes either."""
    async with pool.acquire() as connection:
        await apply_inventory(connection, example)
        await connection.execute(
            "CREATE TABLE test_device_notes (mac text REFERENCES devices (mac) ON DELETE RESTRICT)"
        )
        await connection.execute("INSERT INTO test_device_notes VALUES ($1)", IP112)
        smaller = dataclasses.replace(
            example,
            customers=(dataclasses.replace(example.customers[0], area_code="7032"),),
            devices=tuple(d for d in example.devices if d.mac != IP112),
        )
        with pytest.raises(InventoryError) as caught:
            await apply_inventory(connection, smaller)
        assert "test_device_notes" in caught.value.problems[0]
        assert await load_inventory(connection) == example


async def test_removing_a_device_from_the_file_removes_it(
    pool: asyncpg.Pool, example: Inventory
) -> None:
    without_pbx = dataclasses.replace(
        example,
        devices=tuple(d for d in example.devices if d.mac != IPVA),
        variables=tuple(v for v in example.variables if v.scope != IPVA),
    )
    async with pool.acquire() as connection:
        await apply_inventory(connection, example)
        changes = await apply_inventory(connection, without_pbx)
        assert [str(change) for change in changes] == [
            f"- device {IPVA}",
            f"- variable device/{IPVA}/h-ntp",
        ]
        repository = InventoryRepository(connection)
        assert await repository.get_device(IPVA) is None
        assert await repository.list_variables("device") == []
        assert await load_inventory(connection) == without_pbx


async def test_replacement_and_swapped_cpe_ids(pool: asyncpg.Pool, example: Inventory) -> None:
    """Constraints are checked at the end of apply: rows may trade unique values."""
    devices = {device.mac: device for device in example.devices}
    swapped = dataclasses.replace(
        example,
        devices=(
            dataclasses.replace(devices[IP232], cpe_id="Kuenkel00001-002"),
            dataclasses.replace(devices[IP222], cpe_id="Kuenkel00001-001"),
            # A replacement phone takes over the CPE id of the one it replaces.
            Device("009033010206", "IP112", "phone", "Kuenkel00001", cpe_id="Kuenkel00001-003"),
            devices[IPVA],
        ),
    )
    async with pool.acquire() as connection:
        await apply_inventory(connection, example)
        changes = await apply_inventory(connection, swapped)
        assert [str(change) for change in changes] == [
            f"~ device {IP232} (cpe_id)",
            f"~ device {IP222} (cpe_id)",
            f"- device {IP112}",
            "+ device 009033010206",
        ]
        assert await load_inventory(connection) == validate_inventory(swapped)


async def test_variables_resolve_in_layers(pool: asyncpg.Pool, example: Inventory) -> None:
    async with pool.acquire() as connection:
        await apply_inventory(connection, example)
        devices = {device.mac: device for device in example.devices}

        phone = await resolve_variables(connection, devices[IP232])
        assert {name: (v.value, v.layer, v.scope) for name, v in phone.items()} == {
            "h-domain": ("hoster.tld", "global", ""),
            "h-kerberos1ip": ("10.0.0.2", "global", ""),
            "h-kerberos2ip": ("10.0.0.3", "global", ""),
            "h-poll": ("15", "global", ""),
            "pbx-password": ("change-me-pbx-password", "global", ""),
            "h-ntp": ("192.0.2.10", "frontend", "sb1"),
            "h-sbcextip": ("192.0.2.10", "frontend", "sb1"),
            "h-sbcindex": ("1", "frontend", "sb1"),
            "h-ldapport": ("9001", "customer", "Kuenkel00001"),
            "h-pbxip": ("10.0.1.1", "customer", "Kuenkel00001"),
            "h-rasport": ("1819", "device_class", "phone"),
        }
        assert phone["pbx-password"].secret
        assert not phone["h-domain"].secret

        old_phone = await resolve_variables(connection, devices[IP112])
        assert (old_phone["h-rasport"].value, old_phone["h-rasport"].layer) == (
            "1719",
            "device_type",
        )
        pbx = await resolve_variables(connection, devices[IPVA])
        assert (pbx["h-ntp"].value, pbx["h-ntp"].layer, pbx["h-ntp"].scope) == (
            "10.0.0.10",
            "device",
            IPVA,
        )
        assert (pbx["h-poll"].value, pbx["h-poll"].layer) == ("5", "device_class")
        assert "h-rasport" not in pbx

        # The device layer beats the device type; the scope is written in any MAC notation.
        repository = InventoryRepository(connection)
        assert await repository.set_variable("device", "00:90:33:01:02:05", "h-rasport", "2000")
        old_phone = await resolve_variables(connection, devices[IP112])
        assert (old_phone["h-rasport"].value, old_phone["h-rasport"].scope) == ("2000", IP112)


async def test_the_query_and_the_in_memory_path_resolve_alike(pool: asyncpg.Pool) -> None:
    """core.inventory.variables has two paths (one query for a device, the in-memory index the
    services use); every layer sets overlapping names, and both agree for every device."""
    frontends = [Frontend(f"sb{n}", f"192.0.2.{n}", f"10.0.0.{n}", n) for n in (1, 2)]
    customers = [
        Customer(f"Cust{n:05d}", f"sb{n % 2 + 1}", f"Customer {n}", f"c{n}.example", "49", "7031")
        for n in range(3)
    ]
    types = ("IP232", "IP222", "IPVA")
    classes = ("phone", "phone", "pbx")
    devices = [
        Device(f"0090330000{n:02x}", types[n % 3], classes[n % 3], customers[n % 3].id)
        for n in range(9)
    ]
    scopes = {
        "global": [""],
        "frontend": [f.id for f in frontends],
        "customer": [c.id for c in customers],
        "device_class": ["phone", "pbx"],
        "device_type": list(types),
        "device": [d.mac for d in devices[::2]],
    }
    variables = [
        Variable(layer, scope, f"v{name}", f"{layer}:{scope}:{name}", secret=name == 0)
        for rank, (layer, layer_scopes) in enumerate(scopes.items())
        for scope in layer_scopes
        # Each layer sets the names from its rank on: every name is set by several layers.
        for name in range(rank, 7)
    ]
    inventory = validate_inventory(
        Inventory(tuple(frontends), tuple(customers), tuple(devices), tuple(variables))
    )
    layered = LayeredVariables(inventory.variables)
    by_id = {c.id: c for c in inventory.customers}
    async with pool.acquire() as connection:
        await apply_inventory(connection, inventory)
        for device in inventory.devices:
            queried = await resolve_variables(connection, device)
            in_memory = layered.for_device(device, by_id[device.customer])
            assert queried == in_memory, device.mac
            assert set(queried) == {f"v{n}" for n in range(7)}
    # The most specific layer wins: a device-layer value where one is set, else its type's.
    first = inventory.devices[0]
    resolved = layered.for_device(first, by_id[first.customer])
    assert resolved["v6"].layer == "device"
    assert resolved["v4"].layer == "device_type"
    assert resolved["v0"].secret


async def test_concurrent_appliers_serialise(pool: asyncpg.Pool, example: Inventory) -> None:
    async with pool.acquire() as first, pool.acquire() as second:
        results = await asyncio.gather(
            apply_inventory(first, example), apply_inventory(second, example)
        )
        assert sorted(len(changes) for changes in results) == [0, 6 + len(example.variables)]
        assert await inventory_version(first) == 1
        assert await load_inventory(second) == example


async def test_committed_changes_are_notified(pool: asyncpg.Pool, example: Inventory) -> None:
    received: list[str] = []

    def listener(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
        received.append(payload)

    async with pool.acquire() as listening, pool.acquire() as connection:
        await listening.add_listener(NOTIFY_CHANNEL, listener)
        try:
            await apply_inventory(connection, example)
            await until(lambda: received == ["1"])
            await apply_inventory(connection, example)  # no changes: no notification
            await InventoryRepository(connection).set_variable("global", "", "h-poll", "10")
            await until(lambda: received == ["1", "2"])
        finally:
            await listening.remove_listener(NOTIFY_CHANNEL, listener)


def test_secrets_never_appear_in_changes_or_reprs(example: Inventory) -> None:
    secret_values = ("change-me-registration", "change-me-login", "change-me-pbx-password")
    changed = dataclasses.replace(
        example,
        customers=(
            dataclasses.replace(
                example.customers[0],
                registration_password="other-registration-secret",
                login_password="other-login-secret",
            ),
        ),
        variables=tuple(
            dataclasses.replace(v, value="other-pbx-secret") if v.name == "pbx-password" else v
            for v in example.variables
        ),
    )
    changes = diff_inventory(example, changed) + diff_inventory(Inventory(), changed)
    texts = [str(change) for change in changes] + [repr(change) for change in changes]
    texts += [repr(changed.customers[0]), repr(changed.variables), repr(example)]
    assert "~ customer Kuenkel00001 (registration_password, login_password)" in texts
    assert "~ variable global/pbx-password (value)" in texts
    for text in texts:
        for secret in (*secret_values, "other-registration-secret", "other-pbx-secret"):
            assert secret not in text
    with pytest.raises(InventoryError) as caught:
        validate_inventory(
            dataclasses.replace(
                example,
                customers=(
                    dataclasses.replace(example.customers[0], login_password="has a space"),
                ),
            )
        )
    assert "has a space" not in str(caught.value)


def test_secrets_of_the_wrong_type_are_not_echoed() -> None:
    text = (
        BASE.replace('area_code = "7031"', 'area_code = "7031"\nregistration_password = 47114711')
        + "\n[variables]\npbx-password = { value = 81828182, secret = true }\n"
    )
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, "inventory.toml")
    assert caught.value.problems == [
        "inventory.toml: variables: pbx-password: must be a string, not integer",
        "inventory.toml: customers[0] (id Kuenkel00001): registration_password: "
        "must be a string, not integer",
    ]


async def test_repository_customers_and_devices(pool: asyncpg.Pool, example: Inventory) -> None:
    repository = InventoryRepository(pool)
    async with pool.acquire() as connection:
        await apply_inventory(connection, example)
    customer = example.customers[0]

    assert [f.id for f in await repository.list_frontends()] == ["sb1"]
    assert await repository.get_customer("Kuenkel00001") == customer
    assert await repository.get_customer("Nobody00001") is None
    assert await repository.upsert_customer(customer) is False  # unchanged
    second = dataclasses.replace(customer, id="Kuenkel00002", registration_password=None)
    assert await repository.upsert_customer(second) is True
    assert await repository.upsert_customer(dataclasses.replace(second, area_code="7032")) is False
    assert (await repository.get_customer("Kuenkel00002")) == dataclasses.replace(
        second, area_code="7032"
    )
    assert [c.id for c in await repository.list_customers()] == ["Kuenkel00001", "Kuenkel00002"]

    with pytest.raises(InventoryError) as caught:
        await repository.upsert_customer(dataclasses.replace(second, id="K3", frontend="sb9"))
    assert caught.value.problems == ["customer K3: frontend: no frontend 'sb9'"]
    with pytest.raises(InventoryError) as caught:
        await repository.upsert_customer(dataclasses.replace(second, id="kuenkel00002"))
    assert caught.value.problems == [
        "customer kuenkel00002: id: differs only in case from customer Kuenkel00002"
    ]
    with pytest.raises(InventoryError) as caught:
        await repository.delete_customer("Kuenkel00001")
    assert caught.value.problems == [
        "customer Kuenkel00001: still has 4 device(s); move or remove them first"
    ]

    device = await repository.device_by_hardware_id("ip232-01-02-03")
    assert device is not None
    assert device.mac == IP232
    assert await repository.get_device("00:90:33:01:02:03") == device
    assert await repository.device_by_hardware_id("IP232-ff-ff-ff") is None
    with pytest.raises(InventoryError):
        await repository.get_device("not-a-mac")

    new = Device("00-90-33-01-02-07", "ip240", "phone", "Kuenkel00002", cpe_id="Kuenkel00001-001")
    with pytest.raises(InventoryError) as caught:
        await repository.upsert_device(new)
    assert caught.value.problems == [
        f"device 009033010207: cpe_id: Kuenkel00001-001 belongs to device {IP232}"
    ]
    with pytest.raises(InventoryError) as caught:
        await repository.upsert_device(dataclasses.replace(new, customer="Nobody00001"))
    assert "device 009033010207: customer: no customer 'Nobody00001'" in caught.value.problems
    assert await repository.upsert_device(dataclasses.replace(new, cpe_id="Kuenkel00002-001"))
    stored = await repository.get_device("009033010207")
    assert stored == Device(
        "009033010207", "IP240", "phone", "Kuenkel00002", "IP240-01-02-07", "Kuenkel00002-001"
    )
    assert [d.mac for d in await repository.list_devices("Kuenkel00002")] == ["009033010207"]
    assert [d.mac for d in await repository.list_devices(limit=2, offset=1)] == [IP222, IP112]

    assert await repository.delete_device("00-90-33-01-02-07") is True
    assert await repository.delete_device("00-90-33-01-02-07") is False
    assert await repository.delete_customer("Kuenkel00002") is True
    assert await repository.delete_customer("Kuenkel00002") is False


async def test_repository_variables(pool: asyncpg.Pool, example: Inventory) -> None:
    repository = InventoryRepository(pool)
    async with pool.acquire() as connection:
        await apply_inventory(connection, example)
        version = await inventory_version(connection)

    assert await repository.set_variable("device_type", "ip232", "h-x", "1") is True
    assert await repository.set_variable("device_type", "IP232", "h-x", "1") is False
    assert await repository.set_variable("device_type", "IP232", "h-x", "2", secret=True) is False
    [variable] = await repository.list_variables("device_type", "ip232")
    assert variable == Variable("device_type", "IP232", "h-x", "2", secret=True)
    layers = [v.layer for v in await repository.list_variables()]
    assert layers == sorted(
        layers,
        key=["global", "frontend", "customer", "device_class", "device_type", "device"].index,
    )

    with pytest.raises(InventoryError) as caught:
        await repository.set_variable("customer", "Nobody00001", "h-x", "1")
    assert caught.value.problems == [
        "variable customer/Nobody00001/h-x: scope: no customer 'Nobody00001'"
    ]
    with pytest.raises(InventoryError) as caught:
        await repository.set_variable("device_class", "fax", "h-x", "1")
    assert caught.value.problems == [
        "variable device_class/fax/h-x: scope: must be one of phone, gateway, pbx, not 'fax'"
    ]
    with pytest.raises(InventoryError):
        await repository.set_variable("global", "", "h-x", "line\r\nconfig write")

    assert await repository.delete_variable("device_type", "IP232", "h-x") is True
    assert await repository.delete_variable("device_type", "IP232", "h-x") is False
    async with pool.acquire() as connection:
        # Three changing writes, three bumps; refused and no-op writes none.
        assert await inventory_version(connection) == version + 3
