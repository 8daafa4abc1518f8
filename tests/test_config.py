"""Settings: layering, validation messages naming the key path, documentation of every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.core.config import (
    ConfigError,
    Settings,
    cli_overrides,
    documented_keys,
    load_settings,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "pbxfront.example.toml"
DEMO = EXAMPLE.parent / "demo.toml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_files() -> None:
    settings = load_settings([], environ={})
    assert settings == Settings()
    assert settings.database.url == ""
    assert settings.limits.max_body_bytes == 4 * 1024 * 1024


def test_layers_in_order(tmp_path: Path) -> None:
    first = write(tmp_path, "a.toml", "frontend = 'sb1'\n[database]\npool_max_size = 5\n")
    second = write(tmp_path, "b.toml", "frontend = 'sb2'\n")
    settings = load_settings([first, second], environ={})
    assert settings.frontend == "sb2"
    assert settings.database.pool_max_size == 5
    settings = load_settings(
        [first, second],
        environ={"PBXFRONT_FRONTEND": "sb3", "PBXFRONT_DATABASE__POOL_MAX_SIZE": "7"},
    )
    assert (settings.frontend, settings.database.pool_max_size) == ("sb3", 7)
    settings = load_settings(
        [first, second],
        environ={"PBXFRONT_FRONTEND": "sb3"},
        overrides=cli_overrides(["frontend=sb4", "database.pool_max_size=9"]),
    )
    assert (settings.frontend, settings.database.pool_max_size) == ("sb4", 9)


def test_listener_tables_and_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "l.toml",
        "[listeners.admin]\nport = 9443\nservices = ['admin']\ntls = false\n",
    )
    settings = load_settings([path], environ={"PBXFRONT_LISTENERS__ADMIN__PORT": "9500"})
    assert settings.listeners["admin"].port == 9500
    assert settings.listeners["admin"].services == ("admin",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[database]\npool_max_size = 'many'\n", "database.pool_max_size: must be an integer"),
        ("[database]\npool_max_size = 1\n", "database.pool_max_size: must be 2..1000"),
        ("[database]\nnot_a_key = 1\n", "database.not_a_key: unknown key"),
        ("colour = 'blue'\n", "colour: unknown key"),
        ("[listeners.x]\nport = 70000\ntls = false\n", "listeners.x.port: must be 0..65535"),
        (
            "[listeners.x]\nservices = ['mail']\ntls = false\n",
            "listeners.x.services: unknown service",
        ),
        ("[listeners.x]\ntls = true\n", "listeners.x: tls = true needs certificate and key"),
        ("[logging]\nlevel = 'LOUD'\n", "logging.level: must be one of"),
        ("[limits]\nrequest_timeout = true\n", "limits.request_timeout: must be a number"),
        ("frontend = '../etc'\n", "frontend: must be a safe id"),
        ("[database]\npool_min_size = 20\npool_max_size = 10\n", "database.pool_min_size"),
        ("database = 3\n", "database: must be a table"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings([path], environ={})
    assert str(caught.value).startswith(message), str(caught.value)


def test_broken_and_missing_files(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.toml", "[database\n")
    with pytest.raises(ConfigError, match=r"broken.toml: invalid TOML"):
        load_settings([broken], environ={})
    with pytest.raises(ConfigError, match=r"missing.toml: no such config file"):
        load_settings([tmp_path / "missing.toml"], environ={})


def test_env_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^limits.max_body_bytes: must be an integer"):
        load_settings([], environ={"PBXFRONT_LIMITS__MAX_BODY_BYTES": "lots"})
    with pytest.raises(ConfigError, match=r"^limits.nonsense: unknown key"):
        load_settings([], environ={"PBXFRONT_LIMITS__NONSENSE": "1"})


def test_example_and_demo_files_load() -> None:
    example = load_settings([EXAMPLE], environ={})
    assert example.listeners["devices"].request_client_certificate
    demo = load_settings([DEMO], environ={})
    assert demo.demo.enabled
    assert demo.data_dir == Path("var/demo")


def example_keys() -> set[str]:
    """Keys written in the example file, commented-out ones included (``# key = …``)."""
    keys: set[str] = set()
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        header = re.match(r"^\[([a-z_.]+)\]\s*$", line)
        if header:
            section = header.group(1)
            if section.startswith("listeners."):
                section = "listeners.*"
            continue
        entry = re.match(r"^#?\s?([a-z_]+) = ", line)
        if entry:
            keys.add(f"{section}.{entry.group(1)}" if section else entry.group(1))
    return keys


def test_every_key_is_documented() -> None:
    documented = example_keys()
    missing = sorted(set(documented_keys()) - documented)
    assert not missing, f"undocumented in config/pbxfront.example.toml: {missing}"
    stale = sorted(documented - set(documented_keys()))
    assert not stale, f"documented but not a setting: {stale}"


def test_listeners_for_only() -> None:
    settings = load_settings([EXAMPLE], environ={})
    only = settings.listeners_for(["backup"])
    assert list(only) == ["devices"]
    assert only["devices"].services == ("backup",)
    assert settings.listeners_for(["directory"]) == {}
