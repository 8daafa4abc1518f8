"""The device-facing sections: update, redirect, backup and events, with their field checks.

``update`` (script templates, firmware, the PHPUS paths devices moved from it still poll, unknown
devices), ``redirect`` (zero-touch hand-over to a Frontend and the provider API), ``backup``
(config PUTs, retention, HTTP Digest) and ``events`` (intake, quotas, group commit, retention,
syslog forwarding). The validators of their fields sit next to them; the Digest and path checks
serve backup, events and redirect alike.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from services.core.config.base import _check, _choice, _range

__all__ = [
    "BackupSettings",
    "EventsSettings",
    "RedirectSettings",
    "UpdateSettings",
]


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
    # The script templates (the seed's /DRIVE/CF0/update/ tree) and the firmware store.
    scripts_dir: Path = Path("staging_scripts")
    firmware_dir: Path = Path("firmware")
    # Minutes between polls a device is told to use; "stale" = not seen for 3 intervals.
    poll_interval: int = dataclasses.field(default=15, metadata=_check(_range(1, 1440)))
    # Base URL written into scripts (update URL, firmware, backup, events), e.g.
    # "https://fe1.hoster.example". Empty: the scheme and Host of each request.
    public_url: str = ""
    # Seconds between checks of the scripts folder for changed files.
    reload_interval: float = dataclasses.field(default=2.0, metadata=_check(_range(0.1, 3600)))
    # Paths of innovaphone's PHP update server (PHPUS) that devices moved from it still poll:
    # `GET <path>` moves the device to update.txt, `PUT`/`POST <path>?mode=backup` is a backup.
    # An entry starting with "*" matches every path ending in the rest ("*/update.php").
    phpus_paths: tuple[str, ...] = dataclasses.field(
        default=("/update.php", "/DRIVE/CF0/update/update.php"),
        metadata=_check(lambda v: _phpus_paths(v)),
    )
    # First words (or "word word") of script lines allowed besides protocol.md's grammar.
    extra_commands: tuple[str, ...] = ()
    # Seconds between batched writes of device status (one statement for all polls since the
    # last); 0 writes as soon as a poll is answered.
    status_flush_interval: float = dataclasses.field(default=0.05, metadata=_check(_range(0, 60)))
    # Where firmware comes from: "files" (firmware_dir on this node, `pbxfront firmware add` on
    # each node) or "database" (added once on any node, stored in PostgreSQL, served by every
    # node from firmware_cache_dir after a SHA-256 check).
    firmware_source: str = dataclasses.field(
        default="files", metadata=_check(_choice("files", "database"))
    )
    # firmware_source = "database": this node's copies; empty: <data_dir>/firmware-cache.
    firmware_cache_dir: Path | None = None
    # Seconds after which a cached firmware file is hashed again before it is served (it is
    # always hashed when its size, time or inode changed).
    firmware_verify_interval: float = dataclasses.field(
        default=3600.0, metadata=_check(_range(1, 10**7))
    )
    # Where devices' scripts come from: "files" (scripts_dir on this node, re-read on change) or
    # "database" (the version published with `pbxfront scripts publish`, the same on every node).
    scripts_source: str = dataclasses.field(
        default="files", metadata=_check(_choice("files", "database"))
    )
    # Seconds between checks of an open canary roll-out (`pbxfront rollouts`); 0: only by
    # `pbxfront rollouts advance`.
    rollout_check_interval: float = dataclasses.field(
        default=10.0, metadata=_check(_range(0, 3600))
    )
    # protocol.md §10 (PHPUS "grace"): a changed script file reaches devices only once it is
    # this many seconds old, so a half-saved file is never sent; until then the previous
    # version of the whole tree is served.
    grace_seconds: float = dataclasses.field(default=90.0, metadata=_check(_range(0, 86400)))
    # protocol.md §10: staging turns fast polling on with `mod cmd UP1 provision <n>` and
    # `config add UP1 /poll 1`; the first update reply turns it off again.
    provision_minutes: int = dataclasses.field(default=5, metadata=_check(_range(1, 60)))
    # A device's `ver` names the wanted build but its PROT/BOOT does not: firmware lines are sent
    # this many times, then withheld and the device is shown as firmware-stuck.
    firmware_attempts: int = dataclasses.field(default=3, metadata=_check(_range(1, 100)))
    # protocol.md §10: models that get no firmware / no boot code (PHPUS nofirmdev/nobootdev).
    firmware_none: tuple[str, ...] = ("swphone", "mypbxi", "ipbs", "ipbs2", "pbl")
    boot_none: tuple[str, ...] = (
        "ipva",
        "ipvadect",
        "swphone",
        "mypbxa",
        "mypbxi",
        "ipbs",
        "ipbs2",
        "pbl",
    )
    # Per-model file names, "model=file" (PHPUS <filenames>): what the device is told to load.
    firmware_names: tuple[str, ...] = dataclasses.field(
        default=("mypbxa=mypbx.apk",), metadata=_check(lambda v: _model_names(v))
    )
    boot_names: tuple[str, ...] = dataclasses.field(
        default=("mypbxa=alt-bootnomodel.bin",), metadata=_check(lambda v: _model_names(v))
    )
    # A poll from a device not in the inventory: "refuse" (404, recorded for `devices adopt`) or
    # "script" (the provider's unknown.txt, rendered without any customer data; also recorded).
    unknown_devices: str = dataclasses.field(
        default="refuse", metadata=_check(_choice("refuse", "script"))
    )
    # Polls naming devices not in the inventory, per source address (IPv6: per /64): a burst,
    # refilled at this rate per second; past it 429. Stops enumerating the inventory by sn=.
    unknown_burst: int = dataclasses.field(default=20, metadata=_check(_range(1, 1_000_000)))
    unknown_per_second: float = dataclasses.field(
        default=0.2, metadata=_check(_range(0.001, 100_000))
    )
    # Rows kept of unknown devices; a new one past this replaces the longest unseen.
    unknown_max_rows: int = dataclasses.field(default=10_000, metadata=_check(_range(10, 10**7)))
    # A PROVEN unknown device (client certificate) whose redirect mapping has a fact "customer"
    # naming an inventory customer is added to it at its first poll (audited, device.auto_adopt).
    auto_adopt: bool = False


def _model_names(value: Any) -> str | None:
    for item in value:
        model, sep, name = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z0-9-]{1,32}", model):
            return f"{item!r}: must be model=file, model in lower case (e.g. mypbxa=mypbx.apk)"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) or ".." in name:
            return f"{item!r}: file name: letters, digits, . _ - only"
    return None


_PHPUS_PATH = re.compile(r"(\*|)(/[A-Za-z0-9._~-]+)*/[A-Za-z0-9_~-][A-Za-z0-9._~-]*\.php")


def _phpus_paths(value: Any) -> str | None:
    for path in value:
        if not isinstance(path, str) or not _PHPUS_PATH.fullmatch(path) or "/../" in path:
            return (
                f"{path!r}: must be a path ending in a .php file name, e.g. "
                '"/update.php", or "*/update.php" for any path ending so'
            )
    return None


_REDIRECT_URL_FIELDS = {"public_address": "192.0.2.1", "frontend": "sb1", "index": 1}


def _redirect_url_template(value: Any) -> str | None:
    if not re.fullmatch(r"https?://[^\s#?]+", value):
        return "must be an http(s) URL without spaces, query or fragment"
    try:
        value.format(**_REDIRECT_URL_FIELDS)
    except (KeyError, IndexError, ValueError):
        return "placeholders: only {public_address}, {frontend} and {index}"
    return None


def _redirect_url_arguments(value: Any) -> str | None:
    # protocol.md §1: the device expands #m #h #t #i; nothing here may break the command line.
    return None if re.fullmatch(r"[A-Za-z0-9=&#%_.~-]*", value) else "must be like sn=#m&hwid=#h"


def _redirect_paths(value: Any) -> str | None:
    for path in value:
        if not re.fullmatch(r"/[A-Za-z0-9._/-]{1,200}", path) or "//" in path or ".." in path:
            return f"{path!r}: must be a plain absolute path such as /redirect/init"
    return None


@dataclasses.dataclass(frozen=True)
class RedirectSettings:
    # Where a registered device is sent: its Frontend's staging URL, from the inventory's
    # Frontend. Placeholders: {public_address}, {frontend}, {index}. A mapping with its own URL
    # uses that instead.
    frontend_url: str = dataclasses.field(
        default="https://{public_address}/DRIVE/CF0/update/staging.txt",
        metadata=_check(_redirect_url_template),
    )
    # Appended (after "?") to a target URL without a query; the device expands #m #h #t #i.
    url_arguments: str = dataclasses.field(
        default="sn=#m&hwid=#h&type=#t&ip=#i", metadata=_check(_redirect_url_arguments)
    )
    # Paths answering like /redirect.php and /init.
    extra_paths: tuple[str, ...] = dataclasses.field(default=(), metadata=_check(_redirect_paths))
    # Lookups of unregistered devices per source address (IPv6: per /64): a burst, refilled at
    # this rate per second. An address out of tokens gets 429 for every lookup.
    unknown_burst: int = dataclasses.field(default=30, metadata=_check(_range(1, 1_000_000)))
    unknown_per_second: float = dataclasses.field(
        default=0.5, metadata=_check(_range(0.001, 100_000))
    )
    # Provider API: seconds a signature's timestamp may differ from the server's clock.
    signature_max_skew: int = dataclasses.field(default=300, metadata=_check(_range(5, 3600)))
    # Provider API: rows one bulk import may carry (more: 413).
    import_max_rows: int = dataclasses.field(default=50_000, metadata=_check(_range(1, 1_000_000)))
    # Seconds a transfer token stays valid.
    transfer_token_lifetime: float = dataclasses.field(
        default=7 * 86400.0, metadata=_check(_range(60, 365 * 86400))
    )


def _regex_list(value: Any) -> str | None:
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as error:
            return f"{pattern!r} is not a regular expression: {error}"
    return None


def _digest_algorithms(value: Any) -> str | None:
    if not value:
        return "must name at least one of SHA-256, MD5"
    unknown = [v for v in value if v not in ("SHA-256", "MD5")]
    return f"unknown algorithm {unknown[0]!r} (known: SHA-256, MD5)" if unknown else None


@dataclasses.dataclass(frozen=True)
class BackupSettings:
    # Largest config a device may PUT (bytes; limits.max_body_bytes applies too); larger gets 413.
    max_body_bytes: int = dataclasses.field(
        default=4 * 1024 * 1024, metadata=_check(_range(1, 2**31))
    )
    # Regular expressions of lines to ignore when comparing versions, besides protocol.md §5's.
    ignore_patterns: tuple[str, ...] = dataclasses.field(default=(), metadata=_check(_regex_list))
    # Retention defaults (a customer's update variables backup-keep-last/-days/-months win):
    # the last N changed versions, plus one a day for D days, plus one a month for M months.
    keep_last: int = dataclasses.field(default=10, metadata=_check(_range(1, 100000)))
    keep_days: int = dataclasses.field(default=14, metadata=_check(_range(0, 3650)))
    keep_months: int = dataclasses.field(default=12, metadata=_check(_range(0, 1200)))
    # Hours without any PUT before a device's backup counts as stale (alert); variable
    # backup-stale-hours wins per customer.
    stale_after_hours: float = dataclasses.field(default=48.0, metadata=_check(_range(1, 87600)))
    # Seconds between retention/staleness runs (one node of the cluster runs each); 0 = never
    # (then only `pbxfront backups prune`).
    prune_interval: float = dataclasses.field(default=3600.0, metadata=_check(_range(0, 86400 * 7)))
    # Options whose value is a secret, redacted in diffs and `show` unless asked otherwise.
    secret_options: tuple[str, ...] = ("/pwd", "/password", "/pw", "/key")
    # `vars create <name> <flags> <value>`: values whose flags contain all letters of one of
    # these are redacted.
    secret_var_flags: tuple[str, ...] = ("pb",)
    # HTTP Digest (RFC 7616) algorithms offered to devices, preferred first.
    digest_algorithms: tuple[str, ...] = dataclasses.field(
        default=("SHA-256", "MD5"), metadata=_check(_digest_algorithms)
    )
    # Seconds a Digest nonce stays valid; an older one is answered with stale=true.
    digest_nonce_lifetime: float = dataclasses.field(
        default=300.0, metadata=_check(_range(1, 86400))
    )


def _event_destinations(value: Any) -> str | None:
    # The URL grammar lives with the forwarder (services/events/syslog.py parses it again and
    # reports details); here only what a config file can get wrong at a glance.
    for url in value:
        if not re.fullmatch(
            r"(udp|tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}(\?\S*)?", url
        ):
            return f"{url!r}: must be like udp://host:514, tcp://host:514 or tls://host:6514"
    return None


@dataclasses.dataclass(frozen=True)
class EventsSettings:
    """The events service (services/events/): alarm and log intake, store, syslog forwarding."""

    # Paths devices POST (or GET, the HTTP log format) events to, on the device listeners.
    paths: tuple[str, ...] = dataclasses.field(
        default=("/events",), metadata=_check(_redirect_paths)
    )
    # Largest event body (bytes; limits.max_body_bytes applies too); larger gets 413.
    max_body_bytes: int = dataclasses.field(default=65536, metadata=_check(_range(1, 2**31)))
    digest_algorithms: tuple[str, ...] = dataclasses.field(
        default=("SHA-256", "MD5"), metadata=_check(_digest_algorithms)
    )
    digest_nonce_lifetime: float = dataclasses.field(
        default=300.0, metadata=_check(_range(1, 86400))
    )
    # Per sending device (or, for an account without a named device, per account and address):
    # events and body bytes per minute; past either, 429 with Retry-After; 0 = unlimited.
    quota_events_per_minute: int = dataclasses.field(
        default=600, metadata=_check(_range(0, 10_000_000))
    )
    quota_bytes_per_minute: int = dataclasses.field(
        default=4 * 1024 * 1024, metadata=_check(_range(0, 2**40))
    )
    # Group commit: seconds the writer waits for more events before one transaction, and the
    # most events per transaction.
    commit_window: float = dataclasses.field(default=0.001, metadata=_check(_range(0, 1)))
    commit_batch: int = dataclasses.field(default=500, metadata=_check(_range(1, 100_000)))
    # Device timestamps further ahead of / behind the receive time are kept but flagged.
    time_future_limit: float = dataclasses.field(
        default=3600.0, metadata=_check(_range(0, 10 * 365 * 86400))
    )
    time_past_limit: float = dataclasses.field(
        default=30 * 86400.0, metadata=_check(_range(0, 10 * 365 * 86400))
    )
    # Retention (one node runs it): days to keep, events kept per device; 0 = unlimited.
    retention_days: float = dataclasses.field(default=90.0, metadata=_check(_range(0, 36500)))
    retention_per_device: int = dataclasses.field(
        default=10000, metadata=_check(_range(0, 100_000_000))
    )
    retention_interval: float = dataclasses.field(
        default=3600.0, metadata=_check(_range(0, 7 * 86400))
    )
    # Syslog destinations: udp://host:port, tcp://host:port (RFC 6587 octet counting),
    # tls://host:port (RFC 5425); options as a query: ?ca=FILE&format=rfc3164&name=NAME.
    destinations: tuple[str, ...] = dataclasses.field(
        default=(), metadata=_check(_event_destinations)
    )
    # Syslog facility of forwarded events.
    facility: str = dataclasses.field(
        default="local0",
        metadata=_check(_choice(*(f"local{i}" for i in range(8)), "user", "daemon")),
    )
    # Forward a repeat of an active alarm again (then it is also kept as its own row).
    forward_repeats: bool = False
    # A destination seen for the first time starts at the oldest stored event or after the
    # newest.
    new_destination_start: str = dataclasses.field(
        default="beginning", metadata=_check(_choice("beginning", "end"))
    )
    # Seconds a TCP/TLS connection must survive after a batch before the batch counts as
    # delivered (syslog has no acknowledgement; a connection lost sooner re-sends it).
    confirm_delay: float = dataclasses.field(default=2.0, metadata=_check(_range(0, 600)))
    # Reconnect backoff ceiling (seconds), events per send, largest syslog message (bytes).
    reconnect_max_delay: float = dataclasses.field(
        default=30.0, metadata=_check(_range(0.05, 3600))
    )
    forward_batch: int = dataclasses.field(default=500, metadata=_check(_range(1, 100_000)))
    max_message_bytes: int = dataclasses.field(default=8192, metadata=_check(_range(480, 65000)))
