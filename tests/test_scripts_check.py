"""`pbxfront scripts check` (issue 15): each problem once, with the devices it affects, as text
and as JSON; `scripts publish` refuses on the same check. Real PostgreSQL, the commands wired as
services/cli.py wires them."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
from pathlib import Path

import asyncpg
import pytest

from services.core.inventory import (
    Customer,
    Device,
    Frontend,
    Inventory,
    Variable,
    apply_inventory,
    load_inventory,
)
from services.frontend import cli as frontend_cli
from services.update import cli as update_cli
from services.update.firmware import FirmwareStore
from services.update.plan import plan_scripts
from services.update.provisioning import Urls
from services.update.scripts import ScriptStore
from services.update.state import SnapshotCache
from tests.conftest import run_wired_cli

ROOT = Path(__file__).resolve().parent.parent
ALPHA, BETA = "Alpha00001", "Beta00001"


def inventory() -> Inventory:
    """Alpha: five phones (three IP232, two IP222); Beta: two IP222."""
    devices = [
        Device(f"00903301000{i}", "IP232" if i < 3 else "IP222", "phone", ALPHA, cpe_id=f"A-{i}")
        for i in range(5)
    ] + [Device(f"00903302000{i}", "IP222", "phone", BETA, cpe_id=f"B-{i}") for i in range(2)]
    return Inventory(
        frontends=(Frontend("sb1", "192.0.2.10", "10.0.0.10", 1),),
        customers=tuple(
            Customer(
                id=customer,
                frontend="sb1",
                name=customer,
                system_name=f"{customer.lower()}.example",
                country_code="49",
                area_code="7031",
                registration_password=f"{customer}-registration",
            )
            for customer in (ALPHA, BETA)
        ),
        devices=tuple(devices),
        variables=(
            Variable("global", "", "h-domain", "hoster.tld"),
            Variable("global", "", "h-kerberos1ip", "10.0.0.2"),
            Variable("global", "", "h-kerberos2ip", "10.0.0.3"),
            Variable("global", "", "h-poll", "15"),
            Variable("customer", ALPHA, "h-pbxip", "10.0.0.7"),
            Variable("customer", BETA, "h-pbxip", "10.0.0.8"),
            Variable("frontend", "sb1", "h-ntp", "192.0.2.10"),
            Variable("frontend", "sb1", "h-sbcextip", "192.0.2.10"),
            Variable("frontend", "sb1", "h-sbcindex", "1"),
            Variable("device_class", "phone", "h-rasport", "1819"),
            # No such firmware file in the (empty) firmware folder.
            Variable("device_type", "IP222", "fw-prot", "131500"),
        ),
    )


@pytest.fixture
async def fleet(pool: asyncpg.Pool) -> Inventory:
    wanted = inventory()
    async with pool.acquire() as connection:
        await apply_inventory(connection, wanted)
        # As stored: with the hardware ids the store derives.
        return await load_inventory(connection)


def broken_tree(tmp_path: Path) -> Path:
    scripts = tmp_path / "scripts"
    shutil.copytree(ROOT / "staging_scripts", scripts)
    (scripts / f"set-{ALPHA}.txt").write_text(
        "config change PHONE /name {{ device.cpe_id }}\nconfig change X /y {{ no_such_name }}\n"
    )
    (scripts / f"set-{BETA}.txt").write_text("frobnicate the phone\n")
    return scripts


async def check(
    database_url: str, capsys: pytest.CaptureFixture[str], scripts: Path, tmp_path: Path, *argv: str
) -> tuple[int, str]:
    """The command in a thread (it runs its own event loop): (exit code, standard output)."""
    register = functools.partial(update_cli.register, extra_checks=[frontend_cli.plan_problems])
    code = await asyncio.to_thread(
        run_wired_cli,
        register,
        database_url,
        "scripts",
        *argv,
        "--set",
        f"update.scripts_dir={json.dumps(str(scripts))}",
        "--set",
        f"update.firmware_dir={json.dumps(str(tmp_path / 'firmware'))}",
    )
    return code, capsys.readouterr().out


async def test_each_problem_once_with_the_devices_it_affects(
    fleet: Inventory, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripts = broken_tree(tmp_path)
    code, out = await check(database_url, capsys, scripts, tmp_path, "check")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3, out
    alpha = [d for d in fleet.devices if d.customer == ALPHA]
    ip222 = [d for d in fleet.devices if d.device_type == "IP222"]

    (render,) = [line for line in lines if "no_such_name" in line]
    # Where (file:line of the template), what, which kind, and the devices: first three named.
    assert render.startswith(f"scripts/set-{ALPHA}.txt:2: ")
    assert "[render]" in render
    named = ", ".join(d.hardware_id for d in alpha[:3])
    assert render.endswith(f"(5 device(s): {named} and 2 more)")

    (unknown,) = [line for line in lines if "frobnicate" in line]
    assert unknown.startswith(f"{scripts}/set-{BETA}.txt:1: unknown command in update.txt: ")
    assert "[unknown-command] (2 device(s): IP222-" in unknown

    (firmware,) = [line for line in lines if "[firmware]" in line]
    assert "firm/131500/ip222.bin: missing (fw-prot) [firmware] (4 device(s): " in firmware
    assert not any(d.hardware_id in firmware for d in fleet.devices if d.device_type == "IP232")

    # JSON names every affected device.
    code, out = await check(database_url, capsys, scripts, tmp_path, "check", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["devices"] == 7
    by_kind = {problem["kind"]: problem for problem in report["problems"]}
    assert set(by_kind) == {"render", "unknown-command", "firmware"}
    assert by_kind["render"]["location"] == f"scripts/set-{ALPHA}.txt:2"
    assert by_kind["render"]["device_count"] == 5
    assert [d["mac"] for d in by_kind["render"]["devices"]] == [d.mac for d in alpha]
    assert {d["customer"] for d in by_kind["render"]["devices"]} == {ALPHA}
    assert [d["hardware_id"] for d in by_kind["firmware"]["devices"]] == [
        d.hardware_id for d in ip222
    ]
    assert by_kind["unknown-command"]["device_count"] == 2
    # Messages name no device: that is what makes them one problem.
    for problem in report["problems"]:
        assert not any(d.hardware_id in problem["message"] for d in fleet.devices)


async def test_publish_refuses_on_the_same_check_and_a_clean_tree_passes(
    fleet: Inventory,
    pool: asyncpg.Pool,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scripts = broken_tree(tmp_path)
    _code, checked = await check(database_url, capsys, scripts, tmp_path, "check")
    code, out = await check(database_url, capsys, scripts, tmp_path, "publish")
    assert code == 2
    assert out.splitlines()[:-1] == checked.splitlines()
    assert "not published: 3 problem(s)" in out.splitlines()[-1]
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM script_versions") == 0

    (scripts / f"set-{ALPHA}.txt").write_text("config change PHONE /name {{ device.cpe_id }}\n")
    (scripts / f"set-{BETA}.txt").unlink()
    image = tmp_path / "ip222.bin"
    image.write_bytes(b"\x00" * 64)
    FirmwareStore(tmp_path / "firmware").add(image, "131500", "ip222.bin")
    code, out = await check(database_url, capsys, scripts, tmp_path, "check")
    assert code == 0, out
    assert out.startswith("ok: ")
    assert "7 devices" in out
    code, out = await check(database_url, capsys, scripts, tmp_path, "check", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True
    assert report["problems"] == []
    code, out = await check(database_url, capsys, scripts, tmp_path, "publish")
    assert code == 0, out
    assert out.startswith("published version ")


async def test_file_problems_and_frontend_plan_problems_name_no_devices(
    fleet: Inventory, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripts = broken_tree(tmp_path)
    (scripts / "global.txt").write_bytes(b"config change NTP0 /server \xe4\n")
    code, out = await check(database_url, capsys, scripts, tmp_path, "check", "--json")
    assert code == 1
    report = json.loads(out)
    (problem,) = report["problems"]  # a tree that cannot load is not rendered at all
    assert problem["location"] == f"{scripts}/global.txt"
    assert problem["kind"] == "file"
    assert "line 1: not UTF-8" in problem["message"]
    assert problem["devices"] == []
    assert problem["device_count"] == 0


async def test_the_plan_renders_once_where_the_files_a_device_uses_are_unchanged(
    fleet: Inventory, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    live_root, pending_root = tmp_path / "live", tmp_path / "pending"
    for root in (live_root, pending_root):
        shutil.copytree(ROOT / "staging_scripts", root)
        update = root / "update.txt"
        update.write_text(
            update.read_text() + '{% include "dev-" ~ device.type ~ ".txt" ignore missing %}\n'
        )
        (root / f"set-{ALPHA}.txt").write_text("config change PHONE /name {{ device.cpe_id }}\n")
    # New in the pending tree only: a file the live tree lacks (an include it skipped).
    (pending_root / "dev-IP222.txt").write_text("config change PHONE /ring 2\n")
    (pending_root / f"set-{BETA}.txt").write_text("config change NTP0 /server 10.0.0.9\n")
    live, pending = ScriptStore(live_root), ScriptStore(pending_root)
    assert live.refresh()
    assert pending.refresh()
    async with pool.acquire() as connection:
        snapshot = await SnapshotCache().get(connection)

    def plan(reuse: bool) -> list[tuple[str, str | None, str, tuple[str, ...]]]:
        result = plan_scripts(
            pending,
            live,
            snapshot,
            Urls("https://frontend.invalid"),
            poll_minutes=15,
            hashes_sent={},
            reported_builds={},
            firmware_available=lambda build, name: True,
            reuse=reuse,
        )
        assert not result.problems
        assert result.devices == 7
        return [(c.device.mac, c.before, c.after, c.diff) for c in result.changes]

    fast, full = plan(reuse=True), plan(reuse=False)
    assert fast == full
    assert {mac for mac, *_ in fast} == {d.mac for d in fleet.devices if d.device_type == "IP222"}
    beta = next(diff for mac, _b, _a, diff in fast if mac == "009033020000")
    assert "+config change PHONE /ring 2" in beta
    assert "+config change NTP0 /server 10.0.0.9" in beta


async def test_an_undefined_update_variable_is_one_problem_at_its_template_line(
    fleet: Inventory,
    pool: asyncpg.Pool,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scripts = tmp_path / "scripts"
    shutil.copytree(ROOT / "staging_scripts", scripts)
    # The IP232 phones get one line more, so the variable lands on another rendered line.
    (scripts / f"set-{ALPHA}.txt").write_text(
        '{% if device.type == "IP232" %}config change PHONE /ring 2\n'
        "{% endif %}config change DIAL /prefix #(no-such-variable)\n"
    )
    code, out = await check(database_url, capsys, scripts, tmp_path, "check", "--json")
    assert code == 1
    (problem,) = [p for p in json.loads(out)["problems"] if p["kind"] == "render"]
    assert problem["location"] == f"{scripts}/set-{ALPHA}.txt:2"
    assert problem["message"] == (
        "update variable #(no-such-variable) is not defined (rendering update.txt)"
    )
    assert problem["device_count"] == 5

    # scripts plan groups it the same way.
    live, pending = ScriptStore(ROOT / "staging_scripts"), ScriptStore(scripts)
    assert live.refresh()
    assert pending.refresh()
    async with pool.acquire() as connection:
        snapshot = await SnapshotCache().get(connection)
    plan = plan_scripts(
        pending,
        live,
        snapshot,
        Urls("https://frontend.invalid"),
        poll_minutes=15,
        hashes_sent={},
        reported_builds={},
        firmware_available=lambda build, name: True,
    )
    ((planned, devices),) = plan.problems.items()
    assert planned.location == f"{scripts}/set-{ALPHA}.txt:2"
    assert [d.mac for d in devices] == [d.mac for d in fleet.devices if d.customer == ALPHA]
