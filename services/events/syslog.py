"""Syslog messages (RFC 5424, or RFC 3164) for stored events, and destination URLs.

Severity mapping (RFC 5424 §6.2.1 numbers), documented in the README:

| event | syslog severity |
|---|---|
| alarm Critical | 2 crit |
| alarm Major | 3 err |
| alarm Minor | 4 warning |
| alarm Indeterminate (or none given) | 5 notice |
| alarm cleared | 5 notice |
| event | 6 info, or the syslog level it carries |
| log line (HTTP log format) | its syslog level if given, else 6 info |

Device text can never forge a second syslog line or break the structured data: every control
character (C0, DEL, C1, U+2028/2029, so CR and LF too) is written as ``\\xNN``, and SD parameter
values escape ``"``, ``\\`` and ``]`` (RFC 5424 §6.3.3). Over TCP each message is framed by octet
counting (RFC 6587 §3.4.1), so its length, not a line end, delimits it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from services.core.config import ConfigError

FACILITIES = {"user": 1, "daemon": 3, **{f"local{i}": 16 + i for i in range(8)}}
# RFC 5612: the enterprise number reserved for documentation; SD-ID "pbxfront@32473".
SD_ID = "pbxfront@32473"
APP_NAME = "pbxfront"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class DestinationError(ConfigError):
    """A destination URL that cannot be used; the message names the key and the URL."""

    def __init__(self, message: str) -> None:
        super().__init__(f"events.destinations: {message}")


@dataclass(frozen=True)
class Destination:
    name: str
    url: str
    scheme: str  # udp | tcp | tls
    host: str
    port: int
    format: str  # rfc5424 | rfc3164
    ca: Path | None = None

    def describe(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_destination(url: str) -> Destination:
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tcp", "tls"):
        raise DestinationError(f"{url}: scheme must be udp, tcp or tls")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or not 0 < port < 65536:
        raise DestinationError(f"{url}: needs a host and a port 1..65535")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - {"ca", "format", "name"})
    if unknown:
        raise DestinationError(f"{url}: unknown option {unknown[0]!r} (known: ca, format, name)")
    message_format = options.get("format", "rfc5424").lower()
    if message_format not in ("rfc5424", "rfc3164"):
        raise DestinationError(f"{url}: format must be rfc5424 or rfc3164")
    ca = Path(options["ca"]) if options.get("ca") else None
    if ca is not None and parts.scheme != "tls":
        raise DestinationError(f"{url}: ca is for tls:// destinations")
    host = parts.hostname
    name = options.get("name") or f"{parts.scheme}://{parts.netloc}"
    if not re.fullmatch(r"[A-Za-z0-9@:/._\[\]-]{1,200}", name):
        raise DestinationError(f"{url}: name must be 1..200 letters, digits and @:/._-")
    return Destination(name, url, parts.scheme, host, port, message_format, ca)


@dataclass(frozen=True)
class OutgoingEvent:
    """The stored event, as much of it as a syslog message carries."""

    id: int
    received_at: datetime
    kind: str
    event_time: datetime | None
    time_flag: str | None
    code: str | None
    severity: str | None
    syslog_severity: int
    source: str | None
    text: str | None
    details: str | None
    device_mac: str | None
    device_hardware_id: str | None
    remote_hardware_id: str | None
    customer: str | None
    repeats: int
    repeat_of: int | None


def escape_controls(value: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def _sd_value(value: str) -> str:
    return re.sub(r'(["\\\]])', r"\\\1", escape_controls(value))


def _header_token(value: str | None, limit: int) -> str:
    """A HOSTNAME / APP-NAME / MSGID: printable US-ASCII without spaces, or ``-``."""
    if not value:
        return "-"
    token = re.sub(r"[^\x21-\x7e]", "_", value)[:limit]
    return token or "-"


def _message_text(event: OutgoingEvent) -> str:
    text = event.text or ""
    if event.details:
        text = f"{text} ({event.details})" if text else event.details
    if not text:
        text = f"{event.kind} {event.code or ''}".strip()
    return escape_controls(text)


def _sd_params(event: OutgoingEvent) -> list[tuple[str, str]]:
    params = [("id", str(event.id)), ("kind", event.kind)]
    optional: list[tuple[str, str | None]] = [
        ("device", event.device_hardware_id),
        ("mac", event.device_mac),
        ("remote", event.remote_hardware_id),
        ("customer", event.customer),
        ("code", event.code),
        ("severity", event.severity),
        ("source", event.source),
        ("received", event.received_at.astimezone(UTC).isoformat(timespec="seconds")),
        ("time_flag", event.time_flag),
        ("repeat_of", str(event.repeat_of) if event.repeat_of is not None else None),
    ]
    params.extend((name, value) for name, value in optional if value)
    return params


def _fit(head: bytes, text: str, limit: int) -> bytes:
    """``head + text`` cut to ``limit`` bytes at a UTF-8 character boundary."""
    body = text.encode("utf-8")
    room = max(0, limit - len(head))
    if len(body) > room:
        body = body[:room].decode("utf-8", errors="ignore").encode("utf-8")
    return head + body


def format_event(
    event: OutgoingEvent, *, message_format: str, facility: str, max_bytes: int
) -> bytes:
    priority = FACILITIES[facility] * 8 + event.syslog_severity
    moment = event.event_time if event.event_time and not event.time_flag else event.received_at
    moment = moment.astimezone(UTC)
    hostname = _header_token(event.device_hardware_id or event.device_mac, 255)
    params = _sd_params(event)
    text = _message_text(event)
    if message_format == "rfc3164":
        stamp = f"{_MONTHS[moment.month - 1]} {moment.day:2d} {moment:%H:%M:%S}"
        context = " ".join(f"{name}={escape_controls(value)}" for name, value in params)
        head = f"<{priority}>{stamp} {hostname} {APP_NAME}: [{context}] "
        return _fit(head.encode("utf-8"), text, max_bytes)
    structured = " ".join(f'{name}="{_sd_value(value)}"' for name, value in params)
    head = (
        f"<{priority}>1 {moment.isoformat(timespec='microseconds').replace('+00:00', 'Z')} "
        f"{hostname} {APP_NAME} - {_header_token(event.kind, 32)} [{SD_ID} {structured}] "
    )
    return _fit(head.encode("utf-8"), text, max_bytes)


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def destinations(urls: tuple[str, ...]) -> list[Destination]:
    """Every configured destination; DestinationError on a bad one or a repeated name."""
    parsed = [parse_destination(url) for url in urls]
    seen: dict[str, str] = {}
    for destination in parsed:
        if destination.name in seen:
            raise DestinationError(
                f"{destination.url} and {seen[destination.name]} share "
                f"the name {destination.name!r} (add ?name=...)"
            )
        seen[destination.name] = destination.url
    return parsed


def as_outgoing(row: Mapping[str, Any]) -> OutgoingEvent:
    return OutgoingEvent(**{name: row[name] for name in OutgoingEvent.__dataclass_fields__})
