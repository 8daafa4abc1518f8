"""What the redirect repositories return: providers, API keys (the secret never in JSON),
mappings, history entries and hand-overs, and their rows' conversions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.redirect.handover import DeviceTarget, StoredMapping


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    facts: Mapping[str, str]
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "facts": dict(self.facts),
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class ApiKey:
    id: str
    provider: str
    secret: str = field(repr=False)
    scopes: tuple[str, ...]
    description: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """Never the secret."""
        return {
            "id": self.id,
            "provider": self.provider,
            "scopes": list(self.scopes),
            "description": self.description,
            "created_at": _iso(self.created_at),
            "last_used_at": _iso(self.last_used_at),
            "revoked_at": _iso(self.revoked_at),
        }


@dataclass(frozen=True)
class MappingRecord:
    mac: str
    provider: str
    frontend: str | None
    url: str | None
    facts: Mapping[str, str]
    created_at: datetime
    updated_at: datetime
    # The Frontend as the inventory has it now (None when it is not there).
    public_address: str | None
    frontend_index: int | None

    def stored(self) -> StoredMapping:
        return StoredMapping(self.mac, self.provider, self.frontend, self.url, self.facts)

    def as_json(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "provider": self.provider,
            "frontend": self.frontend,
            "url": self.url,
            "facts": dict(self.facts),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True)
class HistoryEntry:
    mac: str
    at: datetime
    action: str
    provider: str
    previous_provider: str | None
    frontend: str | None
    url: str | None
    facts: Mapping[str, str] | None
    actor: str

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["at"] = _iso(self.at)
        data["facts"] = dict(self.facts) if self.facts is not None else None
        return data


@dataclass(frozen=True)
class Handover:
    mac: str
    provider: str
    at: datetime
    source_address: str | None
    proof: str
    target: str

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["at"] = _iso(self.at)
        return data


def facts_of(value: Any) -> dict[str, str]:
    if isinstance(value, str):  # a connection without the jsonb codec
        value = json.loads(value)
    return {str(k): str(v) for k, v in (value or {}).items()}


def mapping_of(row: Mapping[str, Any]) -> MappingRecord:
    return MappingRecord(
        row["mac"],
        row["provider"],
        row["frontend"],
        row["url"],
        facts_of(row["facts"]),
        row["created_at"],
        row["updated_at"],
        row["public_address"],
        row["frontend_index"],
    )


def target_of(row: Mapping[str, Any]) -> DeviceTarget:
    return DeviceTarget(
        row["mac"],
        row["provider"],
        row["frontend"],
        row["url"],
        facts_of(row["facts"]),
        facts_of(row["provider_facts"]),
        row["public_address"],
        row["frontend_index"],
    )


def api_key_of(row: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        row["id"],
        row["provider"],
        row["secret"],
        tuple(row["scopes"]),
        row["description"],
        row["created_at"],
        row["last_used_at"],
        row["revoked_at"],
    )


def stored_of(row: Mapping[str, Any]) -> StoredMapping:
    """A mapping row as the hand-over rules compare it."""
    return StoredMapping(
        row["mac"], row["provider"], row["frontend"], row["url"], facts_of(row["facts"])
    )
