"""The script tree as devices receive it (issue #14 items 4-6): the grace period, files that
cannot be read, raw scripts with literal template syntax, lone CRs, PHPUS's firmware names."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.core.identity import DeviceIdentity, Proof
from services.core.inventory import Device, read_inventory_file
from services.update.firmware import FirmwareError, check_file_name, firmware_file_name
from services.update.provisioning import (
    UPDATE,
    Lifecycle,
    PollArguments,
    Snapshot,
    Urls,
    check_scripts,
    firmware_targets,
    look_up,
    reply_for,
)
from services.update.scripts import RAW_MARKER, ScriptError, ScriptStore, script_hash

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = read_inventory_file(ROOT / "config" / "inventory.example.toml")
SNAPSHOT = Snapshot.build(1, INVENTORY)
DEVICE = next(d for d in INVENTORY.devices if d.device_type == "IP232")
URLS = Urls("https://192.0.2.10")


def tree(tmp_path: Path, files: dict[str, str | bytes], grace: float = 0.0) -> ScriptStore:
    root = tmp_path / "scripts"
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    store = ScriptStore(root, grace)
    store.refresh()
    return store


def update_reply(store: ScriptStore, check: str | None = None) -> str:
    identity = DeviceIdentity(Proof.PROVEN, DEVICE.mac, DEVICE.hardware_id, DEVICE.device_type)
    context = look_up(
        SNAPSHOT, DEVICE, identity, PollArguments(check=check), UPDATE, URLS, Lifecycle()
    )
    return reply_for(store, context, lambda build, name: False).text


def age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


BASE = {"staging.txt": "config change A /b c\n", "update.txt": "{% include 'part.txt' %}\n"}


def test_a_changed_tree_waits_for_the_grace_period(tmp_path: Path) -> None:
    store = tree(tmp_path, {**BASE, "part.txt": "config change NTP0 /server 1\n"}, grace=90)
    assert "NTP0 /server 1" in update_reply(store)
    part = store.root / "part.txt"
    part.write_text("config change NTP0 /server 2\n")
    assert store.refresh() is False
    assert "part.txt" in store.pending
    reply = update_reply(store)
    assert "NTP0 /server 1" in reply  # the previous tree, whole
    assert "script change not served yet: part.txt" in reply
    age(part, 91)
    assert store.refresh() is True
    assert not store.pending
    assert "NTP0 /server 2" in update_reply(store)


def test_a_broken_change_keeps_the_previous_tree(tmp_path: Path) -> None:
    store = tree(tmp_path, {**BASE, "part.txt": "config change NTP0 /server 1\n"})
    (store.root / "part.txt").write_bytes(b"config change NTP0 /server \xe4\n")
    assert store.refresh() is False
    assert "not UTF-8" in store.held_problems["part.txt"]
    assert "NTP0 /server 1" in update_reply(store)
    problems = check_scripts(
        store, SNAPSHOT, URLS, poll_minutes=15, firmware_available=lambda b, n: False
    )
    assert any("part.txt" in p and "not UTF-8" in p and "line 1" in p for p in problems)


def test_an_unreadable_file_at_start_is_an_error_never_silently_dropped(tmp_path: Path) -> None:
    store = tree(
        tmp_path,
        {
            **BASE,
            "update.txt": "{% include 'part.txt' ignore missing %}\nconfig change X /y z\n",
            "part.txt": b"config change NTP0 /server \xe4\n",
        },
    )
    with pytest.raises(ScriptError, match="not UTF-8"):
        update_reply(store)


def test_literal_template_syntax_in_a_plain_script(tmp_path: Path) -> None:
    phpus = "config change PHONE0 /text {{x}} {% y #(z)\nconfig change A /b #(h-domain)\n"
    store = tree(tmp_path, {**BASE, "part.txt": phpus})
    assert "part.txt" in store.problems
    assert RAW_MARKER in store.problems["part.txt"]  # scripts check says how to fix it
    raw = tree(tmp_path / "raw", {**BASE, "part.txt": f"{RAW_MARKER}\n{phpus}"})
    assert not raw.problems
    reply = update_reply(raw)
    # Sent byte for byte: no Jinja2, no #(name) expansion, the marker line neither sent nor
    # hashed, so the hash is the one PHPUS computes over the same file.
    assert "config change PHONE0 /text {{x}} {% y #(z)\r\n" in reply
    assert "config change A /b #(h-domain)\r\n" in reply
    assert RAW_MARKER not in reply
    assert f"check ser {script_hash(phpus)}" in reply
    # Valid template syntax meant literally: rendering names the file, the line and the fix.
    literal = tree(tmp_path / "literal", {**BASE, "part.txt": "config change A /text {{x}}\n"})
    with pytest.raises(ScriptError, match=r"'x' is undefined") as raised:
        update_reply(literal)
    assert RAW_MARKER in str(raised.value)
    assert "part.txt:1" in str(raised.value)


def test_lone_cr_line_ends_hash_like_phpus_and_are_reported(tmp_path: Path) -> None:
    content = "config change A /b 1\rconfig change C /d 2\r\n"
    store = tree(tmp_path, {**BASE, "part.txt": content})
    reply = update_reply(store)
    # PHPUS reads lines with fgets (LF only): the CR-separated run is one line.
    assert f"check ser {script_hash(content)}" in reply
    problems = check_scripts(
        store, SNAPSHOT, URLS, poll_minutes=15, firmware_available=lambda b, n: False
    )
    assert any("lone CR" in p and "part.txt" in p for p in problems)


def test_fast_polling_in_a_template_is_reported(tmp_path: Path) -> None:
    store = tree(tmp_path, {**BASE, "part.txt": "config add UP1 /poll 1\n"})
    problems = check_scripts(
        store, SNAPSHOT, URLS, poll_minutes=15, firmware_available=lambda b, n: False
    )
    assert any("sets /poll 1" in p for p in problems)


@pytest.mark.parametrize(
    ("device_type", "prot", "boot"),
    [
        ("IP232", "ip232.bin", "boot232.bin"),
        ("IPVA", "ipva.bin", "bootva.bin"),
        ("IP29-4", "ip29.bin", "boot29.bin"),
        ("IP1060", "ip1060.bin", "boot1060.bin"),
        ("mypbxa", "mypbx.apk", "alt-bootnomodel.bin"),
    ],
)
def test_firmware_file_names_as_phpus_has_them(device_type: str, prot: str, boot: str) -> None:
    names = {"mypbxa": "mypbx.apk"}
    boot_names = {"mypbxa": "alt-bootnomodel.bin"}
    assert firmware_file_name("prot", device_type, names) == prot
    assert firmware_file_name("boot", device_type, boot_names) == boot
    assert check_file_name(prot) == prot


def test_a_file_name_that_could_leave_the_store_is_refused() -> None:
    for name in ("../ip232.bin", "ip232.bin/..", "ip232.exe", ".bin"):
        with pytest.raises(FirmwareError):
            check_file_name(name)


def test_models_without_firmware_or_boot_code_get_none() -> None:
    lifecycle = Lifecycle(firmware_none=frozenset({"swphone"}), boot_none=frozenset({"ipva"}))
    wanted = {
        name: SNAPSHOT.resolve(DEVICE)["h-domain"].__class__(name, "135312", False, "global", "")
        for name in ("fw-prot", "fw-boot")
    }
    ipva = Device("009033a85a38", "IPVA", "pbx", "Kuenkel00001", "IPVA-a8-5a-38")
    softphone = Device("009033a85a39", "SWPHONE", "phone", "Kuenkel00001", "SWPHONE-a8-5a-39")
    assert [t.kind for t in firmware_targets(ipva, wanted, URLS, lifecycle)] == ["prot"]
    assert [t.file_name for t in firmware_targets(ipva, wanted, URLS, lifecycle)] == ["ipva.bin"]
    assert firmware_targets(softphone, wanted, URLS, lifecycle)[0].kind == "boot"
    # Builds are compared as devices report them: a device on 135312 gets no firmware line.
    identity = DeviceIdentity(Proof.PROVEN, DEVICE.mac, DEVICE.hardware_id, DEVICE.device_type)
    context = look_up(
        SNAPSHOT,
        DEVICE,
        identity,
        PollArguments(prot="135312", boot="135312"),
        UPDATE,
        URLS,
        Lifecycle(),
    )
    store = ScriptStore(ROOT / "staging_scripts")
    store.refresh()
    context = type(context)(**{**context.__dict__, "variables": {**context.variables, **wanted}})
    assert "mod cmd UP0" not in reply_for(store, context, lambda b, n: True).text.replace(
        "mod cmd UP0 scfg", ""
    )


def test_staging_installs_the_trust_list_when_its_variables_are_set() -> None:
    from dataclasses import replace

    from services.core.inventory import Variable
    from services.update.provisioning import STAGING

    inventory = replace(
        INVENTORY,
        variables=(
            *INVENTORY.variables,
            Variable("global", "", "trust-root", "3082010a0282010100c0ffee"),
            Variable("global", "", "trust-command", "mod cmd X509 add-trusted"),
        ),
    )
    snapshot = Snapshot.build(2, inventory)
    store = ScriptStore(ROOT / "staging_scripts")
    store.refresh()
    identity = DeviceIdentity(Proof.PROVEN, DEVICE.mac, DEVICE.hardware_id, DEVICE.device_type)
    context = look_up(snapshot, DEVICE, identity, PollArguments(), STAGING, URLS, Lifecycle())
    text = reply_for(store, context, lambda b, n: False).text
    assert "mod cmd X509 add-trusted 3082010a0282010100c0ffee\r\n" in text
    # Without the variables (the example inventory) the line is not there.
    plain = look_up(SNAPSHOT, DEVICE, identity, PollArguments(), STAGING, URLS, Lifecycle())
    assert "add-trusted" not in reply_for(store, plain, lambda b, n: False).text
