"""Golden files: what every device of the example inventory gets from the shipped scripts.

A change to a template or to the pipeline shows up here as a diff. After an intended change,
regenerate with ``PBXFRONT_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py``
and review the diff before committing it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.identity import DeviceIdentity, Proof
from services.core.inventory import read_inventory_file
from services.update.provisioning import (
    STAGING,
    UPDATE,
    Lifecycle,
    PollArguments,
    Snapshot,
    Urls,
    look_up,
    reply_for,
)
from services.update.scripts import ScriptStore
from tests.conftest import assert_golden

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "update"
INVENTORY = read_inventory_file(ROOT / "config" / "inventory.example.toml")
SNAPSHOT = Snapshot.build(1, INVENTORY)


@pytest.fixture(scope="module")
def store() -> ScriptStore:
    scripts = ScriptStore(ROOT / "staging_scripts")
    scripts.refresh()
    assert not scripts.problems
    return scripts


@pytest.mark.parametrize("phase", [STAGING, UPDATE])
@pytest.mark.parametrize("device", INVENTORY.devices, ids=lambda d: d.hardware_id)
def test_rendered_scripts_match_golden_files(
    store: ScriptStore, device: object, phase: str
) -> None:
    from services.core.inventory import Device

    assert isinstance(device, Device)
    identity = DeviceIdentity(Proof.PROVEN, device.mac, device.hardware_id, device.device_type)
    reply = reply_for(
        store,
        look_up(
            SNAPSHOT,
            device,
            identity,
            PollArguments(),
            phase,
            Urls("https://192.0.2.10"),
            Lifecycle(),
        ),
        lambda build, name: False,
    )
    assert reply.status == 200
    text = reply.text.replace("\r\n", "\n")
    assert_golden(GOLDEN / f"{device.hardware_id}.{phase}.txt", text)
