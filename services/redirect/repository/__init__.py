"""SQL of the redirect service, one repository per aggregate: providers, API keys (with nonces
and expiry), mappings (with history and transfer tokens), hand-overs."""

from services.redirect.repository.handovers import HandoverRepository
from services.redirect.repository.keys import ApiKeyRepository
from services.redirect.repository.mappings import MappingRepository, audit_import
from services.redirect.repository.providers import ProviderRepository
from services.redirect.repository.records import (
    ApiKey,
    Handover,
    HistoryEntry,
    MappingRecord,
    Provider,
)

__all__ = [
    "ApiKey",
    "ApiKeyRepository",
    "Handover",
    "HandoverRepository",
    "HistoryEntry",
    "MappingRecord",
    "MappingRepository",
    "Provider",
    "ProviderRepository",
    "audit_import",
]
