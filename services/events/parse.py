"""What a device sent, read leniently: any body becomes an event with what could be parsed.

protocol.md §6: the exact alarm request (path, XML/JSON names, content type) is [NC], so every
form is tried: the confirmed HTTP log line (``event=syslog&time=…&date=…&from=…&msg=…`` as query or
raw body), form/query style, XML (defusedxml: no entities, no external references) and JSON.
Field names are matched case-insensitively against a list of aliases; nothing that was sent is
lost (the raw body is stored as is, every parsed field is kept by name). What could not be read
is listed in ``problems`` instead of refusing the event: a device that gets 400 would only retry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from defusedxml import ElementTree as SafeElementTree  # type: ignore[import-untyped,unused-ignore]
from defusedxml.common import DefusedXmlException  # type: ignore[import-untyped,unused-ignore]

from services.core import errors
from services.core.inputs import MAX_DEPTH, loads_json, xml_depth

# Longest value kept per field (characters): a field is a line of a syslog message, not a file.
FIELD_LIMIT = 8192
MAX_FIELDS = 200

ALARM_SET = "alarm-set"
ALARM_CLEAR = "alarm-clear"
EVENT = "event"
LOG = "log"

# protocol.md §6: alarm severities; the syslog severity (RFC 5424 §6.2.1) each maps to.
ALARM_SEVERITIES = {
    "critical": ("Critical", 2),
    "major": ("Major", 3),
    "minor": ("Minor", 4),
    "warning": ("Minor", 4),
    "indeterminate": ("Indeterminate", 5),
}
SYSLOG_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_LEVEL_ALIASES = {
    "emergency": 0,
    "panic": 0,
    "critical": 2,
    "error": 3,
    "warn": 4,
    "informational": 6,
}
CLEAR_SEVERITY = 5  # notice: a problem went away
EVENT_SEVERITY = 6  # info

# Aliases of each field (lower case, "." joins nested XML/JSON names, "-" and "_" ignored).
_ALIASES: dict[str, tuple[str, ...]] = {
    "kind": ("kind", "type", "action", "state", "alarmtype", "event"),
    "time": ("time", "timestamp", "utc", "datetime"),
    "date": ("date",),
    "code": ("code", "alarmcode", "alarm.code", "errorcode", "number"),
    "severity": ("severity", "sev", "level", "priority", "prio"),
    "source": ("source", "src", "module", "alarm.source"),
    "text": ("text", "msg", "message", "description", "descr", "alarm.text"),
    "details": ("details", "detail", "info", "additionalinfo"),
    "device_hardware_id": ("from", "hwid", "hardwareid", "device", "devicehwid"),
    "device_mac": ("mac", "sn", "serial", "devicemac"),
    "device_ip": ("ip", "address", "deviceip"),
    "remote_hardware_id": ("remote", "remote.hwid", "remotehwid", "remote.hardwareid"),
    "remote_ip": ("remote.ip", "remoteip", "remote.address"),
}
_KIND_WORDS = {
    "set": ALARM_SET,
    "alarm": ALARM_SET,
    "raise": ALARM_SET,
    "raised": ALARM_SET,
    "on": ALARM_SET,
    "active": ALARM_SET,
    "alarmset": ALARM_SET,
    "clear": ALARM_CLEAR,
    "cleared": ALARM_CLEAR,
    "off": ALARM_CLEAR,
    "reset": ALARM_CLEAR,
    "alarmclear": ALARM_CLEAR,
    "syslog": LOG,
    "log": LOG,
    "event": EVENT,
    "info": EVENT,
}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SYSLOG_LINE = re.compile(rb"^\s*event=syslog&", re.IGNORECASE)


@dataclass
class ParsedEvent:
    kind: str
    syslog_severity: int
    fields: dict[str, str]
    event_time: datetime | None = None
    time_flag: str | None = None
    code: str | None = None
    severity: str | None = None
    source: str | None = None
    text: str | None = None
    details: str | None = None
    device_hardware_id: str | None = None
    device_mac: str | None = None
    device_ip: str | None = None
    remote_hardware_id: str | None = None
    remote_ip: str | None = None
    problems: list[str] = field(default_factory=list)


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def _clip(value: str) -> str:
    return value[:FIELD_LIMIT]


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}.{index}" if prefix else str(index))
    elif value is None:
        return
    else:
        text = value if isinstance(value, str) else json.dumps(value)
        yield prefix or "value", text


def _xml_fields(element: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    tag = str(element.tag).rsplit("}", 1)[-1]
    name = f"{prefix}.{tag}" if prefix else tag
    for attribute, value in element.attrib.items():
        yield f"{name}.{str(attribute).rsplit('}', 1)[-1]}", value
    text = (element.text or "").strip()
    children = list(element)
    if text:
        yield name, text
    for child in children:
        yield from _xml_fields(child, name)


def decode_text(body: bytes, problems: list[str]) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        problems.append("body is not valid UTF-8 (undecodable bytes replaced; raw body kept)")
        return body.decode("utf-8", errors="replace")


def _syslog_line(text: str) -> list[tuple[str, str]]:
    """The innovaphone HTTP log line sent as a raw POST body (protocol.md §6, not form-encoded):
    the message is everything after ``&msg=``, so an ``&`` inside it does not split it."""
    head, separator, message = text.partition("&msg=")
    pairs = parse_qsl(head, keep_blank_values=True)
    if separator:
        message = message.rstrip("\r\n")
        if re.search(r"%[0-9A-Fa-f]{2}", message):
            message = unquote(message, errors="replace")
        pairs.append(("msg", message))
    return pairs


def body_fields(
    body: bytes, content_type: str, problems: list[str]
) -> tuple[list[tuple[str, str]], str | None]:
    """(name, value) pairs from a body of any of the accepted forms, plus the XML root tag."""
    if not body.strip():
        return [], None
    text = decode_text(body, problems)
    stripped = text.lstrip("\ufeff \t\r\n")
    lowered = content_type.lower()
    if "json" in lowered or stripped[:1] in ("{", "["):
        try:
            # Too deep or huge integers: Unprocessable (422), nothing stored; merely not JSON:
            # kept as text with the problem noted (lenient, protocol.md §6).
            value = loads_json(stripped, "event body")
        except errors.Invalid as error:
            problems.append(f"JSON not readable: {error}")
            return [("text", stripped)], None
        # {"alarm": {...}}: the one outer name is the kind of thing, like an XML root element.
        if isinstance(value, dict) and len(value) == 1:
            ((root, inner),) = value.items()
            if isinstance(inner, dict):
                return list(_flatten(inner)), str(root)
        return list(_flatten(value)), None
    if "xml" in lowered or stripped.startswith("<"):
        try:
            root = SafeElementTree.fromstring(stripped.encode("utf-8"), forbid_dtd=True)
        except DefusedXmlException as error:
            problems.append(f"XML refused: {type(error).__name__} (DTDs and entities)")
            return [], None
        except SafeElementTree.ParseError as error:
            problems.append(f"XML not readable: {error}")
            return [("text", stripped)], None
        if xml_depth(root) > MAX_DEPTH:
            raise errors.Unprocessable(f"event body: XML nested deeper than {MAX_DEPTH} levels")
        tag = str(root.tag).rsplit("}", 1)[-1]
        # The root's own name is a prefix nobody wants to type: <alarm code=".."> is "code".
        pairs = [
            (name.split(".", 1)[1] if "." in name else name, value)
            for name, value in _xml_fields(root)
        ]
        return pairs, tag
    if _SYSLOG_LINE.match(body):
        return _syslog_line(stripped), None
    if "=" in stripped.split("\n", 1)[0]:
        return parse_qsl(stripped.strip(), keep_blank_values=True), None
    return [("text", stripped.strip())], None


def _pick(fields: Mapping[str, str], name: str) -> str | None:
    for alias in _ALIASES[name]:
        value = fields.get(_key(alias))
        if value is not None and value.strip() and not value.startswith("#"):
            return value.strip()
    return None


def read_time(
    fields: Mapping[str, str], received_at: datetime, problems: list[str]
) -> datetime | None:
    """The event's time: epoch seconds (``time``), ``date=YYYYMMDD-hhmmss`` (UTC) or ISO 8601."""
    raw = _pick(fields, "time")
    date = _pick(fields, "date")
    if raw is not None and re.fullmatch(r"\d{9,10}(\.\d+)?|\d{12,13}", raw):
        seconds = float(raw) / (1000.0 if len(raw) >= 12 and "." not in raw else 1.0)
        return datetime.fromtimestamp(seconds, UTC)
    for candidate in (date, raw):
        if candidate is None:
            continue
        match = re.fullmatch(r"(\d{8})-(\d{6})", candidate)
        try:
            if match:
                return datetime.strptime(candidate, "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
            parsed = datetime.fromisoformat(candidate.replace("Z", "+00:00"))
        except (ValueError, OverflowError):
            continue
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if raw is not None or date is not None:
        problems.append("time not readable: " + (raw or date or ""))
    return None


def time_flag(
    event_time: datetime | None,
    received_at: datetime,
    future_limit: float,
    past_limit: float,
) -> str | None:
    if event_time is None:
        return None
    if event_time - received_at > timedelta(seconds=future_limit):
        return "future"
    if received_at - event_time > timedelta(seconds=past_limit):
        return "past"
    return None


def _syslog_level(value: str) -> int | None:
    lowered = value.strip().lower()
    if lowered.isdigit() and int(lowered) <= 7:
        return int(lowered)
    if lowered in SYSLOG_LEVELS:
        return SYSLOG_LEVELS.index(lowered)
    return _LEVEL_ALIASES.get(lowered)


def classify(
    kind_word: str | None, root_tag: str | None, code: str | None, severity: str | None
) -> str:
    if kind_word is not None and _KIND_WORDS.get(_key(kind_word)) is not None:
        return _KIND_WORDS[_key(kind_word)]
    # A root element or object named "event" says little; "alarm" or "log" does.
    if root_tag is not None and _KIND_WORDS.get(_key(root_tag), EVENT) != EVENT:
        return _KIND_WORDS[_key(root_tag)]
    if code is not None and severity is not None and _key(severity) in ALARM_SEVERITIES:
        return ALARM_SET
    return EVENT


def parse_event(
    body: bytes,
    content_type: str,
    query: Mapping[str, str],
    received_at: datetime,
    *,
    future_limit: float,
    past_limit: float,
) -> ParsedEvent:
    """Read one event from the query (the GET log format) and the body. Never raises but
    Unprocessable for a body no parser should walk (nesting deeper than
    ``core.inputs.MAX_DEPTH``, integers of more than ``core.inputs.MAX_INTEGER_DIGITS``)."""
    problems: list[str] = []
    fields, root_tag = _event_fields(body, content_type, query, problems)
    # The GET/POST log line names the device in `from`; identity arguments of the URL are
    # handled by the caller (core.identity), not here.
    code = _pick(fields, "code")
    severity_raw = _pick(fields, "severity")
    kind = classify(_pick(fields, "kind"), root_tag, code, severity_raw)
    event_time = read_time(fields, received_at, problems)
    severity, syslog_severity = _severity(severity_raw, kind, problems)
    if kind in (ALARM_SET, ALARM_CLEAR) and code is None:
        problems.append("alarm without a code")
    text = _pick(fields, "text")
    if text is None and not fields:
        problems.append("nothing readable in the request")
    return ParsedEvent(
        kind=kind,
        syslog_severity=syslog_severity,
        fields=fields,
        event_time=event_time,
        time_flag=(
            time_flag(event_time, received_at, future_limit, past_limit)
            if event_time is not None
            else ("unreadable" if any(p.startswith("time ") for p in problems) else None)
        ),
        code=code[:64] if code else None,
        severity=severity,
        source=(_pick(fields, "source") or "")[:128] or None,
        text=text,
        details=_pick(fields, "details"),
        device_hardware_id=_pick(fields, "device_hardware_id"),
        device_mac=_pick(fields, "device_mac"),
        device_ip=_pick(fields, "device_ip"),
        remote_hardware_id=_pick(fields, "remote_hardware_id"),
        remote_ip=_pick(fields, "remote_ip"),
        problems=problems,
    )


def _event_fields(
    body: bytes, content_type: str, query: Mapping[str, str], problems: list[str]
) -> tuple[dict[str, str], str | None]:
    """The fields of the URL and the body (the body wins), at most ``MAX_FIELDS``, with the
    body's root tag (XML element or JSON object name)."""
    pairs, root_tag = body_fields(body, content_type, problems)
    # URL arguments count too (the GET log format carries everything there); the body wins.
    identity_arguments = {"sn", "mac", "hwid", "type", "ip"}
    pairs = [(k, v) for k, v in query.items() if k not in identity_arguments] + pairs
    fields: dict[str, str] = {}
    for name, value in pairs:
        if len(fields) >= MAX_FIELDS:
            problems.append(f"more than {MAX_FIELDS} fields: the rest only in the raw body")
            break
        # PostgreSQL text cannot hold NUL; other controls are escaped for display as well.
        fields[without_controls(_key(name)[:64])] = without_controls(_clip(value))
    return fields, root_tag


def _severity(severity_raw: str | None, kind: str, problems: list[str]) -> tuple[str | None, int]:
    """(severity as stored, syslog severity): an alarm's word (Major) unless a log names a
    syslog level; an alarm without one is Indeterminate, a clear has its own syslog severity."""
    severity: str | None = severity_raw
    syslog_severity = EVENT_SEVERITY
    if severity_raw is not None:
        alarm = ALARM_SEVERITIES.get(_key(severity_raw))
        level = _syslog_level(severity_raw)
        if alarm is not None and kind != LOG:
            severity, syslog_severity = alarm[0], alarm[1]
        elif level is not None:
            severity, syslog_severity = SYSLOG_LEVELS[level], level
        elif alarm is not None:
            severity, syslog_severity = alarm[0], alarm[1]
        else:
            problems.append(f"severity not known: {severity_raw[:40]}")
    elif kind == ALARM_SET:
        severity, syslog_severity = "Indeterminate", ALARM_SEVERITIES["indeterminate"][1]
    if kind == ALARM_CLEAR:
        syslog_severity = CLEAR_SEVERITY
    return severity, syslog_severity


def without_controls(value: str) -> str:
    """Text safe to store for display (tabs and line breaks kept, other controls escaped)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
