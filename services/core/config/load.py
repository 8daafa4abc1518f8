"""The :class:`Settings` object and how it is built from its layers.

:func:`load_settings` reads the TOML files in order (:func:`read_toml`), overlays the
``PBXFRONT_*`` environment (:func:`env_overrides`) and the CLI's ``--set`` pairs
(:func:`cli_overrides`), turns every value into its field's type and runs the field's check
(a :class:`ConfigError` names the key path), resolves relative paths against ``base_dir``, and
finally makes the cross-field checks of :func:`validate`. :func:`documented_keys` lists every key
for the test that keeps ``config/pbxfront.example.toml`` complete.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from services.core.config.base import ConfigError, _check, _range
from services.core.config.devices import (
    BackupSettings,
    EventsSettings,
    RedirectSettings,
    UpdateSettings,
)
from services.core.config.node import (
    SERVICE_NAMES,
    STREAM_SCHEMES,
    AdminSettings,
    DatabaseSettings,
    DemoSettings,
    InventorySettings,
    LimitSettings,
    ListenerSettings,
    LoggingSettings,
    TlsSettings,
)
from services.core.config.provider import (
    CaSettings,
    ContactsSettings,
    DirectorySettings,
    FrontendPlanSettings,
)

__all__ = [
    "ENV_PREFIX",
    "ENV_RESERVED",
    "ENV_SEPARATOR",
    "Settings",
    "cli_overrides",
    "config_files_from_env",
    "documented_keys",
    "env_overrides",
    "load_settings",
    "read_toml",
    "validate",
]

ENV_PREFIX = "PBXFRONT_"
# `PBXFRONT_DATABASE__URL` -> database.url; a double underscore separates levels because keys
# themselves contain single underscores.
ENV_SEPARATOR = "__"
# Variables that configure the CLI itself rather than a settings key.
ENV_RESERVED = frozenset(
    {
        "PBXFRONT_CONFIG",
        "PBXFRONT_ACCOUNT_PASSWORD",
        "PBXFRONT_CA_PASSPHRASE",
        "PBXFRONT_P12_PASSPHRASE",
    }
)


# The section defaults below are instances of frozen dataclasses, so sharing one is safe; ruff
# sees that only for classes of its own module.
# ruff: noqa: RUF009
@dataclasses.dataclass(frozen=True)
class Settings:
    # The directory every relative path of these settings is resolved against (data_dir,
    # scripts, firmware, certificates ...). Empty: relative paths stay relative to the working
    # directory. The systemd unit sets it (PBXFRONT_BASE_DIR=/var/lib/pbxfront), so a relative
    # default never lands under "/".
    base_dir: Path | None = None
    # Where pbxfront keeps local state: the embedded PostgreSQL, demo certificates.
    data_dir: Path = Path("var")
    # This node's Frontend id in the inventory (e.g. "sb1").
    frontend: str = "sb1"
    # Worker processes per node; 0 = one per CPU core.
    workers: int = dataclasses.field(default=0, metadata=_check(_range(0, 256)))
    tls: TlsSettings = TlsSettings()
    database: DatabaseSettings = DatabaseSettings()
    listeners: dict[str, ListenerSettings] = dataclasses.field(default_factory=dict)
    limits: LimitSettings = LimitSettings()
    logging: LoggingSettings = LoggingSettings()
    demo: DemoSettings = DemoSettings()
    admin: AdminSettings = AdminSettings()
    inventory: InventorySettings = InventorySettings()
    update: UpdateSettings = UpdateSettings()
    backup: BackupSettings = BackupSettings()
    redirect: RedirectSettings = RedirectSettings()
    events: EventsSettings = EventsSettings()
    contacts: ContactsSettings = ContactsSettings()
    directory: DirectorySettings = DirectorySettings()
    ca: CaSettings = CaSettings()
    frontend_plan: FrontendPlanSettings = FrontendPlanSettings()

    def listeners_for(self, only: Iterable[str] | None = None) -> dict[str, ListenerSettings]:
        """The listeners to open. With ``only``, each keeps just those services and a listener
        left without any is not opened; without it, every listener opens (one with no services
        still answers ``/healthz``)."""
        if only is None:
            return dict(self.listeners)
        wanted = set(only)
        result: dict[str, ListenerSettings] = {}
        for name, listener in self.listeners.items():
            services = tuple(s for s in listener.services if s in wanted)
            if services:
                result[name] = dataclasses.replace(listener, services=services)
        return result


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _coerce(annotation: Any, value: Any, path: str) -> Any:
    """Turn a TOML/env value into ``annotation``'s type or raise ConfigError naming ``path``."""
    inner, optional = _unwrap_optional(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path}: must not be empty")
    origin = typing.get_origin(inner)
    if dataclasses.is_dataclass(inner) and isinstance(inner, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: must be a table")
        return _build(inner, value, path)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: must be a table")
        _, value_type = typing.get_args(inner)
        return {str(key): _coerce(value_type, item, f"{path}.{key}") for key, item in value.items()}
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(inner)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: must be a list")
        return tuple(_coerce(item_type, item, f"{path}[{i}]") for i, item in enumerate(value))
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{path}: must be true or false, not {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: must be an integer, not {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise ConfigError(f"{path}: must be an integer, not {value!r}")
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: must be a number, not {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: must be a number, not {value!r}")
    if inner is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: must be a string, not {value!r}")
    if inner is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: must be a non-empty path string")
        # Relative paths are relative to the working directory (the README runs from the checkout).
        return Path(value).expanduser()
    raise ConfigError(f"{path}: unsupported setting type {inner!r}")  # pragma: no cover


def _build(cls: type[Any], values: Mapping[str, Any], path: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key (known here: {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        key_path = f"{path}.{name}" if path else name
        converted = _coerce(hints[name], value, key_path)
        check = fields[name].metadata.get("check")
        if check is not None and converted is not None:
            problem = check(converted)
            if problem:
                raise ConfigError(f"{key_path}: {problem}")
        kwargs[name] = converted
    return cls(**kwargs)


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge(dict(result[key]), value)
        else:
            result[key] = value
    return result


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"{dotted!r}: empty key")
    node = target
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a table")
        node = child
    node[parts[-1]] = value


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``PBXFRONT_LIMITS__MAX_BODY_BYTES=10`` -> ``{"limits": {"max_body_bytes": "10"}}``."""
    result: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR))
        _set_path(result, dotted, value)
    return result


def cli_overrides(assignments: Sequence[str]) -> dict[str, Any]:
    """``--set database.pool_max_size=20`` pairs; values are parsed as TOML when they can be."""
    result: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--set {assignment!r}: expected key.path=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        _set_path(result, key.strip(), value)
    return result


def config_files_from_env(environ: Mapping[str, str]) -> list[Path]:
    raw = environ.get("PBXFRONT_CONFIG", "")
    return [Path(part) for part in raw.split(":") if part]


def load_settings(
    files: Sequence[Path] = (),
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from the layers; raise :class:`ConfigError` on the first problem."""
    merged: dict[str, Any] = {}
    for path in files:
        merged = _merge(merged, read_toml(path))
    merged = _merge(merged, env_overrides(os.environ if environ is None else environ))
    if overrides:
        merged = _merge(merged, overrides)
    settings: Settings = _build(Settings, merged, "")
    if settings.base_dir is not None:
        if not settings.base_dir.is_absolute():
            raise ConfigError("base_dir: must be an absolute path")
        settings = _resolved(settings, settings.base_dir)
    validate(settings)
    return settings


def _resolved(value: Any, base: Path) -> Any:
    """``value`` with every relative Path in it (dataclasses, tuples, dicts) made absolute
    against ``base``."""
    if isinstance(value, Path):
        return value if value.is_absolute() else base / value
    if isinstance(value, tuple):
        return tuple(_resolved(item, base) for item in value)
    if isinstance(value, dict):
        return {key: _resolved(item, base) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            field.name: _resolved(getattr(value, field.name), base)
            for field in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)
    return value


def validate(settings: Settings) -> None:
    """Cross-field checks a single field's validator cannot make."""
    if settings.database.pool_min_size > settings.database.pool_max_size:
        raise ConfigError("database.pool_min_size: must not exceed database.pool_max_size")
    if settings.update.public_url and not re.fullmatch(
        r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", settings.update.public_url
    ):
        raise ConfigError("update.public_url: must be like https://fe1.hoster.example[:port]")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", settings.frontend):
        raise ConfigError("frontend: must be a safe id such as sb1")
    plan = settings.frontend_plan
    if plan.https_digit == plan.ldaps_digit:
        raise ConfigError("frontend_plan.ldaps_digit: must differ from frontend_plan.https_digit")
    if plan.rtp_first > plan.rtp_last:
        raise ConfigError("frontend_plan.rtp_first: must not exceed frontend_plan.rtp_last")
    for name, listener in settings.listeners.items():
        where = f"listeners.{name}"
        for service in listener.services:
            if service not in SERVICE_NAMES:
                raise ConfigError(
                    f"{where}.services: unknown service {service!r} "
                    f"(known: {', '.join(SERVICE_NAMES)})"
                )
        demo_fills_in = settings.demo.enabled
        if (
            listener.tls
            and not demo_fills_in
            and (listener.certificate is None or listener.key is None)
        ):
            raise ConfigError(f"{where}: tls = true needs certificate and key")
        if listener.request_client_certificate and not listener.tls:
            raise ConfigError(f"{where}.request_client_certificate: needs tls = true")
        streams = [service for service in listener.services if service in STREAM_SCHEMES]
        if streams and len(listener.services) > 1:
            raise ConfigError(
                f"{where}.services: {streams[0]!r} speaks its own protocol and cannot share a "
                "listener with other services"
            )
        if (
            listener.request_client_certificate
            and not listener.client_ca
            and not settings.demo.enabled
        ):
            raise ConfigError(f"{where}.client_ca: needed when request_client_certificate = true")


def documented_keys(cls: type[Any] = Settings, prefix: str = "") -> list[str]:
    """Every settings key as a dotted path (``listeners.*.port`` for table entries)."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        path = f"{prefix}{field.name}"
        inner, _ = _unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            keys.extend(documented_keys(inner, f"{path}."))
        elif typing.get_origin(inner) is dict:
            _, value_type = typing.get_args(inner)
            if dataclasses.is_dataclass(value_type) and isinstance(value_type, type):
                keys.extend(documented_keys(value_type, f"{path}.*."))
            else:
                keys.append(f"{path}.*")
        else:
            keys.append(path)
    return keys
