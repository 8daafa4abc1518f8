"""Moving from PHPUS: `pbxfront scripts import-phpus` and the update.php compatibility routes.

The PHPUS side is re-implemented here from its behaviour (protocol.md §2, §10): which files
getPossibleScripts picks in which order, and getFilesSignature's MD5 over the bytes PHP reads.
pbxfront's side is the real thing: the imported tree rendered by the update service, polled over
TLS with a real client certificate, backups stored by the backup service.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.backup.repository import ArchiveRepository
from services.core.config import ListenerSettings, Settings, UpdateSettings
from services.core.inventory import (
    InventoryRepository,
    apply_inventory,
    parse_inventory,
    read_inventory_file,
)
from services.core.runner import Node
from services.update import phpus
from services.update.scripts import RAW_MARKER, ScriptStore, script_hash, script_lines
from tests.conftest import DEVICE_A, SessionPki, start_services, until

MAC_A = "009033010203"  # IP232-01-02-03 in config/inventory.example.toml
MAC_IP222 = "009033010204"
MAC_IP112 = "009033010205"
MAC_IPVA = "009033a85a38"

CONFIG_XML = b"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE config SYSTEM "config.dtd">
<!-- PHPUS defaults, in its format -->
<config debugmerge="false">
    <master info="none" firmware="master" bootcode="master"/>
    <fwstorage url="fw/{build}/"/>
    <backup nbackups="10" scfg="update.php?mode=backup&amp;hwid=#h&amp;sn=#m"/>
    <times dir="scripts" check="true" polling="5" interval="15" grace="90" allow=""
           forcestaging="true"/>
    <phases>
        <phase id="update" seq="200"/>
    </phases>
    <environments>
        <environment id="default"/>
    </environments>
    <classes>
        <class id="phone">
            <model>ip222</model>
            <model>ip232</model>
        </class>
        <class id="gw">
            <model>ipva</model>
        </class>
        <class id="pbx">
            <model>ipva</model>
        </class>
    </classes>
    <nobootdev><model>ipva</model><model>swphone</model></nobootdev>
    <nofirmdev><model>swphone</model></nofirmdev>
    <filenames><model id="mypbxa" prot="mypbx.apk" boot="alt-bootnomodel.bin"/></filenames>
</config>
"""

USER_CONFIG_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<config>
    <master firmware="135312" bootcode="firmware"/>
    <times allow="22,23,0,1" initial="6" forcestaging="true" interval="10" polling="3"/>
    <phases>
        <phase id="staging" seq="100"/>
    </phases>
    <environments>
        <environment id="customer1"><implies>default</implies></environment>
    </environments>
    <classes>
        <class id="phone"><model>ip112</model></class>
    </classes>
</config>
"""

# name -> bytes, as an operator's PHPUS scripts folder holds them.
SCRIPTS: dict[str, bytes] = {
    # CRLF line ends, a comment line (PHPUS hashes comments too), blank lines, trailing blanks.
    "all-all-all.txt": b"# provider wide\r\nconfig change NTP0 /server 10.0.0.1\r\n\r\n  "
    b"config change TONE /x 1  \r\n",
    # Literals Jinja2 and #(...) would read.
    "all-phone-all.txt": b"config add PHONE /text {{ hello }} {% raw %} {#x#} {{{y\n"
    b"config change CMD0 /note #(x) and #((y) and #(h-poll)\n",
    "update-phone-default.txt": b"config change PHONE /cfg 1\n",
    # ISO-8859-1 (not UTF-8): only devices in environment customer1 get it.
    "update-phone-customer1.txt": b"config change PHONE /display Gr\xfc\xdfe\n",
    # A lone CR inside a line, no final line end.
    "update-ip232-all.txt": b"config change IP232 /a 1\rconfig change IP232 /b 2",
    # The device's own script (sn lower case, PHPUS's devicescript).
    f"update-all-{MAC_A}.txt": b"config change PHONE /name Reception\n",
    "update-gw-all.txt": b"config change GW /x 1\n",
    "update-pbx-default.txt": b"config change PBX /y 1\nconfig add UP1 /poll 5\n",
    "all-all-default.txt": b"config change ALL /default 1\n",
    "staging-all-all.txt": b"config change STAGING /first 1\n",
    # Never delivered by PHPUS: reported, not imported.
    "bogus-all-all.txt": b"never\n",
    "update-all-nosuchenv.txt": b"never\n",
    "Update-all-all.txt": b"never\n",
    "notes.md": b"not a script\n",
}


def build_phpus_tree(root: Path) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "config.xml").write_bytes(CONFIG_XML)
    (root / "config" / "user-config.xml").write_bytes(USER_CONFIG_XML)
    for name, data in SCRIPTS.items():
        (root / "scripts" / name).write_bytes(data)
    return root


# --- PHPUS, re-implemented from its behaviour ------------------------------------------------


@dataclass(frozen=True)
class PhpusFacts:
    """The merged config of the tree above, as PHPUS sees it."""

    phases: tuple[str, ...] = ("staging", "_first_update", "update")
    classes: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("phone", ("ip222", "ip232", "ip112")),
        ("gw", ("ipva",)),
        ("pbx", ("ipva",)),
    )
    environments: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("default", ()),
        ("customer1", ("default",)),
    )


def phpus_files(
    facts: PhpusFacts, folder: Path, phase: str, device_type: str, sn: str, env: str
) -> list[Path]:
    """getPossibleScripts: phases x classes x environments, files that exist, in that order."""
    implies = dict(facts.environments)
    environments: list[str] = []
    for name in env.split(","):
        expanded = [name, *implies[name]]
        # PHP's `$envs += $expanded`: array union keeps the keys it already has.
        environments += expanded[len(environments) :]
    phase = "update" if phase == "_first_update" else phase
    all_phases = (["all"] if len(facts.phases) > 1 else []) + [phase]
    device_type = device_type.lower()
    classes = [c for c, models in facts.classes if device_type in models]
    if device_type not in classes:
        classes.append(device_type)
    all_classes = (["all"] if len(facts.classes) > 1 else []) + classes
    all_environments = (
        (["all"] if len(facts.environments) > 1 else [])
        + [sn.lower().replace("-", "_")]
        + environments
    )
    found = []
    for p in all_phases:
        for c in all_classes:
            for e in all_environments:
                path = folder / f"{p.lower()}-{c.lower()}-{e.lower()}.txt"
                if path.is_file():
                    found.append(path)
    return found


def phpus_hash(files: list[Path]) -> str:
    """getFilesSignature: fgets lines (split after LF only), PHP trim(), empties skipped."""
    signature = b""
    for path in files:
        for line in re.split(rb"(?<=\n)", path.read_bytes()):
            trimmed = line.strip(b" \t\n\r\0\x0b")
            if trimmed:
                signature += trimmed
    return hashlib.md5(signature, usedforsecurity=False).hexdigest()


def test_phpus_hash_matches_protocol_example(tmp_path: Path) -> None:
    example = tmp_path / "example.txt"
    example.write_bytes(
        b"config change NTP0 /server 10.0.0.1\r\n\r\n  config change UP1 /poll 15  \n"
    )
    assert phpus_hash([example]) == "2dcad7f9915915e499c2b114e628a1dd"


# --- the import ------------------------------------------------------------------------------


@pytest.fixture
def imported(tmp_path: Path) -> tuple[Path, Path, phpus.Plan]:
    source = build_phpus_tree(tmp_path / "phpus")
    plan = phpus.plan_import(source)
    assert plan.ok, [str(p) for p in plan.findings.problems]
    target = tmp_path / "staging_scripts"
    phpus.write_plan(plan, target)
    return source, target, plan


def _render(store: ScriptStore, name: str, device_type: str, mac: str, **variables: str) -> str:
    context: dict[str, Any] = {"device": {"type": device_type, "mac": mac}, "vars": variables}
    return store.render(name, context, variables)


def test_import_writes_the_layout_and_reports_each_problem(
    imported: tuple[Path, Path, phpus.Plan],
) -> None:
    source, target, plan = imported
    written = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert written == [
        "phpus/all-all-all.txt",
        "phpus/all-all-default.txt",
        "phpus/all-phone-all.txt",
        "phpus/inventory-fragment.toml",
        "phpus/settings-fragment.toml",
        "phpus/staging-all-all.txt",
        f"phpus/update-all-{MAC_A}.txt",
        "phpus/update-gw-all.txt",
        "phpus/update-ip232-all.txt",
        "phpus/update-pbx-default.txt",
        "phpus/update-phone-customer1.txt",
        "phpus/update-phone-default.txt",
        "staging.txt",
        "update.txt",
    ]
    # Every script keeps its bytes (CRLF, lone CRs, literal braces), marked raw.
    for name in ("all-all-all.txt", "all-phone-all.txt", "update-ip232-all.txt"):
        assert (target / "phpus" / name).read_bytes() == (
            RAW_MARKER.encode() + b"\n" + SCRIPTS[name]
        )
    assert (target / "phpus/update-phone-customer1.txt").read_text("utf-8") == (
        f"{RAW_MARKER}\nconfig change PHONE /display Grüße\n"
    )
    problems = [str(p) for p in plan.findings.problems]
    scripts = source / "scripts"

    def reported(path: str, text: str) -> bool:
        return any(p.startswith(path) and text in p for p in problems)

    assert reported(f"{scripts}/update-phone-customer1.txt:1: warning: not UTF-8", "once more")
    assert reported(f"{scripts}/bogus-all-all.txt: warning:", "phase 'bogus' is not in the config")
    assert reported(f"{scripts}/update-all-nosuchenv.txt: warning:", "environment 'nosuchenv'")
    assert reported(f"{scripts}/Update-all-all.txt: warning:", "not a PHPUS script name")
    assert reported(f"{scripts}/update-pbx-default.txt:2: warning:", "owns fast polling")
    assert reported(f"{scripts}/update-ip232-all.txt:1: warning:", "lone CR")
    assert not any("notes.md" in p for p in problems)


def test_raw_files_render_back_to_their_bytes(
    imported: tuple[Path, Path, phpus.Plan],
) -> None:
    source, target, _ = imported
    store = ScriptStore(target)
    store.refresh()
    assert store.problems == {}
    for name in ("all-phone-all.txt", "update-ip232-all.txt", "all-all-all.txt"):
        original = (source / "scripts" / name).read_bytes().decode().replace("\r\n", "\n")
        assert "{{" in original or "\r" in original or name == "all-all-all.txt"
        rendered = store.render(f"phpus/{name}", {}, {"x": "EXPANDED", "h-poll": "15"})
        assert rendered == original


def test_fragments_are_valid_and_say_what_phpus_said(
    imported: tuple[Path, Path, phpus.Plan],
) -> None:
    import tomllib

    _, target, _ = imported
    text = (target / "phpus/inventory-fragment.toml").read_text()
    inventory = parse_inventory(text, "fragment")
    values = {(v.layer, v.scope, v.name): v.value for v in inventory.variables}
    assert values == {
        ("global", "", "phpus-env"): "default",
        ("global", "", "h-poll"): "10",
        ("global", "", "update-allow"): "22,23,0,1",
        ("global", "", "update-initial"): "6",
        ("global", "", "fw-prot"): "135312",
        ("global", "", "fw-boot"): "135312",
        ("device_type", "SWPHONE", "fw-prot"): "",
        ("device_type", "SWPHONE", "fw-boot"): "",
        ("device_type", "IPVA", "fw-boot"): "",
        ("device_type", "MYPBXA", "fw-prot-file"): "mypbx.apk",
        ("device_type", "MYPBXA", "fw-boot-file"): "alt-bootnomodel.bin",
    }
    settings = tomllib.loads((target / "phpus/settings-fragment.toml").read_text())["update"]
    assert settings["poll_interval"] == 10
    assert settings["provision_minutes"] == 3
    assert settings["grace_seconds"] == 90.0
    assert settings["boot_none"] == ["ipva", "swphone"]


@pytest.mark.parametrize(
    ("device_type", "mac", "env"),
    [
        ("IP232", MAC_A, "default"),  # phone class, its type file, its own device file
        ("IP232", "009033999999", "default"),  # the same type without a device file
        ("IP112", MAC_IP112, "default"),  # a model user-config.xml added to the class
        ("IPVA", MAC_IPVA, "default"),  # two classes
        ("IPVA", MAC_IPVA, "customer1"),  # an environment with an implication
        ("IP222", MAC_IP222, "customer1,default"),  # PHP's array union
        ("IP6010", "009033777777", "default"),  # a type in no class
    ],
)
def test_hash_is_phpus_hash_for_the_same_device(
    imported: tuple[Path, Path, phpus.Plan], device_type: str, mac: str, env: str
) -> None:
    source, target, _ = imported
    store = ScriptStore(target)
    store.refresh()
    body = _render(store, "update.txt", device_type, mac, **{"phpus-env": env})
    files = phpus_files(PhpusFacts(), source / "scripts", "update", device_type, mac, env)
    assert files, "the case must deliver something"
    expected = phpus_hash(files)
    utf8 = all(f.read_bytes().isascii() for f in files)
    if utf8:
        assert script_hash("\n".join(script_lines(body))) == expected
    else:
        # The ISO-8859-1 file: converted, so the hash is PHPUS's over the UTF-8 bytes (the
        # import warned that these devices run their script once more).
        assert device_type == "IP222"
        assert script_hash("\n".join(script_lines(body))) != expected
        converted = []
        for number, path in enumerate(files):
            copy = target / f"converted-{number}.txt"
            copy.write_bytes(path.read_bytes().decode("latin-1").encode())
            converted.append(copy)
        assert script_hash("\n".join(script_lines(body))) == phpus_hash(converted)


def test_staging_has_the_non_final_phases(imported: tuple[Path, Path, phpus.Plan]) -> None:
    _source, target, _ = imported
    store = ScriptStore(target)
    store.refresh()
    body = _render(store, "staging.txt", "IP232", MAC_A)
    lines = script_lines(body)
    # all-* first, then the staging phase, then the forcestaging phase (the final one's files).
    assert lines[:5] == [
        "# provider wide",
        "config change NTP0 /server 10.0.0.1",
        "  config change TONE /x 1",
        "config change ALL /default 1",
        "config add PHONE /text {{ hello }} {% raw %} {#x#} {{{y",
    ]
    assert "config change STAGING /first 1" in lines
    assert lines.index("config change STAGING /first 1") < lines.index(
        "config change PHONE /name Reception"
    )


def test_unknown_environment_is_a_render_error(imported: tuple[Path, Path, phpus.Plan]) -> None:
    from services.update.scripts import ScriptError

    _, target, _ = imported
    store = ScriptStore(target)
    store.refresh()
    with pytest.raises(ScriptError, match="phpus_env_names_no_phpus_environment"):
        _render(store, "update.txt", "IP232", MAC_A, **{"phpus-env": "nosuch"})


def test_problems_stop_the_import_and_nothing_is_written(tmp_path: Path) -> None:
    source = build_phpus_tree(tmp_path / "phpus")
    (source / "config" / "user-config.xml").write_bytes(b"<config><phases><phase id='a-b'/>")
    plan = phpus.plan_import(source)
    assert not plan.ok
    assert [str(p) for p in plan.findings.errors] == [
        f"{source}/config/user-config.xml:1: error: not well-formed XML: "
        "no element found: line 1, column 33"
    ]
    (source / "config" / "user-config.xml").write_bytes(
        b"<config><phases><phase id='a-b' seq='1'/><phase id='all' seq='2'/></phases></config>"
    )
    plan = phpus.plan_import(source)
    assert [str(p) for p in plan.findings.errors] == [
        f"{source}/config/user-config.xml: error: phase 'a-b': no dash allowed in name (PHPUS)",
        f"{source}/config/user-config.xml: error: phase name 'all' not allowed (PHPUS refuses it)",
    ]
    (source / "config" / "user-config.xml").write_bytes(USER_CONFIG_XML)
    (source / "scripts" / "update-gw-all.txt").write_bytes(b"config change GW /x 1\n\x0c\n")
    plan = phpus.plan_import(source)
    assert [str(p) for p in plan.findings.errors] == [
        f"{source}/scripts/update-gw-all.txt:2: error: control character '\\x0c': pbxfront "
        "refuses it in a script (PHPUS would have sent it to the device); remove it"
    ]
    (source / "config.xml").unlink()
    plan = phpus.plan_import(source)
    assert [str(p) for p in plan.findings.errors] == [
        f"{source}/config.xml: error: missing: not a PHPUS folder (config.xml is its defaults)"
    ]


def _cli(*argv: str) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", action="append")
    common.add_argument("--set", action="append")
    parser = argparse.ArgumentParser(prog="pbxfront")
    actions = parser.add_subparsers(dest="action", required=True)
    phpus.register(actions, common)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def test_cli_dry_run_conflicts_and_force(
    tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = build_phpus_tree(tmp_path / "phpus")
    target = tmp_path / "staging_scripts"
    import shutil

    shutil.copytree(repo_root / "staging_scripts", target)
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert _cli("import-phpus", str(source), "--into", str(target), "--dry-run") == 0
    out = capsys.readouterr()
    assert f"would write to {target}:" in out.out
    assert f"phpus/all-phone-all.txt  <- {source}/scripts/all-phone-all.txt (raw)" in out.out
    assert f"--- {target}/update.txt" in out.out
    assert "would replace (needs --force):" in out.out
    assert "update-phone-customer1.txt:1: warning: not UTF-8" in out.err
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert _cli("import-phpus", str(source), "--into", str(target)) == 1
    assert "nothing written (--force replaces them" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert _cli("import-phpus", str(source), "--into", str(target), "--force") == 0
    assert "file(s) written" in capsys.readouterr().out
    assert (target / "phpus/all-all-all.txt").is_file()
    assert _cli("import-phpus", str(tmp_path / "nothing"), "--into", str(target)) == 1
    assert f"{tmp_path / 'nothing'}: error: not a folder" in capsys.readouterr().err


# --- the compatibility routes, end to end ------------------------------------------------------


@dataclass
class Site:
    node: Node
    pool: asyncpg.Pool
    phpus: Path
    pki: SessionPki

    def url(self, path: str, proven: bool = True) -> str:
        return self.node.addresses["devices" if proven else "claimed"] + path

    def session(self, certificate: bool = True) -> aiohttp.ClientSession:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        if certificate:
            cert, key = self.pki.devices[DEVICE_A]
            context.load_cert_chain(cert, key)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


@pytest.fixture
async def site(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> AsyncIterator[Site]:
    source = build_phpus_tree(tmp_path / "phpus")
    plan = phpus.plan_import(source)
    scripts = tmp_path / "staging_scripts"
    phpus.write_plan(plan, scripts)
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
        repository = InventoryRepository(connection)
        await repository.set_variable("global", "", "phpus-env", "default", False)
    settings = Settings(
        update=UpdateSettings(
            scripts_dir=scripts, firmware_dir=tmp_path / "firmware", reload_interval=0.1
        )
    )
    claimed = ListenerSettings(
        port=0,
        services=("backup", "update"),
        tls=True,
        certificate=session_pki.server_certificate,
        key=session_pki.server_key,
    )
    listeners = {
        "devices": dataclasses.replace(
            claimed, request_client_certificate=True, client_ca=(session_pki.ca,)
        ),
        "claimed": claimed,
    }
    node = await start_services(settings, pool, listeners)
    yield Site(node, pool, source, session_pki)
    await node.stop()


ARGUMENTS = f"sn={MAC_A}&hwid={DEVICE_A}&type=IP232&ip=10.0.0.5"


async def _get(site: Site, path: str, *, certificate: bool = True) -> tuple[int, str]:
    async with (
        site.session(certificate) as session,
        session.get(site.url(path, certificate)) as response,
    ):
        return response.status, await response.text()


def _commands(text: str) -> list[str]:
    assert text.endswith("\r\n")
    return [line for line in text.split("\r\n")[:-1] if not line.startswith("#")]


async def test_update_php_moves_the_device_and_its_check_stays_valid(site: Site) -> None:
    phpus_check = phpus_hash(
        phpus_files(PhpusFacts(), site.phpus / "scripts", "update", "IP232", MAC_A, "default")
    )
    base = site.node.addresses["devices"]
    status, text = await _get(
        site,
        f"/DRIVE/CF0/update/update.php?{ARGUMENTS}&phase=update&polling=5&env=default"
        f"&CHECK={phpus_check}&PROT=135312&BOOT=135312",
    )
    assert status == 200, text
    update_url = (
        base.replace(":", "%3A").replace("/", "%2F")
        + "%2FDRIVE%2FCF0%2Fupdate%2Fupdate.txt%3Fsn%3D%23m%26hwid%3D%23h%26type%3D%23t%26ip%3D%23i"
    )
    assert text.split("\r\n") == [
        f"# pbxfront: PHPUS update.php for {DEVICE_A} ({MAC_A}), customer Kuenkel00001, "
        "identity proven, PHPUS phase update",
        "# moving to pbxfront's update.txt; the script is not re-run (CHECK stays valid)",
        "# fast polling off (PHPUS provision mode)",
        "mod cmd UP1 provision 0",
        "config rem UP1 /provision",
        "config add UP1 /poll 15",
        f"config add UP1 /url {update_url}",
        "config add UP1 /no-dhcp",
        "config write",
        "config activate",
        "",
    ]
    # The device follows the URL with the CHECK PHPUS gave it: in sync, no script.
    status, text = await _get(
        site,
        f"/DRIVE/CF0/update/update.txt?{ARGUMENTS}&CHECK={phpus_check}&PROT=135312&BOOT=135312",
    )
    assert status == 200, text
    assert "mod cmd UP1 check" not in text
    assert "iresetn" not in text
    assert "config change PHONE /name Reception" not in text
    # Without that CHECK the script goes out, guarded by the very same hash.
    status, text = await _get(
        site, f"/DRIVE/CF0/update/update.txt?{ARGUMENTS}&PROT=135312&BOOT=135312"
    )
    assert status == 200, text
    assert f"mod cmd UP1 check ser {phpus_check}" in _commands(text)
    assert "config change CMD0 /note #(x) and #((y) and #(h-poll)" in _commands(text)


async def test_other_devices_are_in_sync_with_their_phpus_check(site: Site) -> None:
    for mac, hardware_id, device_type in (
        (MAC_IP112, "IP112-01-02-05", "IP112"),
        (MAC_IPVA, "IPVA-a8-5a-38", "IPVA"),
    ):
        check = phpus_hash(
            phpus_files(PhpusFacts(), site.phpus / "scripts", "update", device_type, mac, "default")
        )
        status, text = await _get(
            site,
            f"/DRIVE/CF0/update/update.txt?sn={mac}&hwid={hardware_id}&type={device_type}",
            certificate=False,
        )
        assert status == 200, text
        assert f"mod cmd UP1 check ser {check}" in _commands(text), (device_type, text)


async def test_polling_zero_only_moves(site: Site) -> None:
    status, text = await _get(site, f"/update.php?{ARGUMENTS}&phase=update&polling=0")
    assert status == 200, text
    commands = _commands(text)
    assert commands[0] == "config add UP1 /poll 15"
    assert "mod cmd UP1 provision 0" not in commands


async def test_an_unusable_h_poll_is_named_and_the_setting_used(site: Site) -> None:
    async with site.pool.acquire() as connection:
        await InventoryRepository(connection).set_variable("device", MAC_A, "h-poll", "0", False)

    async def moved() -> bool:
        status, text = await _get(site, f"/update.php?{ARGUMENTS}&phase=update&polling=0")
        return status == 200 and "h-poll = '0' (device layer)" in text

    await until(moved)
    _status, text = await _get(site, f"/update.php?{ARGUMENTS}&phase=update&polling=0")
    assert f"config add UP1 /poll {UpdateSettings().poll_interval}" in _commands(text)
    assert "using 15" in text


@pytest.mark.parametrize(
    ("query", "remark"),
    [
        ("polling=-5", "# polling=-5 is not a PHPUS polling value (0..1440)"),
        ("polling=99999999999999", "# polling=99999999999999 is not a PHPUS polling value"),
        ("polling=5x", "# polling=5x is not a PHPUS polling value"),
        ("phase=../x", "# phase=../x is not a PHPUS phase id; ignored"),
        ("phase=nosuch&polling=5", "PHPUS phase nosuch"),
        ("env=customer1", "# this device polled PHPUS with env=customer1, its phpus-env is"),
        ("env=a-b", "# env=a-b is not a PHPUS environment; ignored"),
    ],
)
async def test_garbage_arguments_get_a_comment_never_5xx(
    site: Site, query: str, remark: str
) -> None:
    status, text = await _get(site, f"/update.php?{ARGUMENTS}&{query}")
    assert status == 200, text
    assert remark in text
    commands = _commands(text)
    assert commands[0] == "mod cmd UP1 provision 0"
    assert commands[-1] == "config activate"


@pytest.mark.parametrize(
    ("method", "query", "status", "text"),
    [
        ("GET", "mode=query&id=certs", 400, "# pbxfront: PHPUS mode=query (the customcerts"),
        ("GET", "mode=vardump&var=X509/REQUEST", 400, "# pbxfront: PHPUS mode=vardump"),
        ("GET", "mode=upload", 400, "# pbxfront: PHPUS mode=upload"),
        ("GET", "show=1", 400, "# pbxfront: PHPUS's web interface (mode=show)"),
        ("GET", "mode=backup", 400, "# pbxfront: PHPUS mode=backup takes the device's conf"),
        ("GET", "mode=frobnicate", 400, "# pbxfront: unknown PHPUS mode"),
        ("GET", "mode=%00", 400, "contains a NUL byte"),
        ("PUT", "mode=query", 400, "PHPUS mode=query (the customcerts"),
        ("POST", "", 400, "add mode=backup&hwid=#h&sn=#m"),
        ("DELETE", "mode=backup", 405, ""),
    ],
)
async def test_other_modes_are_400(
    site: Site, method: str, query: str, status: int, text: str
) -> None:
    async with (
        site.session() as session,
        session.request(
            method, site.url(f"/update.php?{ARGUMENTS}&{query}"), data=b"x"
        ) as response,
    ):
        body = await response.text()
        assert response.status == status, body
        assert text in body


async def test_unknown_device_gets_the_update_404(site: Site) -> None:
    status, text = await _get(
        site, "/update.php?sn=0090330a0b0c&hwid=IP222-0a-0b-0c&type=IP222", certificate=False
    )
    assert status == 404
    assert text == "# device 0090330a0b0c is not in this provider's inventory\r\n"
    status, text = await _get(site, "/update.php?type=IP222", certificate=False)
    assert status == 400
    assert "cannot tell which device" in text


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_mode_backup_put_and_post_are_stored(site: Site, method: str) -> None:
    config = f"config change PHONE /by {method}\r\nvars create UPDATE/CHECK p 1\r\n".encode()
    async with site.session() as session:
        for path in ("/update.php", "/DRIVE/CF0/update/update.php"):
            async with session.request(
                method,
                site.url(f"{path}?mode=backup&hwid={DEVICE_A}&sn={MAC_A}"),
                data=config,
            ) as response:
                assert response.status in (200, 201), await response.text()

    async def repeat_counted() -> bool:
        # The second upload was the same configuration: counted in the next batch.
        found = await ArchiveRepository(site.pool).versions(MAC_A)
        return [v.unchanged_puts for v in found] == [1]

    await until(repeat_counted)
    versions = await ArchiveRepository(site.pool).versions(MAC_A)
    assert versions[0].upload_name == "update.php"
    assert versions[0].proof == "certificate"
    assert await ArchiveRepository(site.pool).content(versions[0].content_sha256) == config


async def test_mode_backup_without_proof_is_refused(site: Site) -> None:
    async with (
        site.session(certificate=False) as session,
        session.put(
            site.url(f"/update.php?mode=backup&hwid={DEVICE_A}&sn={MAC_A}", proven=False),
            data=b"config change X /y 1\r\n",
        ) as response,
    ):
        assert response.status == 401, await response.text()
    assert await ArchiveRepository(site.pool).versions(MAC_A) == []


def test_phpus_paths_setting_and_routes() -> None:
    from services.core.config import ConfigError, load_settings
    from services.core.phpus import route_paths

    settings = load_settings([], overrides={"update": {"phpus_paths": ["*/update.php"]}})
    assert route_paths(settings.update.phpus_paths) == [
        r"/{phpus_prefix:.*}/{name:update\.php}",
        r"/{name:update\.php}",
    ]
    assert route_paths(["/DRIVE/CF0/update/update.php"]) == [
        r"/DRIVE/CF0/update/{name:update\.php}"
    ]
    for bad in ("/DRIVE/CF0/update/update.txt", "update.php", "/a/../update.php", "/{x}.php"):
        with pytest.raises(ConfigError, match=r"update\.phpus_paths: .*must be a path ending"):
            load_settings([], overrides={"update": {"phpus_paths": [bad]}})


async def test_suffix_path_reaches_the_route(
    pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Path, tmp_path: Path
) -> None:
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    settings = Settings(
        update=UpdateSettings(
            scripts_dir=repo_root / "staging_scripts",
            firmware_dir=tmp_path / "firmware",
            phpus_paths=("*/update.php",),
        )
    )
    listener = ListenerSettings(
        port=0,
        services=("backup", "update"),
        tls=True,
        certificate=session_pki.server_certificate,
        key=session_pki.server_key,
    )
    node = await start_services(settings, pool, {"devices": listener})
    try:
        context = ssl.create_default_context(cafile=str(session_pki.ca))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            base = node.addresses["devices"]
            async with session.get(f"{base}/old/phpus/update.php?{ARGUMENTS}") as response:
                assert response.status == 200
                assert "config add UP1 /url " in await response.text()
            async with session.get(f"{base}/update.php?{ARGUMENTS}") as response:
                assert response.status == 200
            async with session.get(f"{base}/old/phpus/update.phpx?{ARGUMENTS}") as response:
                assert response.status == 404
    finally:
        await node.stop()
