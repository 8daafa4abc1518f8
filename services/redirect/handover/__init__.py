"""The redirect service's domain, in plain functions: who is asking, where it goes, what it is sent.

The pipeline of one device request (protocol.md §4), top to bottom:

1. :func:`device_key` - the device's MAC or hardware id: from a verified client certificate, else
   the ``sn``/``mac``/``hwid`` arguments, else (leniently, [NC]) anything in ``ver`` that looks
   like a MAC or a hardware id;
2. an address that asked for too many unregistered devices is refused before anything is looked
   up (:class:`~services.core.ratelimit.AddressLimiter`);
3. :func:`choose_mapping` - the registered mapping, if exactly one fits;
4. :func:`target_url` and :func:`handover_script` - the script that moves the device to its
   Frontend's staging URL.

Mappings are written through :func:`plan_registration` / :func:`plan_import` (who may write what,
and whether anything changes) with input checked by :func:`check_mapping`; bulk imports are parsed
by :func:`parse_import`. Everything here is testable without HTTP or PostgreSQL.
"""

from services.redirect.handover.formats import (
    clean_text,
    parse_import,
)
from services.redirect.handover.identify import (
    DeviceKey,
    choose_mapping,
    device_key,
    from_version,
    identity_arguments,
)
from services.redirect.handover.inputs import (
    CONTROL_CHARACTERS,
    DEVICE_PATHS,
    INNOVAPHONE_OUI,
    MAX_FACTS,
    MAX_URL,
    MappingInput,
    Outcome,
    RowError,
    check_facts,
    check_frontend_id,
    check_mac,
    check_mapping,
    check_provider_id,
    check_url,
    fact_name,
    owned_by_other_provider,
    parse_fact_assignments,
)
from services.redirect.handover.targets import (
    DeviceTarget,
    StoredMapping,
    cannot_identify_reply,
    handover_script,
    not_registered_reply,
    rate_limited_reply,
    target_url,
    with_arguments,
)
from services.redirect.handover.writes import (
    ImportRow,
    RowResult,
    plan_import,
    plan_registration,
)

__all__ = [
    "CONTROL_CHARACTERS",
    "DEVICE_PATHS",
    "INNOVAPHONE_OUI",
    "MAX_FACTS",
    "MAX_URL",
    "DeviceKey",
    "DeviceTarget",
    "ImportRow",
    "MappingInput",
    "Outcome",
    "RowError",
    "RowResult",
    "StoredMapping",
    "cannot_identify_reply",
    "check_facts",
    "check_frontend_id",
    "check_mac",
    "check_mapping",
    "check_provider_id",
    "check_url",
    "choose_mapping",
    "clean_text",
    "device_key",
    "fact_name",
    "from_version",
    "handover_script",
    "identity_arguments",
    "not_registered_reply",
    "owned_by_other_provider",
    "parse_fact_assignments",
    "parse_import",
    "plan_import",
    "plan_registration",
    "rate_limited_reply",
    "target_url",
    "with_arguments",
]
